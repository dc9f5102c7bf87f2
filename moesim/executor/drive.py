"""Drive a cost model that executes for real through the simulator's own engine.

``moesim.engine.simulate`` decides every batch exactly as in simulation; only the step times come from the
cost model. One addition: before a decode run whose batch the next arrival can join (the engine will stop
the run at the first step ending at or after that arrival), the instance tells the cost model the arrival's
offset (``cost.stop_hint_s``), so a cost model that executes steps runs only the steps the engine will use.
Cost models without that attribute are unaffected, and the engine's decisions are unchanged (tested: the
driven run equals a plain ``simulate`` with a deterministic cost model that honours the hint).
"""

from __future__ import annotations

from collections.abc import Sequence

from moesim.cost.base import CostModel
from moesim.engine import simulate
from moesim.engine.instance import Instance
from moesim.engine.simulation import SimResult
from moesim.policies.base import Policy
from moesim.specs import GPUSpec, ModelSpec
from moesim.workloads.request import Request


class HintingInstance(Instance):
    """An ``Instance`` that passes the interrupting arrival's offset to the cost model before a decode run."""

    def _decode_run(self):
        hint = None
        if self._next < len(self._arrivals):
            nxt = self._arrivals[self._next]
            if self.policy.interrupts(self, nxt):
                hint = nxt.arrival_s - self.env.now
        if hasattr(self.cost, "stop_hint_s"):
            self.cost.stop_hint_s = hint
        yield from super()._decode_run()


def drive(model: ModelSpec, gpu: GPUSpec, policy: Policy, cost: CostModel, requests: Sequence[Request],
          *, n_tenants: int | None = None, progress: bool = False) -> SimResult:
    """``moesim.engine.simulate`` with ``HintingInstance`` instances (same arguments, same result type)."""
    return simulate(model, gpu, policy, cost, requests, n_tenants=n_tenants, progress=progress,
                    instance_cls=HintingInstance)
