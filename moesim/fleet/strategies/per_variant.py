"""``per_variant``: each variant its own GPU(s); spare GPUs become replicas of the most loaded variants.

Every variant gets one GPU; then each remaining GPU goes to the variant with the highest load per replica
(ties: lower tenant id), so replicas follow load. Needs at least as many GPUs as variants.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.fleet.load import PlacementProblem
from moesim.fleet.placement import Placement
from moesim.fleet.strategies import PLACEMENTS
from moesim.fleet.strategies.base import Strategy, StrategyConfig, from_assignment, need_gpus


@dataclass(frozen=True)
class PerVariantConfig(StrategyConfig):
    """Attributes:
    spare: give GPUs left over after one per variant to the most loaded variants as replicas (True) or leave
        them idle (False).
    """

    name: str = "per_variant"
    spare: bool = True


@PLACEMENTS.register("per_variant", PerVariantConfig)
class PerVariant(Strategy):
    """One GPU per variant, replicas by load."""

    def place(self, problem: PlacementProblem) -> Placement:
        """Variant v on GPU v, then spare GPUs to the highest load per replica."""
        n = problem.n_tenants
        need_gpus(problem, n, "per_variant")
        reps = [1] * n
        owner = list(range(n))
        if self.cfg.spare:
            rates = problem.load.rates
            for _ in range(len(problem.gpus) - n):
                t = max(range(n), key=lambda v: (rates[v] / reps[v], -v))
                reps[t] += 1
                owner.append(t)
        return from_assignment({problem.gpus[g].index: [t] for g, t in enumerate(owner)}, "per_variant")
