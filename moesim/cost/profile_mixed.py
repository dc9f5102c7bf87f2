"""``profile_mixed``: CUDA-graph step times, except for steps that fetch host-resident experts (eager).

A prefill that runs under a streamed swap (``reconfig_fast``) waits on the swap's per-layer copy events and runs
eagerly too (``step_streamed``: the eager profile).

A real engine replays CUDA graphs for its steps, but a step that fetches experts from the host cannot be
captured: it must sync with the host to learn which experts the router picked, then copy them. Such steps run
eagerly, with the host launch gaps the graph profile does not have. This cost model times a step or a decode run
with the eager profile (``<gpu>__<model>.eager.parquet``) when a tenant of its batch has expert positions on the
host, and with the CUDA-graph profile otherwise. Measured on the H200 with the real-time runtime
(``reports/validation/realtime/``), that closes most of the simulator's optimism with host-resident experts.

Overlapped fetches (``Residency.fetch_overlap`` > 0, e.g. ``reconfig_fast``) can only hide a copy under compute
that runs meanwhile: the runtime issues a layer's host copies after its routing and runs the layer's resident
experts while they fly. With ``overlap_bound`` (default) the hidden time is therefore
``min(fetch_overlap × fetch, experts_s × layers_fetching / L)`` of the step, not ``fetch_overlap × fetch``: only
the expert compute of the layers that fetch can cover a copy. With ``f`` expected fetches per step over the
``H`` MoE layers that hold host copies, ``layers_fetching = H (1 − (1 − 1/H)^f)`` (distinct layers hit), and the
share of the step's expert compute in them is ``layers_fetching / L``. Where the host copies lie is
``host_layout``: ``spread`` (default: over all ``L`` layers, ``H = L``) or ``packed`` (as the real-time runtime
lays experts out, ``moesim.executor.layout``: each tenant's positions in group order, layer by layer, so its
host copies fill its last ``⌈h/E⌉`` layers, which hold few or no resident experts to hide a copy under;
``H`` = the layers holding a host copy of a tenant in the step). On the H200 a host expert takes ~6.4 ms to copy
against well under a millisecond of resident-expert compute per layer at small batches, and the measured fetch
time per expert was the same with and without overlap (``reports/validation/realtime/h200b``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from moesim.cost import COST_MODELS
from moesim.cost.base import CostModel, DecodeRun, Residency, SeqWork, StepCost
from moesim.cost.fetch_pipeline import host_slots_by_layer
from moesim.cost.profile import ProfileCost, ProfileCostConfig
from moesim.errors import UserError
from moesim.specs import GPUSpec, ModelSpec

HOST_LAYOUTS = ("spread", "packed")


def host_layers(residency: Residency, n_moe_layers: int, n_experts: int, tenants: Iterable[int]) -> int:
    """MoE layers holding a host copy of any of ``tenants`` when each tenant's positions are laid out in group
    order, layer by layer (``moesim.executor.layout.assign_slots``; position ``p`` is in layer ``p // E``)."""
    want = set(tenants)
    return sum(1 for layer in host_slots_by_layer(residency, n_moe_layers, n_experts)
               if any(ts & want for ts in layer))


@dataclass(frozen=True)
class ProfileMixedConfig:
    """Both shipped profiles of the gpu × model.

    Attributes:
        routing_skew: 0 for uniform top-k routing; > 0 for a Zipf law over experts (as ``profile``).
        overlap_bound: hidden fetch time at most the step's expert compute (see the module docstring).
        host_sync_s: seconds per MoE layer added to a step that fetches host experts: such a step reads each
            layer's routing on the host, which drains the GPU's queue and exposes the launches after it (the
            eager profile was measured without it). 0: not added. Measured by the runtime's
            ``TorchBackend.sync_table`` (``sync_table.csv``; ``profile_bucketed`` reads it from there).
        host_layout: ``spread`` or ``packed``: which MoE layers hold the host copies (module docstring).
    """

    name: str = "profile_mixed"
    routing_skew: float = 0.0
    overlap_bound: bool = True
    host_sync_s: float = 0.0
    host_layout: str = "spread"

    def __post_init__(self) -> None:
        if self.routing_skew < 0:
            raise UserError(f"cost.routing_skew={self.routing_skew}: must be ≥ 0")
        if self.host_layout not in HOST_LAYOUTS:
            raise UserError(f"cost.host_layout={self.host_layout!r}: valid: {', '.join(HOST_LAYOUTS)}")
        if self.host_sync_s < 0:
            raise UserError(f"cost.host_sync_s={self.host_sync_s}: must be ≥ 0 (seconds per MoE layer)")


@COST_MODELS.register("profile_mixed", ProfileMixedConfig)
class ProfileMixedCost(CostModel):
    """Graph-profile times; eager-profile times for steps whose batch fetches host experts."""

    name = "profile_mixed"

    def __init__(self, cfg: ProfileMixedConfig, model: ModelSpec, gpu: GPUSpec) -> None:
        super().__init__(model, gpu)
        self.cfg = cfg
        self.graphs = ProfileCost(ProfileCostConfig(execution="graphs", routing_skew=cfg.routing_skew), model, gpu)
        self.eager = ProfileCost(ProfileCostConfig(execution="eager", routing_skew=cfg.routing_skew), model, gpu)
        self.path = self.graphs.path
        self.meta = self.graphs.meta
        self.derived = self.graphs.derived or self.eager.derived
        self._host: dict[int, tuple[Residency, frozenset[int]]] = {}
        self._zero: dict[int, tuple[Residency, Residency]] = {}
        self._layers: dict[tuple[int, frozenset[int]], tuple[Residency, int]] = {}

    def _pick(self, tenants: Iterable[int], residency: Residency) -> ProfileCost:
        hit = self._host.get(id(residency))
        if hit is None or hit[0] is not residency:
            hit = (residency, frozenset(t for g in residency.groups if not g.on_gpu and g.positions for t in g.tenants))
            self._host[id(residency)] = hit
        host = hit[1]
        return self.eager if host and any(t in host for t in tenants) else self.graphs

    def _unhidden(self, residency: Residency) -> Residency:
        """``residency`` with nothing of the fetches hidden (cached per residency object)."""
        hit = self._zero.get(id(residency))
        if hit is None or hit[0] is not residency:
            hit = (residency, dataclasses.replace(residency, fetch_overlap=0.0))
            self._zero[id(residency)] = hit
        return hit[1]

    def _bounded(self, residency: Residency) -> bool:
        return self.cfg.overlap_bound and residency.fetch_overlap > 0

    def _host_layers(self, residency: Residency, tenants: Iterable[int]) -> int:
        """``H`` of the module docstring (cached per residency object and tenant set)."""
        L = max(1, self.model.n_moe_layers)
        if self.cfg.host_layout == "spread":
            return L
        ts = frozenset(tenants)
        key = (id(residency), ts)
        hit = self._layers.get(key)
        if hit is None or hit[0] is not residency:
            hit = (residency, max(1, host_layers(residency, L, self.model.n_experts, ts)))
            self._layers[key] = hit
        return hit[1]

    def _hidden(self, c: StepCost, overlap: float, steps: int = 1, host_layers: int = 0) -> float:
        """Fetch time hidden under the expert compute of the layers that fetch (``steps`` steps summed in ``c``;
        ``host_layers``: ``H`` of the module docstring, 0: all MoE layers)."""
        L = max(1, self.model.n_moe_layers)
        H = min(L, host_layers) if host_layers > 0 else L
        f = c.expert_fetches / max(1, steps)
        share = (H / L) * (1.0 - (1.0 - 1.0 / H) ** f) if H > 1 else float(f > 0) / L
        return min(overlap * c.fetch_s, c.experts_s * share)

    def _sync(self, c: StepCost, prof: ProfileCost, steps: int = 1) -> StepCost:
        """``c`` plus the per-layer host synchronisations of fetching steps (``host_sync_s``)."""
        if prof is self.graphs or self.cfg.host_sync_s <= 0:
            return c
        return dataclasses.replace(c, overhead_s=c.overhead_s + self.cfg.host_sync_s * self.model.n_moe_layers * steps)

    def step(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost:
        """The eager profile's step when a sequence's tenant has host experts, else the graph profile's."""
        prof = self._pick((s.tenant for s in batch), residency)
        if not self._bounded(residency):
            return self._sync(prof.step(batch, residency), prof)
        c = prof.step(batch, self._unhidden(residency))
        hidden = self._hidden(c, residency.fetch_overlap, 1, self._host_layers(residency, (s.tenant for s in batch)))
        return self._sync(dataclasses.replace(c, fetch_s=c.fetch_s - hidden), prof)

    def step_streamed(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost:
        """A prefill under a streamed swap runs eagerly (it waits on the swap's per-layer events): the eager
        profile's step (overlapped fetches bounded as in ``step``), with ``fetch_start_s`` set
        (``with_fetch_start``)."""
        prof = self._pick((s.tenant for s in batch), residency)  # the host syncs only where it fetches
        if not self._bounded(residency):
            c = self._sync(self.eager.step(batch, residency), prof)
        else:
            c = self.eager.step(batch, self._unhidden(residency))
            hidden = self._hidden(c, residency.fetch_overlap, 1,
                                  self._host_layers(residency, (s.tenant for s in batch)))
            c = self._sync(dataclasses.replace(c, fetch_s=c.fetch_s - hidden), prof)
        return self.with_fetch_start(c, residency, tuple(s.tenant for s in batch))

    def with_fetch_start(self, c: StepCost, residency: Residency, tenants: tuple[int, ...]) -> StepCost:
        """``c`` with ``fetch_start_s``: the step's time outside its copies, spread evenly over the MoE layers,
        before the first of the ``H`` layers holding host copies (``host_layout``: ``packed``, the last ``H``
        layers, so ``(L − H) / L`` of it; ``spread``: 0). For a prefill under a streamed swap
        (``moesim.cost.base.swap_link_delay``)."""
        if c.expert_fetches <= 0:
            return c
        L = max(1, self.model.n_moe_layers)
        H = self._host_layers(residency, tenants)
        return dataclasses.replace(c, fetch_start_s=(c.total_s - c.fetch_s) * (L - H) / L)

    def decode_run(self, decode_tenants: tuple[int, ...], context0: tuple[int, ...], n_steps: int,
                   residency: Residency) -> DecodeRun:
        """As ``step``, for a whole decode run (its batch does not change)."""
        prof = self._pick(decode_tenants, residency)
        if not self._bounded(residency):
            return self._sync_run(prof.decode_run(decode_tenants, context0, n_steps, residency), prof)
        run = prof.decode_run(decode_tenants, context0, n_steps, self._unhidden(residency))
        c = run.cost
        hidden = self._hidden(c, residency.fetch_overlap, n_steps, self._host_layers(residency, decode_tenants))
        if hidden <= 0 or run.end_s[-1] <= 0:
            return self._sync_run(run, prof)
        end = run.end_s - hidden * run.end_s / run.end_s[-1]  # spread in proportion to each step's time
        return self._sync_run(DecodeRun(end, dataclasses.replace(c, fetch_s=c.fetch_s - hidden)), prof)

    def _sync_run(self, run: DecodeRun, prof: ProfileCost) -> DecodeRun:
        if prof is self.graphs or self.cfg.host_sync_s <= 0:
            return run
        per = self.cfg.host_sync_s * self.model.n_moe_layers
        n = len(run.end_s)
        return DecodeRun(run.end_s + per * np.arange(1, n + 1), self._sync(run.cost, prof, n))

    def swap_s(self, nbytes: float, residency: Residency, bandwidth_fraction: float = 1.0) -> float:
        """The graph profile's measured non-expert-set copy rate."""
        return self.graphs.swap_s(nbytes, residency, bandwidth_fraction)
