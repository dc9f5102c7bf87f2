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
  Steps that fetch sync with the host to learn the routing, so those layers run eagerly. A fetching decode step
  runs **piecewise** (``fetch_graphs``, on by default with CUDA graphs): the embedding and the layers before the
  first layer holding a host slot replay a prefix graph per (batch bucket, context bucket) captured ahead by
  ``prepare`` (``DecodeGraphs.run_split``), the rest of the step runs eagerly through the same tenant-as-data
  code with the fetcher (host sync and copies per host layer); the packed layouts put host copies in the last
  layers. A fetching prefill from context 0 runs piecewise the same way: a prefix graph per token bucket
  (``PrefillGraphs.run_split``, captured ahead by ``prepare``), then the host layers eagerly.
  ``fetch_graphs="off"``, a streamed swap in flight, host slots in layer 0 and prefills with a cached context run
  the whole step eagerly (``MoEEngine.step``).
* **Decode steps run in CUDA graphs per batch-size bucket** (``moesim.serve.graphs.DecodeGraphs``: tenant
  mix as data, batch padded to its bucket, every bucket captured ahead by ``prepare``), so no decode step
  runs eagerly because the warm-up never met its tenant mix. **Prefill steps from context 0 run in CUDA
  graphs per token bucket** (``moesim.serve.graphs.PrefillGraphs``: padded to the bucket, every bucket up to the
  run's largest prefill captured ahead by ``prepare``); a prefill that fits no bucket keeps the executor's
  exact-shape graph (captured in the warm-up replay) or runs eagerly. ``bucketed=False`` restores the
  executor's exact-shape graphs for both. On CPU the bucketed steps run eagerly (same code).

On CPU there are no streams: copies are plain copies, in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from collections.abc import Iterator
from typing import Any

import torch

from moesim.cost.base import Residency, SeqWork, StepCost
from moesim.errors import UserError, first_line
from moesim.executor.gpu_cost import ExecutedCostConfig, GPUExecutedCost
from moesim.policies.base import InstancePlan
from moesim.serve.config import resolve_moe_kernel
from moesim.serve.runtime import SwapTicket, sleep_s
from moesim.specs import GPUSpec, ModelSpec

#: ``prefill_table``'s extra (sequences, tokens each) rows: prefills filling the token buckets 384 … 4096.
PREFILL_FILLS: tuple[tuple[int, int], ...] = ((3, 128), (3, 256), (4, 256), (6, 256), (8, 256), (12, 256),
                                              (16, 256))


#: ``fetch_graphs`` values: ``auto`` (piecewise fetching decode steps and prefills with CUDA graphs: CUDA and
#: execution=graphs), ``on`` (piecewise wherever steps run bucketed; eager prefix without graphs, e.g. on the CPU),
#: ``off``.
FETCH_GRAPHS = ("auto", "on", "off")
#: ``fetch_table``'s prefix lengths (layers; those below the model's layer count are timed).
FETCH_PREFIXES: tuple[int, ...] = (8, 16, 24, 27, 31)
#: ``prefill_fetch_table``'s prefill token buckets (tokens) and tenant counts.
PREFILL_FETCH_BUCKETS: tuple[int, ...] = (256, 384, 512, 768, 1024)
PREFILL_FETCH_TENANTS: tuple[int, ...] = (1, 2)


#: ``sync_table``'s decode rows: (sequences, distinct tenants). An eager step launches each tenant's projections
#: on its own, so its host time grows with the tenants it holds.
SYNC_DECODE: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (4, 1), (8, 1), (16, 1), (2, 2), (4, 2), (8, 2),
                                            (16, 2), (4, 3), (16, 3))


