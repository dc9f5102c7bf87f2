"""Run a workload through a policy's instances on a SimPy clock and collect the event log."""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd
import simpy

from moesim.cost.base import CostModel
from moesim.engine.admission import refusal
from moesim.engine.instance import Instance
from moesim.errors import UserError
from moesim.policies.base import LINK_DISCIPLINES, InstancePlan, Policy
from moesim.policies.view import FleetView
from moesim.request_table import request_table
from moesim.specs import GPUSpec, ModelSpec
from moesim.workloads.request import Request


class NodeLink:
    """A node's host-memory bandwidth, shared by the GPUs of that node (``cap_Bps`` bytes/s).

    Approximation: a GPU that starts fetching gets ``min(1, cap_Bps / (k · gpu_link_Bps))`` of its own link,
    ``k`` being the node's GPUs fetching at that moment (itself included); the factor is fixed for the step.
    Swaps of non-expert sets are not capped (they use the policy's own bandwidth fraction).
    """

    __slots__ = ("active_gpus", "cap_Bps")

    def __init__(self, cap_Bps: float) -> None:
        self.cap_Bps = cap_Bps
        self.active_gpus = 0


class HostLink:
    """The host→device link of one GPU, shared by that GPU's instances.

    An instance that starts a step (or a decode run) needing expert fetches takes a share of the link, fixed for
    the step; ``discipline`` says which:

    * ``share``: ``1 / k``, ``k`` being the instances fetching at that moment (itself included): the link's
      bandwidth split evenly, as between MIG partitions with copy engines of their own (the paper's MIG logs show
      a host expert taking 52 ms while the other instance fetches and 27 ms once it stops, within one request).
    * ``fifo``: one copy queue; copies run one after the other at the full rate, in the order issued (CUDA streams
      of one process, e.g. MIG slices emulated with green contexts: ``reports/validation/realtime/h200_link_streams``
      measured two copy streams taking turns at 54.9 GB/s, not half each). An instance fetching layer by layer
      issues one layer's copies (its *burst*, copies per host layer), waits for them, and issues the next layer's;
      with several instances doing so, each cycle of the queue carries one burst of each, so an instance gets
      ``b / (b + Σ others' b)`` of the link. A prefill's burst (every host expert of a layer) then barely waits
      behind a decode step's (one or two per layer), and the decode step waits behind the prefill's: measured on
      the H200 (ninth call, ``mig_host-s5``): prefills beside a decode run copied at 1.2–1.35× their time alone,
      decode runs beside a prefill at 1.5–1.8×. Equal bursts give ``1 / k``, as ``share``.

    * ``alternate``: one copy engine taking the fetching instances' waiting copies in turn, copy by copy (measured
      on the H200: ``reports/validation/realtime/h200_copy_trace`` for bare copies; the runtime's timelines in
      ``h200_pinned`` for served mig slices: two decoding slices each take 1.72× their step alone, the link busy
      all the time, and nothing of their steps but the copies slows). Each fetching instance registers its step's
      copy time ``C`` and the rest ``O`` at the full link (its *load*); the link is shared max-min fairly, each
      instance's share capped at what it keeps busy alone, ``C / (C + O)``, and a step takes
      ``max(C + O, C / a)`` for a share ``a`` (``alternate_share``): copy-bound steps get ``1 / k`` each, and
      what a step does outside its copies hides under the others' copies.

    When several instances fetch over the link, one that goes idle or wakes up (``fifo``, ``alternate``: also one
    that starts or ends a prefill, which changes its burst or load) ends the others' decode runs at the step under
    way, so each re-takes its share from the next step on. When the GPU's node caps host-memory bandwidth
    (``node``), the share is scaled by the node's factor.
    """

    __slots__ = ("active", "bursts", "discipline", "link_Bps", "members", "node")

    def __init__(self, node: NodeLink | None = None, link_Bps: float = 0.0, discipline: str = "share") -> None:
        if discipline not in LINK_DISCIPLINES:
            raise UserError(f"link_discipline={discipline!r}: valid: {', '.join(LINK_DISCIPLINES)}")
        self.active = 0
        self.members: list = []  # the instances that fetch experts over this link
        self.node = node
        self.link_Bps = link_Bps
        self.discipline = discipline
        # fetching instance → the load of its step under way: ``fifo``, copies per host layer (a float);
        # ``alternate``, (copy seconds, other seconds) at the full link
        self.bursts: dict[int, Any] = {}

    @property
    def queued(self) -> bool:
        """The instances' copies go through one queue (``fifo`` or ``alternate``): shares depend on each step's
        load, and change when an instance starts or ends a prefill."""
        return self.discipline != "share"

    def begin(self, fetches: bool, who: int = -1, burst: Any = 1.0) -> None:
        """An instance starts a step (counted only when it fetches); ``who``/``burst``: its index and its step's
        load (``queued``: copies per host layer for ``fifo``, (copy s, other s) for ``alternate``)."""
        if fetches:
            if self.node is not None and self.active == 0:
                self.node.active_gpus += 1
            self.active += 1
            if self.queued:
                self.bursts[who] = burst

    def end(self, fetches: bool, who: int = -1) -> None:
        """An instance ends a step."""
        if fetches:
            self.active -= 1
            if self.queued:
                self.bursts.pop(who, None)
            if self.node is not None and self.active == 0:
                self.node.active_gpus -= 1

    def share(self, burst: Any = 1.0) -> float:
        """Share of the link a step starting now gets (``burst``: its load, as ``begin`` takes it)."""
        if self.discipline == "alternate":
            own = alternate_share(burst, list(self.bursts.values())) if self.bursts else 1.0
        elif self.discipline == "fifo" and self.bursts and burst > 0:
            own = burst / (burst + sum(self.bursts.values()))
        else:
            own = 1.0 / (self.active + 1)
        node = self.node
        if node is None:
            return own
        k = node.active_gpus + (0 if self.active else 1)
        return min(1.0, node.cap_Bps / (k * self.link_Bps)) * own


