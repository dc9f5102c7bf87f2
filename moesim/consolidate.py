"""``python -m moesim.consolidate``: build a consolidation plan from N variants' weights.

    python -m moesim.consolidate a.pt b.safetensors c.pt --budget-bytes 82.9e9 --method cluster-mean \
        --permute --out plan.json [--names base,instruct,code] [--distances-out d.json]
    python -m moesim.consolidate --synthetic mixtral-8x7b --n-variants 2 --budget-bytes 82.9e9 --out plan.json

Reads each variant (torch state dict or safetensors; Mixtral-style key names), checks they share one
architecture, measures per-position expert distances (L2 of concatenated w1/w2/w3 — the paper's — and
cosine), builds the plan (see moesim.consolidation.builders) and writes it as JSON (schema moesim.plan/1).
With ``--synthetic MODEL`` no weights are read: distances come from the documented synthetic distance model
at that ModelSpec's scale (moesim.consolidation.distance_model). Torch is imported only when reading weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moesim.consolidation.plan import METHODS
from moesim.errors import UserError, exit_on_user_error


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
        raise UserError(f"--budget-bytes {text!r} is not a size (e.g. 82.9e9, 80GiB, 41.4GB)") from None
    if value <= 0:
        raise UserError(f"--budget-bytes must be positive, got {text!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m moesim.consolidate", description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", type=Path, help="variant weight files (.pt/.pth/.bin/.safetensors)")
    ap.add_argument("--synthetic", metavar="MODEL", default=None,
                    help="no weights: synthetic distances at the scale of this model spec (e.g. mixtral-8x7b)")
    ap.add_argument("--n-variants", type=int, default=2, help="variants of the synthetic model (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic distance model")
    ap.add_argument("--budget-bytes", required=True, type=parse_bytes, help="GPU memory budget (82.9e9, 80GiB...)")
    ap.add_argument("--method", choices=METHODS, default="paper")
    ap.add_argument("--permute", action="store_true", help="match experts within each layer before comparing")
    ap.add_argument("--distance", choices=("l2", "cosine"), default="l2", help="distance the plan is built on")
    ap.add_argument("--reserved", type=int, default=2, help="non-expert sets kept on the GPU (default 2)")
    ap.add_argument("--dtype-bytes", type=int, default=None,
                    help="bytes per parameter when served (default: as stored in the files)")
    ap.add_argument("--names", default=None, help="comma-separated variant names (default: file stems)")
    ap.add_argument("--model-name", default=None, help="model name written to the plan (default: inferred)")
    ap.add_argument("--out", type=Path, required=True, help="plan JSON to write")
    ap.add_argument("--distances-out", type=Path, default=None, help="also write the distances as JSON")
    return ap


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.reserved < 0:
        raise UserError(f"--reserved must be >= 0, got {args.reserved}")
    if args.synthetic is not None:
        if args.variants:
            raise UserError("give either variant files or --synthetic MODEL, not both")
        from moesim.consolidation.plan import plan_from_distance_model
        from moesim.specs import get_model

        plan = plan_from_distance_model(get_model(args.synthetic), args.n_variants, args.budget_bytes,
                                        method=args.method, seed=args.seed, nonexpert_sets_reserved=args.reserved)
        plan.save(args.out)
        print(plan.summary())
        print(f"wrote {args.out}")
        return
    names = args.names.split(",") if args.names else [p.stem for p in args.variants]
    if len(names) != len(args.variants):
        raise UserError(f"--names has {len(names)} names for {len(args.variants)} variant files")
    if len(args.variants) < 2:
        raise UserError("give at least 2 variant files")
    from moesim.consolidation.builders import build_plan
    from moesim.consolidation.weights import check_same_architecture, expert_distances, load_state

    states = [load_state(p) for p in args.variants]
    layout = check_same_architecture(states, names)
    dtype_bytes = args.dtype_bytes or layout.dtype_bytes
    dist = expert_distances(states, layout, permute=args.permute)
    pair = dist.l2 if args.distance == "l2" else dist.cosine
    model = args.model_name or (
        f"moe-{layout.n_layers}x{layout.n_experts}-expert{layout.expert_params}-nonexpert{layout.nonexpert_params}")
    plan = build_plan(
        pair, method=args.method, budget_bytes=args.budget_bytes, expert_bytes=layout.expert_params * dtype_bytes,
        nonexpert_bytes=layout.nonexpert_params * dtype_bytes, nonexpert_sets_reserved=args.reserved,
        model=model, variants=names, perm=dist.perm,
        meta={"distance": args.distance, "files": [str(p) for p in args.variants], "dtype_bytes": dtype_bytes,
              "layer_ids": list(layout.layer_ids)},
    )
    plan.save(args.out)
    if args.distances_out is not None:
        args.distances_out.parent.mkdir(parents=True, exist_ok=True)
        args.distances_out.write_text(json.dumps(
            {"variants": names, "l2": dist.l2.tolist(), "cosine": dist.cosine.tolist(), "perm": dist.perm.tolist(),
             "shape": "[u][v][moe_layer][slot]"}))
    print(plan.summary())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
