"""The 8-domain quality study: a ≥ 100M-parameter TinyMoE family and a fine-grained one (imports torch).

    PYTHONPATH=. python3 -m moesim.consolidation.quality_study preset=h200 device=cuda out=OUT deadline_s=540
    python -m moesim.consolidation.quality_study preset=smoke device=cpu out=/tmp/q   # whole pipeline, CPU

Per family (``FAMILIES``): pretrain a base on the 8 domains of ``moesim.consolidation.domains`` (windows drawn
in proportion to each domain's train bytes; cosine schedule over the phase's wall-clock budget; validation
every ``val_every`` steps, the best state kept), then per seed: fine-tune one variant per domain (all
weights, higher peak learning rate, early stopping on the domain's validation split), measure expert
distances (weights, and on activations), and for subsets of N = 2, 3, 4, 8 variants and memory budgets
from 25 % to 100 % evaluate every method on each member's held-out test text: perplexity and next-byte
accuracy. Every result row is appended to OUT/quality.csv as soon as it exists, so a deadline keeps what was
done; metadata.json, train_log.csv and distances.json are rewritten after every phase.

Methods (``PLAN_METHODS`` and ``MERGE_METHODS``):
  * ``paper`` — the paper's loader (weight L2, all-or-none sharing, round-robin copies);
  * ``cluster-mean`` — complete-linkage sharing on weight L2 (with permutation matching where E ≤ 16),
    the cluster's mean as its copy (the first study's "ours");
  * ``act-cluster-mean`` — the same clustering on *activation* distances: for each position, the RMS per
    calibration token of the difference between two variants' expert outputs on the tokens the base routes
    there (so a rarely used expert counts less, and distances are comparable across layers, which is what
    lets the global greedy merge allocate the budget per layer);
  * ``act-cluster-ties`` — as ``act-cluster-mean`` but a shared copy is the TIES merge of the members'
    deltas from the base: elect each entry's sign, average only the deltas that agree with it (trimming at
    ``ties_copy_density``, 1.0 = none: close experts' small deltas are signal, and trimming would change a
    copy even when its members are identical);
  * merges of whole models (1/N of the memory): ``uniform-average``, ``task-arithmetic``, ``ties``, ``dare``
    (DARE + task arithmetic); the scale of the last three is chosen per subset on the validation split
    from ``MERGE_SCALES``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

# first: run as a command without torch, one line instead of a traceback from the imports below
from moesim.torch_import import torch

# isort: split
from moesim.consolidation.apply import materialize
from moesim.consolidation.builders import build_plan
from moesim.consolidation.corpus import eval_windows
from moesim.consolidation.domains import DOMAINS8, build_domains
from moesim.consolidation.drift import depth_profile
from moesim.consolidation.merging import dare, disjoint_mean, elect_sign, ties_tensor, trim
from moesim.consolidation.schedule import convergence, size_plan
from moesim.consolidation.weights import MoELayout, check_same_architecture, expert_distances, layout_of
from moesim.errors import UserError, exit_on_user_error
from moesim.tinymoe import (
    CPU_CONFIG,
    DISPATCH_MODES,
    FINE_CONFIG,
    LARGE_CONFIG,
    TinyMoE,
    TinyMoEConfig,
    count_params,
    set_dispatch,
)

COLUMNS = ("family", "seed", "method", "n_variants", "subset", "domain", "budget", "memory_bytes",
           "memory_fraction", "perplexity", "accuracy", "shared_positions", "gpu_copies")
PLAN_METHODS = ("paper", "cluster-mean", "act-cluster-mean", "act-cluster-ties")
MERGE_METHODS = ("uniform-average", "task-arithmetic", "ties", "dare")
MERGE_SCALES = (0.2, 0.35, 0.5, 0.75, 1.0)
BUDGETS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
VAL_FRACTION = 0.05


@dataclass(frozen=True)
class Family:
    """One model family's sizes and budgets (times in seconds of wall clock).

    Attributes:
        name / model: label and architecture.
        seq / batch: tokens per window, windows per training step.
        pretrain_lr / pretrain_s: peak AdamW learning rate and wall budget of pretraining.
        finetune_lr / finetune_steps / finetune_s: the same for each fine-tune (stops at whichever comes first).
        warmup: warmup steps; eval_windows / val_windows / calib_windows: held-out test windows per domain,
            validation windows per domain, calibration windows per domain for activation distances.
        val_every / ft_val_every: validation period of pretraining / fine-tuning (steps).
        seeds: fine-tuning and study seeds; subsets: how many subsets per N (covering the domains in a
            seed-specific random order); study_s: wall budget of one seed's study.
        ties_density / dare_drop: of the whole-model TIES / DARE baselines; ties_copy_density: of
            ``act-cluster-ties``'s copies. reserve_s: wall time left for the families after this one.
        budgets: memory fractions studied (None: ``BUDGETS``); one_per_n_first: study one subset of every N
            before any second subset (so a deadline still leaves every N measured).
        auto_schedule: size the run from measured speed (``moesim.consolidation.schedule.size_plan``): after
            ``size_at`` pretraining steps the step time is measured, then the seeds that fit (of ``seeds``,
            keeping ≥ ``min_pretrain_s`` of pretraining) and the pretraining steps (≤ ``max_pretrain_steps``)
            are fixed, and the cosine runs over exactly those steps; ``study_s`` is then per seed and
            ``extra_per_seed_s`` the expected distances/evaluation time per seed. Otherwise ``pretrain_s``
            bounds pretraining by wall clock as before.
        ft_warmup: fine-tuning warmup steps (None: ``warmup``); methods: the plan methods studied.
        cross_seeds: seeds (the first ones) whose every variant is evaluated on every domain (``cross``).
        dispatch: expert dispatch (``moesim.tinymoe.DISPATCH_MODES``) or ``auto``: on CUDA, check and time each
            mode in a subprocess (so a failing kernel cannot poison this process) and take the fastest correct one.
        eval_batch: windows per forward pass in evaluation.
        pretrain_share: None: pretraining and fine-tuning draw from all of a domain's training bytes; a
            share s: pretraining from the first s of each domain's training bytes, fine-tunes from the rest
            only, so each fine-tune learns text its base never saw (as real fine-tunes do).
        pretrain_patience: stop pretraining once this many validations in a row have not beaten the best
            (None: never); the time saved goes to the study.
        split_block: with ``pretrain_share``, split every block of this many bytes instead of the whole text
            (:func:`split_train`), so both halves cover every work of a domain.
    """

    name: str
    model: TinyMoEConfig
    seq: int
    batch: int
    pretrain_lr: float
    pretrain_s: float
    finetune_lr: float
    finetune_steps: int
    finetune_s: float
    warmup: int
    eval_windows: int
    val_windows: int
    calib_windows: int
    val_every: int
    ft_val_every: int
    seeds: tuple[int, ...]
    subsets: dict[int, int] = field(default_factory=lambda: {8: 1, 2: 4, 4: 2, 3: 2})
    study_s: float = 60.0
    weight_decay: float = 0.1
    aux_weight: float = 0.01
    ties_density: float = 0.2
    ties_copy_density: float = 1.0
    dare_drop: float = 0.9
    reserve_s: float = 0.0
    budgets: tuple[float, ...] | None = None
    one_per_n_first: bool = False
    auto_schedule: bool = False
    size_at: int = 20
    min_pretrain_s: float = 100.0
    max_pretrain_steps: int = 1_000_000
    extra_per_seed_s: float = 8.0
    ft_warmup: int | None = None
    methods: tuple[str, ...] = PLAN_METHODS
    cross_seeds: int = 1_000
    dispatch: str = "loop"
    eval_batch: int = 32
    pretrain_share: float | None = None
    pretrain_patience: int | None = None
    split_block: int | None = None


_SMOKE = replace(CPU_CONFIG, max_seq=64)
# Issue 12's third call (one H200, ≤ 480 s, run 2026-11-30): the ≥ 100M family alone, sized from its measured
# speed (moesim.consolidation.schedule.size_plan): 3 seeds if they leave ≥ 120 s of pretraining, else fewer;
# fine-tunes at peak lr 3e-4 (the second call's 1e-3 spoiled them), 48 steps, validated every 4 from step 0;
# N = 8, 4, 3, 2 round-robin over seeds (per seed 1, 2, 3, 4 subsets: each covers every domain); budgets
# 25/50/75 % + all-shared (100 % = the variant alone); pretraining on the first half of each domain's training
# bytes (≤ 1100 steps ≈ 7.5 passes over its 4.68 MB, stopped after 3 validations without a new best),
# fine-tunes on the other half only.
_V3_LARGE = Family("large", LARGE_CONFIG, seq=512, batch=64, pretrain_lr=1.5e-3, pretrain_s=1e9,
                   finetune_lr=3e-4, finetune_steps=48, finetune_s=40.0, warmup=30, ft_warmup=4, eval_windows=40,
                   val_windows=12, calib_windows=4, val_every=50, ft_val_every=4, seeds=(0, 1, 2),
                   subsets={8: 1, 4: 2, 3: 3, 2: 4}, study_s=45.0, budgets=(0.25, 0.5, 0.75), auto_schedule=True,
                   size_at=20, min_pretrain_s=120.0, extra_per_seed_s=8.0,
                   methods=("paper", "cluster-mean", "act-cluster-mean"), cross_seeds=1, dispatch="auto",
                   eval_batch=64, pretrain_share=0.5, max_pretrain_steps=1100, pretrain_patience=3)

PRESETS: dict[str, tuple[Family, ...]] = {
    "h200": (
        Family("large", LARGE_CONFIG, seq=512, batch=64, pretrain_lr=1.5e-3, pretrain_s=135.0, finetune_lr=1e-3,
               finetune_steps=400, finetune_s=5.0, warmup=30, eval_windows=40, val_windows=12, calib_windows=4,
               val_every=50, ft_val_every=10, seeds=(0, 1, 2), study_s=38.0, reserve_s=105.0),
        Family("fine", FINE_CONFIG, seq=512, batch=64, pretrain_lr=1.5e-3, pretrain_s=50.0, finetune_lr=1e-3,
               finetune_steps=300, finetune_s=2.5, warmup=30, eval_windows=40, val_windows=12, calib_windows=4,
               val_every=50, ft_val_every=10, seeds=(0,), subsets={8: 1, 2: 4, 4: 2}, study_s=25.0),
    ),
    # Prepared from what the h200 run taught, NOT run yet (docs/consolidation.md, "Fixes for the next call"):
    # fine-tunes at the first study's peak lr (3e-4, which beat its base by 4.6-15 %) for longer; one subset of
    # every N before any second; 3 budgets + all-shared instead of 6 + all-shared. Meant for two GPUs at once:
    #   CUDA_VISIBLE_DEVICES=0 ... families=large out=OUT/large & CUDA_VISIBLE_DEVICES=1 ... families=fine out=OUT/fine
    "h200-next": (
        Family("large", LARGE_CONFIG, seq=512, batch=64, pretrain_lr=1.5e-3, pretrain_s=170.0, finetune_lr=3e-4,
               finetune_steps=400, finetune_s=9.0, warmup=10, eval_windows=40, val_windows=12, calib_windows=4,
               val_every=50, ft_val_every=10, seeds=(0, 1, 2), subsets={2: 4, 3: 2, 4: 2, 8: 1}, study_s=45.0,
               budgets=(0.25, 0.5, 0.75), one_per_n_first=True),
        Family("fine", FINE_CONFIG, seq=512, batch=64, pretrain_lr=1.5e-3, pretrain_s=200.0, finetune_lr=3e-4,
               finetune_steps=300, finetune_s=6.0, warmup=10, eval_windows=40, val_windows=12, calib_windows=4,
               val_every=50, ft_val_every=10, seeds=(0, 1, 2), subsets={2: 4, 3: 2, 4: 2, 8: 1}, study_s=50.0,
               budgets=(0.25, 0.5, 0.75), one_per_n_first=True),
    ),
    "h200-v3": (_V3_LARGE,),
    # Prepared after the third call, NOT run: h200-v3 with the probe fixed (probe_ok) and the pretraining /
    # fine-tuning halves interleaved in 64 KiB blocks (the byte-position cut left milton's fine-tune only verse).
    "h200-v4": (replace(_V3_LARGE, split_block=65536),),
    # h200-v3's code paths at toy size on CPU (auto schedule, sorted dispatch, round-robin study).
    "smoke-v3": (
        Family("large", _SMOKE, seq=64, batch=8, pretrain_lr=3e-3, pretrain_s=1e9, finetune_lr=1e-3,
               finetune_steps=6, finetune_s=20.0, warmup=4, ft_warmup=2, eval_windows=3, val_windows=2,
               calib_windows=1, val_every=5, ft_val_every=2, seeds=(0, 1, 2), subsets={8: 1, 4: 2, 3: 1, 2: 2},
               study_s=4.0, budgets=(0.25, 0.5, 0.75), auto_schedule=True, size_at=8, min_pretrain_s=3.0,
               max_pretrain_steps=60, extra_per_seed_s=1.0, methods=("paper", "cluster-mean", "act-cluster-mean"),
               cross_seeds=1, dispatch="auto", eval_batch=64, pretrain_share=0.5, pretrain_patience=3),
    ),
    # h200-v4's interleaved split at toy size (blocks of 4 KiB).
    "smoke-v4": (),
    "smoke": (
        Family("large", _SMOKE, seq=64, batch=8, pretrain_lr=3e-3, pretrain_s=6.0, finetune_lr=2e-3,
               finetune_steps=6, finetune_s=2.0, warmup=2, eval_windows=3, val_windows=2, calib_windows=1,
               val_every=5, ft_val_every=2, seeds=(0, 1), subsets={8: 1, 2: 2, 3: 1, 4: 1}, study_s=60.0,
               one_per_n_first=True),
        Family("fine", replace(_SMOKE, n_experts=8, top_k=4, d_ff=32, shared_d_ff=64), seq=64, batch=8,
               pretrain_lr=3e-3, pretrain_s=4.0, finetune_lr=2e-3, finetune_steps=4, finetune_s=2.0, warmup=2,
               eval_windows=3, val_windows=2, calib_windows=1, val_every=5, ft_val_every=2, seeds=(0,),
               subsets={8: 1, 2: 1}, study_s=30.0, budgets=(0.5,)),
    ),
}
PRESETS["smoke-v4"] = (replace(PRESETS["smoke-v3"][0], split_block=4096),)
# (Reading order of the h200 preset's time: startup ~15 s, large: 135 + 3 × (8 × 5 + ~5 + 38) ≈ 385 s,
#  fine: 50 + 8 × 2.5 + ~3 + 25 ≈ 100 s; the whole call ≈ 500 s of a 540 s deadline.)


def lr_at(progress: float, step: int, peak: float, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``peak`` to 10 % of it as ``progress`` goes 0 → 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, max(0.0, progress))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def subsets_for(seed: int, n_domains: int, sizes: dict[int, int], one_per_n_first: bool = False
                ) -> list[tuple[int, ...]]:
    """Subsets per N in the order of ``sizes``: consecutive blocks of one seeded random order of the domains
    (wrapping around), so ``n_domains / N`` subsets cover every domain once; each subset sorted. With
    ``one_per_n_first``, the first subset of every N comes before any second one."""
    order = np.random.default_rng(1000 + seed).permutation(n_domains).tolist()
    by_n = [[tuple(sorted(order[(k * n + j) % n_domains] for j in range(n))) for k in range(count)]
            for n, count in sizes.items()]
    if one_per_n_first:
        return [subs[0] for subs in by_n if subs] + [s for subs in by_n for s in subs[1:]]
    return [s for subs in by_n for s in subs]


def budget_copies(frac: float, n: int, n_pos: int, ne_bytes: int, e_bytes: int) -> int | None:
    """Expert copies of a cluster plan holding ``frac`` of N separate models' weights (None: unreachable,
    i.e. fewer copies than positions)."""
    model = ne_bytes + n_pos * e_bytes
    c = int((frac * n * model - n * ne_bytes) // e_bytes)
    if c < n_pos:
        return None
    return min(c, n * n_pos)


def merge_scales(n: int) -> tuple[float, ...]:
    """Scales tried for the tuned whole-model merges of N variants: ``MERGE_SCALES`` and 1/N (task arithmetic
    at 1/N is uniform averaging, so the tuned merge can never lose to it on the validation split), ascending."""
    return tuple(sorted({*MERGE_SCALES, round(1.0 / n, 6)}))


def paper_shared(copies: int, n: int, n_pos: int) -> int:
    """Fully shared positions of an all-or-none plan within the memory of ``copies`` expert copies."""
    return min(n_pos, max(0, math.ceil((n * n_pos - copies) / (n - 1))))


class Data:
    """Train arrays, validation / test / calibration windows (on the device) of the 8 domains."""

    def __init__(self, corpora: Path, fam: Family, device: torch.device) -> None:
        raw = build_domains(corpora)
        self.domains = DOMAINS8
        self.train, self.val, self.test, self.calib = {}, {}, {}, {}
        for d in DOMAINS8:
            full = raw[d]["train"]
            cut = int(len(full) * (1 - VAL_FRACTION))
            self.train[d] = full[:cut]
            val = eval_windows(full[cut:], fam.seq, fam.val_windows + fam.calib_windows)
            self.val[d] = torch.as_tensor(val[: fam.val_windows], device=device)
            self.calib[d] = torch.as_tensor(val[fam.val_windows:] if len(val) > fam.val_windows else val[:1],
                                            device=device)
            self.test[d] = torch.as_tensor(eval_windows(raw[d]["test"], fam.seq, fam.eval_windows), device=device)
        self.sizes = {d: len(self.train[d]) for d in DOMAINS8}
        halves = {d: split_train(a, fam.pretrain_share, fam.split_block) for d, a in self.train.items()}
        self.parts = {"pretrain": TrainPart({d: h[0] for d, h in halves.items()}, device),
                      "finetune": TrainPart({d: h[1] for d, h in halves.items()}, device)}


def split_train(a: np.ndarray, share: float | None, block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pretraining bytes, fine-tuning bytes) of one domain's training bytes ``a``. ``share`` None: both are
    all of ``a``. Else with ``block`` None: the first ``share`` of ``a`` and the rest (a cut by position, so
    a domain made of several works can give its halves different works); with ``block`` = B: the first
    ``int(share · B)`` bytes of every block of B bytes and the rest of it, concatenated (both halves cover the
    whole text; a training window can straddle a seam between blocks)."""
    if not share:
        return a, a
    if block is None:
        cut = int(len(a) * share)
        return a[:cut], a[cut:]
    k = int(share * block)
    starts = range(0, len(a), block)
    return (np.concatenate([a[i : i + k] for i in starts]), np.concatenate([a[i + k : i + block] for i in starts]))


