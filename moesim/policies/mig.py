"""``mig``: the GPU split into a valid MIG layout, one tenant per instance.

Each instance has its profile's memory (weight budget from it), SM share (compute) and memory-slice share
(HBM bandwidth); experts that do not fit stay on the host and are fetched per use over the one host link
that all instances share.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.cost.base import Slice
from moesim.errors import UserError
from moesim.policies import POLICIES
from moesim.policies.base import (
    LINK_DISCIPLINES,
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
from moesim.specs.mig import equal_layout, parse_layout


@dataclass(frozen=True)
class MIGConfig(PolicyConfig):
    """MIG partitioning.

    Attributes:
        layout: e.g. ``"3g+3g"`` or ``"4g.40gb+3g.40gb"``; empty: the layout with one instance per tenant
            whose smallest instance is largest.
        pinned: host copies from pinned memory.
        fetch_overlap: share of expert-fetch time hidden under compute (paper: 0).
        emulated: the slices are CUDA green contexts of one process, as ``moesim.serve`` runs MIG on a GPU whose
            MIG mode is left alone: the SMs are split, but HBM is not (each slice's memory bandwidth fraction 1,
            not its profile's memory slices), and host copies go through one copy engine (``link_discipline``
            ``auto`` → ``alternate``). Set by ``moesim.serve`` for its simulated side; a prediction for real MIG
            leaves it off.
        link_discipline: how the instances share the one host link while several fetch experts. ``auto``
            (default): ``alternate`` when ``emulated``, else ``share``. ``share`` (real MIG partitions, each with
            its own copy engines): each of ``k`` fetching instances gets
            ``1/k`` of the link, as the paper's A100 logs show (a host expert takes 52 ms while the other instance
            fetches, 27 ms alone). ``alternate``: one copy engine takes the instances' copies in turn, copy by copy,
            as with slices emulated by green contexts in one process (``moesim.serve``; measured in
            ``reports/validation/realtime/h200_copy_trace/`` and the runtime's timelines in ``h200_pinned/``): an
            instance's copies are slowed by the share of time the others have a copy waiting (``HostLink``).
            ``fifo``: layer bursts in issue order, the runtime before its routing reads went through a pinned
            buffer (``moesim.serve.backend.HostReader``; the calls before the fifteenth).
    """

    name: str = "mig"
    layout: str = ""
    pinned: bool = True
    fetch_overlap: float = 0.0
    link_discipline: str = "auto"
    emulated: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.link_discipline not in ("auto", *LINK_DISCIPLINES):
            raise UserError(f"policy.link_discipline={self.link_discipline!r}: valid: auto, "
                            f"{', '.join(LINK_DISCIPLINES)}")


@POLICIES.register("mig", MIGConfig)
class MIG(Policy):
    """One tenant per MIG instance."""

    cfg: MIGConfig

    @property
    def link_discipline(self) -> str:
        """``link_discipline``; ``auto``: ``alternate`` for emulated slices (one copy engine), else ``share``."""
        d = self.cfg.link_discipline
        return d if d != "auto" else ("alternate" if self.cfg.emulated else "share")

    def layout(self, model: ModelSpec, gpu: GPUSpec, n_tenants: int) -> list[InstancePlan]:
        """Instances of the chosen layout, tenant i on instance i."""
        lay = parse_layout(gpu, self.cfg.layout) if self.cfg.layout else equal_layout(gpu, n_tenants)
        if len(lay.instances) < n_tenants:
            raise UserError(
                f"policy.layout={lay.short_name!r} has {len(lay.instances)} instances for {n_tenants} tenants; "
                "mig serves one tenant per instance"
            )
        plans = []
        for i, inst in enumerate(lay.instances[:n_tenants]):
            prof = inst.profile
            budget = self.budget(prof.memory_bytes)
            require_fits(budget, 1, model, f"MIG instance {prof.name}")
            r = min(model.n_expert_positions, expert_slots(budget, 1, model))
            sl = Slice(sm_fraction=prof.sms / gpu.sms, bw_fraction=1.0 if self.cfg.emulated else prof.memory_fraction,
                       pinned=self.cfg.pinned)
            res = make_residency(private_groups(model, (i,), r), sl, self.cfg.fetch_overlap)
            plans.append(instance_plan(
                model, res, (i,), max_batch=self.cfg.max_batch, name=f"mig{i}:{prof.name}",
                profile=prof.name, memory_bytes=prof.memory_bytes, layout=lay.name, budget_bytes=budget,
            ))
        return plans