def alternate_share(own: tuple[float, float], others: list[tuple[float, float]]) -> float:
    """Share of the link for a step of load ``own`` beside steps of loads ``others`` on one copy engine taking the
    waiting copies in turn (``HostLink`` ``alternate``); a load is (copy seconds ``C``, other seconds ``O``) at the
    full link.

    Each instance would keep the link busy ``u = C / (C + O)`` of its time alone; taking the copies in turn gives
    the busy instances max-min fair shares ``a`` of the link capped at their ``u`` (water-filling of 1), and a step
    then takes ``max(C + O, C / a)``: what it does outside its copies hides under the others' copies. Returned as
    the fraction ``s`` of the link its copies see, ``O + C / s`` being that time: ``C / max(C, C / a − O)``.
    Two one-sequence Mixtral decode steps (C = 94 ms, O = 15 ms): 0.54 each (measured 0.55, ``h200_pinned``).
    """
    c_own = max(0.0, float(own[0]))
    if c_own <= 0.0:
        return 1.0
    caps = []
    for c, o in [own, *others]:
        c, o = max(0.0, float(c)), max(0.0, float(o))
        caps.append(c / (c + o) if c + o > 0 else 0.0)
    left, n = 1.0, len(caps)
    alloc = [0.0] * n
    for k, m in enumerate(sorted(range(n), key=lambda m: caps[m])):
        alloc[m] = min(caps[m], left / (n - k))
        left -= alloc[m]
    a, u = alloc[0], caps[0]
    if a >= u * (1.0 - 1e-12):
        return 1.0
    return c_own / max(c_own, c_own / a - max(0.0, float(own[1])))


