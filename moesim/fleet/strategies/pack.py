"""``pack``: as few GPUs as memory and load allow, similar variants together.

Variants whose load exceeds what one GPU carries at ``utilization`` are split into replicas first. Then
GPUs are filled one at a time: the heaviest variant left opens the next empty GPU, which then takes, while
it can, the variant left most similar to those already on it (mean of ``similarity``; ties: the heavier,
then the lower id) — "can" meaning room for one more variant in memory (the policy can lay it out) and load
within ``utilization`` of the GPU's capacity with one more variant. Expert similarity (a tenants × tenants matrix, 1 = same experts, e.g.
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
        free = [g.index for g in gpus]  # empty GPUs, in order
        cap = {g.index: g for g in gpus}

        def fits(g: int, t: int, load: float) -> bool:
            ts = assign[g]
            return (t not in ts and len(ts) < kmax[g]
                    and (not ts or lam[g] + load <= u * problem.capacity(cap[g], len(ts) + 1)))

        def put(g: int, i: int) -> None:
            t, load = items.pop(i)
            assign[g].append(t)
            lam[g] += load

        while items:
            t = items[0][0]
            g = next((g for g in free if kmax[g] >= 1), None)
            if g is None:  # every GPU in use: the least loaded one with memory room
                room = [g for g in assign if t not in assign[g] and len(assign[g]) < kmax[g]]
                if not room:
                    raise UserError(f"placement=pack: no GPU has memory room for variant {t}; "
                                    f"{len(gpus)} GPUs hold at most {sum(kmax.values())} variant copies")
                put(min(room, key=lambda g: (lam[g], g)), 0)
                continue
            free.remove(g)
            put(g, 0)
            while True:  # grow: the most similar (then heaviest) variant that still fits
                ts = assign[g]
                best = max((i for i, (v, ld) in enumerate(items) if fits(g, v, ld)),
                           key=lambda i: (float(np.mean(sim[items[i][0], ts])), items[i][1], -items[i][0]),
                           default=None)
                if best is None:
                    break
                put(g, best)
        return from_assignment(assign, "pack")
