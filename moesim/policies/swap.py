"""``swap``: one whole model resident at a time; a tenant change loads the other whole model.

"Whole" means as much of the model as the budget holds (non-expert set plus as many experts as fit; the
rest stay on the host, fetched per use). Every tenant change copies all of that over the host link.
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
class SwapConfig(PolicyConfig):
    """Whole-model swapping.

    Attributes:
        swap_bandwidth_fraction: share of the link a whole-model load reaches.
        pinned: host copies from pinned memory.
    """

    name: str = "swap"
    swap_bandwidth_fraction: float = 1.0
    pinned: bool = True


@POLICIES.register("swap", SwapConfig)
class Swap(Policy):
    """One model at a time."""

    cfg: SwapConfig

    def layout(self, model: ModelSpec, gpu: GPUSpec, n_tenants: int) -> list[InstancePlan]:
        """One instance; a swap moves the whole resident model."""
        budget = self.budget(gpu.memory_bytes)
        tenants = tuple(range(n_tenants))
        require_fits(budget, 1, model, f"policy swap on {gpu.name}")
        r = min(model.n_expert_positions, expert_slots(budget, 1, model))
        whole = model.nonexpert_bytes + r * model.expert_bytes
        res = make_residency(private_groups(model, tenants, r), Slice(pinned=self.cfg.pinned))
        # the groups list every tenant's copies, but only the loaded tenant's are in memory
        return [instance_plan(
            model, res, tenants, max_batch=self.cfg.max_batch, memory_bytes=gpu.memory_bytes,
            swap_bytes=whole, swap_bandwidth_fraction=self.cfg.swap_bandwidth_fraction, weight_bytes=whole,
            resident_experts=r, budget_bytes=budget,
        )]