class HostReader:
    """Reads small device tensors (a layer's routing) on the host: on CUDA an asynchronous copy into a pinned buffer
    and a wait on an event, never ``tensor.tolist()``.

    ``tolist()`` copies into pageable memory, a synchronous copy during which the CUDA driver holds back the
    process's other host threads' CUDA calls. Measured on the H200 with the runtime's timeline (fourteenth call,
    ``reports/validation/realtime/h200_timeline``): two mig slices' threads, each reading its routing so, held each
    other's expert copies back by 13 ms on average, 90 % of the late copies starting within 0.5 ms of the other
    slice's routing read ending. One reader per host thread (its buffer is reused read after read)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._bufs: dict[torch.dtype, torch.Tensor] = {}
        self._event: Any = None

    def read(self, t: torch.Tensor) -> list:
        """``t.tolist()``, read through the pinned buffer (CUDA) after everything queued before it."""
        if not self.cuda or t.device.type != "cuda":
            return t.tolist()
        n = t.numel()
        buf = self._bufs.get(t.dtype)
        if buf is None or buf.numel() < n:
            buf = self._bufs[t.dtype] = torch.empty(max(64, n), dtype=t.dtype, pin_memory=True)
        dst = buf[:n]
        dst.copy_(t.reshape(-1), non_blocking=True)
        if self._event is None:
            self._event = torch.cuda.Event()
        self._event.record()
        self._event.synchronize()  # releases the interpreter lock; holds no driver lock while it waits
        return dst.view(t.shape).tolist()


class Fetcher:
    """Host-expert fetches of one step into staging buffers (see the module docstring)."""

    def __init__(self, device: torch.device, overlap: bool) -> None:
        self.cuda = device.type == "cuda"
        self.overlap = overlap and self.cuda
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.reader = HostReader(device)  # the routing read (a host sync per host layer)
        self.pool: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.count = 0  # experts fetched in the current step
        self.bytes = 0
        self._events: list[tuple[Any, Any]] = []  # (start, end) of each layer's copies, timed
        # the timeline (``TorchBackend.trace_timeline``): rows appended while steps run, resolved afterwards
        self.trace: list[tuple] | None = None
        self._ref: tuple[Any, float] | None = None  # an event and the host time it completed at (step start)

    def reset(self) -> None:
        """A step starts (the stream is idle: the previous step synchronised)."""
        self.count = 0
        self.bytes = 0
        self._events = []
        self._cpu_s = 0.0
        if self.trace is not None and self.cuda:
            ref = torch.cuda.Event(enable_timing=True)
            ref.record()
            ref.synchronize()
            self._ref = (ref, time.perf_counter())

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
        t0 = time.perf_counter()
        edges = self.reader.read(bounds)
        if self.trace is not None:
            self.trace.append(("sync", layer, t0, time.perf_counter()))
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
            if self.trace is not None:
                self.trace.append(("copies", layer, self._ref, start, ends[-1]))
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
                if self.trace is not None:
                    self.trace.append(("copy", layer, self._ref, s, e))
            else:
                self._cpu_s += time.perf_counter() - t0
                if self.trace is not None:
                    self.trace.append(("copy", layer, t0, time.perf_counter()))
            rows = dest[a:b]
            y[rows] = eng.ffn(buf[rows], bi, bo)


class TorchBackend:
    """Executes the runtime's steps (see the module docstring). ``describe()`` has its counters."""

    def __init__(self, model: ModelSpec, gpu: GPUSpec, *, device: str = "cuda", n_tenants: int = 1,
                 execution: str = "auto", kv_bucket: int = 256, seed: int = 0, max_graphs: int = 256,
                 bucketed: bool = True, max_batch: int = 16, sms: int = 0, concurrent: bool = False,
                 draw_experts: bool = True, moe_kernel: str = "auto", host_pool: int = 0,
                 gpu_index: int | None = None, fetch_graphs: str = "auto") -> None:
        # moe_kernel: ``grouped`` (torch._grouped_mm), ``triton`` (moesim.kernels: fused MoE, and in steps run
        # through MoEEngine.step the fused router and RoPE/KV-write kernels) or ``auto`` (``resolve_moe_kernel``)
        moe_kernel = resolve_moe_kernel(moe_kernel, device)
        self.moe_kernel = moe_kernel
        # a fleet GPU: every call runs with CUDA device ``gpu_index`` current (build, setup, steps, counters)
        self.gpu_index = gpu_index if device == "cuda" else None
        if fetch_graphs not in FETCH_GRAPHS:
            raise UserError(f"fetch_graphs={fetch_graphs!r}: valid: {', '.join(FETCH_GRAPHS)}")
        with self.on_device():
            self._build(model, gpu, device, n_tenants, execution, kv_bucket, seed, max_graphs, bucketed, max_batch,
                        sms, concurrent, draw_experts, host_pool, moe_kernel)
        # fetching decode steps piecewise (prefix graph + eager rest, ``DecodeGraphs.run_split``): needs the
        # bucketed decode path; ``auto``: only where the prefix is a CUDA graph
        self.split_fetch = self.dg is not None and (
            fetch_graphs == "on" or (fetch_graphs == "auto" and self.cuda and self.x.execution == "graphs"))
        self.fetch_graphs = fetch_graphs
        if self.gpu_index is not None:
            for name in _ON_DEVICE:
                setattr(self, name, _on_device(self, getattr(self, name)))

    def on_device(self) -> contextlib.AbstractContextManager:
        """``torch.cuda.device(gpu_index)`` for a fleet GPU's backend; else nothing."""
        return torch.cuda.device(self.gpu_index) if self.gpu_index is not None else contextlib.nullcontext()

    def _build(self, model: ModelSpec, gpu: GPUSpec, device: str, n_tenants: int, execution: str, kv_bucket: int,
               seed: int, max_graphs: int, bucketed: bool, max_batch: int, sms: int, concurrent: bool,
               draw_experts: bool, host_pool: int, moe_kernel: str = "grouped") -> None:
        cfg = ExecutedCostConfig(device=device, tenants=n_tenants, execution=execution, moe_engine=moe_kernel,
                                 kv_bucket=kv_bucket, max_graphs=max_graphs, seed=seed, draw_experts=draw_experts)
        self.x = GPUExecutedCost(cfg, model, gpu)
        self.model = model
        self.eng = self.x.eng
        self.eng.host_pool = host_pool  # distinct pinned host expert copies at most (0: one per host copy)
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
        self.pg = None
        if bucketed:
            from moesim.serve.graphs import DecodeGraphs

            # before any host copy of the non-expert sets is made: tenants' tensors become views of stacks
            self.dg = DecodeGraphs(self.eng, max_batch, kv_bucket, pool=self.x._pool, seed=seed)
            from moesim.serve.buckets import PREFILL_MIN_BUCKET_CPU, PREFILL_MIN_BUCKET_CUDA
            from moesim.serve.graphs import PrefillGraphs

            self.pg = PrefillGraphs(self.eng, self.dg.stacked, max_batch,
                                    PREFILL_MIN_BUCKET_CUDA if self.cuda else PREFILL_MIN_BUCKET_CPU,
                                    pool=self.x._pool, seed=seed)
        # prefills from context 0 run in their token bucket's graph (``PrefillGraphs``); False: the executor's
        # exact-shape graph (``prefill_table`` times both)
        self.bucket_prefill = bucketed
        self.eager_only = False  # True: prefills run eagerly even where a graph exists (``prefill_table``)
        self._elapsed = 0.0
        self.trace: list[tuple] | None = None  # the timeline being recorded (``trace_timeline``)
        self.stats = {"steps": 0, "eager_steps": 0, "graph_steps": 0, "graph_captures": 0, "swaps": 0,
                      "bucket_graph_steps": 0, "bucket_captures": 0, "pad_rows": 0,
                      "prefill_bucket_steps": 0, "prefill_captures": 0, "prefill_pad_tokens": 0,
                      "swap_bytes": 0, "swap_copy_s": 0.0, "swap_paced_s": 0.0, "expert_fetches": 0,
                      "fetch_bytes": 0, "fetch_copy_s": 0.0, "step_s": 0.0, "split_steps": 0,
                      "prefix_graph_steps": 0, "prefix_captures": 0, "prefill_split_steps": 0,
                      "prefill_prefix_graph_steps": 0, "prefill_prefix_captures": 0}

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
        self.x._ensure_layout(physical_residency(plan, self.model))
        if self.dg is not None and self.x.stats["layouts"] != layouts:
            self.dg.reset()  # the graphs read the old expert tensors
            self.pg.reset()
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
        if self.fetcher is not None:
            self.fetcher.trace = self.trace
        self.eng.fetcher = self.fetcher
        self.x._sync()

    def reset_stats(self) -> None:
        """Zero the counters (a new run)."""
        self.stats = {k: 0.0 if isinstance(v, float) else 0 for k, v in self.stats.items()}

    def trace_timeline(self, on: bool) -> None:
        """Record (``on``) or stop recording the timeline of the steps from now on: each step's host span, each
        host layer's routing read (the host sync) and each expert copy (device time). ``timeline()`` reads it."""
        self.trace = [] if on else None
        if self.fetcher is not None:
            self.fetcher.trace = self.trace

    def timeline(self) -> list[dict[str, Any]]:
        """The recorded timeline, one row per span (call after the steps synchronised): ``kind`` (``step``: a
        step's host span, from its call to its end on the device; ``sync``: the host waiting for a layer's routing,
        i.e. for everything queued before it; ``copy``: one host expert's two weight copies, from the stream
        reaching them to their end, so waiting behind other copies on the link included; ``copies``: a layer's
        copies when fetches overlap compute), ``layer`` (−1 for steps), ``start_s`` and ``end_s``
        (``time.perf_counter`` seconds; device times placed by an event synchronised at the step's start, to a few
        microseconds), ``fetches`` (a step's host expert fetches)."""
        rows = []
        for r in self.trace or []:
            kind, layer = r[0], r[1]
            if len(r) == 5 and kind != "step":  # device events: (kind, layer, (ref, t_ref), start, end)
                (ref, t_ref), a, b = r[2], r[3], r[4]
                start, end = t_ref + ref.elapsed_time(a) / 1e3, t_ref + ref.elapsed_time(b) / 1e3
            else:
                start, end = r[2], r[3]
            rows.append({"kind": kind, "layer": layer, "start_s": start, "end_s": end,
                         "fetches": r[4] if kind == "step" else 0})
        return rows

    def warm_up(self) -> None:
        """A prefill and two decode steps of tenant 0, untimed (lazy library initialisation)."""
        self._execute((SeqWork(0, 64, 0),))
        self._execute((SeqWork(0, 1, 64),))
        self._execute((SeqWork(0, 1, 65),))
        self.reset_stats()

    def reserve_kv(self, rows: int) -> None:
        """Allocate the KV cache for ``rows`` tokens up front (plus a bucketed step's pad rows)."""
        self.x.reserve_kv(self.dg.rows_needed(rows) if self.dg is not None else rows)

    def prepare(self, max_batch: int, max_context: int, prefill_tokens: int = 0) -> int:
        """Before a timed run: capture every decode bucket up to ``max_batch`` sequences and ``max_context``
        tokens, and every prefill token bucket up to ``prefill_tokens`` tokens (CUDA, bucketed, no host
        experts); with host experts, the prefix graph of fetching decode steps (``fetch_graphs``) per decode
        bucket instead; the graphs captured."""
        if self.dg is None or not self.cuda or self.x.execution != "graphs":
            return 0
        top = self.pg.bucket(prefill_tokens) if prefill_tokens > 0 and self.bucket_prefill else 0
        if self.fetcher is not None:
            if not self.split_fetch or self._split_layer() == 0:
                return 0
            self.x._ensure_cache(top)  # before any capture: a larger cache later would drop the graphs
            try:
                n = self.dg.capture_prefixes(max_batch, max_context, self.x.cache)
            except Exception:  # recorded in dg.prefix_broken; fetching steps then run the prefix eagerly
                n = 0
            self.stats["prefix_captures"] += n
            m = 0
            if top:
                with contextlib.suppress(Exception):  # recorded in pg.prefix_broken: prefixes then run eagerly
                    m = self.pg.capture_prefixes(prefill_tokens, self.x.cache)
                self.stats["prefill_prefix_captures"] += m
            self.x._sync()
            return n + m
        self.x._ensure_cache(top)  # before any capture: a larger cache later would drop the graphs
        try:
            n = self.dg.capture_all(max_batch, max_context, self.x.cache)
        except Exception:  # recorded in dg.broken; steps take the executor's exact-shape graphs
            n = 0
        if top:
            # a failure is recorded in pg.broken; prefills then take the executor's exact-shape graphs
            with contextlib.suppress(Exception):
                n += self.pg.capture_all(prefill_tokens, self.x.cache)
        self.x._sync()
        return n

    def decode_table(self, contexts: tuple[int, ...] = (200, 456), reps: int = 5,
                     sizes: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
        """Time decode steps exactly as the runtime runs them (``_execute``: buckets, pads, host input building,
        synchronisation) for batches of ``sizes`` sequences (default: each bucket and the midpoints between),
        1 … 3 distinct tenants, every sequence at each context of ``contexts`` (tokens); one untimed step first
        (captures the bucket's graph). Rows: ``n_seqs``, ``bucket``, ``n_tenants``, ``context``, ``step_s``
        (median of ``reps``), ``step_s_min``, ``graph`` (replayed a CUDA graph). Call with the layout of the
        runs it describes set up (``setup``) and no host experts."""
        from statistics import median

        from moesim.serve.graphs import bucket_for

        top = self.dg.sizes[-1] if self.dg is not None else 16
        if sizes is None:
            bs = self.dg.sizes if self.dg is not None else (1, 2, 4, 8, 16)
            sizes = tuple(sorted(set(bs) | {(a + b) // 2 for a, b in itertools.pairwise(bs) if b - a > 1}))
        capture, self.capture = self.capture, True
        rows = []
        try:
            self.reserve_kv(top * (max(contexts) + 2))
            for n in sizes:
                for k in range(1, min(n, self.n_tenants, 3) + 1):
                    tenants = tuple(i % k for i in range(n))
                    for ctx in contexts:
                        batch = tuple(SeqWork(t, 1, ctx) for t in tenants)
                        g0 = self.stats["graph_steps"]
                        self._execute(batch)
                        times = [self._execute(batch).total_s for _ in range(reps)]
                        rows.append({"n_seqs": n, "bucket": bucket_for(n, self.dg.sizes) if self.dg else n,
                                     "n_tenants": k, "context": ctx, "step_s": median(times),
                                     "step_s_min": min(times), "graph": self.stats["graph_steps"] > g0})
        finally:
            self.capture = capture
        return rows

    def prefill_table(self, tokens: tuple[int, ...] = (32, 64, 128, 256), n_seqs: tuple[int, ...] = (1, 2),
                      reps: int = 3, fills: tuple[tuple[int, int], ...] = PREFILL_FILLS,
                      modes: tuple[str, ...] = ("eager", "graph", "bucket")) -> list[dict[str, Any]]:
        """Time prefill steps as the runtime runs them: ``n_seqs`` × ``tokens`` (sequences of tenants 0, 1, …
        with ``tokens`` prompt tokens each), then the ``fills`` (n_seqs, tokens) rows, each ``modes``:

        * ``eager_s``: eagerly (the executor's path, no graph);
        * ``graph_s``: replayed from its exact-shape CUDA graph (the executor's graphs);
        * ``bucket_s``: as the runtime runs it now, in its token bucket's graph (``bucket`` tokens: padded,
          host input building included; ``PrefillGraphs``).

        Rows: ``n_seqs``, ``tokens`` (per sequence), ``eager_s``, ``graph_s`` (medians of ``reps``), ``bucket``,
        ``bucket_s``, ``n_tenants`` (NaN where a mode was not timed). Call with no host experts laid out."""
        from statistics import median

        capture, bucketed = self.capture, self.bucket_prefill
        rows = []
        shapes = [(n, t) for n in n_seqs for t in tokens] + [f for f in fills if f not in
                                                               [(n, t) for n in n_seqs for t in tokens]]
        nan = float("nan")
        try:
            top = max(n * t for n, t in shapes)
            self.reserve_kv(max(top, self.pg.bucket(top) if self.pg is not None else 0) + 1)

            def timed(batch: tuple[SeqWork, ...], cap: bool, bucket: bool, eager: bool = False) -> float:
                self.capture, self.bucket_prefill, self.eager_only = cap, bucket, eager
                self._execute(batch)  # untimed (captures the graph when ``cap``)
                return median(self._execute(batch).total_s for _ in range(reps))

            for n, t in shapes:
                batch = tuple(SeqWork(i % self.n_tenants, t, 0) for i in range(n))
                row = {"n_seqs": n, "tokens": t,
                       "eager_s": timed(batch, False, False, True) if "eager" in modes else nan,
                       "graph_s": timed(batch, True, False) if "graph" in modes else nan,
                       "bucket": self.pg.bucket(n * t) if self.pg is not None else n * t,
                       # not where bucket prefills are off (``bucket_prefill`` False on entry) or failed to capture
                       "bucket_s": timed(batch, True, True) if "bucket" in modes and bucketed and self.pg is not None
                       and not self.pg.broken else nan,
                       "n_tenants": len({w.tenant for w in batch})}
                rows.append(row)
        finally:
            self.capture, self.bucket_prefill, self.eager_only = capture, bucketed, False
        return rows

    def sync_table(self, reps: int = 5, decode: tuple[tuple[int, int], ...] = SYNC_DECODE
                   ) -> list[dict[str, Any]]:
        """Eager steps timed without and with a host synchronisation at every layer: a step that fetches host
        experts reads each layer's routing on the host, which drains the GPU's queue and exposes the launches
        after it. Rows: ``batch``, ``n_seqs``, ``tokens``, ``eager_s``, ``eager_sync_s`` (medians of ``reps``),
        ``per_layer_s`` (their difference over the layers), ``n_tenants``; a decode row per (sequences,
        distinct tenants) of ``decode`` (sequence i of tenant i mod k, context 200; named ``decode_<n>`` with 2
        tenants or 1 sequence, as the tables had them before, else ``decode_<n>_t<k>``), a ``prefill_256`` row.
        Call with no host experts laid out."""
        from statistics import median

        x, eng = self.x, self.eng
        batches = {}
        for n, k in decode:
            k = min(k, n, self.n_tenants)
            name = f"decode_{n}" if k == 2 or n == 1 else f"decode_{n}_t{k}"
            batches[name] = tuple(SeqWork(i % k, 1, 200) for i in range(n))
        batches["prefill_256"] = (SeqWork(0, 256, 0),)
        rows = []
        for name, batch in batches.items():
            si = x._inputs(batch)
            x._ensure_cache(si.meta.kv_tokens)
            cache = x.cache

            def once(sync: bool, si=si, cache=cache) -> float:
                eng.layer_hook = (lambda i: torch.cuda.current_stream().synchronize()) if sync and self.cuda \
                    else None
                try:
                    t0 = time.perf_counter()
                    eng.step(si, cache)
                    x._sync()
                    return time.perf_counter() - t0
                finally:
                    eng.layer_hook = None

            once(False)
            once(True)
            plain = median(once(False) for _ in range(reps))
            synced = median(once(True) for _ in range(reps))
            rows.append({"batch": name, "n_seqs": len(batch), "tokens": sum(w.new_tokens for w in batch),
                         "eager_s": plain, "eager_sync_s": synced,
                         "per_layer_s": (synced - plain) / self.model.n_layers,
                         "n_tenants": len({w.tenant for w in batch})})
        return rows

    def _median_s(self, fn: Any, reps: int) -> float:
        """Median host wall seconds of ``reps`` calls of ``fn``, each to a device sync, after one untimed call (which
        captures a graph the first time)."""
        from statistics import median

        fn()
        times = []
        for _ in range(reps):
            self.x._sync()
            t0 = time.perf_counter()
            fn()
            self.x._sync()
            times.append(time.perf_counter() - t0)
        return median(times)

    def fetch_table(self, reps: int = 5, decode: tuple[tuple[int, int], ...] = SYNC_DECODE,
                    prefixes: tuple[int, ...] = FETCH_PREFIXES, context: int = 200) -> list[dict[str, Any]]:
        """The parts of a piecewise fetching decode step (``DecodeGraphs.run_split``), timed on the runtime's
        tenant-as-data code with every expert resident (call with no host experts laid out), for each
        (sequences, distinct tenants) of ``decode`` (sequence i of tenant i mod k, every one at ``context``).
        All times are seconds, medians of ``reps`` after one untimed call, host wall time to a device sync:

        * ``eager_layer_s``: the decoder layers run eagerly (``mixed_layers`` over all L layers on the bucket's
          padded rows) with a host sync (``.tolist()`` of a small device tensor) before every MoE layer's experts,
          divided by L: what a host layer that fetches nothing costs (its copies come on top);
        * ``eager_nosync_layer_s``: the same without the syncs, divided by L;
        * ``eager_head_s``: the final norm, lm_head and argmax eagerly (``mixed_head``);
        * ``graph_step_s``: the whole step as the runtime runs a resident decode step (``DecodeGraphs.run``:
          plan, buffer fill, the bucket graph's replay; eager on the CPU or when capture failed; ``graph`` says
          which);
        * ``prefix_<j>_s``: the prefix of j layers as a fetching step runs it (plan, buffer fill, the prefix
          graph's replay of the embedding and layers 0 … j − 1; ``prefix_graph`` False: run eagerly), a column per
          prefix length j of ``prefixes`` below L (none below L: L // 2).

        Rows (one per (sequences, tenants)): ``n_seqs``, ``n_tenants``, ``bucket`` (padded rows), ``context``,
        ``n_layers``, ``eager_layer_s``, ``eager_nosync_layer_s``, ``eager_head_s``, ``graph_step_s``, ``graph``,
        ``prefix_graph``, then the ``prefix_<j>_s`` columns (``moesim.cost.fetch_pipeline.FetchTable`` reads them).
        A fetching step of prefix j ≈ ``prefix_<j>_s`` + (L − j) × ``eager_layer_s`` + ``eager_head_s`` + its
        exposed copies."""
        from moesim.serve.graphs import make_buffers, mixed_context, mixed_embed, mixed_head, mixed_layers
        from moesim.serve.graphs import plan_decode as plan

        dg, x, eng = self.dg, self.x, self.eng
        if dg is None:
            return []
        L = self.model.n_layers
        js = [j for j in prefixes if 0 < j < L] or ([L // 2] if L > 1 else [])
        graphs = self.cuda and x.execution == "graphs"
        top = dg.sizes[-1]
        self.reserve_kv(top * (context + 2))
        probe = torch.zeros(2, device=self.device)
        reader = HostReader(self.device)  # the routing read as the runtime's fetcher does it

        def sync_hook(i: int) -> None:
            reader.read(probe)

        def timed(fn: Any) -> float:
            return self._median_s(fn, reps)

        capture, dg.capture = dg.capture, graphs
        had = set(dg.prefix)
        cache, st = x.cache, dg.stacked
        rows = []
        try:
            for n, k in decode:
                k = min(k, n, self.n_tenants)
                if n > top:
                    continue
                tenants, ctxs = tuple(i % k for i in range(n)), (context,) * n
                p = plan(tenants, ctxs, dg.sizes, dg.kv_bucket)
                buf = make_buffers(p, self.device, self.model.vocab, dg.seed)
                c0 = mixed_context(eng, st, buf)
                x0 = mixed_embed(eng, st, buf)
                eager = timed(lambda b=buf, c=c0, h=x0: mixed_layers(eng, st, b, cache, h, 0, L, c, sync_hook))
                nosync = timed(lambda b=buf, c=c0, h=x0: mixed_layers(eng, st, b, cache, h, 0, L, c))
                head = timed(lambda b=buf, c=c0, h=x0: mixed_head(eng, st, b, h, c))
                r0 = dg.stats["replays"]
                full = timed(lambda t=tenants, cs=ctxs: dg.run(t, cs, cache, graphs))
                graph = dg.stats["replays"] > r0
                row = {"n_seqs": n, "n_tenants": k, "bucket": p.bucket, "context": context, "n_layers": L,
                       "eager_layer_s": eager / L, "eager_nosync_layer_s": nosync / L, "eager_head_s": head,
                       "graph_step_s": full, "graph": graph, "prefix_graph": False}
                r0 = dg.stats["prefix_replays"]
                for j in js:
                    row[f"prefix_{j}_s"] = timed(lambda t=tenants, cs=ctxs, j=j: dg.run_split(
                        t, cs, cache, graphs, layers=j, tail=False))
                row["prefix_graph"] = dg.stats["prefix_replays"] > r0
                rows.append(row)
        finally:
            dg.capture = capture
            for key in set(dg.prefix) - had:  # the table's prefixes: not the layout's
                del dg.prefix[key]
        return rows

    def link_share(self, swap_bytes: int = 0, fetch_bytes: int = 0, n_fetch: int = 8, reps: int = 3,
                   delays: tuple[float, ...] = (0.0, 0.5)) -> dict[str, Any]:
        """A streamed swap and host-expert fetches over the one host link, alone and together, as the runtime
        issues them: the swap (``swap_bytes``, default one non-expert set) on the swap stream, then ``n_fetch``
        expert copies (``fetch_bytes`` each, default one expert) one after the other on a copy stream, issued
        ``delay`` × (the swap's time alone) after the swap (host wait; ``delays``). Pinned memory, CUDA events.

        Returns seconds (medians of ``reps``): ``swap_alone_s``, ``fetch_alone_s`` (all ``n_fetch`` copies), and
        per delay ``together[i]``: ``delay_s``, ``swap_s`` (the swap's end from its start), ``fetch_s`` (the
        fetches' end from their issue), ``fetch_ends_s`` (each copy's end from their issue), ``swap_delay_s`` /
        ``fetch_delay_s`` (how much later each ended than alone); ``*_GBps`` the rates alone. CPU: {}."""
        from statistics import median

        if not self.cuda:
            return {}
        swap_bytes = int(swap_bytes or self.model.nonexpert_bytes)
        fetch_bytes = int(fetch_bytes or self.model.expert_bytes)
        dev = self.device
        buf: dict[str, Any] = {"h_swap": torch.empty(swap_bytes, dtype=torch.uint8, pin_memory=True),
                               "d_swap": torch.empty(swap_bytes, dtype=torch.uint8, device=dev),
                               "h_f": [torch.empty(fetch_bytes, dtype=torch.uint8, pin_memory=True)
                                       for _ in range(2)],
                               "d_f": torch.empty(fetch_bytes, dtype=torch.uint8, device=dev)}
        buf["h_swap"].fill_(1)
        for h in buf["h_f"]:
            h.fill_(1)
        ss, fs = torch.cuda.Stream(dev), torch.cuda.Stream(dev)

        def ev() -> Any:
            return torch.cuda.Event(enable_timing=True)

        def issue_swap() -> tuple[Any, Any]:
            a, b = ev(), ev()
            a.record(ss)
            with torch.cuda.stream(ss):
                buf["d_swap"].copy_(buf["h_swap"], non_blocking=True)
            b.record(ss)
            return a, b

        def issue_fetch() -> tuple[Any, list[Any]]:
            a, ends = ev(), []
            a.record(fs)
            with torch.cuda.stream(fs):
                for i in range(n_fetch):
                    buf["d_f"].copy_(buf["h_f"][i % 2], non_blocking=True)
                    e = ev()
                    e.record(fs)
                    ends.append(e)
            return a, ends

        def alone_swap() -> float:
            torch.cuda.synchronize(dev)
            a, b = issue_swap()
            torch.cuda.synchronize(dev)
            return a.elapsed_time(b) / 1e3

        def alone_fetch() -> float:
            torch.cuda.synchronize(dev)
            a, ends = issue_fetch()
            torch.cuda.synchronize(dev)
            return a.elapsed_time(ends[-1]) / 1e3

        alone_swap(), alone_fetch()
        t_swap = median(alone_swap() for _ in range(reps))
        t_fetch = median(alone_fetch() for _ in range(reps))
        together = []
        for d in delays:
            runs = []
            for _ in range(reps):
                torch.cuda.synchronize(dev)
                a, b = issue_swap()
                if d > 0:
                    sleep_s(d * t_swap)
                fa, ends = issue_fetch()
                torch.cuda.synchronize(dev)
                runs.append((a.elapsed_time(b) / 1e3, fa.elapsed_time(ends[-1]) / 1e3,
                             [fa.elapsed_time(e) / 1e3 for e in ends], a.elapsed_time(fa) / 1e3))
            sw = median(r[0] for r in runs)
            fe = median(r[1] for r in runs)
            together.append({"delay": d, "delay_s": median(r[3] for r in runs), "swap_s": sw, "fetch_s": fe,
                             "fetch_ends_s": [median(r[2][i] for r in runs) for i in range(n_fetch)],
                             "swap_delay_s": sw - t_swap, "fetch_delay_s": fe - t_fetch})
        buf.clear()
        torch.cuda.empty_cache()
        return {"swap_bytes": swap_bytes, "fetch_bytes": fetch_bytes, "n_fetch": n_fetch,
                "swap_alone_s": t_swap, "fetch_alone_s": t_fetch, "swap_GBps": swap_bytes / t_swap / 1e9,
                "fetch_GBps": n_fetch * fetch_bytes / t_fetch / 1e9, "together": together}

    def set_max_batch(self, max_batch: int) -> None:
        """Buckets for a policy's batch limit (graphs of other buckets dropped when the sizes change)."""
        if self.dg is not None:
            from moesim.serve.graphs import bucket_sizes

            sizes = bucket_sizes(max_batch)
            if sizes != self.dg.sizes:
                self.dg.sizes = sizes
                self.dg.reset()
            self.pg.set_max_seqs(max_batch)

    @contextlib.contextmanager
    def instance_context(self) -> Iterator[None]:
        """Run the calling thread's steps in this slice's green context, on a stream of its own (CUDA with
        ``sms``); a fleet GPU's thread makes its device current; nothing on CPU. Entered by the runtime in the
        instance's host thread (and by ``moesim.serve.run`` to read the timeline); the calling thread's current
        device is restored on exit."""
        with self.on_device():
            if not self.concurrent:
                yield
                return
            if not self.sms:  # concurrent without an SM partition: a stream of its own only
                stream = torch.cuda.Stream(self.device)
                with torch.cuda.stream(stream):
                    yield
                stream.synchronize()
                return
            if self._green is None:
                self._green = _green_context(self.sms, self._device_index())
            with _in_green(self._green, self.device):
                yield

    def _device_index(self) -> int:
        return self.gpu_index if self.gpu_index is not None else (self.device.index or 0)

    @contextlib.contextmanager
    def slice_context(self, sms: int) -> Iterator[None]:
        """Run the calling thread's steps on ``sms`` SMs (a CUDA green context of its own, kept until the process
        exits, and a stream of it; waits synchronise that stream): the tables of a MIG slice measured on this
        engine. Nothing on CPU."""
        if not self.cuda:
            yield
            return
        if not hasattr(self, "_slice_greens"):
            self._slice_greens: dict[int, Any] = {}
        if sms not in self._slice_greens:
            self._slice_greens[sms] = _green_context(sms, self._device_index())
        sync = self.x._sync
        self.x._sync = lambda: torch.cuda.current_stream().synchronize()
        try:
            with _in_green(self._slice_greens[sms], self.device):
                yield
        finally:
            self.x._sync = sync

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

    def prefill_fetch_table(self, reps: int = 3, tokens: tuple[int, ...] = PREFILL_FETCH_BUCKETS,
                            n_tenants: tuple[int, ...] = PREFILL_FETCH_TENANTS,
                            prefixes: tuple[int, ...] = FETCH_PREFIXES) -> list[dict[str, Any]]:
        """The parts of a piecewise fetching prefill (``PrefillGraphs.run_split``), timed on the runtime's
        tenant-as-data code with every expert resident (call with no host experts laid out), for each token bucket
        of ``tokens`` × tenant count k of ``n_tenants``: k sequences (tenants 0 … k − 1) from context 0 filling
        the bucket exactly (bucket // k tokens each, the remainder to the first; no pad rows). All times are
        seconds, medians of ``reps`` after one untimed call, host wall time to a device sync:

        * ``prefill_eager_layer_s``: the decoder layers run eagerly (``mixed_layers`` over all L layers) with a
          host sync before every MoE layer's experts, divided by L: a host layer of a fetching prefill without
          its copies;
        * ``prefill_eager_nosync_layer_s``: the same without the syncs, divided by L;
        * ``prefill_eager_head_s``: the final norm, lm_head of each sequence's last row and argmax (``mixed_head``);
        * ``prefill_graph_s``: the whole prefill as the runtime runs a resident one (``PrefillGraphs.run``: plan,
          buffer fill, the bucket graph's replay; eager on the CPU; ``graph`` says which);
        * ``prefix_<j>_s``: the prefix of j layers as a fetching prefill runs it (plan, buffer fill, the prefix
          graph's replay of the embedding and layers 0 … j − 1; ``prefix_graph`` False: run eagerly), a column per
          j of ``prefixes`` below L (none below L: L // 2).

        Rows: ``tokens`` (the bucket), ``n_tenants``, ``n_seqs``, ``n_layers``, the times above, ``graph``,
        ``prefix_graph``. A fetching prefill of prefix j ≈ ``prefix_<j>_s`` + (L − j) × ``prefill_eager_layer_s``
        + ``prefill_eager_head_s`` + its exposed copies. The prefix graphs it captures are dropped afterwards."""
        from moesim.serve.graphs import (
            make_prefill_buffers,
            mixed_context,
            mixed_embed,
            mixed_head,
            mixed_layers,
        )

        pg, x, eng = self.pg, self.x, self.eng
        if pg is None:
            return []
        L = self.model.n_layers
        js = [j for j in prefixes if 0 < j < L] or ([L // 2] if L > 1 else [])
        graphs = self.cuda and x.execution == "graphs"
        self.reserve_kv(max(pg.bucket(t) for t in tokens) + 1)
        probe = torch.zeros(2, device=self.device)
        reader = HostReader(self.device)  # the routing read as the runtime's fetcher does it

        def sync_hook(i: int) -> None:
            reader.read(probe)

        def timed(fn: Any) -> float:
            return self._median_s(fn, reps)

        capture, pg.capture = pg.capture, graphs
        had = set(pg.prefix)
        cache, st = x.cache, pg.stacked
        rows = []
        try:
            for tok in tokens:
                for k in n_tenants:
                    k = min(k, self.n_tenants, tok, pg.n_slots - 1)
                    b = pg.bucket(tok)
                    new = tuple(b // k + (b % k if i == 0 else 0) for i in range(k))
                    p = pg.plan(tuple(range(k)), new)
                    if p is None:
                        continue
                    buf = make_prefill_buffers(p, self.device, pg.ids(p))
                    c0 = mixed_context(eng, st, buf)
                    x0 = mixed_embed(eng, st, buf)
                    eager = timed(lambda b=buf, c=c0, h=x0: mixed_layers(eng, st, b, cache, h, 0, L, c, sync_hook))
                    nosync = timed(lambda b=buf, c=c0, h=x0: mixed_layers(eng, st, b, cache, h, 0, L, c))
                    head = timed(lambda b=buf, c=c0, h=x0: mixed_head(eng, st, b, h, c))
                    r0 = pg.stats["replays"]
                    full = timed(lambda p=p: pg.run(p, cache, graphs))
                    row = {"tokens": p.bucket, "n_tenants": k, "n_seqs": k, "n_layers": L,
                           "prefill_eager_layer_s": eager / L, "prefill_eager_nosync_layer_s": nosync / L,
                           "prefill_eager_head_s": head, "prefill_graph_s": full,
                           "graph": pg.stats["replays"] > r0, "prefix_graph": False}
                    r0 = pg.stats["prefix_replays"]
                    for j in js:
                        row[f"prefix_{j}_s"] = timed(lambda p=p, j=j: pg.run_split(p, cache, graphs, layers=j,
                                                                                   tail=False))
                    row["prefix_graph"] = pg.stats["prefix_replays"] > r0
                    rows.append(row)
        finally:
            pg.capture = capture
            for key in set(pg.prefix) - had:  # the table's prefixes: not the layout's
                del pg.prefix[key]
        return rows

    def _hook(self, i: int) -> None:
        ev = self._swap_events[i + 1]
        torch.cuda.current_stream().wait_event(ev)

    # ---- steps ------------------------------------------------------------------------------------
    def _split_layer(self) -> int:
        """Layers a fetching decode step runs before its first host layer (0: no piecewise step)."""
        from moesim.serve.graphs import first_host_layer

        j = first_host_layer(self.eng)
        return j if j < self.model.n_layers else 0

    def _execute(self, batch: tuple[SeqWork, ...]) -> StepCost:
        x, eng = self.x, self.eng
        f = self.fetcher
        streamed = self._swap_events is not None
        dg = self.dg
        if (f is not None and self.split_fetch and not dg.broken and not streamed
                and all(w.new_tokens == 1 for w in batch) and self._split_layer() > 0):
            # a fetching decode step, piecewise: prefix graph, then the host layers eagerly with the fetcher
            tenants, contexts = tuple(w.tenant for w in batch), tuple(w.context for w in batch)
            done = self._piecewise(dg, f, dg.rows_needed(sum(w.context + 1 for w in batch)),
                                   lambda graphs: dg.run_split(tenants, contexts, x.cache, graphs),
                                   {"pad_rows": "pad_rows", "prefix_captures": "prefix_captures"},
                                   "split_steps", "prefix_graph_steps")
            return done if done is not None else self._execute(batch)
        pg = self.pg
        if (f is not None and self.split_fetch and self.bucket_prefill and not streamed
                and all(w.context == 0 for w in batch) and self._split_layer() > 0):
            # a fetching prefill, piecewise: its bucket's prefix graph, then the host layers eagerly with the fetcher
            p = pg.plan(tuple(w.tenant for w in batch), tuple(w.new_tokens for w in batch))
            if p is not None:
                done = self._piecewise(pg, f, p.bucket, lambda graphs: pg.run_split(p, x.cache, graphs),
                                       {"prefill_pad_tokens": "pad_tokens", "prefill_prefix_captures": "prefix_captures"},
                                       "prefill_split_steps", "prefill_prefix_graph_steps")
                return done if done is not None else self._execute(batch)
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
        if pg is not None and self.bucket_prefill and not pg.broken and f is None and not streamed and all(
                w.context == 0 for w in batch):
            t0 = time.perf_counter()
            p = pg.plan(tuple(w.tenant for w in batch), tuple(w.new_tokens for w in batch))
            if p is not None:
                x._ensure_cache(p.bucket)
                graphs = x.execution == "graphs"
                pg.capture = self.capture and graphs
                before = dict(pg.stats)
                try:
                    graph = pg.run(p, x.cache, graphs)
                except Exception as exc:
                    if not self.cuda:
                        raise
                    if not pg.broken:
                        pg.broken = f"{type(exc).__name__}: {first_line(exc)}"
                    x._sync()
                    return self._execute(batch)  # the executor's path from now on (pg.broken)
                x._sync()
                self.stats["prefill_pad_tokens"] += pg.stats["pad_tokens"] - before["pad_tokens"]
                self.stats["prefill_captures"] += pg.stats["captures"] - before["captures"]
                if graph:
                    self.stats["graph_steps"] += 1
                    self.stats["prefill_bucket_steps"] += 1
                else:
                    self.stats["eager_steps"] += 1
                return self._done(t0, 0, 0.0)
        si = x._inputs(batch)
        x._ensure_cache(si.meta.kv_tokens)
        t0 = time.perf_counter()
        if x.execution == "graphs" and f is None and not streamed and not self.eager_only and (
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
        return self._fetched(t0, f)

    def _piecewise(self, g: Any, f: Fetcher, rows: int, run: Any, counters: dict[str, str], split_key: str,
                   graph_key: str) -> StepCost | None:
        """A fetching step run piecewise by ``g`` (``DecodeGraphs`` or ``PrefillGraphs``): ``run(graphs)`` replays the
        prefix graph (or runs it eagerly) and the rest eagerly with the fetcher ``f``; the cache is made to hold
        ``rows``. ``counters``: backend stat → ``g``'s stat whose growth it adds; ``split_key`` counts the step,
        ``graph_key`` (else ``eager_steps``) whether a prefix graph was replayed. None when a prefix capture failed
        (``g.prefix_broken``: the caller runs the step again, eagerly; later steps run the prefix eagerly)."""
        x = self.x
        t0 = time.perf_counter()
        x._ensure_cache(rows)
        graphs = x.execution == "graphs"
        g.capture = self.capture and graphs
        before = dict(g.stats)
        f.reset()
        try:
            graph = run(graphs)
        except Exception:
            if not g.prefix_broken:
                raise
            x._sync()
            return None
        x._sync()
        for mine, theirs in counters.items():
            self.stats[mine] += g.stats[theirs] - before[theirs]
        self.stats[split_key] += 1
        self.stats[graph_key if graph else "eager_steps"] += 1
        return self._fetched(t0, f)

    def _fetched(self, t0: float, f: Fetcher | None) -> StepCost:
        """``_done`` for a step that ran with the fetcher ``f`` (None: none): its fetches, bytes and copy seconds are
        counted."""
        if f is None:
            return self._done(t0, 0, 0.0)
        n, fs = f.count, f.copy_s()
        self.stats["expert_fetches"] += n
        self.stats["fetch_bytes"] += f.bytes
        self.stats["fetch_copy_s"] += fs
        return self._done(t0, n, fs)

    def _done(self, t0: float, fetches: int, fetch_s: float) -> StepCost:
        t1 = time.perf_counter()
        d = t1 - t0
        self.stats["steps"] += 1
        self.stats["step_s"] += d
        if self.trace is not None:
            self.trace.append(("step", -1, t0, t1, fetches))
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
                "moe_kernel": self.moe_kernel, "green_context_sms": self.sms,
                # how a fetching step reads each host layer's routing (``HostReader``; before it: ``tolist``)
                "routing_read": "pinned" if self.cuda else "tolist",
                "build_s": self.x.build_s, **self.stats}
        if self.cuda:
            info["gpu_name"] = torch.cuda.get_device_name()
            info["max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
            info["cuda_device"] = torch.cuda.current_device()
        if self.x.capture_errors:
            info["capture_errors"] = list(self.x.capture_errors)
        if self.pg is not None:
            info["prefill_buckets"] = sorted(self.pg.graphs)
            info["prefill_slots"] = self.pg.n_slots
            if self.pg.broken:
                info["prefill_capture_error"] = self.pg.broken
            info["prefill_prefix_graphs"] = sorted(self.pg.prefix)
            if self.pg.prefix_broken:
                info["prefill_prefix_capture_error"] = self.pg.prefix_broken
        if self.dg is not None:
            info["decode_buckets"] = list(self.dg.sizes)
            info["bucket_graphs"] = len(self.dg.graphs)
            if self.dg.broken:
                info["bucket_capture_error"] = self.dg.broken
            info["fetch_graphs"] = self.fetch_graphs
            info["split_fetch"] = self.split_fetch
            info["prefix_graphs"] = len(self.dg.prefix)
            if self.dg.prefix_broken:
                info["prefix_capture_error"] = self.dg.prefix_broken
        return info



def _green_context(sms: int, device_index: int) -> Any:
    """A CUDA green context of ``sms`` SMs on device ``device_index``."""
    from torch.cuda.green_contexts import GreenContext

    try:
        return GreenContext.create(num_sms=sms, device_id=device_index)
    except TypeError:
        return GreenContext.create(sms, device_index)


@contextlib.contextmanager
def _in_green(g: Any, device: torch.device) -> Iterator[None]:
    """Make green context ``g`` current and run on a stream of it; synchronise that stream on exit."""
    g.set_context()
    try:
        stream = g.Stream() if hasattr(g, "Stream") else torch.cuda.Stream(device)
        with torch.cuda.stream(stream):
            yield
        stream.synchronize()
    finally:
        g.pop_context()


#: The backend's calls that touch the device (run with a fleet GPU's device current).
_ON_DEVICE = ("setup", "reset_stats", "warm_up", "reserve_kv", "prepare", "swap", "finish_swap", "prefill",
              "begin_decode", "decode_step", "end_decode", "describe", "decode_table",
              "prefill_table", "sync_table", "fetch_table", "link_share", "timeline")


def _on_device(backend: TorchBackend, fn: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        with backend.on_device():
            return fn(*args, **kwargs)

    call.__doc__ = fn.__doc__
    return call


def whole_model_swap(plan: InstancePlan, model: ModelSpec) -> bool:
    """A plan whose swap moves more than a non-expert set with one set resident (``swap``: the whole model)."""
    return plan.nonexpert_slots == 1 and plan.swap_bytes > model.nonexpert_bytes * 1.001


def physical_residency(plan: InstancePlan, model: ModelSpec) -> Residency:
    """The expert layout the device holds for ``plan``.

    For a whole-model swap (``swap``) only the loaded tenant's experts are in memory: every tenant's groups are
    laid out as one set of slots shared by all tenants (the first tenant's group sizes), which the swap
    overwrites (its bytes beyond the non-expert set are copied through a scratch buffer). Otherwise the plan's
    residency itself.
    """
    res = plan.residency
    if not whole_model_swap(plan, model):
        return res
    everyone = frozenset(t for g in res.groups for t in g.tenants)
    first = min(everyone)
    groups = tuple(dataclasses.replace(g, tenants=everyone) for g in res.groups if g.tenants == frozenset({first}))
    return dataclasses.replace(res, groups=groups)


def _localise(plan: InstancePlan, local: dict[int, int]) -> InstancePlan:
    """``plan`` with its tenants renumbered by ``local`` (a slice's engine holds only its tenants' sets)."""
    res = plan.residency
    groups = tuple(dataclasses.replace(g, tenants=frozenset(local[t] for t in g.tenants if t in local))
                   for g in res.groups if any(t in local for t in g.tenants))
    return dataclasses.replace(plan, residency=dataclasses.replace(res, groups=groups),
                               tenants=frozenset(local[t] for t in plan.tenants),
                               initial_resident=tuple(local[t] for t in plan.initial_resident if t in local))