class Recorder:
    """The event log: per-request timestamps in arrays, per-instance segments in typed columns.

    Segments are kept column by column (``array`` of int64/float64, lists for the strings, which are
    shared objects), about 100 bytes a segment instead of a tuple of boxed numbers (~350).
    """

    SEGMENT_COLUMNS = ("instance", "kind", "start_s", "end_s", "n_seqs", "tokens", "tenants",
                       "expert_fetches", "attention_s", "experts_s", "fetch_s")

    def __init__(self, n: int) -> None:
        self.start = np.full(n, np.nan)
        self.first = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.swap_wait = np.zeros(n)
        self.instance = np.full(n, -1, dtype=np.int64)
        self.gpu = np.full(n, -1, dtype=np.int64)
        self.rejected: dict[int, str] = {}  # request id → reason it was refused
        self._ints = (array("q"), array("q"), array("q"))  # instance, n_seqs, tokens
        self._floats = tuple(array("d") for _ in range(6))  # start, end, fetches, attention, experts, fetch
        self._strs: tuple[list[str], list[str]] = ([], [])  # kind, tenants
        (self._inst, self._nseq, self._tok) = (a.append for a in self._ints)
        (self._start, self._end, self._fe, self._at, self._ex, self._fs) = (a.append for a in self._floats)
        (self._kind, self._ten) = (a.append for a in self._strs)
        self.swaps = 0
        self.finished = 0

    def reject(self, request: Request, reason: str) -> None:
        """Refuse ``request`` (it is never served): its reason goes to the ``rejected`` column."""
        self.rejected[request.id] = reason

    def segment(self, inst: int, kind: str, start: float, end: float, n_seqs: int, tokens: int,
                tenants: str, fetches: float, attention_s: float, experts_s: float, fetch_s: float) -> None:
        """Log one timeline segment (a prefill step, a decode run or a swap)."""
        self._inst(inst)
        self._kind(kind)
        self._start(start)
        self._end(end)
        self._nseq(n_seqs)
        self._tok(tokens)
        self._ten(tenants)
        self._fe(fetches)
        self._at(attention_s)
        self._ex(experts_s)
        self._fs(fetch_s)

    def segments(self) -> pd.DataFrame:
        """The timeline as a frame (columns ``SEGMENT_COLUMNS``; instance as the index of its plan).

        Each column is converted, then its log freed, so the log and the frame are never both whole.
        """
        i, f, st = self._ints, self._floats, self._strs
        sources = {"instance": (i, 0), "kind": (st, 0), "start_s": (f, 0), "end_s": (f, 1), "n_seqs": (i, 1),
                   "tokens": (i, 2), "tenants": (st, 1), "expert_fetches": (f, 2), "attention_s": (f, 3),
                   "experts_s": (f, 4), "fetch_s": (f, 5)}
        cols: dict[str, np.ndarray] = {}
        for name in self.SEGMENT_COLUMNS:
            group, k = sources[name]
            a = group[k]
            if group is st:
                cols[name] = np.array(a, dtype=object)
                a.clear()
            else:
                cols[name] = np.array(a, dtype=np.int64 if group is i else np.float64)
                del a[:]
        return pd.DataFrame(cols)


