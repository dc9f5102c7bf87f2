"""One GPU or MIG instance: a SimPy process that swaps, prefills and decodes.

Decode steps are advanced in *runs* between scheduling points (an arrival that can join, a sequence
that finishes), so the cost of a simulation grows with scheduling events, not with tokens.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import simpy

from moesim.cost.base import CostModel, Residency, SeqWork, StepCost, swap_link_delay
from moesim.engine.host import HostProcess, stretch_run, stretch_step
from moesim.policies.base import InstancePlan, Policy
from moesim.resident_sets import make_resident, touch
from moesim.running_batch import retire_finished
from moesim.workloads.request import Request

if TYPE_CHECKING:
    from moesim.engine.simulation import Board, HostLink, Recorder


class Instance:
    """Serving state of one instance; ``run`` is its SimPy process.

    It implements ``moesim.policies.view.InstanceView``, the read-only view policies decide from. In a fleet
    it belongs to GPU ``gpu``; ``board`` is the fleet's shared state (routing decisions, outstanding work).
    """

    gpu: int = 0
    board: Board  # set by the engine before the run
    host: HostProcess | None = None  # the host process launching its steps, when host contention is modelled

    def __init__(self, idx: int, plan: InstancePlan, env: simpy.Environment, cost: CostModel,
                 policy: Policy, link: HostLink, rec: Recorder) -> None:
        self.idx = idx
        self.plan = plan
        self.env = env
        self.cost = cost
        self.policy = policy
        self.link = link
        self.rec = rec
        self.queue: deque[Request] = deque()
        # Running batch, parallel lists, one entry per sequence. Positions are kept on a clock of decode
        # steps done by this instance, so advancing a run touches no per-sequence state:
        # context = ctx_base + clock, and the sequence finishes when clock reaches finish_at.
        self.running: list[Request] = []
        self._clock = 0
        self._ctx_base: list[int] = []
        self._finish_at: list[int] = []
        self._tenants: tuple[int, ...] = ()
        self._tenant_count: dict[int, int] = {}
        self._tenant_label = ""  # "0,2": tenants in the running batch, for the timeline
        self.resident: list[int] = list(plan.initial_resident)  # LRU order: last used at the end
        self.kv_bytes_per_token = cost.model.kv_bytes_per_token
        self.kv_free_bytes = plan.kv_capacity_bytes
        self.fetches = any(not g.on_gpu for g in plan.residency.groups)
        self.proc: simpy.Process | None = None  # set by simulate()
        self._in_run = False  # inside an interruptible decode run
        self._in_prefill = False  # inside a prefill re-timed when the host link's sharing changes
        self._routable = False  # inside a decode run a routed arrival may cut (fleets with replicas)
        self._pinned: list[bool] | None = None  # per candidate: routed here for sure (None: all are)
        self._np = 0  # index of the next pinned candidate (≥ _next)
        if self.fetches:
            link.members.append(self)
        self._arrivals: list[Request] = []
        self._next = 0
        self._res_cache: dict[float, Residency] = {}
        self._host_layers = -1  # MoE layers holding host copies (``_burst``), counted when first needed
        self._eager_share = -1.0  # share of a fetching step launched op by op (``_host_factor``), when first needed
        self._swap_s = cost.swap_s(plan.swap_bytes, plan.residency, plan.swap_bandwidth_fraction)
        self._streamed_swap_s = 0.0  # copy time of the streamed swap under the prefill being started

    # ---- views used by policies ---------------------------------------------------------------
    @property
    def now(self) -> float:
        """The simulated clock (seconds)."""
        return self.env.now

    @property
    def n_running(self) -> int:
        """Sequences in the running batch."""
        return len(self.running)

    def running_tenants(self) -> set[int]:
        """Tenants with a sequence in the running batch."""
        return set(self._tenant_count)

    def _join(self, reqs: list[Request]) -> None:
        clock = self._clock
        self.running.extend(reqs)
        self._ctx_base.extend(r.prompt_tokens - clock for r in reqs)
        self._finish_at.extend(r.output_tokens - 1 + clock for r in reqs)
        self._tenants = self._tenants + tuple(r.tenant for r in reqs)
        tc = self._tenant_count
        for r in reqs:
            tc[r.tenant] = tc.get(r.tenant, 0) + 1
        self._tenant_label = _tenant_str(tc)

    # ---- arrivals -----------------------------------------------------------------------------
    def feed(self, arrivals: list[Request]) -> None:
        """The requests that may be routed here (candidates), sorted by arrival, tenants in this GPU's
        local numbering; the instance pulls in those the fleet's router sends here as time passes.

        Knowing the next candidate arrival lets a decode run stop exactly at the step boundary where that
        request could join, with no interrupt event: the cost of a run is one timeout however many steps it
        spans. A candidate routed elsewhere costs at most one extra stop.
        """
        self._arrivals = arrivals
        self._next = 0
        self._np = 0

    def pin(self, pinned: list[bool]) -> None:
        """Which candidates (parallel to ``feed``'s list) can only be routed here. A decode run plans its stop
        at the next of those; a replica's arrival routed here cuts the run when it comes (``Board.decide``)."""
        self._pinned = pinned

    def _pull(self) -> None:
        arr, i, now = self._arrivals, self._next, self.env.now
        n = len(arr)
        board = self.board
        dest, me = board.dest, self.idx
        while i < n and arr[i].arrival_s <= now:
            r = arr[i]
            d = dest[r.id]
            if d == -1:  # the router's decision is due (same instant; the dispatcher has not run yet)
                d = board.decide(r.id)
            if d == me:
                self.queue.append(r)
            i += 1
        self._next = i

    # ---- helpers ------------------------------------------------------------------------------
    def _fifo(self) -> bool:
        """Whether this instance's fetches queue with other instances' on a ``fifo`` host link."""
        return self.fetches and self.link.queued and len(self.link.members) > 1

    def _burst(self, fetches_per_step: float) -> float:
        """Copies per host layer of a step fetching ``fetches_per_step`` experts (``HostLink`` ``fifo``)."""
        if self._host_layers < 0:
            from moesim.cost.fetch_pipeline import host_slots_by_layer

            model = self.cost.model
            layers = host_slots_by_layer(self.plan.residency, model.n_moe_layers, model.n_experts)
            self._host_layers = max(1, sum(1 for x in layers if x))
        return fetches_per_step / self._host_layers

    def _link_load(self, c: StepCost) -> Any:
        """The load a step of cost ``c`` (at the full link) puts on a queued host link (``HostLink.begin``): its
        copies per host layer (``fifo``) or its copy seconds and other seconds (``alternate``)."""
        if self.link.discipline == "alternate":
            return (c.fetch_s, max(0.0, c.total_s - c.fetch_s))
        return self._burst(c.expert_fetches)

    def _residency(self, burst: Any = 1.0) -> Residency:
        """The plan's residency with the host-link share of this moment (``burst``: the step's copies per host
        layer, for a ``fifo`` link)."""
        if not self.fetches:
            return self.plan.residency
        share = self.link.share(burst)
        res = self._res_cache.get(share)
        if res is None:
            base = self.plan.residency
            res = replace(base, slice=replace(base.slice, link_fraction=base.slice.link_fraction * share))
            self._res_cache[share] = res
        return res

    def _reshared(self, burst: Any) -> Residency:
        """The residency at the link share of this moment for a step under way (registered on the link): as if it
        started now, the others as they are."""
        self.link.end(self.fetches, self.idx)
        res = self._residency(burst)
        self.link.begin(self.fetches, self.idx, burst)
        return res

    def _load(self, tenants: tuple[int, ...], prefill_s: float) -> simpy.Timeout | None:
        """Make ``tenants`` resident, evicting least-recently-used idle sets; returns the swap wait."""
        plan, now = self.plan, self.env.now
        total = 0.0
        for _ in make_resident(self.resident, tenants, plan.nonexpert_slots, self.running_tenants() | set(tenants)):
            total += self._swap_s
        if total <= 0.0:
            return None
        exposed = total
        if plan.swap_overlap:
            # layer-by-layer: only the first layer's copy, or what the prefill cannot cover, is exposed
            layers = max(1, self.cost.model.n_layers)
            exposed = max(total / layers, total - prefill_s)
            self._streamed_swap_s = total  # on the link while the prefill runs (``swap_link_delay``)
        self.rec.segment(self.idx, "swap", now, now + exposed, 0, 0, ",".join(map(str, tenants)), 0.0,
                         0.0, 0.0, 0.0)
        self.rec.swaps += len(tenants)
        return self.env.timeout(exposed)

    # ---- the process --------------------------------------------------------------------------
    def run(self):
        env, rec, cost, policy = self.env, self.rec, self.cost, self.policy
        while True:
            self._pull()
            if not self.running and not self.queue:
                shared = self.fetches and (len(self.link.members) > 1
                                           or (self.host is not None and len(self.host.members) > 1))
                if shared:
                    self._link_changed()  # idle from now
                if self._next >= len(self._arrivals):
                    return
                yield env.timeout(self._arrivals[self._next].arrival_s - env.now)
                if shared:
                    self._link_changed()  # busy again
                continue
            sel = policy.select(self)
            if sel.admit:
                now = env.now
                for r in sel.admit:
                    self.queue.remove(r) if self.queue[0] is not r else self.queue.popleft()
                    rec.start[r.id] = now
                    rec.instance[r.id] = self.idx
                    self.kv_free_bytes -= (r.prompt_tokens + r.output_tokens) * self.kv_bytes_per_token
                batch = tuple([SeqWork(r.tenant, r.prompt_tokens, 0) for r in sel.admit])
                prompt_tokens = sum([r.prompt_tokens for r in sel.admit])
                fifo = self._fifo()
                burst = self._link_load(cost.step(batch, self.plan.residency)) if fifo else 1.0
                res = self._residency(burst)
                self.link.begin(self.fetches, self.idx, burst)
                if fifo:
                    self._link_changed()  # its burst changes the others' shares
                step = cost.step(batch, res)
                if sel.load:
                    self._streamed_swap_s = 0.0
                    # a prefill under a streamed swap runs eagerly (it waits on the swap's per-layer events):
                    # the copy hides under that prefill, and shares the link with its fetches
                    under = cost.step_streamed(batch, res) if self.plan.swap_overlap else step
                    wait = self._load(sel.load, under.total_s)
                    if wait is not None:
                        yield wait
                        waited = env.now - now
                        for r in sel.admit:
                            rec.swap_wait[r.id] = waited
                    if self._streamed_swap_s:
                        step = swap_link_delay(under, self._streamed_swap_s)
                host = self.host if step.expert_fetches > 0 else None
                if host is not None:  # a host-bound step beside other instances' of the same host process
                    step = stretch_step(step, self._host_factor(host))
                    host.begin(True)
                t0 = env.now
                if fifo and not self._streamed_swap_s:
                    step = yield from self._shared_prefill(batch, step, burst, host)
                else:
                    yield env.timeout(step.total_s)
                self.link.end(self.fetches, self.idx)
                if host is not None:
                    host.end(True)
                if fifo:
                    self._link_changed()
                rec.segment(self.idx, "prefill", t0, env.now, len(batch), prompt_tokens,
                            _tenants(sel.admit), step.expert_fetches, step.attention_s, step.experts_s,
                            step.fetch_s)
                joining = []
                for r in sel.admit:
                    rec.first[r.id] = env.now
                    if r.output_tokens <= 1:
                        self._finish_req(r)
                    else:
                        joining.append(r)
                if joining:
                    self._join(joining)
                touch(self.resident, sel.admit)
                continue
            if not self.running:
                # queue is non-empty but nothing can start (e.g. KV full is impossible when idle):
                # the policy could not admit the head; fail loudly rather than spin
                raise RuntimeError(f"instance {self.plan.name}: policy admitted nothing with an idle GPU")
            yield from self._decode_run()

    def _decode_run(self):
        env, rec = self.env, self.rec
        B = len(self.running)
        clock = self._clock
        n = min(self._finish_at) - clock
        ctx0 = tuple([b + clock for b in self._ctx_base])
        burst = 1.0
        if self._fifo():
            burst = self._link_load(self.cost.decode_run(self._tenants, ctx0, 1, self.plan.residency).cost)
        dr = self.cost.decode_run(self._tenants, ctx0, n, self._residency(burst))
        host = self.host if dr.cost.expert_fetches > 0 else None
        if host is not None:  # host-bound steps beside other instances' of the same host process
            dr = stretch_run(dr, self._host_factor(host))
            host.begin(True)
        t0 = env.now
        self.link.begin(self.fetches, self.idx, burst)
        steps = n
        k = self._next
        pinned = self._pinned
        if pinned is not None:  # the next candidate surely routed here; replicas' arrivals cut the run instead
            k = max(k, self._np)
            while k < len(pinned) and not pinned[k]:
                k += 1
            self._np = k
        if k < len(self._arrivals):
            nxt = self._arrivals[k]
            if self.policy.interrupts(self, nxt):
                # stop at the first step boundary at or after the next arrival: it joins there
                j = int(dr.end_s.searchsorted(nxt.arrival_s - t0))  # side="left"
                steps = min(n, j + 1)
        self._in_run = self.fetches
        self._routable = pinned is not None
        try:
            yield env.timeout(float(dr.end_s[steps - 1]))
        except simpy.Interrupt:
            # another instance on the host link went idle or woke up, or a request routed here can join:
            # end the run with the step under way
            self._in_run = self._routable = False
            done = env.now - t0
            steps = min(steps, int(dr.end_s.searchsorted(done)) + 1)
            rest = float(dr.end_s[steps - 1]) - done
            if rest > 0 and self._fifo():
                # the link's sharing changed mid-step: the rest of the step runs at the share of this moment
                k = steps - 1
                left = rest / (float(dr.end_s[k]) - (float(dr.end_s[k - 1]) if k else 0.0))
                one = self.cost.decode_run(self._tenants, tuple([c + k for c in ctx0]), 1, self._reshared(burst))
                rest = left * float((stretch_run(one, self._host_factor(host)) if host is not None else one).end_s[0])
            if rest > 0:
                yield env.timeout(rest)
        self._in_run = self._routable = False
        self.link.end(self.fetches, self.idx)
        if host is not None:
            host.end(True)
        frac = steps / n
        c = dr.cost
        rec.segment(self.idx, "decode", t0, env.now, B, steps * B, self._tenant_label,
                    c.expert_fetches * frac, c.attention_s * frac, c.experts_s * frac, c.fetch_s * frac)
        clock = self._clock = clock + steps
        if steps == n:
            self.running, self._ctx_base, self._finish_at, keep = retire_finished(
                self.running, self._ctx_base, self._finish_at, self._tenant_count, clock, self._finish_req)
            self._tenants = tuple([self._tenants[i] for i in keep])
            self._tenant_label = _tenant_str(self._tenant_count)

    def _shared_prefill(self, batch: tuple[SeqWork, ...], step: StepCost, burst: Any,
                        host: HostProcess | None = None):
        """Run a prefill of cost ``step`` on a ``fifo`` host link other instances fetch over too: when one of them
        starts or stops fetching (``_link_changed``), the rest of the step is re-timed at the link share of that
        moment (its fetches and compute advance together, layer by layer). Returns the step's cost as it ran.
        (A ``share`` link keeps each step's share from its start, as the paper's MIG logs were reproduced.)"""
        env = self.env
        left, cur = 1.0, step
        ran = StepCost(expert_fetches=step.expert_fetches, fetch_start_s=step.fetch_start_s)
        while True:
            t = env.now
            self._in_prefill = True
            try:
                yield env.timeout(left * cur.total_s)
                f = left
            except simpy.Interrupt:
                f = min(left, (env.now - t) / cur.total_s) if cur.total_s > 0 else left
            self._in_prefill = False
            ran = replace(ran, **{k: getattr(ran, k) + f * getattr(cur, k) for k in _TIMED})
            left -= f
            if left <= 1e-12:
                return ran
            cur = self.cost.step(batch, self._reshared(burst))
            if host is not None:
                cur = stretch_step(cur, self._host_factor(host))

    def _host_factor(self, host: HostProcess) -> float:
        """The slowdown of this instance's fetching step outside its copies beside the host process's other busy
        instances: ``host.factor()`` on the share of that time the host launches op by op
        (``CostModel.host_bound_share``; the layers replayed from a graph do not contend)."""
        if self._eager_share < 0:
            self._eager_share = self.cost.host_bound_share(self.plan.residency)
        return 1.0 + (host.factor() - 1.0) * self._eager_share

    def _link_changed(self) -> None:
        """Tell the other instances on the host link or of the host process, mid decode run or prefill, that this
        one's activity changed."""
        peers = self.link.members if self.host is None else {id(o): o for o in (*self.link.members,
                                                                                *self.host.members)}.values()
        for o in peers:
            if o is not self and o._in_prefill and o.proc is not None:
                o._in_prefill = False
                o.proc.interrupt()
                continue
            if o is not self and o._in_run and o.proc is not None:
                o._in_run = o._routable = False
                o.proc.interrupt()

    def _finish_req(self, r: Request) -> None:
        self.rec.finish[r.id] = self.env.now
        self.rec.finished += 1
        self.kv_free_bytes += (r.prompt_tokens + r.output_tokens) * self.kv_bytes_per_token
        self.board.done(self.gpu, r)


#: StepCost's components in seconds (summed into ``total_s``)
_TIMED = ("attention_s", "router_s", "experts_s", "fetch_s", "lm_head_s", "overhead_s")


def _tenants(reqs: tuple[Request, ...]) -> str:
    return ",".join(str(t) for t in sorted({r.tenant for r in reqs}))


def _tenant_str(counts: dict[int, int]) -> str:
    return ",".join(str(t) for t in sorted(counts))
