"""The placement-strategy interface: a strategy reads a ``PlacementProblem`` and returns a ``Placement``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from moesim.errors import UserError
from moesim.fleet.load import PlacementProblem
from moesim.fleet.placement import GPUPlacement, Placement


@dataclass(frozen=True)
class StrategyConfig:
    """Knobs every strategy has (none yet besides its name)."""

    name: str = ""


class Strategy(ABC):
    """Base class: ``place`` decides; it never simulates."""

    registry_name: ClassVar[str] = ""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @abstractmethod
    def place(self, problem: PlacementProblem) -> Placement:
        """The placement for ``problem``."""


def from_assignment(assign: dict[int, list[int]], strategy: str) -> Placement:
    """A Placement from GPU → tenants (GPUs with no tenant left out; tenants in ascending order)."""
    return Placement(tuple(GPUPlacement(g, tuple(sorted(ts))) for g, ts in sorted(assign.items()) if ts), strategy)


def need_gpus(problem: PlacementProblem, n: int, what: str) -> None:
    """Refuse a fleet with fewer than ``n`` GPUs."""
    if len(problem.gpus) < n:
        raise UserError(f"placement={what}: needs at least {n} GPUs for {problem.n_tenants} variants; the fleet "
                        f"has {len(problem.gpus)} (raise fleet.gpus or choose placement=pack)")
