"""``greedy_slo``: add variants and replicas one at a time where the estimated SLO attainment gains most.

In the spirit of AlpaServe's and MuxServe's greedy placement: variants, heaviest first, each go to the GPU
where the fleet's estimated goodput is highest after adding it; then replicas are added, best marginal gain
first, while a gain exceeds ``min_gain`` (a share of all requests) and memory allows. A GPU's goodput is the
rate it serves within the TTFT target (an M/M/1 estimate, ``moesim.fleet.load.attainment``, each variant's
load split evenly over its replicas) minus the rate it receives beyond its capacity, so a saturated GPU is
never a free place to put more load.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.errors import UserError
from moesim.fleet.load import PlacementProblem, attainment
from moesim.fleet.placement import Placement
from moesim.fleet.strategies import PLACEMENTS
from moesim.fleet.strategies.base import Strategy, StrategyConfig, from_assignment


@dataclass(frozen=True)
class GreedySLOConfig(StrategyConfig):
    """Attributes:
    min_gain: smallest gain in estimated attainment (share of all requests) a replica must bring.
    max_replicas: most copies of one variant (0: no limit).
    """

    name: str = "greedy_slo"
    min_gain: float = 1e-4
    max_replicas: int = 0

    def __post_init__(self) -> None:  # max_replicas=-1 ran as if 1, silently
        if not (isinstance(self.max_replicas, int) and self.max_replicas >= 0):
            raise UserError(f"placement.max_replicas={self.max_replicas!r}: must be an integer ≥ 0 (0: no limit)")
        if not (isinstance(self.min_gain, (int, float)) and 0 <= self.min_gain < 1):
            raise UserError(f"placement.min_gain={self.min_gain!r}: must be a number in [0, 1) (a share of all "
                            "requests)")


@PLACEMENTS.register("greedy_slo", GreedySLOConfig)
class GreedySLO(Strategy):
    """Greedy by marginal estimated SLO attainment."""

    def place(self, problem: PlacementProblem) -> Placement:
        """See the module docstring."""
        gpus, rates = problem.gpus, problem.load.rates
        n = problem.n_tenants
        total = sum(rates) or 1.0
        slack = problem.slo_ttft_s
        assign: dict[int, list[int]] = {g.index: [] for g in gpus}
        lam = {g.index: 0.0 for g in gpus}
        kmax = {g.index: problem.max_tenants(g) for g in gpus}
        reps = [0] * n
        where: list[list[int]] = [[] for _ in range(n)]

        def value(g: int, load: float, k: int) -> float:
            # requests/s within the SLO, minus the rate beyond capacity (a saturated GPU is not free to fill)
            if not k:
                return 0.0
            mu = problem.capacity(gpus[g], k)
            return load * attainment(load, mu, slack) - max(0.0, load - mu)

        def gain(t: int, g: int) -> float:
            r = reps[t]
            new_share = rates[t] / (r + 1)
            d = value(g, lam[g] + new_share, len(assign[g]) + 1) - value(g, lam[g], len(assign[g]))
            if r:
                old_share = rates[t] / r
                for h in where[t]:
                    d += value(h, lam[h] - old_share + new_share, len(assign[h])) - value(h, lam[h], len(assign[h]))
            return d / total

        def add(t: int, g: int) -> None:
            r = reps[t]
            if r:
                for h in where[t]:
                    lam[h] += rates[t] / (r + 1) - rates[t] / r
            lam[g] += rates[t] / (r + 1)
            assign[g].append(t)
            where[t].append(g)
            reps[t] += 1

        for t in sorted(range(n), key=lambda v: (-rates[v], v)):
            room = [g.index for g in gpus if len(assign[g.index]) < kmax[g.index]]
            if not room:
                raise UserError(f"placement=greedy_slo: no GPU has memory room for variant {t}; "
                                f"{len(gpus)} GPUs hold at most {sum(kmax.values())} variant copies")
            add(t, max(room, key=lambda g: (gain(t, g), -g)))
        cap = self.cfg.max_replicas or len(gpus)
        while True:
            best, best_gain = None, self.cfg.min_gain
            for t in range(n):
                if reps[t] >= cap or rates[t] <= 0:
                    continue
                for g in gpus:
                    gi = g.index
                    if gi in where[t] or len(assign[gi]) >= kmax[gi]:
                        continue
                    d = gain(t, gi)
                    if d > best_gain:
                        best, best_gain = (t, gi), d
            if best is None:
                break
            add(*best)
        return from_assignment(assign, "greedy_slo")
