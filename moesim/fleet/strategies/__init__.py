"""Placement strategies, registered by name (``placement=<name>``): one file each.

``everywhere`` (every GPU holds every variant), ``file`` (a hand-written placement), ``per_variant`` (one GPU
per variant, replicas by load), ``pack`` (by memory and expert similarity), ``greedy_slo`` (marginal estimated
SLO gain), ``optimal`` (MILP on the expected load, HiGHS via scipy).
"""

from moesim.fleet.strategies.base import Strategy, StrategyConfig
from moesim.registry import Registry

PLACEMENTS: Registry[Strategy] = Registry("placement")

from moesim.fleet.strategies import (  # noqa: E402, F401
    everywhere,
    file,
    greedy_slo,
    optimal,
    pack,
    per_variant,
)

__all__ = ["PLACEMENTS", "Strategy", "StrategyConfig"]
