"""What a policy sees of an instance, and a router of a fleet: read-only interfaces the engine implements.

``moesim.engine.instance.Instance`` (the SimPy instance) implements ``InstanceView``, and so can a real-time
runtime; the engine's fleet board implements ``FleetView``. Policies and routers import this module, never the
engine.
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


class FleetView(Protocol):
    """What a router reads of the fleet at an arrival (read-only).

    Attributes:
        now: the clock (seconds).
        outstanding_tokens: per GPU, prompt + output tokens of the requests routed there and not finished.
        outstanding_requests: per GPU, requests routed there and not finished.
    """

    now: float
    outstanding_tokens: list[int]
    outstanding_requests: list[int]

    def active_tenants(self, gpu: int) -> set[int]:
        """Global tenants whose non-expert sets are resident on ``gpu`` now."""
        ...