@dataclass(frozen=True)
class SimResult:
    """What a simulation produced.

    Attributes:
        requests: one row per request (request_id, tenant, instance, arrival_s, start_s, first_token_s,
            finish_s, prompt_tokens, output_tokens, swap_wait_s, gpu, rejected); times in seconds;
            ``instance`` and ``gpu`` are −1 and ``rejected`` holds the reason for a refused request
            (empty for a served one).
        segments: the timeline (instance, kind, start_s, end_s, n_seqs, tokens, tenants, expert_fetches,
            attention_s, experts_s, fetch_s); ``tenants`` are global tenant ids.
        instances: per instance: name, gpu, profile, slice shares and memory breakdown (bytes).
        policy: the policy's name and parameters (of GPU 0 in a fleet; ``meta["gpus"]`` has each GPU's).
        horizon_s: time of the last event (seconds).
        swap_count: non-expert-set or whole-model loads.
    """

    requests: pd.DataFrame
    segments: pd.DataFrame
    instances: list[dict[str, Any]]
    policy: dict[str, Any]
    horizon_s: float
    swap_count: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GPUSetup:
    """One GPU of a fleet, ready to simulate.

    Attributes:
        gpu: its spec (a whole GPU; MIG instances come from the policy's layout).
        policy: the policy laying out and scheduling this GPU (its own object: policies keep routing state).
        cost: the cost model timing its steps.
        tenants: global tenant ids placed here; the policy sees them as local tenants 0..len−1 in this order.
        node: index of the node it sits in (GPUs of one node may share a host-bandwidth cap).
        name: label (``"gpu3"``); instance names get it as a prefix in fleets of more than one GPU.
        index: the GPU's index in its fleet (the ``gpu`` column); −1: its position in the list.
    """

    gpu: GPUSpec
    policy: Policy
    cost: CostModel
    tenants: tuple[int, ...]
    node: int = 0
    name: str = "gpu0"
    index: int = -1


class Router(Protocol):
    """Chooses the GPU of an arriving request among the GPUs holding its variant."""

    def choose(self, request: Request, candidates: tuple[int, ...], fleet: FleetView) -> int:
        """One of ``candidates`` (GPU indices, ascending)."""
        ...


class Board:
    """The fleet's shared state: where each request goes, and each GPU's outstanding work.

    ``dest[id]``: −1 undecided, −2 refused, else the global index of the instance it goes to. Decisions are
    made at the request's arrival, by the dispatcher process or by the first instance pulling it at that
    same instant, whichever comes first; the router sees the fleet as it is then. A fleet without replicas
    has no dispatcher: each decision is fixed by the tenant, made when an instance first pulls the request.
    """

    def __init__(self, env: simpy.Environment, by_id: Sequence[Request], replicas: dict[int, tuple[int, ...]],
                 local: list[dict[int, int]], gpu_insts: list[list[Instance]], router: Router | None,
                 rec: Recorder) -> None:
        n_gpus = len(gpu_insts)
        self.env = env
        self.by_id = by_id
        self.replicas = replicas
        self.local = local
        self.gpu_insts = gpu_insts
        self.router = router
        self.rec = rec
        self.dest: list[int] = [-1] * len(by_id)
        self.fits: dict[int, tuple[int, ...]] = {}  # request id → replicas that can hold it, when not all
        self.outstanding_tokens = [0] * n_gpus
        self.outstanding_requests = [0] * n_gpus
        self._global = [{lt: gt for gt, lt in m.items()} for m in local]
        self._route = [insts[0].policy.route if insts else None for insts in gpu_insts]

    @property
    def now(self) -> float:
        """The simulated clock (seconds)."""
        return self.env.now

    def active_tenants(self, gpu: int) -> set[int]:
        """Global tenants whose non-expert sets are resident on ``gpu`` now."""
        g = self._global[gpu]
        return {g[t] for inst in self.gpu_insts[gpu] for t in inst.resident}

    def decide(self, rid: int) -> int:
        """Route request ``rid`` now; the global instance index, or −2 when it is refused."""
        r = self.by_id[rid]
        cands = self.fits.get(rid) or self.replicas.get(r.tenant, ())
        if not cands:
            self.rec.rejected[rid] = f"no replica: tenant {r.tenant} is placed on no GPU"
            self.dest[rid] = -2
            return -2
        if len(cands) == 1:
            g = cands[0]
        else:
            if self.router is None:
                raise UserError("a variant is placed on several GPUs: the fleet needs a router (e.g. least_work)")
            g = self.router.choose(r, cands, self)
            if g not in cands:
                raise RuntimeError(f"router chose GPU {g} for tenant {r.tenant}; replicas: {cands}")
        lt = self.local[g][r.tenant]
        lr = r if lt == r.tenant else Request(rid, lt, r.arrival_s, r.prompt_tokens, r.output_tokens)
        inst = self.gpu_insts[g][self._route[g](lr)]
        d = self.dest[rid] = inst.idx
        if inst._routable and len(cands) > 1 and inst.policy.interrupts(inst, lr):
            # a replica's arrival is no planned stop of the instance's decode run: cut it now, to join at
            # the step boundary at or after this instant
            inst._routable = inst._in_run = False
            inst.proc.interrupt()
        self.rec.gpu[rid] = g
        self.outstanding_tokens[g] += r.prompt_tokens + r.output_tokens
        self.outstanding_requests[g] += 1
        return d

    def done(self, gpu: int, r: Request) -> None:
        """A request finished on ``gpu``."""
        self.outstanding_tokens[gpu] -= r.prompt_tokens + r.output_tokens
        self.outstanding_requests[gpu] -= 1

    def dispatch(self, order: Sequence[Request]):
        """SimPy process: at each arrival (before any instance acts at that instant) route the request."""
        env, dest = self.env, self.dest
        for r in order:
            if r.arrival_s > env.now:
                yield _Urgent(env, r.arrival_s - env.now)
            if dest[r.id] == -1:
                self.decide(r.id)


