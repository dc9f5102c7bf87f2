"""``round_robin``: each variant's requests cycle through its replicas in GPU order."""

from __future__ import annotations

from dataclasses import dataclass

from moesim.fleet.routers import ROUTERS
from moesim.fleet.routers.base import Router, RouterConfig
from moesim.policies.view import FleetView
from moesim.workloads.request import Request


@dataclass(frozen=True)
class RoundRobinConfig(RouterConfig):
    """No knobs of its own."""

    name: str = "round_robin"


@ROUTERS.register("round_robin", RoundRobinConfig)
class RoundRobin(Router):
    """The k-th request of a variant goes to its replica k mod (replicas)."""

    def __init__(self, cfg: RoundRobinConfig) -> None:
        super().__init__(cfg)
        self._next: dict[int, int] = {}

    def choose(self, request: Request, candidates: tuple[int, ...], fleet: FleetView) -> int:
        """Next replica of the request's variant."""
        k = self._next.get(request.tenant, 0)
        self._next[request.tenant] = k + 1
        return candidates[k % len(candidates)]
