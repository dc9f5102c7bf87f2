"""``executed``: a cost model that runs every step for real on a device and returns the measured time.

Imports torch; registered in ``moesim.cost.COST_MODELS`` when this module is imported (``moesim.cost``
itself never imports it, so the simulator stays torch-free).

Each ``step`` builds the packed batch (one ``SeqWork`` per sequence: its tenant's own non-expert set, its
new tokens over its context) and runs ``MoEEngine.step`` through every layer: attention over a KV cache of
exactly the batch's rows (one preallocated buffer of random contents, regrown when a batch needs more),
the tenant's router, the experts as the residency lays them out (GPU copies in one grouped GEMM, host
copies really copied from pinned memory per use), the tenant's lm_head. Time is taken with CUDA events
around the step and a synchronisation after it (``perf_counter`` on CPU).

``execution``:
  * ``graphs`` (CUDA): each step is captured into a CUDA graph keyed by its shape (tenant and new tokens
    per sequence, and the longest context rounded up to ``kv_bucket``), replayed once untimed after a
    capture, then replayed timed; later steps of the same shape copy their inputs (token ids, positions,
    cumulative lengths, cache slots) into the captured buffers and replay. That is how a serving engine
    runs (graphs captured ahead per shape bucket) and how the shipped profile was measured. A step that
    cannot be captured (host-expert fetches sync with the host) runs eagerly; the count is reported.
  * ``eager``: plain PyTorch launches, timed the same way.
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from moesim.calibrate.engine import KVCache, MoEEngine, StepInputs
from moesim.calibrate.timing import Timer
from moesim.cost import COST_MODELS
from moesim.cost.base import CostModel, DecodeRun, Residency, SeqWork, StepCost
from moesim.errors import UserError
from moesim.executor.layout import apply_residency, layout_key
from moesim.formats.profile import EXECUTION_CHOICES
from moesim.specs import GPUSpec, ModelSpec


class BudgetExceededError(RuntimeError):
    """The executor's wall-clock budget ran out in the middle of a run."""


@dataclass(frozen=True)
class ExecutedCostConfig:
    """How the executor runs steps.

    Attributes:
        device: ``cuda`` or ``cpu``.
        tenants: non-expert sets to build (tenants 0 … tenants-1).
        execution: ``graphs`` (CUDA-graph replays), ``eager`` or ``auto`` (graphs on CUDA, eager on CPU).
        moe_engine: ``grouped`` (one grouped GEMM per layer, no host sync), ``loop`` (one GEMM per active
            expert), ``triton`` (the fused MoE kernel and fused router/RoPE ops, ``moesim.kernels``) or
            ``auto``: grouped on CUDA, loop on CPU (where the grouped GEMM has no fast kernel).
        kv_bucket: graph shapes round the longest context up to a multiple of this (tokens).
        max_graphs: captured graphs kept (least recently used dropped).
        budget_s: wall seconds after which a step raises ``BudgetExceededError`` (0: none).
        seed: seed of the random weights.
        draw_experts: False: no expert weights until a layout is applied (several engines on one device).
    """

    name: str = "executed"
    device: str = "cuda"
    tenants: int = 1
    execution: str = "auto"
    moe_engine: str = "auto"
    kv_bucket: int = 256
    max_graphs: int = 48
    budget_s: float = 0.0
    seed: int = 0
    draw_experts: bool = True

    def __post_init__(self) -> None:
        if self.device not in ("cuda", "cpu"):
            raise UserError(f"device={self.device!r}: valid: cuda, cpu")
        if self.execution not in EXECUTION_CHOICES:
            raise UserError(f"execution={self.execution!r}: valid: {', '.join(EXECUTION_CHOICES)}")
        if self.moe_engine not in ("auto", "grouped", "loop", "triton"):
            raise UserError(f"moe_engine={self.moe_engine!r}: valid: auto, grouped, loop, triton")
        if self.tenants < 1 or self.kv_bucket < 1 or self.max_graphs < 1:
            raise UserError(f"tenants={self.tenants}, kv_bucket={self.kv_bucket}, max_graphs={self.max_graphs}: "
                            "each must be ≥ 1")


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    si: StepInputs  # the captured input buffers
    out: Any  # the captured output (next token ids), rewritten by each replay


