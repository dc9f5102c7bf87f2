"""The quality study: train a tiny MoE family, consolidate it, measure held-out perplexity (imports torch).

    PYTHONPATH=. python3 -m moesim.consolidation.study preset=gpu device=cuda out=OUT
    python -m moesim.consolidation.study preset=smoke device=cpu out=/tmp/smoke   # CPU check, ~1 min

Pipeline (one process, deterministic under ``seed`` up to GPU kernel non-determinism):
  1. pretrain a base TinyMoE on an equal mixture of the four domains' train bytes;
  2. fine-tune one variant per domain from the base (all weights), same steps and learning rate each;
  3. expert distances between every pair of variants (L2 of concatenated w1/w2/w3, cosine; with exact
     permutation matching, whose result is recorded), and each variant's distance to the base;
  4. for every subset of the variants of size 2, 3 and 4 and every budget from all-shared to nothing-shared,
     held-out perplexity on each member's own domain for: the variant alone, consolidation + reconfiguration
     (paper plan; our cluster plans), consolidation without reconfiguration (another member's non-expert
     layers), uniform averaging, task arithmetic and TIES merging.
Writes under OUT: quality.csv, distances.json, train_log.csv, metadata.json (and plans from the CLI run).
Never imports plotly/simpy/hydra: the GPU machine has none of them.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

# first: run as a command without torch, one line instead of a traceback from the imports below
from moesim.torch_import import torch

# isort: split
from moesim.consolidation.apply import materialize
from moesim.consolidation.builders import build_plan
from moesim.consolidation.corpus import DOMAINS, eval_windows, load_split, sample_windows
from moesim.consolidation.merging import task_arithmetic, ties_merge, uniform_average
from moesim.consolidation.plan import Plan
from moesim.consolidation.weights import MoELayout, check_same_architecture, expert_distances
from moesim.errors import UserError, exit_on_user_error
from moesim.tinymoe import CPU_CONFIG, GPU_CONFIG, TinyMoE, TinyMoEConfig, count_params

QUALITY_COLUMNS = (
    "method", "n_variants", "memory_bytes", "memory_fraction", "domain", "perplexity",
    "subset", "shared_positions", "gpu_copies", "plan_method", "nonexpert_from",
)


@dataclass(frozen=True)
class Preset:
    """Training and study sizes.

    Attributes:
        model: architecture; seq: tokens per training/eval window; batch: windows per step.
        pretrain_steps / finetune_steps: optimizer steps (each run stops early at its *_max_s wall budget,
            and the steps actually done are recorded).
        pretrain_lr / finetune_lr: peak AdamW learning rates (linear warmup, cosine decay to 10 %).
        warmup_steps: warmup of both phases; weight_decay: AdamW's; aux_weight: load-balancing loss weight.
        eval_windows: held-out windows per domain (tokens = eval_windows × seq).
        share_steps: budgets, as numbers of fully shared positions from all to none, in this many steps.
    """

    model: TinyMoEConfig
    seq: int
    batch: int
    pretrain_steps: int
    finetune_steps: int
    pretrain_lr: float
    finetune_lr: float
    warmup_steps: int
    eval_windows: int
    pretrain_max_s: float
    finetune_max_s: float
    share_steps: int = 8
    val_windows: int = 32
    val_every: int = 25
    max_subsets_per_n: int | None = None
    subset_sizes: tuple[int, ...] = (2, 3, 4)
    weight_decay: float = 0.1
    aux_weight: float = 0.01
    ta_scale: float = 0.5
    ties_density: float = 0.2
    ties_scale: float = 1.0


VAL_FRACTION = 0.05

PRESETS = {
    "gpu": Preset(GPU_CONFIG, seq=256, batch=64, pretrain_steps=1000, finetune_steps=250, pretrain_lr=1.5e-3,
                  finetune_lr=3e-4, warmup_steps=50, eval_windows=96, pretrain_max_s=75.0, finetune_max_s=24.0),
    "smoke": Preset(replace(CPU_CONFIG, max_seq=64), seq=64, batch=8, pretrain_steps=30, finetune_steps=10,
                    pretrain_lr=3e-3, finetune_lr=1e-3, warmup_steps=5, eval_windows=4, pretrain_max_s=60.0,
                    finetune_max_s=20.0, share_steps=4, val_windows=4, val_every=5),
    # For the unit test: a few steps, two budgets, one subset per N.
    "unit": Preset(replace(CPU_CONFIG, max_seq=32), seq=32, batch=4, pretrain_steps=3, finetune_steps=2,
                   pretrain_lr=3e-3, finetune_lr=1e-3, warmup_steps=1, eval_windows=2, pretrain_max_s=30.0,
                   finetune_max_s=10.0, share_steps=2, max_subsets_per_n=1, val_windows=2, val_every=1,
                   subset_sizes=(2,)),
}


def subset_order(n_domains: int, max_per_n: int | None, sizes: tuple[int, ...] = (2, 3, 4)) -> list[tuple[int, ...]]:
    """Subsets of each size: first one of each size, then the rest (so a deadline keeps every N)."""
    by_n = [list(itertools.combinations(range(n_domains), n))[:max_per_n] for n in sizes]
    first = [subs[0] for subs in by_n]
    return first + [s for subs in by_n for s in subs[1:]]


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup to ``peak``, then cosine decay to 10 % of it at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


class Trainer:
    """Runs training phases and held-out evaluation on one device."""

    def __init__(self, preset: Preset, device: str, seed: int, corpora: Path) -> None:
        self.p = preset
        self.device = torch.device(device)
        self.seed = seed
        full = {d: load_split(corpora, d, "train") for d in DOMAINS}
        # The last VAL_FRACTION of each train file is validation (early stopping of fine-tunes), never trained on.
        cut = {d: int(len(full[d]) * (1 - VAL_FRACTION)) for d in DOMAINS}
        self.train = {d: full[d][: cut[d]] for d in DOMAINS}
        self.val = {
            d: torch.as_tensor(eval_windows(full[d][cut[d] :], preset.seq, preset.val_windows), device=self.device)
            for d in DOMAINS
        }
        self.test = {
            d: torch.as_tensor(eval_windows(load_split(corpora, d, "test"), preset.seq, preset.eval_windows),
                               device=self.device)
            for d in DOMAINS
        }
        self.autocast = self.device.type == "cuda"
        self.log: list[dict[str, object]] = []
        self.eval_model = TinyMoE(preset.model).to(self.device).eval()

    def run(self, model: TinyMoE, phase: str, domains: tuple[str, ...], steps: int, lr: float, max_s: float,
            seed: int, early_stop: bool = False) -> dict[str, float]:
        """Train ``model`` in place; returns what was done.

        Each window's domain is drawn with probability proportional to the domain's train bytes (so small
        corpora are not repeated more than large ones). With ``early_stop`` (one domain), the validation
        perplexity is measured every ``val_every`` steps from step ``val_every`` on and at the end, and the
        model is left at the best of those states.
        """
        rng = np.random.default_rng(seed)
        sizes = np.array([len(self.train[d]) for d in domains], dtype=float)
        probs = sizes / sizes.sum()
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=self.p.weight_decay,
                                fused=self.device.type == "cuda")
        model.train()
        t0 = time.perf_counter()
        done = 0
        tokens = 0
        for step in range(steps):
            if time.perf_counter() - t0 > max_s:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, lr, self.p.warmup_steps)
            which = rng.choice(len(domains), size=self.p.batch, p=probs)
            parts = [sample_windows(self.train[domains[k]], self.p.seq, int((which == k).sum()), rng)
                     for k in range(len(domains)) if (which == k).any()]
            x = torch.as_tensor(np.concatenate(parts), device=self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                ce, aux = model.loss(x)
                loss = ce + self.p.aux_weight * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            done += 1
            if early_stop and ((step + 1) % self.p.val_every == 0 or step == steps - 1):
                vp = self.perplexity(model.state_dict(), domains[0], split="val")
                model.train()
                self.log.append({"phase": phase, "step": step + 1, "loss": math.log(vp), "aux": float("nan"),
                                 "lr": float("nan"), "elapsed_s": round(time.perf_counter() - t0, 3), "split": "val"})
                if best is None or vp < best[0]:
                    best = (vp, step + 1, {k: v.detach().clone() for k, v in model.state_dict().items()})
            tokens += x.numel() - x.shape[0]
            if step % 25 == 0 or step == steps - 1:
                self.log.append({"phase": phase, "step": step, "loss": float(ce.detach()), "aux": float(aux.detach()),
                                 "lr": opt.param_groups[0]["lr"], "elapsed_s": round(time.perf_counter() - t0, 3),
                                 "split": "train"})
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        if best is not None:
            model.load_state_dict(best[2])
        wall = time.perf_counter() - t0
        print(f"[{phase}] {done}/{steps} steps, {tokens:,d} tokens, {wall:.1f} s, last loss {self.log[-1]['loss']:.4f}",
              flush=True)
        out = {"steps_planned": steps, "steps_done": done, "tokens": tokens, "wall_s": round(wall, 2), "peak_lr": lr,
               "mix": dict(zip(domains, probs.round(4).tolist(), strict=True))}
        if best is not None:
            out.update({"kept_step": best[1], "kept_val_perplexity": round(best[0], 5)})
        return out

    @torch.no_grad()
    def perplexity(self, state: dict[str, torch.Tensor], domain: str, split: str = "test") -> float:
        """exp(mean next-byte cross-entropy) over the domain's held-out (``test``) or ``val`` windows."""
        self.eval_model.load_state_dict(state)
        x = (self.test if split == "test" else self.val)[domain]
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for i in range(0, x.shape[0], 64):
            xb = x[i : i + 64]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                logits, _ = self.eval_model(xb[:, :-1])
            total += torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1), reduction="sum").double()
        return float(torch.exp(total / (x.shape[0] * (x.shape[1] - 1))))


