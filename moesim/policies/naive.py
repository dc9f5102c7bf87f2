"""``naive``: no consolidation; all tenants' models share GPU memory as far as it goes.

Every tenant's non-expert set is resident; the remaining memory holds an equal number of each tenant's
own experts, the rest stay on the host. One FIFO queue time-shares the whole GPU; a batch holds one
tenant's requests (separate model copies cannot batch together).
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.cost.base import Slice
from moesim.policies import POLICIES
from moesim.policies.base import (
    InstancePlan,
    Policy,
    PolicyConfig,
    expert_slots,
    instance_plan,
    make_residency,
    private_groups,
    require_fits,
)
from moesim.specs import GPUSpec, ModelSpec


@dataclass(frozen=True)
class NaiveConfig(PolicyConfig):
    """Naive sharing."""

    name: str = "naive"
    pinned: bool = True
    fetch_overlap: float = 0.0


@POLICIES.register("naive", NaiveConfig)
class Naive(Policy):
    """All models side by side, time-shared."""

    cfg: NaiveConfig

    def layout(self, model: ModelSpec, gpu: GPUSpec, n_tenants: int) -> list[InstancePlan]:
        """One instance; experts split evenly between tenants."""
        budget = self.budget(gpu.memory_bytes)
        tenants = tuple(range(n_tenants))
        require_fits(budget, n_tenants, model, f"policy naive on {gpu.name}")
        each = min(model.n_expert_positions, expert_slots(budget, n_tenants, model) // n_tenants)
        res = make_residency(private_groups(model, tenants, each), Slice(pinned=self.cfg.pinned),
                             self.cfg.fetch_overlap)
        return [instance_plan(
            model, res, tenants, max_batch=self.cfg.max_batch, memory_bytes=gpu.memory_bytes,
            nonexpert_sets=n_tenants, initial_resident=tenants, resident_experts_per_tenant=each,
            budget_bytes=budget,
        )]
