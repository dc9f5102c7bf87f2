"""``pack``: as few GPUs as memory and load allow, similar variants together.

Variants whose load exceeds what one GPU carries at ``utilization`` are split into replicas first. Then,
heaviest first, each (replica of a) variant goes to the GPU already in use that can take it — room for one
more variant in memory (the policy can lay it out) and load within ``utilization`` of the GPU's capacity
with one more variant — whose variants are most similar to it (mean of ``similarity``; ties: the lowest GPU
index); else to the next empty GPU. Expert similarity (a tenants × tenants matrix, 1 = same experts, e.g.
from a consolidation study) makes variants that share experts land together, where consolidation saves
the most memory. When every GPU is full, the remaining replicas go to the least loaded GPU with memory room.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moesim.errors import UserError
from moesim.fleet.load import PlacementProblem
from moesim.fleet.placement import Placement
from moesim.fleet.strategies import PLACEMENTS
from moesim.fleet.strategies.base import Strategy, StrategyConfig, from_assignment


@dataclass(frozen=True)
class PackConfig(StrategyConfig):
    """Attributes:
    utilization: share of a GPU's estimated capacity a placement may load it to (0, 1].
    similarity: a CSV (or .npy) tenants × tenants matrix of expert similarity in [0, 1]; empty: none.
    """

    name: str = "pack"
    utilization: float = 0.7
    similarity: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.utilization <= 1:
            raise UserError(f"placement.utilization={self.utilization}: must be in (0, 1]")


def load_similarity(path: str, n: int) -> np.ndarray:
    """The n × n similarity matrix in ``path`` (CSV without header, or .npy)."""
    try:
        m = np.load(path) if path.endswith(".npy") else np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError) as exc:
        raise UserError(f"placement.similarity={path}: cannot read ({str(exc).splitlines()[0]})") from None
    if m.shape[0] < n or m.shape[1] < n or not np.isfinite(m).all():
        raise UserError(f"placement.similarity={path}: need a finite {n}×{n} matrix, got shape {m.shape}")
    return m[:n, :n]


@PLACEMENTS.register("pack", PackConfig)
class Pack(Strategy):
    """First fit by similarity, heaviest first, within memory and load."""

    def place(self, problem: PlacementProblem) -> Placement:
        """See the module docstring."""
        u = self.cfg.utilization
        n, gpus, rates = problem.n_tenants, problem.gpus, problem.load.rates
        sim = load_similarity(self.cfg.similarity, n) if self.cfg.similarity else np.zeros((n, n))
        items: list[tuple[int, float]] = []
        for t in range(n):
            one = max(problem.capacity(g, 1) for g in gpus) * u
            r = max(1, math.ceil(rates[t] / one)) if one > 0 else 1
            r = min(r, len(gpus))
            items += [(t, rates[t] / r)] * r
        items.sort(key=lambda it: (-it[1], it[0]))
        assign: dict[int, list[int]] = {g.index: [] for g in gpus}
        lam = {g.index: 0.0 for g in gpus}
        kmax = {g.index: problem.max_tenants(g) for g in gpus}
        if max(kmax.values(), default=0) < 1:
            raise UserError(f"placement=pack: policy {problem.policy_name} cannot lay out even one variant of "
                            f"{problem.model.name} on any GPU of the fleet")
        for t, load in items:
            best, best_key = None, None
            for g in gpus:
                ts = assign[g.index]
                if t in ts or len(ts) >= kmax[g.index]:
                    continue
                if ts and lam[g.index] + load > u * problem.capacity(g, len(ts) + 1):
                    continue
                key = (-(float(np.mean(sim[t, ts])) if ts else -1.0), 0 if ts else 1, g.index)
                if best_key is None or key < best_key:
                    best, best_key = g.index, key
            if best is None:  # every GPU full: the least loaded one with memory room
                room = [g.index for g in gpus if t not in assign[g.index] and len(assign[g.index]) < kmax[g.index]]
                if not room:
                    raise UserError(f"placement=pack: no GPU has memory room for variant {t}; "
                                    f"{len(gpus)} GPUs hold at most {sum(kmax.values())} variant copies")
                best = min(room, key=lambda g: (lam[g], g))
            assign[best].append(t)
            lam[best] += load
        return from_assignment(assign, "pack")
