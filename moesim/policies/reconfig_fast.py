"""``reconfig_fast`` (ours): the paper's consolidated layout with the swap done right.

Same budget rule as ``reconfig`` but the non-expert swap streams from pinned memory at full link speed,
layer by layer under the new batch's prefill; expert fetches are prefetched one layer ahead so half of
their time hides under compute; continuous batching (within the resident tenant) up to ``max_batch``.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.policies import POLICIES
from moesim.policies.reconfig import Reconfig, ReconfigConfig


@dataclass(frozen=True)
class ReconfigFastConfig(ReconfigConfig):
    """``reconfig`` with a pinned, overlapped swap, overlapped fetches and batching."""

    name: str = "reconfig_fast"
    max_batch: int = 32
    swap_bandwidth_fraction: float = 0.95
    swap_overlap: bool = True
    fetch_overlap: float = 0.5


@POLICIES.register("reconfig_fast", ReconfigFastConfig)
class ReconfigFast(Reconfig):
    """The paper's layout, a pinned overlapped swap and continuous batching."""
