"""``TorchBackend``: the runtime's steps executed on the calibrator's real-shape engine. Imports torch.

It reuses the executor's engine wrapper (``moesim.executor.gpu_cost.GPUExecutedCost``: weights laid out as the
plan's residency says, KV cache, CUDA graphs keyed by shape) and adds what the executor only assumed:

* **Swaps are really copied.** Every tenant's non-expert set has a pinned host copy; a swap copies it into the
  device tensors the tenant's steps read, on a swap stream of its own. A synchronous swap (``reconfig``) waits
  for the copy and then, when the policy's ``swap_bandwidth_fraction`` is below 1, for the remainder of
  ``copy / fraction`` (the paper's slow swap, emulated by a host wait after the real copy). A streamed swap
  (``swap_overlap``: ``reconfig_fast``) copies layer by layer with an event per layer; the prefill that follows
  waits for layer i's event just before layer i (``MoEEngine.layer_hook``), so the copy runs under compute.
  The timeline records each swap's measured copy time and how long the host waited for it.
* **Host-resident experts are fetched for real**, through ``Fetcher`` (``MoEEngine.fetcher``): after a layer's
  routing, the host copies it needs are queued on a copy stream into staging buffers, the resident experts'
  grouped GEMM runs meanwhile on the compute stream, and each host expert's FFN waits only for its own copy
  (fetch pipelined with compute) when the policy overlaps fetches (``fetch_overlap`` > 0); with
  ``fetch_overlap`` = 0 (the paper's orchestrator) each copy runs on the compute stream before its expert.
  Steps that fetch sync with the host to learn the routing, so they run eagerly (not graph-captured).
* **Decode steps run in CUDA graphs per batch-size bucket** (``moesim.serve.graphs.DecodeGraphs``: tenant
  mix as data, batch padded to its bucket, every bucket captured ahead by ``prepare``), so no decode step
  runs eagerly because the warm-up never met its tenant mix. Prefill steps keep the executor's graphs per
  exact shape (captured in the warm-up replay; an unseen prefill shape runs eagerly). ``bucketed=False``
  restores the executor's exact-shape decode graphs. On CPU the bucketed step runs eagerly (same code).

On CPU there are no streams: copies are plain copies, in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import torch

from moesim.cost.base import Residency, SeqWork, StepCost
from moesim.errors import UserError
from moesim.executor.gpu_cost import ExecutedCostConfig, GPUExecutedCost
from moesim.policies.base import InstancePlan
from moesim.serve.runtime import SwapTicket, sleep_s
from moesim.specs import GPUSpec, ModelSpec


class Fetcher:
    """Host-expert fetches of one step into staging buffers (see the module docstring)."""

    def __init__(self, device: torch.device, overlap: bool) -> None:
        self.cuda = device.type == "cuda"
        self.overlap = overlap and self.cuda
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.pool: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.count = 0  # experts fetched in the current step
        self.bytes = 0
        self._events: list[tuple[Any, Any]] = []  # (start, end) of each layer's copies, timed

    def reset(self) -> None:
        """A step starts."""
        self.count = 0
        self.bytes = 0
        self._events = []
        self._cpu_s = 0.0

    def copy_s(self) -> float:
        """Seconds the copies of the step took (sum over layers; call after the step synchronised)."""
        if not self.cuda:
            return self._cpu_s
        return sum(a.elapsed_time(b) for a, b in self._events) / 1e3

    _cpu_s = 0.0

    def _buffers(self, eng: Any, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self.pool) <= i:
            self.pool.append((torch.empty_like(eng.ph_in), torch.empty_like(eng.ph_out)))
        return self.pool[i]

    def issue(self, eng: Any, layer: int, bounds: torch.Tensor) -> list[tuple[int, int, int]]:
        """Host slots this layer needs (a host sync on the routing); queue their copies when overlapping."""
        edges = bounds.tolist()
        need = [(j, edges[j], edges[j + 1]) for j in range(len(edges) - 1) if edges[j + 1] > edges[j]]
        self.count += len(need)
        for j, _, _ in need:
            self.bytes += eng.host_in[layer][j].nbytes + eng.host_out[layer][j].nbytes
        if self.overlap and need:
            cs = self.stream
            cs.wait_stream(torch.cuda.current_stream())  # staging buffers are free once earlier compute is done
            start = torch.cuda.Event(enable_timing=True)
            ends = []
            with torch.cuda.stream(cs):
                start.record(cs)
                for i, (j, _, _) in enumerate(need):
                    bi, bo = self._buffers(eng, i)
                    bi.copy_(eng.host_in[layer][j], non_blocking=True)
                    bo.copy_(eng.host_out[layer][j], non_blocking=True)
                    ev = torch.cuda.Event(enable_timing=True)
                    ev.record(cs)
                    ends.append(ev)
            self._events.append((start, ends[-1]))
            self._pending_events = ends
        return need

    def run(self, eng: Any, layer: int, buf: torch.Tensor, y: torch.Tensor, dest: torch.Tensor,
            need: list[tuple[int, int, int]]) -> None:
        """Each needed host expert on its rows: after its own copy (overlap) or after copying it now."""
        if not need:
            return
        if self.overlap:
            cur = torch.cuda.current_stream()
            for i, ((_, a, b), ev) in enumerate(zip(need, self._pending_events, strict=True)):
                cur.wait_event(ev)
                bi, bo = self.pool[i]
                rows = dest[a:b]
                y[rows] = eng.ffn(buf[rows], bi, bo)
            return
        bi, bo = self._buffers(eng, 0)
        for j, a, b in need:  # synchronous: copy, then compute, one expert at a time
            if self.cuda:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
            else:
                t0 = time.perf_counter()
            bi.copy_(eng.host_in[layer][j], non_blocking=self.cuda)
            bo.copy_(eng.host_out[layer][j], non_blocking=self.cuda)
            if self.cuda:
                e.record()
                self._events.append((s, e))
            else:
                self._cpu_s += time.perf_counter() - t0
            rows = dest[a:b]
            y[rows] = eng.ffn(buf[rows], bi, bo)


class TorchBackend:
    """Executes the runtime's steps (see the module docstring). ``describe()`` has its counters."""

    def __init__(self, model: ModelSpec, gpu: GPUSpec, *, device: str = "cuda", n_tenants: int = 1,
                 execution: str = "auto", kv_bucket: int = 256, seed: int = 0, max_graphs: int = 256,
                 bucketed: bool = True, max_batch: int = 16, sms: int = 0, concurrent: bool = False,
                 draw_experts: bool = True, moe_kernel: str = "grouped") -> None:
        # moe_kernel: ``grouped`` (torch._grouped_mm) or ``triton`` (moesim.kernels: fused MoE, and in steps run
        # through MoEEngine.step the fused router and RoPE/KV-write kernels)
        cfg = ExecutedCostConfig(device=device, tenants=n_tenants, execution=execution, moe_engine=moe_kernel,
                                 kv_bucket=kv_bucket, max_graphs=max_graphs, seed=seed, draw_experts=draw_experts)
        self.x = GPUExecutedCost(cfg, model, gpu)
        self.model = model
        self.eng = self.x.eng
        self.device = self.x.device
        self.cuda = self.x.cuda
        self.n_tenants = n_tenants
        self.swap_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.host_sets: list[list[list[tuple[torch.Tensor, torch.Tensor]]]] = []  # tenant → group → (host, dev)
        self.plan: InstancePlan | None = None
        self.fetcher: Fetcher | None = None
        self._swap_events: list[Any] | None = None  # per group, of the swap being streamed
        self._extra: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self._run: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        # capture a CUDA graph for a shape met for the first time (else run it eagerly: a timed run after a
        # warm-up replay captures nothing, as a server that captured its graphs ahead)
        self.capture = True
        # a MIG slice: its steps run in a CUDA green context of ``sms`` SMs (``instance_context``), and waits
        # are on this instance's own stream (a device-wide sync would wait for the other slices too)
        self.sms = sms if self.cuda else 0
        self.concurrent = (concurrent or bool(sms)) and self.cuda
        self._green: Any = None
        if self.concurrent:
            self.x._sync = lambda: torch.cuda.current_stream().synchronize()
        self._local: dict[int, int] | None = None  # served tenant → this engine's non-expert set
        self.dg = None
        if bucketed:
            from moesim.serve.graphs import DecodeGraphs

            # before any host copy of the non-expert sets is made: tenants' tensors become views of stacks
            self.dg = DecodeGraphs(self.eng, max_batch, kv_bucket, pool=self.x._pool, seed=seed)
        self._elapsed = 0.0
        self.stats = {"steps": 0, "eager_steps": 0, "graph_steps": 0, "graph_captures": 0, "swaps": 0,
                      "bucket_graph_steps": 0, "bucket_captures": 0, "pad_rows": 0,
                      "swap_bytes": 0, "swap_copy_s": 0.0, "swap_paced_s": 0.0, "expert_fetches": 0,
                      "fetch_bytes": 0, "fetch_copy_s": 0.0, "step_s": 0.0}

    # ---- setup ------------------------------------------------------------------------------------
    def _groups(self, t: int) -> list[list[torch.Tensor]]:
        """Tenant ``t``'s non-expert tensors in the order a step reads them: embedding, each layer, head."""
        w = self.eng.tenants[t]
        groups = [[w.embed]]
        for i in range(self.model.n_layers):
            groups.append([g[i] for g in (w.attn_norm, w.wqkv, w.wo, w.ffn_norm, w.router, w.dense_in,
                                          w.dense_out) if g[i] is not None])
        groups.append([w.final_norm] + ([w.lm_head] if w.lm_head is not w.embed else []))
        return groups

    def setup(self, plan: InstancePlan, n_tenants: int) -> None:
        """Lay out the experts, pin a host copy of every swappable non-expert set, build the fetcher."""
        self._local = None
        if n_tenants > self.n_tenants:  # a slice's engine holds only the sets of the tenants it serves
            served = sorted(plan.tenants)
            if len(served) > self.n_tenants:
                raise UserError(f"instance {plan.name} serves {len(served)} tenants but the backend built "
                                f"{self.n_tenants} non-expert sets")
            self._local = {t: i for i, t in enumerate(served)}
            plan = _localise(plan, self._local)
            n_tenants = len(served)
        self.plan = plan
        self.set_max_batch(plan.max_batch)
        layouts = self.x.stats["layouts"]
        self.x._ensure_layout(plan.residency)
        if self.dg is not None and self.x.stats["layouts"] != layouts:
            self.dg.reset()  # the graphs read the old expert tensors
        self.host_sets = []
        if plan.swap_bytes > 0 and plan.nonexpert_slots < len(plan.tenants):
            for t in range(n_tenants):
                self.host_sets.append([[(d.detach().cpu().pin_memory() if self.cuda else d.detach().clone(), d)
                                        for d in g] for g in self._groups(t)])
        # a swap that moves more than the non-expert set (``swap``: the whole resident model) copies the rest
        # through a fixed scratch buffer, chunk by chunk: the link carries the plan's bytes
        self._extra = None
        if self.host_sets:
            extra = int(plan.swap_bytes) - sum(h.nbytes for g in self.host_sets[0] for h, _ in g)
            if extra > 0:
                chunk = min(extra, 256 << 20)
                host = torch.empty(chunk, dtype=torch.uint8, pin_memory=self.cuda)
                host.fill_(1)
                self._extra = (extra, host, torch.empty(chunk, dtype=torch.uint8, device=self.device))
        has_host = any(self.eng.host_in[i] for i in range(self.model.n_layers))
        self.fetcher = Fetcher(self.device, plan.residency.fetch_overlap > 0) if has_host else None
        self.eng.fetcher = self.fetcher
        self.x._sync()

    def reset_stats(self) -> None:
        """Zero the counters (a new run)."""
        self.stats = {k: 0.0 if isinstance(v, float) else 0 for k, v in self.stats.items()}

    def warm_up(self) -> None:
        """A prefill and two decode steps of tenant 0, untimed (lazy library initialisation)."""
        self._execute((SeqWork(0, 64, 0),))
        self._execute((SeqWork(0, 1, 64),))
        self._execute((SeqWork(0, 1, 65),))
        self.reset_stats()

    def reserve_kv(self, rows: int) -> None:
        """Allocate the KV cache for ``rows`` tokens up front (plus a bucketed step's pad rows)."""
        self.x.reserve_kv(self.dg.rows_needed(rows) if self.dg is not None else rows)

    def prepare(self, max_batch: int, max_context: int) -> int:
        """Before a timed run: capture every decode bucket up to ``max_batch`` sequences and ``max_context``
        tokens (CUDA, bucketed, no host experts); the graphs captured."""
        if self.dg is None or not self.cuda or self.fetcher is not None or self.x.execution != "graphs":
            return 0
        try:
            n = self.dg.capture_all(max_batch, max_context, self.x.cache)
        except Exception:  # recorded in dg.broken; steps take the executor's exact-shape graphs
            n = 0
        self.x._sync()
        return n

    def set_max_batch(self, max_batch: int) -> None:
        """Buckets for a policy's batch limit (graphs of other buckets dropped when the sizes change)."""
        if self.dg is not None:
            from moesim.serve.graphs import bucket_sizes

            sizes = bucket_sizes(max_batch)
            if sizes != self.dg.sizes:
                self.dg.sizes = sizes
                self.dg.reset()

    @contextlib.contextmanager
    def instance_context(self) -> Iterator[None]:
        """Run the calling thread's steps in this slice's green context, on a stream of its own (CUDA with
        ``sms``); nothing on CPU. Entered by the runtime in the instance's host thread."""
        if not self.concurrent:
            yield
            return
        if not self.sms:  # concurrent without an SM partition: a stream of its own only
            stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(stream):
                yield
            stream.synchronize()
            return
        from torch.cuda.green_contexts import GreenContext

        if self._green is None:
            idx = self.device.index or 0
            try:
                self._green = GreenContext.create(num_sms=self.sms, device_id=idx)
            except TypeError:
                self._green = GreenContext.create(self.sms, idx)
        g = self._green
        g.set_context()
        try:
            stream = g.Stream() if hasattr(g, "Stream") else torch.cuda.Stream(self.device)
            with torch.cuda.stream(stream):
                yield
            stream.synchronize()
        finally:
            g.pop_context()

    # ---- swaps ------------------------------------------------------------------------------------
    def estimate(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost | None:
        """The backend measures; no estimate."""
        return None

    def swap(self, tenants: tuple[int, ...], plan: InstancePlan, prefill: StepCost | None) -> SwapTicket:
        """Copy ``tenants``' non-expert sets from pinned memory (streamed or waited for; see the module doc)."""
        if self._local is not None:
            tenants = tuple(self._local[t] for t in tenants)
        if not self.host_sets:
            raise RuntimeError("swap asked for but no host copies were built")
        stream = plan.swap_overlap and self.cuda
        nbytes = 0
        t_host = time.perf_counter()
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            self.swap_stream.wait_stream(torch.cuda.current_stream())
            start.record(self.swap_stream)
            events = []
            with torch.cuda.stream(self.swap_stream):
                n_groups = len(self.host_sets[0])
                for gi in range(n_groups):
                    for t in tenants:
                        for h, d in self.host_sets[t][gi]:
                            d.copy_(h, non_blocking=True)
                            nbytes += h.nbytes
                    ev = torch.cuda.Event(enable_timing=True)
                    ev.record(self.swap_stream)
                    events.append(ev)
                if self._extra is not None:
                    nbytes += self._copy_extra(len(tenants), non_blocking=True)
                    ev = torch.cuda.Event(enable_timing=True)
                    ev.record(self.swap_stream)
                    events.append(ev)
            ticket = SwapTicket(handle=(start, events[-1]))
        else:
            t0 = time.perf_counter()
            for t in tenants:
                for g in self.host_sets[t]:
                    for h, d in g:
                        d.copy_(h)
                        nbytes += h.nbytes
            if self._extra is not None:
                nbytes += self._copy_extra(len(tenants), non_blocking=False)
            ticket = SwapTicket(copy_s=time.perf_counter() - t0)
        self.stats["swaps"] += len(tenants)
        self.stats["swap_bytes"] += nbytes
        if stream:
            self._swap_events = events
            ticket.exposed_s = time.perf_counter() - t_host
            return ticket
        if self.cuda:
            self.swap_stream.synchronize()
            ticket.copy_s = start.elapsed_time(events[-1]) / 1e3
        frac = plan.swap_bandwidth_fraction
        if frac < 1.0:  # the policy's slow swap: wait out copy/fraction after the real copy
            extra = ticket.copy_s * (1.0 / frac - 1.0)
            sleep_s(extra)
            self.stats["swap_paced_s"] += extra
        self.stats["swap_copy_s"] += ticket.copy_s
        ticket.exposed_s = time.perf_counter() - t_host
        return ticket

    def _copy_extra(self, n_sets: int, non_blocking: bool) -> int:
        """Copy ``n_sets`` × the plan's bytes beyond the non-expert set through the scratch buffer."""
        extra, host, dev = self._extra
        left = extra * n_sets
        while left > 0:
            k = min(left, host.numel())
            dev[:k].copy_(host[:k], non_blocking=non_blocking)
            left -= k
        return extra * n_sets

    def finish_swap(self, ticket: SwapTicket) -> None:
        """The copy time of a streamed swap (the prefill that waited on it has synchronised)."""
        if self.cuda and ticket.handle is not None and self._swap_events is not None:
            self.swap_stream.synchronize()
            a, b = ticket.handle
            ticket.copy_s = a.elapsed_time(b) / 1e3
            self.stats["swap_copy_s"] += ticket.copy_s
        self._swap_events = None

    def _hook(self, i: int) -> None:
        ev = self._swap_events[i + 1]
        torch.cuda.current_stream().wait_event(ev)

    # ---- steps ------------------------------------------------------------------------------------
    def _execute(self, batch: tuple[SeqWork, ...]) -> StepCost:
        x, eng = self.x, self.eng
        f = self.fetcher
        streamed = self._swap_events is not None
        dg = self.dg
        if dg is not None and not dg.broken and f is None and not streamed and all(
                w.new_tokens == 1 for w in batch):
            t0 = time.perf_counter()
            x._ensure_cache(dg.rows_needed(sum(w.context + 1 for w in batch)))
            graphs = x.execution == "graphs"
            dg.capture = self.capture and graphs
            before = dict(dg.stats)
            try:
                graph = dg.run(tuple(w.tenant for w in batch), tuple(w.context for w in batch), x.cache, graphs)
            except Exception:
                if not dg.broken:
                    raise
                return self._execute(batch)  # capture failed (dg.broken): the executor's path from now on
            x._sync()
            self.stats["pad_rows"] += dg.stats["pad_rows"] - before["pad_rows"]
            self.stats["bucket_captures"] += dg.stats["captures"] - before["captures"]
            if graph:
                self.stats["graph_steps"] += 1
                self.stats["bucket_graph_steps"] += 1
            else:
                self.stats["eager_steps"] += 1
            return self._done(t0, 0, 0.0)
        si = x._inputs(batch)
        x._ensure_cache(si.meta.kv_tokens)
        t0 = time.perf_counter()
        if x.execution == "graphs" and f is None and not streamed and (
                self.capture or x._graph_key(si) in x._graphs):
            before = x.stats["graph_captures"]
            if x._run_graph(si) is not None:
                self.stats["graph_steps"] += 1
                self.stats["graph_captures"] += x.stats["graph_captures"] - before
                return self._done(t0, 0, 0.0)
        if f is not None:
            f.reset()
        if streamed:
            eng.layer_hook = self._hook
        try:
            eng.step(si, x.cache)
            x._sync()
        finally:
            eng.layer_hook = None
        self.stats["eager_steps"] += 1
        n, fs = (f.count, f.copy_s()) if f is not None else (0, 0.0)
        if f is not None:
            self.stats["expert_fetches"] += n
            self.stats["fetch_bytes"] += f.bytes
            self.stats["fetch_copy_s"] += fs
        return self._done(t0, n, fs)

    def _done(self, t0: float, fetches: int, fetch_s: float) -> StepCost:
        d = time.perf_counter() - t0
        self.stats["steps"] += 1
        self.stats["step_s"] += d
        return StepCost(overhead_s=d - min(fetch_s, d), fetch_s=min(fetch_s, d), expert_fetches=float(fetches))

    def prefill(self, batch: tuple[SeqWork, ...], residency: Residency, cost: StepCost | None) -> StepCost:
        """Execute the prefill; its measured time (``fetch_s``: the step's fetch copy time, hidden or not)."""
        if self._local is not None:
            batch = tuple(SeqWork(self._local[w.tenant], w.new_tokens, w.context) for w in batch)
        return self._execute(batch)

    def begin_decode(self, tenants: tuple[int, ...], context0: tuple[int, ...], n_steps: int,
                     residency: Residency) -> None:
        """Remember the run's batch."""
        if self._local is not None:
            tenants = tuple(self._local[t] for t in tenants)
        self._run = (tenants, context0)
        self._elapsed = 0.0
        self._acc = StepCost()

    def decode_step(self, k: int) -> float:
        """Execute step ``k`` of the run; the run's elapsed measured time."""
        tenants, ctx0 = self._run
        c = self._execute(tuple(SeqWork(t, 1, c + k) for t, c in zip(tenants, ctx0, strict=True)))
        self._acc = self._acc + c
        self._elapsed += c.total_s
        return self._elapsed

    def end_decode(self, steps: int) -> StepCost:
        """The run's measured breakdown (step time, of it fetch copy time, fetch count)."""
        return self._acc

    def describe(self) -> dict[str, Any]:
        """Engine, execution mode and counters."""
        info = {"backend": "torch", "execution": self.x.execution, "device": str(self.device),
                "green_context_sms": self.sms,
                "build_s": self.x.build_s, **self.stats}
        if self.cuda:
            info["gpu_name"] = torch.cuda.get_device_name(self.device)
            info["max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
        if self.x.capture_errors:
            info["capture_errors"] = list(self.x.capture_errors)
        if self.dg is not None:
            info["decode_buckets"] = list(self.dg.sizes)
            info["bucket_graphs"] = len(self.dg.graphs)
            if self.dg.broken:
                info["bucket_capture_error"] = self.dg.broken
        return info



def _localise(plan: InstancePlan, local: dict[int, int]) -> InstancePlan:
    """``plan`` with its tenants renumbered by ``local`` (a slice's engine holds only its tenants' sets)."""
    res = plan.residency
    groups = tuple(dataclasses.replace(g, tenants=frozenset(local[t] for t in g.tenants if t in local))
                   for g in res.groups if any(t in local for t in g.tenants))
    return dataclasses.replace(plan, residency=dataclasses.replace(res, groups=groups),
                               tenants=frozenset(local[t] for t in plan.tenants),
                               initial_resident=tuple(local[t] for t in plan.initial_resident if t in local))
