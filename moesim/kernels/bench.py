"""One-run benchmark of the engine's kernels against floors measured in the same run, and against HF transformers.

``python -m moesim.kernels.bench out=DIR deadline_s=300`` (CUDA; ``device=cpu`` runs a tiny smoke version of
every section for tests). Sections, each written to ``DIR/kernels.json`` and ``DIR/kernels.md`` as soon as it
ends (a deadline skips the rest, recorded as such):

1. **floors**: device→device copy bandwidth (2 GiB, read + write), bf16 matmul peak (8192³, random normal
   inputs), pinned host→device copy (2 GiB).
2. **checks**: the fused MoE kernel against a float64 reference (one expert at a time) at 1, 64 and 2,048
   tokens, the grouped GEMM against the same; the fused router (ids agreement, weight error) and RoPE+KV
   write against the torch ops.
3. **tiles**: per token regime the fastest of ``fused_moe.CANDIDATES`` (MoE layer as a CUDA-graph replay).
4. **moe_op**: one MoE layer, grouped vs triton, 1…4,096 tokens, against its floor (touched experts' bytes /
   copy bandwidth; flops / matmul peak).
5. **steps**: whole model steps as CUDA-graph replays — decode of ``batches`` sequences at ``context`` and
   prefills of ``prefills`` tokens — for ``grouped`` (the engine as calibrated), ``triton`` (fused MoE only)
   and ``triton+fused`` (fused MoE, router and RoPE/KV write), each against its floor (bytes from the experts
   each layer really touched in this step, counted in an eager pass; flops over the matmul peak).
6. **serve_decode**: the runtime's bucketed decode graphs (``moesim.serve.graphs``) with grouped vs triton.
7. **switch**: a tenant switch (one non-expert set, pinned host → device, tensor by tensor as the runtime's
   backend copies it, and as one arena) against bytes / the pinned link.
8. **hf**: the same decode and prefill steps in transformers' ``MixtralForCausalLM`` built from the shipped
   config with random bf16 weights (``hf_layers`` = 0: all layers; else that many, times n_layers/hf_layers).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from moesim.cli import parse_key_values
from moesim.errors import UserError, first_line


@dataclass(frozen=True)
class BenchConfig:
    """What the kernel benchmark runs.

    Attributes:
        out: output folder (kernels.json, kernels.md).
        model: registry name (real shapes, random bf16 weights).
        device: ``cuda`` (the benchmark) or ``cpu`` (a smoke run of every section with ``tiny``).
        deadline_s: wall seconds after which remaining sections are skipped (0: none).
        batches: decode batch sizes (sequences), comma-separated.
        context: decode context (tokens).
        prefills: prefill lengths (tokens), comma-separated.
        reps: timed replays per point (median reported).
        tune: pick each token regime's tile sizes among the candidates before timing steps.
        hf: time transformers' model too.
        hf_layers: HF decoder layers to build (0: all; else scaled per layer).
        hf_max_batch: HF decode batches above this are not timed (its prefill of the context is slow).
        serve: time the runtime's bucketed decode graphs.
        tune_regimes: which ``fused_moe.CANDIDATES`` regimes to tune (comma-separated indices, or ``all``).
        variants: whole-step variants to time (comma-separated among ``STEP_VARIANTS``).
        attn: time the prompt attention backends (FlashAttention varlen vs SDPA's cuDNN) at the prefills.
        breakdown: time each op of a prefill layer at the prefills ≥ 1,024 tokens (the 2k/4k split).
        switch: time a tenant switch.
        moe_tokens: token counts of the one-MoE-layer table (the hybrid crossover is read from it).
    """

    out: str = "bench_out"
    model: str = "mixtral-8x7b"
    device: str = "cuda"
    deadline_s: float = 0.0
    batches: str = "1,8,32,64,128"
    context: int = 512
    prefills: str = "512,2048,4096"
    reps: int = 10
    tune: bool = True
    hf: bool = True
    hf_layers: int = 0
    hf_max_batch: int = 64
    serve: bool = True
    tune_regimes: str = "all"
    variants: str = "grouped,triton,triton+fused,hybrid,tuned"
    attn: bool = True
    breakdown: bool = True
    switch: bool = True
    moe_tokens: str = "1,8,32,64,128,512,1024,1448,2048,2896,4096"

    def __post_init__(self) -> None:
        if self.device not in ("cuda", "cpu"):
            raise UserError(f"device={self.device!r}: valid: cuda, cpu")
        bad = [v for v in self.variants.split(",") if v.strip() not in STEP_VARIANTS]
        if bad or not self.variants.strip():
            raise UserError(f"variants={self.variants!r}: comma-separated among {', '.join(STEP_VARIANTS)}")
        if self.tune_regimes != "all":
            from moesim.kernels.regimes import N_REGIMES

            parts = self.tune_regimes.split(",")
            if not all(p.strip().isdigit() and int(p) < N_REGIMES for p in parts):
                raise UserError(f"tune_regimes={self.tune_regimes!r}: 'all' or comma-separated indices 0…"
                                f"{N_REGIMES - 1}")
        for name in ("batches", "prefills", "moe_tokens"):
            for part in getattr(self, name).split(","):
                if not part.strip().isdigit() or int(part) < 1:
                    raise UserError(f"{name}={getattr(self, name)!r}: comma-separated positive integers")
        if self.context < 1 or self.reps < 1 or self.hf_layers < 0 or self.deadline_s < 0:
            raise UserError("context, reps must be ≥ 1; hf_layers, deadline_s ≥ 0")

    def ints(self, name: str) -> list[int]:
        """A comma-separated field as integers."""
        return [int(p) for p in getattr(self, name).split(",")]

    def names(self, name: str) -> list[str]:
        """A comma-separated field as stripped names."""
        return [p.strip() for p in getattr(self, name).split(",") if p.strip()]


#: Whole-step variants: (MoE engine, fused small ops, MoE cap rule, prompt attention). ``hybrid``: the fused
#: kernel up to the measured crossover, the grouped GEMM above; ``tuned``: the same with the prompt attention
#: backend the ``attn`` section measured faster.
STEP_VARIANTS: dict[str, tuple[str, bool, str, str]] = {
    "grouped": ("grouped", False, "none", "flash"),
    "triton": ("triton", False, "none", "flash"),
    "triton+fused": ("triton", True, "none", "flash"),
    "hybrid": ("triton", True, "crossover", "flash"),
    "tuned": ("triton", True, "crossover", "best"),
}


class Bench:
    """Runs the sections (see the module docstring); ``res`` holds every figure."""

    def __init__(self, cfg: BenchConfig) -> None:
        import torch

        from moesim.specs.models import get_model

        self.cfg = cfg
        self.t0 = time.monotonic()
        self.torch = torch
        self.cuda = cfg.device == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise UserError("device=cuda but torch sees no CUDA device; use device=cpu")
        self.dev = torch.device(cfg.device)
        self.spec = get_model(cfg.model if self.cuda else "tiny")
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.res: dict[str, Any] = {"config": asdict(cfg), "model": self.spec.name, "sections": {},
                                    "skipped": [], "errors": []}
        self.eng = None
        self.hybrid_cap: int | None = None  # set by moe_op
        self.attn_choice: tuple[str, int | None] = ("flash", None)  # set by attn: (backend, from tokens)

    # ---- plumbing -----------------------------------------------------------------------------------
    def left(self) -> float:
        """Seconds left before the deadline (inf without one)."""
        if not self.cfg.deadline_s:
            return math.inf
        return self.cfg.deadline_s - (time.monotonic() - self.t0)

    def section(self, name: str, fn: Any, need_s: float = 0.0) -> None:
        """Run one section unless the deadline is near; record failures and go on; write the results."""
        if self.left() < need_s:
            self.res["skipped"].append(f"{name}: {self.left():.0f} s left, needs ~{need_s:.0f}")
            print(f"[bench] skip {name}", flush=True)
            return
        t = time.monotonic()
        print(f"[bench] {name} ...", flush=True)
        try:
            self.res["sections"][name] = fn()
        except Exception as exc:
            import traceback

            traceback.print_exc()
            self.res["errors"].append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
            if self.cuda:
                self.torch.cuda.synchronize()
        self.res.setdefault("section_s", {})[name] = round(time.monotonic() - t, 1)
        print(f"[bench] {name} done in {time.monotonic() - t:.1f} s", flush=True)
        self.write()

    def write(self) -> None:
        """kernels.json and kernels.md (rewritten after every section)."""
        self.res["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        (self.out / "kernels.json").write_text(json.dumps(self.res, indent=1, default=float))
        (self.out / "kernels.md").write_text(markdown(self.res))

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time_fn(self, fn: Any, reps: int | None = None, graph: bool = True) -> float:
        """Median seconds of ``fn`` — a CUDA-graph replay on CUDA (eager fallback), the wall clock on CPU."""
        torch = self.torch
        reps = reps or self.cfg.reps
        if not self.cuda:
            fn()
            ts = []
            for _ in range(min(reps, 3)):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            return statistics.median(ts)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()  # warm-up: compiles, allocates
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        run = fn
        g = None
        if graph:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            run = g.replay
            run()
        torch.cuda.synchronize()
        ts = []
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(reps):
            a.record()
            run()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) / 1e3)
        del g
        return statistics.median(ts)

    # ---- 1. floors ------------------------------------------------------------------------------------
    def floors(self) -> dict:
        torch = self.torch
        n = (2 << 30) if self.cuda else (8 << 20)
        src = torch.empty(n // 2, dtype=torch.bfloat16, device=self.dev).normal_()
        dst = torch.empty_like(src)
        t = self.time_fn(lambda: dst.copy_(src), graph=False)
        copy_bw = 2 * src.nbytes / t
        src = dst = None
        m = 8192 if self.cuda else 256
        a = torch.randn(m, m, device=self.dev, dtype=self.dtype)
        b = torch.randn(m, m, device=self.dev, dtype=self.dtype)
        t = self.time_fn(lambda: a @ b, graph=False)
        peak = 2 * m**3 / t
        a = b = None
        host = torch.empty(n // 2, dtype=torch.bfloat16, pin_memory=self.cuda).fill_(1.5)
        dev = torch.empty(n // 2, dtype=torch.bfloat16, device=self.dev)
        t = self.time_fn(lambda: dev.copy_(host, non_blocking=True), reps=5, graph=False)
        pinned = host.nbytes / t
        host = dev = None
        self.copy_bw, self.peak, self.pinned = copy_bw, peak, pinned
        out = {"copy_bw_Bps": copy_bw, "matmul_peak_flops": peak, "pinned_h2d_Bps": pinned,
               "copy_bytes": n, "matmul_n": m}
        if self.cuda:
            p = torch.cuda.get_device_properties(0)
            out |= {"gpu": torch.cuda.get_device_name(0), "sms": p.multi_processor_count,
                    "torch": torch.__version__}
            try:
                import triton

                out["triton"] = triton.__version__
            except ImportError:
                out["triton"] = None
        return out

    # ---- engine -------------------------------------------------------------------------------------
    def build(self) -> dict:
        from moesim.calibrate.engine import KVCache, MoEEngine

        torch = self.torch
        t = time.monotonic()
        self.eng = MoEEngine(self.spec, self.dev, n_tenants=1, seed=0, moe_engine="triton", dtype=self.dtype,
                             balanced_routing=True, fused_ops=False)
        self.eng.triton_max_assign = None  # the fused kernel at every size; the hybrid variant sets its own cap
        self.eng.prefill_attn = "flash"  # the attn section and the tuned variant choose; the others run flash
        rows = max(max(self.cfg.ints("batches")) * (self.cfg.context + 1), max(self.cfg.ints("prefills")))
        self.cache = KVCache(self.spec, rows, self.dev, self.dtype, self.eng.gen)
        self.sync()
        ne = self.eng.tenants[0].nbytes()
        return {"build_s": round(time.monotonic() - t, 1), "kv_rows": rows, "nonexpert_bytes": ne,
                "expert_bytes": self.spec.expert_bytes,
                "weights_bytes": sum(w.nbytes for w in self.eng.w_in + self.eng.w_out if w is not None) + ne,
                "memory_allocated": int(torch.cuda.memory_allocated()) if self.cuda else 0}

    def _routed(self, T: int) -> tuple:
        eng = self.eng
        layer = next(i for i in range(self.spec.n_layers) if eng.is_moe(i))
        h = eng.random_hidden(T)
        hh, ti, tw = eng.router(h, 0, layer)
        return layer, hh, ti, tw

    # ---- 2. checks ------------------------------------------------------------------------------------
    def checks(self) -> dict:
        from moesim.kernels import fused_moe as fm
        from moesim.kernels import fused_ops as fo

        torch, eng, s = self.torch, self.eng, self.spec
        out: dict[str, Any] = {}
        for T in (1, 64, 2048) if self.cuda else (1, 13):
            layer, hh, ti, tw = self._routed(T)
            ref = fm.moe_reference(hh, eng.w_in[layer], eng.w_out[layer], ti, tw, eng.swiglu)
            for name in ("triton", "grouped"):
                got = eng.moe(hh, ti, tw, layer, engine=name).double()
                err = float((got - ref).norm() / ref.norm())
                out[f"moe_{name}_T{T}_rel_err"] = err if math.isfinite(err) else str(err)
            del ref
        x0 = eng.random_hidden(64)
        layer, hh, ti, tw = self._routed(64)
        y = fm.fused_moe(hh, eng.w_in[layer], eng.w_out[layer], ti, tw, eng.swiglu).float() + x0.float()
        x1 = fm.fused_moe(hh, eng.w_in[layer], eng.w_out[layer], ti, tw, eng.swiglu, residual=x0.clone())
        out["moe_residual_combine_rel_err"] = float((x1.float() - y).norm() / y.norm())
        x = eng.random_hidden(257)
        w = eng.tenants[0]
        layer = next(i for i in range(s.n_layers) if eng.is_moe(i))
        h1, i1, w1 = fo.router(x, w.ffn_norm[layer], w.router[layer], s.top_k, eng.route_noise)
        h0, i0, w0 = fo.router_torch(x, w.ffn_norm[layer], w.router[layer], s.top_k, eng.route_noise)
        out["router_h_rel_err"] = float((h1.float() - h0.float()).norm() / h0.float().norm())
        out["router_ids_agree"] = float((torch.sort(i1, 1)[0] == torch.sort(i0, 1)[0]).all(1).float().mean())
        out["router_w_max_abs_err"] = float((torch.sort(w1.float(), 1)[0] - torch.sort(w0.float(), 1)[0]).abs().max())
        T = 37
        qkv = torch.randn(T, eng.q_dim + 2 * eng.kv_dim, device=self.dev, dtype=self.dtype)
        pos = torch.randint(0, 4000, (T,), device=self.dev)
        slots = torch.randperm(100, device=self.dev)[:T]
        shape = (100, s.n_kv_heads, s.head_dim)
        ck, cv = torch.randn(shape, device=self.dev, dtype=self.dtype), torch.randn(shape, device=self.dev, dtype=self.dtype)
        ck0, cv0 = ck.clone(), cv.clone()
        q1 = fo.rope_kv(qkv, pos, eng.cos, eng.sin, slots, ck, cv, s.n_heads, s.n_kv_heads, s.head_dim)
        q0 = fo.rope_kv_torch(qkv, pos, eng.cos, eng.sin, slots, ck0, cv0, s.n_heads, s.n_kv_heads, s.head_dim)
        out["rope_q_rel_err"] = float((q1.float() - q0.float()).norm() / q0.float().norm())
        out["rope_k_rel_err"] = float((ck.float() - ck0.float()).norm() / ck0.float().norm())
        out["rope_v_equal"] = bool(torch.equal(cv, cv0))
        y0 = torch.nn.functional.rms_norm(x.float(), (s.d_model,), w.attn_norm[0].float(), eps=1e-5)
        out["rms_norm_rel_err"] = float((fo.rms_norm(x, w.attn_norm[0]).float() - y0).norm() / y0.norm())
        return out

    # ---- 3. tiles -------------------------------------------------------------------------------------
    def tiles(self) -> dict:
        from moesim.kernels import fused_moe as fm

        eng = self.eng
        out = {}
        want = (set(range(len(fm.CANDIDATES))) if self.cfg.tune_regimes == "all"
                else set(self.cfg.ints("tune_regimes")))
        for regime, cand in enumerate(fm.CANDIDATES):
            if regime not in want:
                continue
            if self.left() < 30:
                self.res["skipped"].append(f"tiles regime {regime}: deadline")
                break
            T = cand.tokens if self.cuda else min(cand.tokens, 40)
            layer, hh, ti, tw = self._routed(T)
            tried: list[dict] = []

            def timed(c: Any, hh: Any = hh, ti: Any = ti, tw: Any = tw, layer: int = layer,
                      tried: list = tried) -> float:
                try:
                    t = self.time_fn(lambda: fm.fused_moe(hh, eng.w_in[layer], eng.w_out[layer], ti, tw,
                                                          eng.swiglu, c))
                except Exception as exc:  # a tile that does not compile or fit: skipped
                    self.sync()
                    tried.append({"config": asdict(c), "error": first_line(exc)})
                    return math.inf
                tried.append({"config": asdict(c), "us": t * 1e6})
                return t

            best = (math.inf, fm.CONFIGS[regime][1])
            for bm in cand.bms:  # gate+up tiles with the first down tile, then down tiles with the best gate+up
                gu_best = (math.inf, cand.gu[0])
                for gu in cand.gu:
                    t = timed(fm.make_config(bm, gu, cand.dn[0]))
                    gu_best = min(gu_best, (t, gu))
                    best = min(best, (t, fm.make_config(bm, gu, cand.dn[0])), key=lambda x: x[0])
                for dn in cand.dn[1:]:
                    c = fm.make_config(bm, gu_best[1], dn)
                    best = min(best, (timed(c), c), key=lambda x: x[0])
            if math.isfinite(best[0]) and fm.HAVE_TMA and self.cuda:  # the best tiles again, weights through TMA
                c = replace(best[1], tma=1)
                best = min(best, (timed(c), c), key=lambda x: x[0])
            if math.isfinite(best[0]):
                fm.set_config(regime, best[1])
            out[f"regime{regime}_T{T}"] = {"tried": tried, "picked": asdict(best[1]), "us": best[0] * 1e6}
            print(f"  tiles regime {regime} (T={T}): {best[0] * 1e6:.1f} µs with {best[1]}", flush=True)
        return out

    # ---- 4. one MoE layer ---------------------------------------------------------------------------
    def moe_op(self) -> dict:
        eng, s = self.eng, self.spec
        rows = []
        for T in self.cfg.ints("moe_tokens") if self.cuda else (1, 8):
            layer, hh, ti, tw = self._routed(T)
            touched = int(ti.unique().numel())
            bytes_ = touched * s.expert_bytes + T * s.d_model * 2 * self.dtype.itemsize
            flops = 2.0 * T * s.top_k * s.expert_params
            floor = max(bytes_ / self.copy_bw, flops / self.peak)
            row = {"tokens": T, "touched": touched, "floor_us": floor * 1e6,
                   "bound": "memory" if bytes_ / self.copy_bw >= flops / self.peak else "compute"}
            for name in ("grouped", "triton"):
                t = self.time_fn(lambda name=name, hh=hh, ti=ti, tw=tw, layer=layer: eng.moe(hh, ti, tw, layer, engine=name))
                row[f"{name}_us"] = t * 1e6
                row[f"{name}_over_floor"] = t / floor
            rows.append(row)
            print(f"  moe T={T}: grouped {row['grouped_us']:.1f} µs, triton {row['triton_us']:.1f} µs, "
                  f"floor {row['floor_us']:.1f} µs", flush=True)
        # hybrid: the fused kernel up to the measured crossover (the grouped GEMM faster from there on)
        from moesim.kernels.fused_moe import crossover_cap

        self.hybrid_cap = crossover_cap([(r["tokens"], r["triton_us"], r["grouped_us"]) for r in rows],
                                        self.spec.top_k)
        return {"rows": rows, "hybrid_max_assign": self.hybrid_cap}

    # ---- prompt attention backends ------------------------------------------------------------------
    def attn(self) -> dict:
        """One causal prompt (no context) per size: the varlen FlashAttention call vs SDPA's cuDNN backend."""
        torch, eng, s = self.torch, self.eng, self.spec
        if not self.cuda:
            return {"rows": [], "choice": "flash", "note": "CUDA only (the cuDNN backend)"}
        rows = []
        for T in [t for t in self.cfg.ints("prefills") if t >= 1024]:
            si = eng.make_inputs([(0, T, 0)])
            q = torch.randn(T, s.n_heads, s.head_dim, device=self.dev, dtype=self.dtype)
            ck, cv = self.cache.k[0], self.cache.v[0]
            flops = 4.0 * s.n_heads * s.head_dim * T * (T + 1) / 2
            row: dict[str, Any] = {"tokens": T, "flops": flops}
            outs = {}
            for name in ("flash", "cudnn"):
                eng.prefill_attn, eng.cudnn_min_tokens = name, 1
                try:
                    outs[name] = eng.attend(q, si.meta, ck, cv).float()
                    t = self.time_fn(lambda si=si, q=q, ck=ck, cv=cv: eng.attend(q, si.meta, ck, cv))
                except Exception as exc:
                    row[f"{name}_error"] = first_line(exc) or type(exc).__name__
                    self.sync()
                    continue
                row[f"{name}_us"] = t * 1e6
                row[f"{name}_tflops"] = flops / t / 1e12
            if len(outs) == 2:
                row["cudnn_vs_flash_rel_err"] = float((outs["cudnn"] - outs["flash"]).norm() / outs["flash"].norm())
            rows.append(row)
            print(f"  attn T={T}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in row.items() if k != "flops"), flush=True)
        eng.prefill_attn = "flash"
        ok = [r for r in rows if "cudnn_us" in r and "flash_us" in r and r.get("cudnn_vs_flash_rel_err", 1) < 2e-2]
        faster = [r["tokens"] for r in ok if r["cudnn_us"] < r["flash_us"]]
        # cuDNN from the smallest measured size from which it stays faster (with matching outputs)
        start = next((r["tokens"] for i, r in enumerate(ok) if all(x["tokens"] in faster for x in ok[i:])), None)
        self.attn_choice = ("cudnn", start) if start is not None else ("flash", None)
        return {"rows": rows, "choice": self.attn_choice[0], "cudnn_min_tokens": start}

    # ---- one prefill layer, op by op ----------------------------------------------------------------
    def breakdown(self) -> dict:
        """Per-layer times of a prompt's ops at the prefills ≥ 1,024 tokens (CUDA-graph replays), with TFLOP/s."""
        if not self.cuda:
            return {"rows": [], "note": "CUDA only"}
        out = []
        for T in [t for t in self.cfg.ints("prefills") if t >= 1024]:
            if self.left() < 20:
                self.res["skipped"].append(f"breakdown {T}: deadline")
                break
            row = self._breakdown_one(T)
            out.append(row)
            print(f"  breakdown T={T}: " + ", ".join(f"{k}={v.get('us', float('nan')):.1f}µs"
                                                     for k, v in row["ops"].items()), flush=True)
            self.res["sections"]["breakdown"] = {"rows": out}
            self.write()
        return {"rows": out}

    def _breakdown_one(self, T: int) -> dict:
        from moesim.calibrate.work import op_work
        from moesim.kernels import fused_moe as fm
        from moesim.kernels import fused_ops as fo

        torch, eng, s = self.torch, self.eng, self.spec
        w = eng.tenants[0]
        layer = next(i for i in range(s.n_layers) if eng.is_moe(i))
        si = eng.make_inputs([(0, T, 0)])
        x = eng.random_hidden(T)
        ck, cv = self.cache.k[layer], self.cache.v[layer]
        qkv = fo.rms_norm(x, w.attn_norm[layer]) @ w.wqkv[layer].T
        q = fo.rope_kv(qkv, si.pos, eng.cos, eng.sin, si.meta.slots, ck, cv, s.n_heads, s.n_kv_heads, s.head_dim)
        o = eng.attend(q, si.meta, ck, cv)
        hh, ti, tw = eng.router(x, 0, layer)
        d, F = s.d_model, s.d_ff
        attn_fl = 4.0 * s.n_heads * s.head_dim * T * (T + 1) / 2
        ops: list[tuple[str, Any, float]] = [
            ("rms_norm+qkv", lambda: fo.rms_norm(x, w.attn_norm[layer]) @ w.wqkv[layer].T,
             2.0 * T * d * (eng.q_dim + 2 * eng.kv_dim)),
            ("rope_kv", lambda: fo.rope_kv(qkv, si.pos, eng.cos, eng.sin, si.meta.slots, ck, cv, s.n_heads,
                                           s.n_kv_heads, s.head_dim), 0.0),
            ("attention_flash", lambda: eng.attend(q, si.meta, ck, cv), attn_fl),
            ("o_proj+residual", lambda: x.addmm_(o, w.wo[layer].T), 2.0 * T * eng.q_dim * d),
            ("router", lambda: eng.router(x, 0, layer), op_work(s, "router", tokens=T).flops),
        ]
        cfg = fm.pick_config(ti.numel())
        st = fm.moe_stages(hh, eng.w_in[layer], eng.w_out[layer], ti, tw, eng.swiglu, cfg)
        moe_fl = 2.0 * T * s.top_k * 3 * F * d
        E = eng.w_in[layer].shape[0]
        ops += [("moe_align", st["align"], 0.0),
                ("moe_align_torch", lambda: fm.align(ti, E, cfg.bm, how="torch"), 0.0),
                ("moe_align_triton", lambda: fm.align(ti, E, cfg.bm, how="triton"), 0.0),
                ("moe_gate_up", st["gate_up"], 2.0 * T * s.top_k * 2 * F * d),
                ("moe_down", st["down"], 2.0 * T * s.top_k * F * d),
                ("moe_combine", st["combine"], 0.0),
                ("moe_fused_total", lambda: fm.fused_moe(hh, eng.w_in[layer], eng.w_out[layer], ti, tw, eng.swiglu,
                                                         residual=x), moe_fl),
                ("moe_grouped_total", lambda: eng.moe(hh, ti, tw, layer, engine="grouped"), moe_fl),
                ("lm_head_1row", lambda: eng.lm_head(x[-1:], 0), 2.0 * d * s.vocab)]
        # the same two GEMMs through torch._grouped_mm (cuBLAS/CUTLASS) on the kernel's own padded sorted rows:
        # what the per-expert library GEMMs would give at this size (measurement only)
        if hasattr(torch, "_grouped_mm"):
            st["align"]()
            sorted_ids, blk_e, total = st["sorted"], st["experts"], st["total"]
            nb = blk_e.numel()
            used = (torch.arange(nb, device=self.dev) * cfg.bm < total).int()
            ends = (torch.zeros(E, dtype=torch.int32, device=self.dev).scatter_add_(0, blk_e.long(), used)
                    .cumsum(0) * cfg.bm).to(torch.int32)
            k = s.top_k
            a_rows = hh[torch.where(sorted_ids < T * k, sorted_ids, 0).long() // k]  # (nb·bm, d) gathered rows
            inter_rows = torch.randn(nb * cfg.bm, F, device=self.dev, dtype=self.dtype)
            w_in_t, w_out_t = eng.w_in[layer].transpose(-2, -1), eng.w_out[layer].transpose(-2, -1)
            ops += [("grouped_mm_gate_up", lambda: torch._grouped_mm(a_rows, w_in_t, offs=ends),
                     2.0 * T * s.top_k * 2 * F * d),
                    ("grouped_mm_down", lambda: torch._grouped_mm(inter_rows, w_out_t, offs=ends),
                     2.0 * T * s.top_k * F * d)]
        row: dict[str, Any] = {"tokens": T, "moe_config": asdict(cfg), "ops": {}}
        eng.fused_ops = True  # the router op as the fused engine runs it (one kernel)
        for name, fn, flops in ops:
            try:
                t = self.time_fn(fn)
            except Exception as exc:
                row["ops"][name] = {"error": first_line(exc) or type(exc).__name__}
                self.sync()
                continue
            row["ops"][name] = {"us": t * 1e6, "tflops": flops / t / 1e12 if flops else None,
                                "of_peak": flops / t / self.peak if flops else None}
        eng.fused_ops = False
        return row


    # ---- 5. whole steps -----------------------------------------------------------------------------
    def _work(self, si: Any, touched: list[int], decode: bool) -> tuple[float, float]:
        """(flops, fewest bytes) of one step: touched experts per MoE layer as counted."""
        from moesim.calibrate.work import op_work

        s = self.spec
        dt = s.dtype_bytes
        T = int(si.ids.shape[0])
        flops = bytes_ = 0.0
        seqs = si.meta.seqs
        for layer in range(s.n_layers):
            w = op_work(s, "attn_proj", tokens=T)
            flops += w.flops
            bytes_ += w.bytes_
            for n, c in seqs:
                w = op_work(s, "attn_decode" if n == 1 else "attn_prefill", batch=1, tokens=n, context=c)
                flops += w.flops
                bytes_ += w.bytes_
            if self.eng.is_moe(layer):
                w = op_work(s, "router", tokens=T)
                flops += w.flops + 2.0 * T * s.top_k * s.expert_params
                bytes_ += w.bytes_ + touched[len([i for i in range(layer) if self.eng.is_moe(i)])] * s.expert_bytes
                bytes_ += T * s.top_k * (2 * s.d_model + 2 * s.d_ff) * dt
        w = op_work(s, "lm_head", tokens=len(seqs))
        flops += w.flops
        bytes_ += w.bytes_ + T * s.d_model * dt
        return flops, bytes_

    def _touched(self, si: Any) -> list[int]:
        eng = self.eng
        counts: list[Any] = []
        orig = eng.moe

        def counting(h: Any, ti: Any, tw: Any, layer: int, engine: str | None = None) -> Any:
            counts.append(ti.unique().numel())
            return orig(h, ti, tw, layer, engine)

        eng.moe = counting
        try:
            eng.step(si, self.cache)
        finally:
            del eng.moe
        return [int(c) for c in counts]

    def steps(self) -> dict:
        eng = self.eng
        cfg = self.cfg
        variants = [(v, *STEP_VARIANTS[v]) for v in cfg.names("variants")]
        attn_choice = getattr(self, "attn_choice", ("flash", None))
        # prompts first (the ≥ 2k targets; largest after 2,048), then decodes: a deadline cuts the least wanted
        pre = sorted(cfg.ints("prefills"), key=lambda T: (T < 2048, T))
        shapes = [("prefill", T, [(0, T, 0)]) for T in pre]
        shapes += [("decode", B, [(0, 1, cfg.context)] * B) for B in cfg.ints("batches")]
        rows = []
        for kind, n, batch in shapes:
            if self.left() < 20 + (15 if kind == "prefill" and n > 2048 else 0):
                self.res["skipped"].append(f"steps {kind} {n}: deadline")
                continue
            si = eng.make_inputs(batch)
            eng.moe_engine, eng.fused_ops = "grouped", False
            touched = self._touched(si)
            flops, bytes_ = self._work(si, touched, kind == "decode")
            fl_b, fl_f = bytes_ / self.copy_bw, flops / self.peak
            row = {"kind": kind, "n": n, "tokens": int(si.ids.shape[0]), "context": cfg.context if kind == "decode" else 0,
                   "flops": flops, "bytes": bytes_, "bytes_floor_ms": fl_b * 1e3, "flops_floor_ms": fl_f * 1e3,
                   "floor_ms": max(fl_b, fl_f) * 1e3, "touched_mean": sum(touched) / max(1, len(touched))}
            outs = {}
            for name, moe, fused, cap_rule, attn in variants:
                eng.moe_engine, eng.fused_ops = moe, fused
                eng.triton_max_assign = self.hybrid_cap if cap_rule == "crossover" else None
                best_attn = attn == "best" and attn_choice[0] == "cudnn" and kind == "prefill" \
                    and attn_choice[1] is not None and n >= attn_choice[1]
                eng.prefill_attn, eng.cudnn_min_tokens = ("cudnn", attn_choice[1]) if best_attn else ("flash", 2048)
                same = {"hybrid": "triton+fused", "tuned": "hybrid"}.get(name)
                if (same and f"{same}_ms" in row and not best_attn
                        and (cap_rule != "crossover" or name == "tuned" or self.hybrid_cap is None
                             or row["tokens"] * self.spec.top_k <= self.hybrid_cap)):
                    for key in ("ms", "over_floor", "tflops", "of_peak"):  # the same path as the one before
                        row[f"{name}_{key}"] = row[f"{same}_{key}"]
                    row[f"{name}_same_as"] = same
                    continue
                holder: list[Any] = []
                try:
                    t = self.time_fn(lambda holder=holder, si=si: holder.append(eng.step(si, self.cache)))
                except Exception as exc:
                    row[f"{name}_error"] = first_line(exc)
                    self.sync()
                    continue
                row[f"{name}_ms"] = t * 1e3
                row[f"{name}_over_floor"] = t / max(fl_b, fl_f)
                row[f"{name}_tflops"] = flops / t / 1e12
                row[f"{name}_of_peak"] = flops / t / self.peak
                outs[name] = holder[-1]
            if "grouped" in outs:
                for name in ("triton", "triton+fused", "hybrid", "tuned"):
                    if name in outs:
                        row[f"{name}_tokens_agree"] = float((outs[name] == outs["grouped"]).float().mean())
            rows.append(row)
            print("  " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                                   if k.endswith(("_ms", "over_floor")) or k in ("kind", "n")), flush=True)
            self.res["sections"]["steps"] = {"rows": rows, "hybrid_max_assign": self.hybrid_cap}
            self.write()
        eng.moe_engine, eng.fused_ops, eng.triton_max_assign = "grouped", False, None
        eng.prefill_attn = "flash"
        return {"rows": rows, "hybrid_max_assign": self.hybrid_cap, "attn_choice": list(attn_choice),
                "variants": cfg.names("variants")}

    # ---- 6. the runtime's bucketed decode graphs ------------------------------------------------------
    def serve_decode(self) -> dict:
        from moesim.serve.graphs import DecodeGraphs

        eng, cfg = self.eng, self.cfg
        if not self.cuda:
            return {"rows": [], "note": "CUDA only"}
        bmax = max(cfg.ints("batches"))
        dg = DecodeGraphs(eng, bmax, 256, seed=0)
        rows = []
        for B in cfg.ints("batches"):
            if self.left() < 15:
                self.res["skipped"].append(f"serve_decode {B}: deadline")
                break
            row: dict[str, Any] = {"batch": B}
            for name in ("grouped", "triton"):
                eng.moe_engine = name
                dg.reset()
                dg.run((0,) * B, (cfg.context,) * B, self.cache)  # captures
                key = next(iter(dg.graphs))
                g = dg.graphs[key].graph
                self.sync()
                row[f"{name}_ms"] = self.time_fn(g.replay, graph=False) * 1e3
            rows.append(row)
            print(f"  serve decode B={B}: {row}", flush=True)
        dg.reset()
        eng.moe_engine = "grouped"
        return {"rows": rows, "note": "moesim.serve.graphs.DecodeGraphs (tenants as data, grouped projections)"}

    # ---- 7. tenant switch ---------------------------------------------------------------------------
    def switch(self) -> dict:
        torch = self.torch
        w = self.eng.tenants[0]
        dev_ts = w.tensors()
        nbytes = sum(t.nbytes for t in dev_ts)
        host = [t.detach().cpu().pin_memory() if self.cuda else t.detach().clone() for t in dev_ts]
        arena = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.cuda)
        dev_arena = torch.empty(nbytes, dtype=torch.uint8, device=self.dev)
        arena.fill_(3)
        stream = torch.cuda.Stream() if self.cuda else None

        def per_tensor() -> None:
            for h, d in zip(host, dev_ts, strict=True):
                d.copy_(h, non_blocking=True)

        def one_copy() -> None:
            dev_arena.copy_(arena, non_blocking=True)

        out: dict[str, Any] = {"bytes": nbytes, "tensors": len(host)}
        for name, fn in (("per_tensor", per_tensor), ("arena", one_copy)):
            if self.cuda:
                ts = []
                for _ in range(5):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):
                        a.record(stream)
                        fn()
                        b.record(stream)
                    b.synchronize()
                    ts.append(a.elapsed_time(b) / 1e3)
                t = statistics.median(ts)
            else:
                t = self.time_fn(fn, reps=3, graph=False)
            floor = nbytes / self.pinned
            out[f"{name}_ms"] = t * 1e3
            out[f"{name}_over_floor"] = t / floor
            out["floor_ms"] = floor * 1e3
        if self.cuda:  # pageable, once (the HF reference's 495 ms)
            pageable = [t.detach().cpu() for t in dev_ts[:8]]
            pb = sum(t.nbytes for t in pageable)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for h, d in zip(pageable, dev_ts[:8], strict=True):
                d.copy_(h)
            torch.cuda.synchronize()
            out["pageable_GBps"] = pb / (time.perf_counter() - t) / 1e9
        host = arena = dev_arena = None
        return out

    # ---- 8. HF transformers -------------------------------------------------------------------------
    def hf(self) -> dict:
        torch = self.torch
        import transformers

        from moesim.specs.models import DATA_DIR

        # free the engine first: the full HF model needs the room
        self.eng = None
        self.cache = None
        import gc

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        name = self.spec.name
        raw = json.loads((DATA_DIR / f"{name}.json").read_text()) if self.cuda else None
        if raw is None:
            return {"note": "CUDA only"}
        raw.pop("quantization_config", None)
        raw.pop("architectures", None)
        mt = raw.pop("model_type")
        L = self.spec.n_layers
        layers = self.cfg.hf_layers or L
        raw["num_hidden_layers"] = layers
        conf = transformers.AutoConfig.for_model(mt, **raw)
        t = time.monotonic()
        torch.manual_seed(0)
        with torch.device("cuda"):
            try:
                model = transformers.AutoModelForCausalLM.from_config(conf, dtype=torch.bfloat16)
            except TypeError:
                model = transformers.AutoModelForCausalLM.from_config(conf, torch_dtype=torch.bfloat16)
        model.eval()
        torch.cuda.synchronize()
        scale = L / layers
        out: dict[str, Any] = {"transformers": transformers.__version__, "layers_built": layers, "scale": scale,
                               "build_s": round(time.monotonic() - t, 1),
                               "attn_implementation": getattr(conf, "_attn_implementation", None),
                               "experts_implementation": getattr(conf, "_experts_implementation", None),
                               "params": sum(p.numel() for p in model.parameters())}
        V = conf.vocab_size
        rows = []

        def timed(fn: Any, reps: int) -> float:
            fn()
            torch.cuda.synchronize()
            ts = []
            for _ in range(reps):
                a = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                ts.append(time.perf_counter() - a)
            return statistics.median(ts)

        with torch.no_grad():
            for B in [b for b in self.cfg.ints("batches") if b <= self.cfg.hf_max_batch]:
                if self.left() < 20:
                    self.res["skipped"].append(f"hf decode {B}: deadline")
                    break
                ids = torch.randint(0, V, (B, self.cfg.context), device="cuda")
                o = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                cache = o.past_key_values
                nxt = torch.randint(0, V, (B, 1), device="cuda")

                def step(cache: Any = cache, nxt: Any = nxt) -> None:  # the cache grows a token a call
                    model(input_ids=nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)

                t = timed(step, 5)
                rows.append({"kind": "decode", "n": B, "ms": t * 1e3 * scale})
                self.res["sections"]["hf"] = {**out, "rows": rows}
                self.write()
                print(f"  hf decode B={B}: {t * 1e3 * scale:.1f} ms", flush=True)
                del o, cache
            for T in self.cfg.ints("prefills"):
                if self.left() < 20:
                    self.res["skipped"].append(f"hf prefill {T}: deadline")
                    break
                ids = torch.randint(0, V, (1, T), device="cuda")
                t = timed(lambda ids=ids: model(input_ids=ids, use_cache=False, logits_to_keep=1), 3)
                rows.append({"kind": "prefill", "n": T, "ms": t * 1e3 * scale})
                self.res["sections"]["hf"] = {**out, "rows": rows}
                self.write()
                print(f"  hf prefill T={T}: {t * 1e3 * scale:.1f} ms", flush=True)
        out["rows"] = rows
        model = None
        torch.cuda.empty_cache()
        return out

    def tuning(self) -> dict:
        """What the run picked (tiles per regime, crossover cap, prompt attention), written as engine_tuning.json
        for ``python -m moesim.calibrate ... moe_tuning=PATH``."""
        from moesim.kernels import fused_moe as fm
        from moesim.kernels.regimes import check_tuning

        attn, start = self.attn_choice
        t = {"configs": [[b, asdict(c)] for b, c in fm.CONFIGS], "max_assign": self.hybrid_cap,
             "prefill_attn": attn, "cudnn_min_tokens": start,
             "source": "python -m moesim.kernels.bench " + " ".join(f"{k}={v}" for k, v in asdict(self.cfg).items())}
        check_tuning(t, "engine_tuning.json")
        (self.out / "engine_tuning.json").write_text(json.dumps(t, indent=1))
        return t

    def run(self) -> dict:
        self.section("floors", self.floors)
        self.section("build", self.build)
        if self.eng is None:
            self.write()
            return self.res
        self.section("checks", self.checks, 20)
        if self.cfg.tune:
            self.section("tiles", self.tiles, 40)
        hf_reserve = 80 if self.cfg.hf and self.cuda else 0  # HF's build and steps come last
        if self.cfg.attn:
            self.section("attn", self.attn, 30)
        self.section("moe_op", self.moe_op, 60)
        try:
            self.res["tuning"] = self.tuning()
        except Exception as exc:  # never lose the run for its summary file
            self.res["errors"].append(f"tuning: {type(exc).__name__}: {str(exc)[:200]}")
        if self.cfg.breakdown:
            self.section("breakdown", self.breakdown, 45)
        self.section("steps", self.steps, 40)
        if self.cfg.switch:
            self.section("switch", self.switch, 15)
        if self.cfg.serve:
            self.section("serve_decode", self.serve_decode, 25 + hf_reserve)
        if self.cfg.hf:
            self.section("hf", self.hf, 45)
        self.write()
        return self.res


