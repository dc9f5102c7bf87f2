"""``least_work``: the replica with the fewest outstanding tokens (prompt + output of requests routed there
and not finished)."""

from __future__ import annotations

from dataclasses import dataclass

from moesim.fleet.routers import ROUTERS
from moesim.fleet.routers.base import Router, RouterConfig, least_tokens
from moesim.policies.view import FleetView
from moesim.workloads.request import Request


@dataclass(frozen=True)
class LeastWorkConfig(RouterConfig):
    """No knobs of its own."""

    name: str = "least_work"


@ROUTERS.register("least_work", LeastWorkConfig)
class LeastWork(Router):
    """Join the least outstanding work (tokens); ties to the lowest GPU index."""

    def choose(self, request: Request, candidates: tuple[int, ...], fleet: FleetView) -> int:
        """The least loaded replica."""
        return least_tokens(candidates, fleet)
