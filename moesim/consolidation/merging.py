"""Whole-model merging baselines: uniform averaging, task arithmetic and TIES (imports torch).

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


def ties_merge(base: State, states: Sequence[State], density: float = 0.2, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """TIES merging (Yadav et al., 2023): trim each task vector to its top ``density`` by magnitude, elect
    each entry's sign by the summed trimmed deltas, average the deltas that agree with it, add ``scale`` × that."""
    out = {}
    for k in base:
        b = base[k].float()
        deltas = torch.stack([_trim(s[k].float() - b, density) for s in states])  # (N, ...)
        sign = torch.sign(deltas.sum(0))
        agree = (torch.sign(deltas) == sign) & (deltas != 0)
        merged = (deltas * agree).sum(0) / agree.sum(0).clamp(min=1)
        out[k] = (b + scale * merged).to(base[k].dtype)
    return out