@COST_MODELS.register("executed", ExecutedCostConfig)
class GPUExecutedCost(CostModel):
    """Measured step times of a real-shape MoE engine (see the module docstring).

    ``stop_hint_s``: set by the executing engine before a decode run whose batch an arrival can join;
    ``decode_run`` then executes only the steps up to the first that ends at or after it (the engine never
    uses later ones) and leaves the rest of ``end_s`` NaN.
    """

    name = "executed"

    def __init__(self, cfg: ExecutedCostConfig, model: ModelSpec, gpu: GPUSpec) -> None:
        super().__init__(model, gpu)
        self.cfg = cfg
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise UserError("device=cuda but torch sees no CUDA device; use device=cpu model=tiny (the CPU path)")
        self.device = torch.device(cfg.device)
        self.cuda = self.device.type == "cuda"
        self._timer = Timer(self.device)
        execution = cfg.execution if cfg.execution != "auto" else ("graphs" if self.cuda else "eager")
        if execution == "graphs" and not self.cuda:
            raise UserError("execution=graphs needs device=cuda")
        self.execution = execution
        t0 = time.perf_counter()
        moe = cfg.moe_engine if cfg.moe_engine != "auto" else ("grouped" if self.cuda else "loop")
        self.eng = MoEEngine(model, self.device, n_tenants=cfg.tenants, seed=cfg.seed, moe_engine=moe,
                             draw_experts=cfg.draw_experts)
        self.cache = KVCache(model, 1, self.device, self.eng.dtype, self.eng.gen)
        self.cache_rows = 1
        self._sync()
        self.build_s = time.perf_counter() - t0
        self._layout: tuple | None = None
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle() if execution == "graphs" else None
        self._deadline = time.perf_counter() + cfg.budget_s if cfg.budget_s > 0 else None
        self.stop_hint_s: float | None = None
        self.stats = {"steps": 0, "graph_captures": 0, "graph_replays": 0, "eager_steps": 0,
                      "capture_failures": 0, "swaps": 0, "layouts": 0, "decode_steps_skipped": 0,
                      "measured_s": 0.0}
        self.capture_errors: list[str] = []

    # ---- helpers ----------------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def set_deadline(self, deadline: float | None) -> None:
        """Steps after ``deadline`` (a ``time.perf_counter()`` value; None: no limit) raise ``BudgetExceededError``."""
        self._deadline = deadline

    def _check_budget(self) -> None:
        if self._deadline is not None and time.perf_counter() > self._deadline:
            budget = self.cfg.budget_s
            raise BudgetExceededError(f"executor deadline passed (budget_s={budget:g})")

    def _ensure_layout(self, residency: Residency) -> None:
        key = layout_key(residency)
        if key != self._layout:
            self._graphs.clear()  # captured graphs point at the old weights
            apply_residency(self.eng, residency, self.cfg.tenants)
            self._sync()
            self._layout = key
            self.stats["layouts"] += 1

    def _ensure_cache(self, rows: int) -> None:
        if rows > self.cache_rows:
            self._graphs.clear()  # graphs point at the old cache
            self.cache = None  # type: ignore[assignment]
            new_rows = max(rows, int(self.cache_rows * 1.25))
            self.cache = KVCache(self.model, new_rows, self.device, self.eng.dtype, self.eng.gen)
            self.cache_rows = new_rows

    def _timed(self, fn) -> float:
        return self._timer.once(fn)

    def _inputs(self, batch: tuple[SeqWork, ...]) -> StepInputs:
        for w in batch:
            if w.tenant >= self.cfg.tenants or w.tenant < 0:
                raise UserError(f"step for tenant {w.tenant} but the executor built {self.cfg.tenants} "
                                "non-expert sets; set tenants ≥ the workload's tenants")
        return self.eng.make_inputs([(w.tenant, w.new_tokens, w.context) for w in batch])

    # ---- graphs -----------------------------------------------------------------------------------
    def _graph_key(self, si: StepInputs) -> tuple:
        b = self.cfg.kv_bucket
        seqs = tuple(si.meta.seqs)
        return (tuple(si.segments), tuple(n for n, _ in seqs), -(-si.meta.max_k // b) * b)

    def _run_graph(self, si: StepInputs) -> float | None:
        key = self._graph_key(si)
        g = self._graphs.get(key)
        if g is not None:
            self._graphs.move_to_end(key)
            st = g.si
            st.ids.copy_(si.ids)
            st.pos.copy_(si.pos)
            st.meta.cu_q.copy_(si.meta.cu_q)
            st.meta.cu_k.copy_(si.meta.cu_k)
            st.meta.slots.copy_(si.meta.slots)
            self.stats["graph_replays"] += 1
            return self._timed(g.graph.replay)
        si.meta.max_k = key[2]  # an upper bound: the graph serves every context up to the bucket
        eng, cache = self.eng, self.cache
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                eng.step(si, cache)  # warm-up outside capture (lazy library handles)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, stream=stream):
                out = eng.step(si, cache)
        except Exception as exc:  # a step that syncs with the host cannot be captured
            self._sync()
            self.stats["capture_failures"] += 1
            if len(self.capture_errors) < 5:
                self.capture_errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            return None
        self._graphs[key] = _Graph(graph, si, out)
        while len(self._graphs) > self.cfg.max_graphs:
            self._graphs.popitem(last=False)
        self.stats["graph_captures"] += 1
        graph.replay()  # first replay untimed (uploads the graph)
        self._sync()
        self.stats["graph_replays"] += 1
        return self._timed(graph.replay)

    def reserve_kv(self, rows: int) -> None:
        """Allocate the KV cache for ``rows`` tokens now (so it is not regrown, and graphs not dropped, mid-run)."""
        self._ensure_cache(rows)

    def check_graph_reuse(self, residency: Residency, tenants: tuple[int, ...] = (0,), context: int = 100
                          ) -> bool | None:
        """A graph captured at one context, replayed with a later step's inputs, returns what eager returns.

        Runs a decode step of ``tenants`` at ``context`` (captured), another at ``context + 3`` (same shape
        bucket: replayed with copied inputs) and the latter eagerly; True when the next-token ids are equal.
        None when not executing graphs.
        """
        if self.execution != "graphs":
            return None
        self.step(tuple(SeqWork(t, 1, context) for t in tenants), residency)
        later = tuple(SeqWork(t, 1, context + 3) for t in tenants)
        self.step(later, residency)
        si = self._inputs(later)
        key = self._graph_key(si)
        g = self._graphs.get(key)
        if g is None:  # capture failed: eager steps, nothing to compare
            return None
        got = g.out.clone()
        si.meta.max_k = key[2]
        ref = self.eng.step(si, self.cache)
        self._sync()
        return bool(torch.equal(got, ref))

    # ---- the contract -----------------------------------------------------------------------------
    def step(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost:
        """Execute one step of ``batch`` on the device; its measured wall time (seconds) as ``overhead_s``.

        The measurement is not broken down: every other component of the returned ``StepCost`` is 0.
        """
        self._check_budget()
        self._ensure_layout(residency)
        si = self._inputs(batch)
        self._ensure_cache(si.meta.kv_tokens)
        self._sync()
        t = None
        if self.execution == "graphs" and not any(self.eng.host_in[i] for i in range(self.model.n_layers)):
            t = self._run_graph(si)
        if t is None:
            eng, cache = self.eng, self.cache
            t = self._timed(lambda: eng.step(si, cache))
            self.stats["eager_steps"] += 1
        self.stats["steps"] += 1
        self.stats["measured_s"] += t
        return StepCost(overhead_s=t)

    def decode_run(self, decode_tenants: tuple[int, ...], context0: tuple[int, ...], n_steps: int,
                   residency: Residency) -> DecodeRun:
        """Execute the run's decode steps one by one (contexts growing by one); measured cumulative ends.

        With ``stop_hint_s`` set, steps after the first one ending at or after the hint are not executed
        (their ends are NaN); the hint is consumed.
        """
        hint, self.stop_hint_s = self.stop_hint_s, None
        ends = np.full(n_steps, np.nan)
        t = 0.0
        for k in range(n_steps):
            batch = tuple(SeqWork(tn, 1, c + k) for tn, c in zip(decode_tenants, context0, strict=True))
            t += self.step(batch, residency).total_s
            ends[k] = t
            if hint is not None and t >= hint:
                self.stats["decode_steps_skipped"] += n_steps - k - 1
                break
        return DecodeRun(ends, StepCost(overhead_s=t))

    def swap_s(self, nbytes: float, residency: Residency, bandwidth_fraction: float = 1.0) -> float:
        """Copy ``nbytes`` host→device for real (pinned host memory unless the slice says pageable).

        Returns the measured copy time divided by the slice's link share and ``bandwidth_fraction`` (a
        policy parameter that models a slower swap than the link allows, applied as the simulator does).
        """
        n = int(nbytes)
        if n <= 0:
            return 0.0
        pinned = residency.slice.pinned and self.cuda
        host = torch.empty(n, dtype=torch.uint8, pin_memory=pinned)
        host.fill_(1)  # touched: no first-use page faults inside the timed copy
        dev = torch.empty(n, dtype=torch.uint8, device=self.device)
        m = min(n, 1 << 20)
        dev[:m].copy_(host[:m])  # warm the copy path
        self._sync()
        t = self._timed(functools.partial(dev.copy_, host, non_blocking=pinned))
        del host, dev
        self.stats["swaps"] += 1
        return t / (residency.slice.link_fraction * bandwidth_fraction)

    def describe(self) -> dict[str, Any]:
        """Execution mode, device, build time and counters."""
        info: dict[str, Any] = {"execution": self.execution, "moe_engine": self.eng.moe_engine,
                                "device": str(self.device),
                                "build_s": self.build_s, **self.stats}
        if self.cuda:
            info["gpu_name"] = torch.cuda.get_device_name(self.device)
            info["max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
        if self.capture_errors:
            info["capture_errors"] = list(self.capture_errors)
        return info
