"""``reconfig``: the paper's partial runtime reconfiguration, reproduced faithfully.

Experts are consolidated under a memory budget: the most similar positions get one GPU copy shared by all
variants, the rest stay on the host, one copy per variant, fetched synchronously per use. One tenant's
non-expert set is resident; a request of another tenant first swaps it in, synchronously, at about a tenth
of the link's speed (the paper's 1.05–1.25 s for 3.2 GB over PCIe Gen4). FIFO, batch size 1.

With ``nonexpert_sets_reserved = 2`` (the loaded set plus room for the incoming one) the paper's budget of
82.9e9 bytes leaves exactly 217 of 256 Mixtral positions resident, as the paper reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moesim.cost.base import ExpertGroup, Slice
from moesim.errors import UserError
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
from moesim.specs import GPUSpec, ModelSpec


@dataclass(frozen=True)
class ReconfigConfig(PolicyConfig):
    """The paper's system.

    Attributes:
        nonexpert_sets_reserved: non-expert sets the budget reserves (2 reproduces the paper's 217/256).
        swap_bandwidth_fraction: share of the pinned link the synchronous swap reaches (paper ≈ 0.11).
        swap_overlap: stream the swap layer by layer under the next prefill (paper: False).
        pinned: host copies from pinned memory.
        fetch_overlap: share of expert-fetch time hidden under compute (paper: 0, synchronous).
        plan: a consolidation plan JSON (moesim.consolidate); empty: the paper's budget rule.
    """

    name: str = "reconfig"
    nonexpert_sets_reserved: int = 2
    swap_bandwidth_fraction: float = 0.11
    swap_overlap: bool = False
    pinned: bool = True
    fetch_overlap: float = 0.0
    plan: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nonexpert_sets_reserved < 1:
            raise UserError(f"policy.nonexpert_sets_reserved={self.nonexpert_sets_reserved}: must be ≥ 1")


def check_plan_tenants(plan: Any, path: str, n_tenants: int, where: str = "", key: str = "policy.plan") -> None:
    """A plan's variant i is tenant i: its variant count must equal the tenants served. A 4-variant plan with
    2 tenants was taken silently (its memory counted the copies of 2 variants nobody serves)."""
    k = len(plan.variants)
    if k == n_tenants:
        return
    names = ", ".join(plan.variants[:6]) + (", …" if k > 6 else "")
    raise UserError(f"{key}={path}{where}: the plan consolidates {k} variant{'s' if k != 1 else ''} ({names}) "
                    f"but {n_tenants} tenant{'s are' if n_tenants != 1 else ' is'} served; a plan's variant i "
                    f"serves tenant i, so the counts must match: build one for {n_tenants} (python -m "
                    f"moesim.consolidate … n_variants={n_tenants}) or serve {k} tenants")


def plan_groups(path: str, n_tenants: int, model: ModelSpec) -> tuple[tuple[ExpertGroup, ...], int]:
    """Expert groups and GPU copies from a consolidation plan file."""
    from moesim.consolidation.plan import load_plan

    plan = load_plan(path)
    if plan.model != model.name:
        raise UserError(f"{path}: plan is for model {plan.model!r}, the simulation uses {model.name!r}")
    check_plan_tenants(plan, path, n_tenants)
    groups = plan.expert_groups()
    return groups, sum(g.positions for g in groups if g.on_gpu)


@POLICIES.register("reconfig", ReconfigConfig)
class Reconfig(Policy):
    """Consolidated experts + one resident non-expert set, swapped on tenant change."""

    cfg: ReconfigConfig

    def layout(self, model: ModelSpec, gpu: GPUSpec, n_tenants: int) -> list[InstancePlan]:
        """One instance over the whole GPU."""
        cfg = self.cfg
        budget = self.budget(gpu.memory_bytes)
        tenants = tuple(range(n_tenants))
        sets = cfg.nonexpert_sets_reserved
        require_fits(budget, sets, model, f"policy {self.registry_name} on {gpu.name}")
        if cfg.plan:
            groups, shared = plan_groups(cfg.plan, n_tenants, model)
        else:
            shared = min(model.n_expert_positions, expert_slots(budget, sets, model))
            groups = consolidated_groups(model, tenants, shared)
        res = make_residency(groups, Slice(pinned=cfg.pinned), cfg.fetch_overlap)
        return [instance_plan(
            model, res, tenants, max_batch=cfg.max_batch, memory_bytes=gpu.memory_bytes, nonexpert_sets=sets,
            nonexpert_slots=max(1, sets - 1), swap_bytes=model.nonexpert_bytes,
            swap_bandwidth_fraction=cfg.swap_bandwidth_fraction, swap_overlap=cfg.swap_overlap,
            shared_positions=shared, budget_bytes=budget,
        )]
