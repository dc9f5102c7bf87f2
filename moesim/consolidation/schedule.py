"""Sizing a time-boxed study from measured speeds, and reading convergence off a validation curve (torch-free).

The quality study runs inside one GPU call of fixed length. Its pretraining measures its own step time after
warmup, then :func:`size_plan` decides how many fine-tuning seeds fit and how many pretraining steps the rest
of the time buys (the cosine schedule is then laid over exactly those steps). :func:`convergence` says, from
the validation curve, whether pretraining had flattened out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulePlan:
    """What fits in the time left (seconds of wall clock).

    Attributes:
        pretrain_steps: total pretraining steps (the cosine runs over them).
        pretrain_s: wall time they are expected to take (validation included).
        n_seeds: fine-tuning seeds that fit (each: one fine-tune per domain, distances, its share of study).
        per_seed_s: expected wall time of one seed's fine-tunes and distances.
        study_s: wall time set aside for the study (all seeds together).
        val_every: pretraining validation period (steps).
    """

    pretrain_steps: int
    pretrain_s: float
    n_seeds: int
    per_seed_s: float
    study_s: float
    val_every: int


def finetune_seconds(step_s: float, ft_steps: int, ft_val_every: int, val1_s: float, init_s: float) -> float:
    """Expected wall time of one fine-tune: its steps, its validations (one per ``ft_val_every`` steps plus the
    one at step 0), and model set-up."""
    return ft_steps * step_s + (ft_steps // ft_val_every + 1) * val1_s + init_s


def size_plan(avail_s: float, step_s: float, val_s: float, *, n_domains: int, ft_steps: int, ft_val_every: int,
              seeds_wanted: int, study_s_per_seed: float, extra_per_seed_s: float, min_pretrain_s: float,
              max_pretrain_steps: int, n_vals: int = 16, init_s: float = 0.6) -> SchedulePlan:
    """Split ``avail_s`` between pretraining, ``n_seeds`` × (one fine-tune per domain + distances) and the study.

    ``step_s``: measured seconds per training step (fine-tunes use the same batch); ``val_s``: seconds of one
    validation pass over all ``n_domains`` domains (a fine-tune validates on its one domain: val_s / n_domains);
    pretraining validates ``n_vals`` times. The most seeds (≤ ``seeds_wanted``, ≥ 1) that still leave
    ``min_pretrain_s`` of pretraining (or the time ``max_pretrain_steps`` take, if less) are taken; pretraining
    gets everything else, at most ``max_pretrain_steps``.
    """
    if step_s <= 0 or avail_s <= 0:
        raise ValueError(f"step_s and avail_s must be positive, got {step_s}, {avail_s}")
    ft = finetune_seconds(step_s, ft_steps, ft_val_every, val_s / n_domains, init_s)
    per_seed = n_domains * ft + extra_per_seed_s
    # never reserve more pretraining than the step cap can use (the fourth H200 call: 1,100 capped steps took
    # 94 s, yet a 120 s floor cost it its third seed)
    floor_s = min(min_pretrain_s, max_pretrain_steps * step_s + n_vals * val_s)
    n_seeds = 1
    for n in range(seeds_wanted, 0, -1):
        if avail_s - n * (per_seed + study_s_per_seed) >= floor_s:
            n_seeds = n
            break
    pre_s = max(0.0, avail_s - n_seeds * (per_seed + study_s_per_seed))
    steps = int((pre_s - n_vals * val_s) / step_s + 1e-9)  # (the epsilon: 119.4 / 0.1 is 1193.999…)
    steps = max(1, min(max_pretrain_steps, steps))
    return SchedulePlan(pretrain_steps=steps, pretrain_s=round(steps * step_s + n_vals * val_s, 2),
                        n_seeds=n_seeds, per_seed_s=round(per_seed, 2),
                        study_s=round(n_seeds * study_s_per_seed, 2), val_every=max(1, steps // n_vals))


def convergence(steps: list[int], losses: list[float], tail: float = 0.25, tol: float = 0.01) -> dict[str, object]:
    """How flat a validation curve had become.

    ``tail_gain``: relative drop of the best loss over the last ``tail`` of the steps
    as perplexity: exp(best loss up to the tail − best loss overall) − 1; ``converged``: that gain is below
    ``tol`` (1 % by default): the last quarter of training bought less than 1 % of perplexity (0 when the
    best came before the tail, i.e. the model had begun to overfit).
    """
    if len(steps) != len(losses) or not steps:
        raise ValueError("steps and losses must be equally long and non-empty")
    last = steps[-1]
    cut = last * (1 - tail)
    before = [loss for s, loss in zip(steps, losses, strict=True) if s <= cut]
    best = min(losses)
    best_step = steps[losses.index(best)]
    gain = math.exp(min(before) - best) - 1 if before else float("nan")
    return {"best_step": best_step, "best_loss": round(best, 5), "last_step": last,
            "tail_gain": round(gain, 5) if before else None,
            "converged": bool(before and gain < tol)}
