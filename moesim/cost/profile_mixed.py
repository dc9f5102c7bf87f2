"""``profile_mixed``: CUDA-graph step times, except for steps that fetch host-resident experts (eager).

A real engine replays CUDA graphs for its steps, but a step that fetches experts from the host cannot be
captured: it must sync with the host to learn which experts the router picked, then copy them. Such steps run
eagerly, with the host launch gaps the graph profile does not have. This cost model times a step or a decode run
with the eager profile (``<gpu>__<model>.eager.parquet``) when a tenant of its batch has expert positions on the
host, and with the CUDA-graph profile otherwise. Measured on the H200 with the real-time runtime
(``reports/validation/realtime/``), that closes most of the simulator's optimism with host-resident experts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from moesim.cost import COST_MODELS
from moesim.cost.base import CostModel, DecodeRun, Residency, SeqWork, StepCost
from moesim.cost.profile import ProfileCost, ProfileCostConfig
from moesim.errors import UserError
from moesim.specs import GPUSpec, ModelSpec


@dataclass(frozen=True)
class ProfileMixedConfig:
    """Both shipped profiles of the gpu × model.

    Attributes:
        routing_skew: 0 for uniform top-k routing; > 0 for a Zipf law over experts (as ``profile``).
    """

    name: str = "profile_mixed"
    routing_skew: float = 0.0

    def __post_init__(self) -> None:
        if self.routing_skew < 0:
            raise UserError(f"cost.routing_skew={self.routing_skew}: must be ≥ 0")


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

    def _pick(self, tenants: Iterable[int], residency: Residency) -> ProfileCost:
        hit = self._host.get(id(residency))
        if hit is None or hit[0] is not residency:
            hit = (residency, frozenset(t for g in residency.groups if not g.on_gpu and g.positions for t in g.tenants))
            self._host[id(residency)] = hit
        host = hit[1]
        return self.eager if host and any(t in host for t in tenants) else self.graphs

    def step(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost:
        """The eager profile's step when a sequence's tenant has host experts, else the graph profile's."""
        return self._pick((s.tenant for s in batch), residency).step(batch, residency)

    def decode_run(self, decode_tenants: tuple[int, ...], context0: tuple[int, ...], n_steps: int,
                   residency: Residency) -> DecodeRun:
        """As ``step``, for a whole decode run (its batch does not change)."""
        return self._pick(decode_tenants, residency).decode_run(decode_tenants, context0, n_steps, residency)

    def swap_s(self, nbytes: float, residency: Residency, bandwidth_fraction: float = 1.0) -> float:
        """The graph profile's measured non-expert-set copy rate."""
        return self.graphs.swap_s(nbytes, residency, bandwidth_fraction)
