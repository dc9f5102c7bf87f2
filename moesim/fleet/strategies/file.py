"""``file``: a placement written by hand (or saved by a search), read from a YAML/JSON file."""

from __future__ import annotations

from dataclasses import dataclass

from moesim.errors import UserError
from moesim.fleet.load import PlacementProblem
from moesim.fleet.placement import Placement, load_placement
from moesim.fleet.strategies import PLACEMENTS
from moesim.fleet.strategies.base import Strategy, StrategyConfig


@dataclass(frozen=True)
class FileConfig(StrategyConfig):
    """Attributes:
    path: the placement file (see moesim.fleet.placement for its format).
    """

    name: str = "file"
    path: str = ""


@PLACEMENTS.register("file", FileConfig)
class FromFile(Strategy):
    """The placement in ``path``, checked against the fleet and the tenants."""

    def place(self, problem: PlacementProblem) -> Placement:
        """The file's placement."""
        if not self.cfg.path:
            raise UserError("placement=file needs placement.path=<a placement YAML/JSON file>")
        p = load_placement(self.cfg.path)
        p.check(len(problem.gpus), problem.n_tenants)
        return p
