"""The router interface: at each arrival, choose one of the GPUs holding the request's variant.

A router reads the fleet through ``moesim.policies.view.FleetView`` (clock, outstanding tokens and
requests per GPU, tenants whose non-expert sets are resident on a GPU) and never changes it. It is called
only when a variant has several replicas; candidates are GPU indices in ascending order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from moesim.policies.view import FleetView
from moesim.workloads.request import Request


@dataclass(frozen=True)
class RouterConfig:
    """Attributes:
    seed: seed of the router's own random stream (routers that draw).
    """

    name: str = ""
    seed: int = 0


class Router(ABC):
    """Base class: ``choose`` one of ``candidates``."""

    registry_name: ClassVar[str] = ""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @abstractmethod
    def choose(self, request: Request, candidates: tuple[int, ...], fleet: FleetView) -> int:
        """The GPU for ``request`` (one of ``candidates``)."""


def least_tokens(candidates: tuple[int, ...], fleet: FleetView) -> int:
    """The candidate with the fewest outstanding tokens (ties: the lowest index)."""
    work = fleet.outstanding_tokens
    return min(candidates, key=lambda g: (work[g], g))