class _Urgent(simpy.events.Event):
    """A timeout processed before the ordinary events of the same instant."""

    def __init__(self, env: simpy.Environment, delay: float) -> None:
        self.env = env
        self.callbacks = []
        self._value = None
        self._ok = True
        env.schedule(self, simpy.events.URGENT, delay)


def _check_fits(plans: Sequence[InstancePlan]) -> None:
    for p in plans:
        if not p.ideal and p.weight_bytes > p.memory_bytes:
            raise UserError(
                f"instance {p.name}: weights need {p.weight_bytes / 1e9:.2f} GB but it has "
                f"{p.memory_bytes / 1e9:.2f} GB"
            )


def _all_rejected(rec: Recorder, requests: Sequence[Request], plans: Sequence[InstancePlan],
                  model: ModelSpec) -> UserError:
    """Every request refused: one line whose remedy matches each cause. A request longer than the model's
    context is fixed by no GPU (the line said "use a larger GPU" even when every request was over the context);
    one whose KV cache exceeds its instance's is, or by shorter requests or a smaller weight budget."""
    first = min(requests, key=lambda r: r.id)
    reasons = [rec.rejected[r.id] for r in requests]
    n_ctx = sum(x.startswith("context ") for x in reasons)
    n_kv = sum(x.startswith("kv ") for x in reasons)
    unplaced = sorted({r.tenant for r in requests if rec.rejected[r.id].startswith("no replica")})
    n_norep = sum(x.startswith("no replica") for x in reasons)
    n_other = len(reasons) - n_ctx - n_kv - n_norep
    caps = ", ".join(sorted({f"{p.kv_capacity_bytes / 1e9:.3g} GB" for p in plans}))
    limit = model.max_context_tokens
    parts = []
    if n_ctx:
        parts.append(f"{n_ctx:,} longer than {model.name}'s context of {limit:,} tokens (shorten them or use a "
                     "model with a longer context: no GPU changes this)")
    if n_kv:
        parts.append(f"{n_kv:,} needing more KV cache than the instances hold ({caps}; shorten them, lower "
                     "policy.weight_budget_fraction or use a larger GPU/MIG profile)")
    if n_norep:
        shown = ", ".join(map(str, unplaced[:8])) + (", …" if len(unplaced) > 8 else "")
        parts.append(f"{n_norep:,} of tenant{'s' if len(unplaced) > 1 else ''} {shown}, placed on no GPU (put "
                     f"{'them' if len(unplaced) > 1 else 'it'} on a GPU of the placement)")
    if n_other:
        parts.append(f"{n_other:,} for another reason (request {first.id}: {rec.rejected[first.id]})")
    return UserError(f"every one of the {len(requests):,} requests is rejected: " + "; ".join(parts))


