"""Which tenants' non-expert sets are resident: the LRU bookkeeping an instance applies.

Shared by the SimPy instance (``moesim.engine.instance``) and the real-time runtime (``moesim.serve.runtime``),
so the simulator and the runtime evict and reorder alike. Simpy- and torch-free. ``resident`` is a list of
tenants, least recently used first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from moesim.workloads.request import Request


def make_resident(resident: list[int], tenants: Sequence[int], slots: int, keep: set[int]) -> list[int]:
    """Append each of ``tenants`` not yet in ``resident``, first evicting the least recently used tenants not
    in ``keep`` while ``slots`` sets are resident; returns the tenants appended (their sets must be copied)."""
    loaded = []
    for t in tenants:
        if t in resident:
            continue
        while len(resident) >= slots:
            victim = next(v for v in resident if v not in keep)
            resident.remove(victim)
        resident.append(t)
        loaded.append(t)
    return loaded


def touch(resident: list[int], reqs: Iterable[Request]) -> None:
    """Move the tenants of ``reqs`` (just used) to the most-recently-used end, in their first-seen order."""
    for t in dict.fromkeys(r.tenant for r in reqs):
        if t in resident and resident[-1] != t:
            resident.remove(t)
            resident.append(t)
