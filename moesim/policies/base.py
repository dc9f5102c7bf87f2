"""The policy interface: a policy lays out instances and decides; the engine applies.

A policy (one file: its frozen config dataclass and its class, registered by name) answers three
questions and nothing else:

* ``layout``: which instances exist (whole GPU, MIG slices, one GPU per tenant), what each holds
  (expert groups, how many non-expert sets fit at once, KV budget) and how it swaps;
* ``route``: which instance a request goes to;
* ``select``: given an instance's read-only state, which queued requests join the batch now and which
  tenants' non-expert sets must be loaded first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from moesim.cost.base import ExpertGroup, Residency, Slice
from moesim.errors import UserError
from moesim.specs import GPUSpec, ModelSpec
from moesim.workloads.request import Request

if TYPE_CHECKING:
    from moesim.policies.view import InstanceView


@dataclass(frozen=True)
class PolicyConfig:
    """Knobs every policy has.

    Attributes:
        max_batch: sequences per batch (1: the paper's FIFO batch-size-1 server).
        weight_budget_fraction: share of an instance's memory that weights may take (the rest holds KV
            cache and activations); 0.965 reproduces the paper's 82.9e9-byte budget on an A100-80GB.
        budget_bytes: explicit weight budget per instance (bytes); 0 uses ``weight_budget_fraction``.
    """

    name: str = "base"
    max_batch: int = 1
    weight_budget_fraction: float = 0.965
    budget_bytes: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise UserError(f"policy.max_batch={self.max_batch}: must be ≥ 1")
        if not 0 < self.weight_budget_fraction <= 1:
            raise UserError(f"policy.weight_budget_fraction={self.weight_budget_fraction}: must be in (0, 1]")
        if self.budget_bytes < 0:
            raise UserError(f"policy.budget_bytes={self.budget_bytes}: must be ≥ 0")
        # fraction knobs that several policies declare, checked once here for whichever a config has
        for field_name, (lo, lo_open) in _FRACTIONS.items():
            v = getattr(self, field_name, None)
            if (v is not None and not ((lo < v) if lo_open else (lo <= v))) or (v is not None and v > 1):
                rng = "(0, 1]" if lo_open else "[0, 1]"
                raise UserError(f"policy.{field_name}={v}: must be in {rng}")


# field → (lower bound, lower bound excluded)
_FRACTIONS = {"swap_bandwidth_fraction": (0.0, True), "fetch_overlap": (0.0, False)}


@dataclass(frozen=True)
class InstancePlan:
    """What one instance is and holds.

    Attributes:
        name: e.g. ``"gpu0"`` or ``"mig1:3g.40gb"``.
        profile: MIG profile name or ``"full"``.
        memory_bytes: the instance's device memory (bytes).
        residency: expert groups and slice, as the cost model reads them.
        tenants: tenants this instance serves.
        nonexpert_slots: non-expert sets that fit at once.
        initial_resident: tenants whose non-expert sets are loaded at time 0.
        swap_bytes: bytes copied host→device to make a tenant resident (s).
        swap_bandwidth_fraction: share of the link a swap achieves (the paper's ≈ 0.11).
        swap_overlap: True when the swap streams layer by layer under the next prefill.
        cross_tenant_batching: sequences of different tenants may share a batch.
        max_batch: sequences per batch.
        weight_bytes: resident weights (bytes): expert copies plus non-expert slots.
        host_expert_bytes: expert bytes kept on the host (bytes).
        ideal: the plan ignores the physical memory limit (the ``dedicated`` reference).
    """

    name: str
    profile: str
    memory_bytes: float
    residency: Residency
    tenants: frozenset[int]
    nonexpert_slots: int
    initial_resident: tuple[int, ...]
    swap_bytes: float
    swap_bandwidth_fraction: float
    swap_overlap: bool
    cross_tenant_batching: bool
    max_batch: int
    weight_bytes: float
    host_expert_bytes: float
    ideal: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kv_capacity_bytes(self) -> float:
        """Memory left for the KV cache (bytes)."""
        return max(0.0, self.memory_bytes - self.weight_bytes)


@dataclass(frozen=True, slots=True)
class Selection:
    """A scheduling decision: load these tenants' non-expert sets, then prefill these requests."""

    admit: tuple[Request, ...] = ()
    load: tuple[int, ...] = ()


_NOTHING = Selection()


#: How a GPU's instances share its host link while several fetch experts (``moesim.engine.simulation.HostLink``).
LINK_DISCIPLINES = ("share", "fifo", "alternate")


class Policy(ABC):
    """Base class: subclasses implement ``layout``; ``route`` and ``select`` have FIFO defaults."""

    registry_name: str = "base"

    def __init__(self, cfg: PolicyConfig) -> None:
        self.cfg = cfg
        self._route: dict[int, int] = {}

    # ---- layout -------------------------------------------------------------------------------
    @abstractmethod
    def layout(self, model: ModelSpec, gpu: GPUSpec, n_tenants: int) -> list[InstancePlan]:
        """The instances, their slices and what they hold."""

    @property
    def link_discipline(self) -> str:
        """How this GPU's instances share its host link while several fetch experts (``HostLink``): ``share``
        (each gets a fair share, the default), ``fifo`` (one copy queue, layer bursts in issue order at the full
        rate) or ``alternate`` (one copy engine taking the instances' copies in turn)."""
        return str(getattr(self.cfg, "link_discipline", "share"))

    def budget(self, memory_bytes: float) -> float:
        """Weight budget of an instance with ``memory_bytes`` of memory (bytes)."""
        return self.cfg.budget_bytes or memory_bytes * self.cfg.weight_budget_fraction

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for reports."""
        from dataclasses import asdict

        return {"policy": self.registry_name, **{k: v for k, v in asdict(self.cfg).items() if k != "name"}}

    # ---- routing ------------------------------------------------------------------------------
    def bind(self, plans: Sequence[InstancePlan]) -> None:
        """Remember which instance serves which tenant (first instance listing it)."""
        self._route = {}
        for i, p in enumerate(plans):
            for t in sorted(p.tenants):
                self._route.setdefault(t, i)

    def route(self, request: Request) -> int:
        """Index of the instance that serves ``request``."""
        try:
            return self._route[request.tenant]
        except KeyError:
            raise UserError(
                f"request {request.id} has tenant {request.tenant}, but policy {self.registry_name!r} "
                f"serves tenants {sorted(self._route)}"
            ) from None

    # ---- scheduling ---------------------------------------------------------------------------
    def select(self, inst: InstanceView) -> Selection:
        """FIFO: admit the longest prefix of the queue that can run with the current batch.

        A request can join when the batch has room, the KV cache has room for its whole
        prompt + output, and its tenant is compatible: with cross-tenant batching any tenant whose
        non-expert set is resident or can be loaded without evicting a running tenant; otherwise only
        the running tenant. When nothing runs and the head's tenant is not resident, its set is loaded.
        """
        q = inst.queue
        if not q:
            return _NOTHING
        plan = inst.plan
        room = plan.max_batch - inst.n_running
        if room <= 0:
            return _NOTHING
        running_tenants = inst.running_tenants()
        resident = inst.resident
        admit: list[Request] = []
        load: list[int] = []
        kv_free = inst.kv_free_bytes
        kvb = inst.kv_bytes_per_token
        slots_free = plan.nonexpert_slots - len(set(resident) | running_tenants)
        batch_tenants = set(running_tenants)
        for r in q:
            if len(admit) >= room:
                break
            t = r.tenant
            if plan.cross_tenant_batching:
                if t not in resident and t not in load:
                    if slots_free <= 0 and not self._can_evict(resident, batch_tenants | {t}, plan):
                        break
                    load.append(t)
                    slots_free -= 1
            else:
                cur = next(iter(batch_tenants)) if batch_tenants else None
                if cur is None:
                    if t not in resident:
                        load.append(t)
                elif t != cur:
                    break
            need = (r.prompt_tokens + r.output_tokens) * kvb
            if need > kv_free:
                break
            kv_free -= need
            admit.append(r)
            batch_tenants.add(t)
        return Selection(tuple(admit), tuple(load))

    @staticmethod
    def _can_evict(resident: Sequence[int], keep: set[int], plan: InstancePlan) -> bool:
        return any(t not in keep for t in resident)

    def interrupts(self, inst: InstanceView, request: Request) -> bool:
        """Whether the next arrival should end the running decode run at its step (it could join then).

        Called at the start of a run with the next request due at this instance. A request behind a
        blocked queue (FIFO) or facing a full batch cannot join, so it does not cut the run.
        """
        plan = inst.plan
        if inst.n_running >= plan.max_batch or inst.queue:
            return False
        if plan.cross_tenant_batching:
            return request.tenant in inst.resident or len(inst.resident) < plan.nonexpert_slots
        return request.tenant in inst.running_tenants()


# ---- residency builders -----------------------------------------------------------------------
def expert_slots(budget: float, nonexpert_sets: int, model: ModelSpec) -> int:
    """Expert copies that fit a weight budget after ``nonexpert_sets`` non-expert sets (≥ 0)."""
    return max(0, int((budget - nonexpert_sets * model.nonexpert_bytes) // model.expert_bytes))


def require_fits(budget: float, nonexpert_sets: int, model: ModelSpec, where: str) -> None:
    """Refuse a layout whose non-expert sets alone exceed the weight budget."""
    need = nonexpert_sets * model.nonexpert_bytes
    if need > budget:
        raise UserError(
            f"{where}: {nonexpert_sets} non-expert set(s) of {model.name} need {need / 1e9:.2f} GB but the "
            f"weight budget is {budget / 1e9:.2f} GB; use a larger GPU/MIG profile or fewer tenants"
        )


def consolidated_groups(model: ModelSpec, tenants: Sequence[int], shared: int) -> tuple[ExpertGroup, ...]:
    """``shared`` positions with one GPU copy for all tenants; the rest on the host, one copy per tenant."""
    P = model.n_expert_positions
    shared = min(shared, P)
    groups = [ExpertGroup(frozenset(tenants), shared, True)]
    groups += [ExpertGroup(frozenset({t}), P - shared, False) for t in tenants]
    return tuple(g for g in groups if g.positions > 0)


def private_groups(model: ModelSpec, tenants: Sequence[int], resident_each: int) -> tuple[ExpertGroup, ...]:
    """Each tenant its own copies: ``resident_each`` on the GPU, the rest on the host."""
    P = model.n_expert_positions
    r = min(resident_each, P)
    groups = []
    for t in tenants:
        groups += [ExpertGroup(frozenset({t}), r, True), ExpertGroup(frozenset({t}), P - r, False)]
    return tuple(g for g in groups if g.positions > 0)


def make_residency(groups: tuple[ExpertGroup, ...], slice_: Slice | None = None, fetch_overlap: float = 0.0,
                   expert_cache_hit: float = 0.0) -> Residency:
    """A Residency record (kept here so policies build it one way)."""
    return Residency(groups, slice_ or Slice(), fetch_overlap, expert_cache_hit)


def instance_plan(model: ModelSpec, residency: Residency, tenants: Sequence[int], *, max_batch: int,
                  name: str = "gpu0", profile: str = "full", memory_bytes: float, nonexpert_sets: int = 1,
                  nonexpert_slots: int | None = None, initial_resident: Sequence[int] | None = None,
                  swap_bytes: float = 0.0, swap_bandwidth_fraction: float = 1.0, swap_overlap: bool = False,
                  cross_tenant_batching: bool = False, weight_bytes: float | None = None, ideal: bool = False,
                  **meta: Any) -> InstancePlan:
    """An InstancePlan whose memory accounting follows from its expert groups.

    Resident weights = GPU expert copies × expert bytes + ``nonexpert_sets`` × non-expert bytes (pass
    ``weight_bytes`` only when the groups over-count what is physically resident, as for ``swap``);
    host bytes = host positions × expert bytes. ``nonexpert_slots`` defaults to ``nonexpert_sets``.
    """
    tenants = tuple(tenants)
    host = sum(g.positions for g in residency.groups if not g.on_gpu) * model.expert_bytes
    if weight_bytes is None:
        weight_bytes = residency.gpu_expert_copies() * model.expert_bytes + nonexpert_sets * model.nonexpert_bytes
    return InstancePlan(
        name=name, profile=profile, memory_bytes=memory_bytes, residency=residency,
        tenants=frozenset(tenants), nonexpert_slots=nonexpert_slots or nonexpert_sets,
        initial_resident=tuple(initial_resident if initial_resident is not None else tenants[:1]),
        swap_bytes=swap_bytes, swap_bandwidth_fraction=swap_bandwidth_fraction, swap_overlap=swap_overlap,
        cross_tenant_batching=cross_tenant_batching, max_batch=max_batch, weight_bytes=weight_bytes,
        host_expert_bytes=host, ideal=ideal, meta=meta,
    )
