"""``everywhere``: every GPU holds every variant (the fleet of one GPU is today's single-GPU run)."""

from __future__ import annotations

from dataclasses import dataclass

from moesim.fleet.load import PlacementProblem
from moesim.fleet.placement import Placement
from moesim.fleet.strategies import PLACEMENTS
from moesim.fleet.strategies.base import Strategy, StrategyConfig, from_assignment


@dataclass(frozen=True)
class EverywhereConfig(StrategyConfig):
    """No knobs."""

    name: str = "everywhere"


@PLACEMENTS.register("everywhere", EverywhereConfig)
class Everywhere(Strategy):
    """All tenants on all GPUs; the router spreads the load."""

    def place(self, problem: PlacementProblem) -> Placement:
        """GPU g → tenants 0..n−1 for every g."""
        return from_assignment({g.index: list(range(problem.n_tenants)) for g in problem.gpus}, "everywhere")
