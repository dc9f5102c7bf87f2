"""The calibration run: build the model, check it, time every op over its grid, write the profile.

Sections, in order (each point is skipped when a resumed profile already has it; an out-of-memory at one
size is recorded as ``oom`` and the run goes on; past ``budget_s`` points are recorded as ``budget``):
ceilings (device copy, bf16 GEMM) → correctness checks → per-layer dense ops over tokens → attention
prefill/decode grids → whole-model steps on the grid → host link → held-out validation steps →
green-context slices.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from moesim.calibrate.config import CalibrateConfig
from moesim.calibrate.engine import KVCache, MoEEngine
from moesim.calibrate.grids import Grids, make_grids, spread_contexts
from moesim.calibrate.system import discover
from moesim.calibrate.timing import Timer, Timing
from moesim.calibrate.validate import describe, draw_heldout_batches, validation_batches
from moesim.errors import UserError, first_line
from moesim.formats.profile import Row, profile_stem, read_profile, write_profile
from moesim.specs import get_model

#: Ops timed as CUDA-graph replays when ``graphs`` is on (copies, overlap and the loop engine stay eager).
GRAPH_OPS = frozenset({"attn_proj", "router", "attn_prefill", "attn_decode", "moe_grouped", "expert_one", "lm_head",
                       "embed", "step", "concat_qkv", "concat_route", "attn_mixed", "attn_mixed_parts",
                       "step_mixed"})
L2_ROTATE_BYTES = 512 * 1024**2  # rotate inputs until a repeat touches this much: far beyond the 50 MB L2

Setup = Callable[[], tuple[Callable[[], object], int]]  # builds (fn, inner calls per fn) for one point


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()



def check_plan_fits(plan: Any, spec: Any, path: str) -> None:
    """A plan for another model's shapes: one line before any timing (the whole calibration ran, then its
    consolidate section failed and the profile was written without the plan's layout)."""
    mine = (spec.n_moe_layers, spec.n_experts, spec.expert_bytes)
    if (plan.n_layers, plan.n_experts, plan.expert_bytes) != mine:
        raise UserError(f"plan={path}: a plan for {plan.model!r} ({plan.n_layers} MoE layers × {plan.n_experts} "
                        f"experts of {plan.expert_bytes:,} bytes) does not fit model={spec.name} ({mine[0]} × "
                        f"{mine[1]} of {mine[2]:,} bytes); build one for it (python -m moesim.consolidate "
                        f"synthetic={spec.name} …) or calibrate model={plan.model}")