class TrainPart:
    """The training bytes of the 8 domains that one phase draws from (all of them, or with
    ``Family.pretrain_share`` the first share for pretraining and the rest for fine-tuning), held on the device
    as one flat uint8 tensor."""

    def __init__(self, arrays: dict[str, np.ndarray], device: torch.device) -> None:
        self.sizes = {d: len(arrays[d]) for d in DOMAINS8}
        self.flat = torch.as_tensor(np.concatenate([arrays[d] for d in DOMAINS8]), device=device)  # uint8
        lens = np.array([len(arrays[d]) for d in DOMAINS8])
        self.starts = torch.as_tensor(np.concatenate([[0], np.cumsum(lens)[:-1]]), device=device)
        self.lens = torch.as_tensor(lens, device=device)

    def batch(self, domains: torch.Tensor, cdf: torch.Tensor, batch: int, seq: int,
              gen: torch.Generator) -> torch.Tensor:
        """``batch`` random training windows of ``seq + 1`` bytes, int64 (batch, seq + 1), drawn on the device:
        a domain of ``domains`` (indices into ``DOMAINS8``) by the cumulative probabilities ``cdf``, then a
        uniform start inside it (no host sync)."""
        u = torch.rand(2, batch, generator=gen, device=self.flat.device)
        k = torch.searchsorted(cdf, u[0], right=True).clamp(max=len(cdf) - 1)
        d = domains[k]
        start = self.starts[d] + (u[1] * (self.lens[d] - seq - 1).double()).long()
        return self.flat[start[:, None] + torch.arange(seq + 1, device=self.flat.device)].long()


def clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


class Runner:
    """Training and evaluation of one family on one device; appends to a log."""

    def __init__(self, fam: Family, data: Data, device: torch.device, log: list[dict[str, object]]) -> None:
        self.fam, self.data, self.device, self.log = fam, data, device, log
        self.autocast = device.type == "cuda"
        with torch.device(device):  # initialised where it runs (a 157M-parameter CPU init takes seconds)
            self.eval_model = TinyMoE(fam.model).eval()

    def train(self, model: TinyMoE, phase: str, domains: tuple[str, ...], lr: float, max_s: float,
              max_steps: int | None, seed: int, val_every: int, warmup: int | None = None,
              sizer: Callable[[float], tuple[int, float, int]] | None = None,
              val_at_start: bool = False, part: str = "pretrain", patience: int | None = None) -> dict[str, object]:
        """Train in place; the state with the best mean validation loss over ``domains`` is kept.

        Windows are drawn on the device (``Data.batch``: no host sync per step). With ``sizer``, the step time
        is measured over steps 3 … ``size_at`` (after warmup has begun) and ``sizer(step_s)`` returns
        (max_steps, max_s, val_every) for the rest: the cosine then runs over exactly max_steps.
        ``val_at_start``: validate before the first step too (step 0 = the starting weights, so a run that
        never beats its start keeps them, and says so). ``patience``: stop early once that many validations in
        a row have not beaten the best (early stopping at the validation minimum)."""
        f = self.fam
        warm = f.warmup if warmup is None else warmup
        gen = torch.Generator(device=self.device).manual_seed(seed)
        idx = torch.as_tensor([self.data.domains.index(d) for d in domains], device=self.device)
        src = self.data.parts[part]
        sizes = torch.as_tensor([float(src.sizes[d]) for d in domains], device=self.device)
        cdf = torch.cumsum(sizes / sizes.sum(), 0)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=f.weight_decay,
                                fused=self.device.type == "cuda")
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        model.train()
        t0 = time.perf_counter()
        step = tokens = 0
        t_mark = t0
        sized: dict[str, object] = {}
        worse = 0
        stopped: int | None = None
        while True:
            if sizer is not None and step in (3, f.size_at):
                self.sync()
                if step == 3:
                    t_mark = time.perf_counter()
                else:
                    step_s = (time.perf_counter() - t_mark) / (f.size_at - 3)
                    max_steps, max_s, val_every = sizer(step_s)
                    max_s += time.perf_counter() - t0
                    sized = {"step_s": round(step_s, 5), "sized_at": step, "max_steps": max_steps,
                             "guard_s": round(max_s, 1), "val_every": val_every}
            elapsed = time.perf_counter() - t0
            progress = max(elapsed / max_s, step / max_steps if max_steps else 0.0)
            done = progress >= 1.0
            if (step > 0 or val_at_start) and (done or step % val_every == 0):
                vl = float(np.mean([self.evaluate(model.state_dict(), d, "val")[0] for d in domains]))
                model.train()
                self.log.append({"phase": phase, "split": "val", "step": step, "loss": vl, "lr": float("nan"),
                                 "elapsed_s": round(time.perf_counter() - t0, 3)})
                if best is None or vl < best[0]:
                    best = (vl, step, clone(model.state_dict()))
                    worse = 0
                else:
                    worse += 1
                    if patience is not None and worse >= patience:
                        stopped = step
                        done = True
            if done:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(progress, step, lr, warm)
            x = src.batch(idx, cdf, f.batch, f.seq, gen)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                ce, aux = model.loss(x)
                loss = ce + f.aux_weight * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            tokens += x.shape[0] * (x.shape[1] - 1)
            if step % 25 == 0:
                self.log.append({"phase": phase, "split": "train", "step": step, "loss": float(ce.detach()),
                                 "lr": opt.param_groups[0]["lr"], "elapsed_s": round(time.perf_counter() - t0, 3)})
            step += 1
        self.sync()
        wall = time.perf_counter() - t0
        assert best is not None
        model.load_state_dict(best[2])
        print(f"[{phase}] {step} steps, {tokens:,d} tokens, {wall:.1f} s ({tokens / wall:,.0f} tok/s), "
              f"best val loss {best[0]:.4f} at step {best[1]}", flush=True)
        return {"steps": step, "tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall),
                "peak_lr": lr, "kept_step": best[1], "kept_val_loss": round(best[0], 5), "early_stop": stopped,
                **sized}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def evaluate(self, state: dict[str, torch.Tensor], domain: str, split: str = "test") -> tuple[float, float]:
        """(mean next-byte cross-entropy in nats, next-byte accuracy) over the domain's windows of ``split``."""
        self.eval_model.load_state_dict(state)
        x = {"test": self.data.test, "val": self.data.val}[split][domain]
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        hits = torch.zeros((), dtype=torch.int64, device=self.device)
        for i in range(0, x.shape[0], self.fam.eval_batch):
            xb = x[i : i + self.fam.eval_batch]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                logits, _ = self.eval_model(xb[:, :-1])
            logits = logits.float().reshape(-1, logits.shape[-1])
            y = xb[:, 1:].reshape(-1)
            total += torch.nn.functional.cross_entropy(logits, y, reduction="sum").double()
            hits += (logits.argmax(-1) == y).sum()
        n = x.shape[0] * (x.shape[1] - 1)
        return float(total / n), float(hits) / n