def share_levels(n_positions: int, steps: int) -> list[int]:
    """Fully shared positions per budget, from all to none (``steps + 1`` values)."""
    return sorted({round(n_positions * k / steps) for k in range(steps + 1)}, reverse=True)


def study(trainer: Trainer, states: list[dict[str, torch.Tensor]], base: dict[str, torch.Tensor],
          layout: MoELayout, dtype_bytes: int, out_rows: list[dict[str, object]],
          deadline: float | None = None) -> dict[str, object]:
    """Every subset × budget × method; appends CSV rows; returns checks done along the way.

    ``deadline`` (a ``time.perf_counter()`` value): subsets not started by then are skipped and listed.
    """
    p = trainer.p
    alone = {d: trainer.perplexity(states[i], d) for i, d in enumerate(DOMAINS)}
    checks: dict[str, object] = {"nothing_shared_equals_alone": True, "skipped_subsets": []}
    for subset in subset_order(len(DOMAINS), p.max_subsets_per_n, p.subset_sizes):
        if deadline is not None and time.perf_counter() > deadline:
            checks["skipped_subsets"].append("+".join(DOMAINS[i] for i in subset))  # type: ignore[union-attr]
            continue
        _study_subset(trainer, states, base, layout, subset, dtype_bytes, alone, checks, out_rows)
        print(f"[study] {'+'.join(DOMAINS[i] for i in subset)} done", flush=True)
    checks["alone_perplexity"] = alone
    return checks


