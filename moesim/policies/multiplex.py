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
from moesim.errors import UserError
from moesim.policies import POLICIES
from moesim.policies.base import (
    InstancePlan,
    Policy,
    PolicyConfig,
    consolidated_groups,
    expert_slots,
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

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.fetch_overlap <= 1:
            raise UserError(f"policy.fetch_overlap={self.fetch_overlap}: must be in [0, 1]")


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
        host = sum(g.positions for g in groups if not g.on_gpu) * model.expert_bytes
        return [InstancePlan(
            name="gpu0", profile="full", memory_bytes=gpu.memory_bytes,
            residency=make_residency(groups, Slice(), self.cfg.fetch_overlap),
            tenants=frozenset(tenants), nonexpert_slots=n_tenants, initial_resident=tenants, swap_bytes=0.0,
            swap_bandwidth_fraction=1.0, swap_overlap=False, cross_tenant_batching=True,
            max_batch=self.cfg.max_batch,
            weight_bytes=shared * model.expert_bytes + n_tenants * model.nonexpert_bytes,
            host_expert_bytes=host, meta={"shared_positions": shared, "budget_bytes": budget},
        )]
