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
        P = model.n_expert_positions
        each = min(P, expert_slots(budget, n_tenants, model) // n_tenants)
        return [InstancePlan(
            name="gpu0", profile="full", memory_bytes=gpu.memory_bytes,
            residency=make_residency(private_groups(model, tenants, each), Slice(pinned=self.cfg.pinned),
                                     self.cfg.fetch_overlap),
            tenants=frozenset(tenants), nonexpert_slots=n_tenants, initial_resident=tenants, swap_bytes=0.0,
            swap_bandwidth_fraction=1.0, swap_overlap=False, cross_tenant_batching=False,
            max_batch=self.cfg.max_batch,
            weight_bytes=n_tenants * (each * model.expert_bytes + model.nonexpert_bytes),
            host_expert_bytes=n_tenants * (P - each) * model.expert_bytes,
            meta={"resident_experts_per_tenant": each, "budget_bytes": budget},
        )]
