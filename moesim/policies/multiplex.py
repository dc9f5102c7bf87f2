"""``multiplex`` (ours): every variant's non-expert set resident, experts shared, batches across variants.

Non-expert sets are small (3.2 GB for Mixtral) next to the experts they make shareable, so instead of
swapping them this policy keeps all N resident and gives up N − 1 sets' worth of expert slots. With no
swap left, requests of any variant join one continuous batch: each variant's tokens run its own attention,
router and lm_head, and the shared experts process all variants' tokens in one grouped GEMM — one weight
read serves them all. Host-resident experts are prefetched a layer ahead (``fetch_overlap``).
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.cost.base import Slice
from moesim.policies import POLICIES
from moesim.policies.base import (
    InstancePlan,
    Policy,
    PolicyConfig,
    consolidated_groups,
    expert_slots,
    instance_plan,
    make_residency,
    require_fits,
)
from moesim.policies.reconfig import plan_groups
from moesim.specs import GPUSpec, ModelSpec


@dataclass(frozen=True)
class MultiplexConfig(PolicyConfig):
    """Cross-variant continuous batching.

    Attributes:
        fetch_overlap: share of expert-fetch time hidden by prefetching the next layer's experts.
        plan: a consolidation plan JSON; empty: fill the budget with shared copies (paper's order).
    """

    name: str = "multiplex"
    max_batch: int = 32
    fetch_overlap: float = 0.5
    plan: str = ""


@POLICIES.register("multiplex", MultiplexConfig)
class Multiplex(Policy):
    """All non-expert sets resident, shared experts, one batch for all variants."""

    cfg: MultiplexConfig

    def layout(self, model: ModelSpec, gpu: GPUSpec, n_tenants: int) -> list[InstancePlan]:
        """One instance over the whole GPU."""
        budget = self.budget(gpu.memory_bytes)
        tenants = tuple(range(n_tenants))
        require_fits(budget, n_tenants, model, f"policy multiplex on {gpu.name}")
        if self.cfg.plan:
            groups, shared = plan_groups(self.cfg.plan, n_tenants, model)
        else:
            shared = min(model.n_expert_positions, expert_slots(budget, n_tenants, model))
            groups = consolidated_groups(model, tenants, shared)
        res = make_residency(groups, Slice(), self.cfg.fetch_overlap)
        return [instance_plan(
            model, res, tenants, max_batch=self.cfg.max_batch, memory_bytes=gpu.memory_bytes,
            nonexpert_sets=n_tenants, initial_resident=tenants, cross_tenant_batching=True,
            shared_positions=shared, budget_bytes=budget,
        )]
