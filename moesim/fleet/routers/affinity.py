"""``affinity``: prefer a replica whose resident non-expert set is this tenant's (no swap), unless it is
``max_extra_tokens`` more loaded than the least loaded replica; else the least loaded replica."""

from __future__ import annotations

from dataclasses import dataclass

from moesim.errors import UserError
from moesim.fleet.routers import ROUTERS
from moesim.fleet.routers.base import Router, RouterConfig, least_tokens
from moesim.policies.view import FleetView
from moesim.workloads.request import Request


@dataclass(frozen=True)
class AffinityConfig(RouterConfig):
    """Attributes:
    max_extra_tokens: outstanding tokens a warm replica may carry beyond the least loaded one and still be
        preferred (−1: always prefer a warm replica).
    """

    name: str = "affinity"
    max_extra_tokens: int = 4096

    def __post_init__(self) -> None:
        if self.max_extra_tokens < -1:
            raise UserError(f"router.max_extra_tokens={self.max_extra_tokens}: must be ≥ −1")


@ROUTERS.register("affinity", AffinityConfig)
class Affinity(Router):
    """Tenant affinity with a load bound."""

    def choose(self, request: Request, candidates: tuple[int, ...], fleet: FleetView) -> int:
        """A warm replica (least loaded of them) within the bound, else the least loaded replica."""
        best = least_tokens(candidates, fleet)
        warm = tuple(g for g in candidates if request.tenant in fleet.active_tenants(g))
        if not warm:
            return best
        w = least_tokens(warm, fleet)
        extra = self.cfg.max_extra_tokens
        work = fleet.outstanding_tokens
        if extra < 0 or work[w] - work[best] <= extra:
            return w
        return best