def simulate(model: ModelSpec, gpu: GPUSpec, policy: Policy, cost: CostModel, requests: Sequence[Request],
             *, n_tenants: int | None = None, progress: bool = False,
             instance_cls: type[Instance] = Instance, host_contention: float = 0.0) -> SimResult:
    """Replay ``requests`` through ``policy``'s instances on ``gpu``, timing steps with ``cost``.

    The fleet of one GPU holding tenants 0..n_tenants−1 (``simulate_fleet``); requests of other tenants
    are refused with a reason.

    Args:
        n_tenants: tenants served (default: 1 + the largest tenant index in ``requests``).
        progress: show a progress bar of simulated requests (tqdm).
        instance_cls: the instance process class (a subclass may observe runs, e.g. the GPU executor's).
        host_contention: as ``simulate_fleet`` (the instances, e.g. MIG slices, driven by one host process).
    """
    tenants = n_tenants if n_tenants is not None else (1 + max((r.tenant for r in requests), default=0))
    setup = GPUSetup(gpu, policy, cost, tuple(range(tenants)))
    return simulate_fleet(model, [setup], requests, progress=progress, instance_cls=instance_cls,
                          host_contention=host_contention)


def simulate_fleet(model: ModelSpec, gpus: Sequence[GPUSetup], requests: Sequence[Request], *,
                   router: Router | None = None, node_caps_Bps: dict[int, float] | None = None,
                   progress: bool = False, instance_cls: type[Instance] = Instance,
                   progress_label: str | None = None, host_contention: float = 0.0) -> SimResult:
    """Replay ``requests`` through a fleet of GPUs in one SimPy environment.

    Each GPU runs its policy's layout for the tenants placed on it and has its own host link; GPUs of a node
    listed in ``node_caps_Bps`` (node → bytes/s) share that host-memory bandwidth. Each request is routed
    when it arrives: to the one GPU holding its tenant, or, with replicas, to the GPU ``router`` chooses
    from the fleet's state then; a request whose tenant is on no GPU is refused with a reason.

    Args:
        router: required when a tenant is placed on several GPUs.
        progress: show a progress bar of simulated requests (tqdm).
        instance_cls: the instance process class (a subclass may observe runs, e.g. the GPU executor's).
        host_contention: α of ``moesim.engine.host`` (dimensionless, ≥ 0): every instance is driven by one host
            process, and a step fetching host experts takes ``1 + α·k`` times its time outside its copies while
            ``k`` other instances run such steps (the real-time runtime's threads); 0 (default): no contention.
    """
    n = len(requests)
    by_id = sorted(requests, key=lambda r: r.id)
    if n and (by_id[0].id != 0 or by_id[-1].id != n - 1 or any(r.id != i for i, r in enumerate(by_id))):
        raise UserError("request ids must be dense 0..n-1 and unique")
    order = sorted(requests, key=lambda r: (r.arrival_s, r.id))
    env = simpy.Environment()
    rec = Recorder(n)
    caps = node_caps_Bps or {}
    nodes = {k: NodeLink(v) for k, v in caps.items() if v and v > 0}
    prefix = len(gpus) > 1
    replicas: dict[int, list[int]] = {}
    local: list[dict[int, int]] = []
    all_plans: list[InstancePlan] = []
    plan_gpu: list[int] = []
    gpu_insts: list[list[Instance]] = []
    interned: dict[Any, Any] = {}
    for g, setup in enumerate(gpus):
        m = {t: i for i, t in enumerate(setup.tenants)}
        if len(m) != len(setup.tenants):
            raise UserError(f"{setup.name}: a tenant is placed twice on the same GPU: {list(setup.tenants)}")
        local.append(m)
        for t in setup.tenants:
            replicas.setdefault(t, []).append(g)
        # equal residencies share one object, so cost models' memos (keyed by identity) serve every GPU
        plans = [p if interned.setdefault(p.residency, p.residency) is p.residency
                 else replace(p, residency=interned[p.residency])
                 for p in setup.policy.layout(model, setup.gpu, len(setup.tenants))]
        setup.policy.bind(plans)
        _check_fits(plans)
        link = HostLink(nodes.get(setup.node), setup.gpu.h2d_pinned_Bps, setup.policy.link_discipline)
        insts = []
        for p in plans:
            inst = instance_cls(len(all_plans), p, env, setup.cost, setup.policy, link, rec)
            inst.gpu = g
            insts.append(inst)
            all_plans.append(p)
            plan_gpu.append(g)
        gpu_insts.append(insts)
    board = Board(env, by_id, {t: tuple(v) for t, v in replicas.items()}, local, gpu_insts, router, rec)
    if host_contention > 0:
        from moesim.engine.host import HostProcess

        host = HostProcess(host_contention)
        for inst in (i for insts in gpu_insts for i in insts if i.fetches):
            inst.host = host
            host.members.append(inst)
    # candidates: each instance's possible arrivals, tenants in its GPU's numbering. A request an instance
    # can never hold (moesim.engine.admission) is no candidate there; one no replica can hold is refused.
    cand: list[list[Request]] = [[] for _ in all_plans]
    identity = [all(t == i for t, i in m.items()) for m in local]
    routes = [s.policy.route for s in gpus]
    kvb = model.kv_bytes_per_token
    ctx_limit = model.max_context_tokens or (1 << 62)
    kv_cap = [p.kv_capacity_bytes for p in all_plans]
    for r in order:
        reps = board.replicas.get(r.tenant, ())
        if not reps:
            board.decide(r.id)  # refused: no GPU holds its variant (a decision that needs no clock)
            continue
        tokens = r.prompt_tokens + r.output_tokens
        cant: list[int] = []
        why = ""
        for g in reps:
            lr = r
            if not identity[g]:
                lr = Request(r.id, local[g][r.tenant], r.arrival_s, r.prompt_tokens, r.output_tokens)
            i = gpu_insts[g][routes[g](lr)].idx
            if tokens > ctx_limit or tokens * kvb > kv_cap[i]:  # as admission.refusal decides
                cant.append(g)
                why = refusal(lr, all_plans[i], model) or why
                continue
            cand[i].append(lr)
        if cant:
            if len(cant) == len(reps):
                rec.reject(r, why or "cannot be held")
                board.dest[r.id] = -2
            else:
                board.fits[r.id] = tuple(g for g in reps if g not in cant)
    if n and len(rec.rejected) == n:
        raise _all_rejected(rec, requests, all_plans, model)
    procs = []
    for insts in gpu_insts:
        for inst in insts:
            inst.board = board
            inst.feed(cand[inst.idx])
            inst.proc = env.process(inst.run())
            procs.append(inst.proc)
    if any(len(v) > 1 for v in board.replicas.values()):
        if router is None:
            raise UserError("a variant is placed on several GPUs: the fleet needs a router (e.g. least_work)")
        for insts in gpu_insts:
            for inst in insts:
                inst.pin([len(board.fits.get(r.id) or board.replicas[board.by_id[r.id].tenant]) == 1
                          for r in inst._arrivals])
        # routing needs the fleet's state at each arrival; without replicas every decision is fixed by the
        # tenant (made when an instance first pulls the request) and no router reads the state
        procs.append(env.process(board.dispatch(order)))

    if progress:
        from tqdm.auto import tqdm

        label = progress_label or gpus[0].policy.registry_name
        chunk = max(1.0, (order[-1].arrival_s if order else 0.0) / 200)
        with tqdm(total=n, unit="req", desc=f"simulate {label}", mininterval=0.5) as bar:
            while any(p.is_alive for p in procs):
                env.run(until=env.now + chunk)
                bar.update(rec.finished + len(rec.rejected) - bar.n)
    else:
        env.run()
    unfinished = np.isnan(rec.finish)
    if rec.rejected:
        unfinished[list(rec.rejected)] = False
    if n and unfinished.any():
        raise RuntimeError(f"{int(unfinished.sum())} requests never finished: engine bug")

    req_df = request_table(by_id, instance=rec.instance, gpu=_fleet_index(rec.gpu, gpus), start=rec.start,
                           first=rec.first, finish=rec.finish, swap_wait=rec.swap_wait, rejected=rec.rejected)
    names = [f"{gpus[g].name}/{p.name}" if prefix else p.name for p, g in zip(all_plans, plan_gpu, strict=True)]
    seg_df = rec.segments()
    if len(seg_df):
        inst_idx = seg_df["instance"].to_numpy()
        if not all(identity):
            memo: dict[tuple[int, str], str] = {}
            labels = []
            for lbl, i in zip(seg_df["tenants"], inst_idx, strict=True):
                key = (plan_gpu[i], lbl)
                out = memo.get(key)
                if out is None:
                    out = memo[key] = _globalize(lbl, board._global[plan_gpu[i]])
                labels.append(out)
            seg_df["tenants"] = labels
        seg_df["instance"] = [names[i] for i in inst_idx]
    instances = []
    for p, g, name in zip(all_plans, plan_gpu, names, strict=True):
        info = _instance_info(p, model)
        info["name"] = name
        info["tenants"] = sorted(board._global[g][t] for t in p.tenants)
        if prefix:
            info["gpu"] = gpus[g].index if gpus[g].index >= 0 else g
        instances.append(info)
    meta: dict[str, Any] = {}
    if prefix:
        meta["gpus"] = [{"index": s.index if s.index >= 0 else g, "name": s.name, "gpu": s.gpu.name,
                         "node": s.node, "tenants": list(s.tenants), **s.policy.describe()}
                        for g, s in enumerate(gpus)]
    return SimResult(req_df, seg_df, instances, gpus[0].policy.describe(), float(env.now), rec.swaps, meta)


