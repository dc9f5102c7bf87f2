"""``power_of_two``: two replicas drawn at random (the router's seeded stream), the less loaded one wins."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.fleet.routers import ROUTERS
from moesim.fleet.routers.base import Router, RouterConfig
from moesim.policies.view import FleetView
from moesim.workloads.request import Request


@dataclass(frozen=True)
class PowerOfTwoConfig(RouterConfig):
    """No knobs beyond ``seed``."""

    name: str = "power_of_two"


@ROUTERS.register("power_of_two", PowerOfTwoConfig)
class PowerOfTwo(Router):
    """Power of two choices on outstanding tokens (ties: the first drawn)."""

    def __init__(self, cfg: PowerOfTwoConfig) -> None:
        super().__init__(cfg)
        self._rng = np.random.default_rng(cfg.seed)

    def choose(self, request: Request, candidates: tuple[int, ...], fleet: FleetView) -> int:
        """The less loaded of two distinct replicas drawn uniformly."""
        if len(candidates) == 2:
            a, b = candidates
        else:
            i, j = self._rng.choice(len(candidates), size=2, replace=False)
            a, b = candidates[int(i)], candidates[int(j)]
        work = fleet.outstanding_tokens
        return b if work[b] < work[a] else a
