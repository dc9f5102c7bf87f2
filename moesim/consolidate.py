"""``python -m moesim.consolidate``: build a consolidation plan from N variants' weights.

    python -m moesim.consolidate a.pt b.safetensors c.pt budget_bytes=82.9e9 method=cluster-mean \
        permute=true out=plan.json [names=base,instruct,code] [distances_out=d.json]
    python -m moesim.consolidate synthetic=mixtral-8x7b n_variants=2 budget_bytes=82.9e9 out=plan.json

(``--budget-bytes 82.9e9``-style flags work too; ``--help`` lists every key.)

Reads each variant (torch state dict or safetensors; Mixtral-style key names), checks they share one
architecture, measures per-position expert distances (L2 of concatenated w1/w2/w3 — the paper's — and
cosine), builds the plan (see moesim.consolidation.builders) and writes it as JSON (schema moesim.plan/1).
With ``--synthetic MODEL`` no weights are read: distances come from the documented synthetic distance model
at that ModelSpec's scale (moesim.consolidation.distance_model). Torch is imported only when reading weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from moesim.consolidation.plan import METHODS
from moesim.errors import UserError, exit_on_user_error
from moesim.io import write_text
from moesim.outdir import check_writable


def parse_bytes(text: str) -> int:
    """``"82.9e9"``, ``"80GiB"``, ``"41.4GB"`` → bytes."""
    t = text.strip()
    units = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    for u, mult in units.items():
        if t.endswith(u):
            t, scale = t[: -len(u)], mult
            break
    else:
        scale = 1
    try:
        value = float(t) * scale
    except ValueError:
        raise UserError(f"budget_bytes={text!r} is not a size (e.g. 82.9e9, 80GiB, 41.4GB)") from None
    if value <= 0:
        raise UserError(f"budget_bytes={text!r}: must be positive")
    return int(value)


@dataclass(frozen=True)
class ConsolidateConfig:
    """A consolidation plan to build.

    Attributes:
        variants: variant weight files (.pt/.pth/.bin/.safetensors), also given as bare arguments.
        synthetic: no weights: synthetic distances at the scale of this model spec (e.g. mixtral-8x7b).
        n_variants: variants of the synthetic model.
        seed: seed of the synthetic distance model.
        budget_bytes: GPU memory budget for weights (bytes; 82.9e9, 80GiB, 41.4GB ...). Required.
        method: how copies are chosen and merged.
        permute: match experts within each layer before comparing.
        distance: distance the plan is built on.
        reserved: non-expert sets kept on the GPU (≥ 0).
        dtype_bytes: bytes per parameter when served; 0: as stored in the files.
        names: comma-separated variant names; empty: the file stems.
        model_name: model name written to the plan; empty: inferred.
        out: the plan JSON to write (a file path). Required.
        distances_out: also write the distances as JSON here (a file path); empty: not written.
    """

    variants: tuple[str, ...] = ()
    synthetic: str = ""
    n_variants: int = 2
    seed: int = 0
    budget_bytes: str = ""
    method: str = "paper"
    permute: bool = False
    distance: str = "l2"
    reserved: int = 2
    dtype_bytes: int = 0
    names: str = ""
    model_name: str = ""
    out: str = ""
    distances_out: str = ""


def parse_args(argv: list[str]) -> ConsolidateConfig:
    """The command line as a config (one ``UserError`` line on a bad key or value; ``--help`` exits)."""
    from moesim.cli import parse_key_values

    cfg = parse_key_values(argv, ConsolidateConfig, prog="python -m moesim.consolidate",
                           summary=__doc__.splitlines()[0].split(": ", 1)[-1], positional="variants",
                           choices={"method": METHODS, "distance": ("l2", "cosine")},
                           examples=("python -m moesim.consolidate a.pt b.pt budget_bytes=80GiB out=plan.json",
                                     "python -m moesim.consolidate synthetic=mixtral-8x7b budget_bytes=82.9e9 "
                                     "out=plan.json"))
    if not cfg.budget_bytes:
        raise UserError("budget_bytes is required (e.g. budget_bytes=82.9e9 or 80GiB)")
    if not cfg.out:
        raise UserError("out is required: the plan JSON to write (e.g. out=plan.json)")
    for key, value in (("reserved", cfg.reserved), ("dtype_bytes", cfg.dtype_bytes), ("seed", cfg.seed)):
        if value < 0:
            raise UserError(f"{key}={value}: must be ≥ 0")
    if cfg.n_variants < 2:
        raise UserError(f"n_variants={cfg.n_variants}: must be ≥ 2")
    check_writable(cfg.out, "out", is_file=True)
    if cfg.distances_out:
        check_writable(cfg.distances_out, "distances_out", is_file=True)
    return cfg


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    import sys

    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    budget = parse_bytes(args.budget_bytes)
    if args.synthetic:
        if args.variants:
            raise UserError("give either variant files or synthetic=MODEL, not both")
        from moesim.consolidation.plan import plan_from_distance_model
        from moesim.specs import get_model

        plan = plan_from_distance_model(get_model(args.synthetic), args.n_variants, budget,
                                        method=args.method, seed=args.seed, nonexpert_sets_reserved=args.reserved)
        plan.save(args.out)
        print(plan.summary())
        print(f"wrote {args.out}")
        return
    variants = [Path(p) for p in args.variants]
    names = args.names.split(",") if args.names else [p.stem for p in variants]
    if len(names) != len(variants):
        raise UserError(f"names= has {len(names)} names for {len(variants)} variant files")
    if len(variants) < 2:
        raise UserError("give at least 2 variant files")
    from moesim.consolidation.builders import build_plan
    from moesim.consolidation.weights import check_same_architecture, expert_distances, load_state

    states = [load_state(p) for p in variants]
    layout = check_same_architecture(states, names)
    dtype_bytes = args.dtype_bytes or layout.dtype_bytes
    dist = expert_distances(states, layout, permute=args.permute)
    pair = dist.l2 if args.distance == "l2" else dist.cosine
    model = args.model_name or (
        f"moe-{layout.n_layers}x{layout.n_experts}-expert{layout.expert_params}-nonexpert{layout.nonexpert_params}")
    plan = build_plan(
        pair, method=args.method, budget_bytes=budget, expert_bytes=layout.expert_params * dtype_bytes,
        nonexpert_bytes=layout.nonexpert_params * dtype_bytes, nonexpert_sets_reserved=args.reserved,
        model=model, variants=names, perm=dist.perm,
        meta={"distance": args.distance, "files": [str(p) for p in variants], "dtype_bytes": dtype_bytes,
              "layer_ids": list(layout.layer_ids)},
    )
    plan.save(args.out)
    if args.distances_out:
        write_text(args.distances_out, json.dumps(
            {"variants": names, "l2": dist.l2.tolist(), "cosine": dist.cosine.tolist(), "perm": dist.perm.tolist(),
             "shape": "[u][v][moe_layer][slot]"}))
    print(plan.summary())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
