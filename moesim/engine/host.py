"""The host process that launches the steps of several instances: host-bound steps slow each other.

The real-time runtime (``moesim.serve``) drives every GPU of a fleet, and every slice of a mig GPU, from one host
process, one thread per instance. A step that fetches host-resident experts runs eagerly (it reads each host
layer's routing on the host) and is host-bound: outside its copies its time is host work (Python dispatch, kernel
launches, synchronisations). While another instance of the same process runs such steps too, that host work is
slower (a shared interpreter lock, driver locks and CPU caches), while the copies (each GPU's own link) are not.

Measured in ``reports/validation/realtime/h200x2b/fleet_host`` (two H200s, one process, every step fetching;
``reports/validation/realtime/fleet_host_analysis.py``): outside their copies, one-sequence decode steps took
51.3 ms per step with the other GPU idle and 68.9 ms with it busy (×1.34), 256-token prefills 57.9 and 73.9 ms
(×1.28), at an unchanged 6.4 ms per expert copy.

Measured directly in ``reports/validation/realtime/h200_s6/contention/contention.csv`` (two H200s, two threads of one
process, eager steps with a host sync at every layer, each GPU alone and both at once): ×1.13–1.51 for one- and
two-sequence decode steps, ×1.02–1.27 for a 256-token prefill (mean ×1.28 over the six).

Model (``host_contention`` = α, dimensionless): a host-bound step (one that fetches host experts) of an instance
starting while ``k`` other instances of the same process are active in host-bound work takes ``1 + α·k·s`` times
its time outside its copies, ``s`` being the share of that time the host launches op by op
(``CostModel.host_bound_share``: 1 for a step run eagerly; for the runtime's piecewise steps, which replay the
layers before the first host layer from one graph, the share of the layers from the first host layer on); its
copies are unchanged. On the piecewise runtime the fleet's fetching steps launch few layers op by op (the
tenth call's fleet runs: within 2 % with it, +5.4 % and +5.6 % with the whole step stretched). ``k`` is fixed for the step (for a decode run, until an
instance of the process goes idle or wakes up, which cuts the others' runs as the host link does). α = 0: no
contention (separate processes per GPU, the simulator's default).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from moesim.cost.base import DecodeRun, StepCost


class HostProcess:
    """The instances one host process drives (``members``) and how many are in host-bound work now.

    ``alpha``: the contention factor α (dimensionless, ≥ 0; module docstring).
    """

    __slots__ = ("active", "alpha", "members")

    def __init__(self, alpha: float) -> None:
        if alpha < 0:
            raise ValueError(f"host_contention={alpha}: must be ≥ 0")
        self.alpha = alpha
        self.active = 0
        self.members: list = []  # instances whose steps are host-bound (they fetch host experts)

    def begin(self, host_bound: bool) -> None:
        """An instance starts a step (counted only when host-bound)."""
        if host_bound:
            self.active += 1

    def end(self, host_bound: bool) -> None:
        """An instance ends a step."""
        if host_bound:
            self.active -= 1

    def factor(self) -> float:
        """The slowdown of the time outside the copies of a host-bound step starting now (before ``begin``)."""
        return 1.0 + self.alpha * self.active


def stretch_step(c: StepCost, factor: float) -> StepCost:
    """``c`` with its time outside its copies (``total_s − fetch_s``) multiplied by ``factor``."""
    if factor == 1.0:
        return c
    return dataclasses.replace(c, overhead_s=c.overhead_s + (factor - 1.0) * (c.total_s - c.fetch_s))


def stretch_run(run: DecodeRun, factor: float) -> DecodeRun:
    """``run`` with its time outside its copies multiplied by ``factor``, spread over its steps in proportion to
    their lengths (the copies' share of each step taken as the run's)."""
    if factor == 1.0 or not len(run.end_s):
        return run
    total = run.cost.total_s
    outside = total - run.cost.fetch_s
    if total <= 0 or outside <= 0:
        return run
    k = 1.0 + (factor - 1.0) * outside / total
    return DecodeRun(np.asarray(run.end_s) * k, stretch_step(run.cost, factor))