# ---- report ---------------------------------------------------------------------------------------------
def _f(x: Any, nd: int = 2) -> str:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:,.{nd}f}"
    return "—" if x is None else str(x)


def markdown(res: dict) -> str:
    """The results as markdown tables."""
    S = res["sections"]
    lines = [f"# Kernel benchmark: {res['model']}", ""]
    fl = S.get("floors")
    if fl:
        lines += ["## Floors (measured in this run)", "",
                  f"* device copy: {fl['copy_bw_Bps'] / 1e12:.2f} TB/s (read + write)",
                  f"* bf16 matmul {fl['matmul_n']}³: {fl['matmul_peak_flops'] / 1e12:.0f} TFLOP/s",
                  f"* pinned host→device: {fl['pinned_h2d_Bps'] / 1e9:.2f} GB/s",
                  f"* {fl.get('gpu', 'cpu')}, torch {fl.get('torch', '')}, triton {fl.get('triton', '')}", ""]
    ck = S.get("checks")
    if ck:
        lines += ["## Checks", "", "| check | value |", "|---|---:|"]
        lines += [f"| {k} | {_f(v, 5)} |" for k, v in ck.items()]
        lines.append("")
    mo = S.get("moe_op")
    if mo:
        lines += ["## One MoE layer (CUDA-graph replay)", "",
                  "| tokens | experts touched | floor µs | grouped µs | ×floor | triton µs | ×floor |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in mo["rows"]:
            lines.append(f"| {r['tokens']} | {r['touched']} | {_f(r['floor_us'], 1)} | {_f(r.get('grouped_us'), 1)} | "
                         f"{_f(r.get('grouped_over_floor'))} | {_f(r.get('triton_us'), 1)} | {_f(r.get('triton_over_floor'))} |")
        lines.append("")
    ti = S.get("tiles")
    if ti:
        lines += ["## Tile picks (one MoE layer, CUDA-graph replay)", "", "| regime | µs | picked |", "|---|---:|---|"]
        lines += [f"| {k} | {_f(v.get('us'), 1)} | {v.get('picked')} |" for k, v in ti.items()]
        lines.append("")
    at = S.get("attn")
    if at and at.get("rows"):
        lines += ["## Prompt attention (one causal prompt, no context; per layer)", "",
                  f"choice: {at.get('choice')} from {at.get('cudnn_min_tokens')} tokens", "",
                  "| tokens | flash µs | TFLOP/s | cuDNN µs | TFLOP/s | rel. diff |", "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['tokens']} | {_f(r.get('flash_us'), 1)} | {_f(r.get('flash_tflops'), 0)} | "
                  f"{_f(r.get('cudnn_us'), 1)} | {_f(r.get('cudnn_tflops'), 0)} | {_f(r.get('cudnn_vs_flash_rel_err'), 4)} |"
                  for r in at["rows"]]
        lines.append("")
    bd = S.get("breakdown")
    if bd and bd.get("rows"):
        for r in bd["rows"]:
            lines += [f"## One prefill layer at {r['tokens']} tokens, op by op (µs; MoE tiles {r['moe_config']})", "",
                      "| op | µs | TFLOP/s | of matmul peak |", "|---|---:|---:|---:|"]
            for name, v in r["ops"].items():
                lines.append(f"| {name} | {_f(v.get('us'), 1)} | {_f(v.get('tflops'), 0)} | "
                             f"{'—' if v.get('of_peak') is None else format(v['of_peak'], '.0%')} |")
            lines.append("")
    st = S.get("steps")
    hf = {(r["kind"], r["n"]): r["ms"] for r in (S.get("hf") or {}).get("rows", [])}
    if st:
        names = st.get("variants") or ["grouped", "triton", "triton+fused", "hybrid"]
        lines += ["## Whole steps (CUDA-graph replay; decode at the given context)", "",
                  f"hybrid: the fused kernels, with the grouped GEMM for MoE calls of more than "
                  f"{st.get('hybrid_max_assign')} token × top-k assignments (None: never); tuned: hybrid with the "
                  f"prompt attention {st.get('attn_choice')}.", "",
                  "| step | n | floor ms | bound | " + " | ".join(f"{v} ms | ×floor" for v in names)
                  + " | of matmul peak (best) | HF ms |",
                  "|---|---:|---:|---|" + "---:|---:|" * len(names) + "---:|---:|"]
        for r in st["rows"]:
            bound = "memory" if r["bytes_floor_ms"] >= r["flops_floor_ms"] else "compute"
            best = max((r.get(f"{v}_of_peak", 0) for v in names), default=0)
            cells = " | ".join(f"{_f(r.get(f'{v}_ms'))} | {_f(r.get(f'{v}_over_floor'))}" for v in names)
            lines.append(f"| {r['kind']} | {r['n']} | {_f(r['floor_ms'])} | {bound} | {cells} | {best:.1%} | "
                         f"{_f(hf.get((r['kind'], r['n'])), 1)} |")
        lines.append("")
    sd = S.get("serve_decode")
    if sd and sd.get("rows"):
        lines += ["## Runtime decode graphs (moesim.serve)", "", "| batch | grouped ms | triton ms |", "|---:|---:|---:|"]
        lines += [f"| {r['batch']} | {_f(r.get('grouped_ms'))} | {_f(r.get('triton_ms'))} |" for r in sd["rows"]]
        lines.append("")
    sw = S.get("switch")
    if sw:
        lines += ["## Tenant switch (one non-expert set, pinned)", "",
                  f"* {sw['bytes'] / 1e9:.3f} GB in {sw['tensors']} tensors; floor (bytes / pinned link) "
                  f"{_f(sw['floor_ms'])} ms",
                  f"* tensor by tensor (the runtime's swap): {_f(sw['per_tensor_ms'])} ms = "
                  f"{_f(sw['per_tensor_over_floor'], 3)}× floor",
                  f"* one arena: {_f(sw['arena_ms'])} ms = {_f(sw['arena_over_floor'], 3)}× floor",
                  f"* pageable (for reference): {_f(sw.get('pageable_GBps'))} GB/s", ""]
    h = S.get("hf")
    if h and h.get("rows"):
        lines += [f"## HF transformers {h.get('transformers')} (layers built {h['layers_built']}, × {h['scale']:.0f})",
                  "", "| step | n | ms |", "|---|---:|---:|"]
        lines += [f"| {r['kind']} | {r['n']} | {_f(r['ms'], 1)} |" for r in h["rows"]]
        lines.append("")
    if res.get("skipped"):
        lines += ["Skipped: " + "; ".join(res["skipped"]), ""]
    if res.get("errors"):
        lines += ["Errors: " + "; ".join(res["errors"]), ""]
    lines.append(f"Elapsed {res.get('elapsed_s')} s; per section: {res.get('section_s')}")
    return "\n".join(lines) + "\n"


SUMMARY = ("Time the engine's kernels (fused MoE in Triton vs the grouped GEMM), whole decode/prefill steps, a "
           "tenant switch and HF transformers' Mixtral against floors measured in the same run.")


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m moesim.kernels.bench key=value ...``."""
    try:
        cfg = parse_key_values(sys.argv[1:] if argv is None else argv, BenchConfig, prog="python -m moesim.kernels.bench",
                               summary=SUMMARY, choices={"device": ("cuda", "cpu")},
                               examples=("python -m moesim.kernels.bench out=/tmp/kb deadline_s=300",
                                         "python -m moesim.kernels.bench device=cpu out=/tmp/kb hf=false"))
        b = Bench(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res = b.run()
    print(markdown(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
