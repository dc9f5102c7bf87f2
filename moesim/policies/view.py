"""What a policy sees of an instance: a read-only interface the engine implements.

``moesim.engine.instance.Instance`` (the SimPy instance) implements it, and so can a real-time runtime; a
policy imports this module, never the engine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from moesim.workloads.request import Request

if TYPE_CHECKING:
    from moesim.policies.base import InstancePlan


class InstanceView(Protocol):
    """One instance's state at a scheduling point (read it; never change it).

    Attributes:
        plan: what the instance is and holds (its layout record).
        queue: requests waiting, in arrival order (tenants in this GPU's local numbering).
        resident: tenants whose non-expert sets are loaded, least recently used first.
        kv_free_bytes: KV-cache memory not reserved by running sequences (bytes).
        kv_bytes_per_token: KV-cache bytes one token takes (bytes).
    """

    plan: InstancePlan
    queue: deque[Request]
    resident: Sequence[int]
    kv_free_bytes: float
    kv_bytes_per_token: float

    @property
    def now(self) -> float:
        """The clock (seconds)."""
        ...

    @property
    def n_running(self) -> int:
        """Sequences in the running batch."""
        ...

    def running_tenants(self) -> set[int]:
        """Tenants with a sequence in the running batch."""
        ...
