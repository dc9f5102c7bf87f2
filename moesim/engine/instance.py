"""One GPU or MIG instance: a SimPy process that swaps, prefills and decodes.

Decode steps are advanced in *runs* between scheduling points (an arrival that can join, a sequence
that finishes), so the cost of a simulation grows with scheduling events, not with tokens.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import simpy

from moesim.cost.base import CostModel, Residency, SeqWork
from moesim.policies.base import InstancePlan, Policy
from moesim.workloads.request import Request

if TYPE_CHECKING:
    from moesim.engine.simulation import HostLink, Recorder


class Seq:
    """A running sequence (mutable engine state)."""

    __slots__ = ("context", "remaining", "req")

    def __init__(self, req: Request) -> None:
        self.req = req
        self.context = req.prompt_tokens  # tokens in the KV cache after prefill
        self.remaining = req.output_tokens - 1  # decode steps left after the first token


class Instance:
    """Serving state of one instance; ``run`` is its SimPy process."""

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
        self.running: list[Seq] = []
        self.resident: list[int] = list(plan.initial_resident)  # LRU order: last used at the end
        self.kv_bytes_per_token = cost.model.kv_bytes_per_token
        self.kv_free_bytes = plan.kv_capacity_bytes
        self.fetches = any(not g.on_gpu for g in plan.residency.groups)
        self._wake: simpy.Event | None = None
        self._waiting_run = False
        self._res_cache: dict[float, Residency] = {}

    # ---- views used by policies ---------------------------------------------------------------
    def running_tenants(self) -> set[int]:
        """Tenants with a sequence in the running batch."""
        return {s.req.tenant for s in self.running}

    # ---- arrivals -----------------------------------------------------------------------------
    def enqueue(self, req: Request) -> None:
        """Called by the source at the request's arrival."""
        self.queue.append(req)
        w = self._wake
        if w is not None and not w.triggered and (not self._waiting_run or self.policy.interrupts(self, req)):
            w.succeed()

    # ---- helpers ------------------------------------------------------------------------------
    def _residency(self) -> Residency:
        """The plan's residency with the host-link share of this moment."""
        if not self.fetches:
            return self.plan.residency
        share = self.link.share()
        res = self._res_cache.get(share)
        if res is None:
            base = self.plan.residency
            res = replace(base, slice=replace(base.slice, link_fraction=base.slice.link_fraction * share))
            self._res_cache[share] = res
        return res

    def _load(self, tenants: tuple[int, ...], prefill_s: float) -> simpy.Timeout | None:
        """Make ``tenants`` resident, evicting least-recently-used idle sets; returns the swap wait."""
        plan, now = self.plan, self.env.now
        keep = self.running_tenants() | set(tenants)
        total = 0.0
        for t in tenants:
            if t in self.resident:
                continue
            while len(self.resident) >= plan.nonexpert_slots:
                victim = next(v for v in self.resident if v not in keep)
                self.resident.remove(victim)
            self.resident.append(t)
            total += self.cost.swap_s(plan.swap_bytes, plan.residency, plan.swap_bandwidth_fraction)
        if total <= 0.0:
            return None
        exposed = total
        if plan.swap_overlap:
            # layer-by-layer: only the first layer's copy, or what the prefill cannot cover, is exposed
            layers = max(1, self.cost.model.n_layers)
            exposed = max(total / layers, total - prefill_s)
        self.rec.segment(self.idx, "swap", now, now + exposed, 0, 0, ",".join(map(str, tenants)), 0.0,
                         0.0, 0.0, 0.0)
        self.rec.swaps += len(tenants)
        return self.env.timeout(exposed)

    # ---- the process --------------------------------------------------------------------------
    def run(self):
        env, rec, cost, policy = self.env, self.rec, self.cost, self.policy
        while True:
            if not self.running and not self.queue:
                self._wake = env.event()
                self._waiting_run = False
                yield self._wake
                self._wake = None
                continue
            sel = policy.select(self)
            if sel.admit:
                now = env.now
                for r in sel.admit:
                    self.queue.remove(r) if self.queue[0] is not r else self.queue.popleft()
                    rec.start[r.id] = now
                    rec.instance[r.id] = self.idx
                    self.kv_free_bytes -= (r.prompt_tokens + r.output_tokens) * self.kv_bytes_per_token
                batch = tuple(SeqWork(r.tenant, r.prompt_tokens, 0) for r in sel.admit)
                res = self._residency()
                self.link.begin(self.fetches)
                step = cost.step(batch, res)
                if sel.load:
                    wait = self._load(sel.load, step.total_s)
                    if wait is not None:
                        yield wait
                        rec.swap_wait[[r.id for r in sel.admit]] = env.now - now
                t0 = env.now
                yield env.timeout(step.total_s)
                self.link.end(self.fetches)
                rec.segment(self.idx, "prefill", t0, env.now, len(batch), sum(s.new_tokens for s in batch),
                            _tenants(sel.admit), step.expert_fetches, step.attention_s, step.experts_s,
                            step.fetch_s)
                for r in sel.admit:
                    rec.first[r.id] = env.now
                    if r.output_tokens <= 1:
                        self._finish_req(r)
                    else:
                        self.running.append(Seq(r))
                self._touch(sel.admit)
                continue
            if not self.running:
                # queue is non-empty but nothing can start (e.g. KV full is impossible when idle):
                # the policy could not admit the head; fail loudly rather than spin
                raise RuntimeError(f"instance {self.plan.name}: policy admitted nothing with an idle GPU")
            yield from self._decode_run()

    def _decode_run(self):
        env, rec = self.env, self.rec
        running = self.running
        n = min(s.remaining for s in running)
        tenants = tuple(s.req.tenant for s in running)
        ctx0 = tuple(s.context for s in running)
        res = self._residency()
        dr = self.cost.decode_run(tenants, ctx0, n, res)
        t0 = env.now
        self.link.begin(self.fetches)
        total = float(dr.end_s[-1])
        interruptible = len(running) < self.plan.max_batch
        if interruptible:
            self._wake = env.event()
            self._waiting_run = True
            yield env.any_of((env.timeout(total), self._wake))
            self._wake = None
            self._waiting_run = False
            elapsed = env.now - t0
            if elapsed < total:
                # finish the step in progress, then stop at its boundary
                done = int(np.searchsorted(dr.end_s, elapsed, side="right"))
                steps = min(n, done + 1)
                end = float(dr.end_s[steps - 1])
                if end > elapsed:
                    yield env.timeout(end - elapsed)
            else:
                steps = n
        else:
            yield env.timeout(total)
            steps = n
        self.link.end(self.fetches)
        frac = steps / n
        c = dr.cost
        rec.segment(self.idx, "decode", t0, env.now, len(running), steps * len(running), _tenants_seq(running),
                    c.expert_fetches * frac, c.attention_s * frac, c.experts_s * frac, c.fetch_s * frac)
        still: list[Seq] = []
        for s in running:
            s.remaining -= steps
            s.context += steps
            if s.remaining <= 0:
                self._finish_req(s.req)
            else:
                still.append(s)
        self.running = still

    def _finish_req(self, r: Request) -> None:
        self.rec.finish[r.id] = self.env.now
        self.kv_free_bytes += (r.prompt_tokens + r.output_tokens) * self.kv_bytes_per_token

    def _touch(self, reqs: tuple[Request, ...]) -> None:
        """Move the tenants just used to the most-recently-used end."""
        for t in dict.fromkeys(r.tenant for r in reqs):
            if t in self.resident and self.resident[-1] != t:
                self.resident.remove(t)
                self.resident.append(t)


def _tenants(reqs: tuple[Request, ...]) -> str:
    return ",".join(str(t) for t in sorted({r.tenant for r in reqs}))


def _tenants_seq(seqs: list[Seq]) -> str:
    return ",".join(str(t) for t in sorted({s.req.tenant for s in seqs}))