def _fleet_index(pos: np.ndarray, gpus: Sequence[GPUSetup]) -> np.ndarray:
    """Positions in ``gpus`` (−1: refused) as fleet GPU indices."""
    if all(s.index in (-1, g) for g, s in enumerate(gpus)):
        return pos
    table = np.array([s.index if s.index >= 0 else g for g, s in enumerate(gpus)] + [-1], dtype=np.int64)
    return table[pos]


def _globalize(label: str, to_global: dict[int, int]) -> str:
    """A segment's local tenant list ("0,2") in global ids, sorted."""
    if not label:
        return label
    return ",".join(str(t) for t in sorted(to_global[int(x)] for x in label.split(",")))


def _instance_info(p: InstancePlan, model: ModelSpec) -> dict[str, Any]:
    res = p.residency
    gpu_copies = res.gpu_expert_copies()
    host_bytes = p.host_expert_bytes
    nonexpert = p.nonexpert_slots * model.nonexpert_bytes
    # a plan whose groups list more GPU copies than its weights hold (``swap``: every tenant's copies,
    # one tenant's loaded at a time) records what is resident; the rest waits in host memory
    resident = min(gpu_copies, max(0, round((p.weight_bytes - nonexpert) / model.expert_bytes))) \
        if model.expert_bytes > 0 else gpu_copies
    host_bytes += (gpu_copies - resident) * model.expert_bytes
    gpu_copies = resident
    return {
        "name": p.name,
        "profile": p.profile,
        "sm_fraction": res.slice.sm_fraction,
        "bw_fraction": res.slice.bw_fraction,
        "memory_bytes": p.memory_bytes,
        "resident_expert_bytes": gpu_copies * model.expert_bytes,
        "host_expert_bytes": host_bytes,
        "nonexpert_bytes": nonexpert,
        "weight_bytes": p.weight_bytes,
        "kv_capacity_bytes": p.kv_capacity_bytes,
        "tenants": sorted(p.tenants),
        "resident_expert_copies": gpu_copies,
        "ideal": p.ideal,
        **p.meta,
    }