class Recorder:
    """Collects rows, resumes from an existing profile, flushes to disk now and then."""

    def __init__(self, path: Path, meta: dict[str, Any], resume: bool, budget_s: float) -> None:
        self.path, self.meta = path, meta
        self.rows: list[Row] = []
        self.errors: list[str] = []
        self.t0 = time.monotonic()
        self.budget_s = budget_s
        self._last_flush = self.t0
        self.resumed = 0
        if resume and path.is_file():
            try:
                df, old = read_profile(path)
            except UserError as exc:
                print(f"resume: ignoring {path}: {exc}", file=sys.stderr)
            else:
                if old.get("gpu") == meta["gpu"] and old.get("model") == meta["model"]:
                    keep = df[df["status"].isin(["ok", "oom"])]
                    from moesim.formats.profile import frame_to_rows

                    self.rows = frame_to_rows(keep)
                    self.resumed = len(self.rows)
                    # summaries of resumed points (ceilings, host link, checks) stay unless re-measured
                    fresh = {"schema_version", "rows", "rows_ok", "config", "command", "system", "elapsed_s",
                             "errors"}
                    for k, v in old.items():
                        if k not in fresh:
                            meta.setdefault(k, v)
        self.done = {r.key() for r in self.rows}

    def over_budget(self) -> bool:
        return self.budget_s > 0 and time.monotonic() - self.t0 > self.budget_s

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.done.add(row.key())
        if time.monotonic() - self._last_flush > 30:
            self.flush()

    def flush(self) -> None:
        self.meta["errors"] = self.errors[-50:]
        self.meta["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        write_profile(self.path, self.rows, self.meta)
        self._last_flush = time.monotonic()


class Calibration:
    """One calibration run (see the module docstring)."""

    def __init__(self, cfg: CalibrateConfig) -> None:
        self.cfg = cfg
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise UserError("device=cuda: no CUDA device visible; use device=cpu model=tiny for the CPU path")
        self.device = torch.device("cuda", torch.cuda.current_device()) if cfg.device == "cuda" \
            else torch.device("cpu")
        self.cuda = self.device.type == "cuda"
        # CPU path (CI): one thread (two spinning threads make tiny GEMMs 500x slower on a shared box) and
        # float32 (bf16 GEMMs are emulated on most CPUs); the GPU path is bf16 as served.
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        if not self.cuda:
            torch.set_num_threads(1)
        self.spec = get_model(cfg.model)
        self.grid = cfg.grid if cfg.grid != "auto" else ("full" if self.cuda else "quick")
        self.grids: Grids = make_grids(self.grid)
        self.system = discover(self.device)
        self.gpu = self.system["gpu"]
        self.sms = int(self.system["sms"])
        max_reps = cfg.max_reps if self.cuda else min(cfg.max_reps, 5)
        target = cfg.target_s if self.cuda else min(cfg.target_s, 0.01)
        self.timer = Timer(self.device, cfg.min_reps, max_reps, target)
        self.graphs = cfg.graphs and self.cuda
        self.in_slice = False  # inside a green context: capture on its current stream
        self.kernel_tag = ".triton" if cfg.moe_kernel == "triton" else ""  # the faster engine's own profile
        stem = profile_stem(self.gpu, self.spec.name, "graphs" if self.graphs else "eager") + self.kernel_tag
        self.out = cfg.out_dir()
        self.path = self.out / f"{stem}.parquet"
        self.meta: dict[str, Any] = {
            "gpu": self.gpu, "model": self.spec.name, "model_config": self.spec.source, "derived": False,
            "sms": self.sms,
            "system": self.system, "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "command": "python -m moesim.calibrate " + " ".join(sys.argv[1:]),
            "time_unit": "seconds; per decoder layer where per_layer == 1",
            "dtype": str(self.dtype).removeprefix("torch."),
            "emulated": {},
            "checks": {},
            "execution": "graphs" if self.graphs else "eager",
            "graph_fallbacks": [],
        }
        self.plan = None
        if cfg.plan:
            from moesim.consolidation.plan import load_plan

            self.plan = load_plan(cfg.plan)
            check_plan_fits(self.plan, self.spec, cfg.plan)
            self.meta["plan"] = {"path": cfg.plan, "summary": self.plan.summary(), "variants": self.plan.n_variants}
        self.rec = Recorder(self.path, self.meta, cfg.resume, cfg.budget_s)
        self.eng: MoEEngine | None = None

    # ---- one point ------------------------------------------------------------------------------
    def point(self, op: str, setup: Setup, *, sms: int | None = None, batch: int = 1, tokens: int = 0,
              context: int = 0, pinned: int = -1, nbytes: int = 0, per_layer: int = 0,
              reps: tuple[int, int] | None = None) -> Timing | None:
        base = Row(self.gpu, self.spec.name, op, self.sms if sms is None else sms, batch, tokens, context,
                   pinned, nbytes, per_layer=per_layer)
        if base.key() in self.rec.done:
            return None
        if self.rec.over_budget():
            self.rec.add(Row(**{**_asdict(base), "status": "budget"}))
            return None
        try:
            fn, inner = setup()
            if self.graphs and op in GRAPH_OPS:
                fn = self.capture(fn, f"{op} b={batch} t={tokens} c={context} sms={base.sms}")
            t = self.timer.measure(fn, *(reps or (None, None)))
            del fn
        except Exception as exc:  # an OOM or a kernel refusing a shape: record it, go on
            status = "oom" if _is_oom(exc) else "error"
            if status == "error":
                self.rec.errors.append(f"{op} b={batch} t={tokens} c={context} sms={base.sms}: "
                                       f"{type(exc).__name__}: {first_line(exc)}")
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            self.rec.add(Row(**{**_asdict(base), "status": status}))
            return None
        self.rec.add(Row(**{**_asdict(base), "time_s_median": t.median_s / inner,
                            "time_s_p10": t.p10_s / inner, "time_s_p90": t.p90_s / inner, "n": t.n}))
        return Timing(t.median_s / inner, t.p10_s / inner, t.p90_s / inner, t.n)

    def capture(self, fn: Callable[[], object], what: str) -> Callable[[], object]:
        """``fn`` captured in a CUDA graph (its replay is what gets timed); eager ``fn`` if capture fails."""
        try:
            if self.in_slice:  # the green context's own stream: a fresh one could belong to the whole GPU
                stream = torch.cuda.current_stream()
                fn()
                fn()
            else:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    fn()
                    fn()
                torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                fn()
            return graph.replay
        except Exception as exc:  # an op that syncs with the host cannot be captured: time it eagerly
            torch.cuda.synchronize()
            self.meta["graph_fallbacks"].append(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            return fn

    # ---- sections -------------------------------------------------------------------------------
    def run(self) -> Path:
        """Run every section and write the profile; returns its path."""
        cfg, g = self.cfg, self.grids
        print(f"calibrating {self.spec.name} on {self.system.get('gpu_name')} ({self.gpu}, {self.sms} SMs), "
              f"grid={self.grid}, resumed {self.rec.resumed} points", flush=True)
        self.ceilings()
        t0 = time.monotonic()
        n_tenants = max(cfg.tenants, self.plan.n_variants if self.plan else 0)
        self.eng = MoEEngine(self.spec, self.device, n_tenants=n_tenants, seed=cfg.seed, dtype=self.dtype,
                             balanced_routing=cfg.balanced_routing, moe_engine=cfg.moe_kernel)
        self.meta["balanced_routing"] = cfg.balanced_routing
        if cfg.moe_tuning and self.eng.moe_engine == "triton":  # the engine the kernel benchmark tuned
            from moesim.kernels import fused_moe as fm
            from moesim.kernels.regimes import load_tuning

            tun = load_tuning(cfg.moe_tuning)
            fm.CONFIGS[:] = [(int(b), fm.MoEConfig(**c)) for b, c in tun["configs"]]
            self.eng.triton_max_assign = tun.get("max_assign")
            self.eng.prefill_attn = tun.get("prefill_attn", "flash")
            if self.eng.prefill_attn == "cudnn":
                self.eng.cudnn_min_tokens = int(tun["cudnn_min_tokens"])
            self.meta["moe_tuning"] = tun
        if cfg.balanced_routing:  # every MoE layer routes on its own noise rows (engine.ROUTE_LAYER_STRIDE)
            from moesim.calibrate.engine import ROUTE_LAYER_STRIDE

            self.eng.route_layer_stride = ROUTE_LAYER_STRIDE
            self.meta["route_layer_stride"] = ROUTE_LAYER_STRIDE
        if self.cuda:
            torch.cuda.synchronize()
        self.meta["build_s"] = round(time.monotonic() - t0, 2)
        self.meta["weights_bytes_on_device"] = (
            sum(w.numel() * w.element_size() for w in self.eng.w_in + self.eng.w_out if w is not None)
            + sum(t.nbytes() for t in self.eng.tenants))
        self.meta["nonexpert_set_bytes"] = self.eng.tenants[0].nbytes()
        self.checks()
        self.meta["attention_backend"] = self.eng.attn_backend
        self.meta["moe_engine"] = self.eng.moe_engine
        if self.eng.moe_engine == "triton":  # where the fused engine changes tiles or hands over to the grouped GEMM
            from moesim.kernels.fused_moe import regime_starts

            self.meta["moe_regimes"] = regime_starts(self.spec.top_k, self.eng.triton_max_assign)
        self.meta["fused_ops"] = bool(self.eng.fused_ops)
        self._section(self.dense_ops)
        self._section(self.attention_grids)
        self._section(self.tenant_ops)
        self._section(self.steps)
        self._section(self.mixed_steps)
        if cfg.host:
            self._section(self.host_link)
        if self.plan is not None:  # the tables are the shared layout's; the plan's layout is validated last
            if cfg.slices:
                self._section(self.slices)
            self._section(self.consolidate)
            if cfg.validate:
                self._section(self.validation)
        else:
            if cfg.validate:  # always runs, whatever the budget: it is the check of everything above
                self._section(self.validation)
                if cfg.heldout_seed >= 0:
                    self._section(self.validation_drawn)
            if cfg.slices:
                self._section(self.slices)
        self.meta["grids"] = {k: v for k, v in g.__dict__.items() if k != "slice_points"}
        self.rec.flush()
        return self.path

    def _section(self, fn: Callable[[], None]) -> None:
        """Run one section; a failure is recorded in the metadata and the run goes on."""
        try:
            fn()
        except Exception as exc:  # one broken section must not lose the others' measurements
            msg = f"section {fn.__name__} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            print(msg, flush=True)
            self.rec.errors.append(msg)
        self.rec.flush()
        self._free()

    def _free(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    def ceilings(self) -> None:
        """Device copy bandwidth (read + write) and bf16 GEMM rate, measured in this run."""
        g, dev = self.grids, self.device

        def copy() -> tuple[Callable[[], object], int]:
            src = torch.empty(g.copy_bytes // 2, dtype=torch.bfloat16, device=dev).normal_()  # bytes, any dtype
            dst = torch.empty_like(src)
            return (lambda: dst.copy_(src)), 1

        def gemm() -> tuple[Callable[[], object], int]:
            a = torch.empty((g.gemm_n, g.gemm_n), dtype=self.dtype, device=dev).normal_()
            b = torch.empty_like(a).normal_()
            return (lambda: a @ b), 1

        t = self.point("ceil_d2d_copy", copy, nbytes=g.copy_bytes)
        if t:
            self.meta["ceiling_copy_Bps"] = 2 * g.copy_bytes / t.median_s
        t = self.point("ceil_gemm", gemm, tokens=g.gemm_n)
        if t:
            self.meta["ceiling_gemm_flops"] = 2 * g.gemm_n**3 / t.median_s
        print(f"ceilings: copy {self.meta.get('ceiling_copy_Bps', float('nan')) / 1e12:.2f} TB/s (read+write), "
              f"GEMM {self.meta.get('ceiling_gemm_flops', float('nan')) / 1e12:.0f} TFLOP/s", flush=True)

    def checks(self) -> None:
        """Attention backend against per-sequence SDPA, grouped experts against the loop: relative error."""
        eng = self.eng
        assert eng is not None
        s = self.spec
        seqs = [(0, 7, 0), (0, 1, 13), (min(1, len(eng.tenants) - 1), 5, 9), (0, 1, 40)]
        si = eng.make_inputs(seqs)
        N = int(si.ids.shape[0])
        gen = eng.gen
        qh = torch.empty((N, s.n_heads, s.head_dim), device=self.device, dtype=eng.dtype).normal_(generator=gen)
        kh = torch.empty((N, s.n_kv_heads, s.head_dim), device=self.device, dtype=eng.dtype).normal_(generator=gen)
        vh = torch.empty_like(kh).normal_(generator=gen)
        cache = KVCache(s, si.meta.kv_tokens, self.device, eng.dtype, gen, n_layers=1)
        ref = eng.attention(qh.float(), kh.float(), vh.float(), si.meta, cache.k[0].float(), cache.v[0].float(),
                            backend="sdpa")
        if eng.attn_backend == "flash":
            try:
                out = eng.attention(qh, kh, vh, si.meta, cache.k[0], cache.v[0]).float()
                err = float((out - ref).norm() / ref.norm())
            except Exception as exc:  # a missing or refusing kernel: fall back
                err = float("inf")
                self.rec.errors.append(f"flash attention failed: {first_line(exc)}")
            self.meta["checks"]["attention_flash_vs_fp32_rel_err"] = err
            if not err < 2e-2:
                print(f"flash varlen attention unusable (rel err {err}); falling back to per-sequence SDPA",
                      flush=True)
                eng.attn_backend = "sdpa"
        h = eng.random_hidden(64)
        first_moe = next(i for i in range(s.n_layers) if eng.is_moe(i))
        hh, ti, tw = eng.router(h, 0, first_moe)
        ref_moe = eng.moe(hh, ti, tw, first_moe, engine="loop").float()
        try:
            got = eng.moe(hh, ti, tw, first_moe, engine="grouped").float()
            err = float((got - ref_moe).norm() / ref_moe.norm())
        except Exception as exc:  # a missing or refusing kernel: fall back
            err = float("inf")
            self.rec.errors.append(f"grouped GEMM failed: {first_line(exc)}")
        self.meta["checks"]["moe_grouped_vs_loop_rel_err"] = err
        if not err < 2e-2 and eng.moe_engine == "grouped":
            print(f"grouped GEMM unusable (rel err {err}); using one GEMM per expert", flush=True)
            eng.moe_engine = "loop"
        if eng.moe_engine == "triton":
            try:
                got = eng.moe(hh, ti, tw, first_moe, engine="triton").float()
                err = float((got - ref_moe).norm() / ref_moe.norm())
            except Exception as exc:  # a kernel that fails to compile: the grouped GEMM, and say so
                err = float("inf")
                self.rec.errors.append(f"triton MoE failed: {first_line(exc)}")
            self.meta["checks"]["moe_triton_vs_loop_rel_err"] = err
            if not err < 2e-2:
                print(f"triton MoE unusable (rel err {err}); using the grouped GEMM", flush=True)
                eng.moe_engine = "grouped"
                eng.fused_ops = False
        # a whole step must produce finite logits (random weights, never zeros)
        cache = KVCache(s, si.meta.kv_tokens, self.device, eng.dtype, gen)
        out = eng.step(si, cache)
        self.meta["checks"]["step_output_in_vocab"] = bool(((out >= 0) & (out < s.vocab)).all())
        if self.graphs:  # a captured step must replay to the eager result
            n_before = len(self.meta["graph_fallbacks"])
            holder: list[torch.Tensor] = []
            replay = self.capture(lambda: holder.append(eng.step(si, cache)), "whole step (check)")
            if len(self.meta["graph_fallbacks"]) > n_before:
                print("CUDA-graph capture of a step failed: timing eager PyTorch instead", flush=True)
                self._switch_to_eager()
            else:
                replay()
                torch.cuda.synchronize()
                self.meta["checks"]["graph_step_equals_eager"] = bool(torch.equal(holder[-1], out))
        print(f"checks: {self.meta['checks']}", flush=True)

    def _switch_to_eager(self) -> None:
        self.graphs = False
        self.meta["execution"] = "eager"
        self.path = self.out / f"{profile_stem(self.gpu, self.spec.name, 'eager')}{self.kernel_tag}.parquet"
        self.rec.path = self.path

    def _layers(self, n: int | None = None) -> list[int]:
        eng = self.eng
        assert eng is not None
        moe = [i for i in range(self.spec.n_layers) if eng.is_moe(i)]
        return moe[:n] if n else moe

    def _dense_setup(self, op: str, T: int, layers: list[int]) -> Setup:
        eng = self.eng
        assert eng is not None
        s = self.spec

        def setup() -> tuple[Callable[[], object], int]:
            x = eng.random_hidden(T)
            if op == "attn_proj":
                pos = torch.arange(T, device=self.device) % 32768
                if eng.fused_ops:  # as MoEEngine.step runs it: the RoPE/KV-write kernel, the residual in the GEMM
                    from moesim.kernels.fused_ops import rms_norm, rope_kv

                    kv = (T, s.n_kv_heads, s.head_dim)
                    ck = torch.empty(kv, device=self.device, dtype=eng.dtype)
                    cv = torch.empty(kv, device=self.device, dtype=eng.dtype)
                    slots = torch.arange(T, device=self.device)
                    w = eng.tenants[0]

                    def fused() -> None:
                        for layer in layers:
                            qkv = rms_norm(x, w.attn_norm[layer]) @ w.wqkv[layer].T
                            q = rope_kv(qkv, pos, eng.cos, eng.sin, slots, ck, cv, s.n_heads, s.n_kv_heads,
                                        s.head_dim)
                            x.addmm_(q.reshape(T, -1), w.wo[layer].T)

                    return fused, len(layers)

                def fn() -> None:
                    for layer in layers:
                        q, _, _ = eng.attn_pre(x, 0, layer, pos)
                        eng.attn_post(x, q.reshape(T, -1), 0, layer)

                return fn, len(layers)
            if op == "router":  # with the tenant's shared expert(s), where the model has them
                return (lambda: [(eng.router(x, 0, layer), eng.shared(x, 0, layer)) for layer in layers]
                        ), len(layers)
            if op in ("moe_grouped", "moe_loop"):
                routed = [eng.router(x, 0, layer) for layer in layers]
                # moe_grouped is the layer as the engine runs it (meta: moe_engine; loop if grouped GEMM failed)
                engine = eng.moe_engine if op == "moe_grouped" else "loop"
                return (lambda: [eng.moe(h, i, w, layer, engine)
                                 for (h, i, w), layer in zip(routed, layers, strict=True)]), len(layers)
            if op == "expert_one":
                return (lambda: [eng.expert_one(x, layer, layer % s.n_experts) for layer in layers]), len(layers)
            raise ValueError(op)

        return setup

    def dense_ops(self) -> None:
        """attn_proj, router, moe_grouped, expert_one over tokens (through the model's layers), lm_head, embed."""
        g, eng = self.grids, self.eng
        assert eng is not None
        layers_all = list(range(self.spec.n_layers))
        moe_layers = self._layers()
        work = [("attn_proj", T, layers_all) for T in g.tokens]
        work += [(op, T, moe_layers) for op in ("router", "moe_grouped", "expert_one") for T in g.tokens]
        # both sides of every regime change of the fused engine (the cost model never interpolates across one)
        edges = sorted({e for r in self.meta.get("moe_regimes", []) for e in (r - 1, r)} - set(g.tokens))
        work += [("moe_grouped", T, moe_layers) for T in edges if 1 <= T <= max(g.tokens)]
        work += [("moe_loop", T, moe_layers) for T in g.moe_loop_tokens]
        for op, T, layers in tqdm(work, desc="dense ops", mininterval=10, file=sys.stdout):
            self.point(op, self._dense_setup(op, T, layers), tokens=T, per_layer=1)

        def lm(r: int) -> Setup:
            def setup() -> tuple[Callable[[], object], int]:
                x = eng.random_hidden(r)
                return (lambda: eng.lm_head(x, 0)), 1
            return setup

        def emb(T: int) -> Setup:
            def setup() -> tuple[Callable[[], object], int]:
                ids = torch.randint(0, self.spec.vocab, (T,), device=self.device)
                return (lambda: [eng.embed(ids, 0) for _ in range(8)]), 8
            return setup

        for r in tqdm(g.lm_rows, desc="lm_head", mininterval=10, file=sys.stdout):
            self.point("lm_head", lm(r), tokens=r)
        for T in g.embed_tokens:
            self.point("embed", emb(T), tokens=T)

    def _attn_setup(self, seqs: list[tuple[int, int]], n_bufs_max: int = 8,
                    calls: list[list[tuple[int, int]]] | None = None) -> Setup:
        """One attention call over ``seqs`` (new tokens, context) per inner repeat, KV caches rotated so a
        repeat does not find the last one's in L2; ``calls``: several calls per repeat instead (each its own
        sequences, q/k/v and caches), e.g. a mixed batch's prefill and decode parts run separately."""
        eng = self.eng
        assert eng is not None
        s = self.spec
        groups = calls if calls is not None else [seqs]

        def setup() -> tuple[Callable[[], object], int]:
            metas = [eng.make_meta(g) for g in groups]
            rows = [m.kv_tokens for m in metas]
            per_buf = sum(rows) * s.n_kv_heads * s.head_dim * 2 * eng.dtype.itemsize
            n_bufs = max(1, min(n_bufs_max, math.ceil(L2_ROTATE_BYTES / per_buf)))
            work = []
            for g, meta, r in zip(groups, metas, rows, strict=True):
                N = sum(n for n, _ in g)
                caches = KVCache(s, r, self.device, eng.dtype, eng.gen, n_layers=n_bufs)
                q = torch.empty((N, s.n_heads, s.head_dim), device=self.device, dtype=eng.dtype).normal_()
                k = torch.empty((N, s.n_kv_heads, s.head_dim), device=self.device, dtype=eng.dtype).normal_()
                v = torch.empty_like(k).normal_()
                work.append((q, k, v, meta, caches))
            inner = max(n_bufs, 4)

            def fn() -> None:
                for i in range(inner):
                    for q, k, v, meta, caches in work:
                        eng.attention(q, k, v, meta, caches.k[i % n_bufs], caches.v[i % n_bufs])

            return fn, inner

        return setup

    def attention_grids(self) -> None:
        """Attention core: prefill (batch × length) and decode (batch × context), per layer."""
        g = self.grids
        pts = [("attn_prefill", b, n, 0) for b, n in g.prefill_points()]
        pts += [("attn_decode", b, 1, c) for b, c in g.decode_points()]
        for op, b, n, c in tqdm(pts, desc="attention", mininterval=10, file=sys.stdout):
            self.point(op, self._attn_setup([(n, c)] * b), batch=b, tokens=n, context=c, per_layer=1)

    def tenant_ops(self) -> None:
        """What a multi-tenant or mixed step adds to the per-tenant ops, per layer: the tenants' concatenations
        (``concat_qkv``, ``concat_route``: tenants × tokens) and one varlen attention call over a prompt packed
        with decoding sequences at spread contexts (``attn_mixed``), against the same sequences run as a
        prefill call plus a decode call (``attn_mixed_parts``: what the composition costs today)."""
        eng, g, s = self.eng, self.grids, self.spec
        assert eng is not None
        first_moe = next(i for i in range(s.n_layers) if eng.is_moe(i))
        nt_built = len(eng.tenants)

        def concat(op: str, n_t: int, T: int) -> Setup:
            def setup() -> tuple[Callable[[], object], int]:
                sizes = [T // n_t + (1 if i < T % n_t else 0) for i in range(n_t)]
                parts, a = [], 0
                for i, Ti in enumerate(sizes):  # the parts as the step makes them: projections, routing
                    x = eng.random_hidden(Ti)
                    if op == "concat_qkv":
                        parts.append(eng.attn_pre(x, i % nt_built, 0, torch.arange(a, a + Ti, device=self.device)))
                    else:
                        parts.append(eng.router(x, i % nt_built, first_moe, row0=a))
                    a += Ti
                inner = 16
                return (lambda: [eng.concat_tenants(parts) for _ in range(inner)]), inner
            return setup

        pts = [(op, n, T) for op in ("concat_qkv", "concat_route") for n, T in g.concat_points()]
        for op, n, T in tqdm(pts, desc="concat", mininterval=10, file=sys.stdout):
            self.point(op, concat(op, n, T), batch=n, tokens=T, per_layer=1)
        for b, n, c in tqdm(g.mixed_points(), desc="mixed attention", mininterval=10, file=sys.stdout):
            dec = [(1, ci) for ci in spread_contexts(b, c)]
            self.point("attn_mixed", self._attn_setup([(n, 0), *dec]), batch=b, tokens=n, context=c, per_layer=1)
            self.point("attn_mixed_parts", self._attn_setup([], calls=[[(n, 0)], dec]), batch=b, tokens=n,
                       context=c, per_layer=1)

    def mixed_steps(self) -> None:
        """Whole-model steps over several tenants on a grid (training rows, not held out): decodes round robin
        over the tenants at spread contexts, with or without a prompt on tenant 0."""
        eng = self.eng
        assert eng is not None
        nt = min(self.grids.mixed_step_tenants, len(eng.tenants))
        self.meta["mixed_step_tenants"] = nt

        def setup(n: int, b: int, c: int) -> Setup:
            def make() -> tuple[Callable[[], object], int]:
                batch = ([(0, n, 0)] if n else []) + [(i % nt, 1, ci) for i, ci in enumerate(spread_contexts(b, c))]
                si = eng.make_inputs(batch)
                cache = KVCache(self.spec, si.meta.kv_tokens, self.device, eng.dtype, eng.gen)
                return (lambda: eng.step(si, cache)), 1
            return make

        for n, b, c in tqdm(self.grids.mixed_step_points, desc="mixed steps", mininterval=10, file=sys.stdout):
            self.point("step_mixed", setup(n, b, c), batch=b, tokens=n, context=c, reps=(5, 15))

    def steps(self) -> None:
        """Whole-model steps of one tenant at grid shapes (the composition's calibration, not held out)."""
        eng = self.eng
        assert eng is not None

        def setup(b: int, n: int, c: int) -> Setup:
            def make() -> tuple[Callable[[], object], int]:
                si = eng.make_inputs([(0, n, c)] * b)
                cache = KVCache(self.spec, si.meta.kv_tokens, self.device, eng.dtype, eng.gen)
                return (lambda: eng.step(si, cache)), 1
            return make

        for b, n, c in tqdm(self.grids.step_points, desc="steps", mininterval=10, file=sys.stdout):
            self.point("step", setup(b, n, c), batch=b, tokens=n, context=c, reps=(5, 15))

    def consolidate(self) -> None:
        """Rebuild the experts as the plan lays them out (GPU copies, pinned host copies fetched per use)."""
        eng = self.eng
        assert eng is not None
        assert self.plan is not None
        eng.apply_plan(self.plan)
        self.meta["plan"]["groups"] = eng.plan_groups
        self.meta["plan"]["host_copies"] = sum(len(h) for h in eng.host_in)
        print(f"consolidated layout: {self.plan.summary()}", flush=True)

    def validation(self) -> None:
        """Time held-out whole-model steps (mixed prefill/decode, off-grid sizes, several tenants)."""
        eng = self.eng
        assert eng is not None
        n_tenants = self.plan.n_variants if self.plan is not None else len(eng.tenants)
        # the expert groups the held-out steps ran with (the report predicts them with this residency)
        self.meta["validation_residency"] = eng.plan_groups or [
            {"tenants": list(range(len(eng.tenants))), "positions": self.spec.n_expert_positions, "on_gpu": True}]
        if not self.cfg.validate_base and self.cfg.heldout_seed >= 0:
            return
        vpath = self.path.with_name(self.path.stem + ".validation.parquet")
        self._heldout(validation_batches(n_tenants, self.grid, self.cfg.seed), vpath)
        self.meta["validation_file"] = vpath.name

    def validation_drawn(self) -> None:
        """A second held-out set, drawn afresh (sizes and contexts) from ``heldout_seed``: same kinds of batches."""
        eng = self.eng
        assert eng is not None
        n_tenants = self.plan.n_variants if self.plan is not None else len(eng.tenants)
        seed = self.cfg.heldout_seed
        vpath = self.path.with_name(f"{self.path.stem}.validation.seed{seed}.parquet")
        self._heldout(draw_heldout_batches(n_tenants, self.grid, seed), vpath)
        self.meta.setdefault("validation_files_extra", {})[f"seed{seed}"] = vpath.name

    def _heldout(self, batches: list[list[tuple[int, int, int]]], vpath: Path) -> None:
        """Time each batch as a whole step; the file is rewritten after every batch (partial results survive)."""
        eng = self.eng
        assert eng is not None
        out = []
        for i, batch in enumerate(tqdm(batches, desc="validation", mininterval=10, file=sys.stdout)):
            rec: dict[str, Any] = {"batch_id": i, "seqs": json.dumps([list(x) for x in batch]),
                                   "description": describe(batch), "n_tenants": len({t for t, _, _ in batch}),
                                   "tokens": sum(n for _, n, _ in batch), "status": "ok"}
            try:
                si = eng.make_inputs(batch)
                cache = KVCache(self.spec, si.meta.kv_tokens, self.device, eng.dtype, eng.gen)
                fn = lambda si=si, cache=cache: eng.step(si, cache)  # noqa: E731
                if self.graphs:
                    fn = self.capture(fn, f"validation step {i}")
                t = self.timer.measure(fn, min_reps=5, warmup=2)
                del fn
                rec.update(time_s_median=t.median_s, time_s_p10=t.p10_s, time_s_p90=t.p90_s, n=t.n)
                del cache
            except Exception as exc:  # record and go on to the next batch
                rec.update(status="oom" if _is_oom(exc) else "error", time_s_median=float("nan"),
                           time_s_p10=float("nan"), time_s_p90=float("nan"), n=0)
                self.rec.errors.append(f"validation {i}: {first_line(exc)}")
                if self.cuda:
                    torch.cuda.empty_cache()
            out.append(rec)
            print(f"  held-out step {i:2d} {rec['description']:55s} {1e3 * rec['time_s_median']:9.2f} ms",
                  flush=True)
            pd.DataFrame(out).to_parquet(vpath, index=False)

    def host_link(self) -> None:
        """Host→device: plain copies, one tenant's non-expert set (whole, per layer), one expert, overlap."""
        from moesim.calibrate.hostlink import measure_host_link

        measure_host_link(self)

    def slices(self) -> None:
        """The same ops on CUDA green contexts at each MIG profile's SM count."""
        if not self.cuda:
            self.meta["emulated"]["slices"] = "not measured (CPU run)"
            return
        from moesim.calibrate.slices import measure_slices

        measure_slices(self)


def _asdict(r: Row) -> dict[str, Any]:
    return {k: getattr(r, k) for k in r.__slots__}
