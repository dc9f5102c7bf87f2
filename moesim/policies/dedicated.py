"""``dedicated``: the ideal reference — each tenant has a GPU of its own with its whole model resident.

It batches continuously (``max_batch`` 32 by default) so that it stays a lower bound when the policies it
is compared with batch; set ``policy.max_batch=1`` to compare with the paper's batch-size-1 servers.

When the whole model does not fit the GPU (Mixtral-8x7B on an 80 GB card) the plan is marked ``ideal``:
the memory limit is lifted, so it bounds every real policy from below.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.cost.base import Slice
from moesim.policies import POLICIES
from moesim.policies.base import (
    InstancePlan,
    Policy,
    PolicyConfig,
    instance_plan,
    make_residency,
    private_groups,
)
from moesim.specs import GPUSpec, ModelSpec


@dataclass(frozen=True)
class DedicatedConfig(PolicyConfig):
    """One GPU per tenant, continuous batching (the best scheduler the engine has), so it bounds the others."""

    name: str = "dedicated"
    max_batch: int = 32


@POLICIES.register("dedicated", DedicatedConfig)
class Dedicated(Policy):
    """A GPU per tenant, whole model resident."""

    cfg: DedicatedConfig

    def layout(self, model: ModelSpec, gpu: GPUSpec, n_tenants: int) -> list[InstancePlan]:
        """``n_tenants`` whole GPUs."""
        plans = []
        for t in range(n_tenants):
            budget = self.budget(gpu.memory_bytes)
            ideal = model.total_bytes > budget
            memory = gpu.memory_bytes if not ideal else model.total_bytes + (gpu.memory_bytes - budget)
            res = make_residency(private_groups(model, (t,), model.n_expert_positions), Slice())
            plans.append(instance_plan(
                model, res, (t,), max_batch=self.cfg.max_batch, name=f"gpu{t}",
                profile="full" + (" (ideal: memory unbounded)" if ideal else ""), memory_bytes=memory,
                ideal=ideal, budget_bytes=budget,
            ))
        return plans