def budget_levels(n: int, n_pos: int, model_bytes: int, ne_bytes: int, e_bytes: int, steps: int
                  ) -> tuple[list[int], list[int]]:
    """Budgets of one subset of ``n`` variants.

    Returns (fully shared positions for the all-or-none plans, expert copies for the cluster plans): the
    ``steps + 1`` levels of ``share_levels`` in both forms, plus the point at half the memory of ``n``
    separate models where it is reachable (for the all-or-none plans the nearest level below it).
    """
    s_levels = set(share_levels(n_pos, steps))
    c_levels = {s + (n_pos - s) * n for s in s_levels}
    c_half = (n * model_bytes // 2 - n * ne_bytes) // e_bytes
    if n_pos <= c_half <= n * n_pos:
        c_levels.add(c_half)
        s_levels.add(min(n_pos, math.ceil((n_pos * n - c_half) / (n - 1))))
    return sorted(s_levels, reverse=True), sorted(c_levels)


def _study_subset(trainer: Trainer, states: list[dict[str, torch.Tensor]], base: dict[str, torch.Tensor],
                  layout: MoELayout, subset: tuple[int, ...], dtype_bytes: int, alone: dict[str, float],
                  checks: dict[str, object], out_rows: list[dict[str, object]]) -> None:
    p = trainer.p
    n = len(subset)
    n_pos = layout.n_layers * layout.n_experts
    e_bytes = layout.expert_params * dtype_bytes
    ne_bytes = layout.nonexpert_params * dtype_bytes
    model_bytes = ne_bytes + n_pos * e_bytes
    sep = n * model_bytes
    sub_states = [states[i] for i in subset]
    sub_name = "+".join(DOMAINS[i] for i in subset)
    dist = expert_distances(sub_states, layout, permute=True, device=trainer.device)

    def row(method: str, mem: int, local: int, ppl: float, shared: int, gpu: int, plan_method: str,
            ne_from: int) -> None:
        out_rows.append({
            "method": method, "n_variants": n, "memory_bytes": mem, "memory_fraction": round(mem / sep, 6),
            "domain": DOMAINS[subset[local]], "perplexity": round(ppl, 6), "subset": sub_name,
            "shared_positions": shared, "gpu_copies": gpu, "plan_method": plan_method,
            "nonexpert_from": DOMAINS[subset[ne_from]],
        })

    def evaluate(key: str, plan: Plan, noreconfig: bool) -> None:
        gpu = sum(c.on_gpu for c in plan.copies)
        shared = plan.shared_positions()
        for local in range(n):
            st = materialize(plan, sub_states, layout, local)
            if shared == 0:
                same = all(torch.equal(st[k], sub_states[local][k]) for k in st)
                ppl_ok = trainer.perplexity(st, DOMAINS[subset[local]]) == alone[DOMAINS[subset[local]]]
                checks["own_copies_bit_identical"] = bool(checks.get("own_copies_bit_identical", True) and same)
                checks["nothing_shared_equals_alone"] = bool(checks["nothing_shared_equals_alone"] and ppl_ok)
            ppl = trainer.perplexity(st, DOMAINS[subset[local]])
            row(f"{key}+reconfig", plan.all_weights_bytes, local, ppl, shared, gpu, plan.method, local)
            if noreconfig:
                other = (local + 1) % n
                st = materialize(plan, sub_states, layout, local, nonexpert_from=other)
                ppl = trainer.perplexity(st, DOMAINS[subset[local]])
                row(f"{key}-noreconfig", plan.all_weights_bytes - (n - 1) * ne_bytes, local, ppl, shared, gpu,
                    plan.method, other)

    for local, i in enumerate(subset):
        row("alone", sep, local, alone[DOMAINS[i]], 0, n * n_pos, "", local)
    s_levels, c_levels = budget_levels(n, n_pos, model_bytes, ne_bytes, e_bytes, p.share_steps)
    common = {"expert_bytes": e_bytes, "nonexpert_bytes": ne_bytes, "nonexpert_sets_reserved": n}
    for s in s_levels:
        evaluate("paper", build_plan(dist.l2, method="paper", budget_bytes=n * ne_bytes + s * e_bytes, **common),
                 noreconfig=True)
    for c in c_levels:
        budget = n * ne_bytes + c * e_bytes
        evaluate("cluster-mean", build_plan(dist.l2, method="cluster-mean", perm=dist.perm, budget_bytes=budget,
                                            **common), noreconfig=True)
        evaluate("cluster", build_plan(dist.l2, method="cluster", perm=dist.perm, budget_bytes=budget, **common),
                 noreconfig=False)
    merged = {
        "uniform-average": uniform_average(sub_states),
        "task-arithmetic": task_arithmetic(base, sub_states, p.ta_scale),
        "ties": ties_merge(base, sub_states, p.ties_density, p.ties_scale),
    }
    for name, st in merged.items():
        for local in range(n):
            row(name, model_bytes, local, trainer.perplexity(st, DOMAINS[subset[local]]), n_pos, n_pos, "", 0)


@dataclass(frozen=True)
class StudyConfig:
    """The command line of ``python -m moesim.consolidation.study``.

    Attributes:
        preset: the study's size (steps, widths, budgets); smoke is a CPU check of the whole pipeline.
        device: torch device (cpu, cuda, cuda:1); empty: cuda when available, else cpu.
        out: output folder (required); quality.csv, distances.json, train_log.csv, metadata.json go there.
        corpora: folder of the byte corpora (corpora/data in this repository).
        ckpt_dir: save the base's and the variants' state dicts here (.pt files); empty: not saved.
        seed: seed of pretraining (fine-tune i uses seed + 1 + i).
        deadline_s: skip study subsets not started this many seconds (wall clock) after launch, so the results
            stay partial; null: no deadline.
    """

    preset: str = "smoke"
    device: str = ""
    out: str = ""
    corpora: str = "corpora/data"
    ckpt_dir: str = ""
    seed: int = 0
    deadline_s: float | None = None


def parse_args(argv: list[str] | None) -> StudyConfig:
    """The command line as a :class:`StudyConfig` (``key=value``; ``--key value`` works too), device resolved."""
    import sys

    from moesim.cli import parse_key_values

    cfg = parse_key_values(sys.argv[1:] if argv is None else argv, StudyConfig,
                           prog="python -m moesim.consolidation.study",
                           summary="Train the TinyMoE family and run the consolidation quality study.",
                           choices={"preset": sorted(PRESETS)},
                           examples=("python -m moesim.consolidation.study preset=smoke device=cpu out=/tmp/smoke",))
    if not cfg.out:
        raise UserError("out is required: the output folder, e.g. out=/tmp/smoke (see --help)")
    return replace(cfg, device=cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Train, consolidate and measure; write the study's files under ``out``."""
    args = parse_args(argv)
    out, corpora = Path(args.out), Path(args.corpora)
    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else None
    t_start = time.perf_counter()
    p = PRESETS[args.preset]
    torch.manual_seed(args.seed)
    out.mkdir(parents=True, exist_ok=True)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    trainer = Trainer(p, args.device, args.seed, corpora)
    base = TinyMoE(p.model).to(trainer.device)
    meta: dict[str, object] = {
        "preset": args.preset, "seed": args.seed, "device": args.device, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "model": asdict(p.model), "params": count_params(base), "preset_config": {
            k: v for k, v in asdict(p).items() if k != "model"}, "domains": list(DOMAINS),
        "corpora": "corpora/data (python corpora/build.py; MANIFEST.json)", "dtype_for_bytes": "bf16 (2 bytes)",
    }
    meta["pretrain"] = trainer.run(base, "pretrain", DOMAINS, p.pretrain_steps, p.pretrain_lr, p.pretrain_max_s,
                                   seed=args.seed)
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    states = []
    meta["finetune"] = {}
    for i, d in enumerate(DOMAINS):
        model = TinyMoE(p.model).to(trainer.device)
        model.load_state_dict(base_state)
        meta["finetune"][d] = trainer.run(model, f"finetune-{d}", (d,), p.finetune_steps, p.finetune_lr,
                                          p.finetune_max_s, seed=args.seed + 1 + i, early_stop=True)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in base_state.items()}, ckpt_dir / "base.pt")
        for d, st in zip(DOMAINS, states, strict=True):
            torch.save({k: v.cpu() for k, v in st.items()}, ckpt_dir / f"{d}.pt")
    layout = check_same_architecture(states, list(DOMAINS))
    meta["base_perplexity"] = {d: trainer.perplexity(base_state, d) for d in DOMAINS}
    meta["cross_perplexity"] = {
        v: {d: trainer.perplexity(states[i], d) for d in DOMAINS} for i, v in enumerate(DOMAINS)}
    # Distances among all four and to the base.
    t0 = time.perf_counter()
    full = expert_distances(states, layout, permute=False, device=trainer.device)
    matched = expert_distances(states, layout, permute=True, device=trainer.device)
    to_base = expert_distances([base_state, *states], layout, device=trainer.device)
    nonexpert_l2 = {
        f"{DOMAINS[u]}|{DOMAINS[v]}": float(torch.sqrt(sum(
            ((states[u][k].float() - states[v][k].float()) ** 2).sum() for k in base_state if "experts" not in k)))
        for u in range(4) for v in range(u + 1, 4)}
    expert_norm = [[float(torch.cat([base_state[layout.key(lay, e, m)].float().reshape(-1) for m in ("w1", "w2", "w3")]
                                   ).norm()) for e in range(layout.n_experts)] for lay in range(layout.n_layers)]
    (out / "distances.json").write_text(json.dumps({
        "variants": list(DOMAINS), "l2": full.l2.tolist(), "cosine": full.cosine.tolist(),
        "l2_matched": matched.l2.tolist(), "perm_matched": matched.perm.tolist(),
        "non_identity_matches": int((matched.perm != np.arange(layout.n_experts)).any(-1).sum()),
        "l2_to_base": to_base.l2[0, 1:].tolist(), "cosine_to_base": to_base.cosine[0, 1:].tolist(),
        "base_expert_l2_norm": expert_norm, "nonexpert_l2": nonexpert_l2,
        "shape": "[u][v][layer][expert] (to_base: [variant][layer][expert])",
    }))
    meta["distances_s"] = round(time.perf_counter() - t0, 2)
    rows: list[dict[str, object]] = []
    t0 = time.perf_counter()
    deadline = None if args.deadline_s is None else t_start + args.deadline_s
    meta["checks"] = study(trainer, states, base_state, layout, 2, rows, deadline)
    meta["study_s"] = round(time.perf_counter() - t0, 2)
    meta["bytes"] = {"expert": layout.expert_params * 2, "nonexpert": layout.nonexpert_params * 2,
                     "positions": layout.n_layers * layout.n_experts}
    with (out / "quality.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=QUALITY_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with (out / "train_log.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=("phase", "split", "step", "loss", "aux", "lr", "elapsed_s"))
        w.writeheader()
        w.writerows(trainer.log)
    meta["total_s"] = round(time.perf_counter() - t_start, 2)
    (out / "metadata.json").write_text(json.dumps(meta, indent=1, default=str))
    print(f"[done] {len(rows)} rows, {meta['total_s']} s", flush=True)


if __name__ == "__main__":
    main()
