"""The runtime's serving loop: one instance, a clock, a feed of arrivals, the policy deciding live. Torch-free.

``ServeInstance`` implements ``moesim.policies.view.InstanceView`` (plan, queue, resident sets, free KV
memory, clock): the policy object the simulator uses decides here too, from the runtime's live state. The
loop is the serving loop a real server runs:

1. pull the requests released so far into the queue;
2. ask the policy (``select``): which queued requests to admit now, which tenants' non-expert sets to load;
   load them (evicting least-recently-used idle sets), then prefill the admitted requests;
3. otherwise decode the running batch one step at a time until a sequence finishes or a request released
   during the run can join (``policy.interrupts``, asked once for the first request released during the run,
   with the state of the run's start, as the simulator asks it for the next arrival).

Every step goes through a *backend*: ``TorchBackend`` (``moesim.serve.backend``) executes it on a device;
``CostBackend`` returns a cost model's times, and with ``VirtualClock`` the loop is the simulator's,
decision for decision (tested: same requests table, same segments).

Host-side time (the policy, bookkeeping, building inputs) is part of what the wall clock measures; each
segment's ``sched_s`` is the host time spent between the previous step's end and this step's start.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from moesim.cost.base import CostModel, DecodeRun, Residency, SeqWork, StepCost, swap_link_delay
from moesim.errors import UserError
from moesim.policies.base import InstancePlan, Policy
from moesim.request_table import request_table
from moesim.resident_sets import make_resident, touch
from moesim.running_batch import retire_finished
from moesim.serve.buckets import prefill_bound
from moesim.specs import GPUSpec, ModelSpec
from moesim.workloads.request import Request

#: The simulator's segment columns, then the runtime's own.
SEGMENT_COLUMNS = ("instance", "kind", "start_s", "end_s", "n_seqs", "tokens", "tenants", "expert_fetches",
                   "attention_s", "experts_s", "fetch_s", "sched_s", "copy_s", "exposed_s", "steps",
                   "eager_steps")


@dataclass
class SwapTicket:
    """A swap the backend started: its exposed wait (virtual) and, once known, its copy time (seconds)."""

    exposed_s: float = 0.0
    copy_s: float = float("nan")
    handle: Any = None


class Backend(Protocol):
    """What the loop needs of an executor. Times in seconds."""

    def setup(self, plan: InstancePlan, n_tenants: int) -> None:
        """Lay weights out for ``plan`` (expert copies, non-expert sets, host copies)."""

    def estimate(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost | None:
        """A prefill's cost before it runs (virtual backends; None when the backend only measures)."""

    def swap(self, tenants: tuple[int, ...], plan: InstancePlan, prefill: StepCost | None) -> SwapTicket:
        """Start making ``tenants``' non-expert sets resident (returns once the swap's exposed part is over)."""

    def prefill(self, batch: tuple[SeqWork, ...], residency: Residency, cost: StepCost | None) -> StepCost:
        """Run a prefill step (waiting on a streamed swap layer by layer); its cost or measured breakdown."""

    def begin_decode(self, tenants: tuple[int, ...], context0: tuple[int, ...], n_steps: int,
                     residency: Residency) -> None:
        """A decode run of at most ``n_steps`` steps starts (contexts ``context0 + k`` at step k)."""

    def decode_step(self, k: int) -> float:
        """Run the run's step ``k``; the run's elapsed time at its end (seconds from the run's start)."""

    def end_decode(self, steps: int) -> StepCost:
        """The run stopped after ``steps`` steps; its cost breakdown (virtual) or zeros."""

    def finish_swap(self, ticket: SwapTicket) -> None:
        """Fill the ticket's copy time once the copy is surely over."""

    def describe(self) -> dict[str, Any]:
        """What ran and its counters."""


