"""Whole-model merging baselines: uniform averaging, task arithmetic, TIES and DARE (imports torch).

TIES is also exposed step by step (``trim``, ``elect_sign``, ``disjoint_mean``, ``ties_tensor``) so the
consolidation study can merge a cluster of experts TIES-style instead of by their mean.

All take the variants' state dicts (same keys and shapes) and return one merged state dict, float32 math,
the first variant's dtypes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moesim.consolidation.weights import State


def uniform_average(states: Sequence[State]) -> dict[str, torch.Tensor]:
    """θ = mean_v θ_v."""
    return {k: (sum(s[k].float() for s in states) / len(states)).to(states[0][k].dtype) for k in states[0]}


def task_arithmetic(base: State, states: Sequence[State], scale: float = 0.5) -> dict[str, torch.Tensor]:
    """θ = θ_base + scale · Σ_v (θ_v − θ_base) (Ilharco et al., 2023)."""
    return {
        k: (base[k].float() + scale * sum(s[k].float() - base[k].float() for s in states)).to(base[k].dtype)
        for k in base
    }


def _trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude, zero the rest."""
    flat = delta.reshape(-1).abs()
    k = max(1, round(density * flat.numel()))
    if k >= flat.numel():
        return delta
    thresh = flat.kthvalue(flat.numel() - k + 1).values
    return torch.where(delta.abs() >= thresh, delta, torch.zeros_like(delta))


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES step 1: keep the ``density`` fraction (rounded, at least 1) of entries of largest magnitude."""
    return _trim(delta, density)


def elect_sign(deltas: torch.Tensor) -> torch.Tensor:
    """TIES step 2: each entry's sign is that of the sum of the (trimmed) deltas, shape deltas.shape[1:]."""
    return torch.sign(deltas.sum(0))


def disjoint_mean(deltas: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """TIES step 3: mean of the non-zero deltas whose sign agrees with ``sign`` (0 where none does)."""
    agree = (torch.sign(deltas) == sign) & (deltas != 0)
    return (deltas * agree).sum(0) / agree.sum(0).clamp(min=1)


def ties_tensor(base: torch.Tensor, tensors: Sequence[torch.Tensor], density: float = 0.2,
                scale: float = 1.0) -> torch.Tensor:
    """One tensor merged by TIES: base + scale · disjoint_mean(trimmed deltas, elected sign), float32."""
    b = base.float()
    deltas = torch.stack([trim(t.float() - b, density) for t in tensors])  # (N, ...)
    return b + scale * disjoint_mean(deltas, elect_sign(deltas))


def ties_merge(base: State, states: Sequence[State], density: float = 0.2, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """TIES merging (Yadav et al., 2023): trim each task vector to its top ``density`` by magnitude, elect
    each entry's sign by the summed trimmed deltas, average the deltas that agree with it, add ``scale`` × that."""
    return {k: ties_tensor(base[k], [s[k] for s in states], density, scale).to(base[k].dtype) for k in base}


def dare(delta: torch.Tensor, drop: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """DARE (Yu et al., 2024): drop each entry with probability ``drop`` and rescale the kept by 1/(1 − drop)."""
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop must be in [0, 1), got {drop}")
    keep = torch.rand(delta.shape, generator=generator, device=delta.device) >= drop
    return torch.where(keep, delta / (1.0 - drop), torch.zeros_like(delta))


def dare_merge(base: State, states: Sequence[State], drop: float = 0.9, scale: float = 0.5,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """DARE + task arithmetic: θ = θ_base + scale · Σ_v dare(θ_v − θ_base); one generator seeded ``seed``,
    drawn key by key (sorted) and variant by variant."""
    out = {}
    g = torch.Generator(device=next(iter(base.values())).device).manual_seed(seed)
    for k in sorted(base):
        b = base[k].float()
        out[k] = (b + scale * sum(dare(s[k].float() - b, drop, g) for s in states)).to(base[k].dtype)
    return out
