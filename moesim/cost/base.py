"""The cost-model contract between calibrator and simulator.

A cost model answers one question: how long does this step take on this slice with these weights
resident, and what is that time made of. The engine never looks inside.

Vocabulary:
  * a *step* is one forward pass of a batch: some sequences prefill a chunk of prompt tokens, others
    decode one token each;
  * an *expert group* is a set of (layer, expert) positions whose weights are one copy shared by a set of
    tenants, either resident on the GPU or on the host (fetched per use over the host link);
  * a *slice* is what the instance owns of the GPU: a fraction of its SMs, of its HBM bandwidth and of the
    host link.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from moesim.specs import GPUSpec, ModelSpec


@dataclass(frozen=True, slots=True)
class SeqWork:
    """One sequence's part in a step.

    Attributes:
        tenant: whose non-expert layers (and own experts) process it.
        new_tokens: prompt tokens prefilled in this step, or 1 for a decode step.
        context: tokens already in the KV cache before this step.
    """

    tenant: int
    new_tokens: int
    context: int


@dataclass(frozen=True, slots=True)
class ExpertGroup:
    """Expert positions that share one weight copy.

    Attributes:
        tenants: tenants whose tokens use this copy.
        positions: number of (layer, expert) positions in the group, over all MoE layers.
        on_gpu: resident in device memory (True) or on the host, fetched per use (False).
    """

    tenants: frozenset[int]
    positions: int
    on_gpu: bool


@dataclass(frozen=True, slots=True)
class Slice:
    """What an instance owns of the GPU, as fractions of the whole.

    Attributes:
        sm_fraction: share of the GPU's SMs (compute).
        bw_fraction: share of HBM bandwidth (a MIG slice's memory-slice fraction).
        link_fraction: share of the host link available to this instance's fetches.
        pinned: host copies come from pinned memory (else pageable).
    """

    sm_fraction: float = 1.0
    bw_fraction: float = 1.0
    link_fraction: float = 1.0
    pinned: bool = True


@dataclass(frozen=True, slots=True)
class Residency:
    """Which weights an instance holds, as the cost model needs it.

    Attributes:
        groups: the expert groups (they cover every tenant's every position exactly once).
        slice: the instance's share of the GPU.
        fetch_overlap: fraction of expert-fetch time hidden under compute (0: synchronous, as the paper).
        expert_cache_hit: fraction of host-expert uses served from a GPU cache instead of the link.
    """

    groups: tuple[ExpertGroup, ...]
    slice: Slice = field(default_factory=Slice)
    fetch_overlap: float = 0.0
    expert_cache_hit: float = 0.0

    def resident_positions(self, tenant: int) -> int:
        """Positions of ``tenant`` whose copy is on the GPU."""
        return sum(g.positions for g in self.groups if g.on_gpu and tenant in g.tenants)

    def host_positions(self, tenant: int) -> int:
        """Positions of ``tenant`` whose copy is on the host."""
        return sum(g.positions for g in self.groups if not g.on_gpu and tenant in g.tenants)

    def gpu_expert_copies(self) -> int:
        """Distinct expert copies in device memory."""
        return sum(g.positions for g in self.groups if g.on_gpu)


@dataclass(frozen=True, slots=True)
class StepCost:
    """A step's duration broken down by component (seconds).

    ``fetch_start_s``: seconds from the step's start until its first host-expert copy is issued (0: at once, or
    not known); ``swap_link_delay`` uses it. Not a component of ``total_s``.
    """

    attention_s: float = 0.0
    router_s: float = 0.0
    experts_s: float = 0.0
    fetch_s: float = 0.0
    lm_head_s: float = 0.0
    overhead_s: float = 0.0
    expert_fetches: float = 0.0  # expected experts copied from the host (count, not seconds)
    fetch_start_s: float = 0.0

    @property
    def total_s(self) -> float:
        """Wall time of the step (seconds)."""
        return (
            self.attention_s + self.router_s + self.experts_s + self.fetch_s + self.lm_head_s + self.overhead_s
        )

    def __add__(self, other: StepCost) -> StepCost:
        return StepCost(
            self.attention_s + other.attention_s,
            self.router_s + other.router_s,
            self.experts_s + other.experts_s,
            self.fetch_s + other.fetch_s,
            self.lm_head_s + other.lm_head_s,
            self.overhead_s + other.overhead_s,
            self.expert_fetches + other.expert_fetches,
            # the first copy of the two steps run one after the other
            self.fetch_start_s if self.expert_fetches > 0 or other.expert_fetches <= 0
            else self.total_s + other.fetch_start_s,
        )


def swap_link_delay(prefill: StepCost, swap_s: float) -> StepCost:
    """A prefill's cost when a streamed swap of ``swap_s`` seconds of copying runs on the host link under it.

    Host→device copies do not share the link: copies in the same direction run one at a time, each at the full
    link rate (NVIDIA: "cudaMemcpy operations issued in the same direction will always serialize"; measured on
    the H200, ``reports/validation/realtime/h200x2``: a host expert's copy took 6.371 ms on average in
    reconfig_fast_host, 5 of whose 8 prefills ran under a 58.7 ms streamed swap, and 6.383 ms in reconfig_host,
    without: a link shared evenly would have stretched those 165 copies by ~0.4 ms each on average over the
    run). The swap's copies (one per
    layer) are all issued when the prefill starts, before any of its fetches, so the prefill's first fetch,
    issued ``prefill.fetch_start_s`` into the step, starts only when the swap has finished: the fetches end
    ``max(0, swap_s − fetch_start_s)`` later (added to ``fetch_s``). A prefill that fetches nothing is unchanged.
    (The fair-share model this replaces, ``min(swap_s, fetch_s)``, added the whole 58.7 ms: the prefills under
    a swap measured 270 ms against 250–254 ms without, simulated 303 ms; now 275 ms: with ``fetch_start_s`` from the
    runtime's layout, where a tenant's host copies fill its last layers, the delay is the ~10–15 ms of swap
    still queued when the prefill reaches them.)
    """
    if prefill.fetch_s <= 0.0 or swap_s <= 0.0:
        return prefill
    delay = swap_s - prefill.fetch_start_s
    if delay <= 0.0:
        return prefill
    from dataclasses import replace

    return replace(prefill, fetch_s=prefill.fetch_s + delay)


def link_delays(swap_s: float, fetch_s: float, issue_s: float) -> dict[str, tuple[float, float]]:
    """How much later a swap and a run of fetches end together than alone, under two link disciplines.

    The swap (``swap_s`` seconds of copying alone) is issued at 0, the fetches (``fetch_s`` alone) at ``issue_s``.
    ``serial``: copies in one direction run one at a time in issue order (``swap_link_delay``'s model): the
    fetches wait for the rest of the swap, ``(0, max(0, swap_s − issue_s))``. ``shared``: the link is split
    evenly while both copy: with ``r = max(0, swap_s − issue_s)`` left of the swap, both are delayed by
    ``min(r, fetch_s)``. Returns ``{discipline: (swap delay s, fetch delay s)}``.
    """
    r = max(0.0, swap_s - issue_s)
    return {"serial": (0.0, r), "shared": (min(r, fetch_s), min(r, fetch_s))}


def link_discipline(measured: dict) -> tuple[str, dict[str, float]]:
    """Which discipline of ``link_delays`` a measured swap-with-fetches record fits best, and each one's mean
    absolute error (seconds) over the record's delays.

    ``measured``: the runtime's ``link_share.json`` (``TorchBackend.link_share``): ``swap_alone_s``,
    ``fetch_alone_s`` and per issue delay ``together[i]`` with ``delay_s``, ``swap_delay_s``, ``fetch_delay_s``.
    """
    rows = measured.get("together") or []
    if not rows or not measured.get("swap_alone_s"):
        raise ValueError("link_share record without swap_alone_s or together rows")
    err = {"serial": 0.0, "shared": 0.0}
    for r in rows:
        pred = link_delays(float(measured["swap_alone_s"]), float(measured["fetch_alone_s"]), float(r["delay_s"]))
        for k, (sd, fd) in pred.items():
            err[k] += (abs(sd - float(r["swap_delay_s"])) + abs(fd - float(r["fetch_delay_s"]))) / (2 * len(rows))
    return min(err, key=lambda k: (err[k], k != "serial")), err


@dataclass(frozen=True, slots=True)
class DecodeRun:
    """``n`` consecutive decode steps of a fixed batch.

    Attributes:
        end_s: cumulative end time of each step from the run's start, shape (n,), seconds, increasing.
        cost: summed breakdown over the whole run.
    """

    end_s: np.ndarray
    cost: StepCost


class CostModel(ABC):
    """Step durations from batch shape and residency.

    Implementations hold precomputed tables; ``step`` and ``decode_run`` do no DataFrame work.
    """

    name: str = "abstract"

    def __init__(self, model: ModelSpec, gpu: GPUSpec) -> None:
        self.model = model
        self.gpu = gpu

    @abstractmethod
    def step(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost:
        """Cost of one step of ``batch`` (prefill chunks and/or single decode tokens)."""

    def decode_run(self, decode_tenants: tuple[int, ...], context0: tuple[int, ...], n_steps: int,
                   residency: Residency) -> DecodeRun:
        """``n_steps`` decode steps of a fixed batch, the k-th step with context ``context0 + k``.

        The default evaluates ``step`` per step; implementations override it with a vectorised form.
        """
        ends = np.empty(n_steps)
        total = StepCost()
        t = 0.0
        for k in range(n_steps):
            batch = tuple(SeqWork(tn, 1, c + k) for tn, c in zip(decode_tenants, context0, strict=True))
            c = self.step(batch, residency)
            t += c.total_s
            ends[k] = t
            total = total + c
        return DecodeRun(ends, total)

    def host_bound_share(self, residency: Residency) -> float:
        """Share of a step fetching host experts (``residency``'s) whose time outside its copies is host work launched
        op by op (what slows when other instances of the same host process are busy: ``moesim.engine.host``);
        the default 1.0: the whole step runs eagerly."""
        return 1.0

    def step_streamed(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost:
        """Cost of a prefill that runs under a streamed swap, waiting for each layer's copy before the layer.

        A serving engine cannot replay such a step from a CUDA graph (it waits on the swap's per-layer events):
        cost models that tell graph from eager execution answer the eager time. The default: ``step``.
        """
        return self.step(batch, residency)

    def swap_s(self, nbytes: float, residency: Residency, bandwidth_fraction: float = 1.0) -> float:
        """Seconds to copy ``nbytes`` host→device (a non-expert set or a whole model).

        ``bandwidth_fraction`` scales the link (the paper's synchronous swap reached about a tenth).
        """
        link = self.gpu.h2d_pinned_Bps if residency.slice.pinned else self.gpu.h2d_pageable_Bps
        return nbytes / (link * residency.slice.link_fraction * bandwidth_fraction)


def expected_active_fraction(n_tokens: int | np.ndarray, n_experts: int, top_k: int,
                             skew: float = 0.0, weight: float = 1.0) -> float | np.ndarray:
    """Expected fraction of a layer's experts that ``n_tokens`` tokens activate.

    Each token picks ``top_k`` distinct experts. With ``skew == 0`` routing is uniform: an expert is missed
    by one token with probability ``1 - k/E``, so the expected active fraction is ``1 - (1 - k/E)^n``.
    With ``skew > 0``, expert i's pick probability follows a Zipf law ``∝ (i+1)^-skew`` scaled to sum to
    ``k`` (capped at 1); the fraction is the mean over experts of ``1 - (1 - q_i)^n``.

    ``weight`` scales the per-token pick probability of the experts counted (a set of positions routed to
    ``weight`` times as often as the average position; capped at 1), e.g. the host-resident positions of
    a consolidation plan (:func:`host_routing_weights`).
    """
    n = np.asarray(n_tokens, dtype=float)
    if skew <= 0.0:
        q = min(1.0, weight * top_k / n_experts)
        out = 1.0 - (1.0 - q) ** n
    else:
        w = (np.arange(1, n_experts + 1, dtype=float)) ** (-skew)
        q = np.minimum(w / w.sum() * top_k * weight, 1.0)
        out = (1.0 - (1.0 - q[:, None]) ** n.reshape(1, -1)).mean(axis=0).reshape(n.shape)
    return float(out) if np.ndim(out) == 0 else out


def host_routing_weights(res: Residency, host_weight: float) -> tuple[float, ...]:
    """Relative routing probability of each group of ``res`` (1.0: the average position).

    ``host_weight`` applies to the host-resident groups of a *consolidated* residency (one in which some
    GPU copies are shared by several tenants: the positions a similarity ranking left on the host); the
    GPU groups of the same tenants take the rest, so a token's expected picks stay ``top_k`` per layer
    (for every tenant, ``Σ positions × weight`` over its groups equals its positions). A residency without
    shared copies (``mig``, ``naive``: whole layers or an arbitrary set on the host) keeps uniform weights.
    """
    groups = res.groups
    if host_weight == 1.0 or not any(g.on_gpu and len(g.tenants) > 1 for g in groups):
        return (1.0,) * len(groups)
    out = []
    for g in groups:
        if not g.on_gpu:
            out.append(host_weight)
            continue
        # tenants of this GPU group: their host positions give up (1 - w) of the mean share each
        t = next(iter(g.tenants))
        host = res.host_positions(t)
        gpu = res.resident_positions(t)
        out.append(max(0.0, (gpu + host * (1.0 - host_weight)) / gpu) if gpu else 1.0)
    return tuple(out)