class CostBackend:
    """Steps answered by a cost model (no execution): with ``VirtualClock`` the runtime is the simulator."""

    def __init__(self, cost: CostModel) -> None:
        self.cost = cost
        self._swap_s = 0.0
        self._dr: DecodeRun | None = None
        self._n = 0
        self._streamed_swap_s = 0.0
        self._est: tuple[tuple[SeqWork, ...], Residency] | None = None  # the last estimated prefill
        self.stats = {"prefills": 0, "decode_steps": 0, "swaps": 0}

    def setup(self, plan: InstancePlan, n_tenants: int) -> None:
        """Compute the swap time once, as the simulator's instance does."""
        self._swap_s = self.cost.swap_s(plan.swap_bytes, plan.residency, plan.swap_bandwidth_fraction)

    def estimate(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost:
        """The prefill's cost."""
        self._est = (batch, residency)
        return self.cost.step(batch, residency)

    def swap(self, tenants: tuple[int, ...], plan: InstancePlan, prefill: StepCost | None) -> SwapTicket:
        """Exposed time of loading ``tenants`` (layer by layer under the prefill when the plan streams)."""
        total = 0.0
        for _ in tenants:
            total += self._swap_s
        exposed = total
        if plan.swap_overlap:
            # hidden under the prefill, which runs eagerly under the swap (``step_streamed``), as the simulator
            under = self.cost.step_streamed(*self._est) if self._est is not None else prefill
            layers = max(1, self.cost.model.n_layers)
            exposed = max(total / layers, total - (under.total_s if under is not None else 0.0))
            self._streamed_swap_s = total  # shares the link with the prefill's fetches (``swap_link_delay``)
        self.stats["swaps"] += len(tenants)
        return SwapTicket(exposed_s=exposed, copy_s=total)

    def prefill(self, batch: tuple[SeqWork, ...], residency: Residency, cost: StepCost | None) -> StepCost:
        """The estimate made before the swap (the simulator's order of calls), delayed by a streamed swap
        sharing the host link with its fetches (``swap_link_delay``, as the simulator's instance)."""
        self.stats["prefills"] += 1
        c = cost if cost is not None else self.cost.step(batch, residency)
        if self._streamed_swap_s:  # eager under the swap's per-layer events, sharing the link with it
            c = swap_link_delay(self.cost.step_streamed(batch, residency), self._streamed_swap_s)
            self._streamed_swap_s = 0.0
        return c

    def begin_decode(self, tenants: tuple[int, ...], context0: tuple[int, ...], n_steps: int,
                     residency: Residency) -> None:
        """One ``decode_run`` call for the whole run (as the simulator makes it)."""
        self._dr = self.cost.decode_run(tenants, context0, n_steps, residency)
        self._n = n_steps

    def decode_step(self, k: int) -> float:
        """Cumulative end of step ``k``."""
        self.stats["decode_steps"] += 1
        return float(self._dr.end_s[k])

    def end_decode(self, steps: int) -> StepCost:
        """The run's cost scaled to the steps taken (the simulator's proration)."""
        c = self._dr.cost
        frac = steps / self._n
        return StepCost(attention_s=c.attention_s * frac, experts_s=c.experts_s * frac, fetch_s=c.fetch_s * frac,
                        expert_fetches=c.expert_fetches * frac)

    def finish_swap(self, ticket: SwapTicket) -> None:
        """Nothing to wait for."""

    def describe(self) -> dict[str, Any]:
        """The cost model and counters."""
        return {"backend": "cost", "cost": self.cost.name, **self.stats}


class SleepingCostBackend(CostBackend):
    """``CostBackend`` on the wall clock: each step sleeps its cost (a real-time run without a device)."""

    def swap(self, tenants: tuple[int, ...], plan: InstancePlan, prefill: StepCost | None) -> SwapTicket:
        """Sleep the exposed part."""
        t = super().swap(tenants, plan, prefill)
        sleep_s(t.exposed_s)
        return t

    def prefill(self, batch: tuple[SeqWork, ...], residency: Residency, cost: StepCost | None) -> StepCost:
        """Sleep the step's cost."""
        c = super().prefill(batch, residency, cost)
        sleep_s(c.total_s)
        return c

    def decode_step(self, k: int) -> float:
        """Sleep the step's cost."""
        end = super().decode_step(k)
        sleep_s(end - (float(self._dr.end_s[k - 1]) if k else 0.0))
        return end


def sleep_s(s: float) -> None:
    """Wait ``s`` seconds (sleep, then spin the last half millisecond)."""
    import time

    end = time.perf_counter() + s
    while True:
        left = end - time.perf_counter()
        if left <= 0:
            return
        if left > 1e-3:
            time.sleep(left - 5e-4)


class Recorder:
    """Per-request timestamps and the timeline (rows of ``SEGMENT_COLUMNS``)."""

    def __init__(self, n: int, name: str = "") -> None:
        self.name = name  # the instance's name, written into its segments
        self.start = np.full(n, np.nan)
        self.first = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.swap_wait = np.zeros(n)
        self.rows: list[list[Any]] = []
        self.swaps = 0
        self.finished = 0

    def segment(self, kind: str, start: float, end: float, n_seqs: int, tokens: int, tenants: str,
                cost: StepCost, sched_s: float, copy_s: float = float("nan"), exposed_s: float = float("nan"),
                steps: int = 1, eager_steps: int = 0) -> list[Any]:
        """Log one segment (a prefill step, a decode run or a swap); returns the row (mutable until written).

        ``eager_steps``: of the segment's steps, those the backend ran eagerly (not a CUDA-graph replay).
        """
        row = [self.name, kind, start, end, n_seqs, tokens, tenants, cost.expert_fetches, cost.attention_s,
               cost.experts_s, cost.fetch_s, sched_s, copy_s, exposed_s, steps, eager_steps]
        self.rows.append(row)
        return row


class ServeInstance:
    """One served instance: live state the policy reads (``InstanceView``) and the serving loop."""

    def __init__(self, plan: InstancePlan, policy: Policy, model: ModelSpec, backend: Backend, clock: Any,
                 feed: Any, rec: Recorder) -> None:
        self.plan = plan
        self.policy = policy
        self.backend = backend
        self.clock = clock
        self.feed = feed
        self.rec = rec
        rec.name = plan.name
        self.queue: deque[Request] = deque()
        self.running: list[Request] = []
        self._steps_done = 0  # decode steps done by this instance: context = base + steps_done
        self._ctx_base: list[int] = []
        self._finish_at: list[int] = []
        self._tenant_count: dict[int, int] = {}
        self.resident: list[int] = list(plan.initial_resident)  # LRU order: last used at the end
        self.kv_bytes_per_token = model.kv_bytes_per_token
        self.kv_free_bytes = plan.kv_capacity_bytes
        self.n_layers = model.n_layers
        self._last_end = 0.0  # end of the previous step (for sched_s)

    # ---- InstanceView ---------------------------------------------------------------------------
    @property
    def now(self) -> float:
        """The runtime's clock (seconds since the start)."""
        return self.clock.now()

    @property
    def n_running(self) -> int:
        """Sequences in the running batch."""
        return len(self.running)

    def running_tenants(self) -> set[int]:
        """Tenants with a sequence in the running batch."""
        return set(self._tenant_count)

    # ---- the loop -------------------------------------------------------------------------------
    def serve(self) -> None:
        """Serve until every request of the feed has finished."""
        clock, rec, policy, feed = self.clock, self.rec, self.policy, self.feed
        res = self.plan.residency
        while True:
            self.queue.extend(feed.pull())
            if not self.running and not self.queue:
                if feed.exhausted():
                    return
                feed.wait()
                self._last_end = clock.now()
                continue
            sel = policy.select(self)
            if sel.admit:
                now = clock.now()
                for r in sel.admit:
                    self.queue.remove(r) if self.queue[0] is not r else self.queue.popleft()
                    rec.start[r.id] = now
                    self.kv_free_bytes -= (r.prompt_tokens + r.output_tokens) * self.kv_bytes_per_token
                batch = tuple([SeqWork(r.tenant, r.prompt_tokens, 0) for r in sel.admit])
                prompt_tokens = sum([r.prompt_tokens for r in sel.admit])
                est = self.backend.estimate(batch, res)
                ticket, swap_row = None, None
                if sel.load:
                    loading = self._load(sel.load)
                    if loading:
                        ticket = self.backend.swap(loading, self.plan, est)
                        clock.advance(now, ticket.exposed_s)
                        swap_row = rec.segment("swap", now, clock.now(), 0, 0, ",".join(map(str, loading)),
                                               StepCost(), now - self._last_end, ticket.copy_s, ticket.exposed_s, 0)
                        rec.swaps += len(loading)
                        waited = clock.now() - now
                        for r in sel.admit:
                            rec.swap_wait[r.id] = waited
                t0 = clock.now()
                sched = t0 - self._last_end if swap_row is None else 0.0
                e0 = _eager(self.backend)
                cost = self.backend.prefill(batch, res, est)
                clock.advance(t0, cost.total_s)
                end = clock.now()
                rec.segment("prefill", t0, end, len(batch), prompt_tokens, _tenants(sel.admit), cost, sched,
                            eager_steps=_eager(self.backend) - e0)
                if ticket is not None:
                    self.backend.finish_swap(ticket)
                    swap_row[12] = ticket.copy_s
                    if not clock.virtual:  # what the prefill hid of the copy
                        swap_row[3] = swap_row[2] + max(ticket.copy_s, swap_row[3] - swap_row[2])
                joining = []
                for r in sel.admit:
                    rec.first[r.id] = end
                    if r.output_tokens <= 1:
                        self._finish_req(r, end)
                    else:
                        joining.append(r)
                if joining:
                    self._join(joining)
                touch(self.resident, sel.admit)
                self._last_end = clock.now()
                continue
            if not self.running:
                raise RuntimeError(f"instance {self.plan.name}: policy admitted nothing with an idle GPU")
            self._decode_run()

    def _decode_run(self) -> None:
        clock, rec, backend, feed = self.clock, self.rec, self.backend, self.feed
        B = len(self.running)
        done = self._steps_done
        n = min(self._finish_at) - done
        tenants = tuple(r.tenant for r in self.running)
        ctx0 = tuple(b + done for b in self._ctx_base)
        t0 = clock.now()
        sched = t0 - self._last_end
        e0 = _eager(backend)
        backend.begin_decode(tenants, ctx0, n, self.plan.residency)
        asked = False
        steps = n
        for k in range(n):
            elapsed = backend.decode_step(k)
            clock.advance(t0, elapsed)
            if not asked and k + 1 < n:
                r = feed.peek_arrived(t0, elapsed)
                if r is not None:
                    asked = True
                    # the state is the run's start state: nothing joins or leaves during a run
                    if self.policy.interrupts(self, r):
                        steps = k + 1
                        break
        cost = backend.end_decode(steps)
        end = clock.now()
        rec.segment("decode", t0, end, B, steps * B, _tenant_str(self._tenant_count), cost, sched, steps=steps,
                    eager_steps=_eager(backend) - e0)
        done = self._steps_done = done + steps
        if steps == n:
            self.running, self._ctx_base, self._finish_at, _ = retire_finished(
                self.running, self._ctx_base, self._finish_at, self._tenant_count, done,
                lambda r: self._finish_req(r, end))
        self._last_end = clock.now()

    # ---- state changes (the engine applies; the policy only decided) ------------------------------
    def _join(self, reqs: list[Request]) -> None:
        done = self._steps_done
        self.running.extend(reqs)
        self._ctx_base.extend(r.prompt_tokens - done for r in reqs)
        self._finish_at.extend(r.output_tokens - 1 + done for r in reqs)
        tc = self._tenant_count
        for r in reqs:
            tc[r.tenant] = tc.get(r.tenant, 0) + 1

    def _load(self, tenants: tuple[int, ...]) -> tuple[int, ...]:
        """Make ``tenants`` resident (evicting least-recently-used idle sets); the ones to copy."""
        return tuple(make_resident(self.resident, tenants, self.plan.nonexpert_slots,
                                   self.running_tenants() | set(tenants)))

    def _finish_req(self, r: Request, t: float) -> None:
        self.rec.finish[r.id] = t
        self.rec.finished += 1
        self.kv_free_bytes += (r.prompt_tokens + r.output_tokens) * self.kv_bytes_per_token
        finished = getattr(self.feed, "finished", None)  # a fleet's feed: the router's outstanding work drops
        if finished is not None:
            finished(r)


def _eager(backend: Any) -> int:
    """Steps the backend has run eagerly so far (0 for backends that do not execute)."""
    return int(getattr(backend, "stats", {}).get("eager_steps", 0))


def _tenants(reqs: Sequence[Request]) -> str:
    return ",".join(str(t) for t in sorted({r.tenant for r in reqs}))


def _tenant_str(counts: dict[int, int]) -> str:
    return ",".join(str(t) for t in sorted(counts))


@dataclass(frozen=True)
class ServeResult:
    """What a served run produced (the simulator's ``SimResult`` columns, plus the runtime's).

    Attributes:
        requests: one row per request, the simulator's columns (times in seconds since the run's start).
        segments: the timeline (``SEGMENT_COLUMNS``): prefill steps, decode runs, swaps with their copy time
            (``copy_s``) and exposed wait (``exposed_s``), host scheduling time before each (``sched_s``).
        instances: the instance's plan summary.
        policy: the policy's name and parameters.
        horizon_s: the clock at the end (seconds).
        swap_count: non-expert-set loads.
        meta: backend counters, clock kind, arrival release lateness.
    """

    requests: pd.DataFrame
    segments: pd.DataFrame
    instances: list[dict[str, Any]]
    policy: dict[str, Any]
    horizon_s: float
    swap_count: int
    meta: dict[str, Any] = field(default_factory=dict)



def prepare_backend(backend: Any, plan: InstancePlan, reqs: Sequence[Request]) -> None:
    """Ahead of a run (backends that capture graphs: ``prepare``): every decode bucket and every prefill token
    bucket the instance's requests can meet (its longest sequence; its ``max_batch`` longest prompts at once)."""
    prepare = getattr(backend, "prepare", None)
    if prepare is not None and reqs:
        prepare(plan.max_batch, max(r.prompt_tokens + r.output_tokens for r in reqs),
                prefill_tokens=prefill_bound([r.prompt_tokens for r in reqs], plan.max_batch))

def serve(model: ModelSpec, gpu: GPUSpec, policy: Policy, backend: Backend | Sequence[Backend],
          requests: Sequence[Request], *, n_tenants: int | None = None, clock: str = "wall",
          whole_gpus: bool = False) -> ServeResult:
    """Serve ``requests`` with ``policy`` deciding live and ``backend`` executing; ``clock`` ``wall`` or ``virtual``.

    ``backend``: one backend, or one per instance of the policy's layout (``mig``: one per slice). Several
    instances run concurrently on the wall clock: one host thread each (with its backend's
    ``instance_context()``, e.g. a CUDA green context and stream), one shared clock, one arrival feed per
    instance (requests routed by the policy up front, as the simulator does); they share whatever the
    hardware shares (the host link, HBM). On the virtual clock the instances run one after the other, each on
    its own clock from 0: equal to the simulator when they do not share the host link (no host-resident
    experts); the simulator's link sharing between fetching instances is not reproduced there.
    Layouts that assume a whole GPU per instance (``dedicated``) are refused in one line unless ``whole_gpus``
    (each backend on a GPU of its own).
    """
    from moesim.serve.clock import VirtualClock, VirtualFeed, WallClock, WallFeed

    n = len(requests)
    by_id = sorted(requests, key=lambda r: r.id)
    if n and any(r.id != i for i, r in enumerate(by_id)):
        raise UserError("request ids must be dense 0..n-1 and unique")
    tenants = n_tenants if n_tenants is not None else (1 + max((r.tenant for r in requests), default=0))
    plans = policy.layout(model, gpu, tenants)
    if len(plans) > 1 and any(p.ideal or p.profile == "full" for p in plans) and not whole_gpus:
        raise UserError(f"policy {policy.registry_name!r} lays out {len(plans)} whole-GPU instances; on one GPU "
                        "the runtime runs several instances only as slices (mig); give one GPU per instance "
                        f"(gpus={len(plans)})")
    backends = list(backend) if isinstance(backend, (list, tuple)) else [backend]
    if len(backends) != len(plans):
        raise UserError(f"policy {policy.registry_name!r} lays out {len(plans)} instances but "
                        f"{len(backends)} backend(s) were given (one per instance)")
    policy.bind(plans)
    routed: list[list[Request]] = [[] for _ in plans]
    for r in sorted(requests, key=lambda r: (r.arrival_s, r.id)):
        routed[policy.route(r)].append(r)  # an unserved tenant is one line here, not a stuck run
    for p, reqs in zip(plans, routed, strict=True):
        _check_fits(p, reqs, model)
    for p, b, reqs in zip(plans, backends, routed, strict=True):
        b.setup(p, tenants)
        prepare_backend(b, p, reqs)
    recs = [Recorder(n) for _ in plans]
    feeds: list[Any] = []
    origin = None  # the wall clock's perf_counter origin (a timeline's times are placed on it)
    if clock == "virtual":
        horizon = 0.0
        for p, b, reqs, rec in zip(plans, backends, routed, recs, strict=True):
            clk = VirtualClock()
            feed = VirtualFeed(reqs, clk)
            feeds.append(feed)
            clk.start()
            ServeInstance(p, policy, model, b, clk, feed, rec).serve()
            horizon = max(horizon, clk.now())
    else:
        wclk = WallClock()
        feeds = [WallFeed(reqs, wclk) for reqs in routed]
        insts = [ServeInstance(p, policy, model, b, wclk, f, rec)
                 for p, b, f, rec in zip(plans, backends, feeds, recs, strict=True)]
        wclk.start()
        for f in feeds:
            f.start()
        try:
            if len(insts) == 1:
                insts[0].serve()
            else:
                _serve_concurrently(insts)
        finally:
            for f in feeds:
                f.stop()
        horizon = wclk.now()
        origin = wclk.t0
    rec = _merge(recs, n)
    if n and np.isnan(rec.finish).any():
        raise RuntimeError(f"{int(np.isnan(rec.finish).sum())} requests never finished: runtime bug")
    instance = np.zeros(n, dtype=np.int64)
    for i, reqs in enumerate(routed):
        instance[[r.id for r in reqs]] = i
    req_df = request_table(by_id, instance=instance, gpu=np.zeros(n, dtype=np.int64), start=rec.start,
                           first=rec.first, finish=rec.finish, swap_wait=rec.swap_wait)
    seg = pd.DataFrame(rec.rows, columns=list(SEGMENT_COLUMNS))
    for c in ("n_seqs", "tokens", "steps", "eager_steps"):
        seg[c] = seg[c].astype(np.int64)
    late = np.concatenate([np.asarray(f.release_late_s) for f in feeds]) if feeds else np.zeros(0)
    desc = [b.describe() for b in backends]
    meta = {"clock": clock, "backend": desc[0] if len(desc) == 1 else desc, "wall_t0": origin,
            "release_late_s_max": float(late.max()) if n else 0.0,
            "release_late_s_mean": float(late.mean()) if n else 0.0}
    return ServeResult(req_df, seg, [_instance_info(p, model) for p in plans], policy.describe(), float(horizon),
                       rec.swaps, meta)


def _serve_concurrently(insts: list[ServeInstance]) -> None:
    """Each instance's loop in a host thread of its own (inside its backend's ``instance_context``)."""
    import contextlib
    import threading

    errors: list[BaseException] = []

    def body(inst: ServeInstance) -> None:
        ctx = getattr(inst.backend, "instance_context", None)
        try:
            with ctx() if ctx is not None else contextlib.nullcontext():
                inst.serve()
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)
            for o in insts:  # the others stop at their next pull
                o.feed.stop()

    threads = [threading.Thread(target=body, args=(inst,), name=f"moesim-{inst.plan.name}") for inst in insts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _merge(recs: list[Recorder], n: int) -> Recorder:
    """One recorder of several instances' (each request recorded by exactly one)."""
    if len(recs) == 1:
        return recs[0]
    out = Recorder(n)
    for r in recs:
        for name in ("start", "first", "finish"):
            a, b = getattr(out, name), getattr(r, name)
            mask = ~np.isnan(b)
            a[mask] = b[mask]
        out.swap_wait += r.swap_wait
        out.rows += r.rows
        out.swaps += r.swaps
        out.finished += r.finished
    out.rows.sort(key=lambda row: (row[2], row[0]))
    return out


def _check_fits(p: InstancePlan, requests: Sequence[Request], model: ModelSpec) -> None:
    """The simulator's checks (weights fit; the largest request's KV fits), without importing the engine."""
    if not p.ideal and p.weight_bytes > p.memory_bytes:
        raise UserError(f"instance {p.name}: weights need {p.weight_bytes / 1e9:.2f} GB but it has "
                        f"{p.memory_bytes / 1e9:.2f} GB")
    if requests:
        big = max(requests, key=lambda r: r.prompt_tokens + r.output_tokens)
        need = (big.prompt_tokens + big.output_tokens) * model.kv_bytes_per_token
        if need > p.kv_capacity_bytes:
            raise UserError(f"instance {p.name}: request {big.id} needs {need / 1e9:.3f} GB of KV cache but only "
                            f"{p.kv_capacity_bytes / 1e9:.3f} GB are left after the weights; lower the budget "
                            "or shorten the requests")


def _instance_info(p: InstancePlan, model: ModelSpec) -> dict[str, Any]:
    res = p.residency
    return {"name": p.name, "profile": p.profile, "memory_bytes": p.memory_bytes,
            "resident_expert_copies": res.gpu_expert_copies(),
            "resident_expert_bytes": res.gpu_expert_copies() * model.expert_bytes,
            "host_expert_bytes": p.host_expert_bytes, "nonexpert_slots": p.nonexpert_slots,
            "kv_capacity_bytes": p.kv_capacity_bytes, "tenants": sorted(p.tenants), **p.meta}
