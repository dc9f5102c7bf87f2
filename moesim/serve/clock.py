"""Clocks and arrival feeds of the runtime. Torch-free.

* ``WallClock`` reads ``time.perf_counter`` (seconds since the run's start); work takes the time it takes.
* ``VirtualClock`` only moves when told: the runtime sets it to a step's start plus the step's cost (the
  simulator's arithmetic, so a virtual run's timestamps equal a simulation's).

A feed releases the trace's requests at their arrival times:

* ``WallFeed``: a host thread sleeps until each arrival's wall time and appends the request to a released
  list (``release_late_s`` records how late each release was); the runtime only sees released requests.
* ``VirtualFeed``: a request is released once the virtual clock has reached its arrival time.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from moesim.workloads.request import Request


class WallClock:
    """Seconds since ``start()`` on the host's monotonic clock."""

    virtual = False

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def start(self) -> None:
        """Time 0 is now."""
        self.t0 = time.perf_counter()

    def now(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.t0

    def advance(self, start_s: float, duration_s: float) -> None:
        """Work from ``start_s`` took ``duration_s``: the wall clock already moved (no-op)."""

    def wall(self, t_s: float) -> float:
        """``perf_counter`` value of run time ``t_s``."""
        return self.t0 + t_s


class VirtualClock:
    """A clock set by the runtime: ``advance(start, d)`` puts it at ``start + d``."""

    virtual = True

    def __init__(self) -> None:
        self.t = 0.0

    def start(self) -> None:
        """Time 0."""
        self.t = 0.0

    def now(self) -> float:
        """The virtual time (seconds)."""
        return self.t

    def advance(self, start_s: float, duration_s: float) -> None:
        """Work from ``start_s`` took ``duration_s`` (seconds)."""
        self.t = start_s + duration_s

    def set(self, t_s: float) -> None:
        """Jump to ``t_s`` (an idle wait for the next arrival)."""
        self.t = t_s


class VirtualFeed:
    """Arrivals released when the virtual clock reaches them (sorted by arrival, then id)."""

    def __init__(self, order: Sequence[Request], clock: VirtualClock) -> None:
        self.order = list(order)
        self.clock = clock
        self.next = 0
        self.release_late_s = np.zeros(len(order))

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""

    def exhausted(self) -> bool:
        """Every request has been pulled."""
        return self.next >= len(self.order)

    def pull(self) -> list[Request]:
        """Requests arrived by now and not pulled yet, in arrival order."""
        now, arr, i = self.clock.now(), self.order, self.next
        n = len(arr)
        out = []
        while i < n and arr[i].arrival_s <= now:
            out.append(arr[i])
            i += 1
        self.next = i
        return out

    def peek_arrived(self, t0: float, elapsed_s: float) -> Request | None:
        """The first unpulled request whose arrival is at or before ``t0 + elapsed_s`` (a decode run's step end).

        Compared as the simulator compares (``arrival − t0 <= elapsed``), so decisions agree to the last bit.
        """
        if self.next < len(self.order):
            r = self.order[self.next]
            if r.arrival_s - t0 <= elapsed_s:
                return r
        return None

    def wait(self) -> None:
        """Idle until the next arrival: jump the clock there."""
        if self.next < len(self.order):
            self.clock.set(max(self.clock.now(), self.order[self.next].arrival_s))


class ReleasedQueue:
    """Requests released to an instance by another thread, pulled by the instance in arrival order.

    The half that :class:`WallFeed` (released at arrival times) and ``moesim.serve.fleet.RoutedFeed`` (released
    once routed) share: a deque guarded by a condition variable, and the count pulled so far.
    """

    def __init__(self) -> None:
        self.released: deque[Request] = deque()
        self.pulled = 0
        self._cv = threading.Condition()

    def pull(self) -> list[Request]:
        """Released requests not pulled yet, in arrival order."""
        with self._cv:
            out = list(self.released)
            self.released.clear()
        self.pulled += len(out)
        return out

    def peek_arrived(self, t0: float, elapsed_s: float) -> Request | None:
        """The first released, unpulled request (released means arrived: the wall clock is the truth)."""
        with self._cv:
            return self.released[0] if self.released else None


class WallFeed(ReleasedQueue):
    """A host thread releases each request at its arrival's wall time."""

    def __init__(self, order: Sequence[Request], clock: WallClock) -> None:
        super().__init__()
        self.order = list(order)
        self.clock = clock
        self.release_late_s = np.zeros(len(order))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._release, name="moesim-arrivals", daemon=True)

    def start(self) -> None:
        """Start releasing (call right after the clock's start)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the release thread (it ends by itself once every request is out)."""
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _release(self) -> None:
        for i, r in enumerate(self.order):
            target = self.clock.wall(r.arrival_s)
            while True:
                left = target - time.perf_counter()
                if left <= 0 or self._stop.is_set():
                    break
                # sleep most of the way, spin the last half millisecond (sleep overshoots by ~0.1 ms)
                if left > 1e-3:
                    time.sleep(left - 5e-4)
            if self._stop.is_set():
                return
            with self._cv:
                self.release_late_s[i] = max(0.0, time.perf_counter() - target)
                self.released.append(r)
                self._cv.notify_all()

    def exhausted(self) -> bool:
        """Every request has been pulled."""
        return self.pulled >= len(self.order)

    def wait(self) -> None:
        """Block until a request is released."""
        with self._cv:
            while not self.released and self.pulled < len(self.order):
                if self._stop.is_set():
                    raise RuntimeError("arrival feed stopped (another instance failed)")
                self._cv.wait(timeout=0.5)