@torch.no_grad()
def activation_distances(runner: Runner, base: dict[str, torch.Tensor], states: list[dict[str, torch.Tensor]],
                         layout: MoELayout, perm: np.ndarray) -> np.ndarray:
    """``act[u, v, l, i]``: ‖E_u(X) − E_v(X)‖_F / √T for slot i of MoE layer l, where X are the calibration
    tokens (all domains, T of them per layer) that the base's router sends to slot i (top-k) at the input
    of that layer's experts in the base; E_v is variant v's expert in slot i (``perm``). float64, (N, N, L, E)."""
    cfg = runner.fam.model
    model = runner.eval_model
    model.load_state_dict(base)
    x = torch.cat([runner.data.calib[d] for d in runner.data.domains])[:, :-1]
    inputs: dict[int, torch.Tensor] = {}
    hooks = [layer.block_sparse_moe.register_forward_hook(
        lambda mod, args, out, i=i: inputs.__setitem__(i, args[0].reshape(-1, cfg.d_model).float()))
        for i, layer in enumerate(model.model.layers)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    n = len(states)
    act = np.zeros((n, n, layout.n_layers, layout.n_experts))
    for li, lid in enumerate(layout.layer_ids):
        h = inputs[lid]  # (T, C)
        top = (h @ base[f"model.layers.{lid}.block_sparse_moe.gate.weight"].float().T).topk(cfg.top_k, -1).indices
        for i in range(layout.n_experts):
            tok = (top == i).any(-1)
            xi = h[tok]
            if xi.shape[0] == 0:
                continue
            outs = []
            for v, st in enumerate(states):
                e = int(perm[v, li, i])
                w1, w2, w3 = (st[layout.key(li, e, m)].float() for m in ("w1", "w2", "w3"))
                outs.append((torch.nn.functional.silu(xi @ w1.T) * (xi @ w3.T)) @ w2.T)
            ys = torch.stack(outs)  # (N, t, C)
            d = torch.cdist(ys.reshape(n, -1)[None], ys.reshape(n, -1)[None])[0] / math.sqrt(h.shape[0])
            act[:, :, li, i] = d.double().cpu().numpy()
    return act


def merged_deltas(base: dict[str, torch.Tensor], states: list[dict[str, torch.Tensor]], fam: Family,
                  seed: int) -> dict[str, Callable[[float], dict[str, torch.Tensor]]]:
    """Per merge method, a function scale → merged state dict (deltas computed once)."""
    keys = list(base)
    deltas = {k: torch.stack([s[k].float() - base[k].float() for s in states]) for k in keys}
    ta = {k: deltas[k].sum(0) for k in keys}
    ties = {}
    for k in keys:
        tr = torch.stack([trim(d, fam.ties_density) for d in deltas[k]])
        ties[k] = disjoint_mean(tr, elect_sign(tr))
    g = torch.Generator(device=base[keys[0]].device).manual_seed(seed)
    dr = {k: sum(dare(d, fam.dare_drop, g) for d in deltas[k]) for k in sorted(keys)}
    n = len(states)

    def make(delta: dict[str, torch.Tensor]) -> Callable[[float], dict[str, torch.Tensor]]:
        return lambda s: {k: (base[k].float() + s * delta[k]).to(base[k].dtype) for k in keys}

    return {"uniform-average": lambda _s: make(ta)(1.0 / n), "task-arithmetic": make(ta), "ties": make(ties),
            "dare": make(dr)}


def study_subset(runner: Runner, fam: Family, seed: int, base: dict[str, torch.Tensor],
                 states: list[dict[str, torch.Tensor]], layout: MoELayout, wdist, act: np.ndarray,
                 subset: tuple[int, ...], alone: dict[str, tuple[float, float]], emit: Callable[[dict], None],
                 checks: dict[str, object]) -> None:
    """All methods and budgets for one subset; each row goes to ``emit`` as soon as it is measured."""
    doms = runner.data.domains
    n = len(subset)
    n_pos = layout.n_layers * layout.n_experts
    e_bytes, ne_bytes = layout.expert_params * 2, layout.nonexpert_params * 2  # bf16
    sep = n * (ne_bytes + n_pos * e_bytes)
    sub = [states[i] for i in subset]
    name = "+".join(doms[i] for i in subset)
    ix = np.ix_(subset, subset)
    pair_w, pair_a = wdist.l2[ix], act[ix]
    perm = wdist.perm[list(subset)]

    def row(method: str, budget: str, mem: int, local: int, ce: float, acc: float, shared: int, gpu: int) -> None:
        emit({"family": fam.name, "seed": seed, "method": method, "n_variants": n, "subset": name,
              "domain": doms[subset[local]], "budget": budget, "memory_bytes": mem,
              "memory_fraction": round(mem / sep, 6), "perplexity": round(math.exp(ce), 6),
              "accuracy": round(acc, 6), "shared_positions": shared, "gpu_copies": gpu})

    for local, i in enumerate(subset):
        row("alone", "1", sep, local, *alone[doms[i]], 0, n * n_pos)
    levels: list[tuple[str, int]] = [("all-shared", n_pos)]
    for frac in fam.budgets or BUDGETS:
        c = budget_copies(frac, n, n_pos, ne_bytes, e_bytes)
        if c is not None and c not in {lv[1] for lv in levels}:
            levels.append((f"{frac:g}", c))
    common = {"expert_bytes": e_bytes, "nonexpert_bytes": ne_bytes, "nonexpert_sets_reserved": n}

    ties_cache: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    def ties_combine(key: str, ts: list[torch.Tensor]) -> torch.Tensor:
        ck = (key, tuple(id(t) for t in ts))  # one merge per copy, not per variant using it
        if ck not in ties_cache:
            ties_cache[ck] = ties_tensor(base[key], ts, fam.ties_copy_density, 1.0)
        return ties_cache[ck]

    for label, c in levels:
        budget = n * ne_bytes + c * e_bytes
        plans = {  # built only for the family's methods
            "paper": (lambda c=c: build_plan(pair_w, method="paper", budget_bytes=n * ne_bytes
                                         + paper_shared(c, n, n_pos) * e_bytes, **common), None),
            "cluster-mean": (lambda budget=budget: build_plan(pair_w, method="cluster-mean", perm=perm, budget_bytes=budget,
                                                **common), None),
            "act-cluster-mean": (lambda budget=budget: build_plan(pair_a, method="cluster-mean", perm=perm, budget_bytes=budget,
                                                    **common), None),
            "act-cluster-ties": (lambda budget=budget: build_plan(pair_a, method="cluster-mean", perm=perm, budget_bytes=budget,
                                                    **common), ties_combine),
        }
        for method, (make_plan, comb) in plans.items():
            if method not in fam.methods:
                continue
            plan = make_plan()
            gpu = sum(cp.on_gpu for cp in plan.copies)
            for local in range(n):
                st = materialize(plan, sub, layout, local, combine=comb)
                ce, acc = runner.evaluate(st, doms[subset[local]])
                row(method, label, plan.all_weights_bytes, local, ce, acc, plan.shared_positions(), gpu)
    model_bytes = ne_bytes + n_pos * e_bytes
    for method, make in merged_deltas(base, sub, fam, seed).items():
        scale = 1.0 / n
        if method != "uniform-average":
            val = {s: float(np.mean([runner.evaluate(make(s), doms[i], "val")[0] for i in subset]))
                   for s in merge_scales(n)}
            scale = min(val, key=lambda s: (val[s], s))
            checks.setdefault("merge_scales", []).append({"subset": name, "seed": seed, "method": method,
                                                          "scale": scale})
        st = make(scale)
        for local in range(n):
            ce, acc = runner.evaluate(st, doms[subset[local]])
            row(method, f"1/{n}", model_bytes, local, ce, acc, n_pos, n_pos)


def layer_drift(wdist, to_base: np.ndarray, base_norm: np.ndarray) -> dict[str, list[float]]:
    """Per MoE layer: mean relative L2 between variants and to the base (over pairs and experts)."""
    n = wdist.l2.shape[0]
    iu = np.triu_indices(n, 1)
    between = wdist.l2[iu[0], iu[1]] / base_norm[None]  # (pairs, L, E)
    return {"between_variants": between.mean((0, 2)).round(5).tolist(),
            "between_variants_min": between.min((0, 2)).round(5).tolist(),
            "between_variants_max": between.max((0, 2)).round(5).tolist(),
            "to_base": (to_base / base_norm[None]).mean((0, 2)).round(5).tolist()}


@dataclass(frozen=True)
class QualityStudyConfig:
    """The command line of ``python -m moesim.consolidation.quality_study``.

    Attributes:
        preset: the study's size (steps, widths, budgets); smoke is a CPU check of the whole pipeline.
        device: torch device (cpu, cuda, cuda:1); empty: cuda when available, else cpu.
        out: output folder (required); quality.csv, distances.json, train_log.csv, metadata.json go there.
        corpora: folder of the byte corpora (corpora/data in this repository).
        seed: pretraining seed.
        families: the preset's families to run (comma list of names); empty: all of them.
        deadline_s: wall-clock budget of the whole run (seconds); phases are shortened to end within it.
    """

    preset: str = "smoke"
    device: str = ""
    out: str = ""
    corpora: str = "corpora/data"
    seed: int = 0
    families: tuple[str, ...] = ()
    deadline_s: float = 1e9


def parse_args(argv: list[str] | None) -> QualityStudyConfig:
    """The command line as a :class:`QualityStudyConfig` (``key=value``; ``--key value`` works too), device
    resolved."""
    import sys

    from moesim.cli import parse_key_values

    cfg = parse_key_values(sys.argv[1:] if argv is None else argv, QualityStudyConfig,
                           prog="python -m moesim.consolidation.quality_study",
                           summary="The 8-domain consolidation quality study (TinyMoE families).",
                           choices={"preset": sorted(PRESETS)},
                           examples=("python -m moesim.consolidation.quality_study preset=smoke device=cpu out=/tmp/q",
                                     "python -m moesim.consolidation.quality_study preset=h200-next device=cuda "
                                     "out=OUT/large families=large deadline_s=540"))
    if not cfg.out:
        raise UserError("out is required: the output folder, e.g. out=/tmp/q (see --help)")
    names = {f.name for f in PRESETS[cfg.preset]}
    unknown = [f for f in cfg.families if f not in names]
    if unknown:
        raise UserError(f"families={','.join(cfg.families)}: {', '.join(unknown)} not in preset {cfg.preset!r}; "
                        f"valid: {', '.join(sorted(names))}")
    return replace(cfg, device=cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def probe_ok(loss: float, ref_loss: float, grad_rel_err: float) -> bool:
    """Whether a dispatch mode computes ``loop``'s function: loss within 0.1 % (relative) and the probed
    gradients within 15 %. bf16 gradients of a random-initialised model differ by ~5 % between summation
    orders (the third call measured 0.052 for both sorted and grouped, with losses equal to 3e-5, and its
    former 5 % bound rejected both): the loss is the sharp test, the gradient bound catches a broken backward."""
    return bool(abs(loss - ref_loss) < 1e-3 * abs(ref_loss) and grad_rel_err < 0.15)


def dispatch_probe(cfg_json: str, device: str, batch: int, seq: int) -> None:
    """Print (JSON) each expert dispatch's loss and gradient error against ``loop`` and its seconds per
    forward + backward on one random batch (bf16 autocast on CUDA). Run in a subprocess by
    :func:`choose_dispatch`, so a kernel that fails cannot poison the study's process."""
    cfg = TinyMoEConfig(**json.loads(cfg_json))
    dev = torch.device(device)
    torch.manual_seed(0)
    with torch.device(dev):
        model = TinyMoE(cfg)
    x = torch.randint(0, cfg.vocab, (batch, seq + 1), device=dev)
    probe = [model.model.layers[0].block_sparse_moe.gate.weight,
             model.model.layers[-1].block_sparse_moe.experts[0].w1.weight, model.model.embed_tokens.weight]
    res: dict[str, object] = {}
    ref = None

    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            ce, aux = model.loss(x)
        (ce + 0.01 * aux).backward()
        return ce.detach()

    for mode in DISPATCH_MODES:
        try:
            set_dispatch(model, mode)
            ce = float(step())
            g = torch.cat([p.grad.float().reshape(-1) for p in probe])
            if ref is None:
                ref = (ce, g)
            err = float((g - ref[1]).norm() / ref[1].norm())
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(3):
                step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            res[mode] = {"ok": probe_ok(ce, ref[0], err), "loss": round(ce, 5),
                         "grad_rel_err": round(err, 5), "step_s": round((time.perf_counter() - t0) / 3, 5)}
        except Exception as exc:  # a mode the device cannot run is reported, not fatal
            res[mode] = {"ok": False, "error": repr(exc)[:300]}
    print("DISPATCH " + json.dumps(res), flush=True)


def probe_dispatch(fam: Family, device: str, timeout_s: float = 120.0) -> dict[str, object]:
    """:func:`dispatch_probe` of the family's model at its training batch, in a subprocess on ``device``;
    its JSON, or ``{"error": …}`` when it crashed or ran past ``timeout_s``."""
    import subprocess
    import sys

    code = ("from moesim.consolidation.quality_study import dispatch_probe; "
            f"dispatch_probe({json.dumps(json.dumps(asdict(fam.model)))}, {device!r}, {fam.batch}, {fam.seq})")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": "probe timed out"}
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("DISPATCH ")]
    return json.loads(line[-1][9:]) if line else {"error": (r.stderr or "no output")[-500:]}


def fastest_correct(res: dict[str, object]) -> str:
    """The probed mode with the least ``step_s`` among those marked ``ok``; ``loop`` when none is."""
    ok = {m: v["step_s"] for m, v in res.items() if isinstance(v, dict) and v.get("ok")}
    return min(ok, key=ok.__getitem__) if ok else "loop"


def choose_dispatch(fam: Family, device: str) -> tuple[str, dict[str, object]]:
    """The family's dispatch mode; ``auto`` on CUDA: :func:`fastest_correct` of :func:`probe_dispatch`;
    ``auto`` elsewhere: ``sorted`` (no probe)."""
    if fam.dispatch != "auto":
        return fam.dispatch, {}
    if not device.startswith("cuda"):
        return "sorted", {}
    res = probe_dispatch(fam, device)
    mode = fastest_correct(res)
    print(f"[dispatch] {mode}: {json.dumps(res)}", flush=True)
    return mode, res


def study_queue(fam: Family, seeds: list[int], n_domains: int) -> list[tuple[int, tuple[int, ...]]]:
    """(seed, subset) in study order: the r-th subset of every N (in ``fam.subsets`` order) for every seed
    before any (r+1)-th, so a deadline leaves every N measured on every seed first."""
    per_seed = {s: {n: subsets_for(s, n_domains, {n: c}) for n, c in fam.subsets.items()} for s in seeds}
    rounds = max(fam.subsets.values(), default=0)
    return [(s, per_seed[s][n][r]) for r in range(rounds) for n, c in fam.subsets.items() if r < c for s in seeds]


def run_family(fam: Family, args: QualityStudyConfig, t_start: float, out: Path, meta: dict[str, object],
               log: list[dict[str, object]], emit: Callable[[dict], None], dist_out: dict[str, object],
               flush: Callable[[], None]) -> None:
    """Pretrain, fine-tune one variant per domain for each seed that fits, measure distances, then study the
    subsets in :func:`study_queue` order until the deadline."""
    dev = torch.device(args.device)
    mode, probe = choose_dispatch(fam, args.device)
    torch.manual_seed(args.seed)
    data = Data(Path(args.corpora), fam, dev)
    runner = Runner(fam, data, dev, log)
    set_dispatch(runner.eval_model, mode)
    doms = data.domains
    m: dict[str, object] = {"config": asdict(fam.model), "params": count_params(runner.eval_model),
                            "family": {k: v for k, v in asdict(fam).items() if k != "model"},
                            "train_bytes": data.sizes, "pretrain_bytes": data.parts["pretrain"].sizes,
                            "finetune_bytes": data.parts["finetune"].sizes, "seeds": {}, "dispatch": mode, "dispatch_probe": probe}
    meta.setdefault("families", {})[fam.name] = m  # type: ignore[index]
    deadline = args.deadline_s - fam.reserve_s
    n_seeds = len(fam.seeds)
    sized: dict[str, object] = {}

    with torch.device(dev):
        base_model = TinyMoE(fam.model)
    set_dispatch(base_model, mode)

    def sizer(step_s: float) -> tuple[int, float, int]:
        nonlocal n_seeds
        t0 = time.perf_counter()
        vl = [runner.evaluate(base_model.state_dict(), d, "val") for d in doms]  # one timed validation pass
        val_s = time.perf_counter() - t0
        avail = deadline - (time.perf_counter() - t_start) - 10.0
        plan = size_plan(avail, step_s, val_s, n_domains=len(doms), ft_steps=fam.finetune_steps,
                         ft_val_every=fam.ft_val_every, seeds_wanted=len(fam.seeds), study_s_per_seed=fam.study_s,
                         extra_per_seed_s=fam.extra_per_seed_s, min_pretrain_s=fam.min_pretrain_s,
                         max_pretrain_steps=fam.max_pretrain_steps)
        n_seeds = plan.n_seeds
        sized.update({**asdict(plan), "val_s": round(val_s, 3), "avail_s": round(avail, 1),
                      "val_loss_at_sizing": round(float(np.mean([v[0] for v in vl])), 5)})
        print(f"[schedule] step {step_s:.4f} s, val pass {val_s:.2f} s, {avail:.0f} s left: {plan}", flush=True)
        return plan.pretrain_steps, plan.pretrain_s * 1.15, plan.val_every

    m["pretrain"] = runner.train(base_model, f"{fam.name}-pretrain", doms, fam.pretrain_lr,
                                 1e9 if fam.auto_schedule else fam.pretrain_s, None, args.seed, fam.val_every,
                                 sizer=sizer if fam.auto_schedule else None, patience=fam.pretrain_patience)
    m["schedule"] = sized
    pv = [r for r in log if r["phase"] == f"{fam.name}-pretrain" and r["split"] == "val"]
    m["pretrain"]["convergence"] = convergence([int(r["step"]) for r in pv], [float(r["loss"]) for r in pv])
    base = clone(base_model.state_dict())
    layout = layout_of(base, "base")
    m["layout"] = {"expert_bytes": layout.expert_params * 2, "nonexpert_bytes": layout.nonexpert_params * 2,
                   "positions": layout.n_layers * layout.n_experts}
    m["base"] = {d: runner.evaluate(base, d) for d in doms}
    flush()
    base_norm = np.array([[float(torch.cat([base[layout.key(li, e, w)].float().reshape(-1)
                                            for w in ("w1", "w2", "w3")]).norm())
                           for e in range(layout.n_experts)] for li in range(layout.n_layers)])
    ready: dict[int, tuple[list[dict[str, torch.Tensor]], object, np.ndarray, dict]] = {}
    for si, seed in enumerate(fam.seeds):
        need = float(sized.get("per_seed_s", 0.0)) + fam.study_s / 2  # type: ignore[arg-type]
        if si >= n_seeds or time.perf_counter() - t_start > deadline - need:
            m["seeds"][str(seed)] = "skipped: deadline"  # type: ignore[index]
            continue
        sm: dict[str, object] = {"finetune": {}}
        m["seeds"][str(seed)] = sm  # type: ignore[index]
        states = []
        for i, d in enumerate(doms):
            model = base_model  # reused: every fine-tune starts from the base's weights and a fresh optimizer
            model.load_state_dict(base)
            sm["finetune"][d] = runner.train(model, f"{fam.name}-s{seed}-{d}", (d,), fam.finetune_lr,  # type: ignore[index]
                                             fam.finetune_s, fam.finetune_steps, 100 * seed + i + 1, fam.ft_val_every,
                                             warmup=fam.ft_warmup, val_at_start=fam.auto_schedule, part="finetune")
            states.append(clone(model.state_dict()))
        check_same_architecture(states, list(doms))
        t0 = time.perf_counter()
        wdist = expert_distances(states, layout, permute=layout.n_experts <= 16, device=dev)
        to_base = expert_distances([base, *states], layout, device=dev).l2[0, 1:]
        act = activation_distances(runner, base, states, layout, wdist.perm)
        sm["distances_s"] = round(time.perf_counter() - t0, 2)
        alone = {d: runner.evaluate(states[i], d) for i, d in enumerate(doms)}
        sm["alone"] = alone
        if si < fam.cross_seeds:
            sm["cross"] = {v: {d: runner.evaluate(states[i], d)[0] for d in doms} for i, v in enumerate(doms)}
        sm["layer_drift"] = layer_drift(wdist, to_base, base_norm)
        sm["depth_profile"] = depth_profile(wdist.l2, base_norm)
        sm["non_identity_matches"] = int((wdist.perm != np.arange(layout.n_experts)).any(-1).sum())
        dist_out[f"{fam.name}/{seed}"] = {
            "variants": list(doms), "l2": wdist.l2.round(5).tolist(), "act": act.round(6).tolist(),
            "l2_to_base": to_base.round(5).tolist(), "base_expert_l2_norm": base_norm.round(5).tolist(),
            "layer_drift": sm["layer_drift"], "depth_profile": sm["depth_profile"]}
        sm["checks"] = {"skipped_subsets": []}
        ready[seed] = (states, wdist, act, alone)
        flush()
        print(f"[{fam.name} s{seed}] fine-tuned and measured ({time.perf_counter() - t_start:.0f} s)", flush=True)
    spent: dict[int, float] = {}
    for seed, subset in study_queue(fam, list(ready), len(doms)):
        states, wdist, act, alone = ready[seed]
        sm = m["seeds"][str(seed)]  # type: ignore[index]
        n = len(subset)
        est = spent.get(n, max((t * n / k for k, t in spent.items()), default=fam.study_s * n / 24))
        now = time.perf_counter()
        if now - t_start + est > deadline - 5:
            sm["checks"]["skipped_subsets"].append("+".join(doms[i] for i in subset))  # type: ignore[index]
            continue
        study_subset(runner, fam, seed, base, states, layout, wdist, act, subset, alone, emit, sm["checks"])  # type: ignore[arg-type]
        spent[n] = time.perf_counter() - now
        sm["study_s"] = round(float(sm.get("study_s", 0.0)) + spent[n], 2)  # type: ignore[union-attr]
        print(f"[{fam.name} s{seed}] {'+'.join(doms[i] for i in subset)} done in {spent[n]:.1f} s "
              f"({time.perf_counter() - t_start:.0f} s)", flush=True)
        flush()
    ready.clear()


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Run the study of each family of the preset; rows are appended to ``out``/quality.csv as they exist."""
    args = parse_args(argv)
    out = Path(args.out)
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    meta: dict[str, object] = {
        "preset": args.preset, "device": args.device, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "domains": list(DOMAINS8),
        "corpora": "corpora/data split by moesim.consolidation.domains", "bytes_per_param": 2,
    }
    log: list[dict[str, object]] = []
    dist_out: dict[str, object] = {}
    qf = (out / "quality.csv").open("w", newline="")
    writer = csv.DictWriter(qf, fieldnames=COLUMNS)
    writer.writeheader()

    def emit(r: dict) -> None:
        writer.writerow(r)

    def flush() -> None:
        if not qf.closed:
            qf.flush()
        meta["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        (out / "metadata.json").write_text(json.dumps(meta, indent=1, default=str))
        (out / "distances.json").write_text(json.dumps(dist_out))
        with (out / "train_log.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=("phase", "split", "step", "loss", "lr", "elapsed_s"))
            w.writeheader()
            w.writerows(log)

    wanted = set(args.families) or None
    for fam in PRESETS[args.preset]:
        if wanted is not None and fam.name not in wanted:
            continue
        run_family(fam, args, t_start, out, meta, log, emit, dist_out, flush)
        flush()
    qf.close()
    flush()
    print(f"[done] {meta['elapsed_s']} s", flush=True)


if __name__ == "__main__":
    main()
