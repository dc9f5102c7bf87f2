"""``dedicated``: the ideal reference — each tenant has a GPU of its own with its whole model resident.

When the whole model does not fit the GPU (Mixtral-8x7B on an 80 GB card) the plan is marked ``ideal``:
the memory limit is lifted, so it bounds every real policy from below.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.cost.base import Slice
from moesim.policies import POLICIES
from moesim.policies.base import InstancePlan, Policy, PolicyConfig, make_residency, private_groups
from moesim.specs import GPUSpec, ModelSpec


@dataclass(frozen=True)
class DedicatedConfig(PolicyConfig):
    """One GPU per tenant."""

    name: str = "dedicated"


@POLICIES.register("dedicated", DedicatedConfig)
class Dedicated(Policy):
    """A GPU per tenant, whole model resident."""

    cfg: DedicatedConfig

    def layout(self, model: ModelSpec, gpu: GPUSpec, n_tenants: int) -> list[InstancePlan]:
        """``n_tenants`` whole GPUs."""
        P = model.n_expert_positions
        plans = []
        for t in range(n_tenants):
            budget = self.budget(gpu.memory_bytes)
            ideal = model.total_bytes > budget
            memory = gpu.memory_bytes if not ideal else model.total_bytes + (gpu.memory_bytes - budget)
            plans.append(InstancePlan(
                name=f"gpu{t}", profile="full" + (" (ideal: memory unbounded)" if ideal else ""),
                memory_bytes=memory,
                residency=make_residency(private_groups(model, (t,), P), Slice()),
                tenants=frozenset({t}), nonexpert_slots=1, initial_resident=(t,), swap_bytes=0.0,
                swap_bandwidth_fraction=1.0, swap_overlap=False, cross_tenant_batching=False,
                max_batch=self.cfg.max_batch, weight_bytes=model.total_bytes, host_expert_bytes=0.0,
                ideal=ideal, meta={"budget_bytes": budget},
            ))
        return plans
