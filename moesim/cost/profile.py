"""The ``profile`` cost model: step times composed from a calibrator profile's measured tables.

At load, the long-format profile (``python -m moesim.calibrate``) becomes numpy lookup tables on
log-spaced grids; ``step`` and ``decode_run`` only index arrays. Interpolation is piecewise linear in
log(size)–log(time): exact at grid points and monotone between (measured times are first made
non-decreasing along each axis, so noise cannot make a larger batch cheaper). Beyond the largest grid
point time grows with the op's asymptotic work (tokens¹, prompt², context¹, batch¹).

A step (the contract in ``moesim.cost.base``), with L decoder layers and T_t new tokens of tenant t:
  * attention_s = L·Σ_t attn_proj(T_t) [× (1 + q·o share) with cross-attention] + L·(prefill core +
    decode core);
    prefill core = attn_prefill(b_p, n_eff), n_eff² = mean n·(n + 2·context) (equal causal work);
    decode core = attn_decode(b_d, mean context);
  * router_s = L_moe·Σ_t router(T_t) (the router op includes the tenant's shared expert(s) where the model
    has them: Qwen-MoE, DeepSeek);
  * experts_s: per expert group g with n_g tokens, touched = positions·f(n_g) (f = expected active
    fraction), m = n_g·k/(E·f) tokens per touched expert; on-GPU groups cost touched·t_grouped(m), the
    per-expert time inside the measured grouped MoE layer; host groups cost touched·expert_one(m) plus
    the fetch; dense FFN layers (Switch) cost expert_one(T_t) per tenant;
  * fetch_s = touched·(1 − cache hit)·expert_bytes / (measured expert link rate · link_fraction), of which
    (1 − fetch_overlap) is exposed;
  * lm_head_s = Σ_t lm_head(sequences of t); overhead_s = Σ_t embed(T_t) (+ the step residual of eager
    profiles: see ``step_residual``);
  * with several tenants, or prompts packed with decodes, what such a step adds where the profile measured it
    (``tenant_terms``, ``moesim.cost.profile_tenants``): the tenants' concatenations (attention_s, router_s),
    the mixed attention call's excess over a prefill call plus a decode call (attention_s), fixed per extra
    tenant and per mixed step (overhead_s).
Slices: compute time scales by the green-context ratio measured at the slice's SM count (interpolated in
SMs and size); green contexts share the whole HBM, so each op's time is also bounded below by its bytes
over (measured copy ceiling × the op's best measured bandwidth efficiency × bw_fraction).
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.calibrate.grids import spread_contexts
from moesim.calibrate.work import op_work
from moesim.cost import COST_MODELS
from moesim.cost.base import (
    CostModel,
    DecodeRun,
    Residency,
    SeqWork,
    StepCost,
    expected_active_fraction,
    host_routing_weights,
)
from moesim.cost.profile_tenants import MixedExcess, median_or_zero, mixed_excess_from
from moesim.errors import UserError
from moesim.formats.profile import EXECUTIONS, profile_stem, read_profile
from moesim.resources import profile_search_path, shipped_profiles_dir
from moesim.specs import GPUSpec, ModelSpec

#: The shipped profiles (``calibration/profiles/`` in a checkout, ``moesim/_profiles`` in a wheel).
PROFILES_DIR = shipped_profiles_dir()

#: Asymptotic log-log slope used past the largest grid point, per op and axis.
_SLOPE_TOKENS = 1.0


@dataclass(frozen=True)
class ProfileCostConfig:
    """Where the profile is.

    Attributes:
        path: a profile parquet, or ``auto``: the shipped ``calibration/profiles/<gpu>__<model>.parquet``
            (``<gpu>__<model>.eager.parquet`` with ``execution=eager``).
        execution: ``graphs`` (ops and steps timed as CUDA-graph replays: an engine without host launch
            gaps, the default) or ``eager`` (plain PyTorch, launch-bound at small batches); used by ``auto``.
        routing_skew: 0 for uniform top-k routing; > 0 for a Zipf law over experts (as ``roofline``).
        host_routing_weight: relative routing probability of a consolidated plan's host-resident positions
            (as ``roofline``; 1: uniform).
        step_residual: ``auto`` (on for eager profiles, off for CUDA-graph ones), ``on`` or ``off``: add the
            residual the profile's whole-model ``step`` rows show over the composed ops, interpolated in
            log(tokens in the step). Eager steps have host launch gaps the per-op tables cannot see; graph
            replays have none, and their grid residuals are within a few percent either way.
        tenant_terms: ``auto`` (cost what a multi-tenant or mixed step adds where the profile measured it:
            ``concat_*``, ``attn_mixed*``, ``step_mixed`` rows; a profile without them composes as before) or
            ``off`` (ignore those rows).
    """

    name: str = "profile"
    path: str = "auto"
    execution: str = "graphs"
    routing_skew: float = 0.0
    host_routing_weight: float = 1.0
    step_residual: str = "auto"
    tenant_terms: str = "auto"

    def __post_init__(self) -> None:
        if self.step_residual not in ("auto", "on", "off"):
            raise UserError(f"cost.step_residual={self.step_residual!r}: valid: auto, on, off")
        if self.tenant_terms not in ("auto", "off"):
            raise UserError(f"cost.tenant_terms={self.tenant_terms!r}: valid: auto, off")
        if self.execution not in EXECUTIONS:
            raise UserError(f"cost.execution={self.execution!r}: valid: {', '.join(EXECUTIONS)}")
        if self.routing_skew < 0:
            raise UserError(f"cost.routing_skew={self.routing_skew}: must be ≥ 0")
        if not self.host_routing_weight > 0:
            raise UserError(f"cost.host_routing_weight={self.host_routing_weight}: must be > 0 (1: uniform routing)")


def available_profiles(folder: Path | None = None) -> list[str]:
    """Stems ``<gpu>__<model>[.eager]`` of the profiles in ``folder`` (default: every folder ``auto`` searches;
    validation files left out)."""
    folders = [folder] if folder is not None else profile_search_path()
    return sorted({p.stem for f in folders for p in f.glob("*.parquet")
                   if "__" in p.stem and ".validation" not in p.stem})


def resolve_profile(path: str, model: ModelSpec, gpu: GPUSpec, execution: str = "graphs") -> Path:
    """The profile file for ``path``.

    ``auto``: ``<gpu>__<model>[.eager].parquet`` in the user's profile folder (where the calibrator writes,
    see ``moesim.resources.user_profiles_dir``), else the shipped one, else a clear error.
    """
    if path != "auto":
        return Path(path)
    name = f"{profile_stem(gpu.name, model.name, execution)}.parquet"
    for folder in profile_search_path():
        if (folder / name).is_file():
            return folder / name
    have = ", ".join(available_profiles()) or "none"
    where = " or ".join(str(f) for f in profile_search_path())
    raise UserError(f"cost=profile: no profile for gpu={gpu.name} × model={model.name} "
                    f"(execution={execution}) in {where}; available: {have}; measure one with "
                    "python -m moesim.calibrate or set cost.path=")


# ---- interpolation tables -------------------------------------------------------------------------
class Curve:
    """t(x) from grid points: piecewise linear in log–log, non-decreasing, power-law past the end.

    Below the first grid point the first value holds; past the last, t grows as x^``slope_hi``.
    ``monotone=False`` keeps the measured shape (for per-unit times that may fall as fixed costs spread).
    """

    def __init__(self, x: np.ndarray, t: np.ndarray, slope_hi: float = _SLOPE_TOKENS, monotone: bool = True
                 ) -> None:
        order = np.argsort(x)
        x, t = np.asarray(x, float)[order], np.asarray(t, float)[order]
        if len(x) == 0 or np.any(x <= 0) or np.any(~np.isfinite(t)) or np.any(t <= 0):
            raise ValueError("Curve needs positive grid points and positive finite times")
        self.lx = np.log(x)
        self.ly = np.log(np.maximum.accumulate(t) if monotone else t)
        self.slope_hi = slope_hi
        self._lx, self._ly = self.lx.tolist(), self.ly.tolist()  # plain floats for the scalar fast path

    def scalar(self, x: float) -> float:
        """``self(x)`` for one number, in plain Python (the simulator's hot path)."""
        if x <= 0:
            return 0.0
        lx, xs, ys = math.log(x), self._lx, self._ly
        if lx <= xs[0]:
            return math.exp(ys[0])
        if lx >= xs[-1]:
            return math.exp(ys[-1] + self.slope_hi * (lx - xs[-1]))
        i = bisect.bisect_right(xs, lx) - 1
        return math.exp(ys[i] + (lx - xs[i]) / (xs[i + 1] - xs[i]) * (ys[i + 1] - ys[i]))

    def __call__(self, x: np.ndarray | float) -> np.ndarray | float:
        if isinstance(x, (int, float)):
            return self.scalar(x)
        xa = np.asarray(x, float)
        lx = np.log(np.maximum(xa, np.exp(self.lx[0])))
        ly = np.interp(lx, self.lx, self.ly) + self.slope_hi * np.maximum(lx - self.lx[-1], 0.0)
        out = np.where(xa > 0, np.exp(ly), 0.0)
        return float(out) if out.ndim == 0 else out


def regime_curve(x: np.ndarray, t: np.ndarray, starts: list[int] | tuple[int, ...],
                 max_slope: float = 1.5) -> Curve:
    """A ``Curve`` that never interpolates across an engine's regime change.

    ``starts``: the first size of each new regime (the fused MoE kernel's tile regimes and its switch to the
    grouped GEMM, ``moesim.kernels.fused_moe.regime_starts``; the profile's meta ``moe_regimes``). Within a
    regime times are made non-decreasing; across a start they may fall (a larger tile can be faster per call).
    Each regime's curve is extended to its own edges (last size before the next start, its own start) along the
    log–log slope of its two nearest points (clipped to [0, ``max_slope``]; one point: flat), so a size between
    two measured points on either side of a start takes its own regime's time, not a blend of both.
    """
    order = np.argsort(x)
    x, t = np.asarray(x, float)[order], np.asarray(t, float)[order]
    edges = [-math.inf, *sorted(float(v) for v in starts), math.inf]
    xs: list[float] = []
    ts: list[float] = []

    def extend(pts_x: np.ndarray, pts_t: np.ndarray, at: float, i: int, j: int) -> float:
        if len(pts_x) < 2:
            return float(pts_t[i])
        slope = math.log(pts_t[j] / pts_t[i]) / math.log(pts_x[j] / pts_x[i])
        slope = min(max(slope, 0.0), max_slope)
        return float(pts_t[i] * (at / pts_x[i]) ** slope)

    for lo, hi in itertools.pairwise(edges):
        m = (x >= lo) & (x < hi)
        if not m.any():
            continue
        px, pt = x[m], np.maximum.accumulate(t[m])
        if math.isfinite(lo) and px[0] > lo:
            xs.append(lo)
            ts.append(extend(px, pt, lo, 0, 1))
        xs += px.tolist()
        ts += pt.tolist()
        if math.isfinite(hi) and px[-1] < hi - 1 and hi - 1 > 0:
            xs.append(hi - 1)
            ts.append(extend(px, pt, hi - 1, len(px) - 1, len(px) - 2))
    return Curve(np.array(xs), np.array(ts), monotone=False)


class Surface:
    """t(a, b) on a log grid: bilinear in log–log, non-decreasing along both axes, power law past the ends.

    Missing cells (over the measurement cap, or out of memory) are filled along ``a`` as t ∝ a^slope_a
    from the largest measured ``a`` of the column (columns with nothing measured take the previous column's
    values scaled by (b/b_prev)^slope_b).
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, t: np.ndarray, slope_a: float, slope_b: float) -> None:
        ga, gb = np.unique(np.asarray(a, float)), np.unique(np.asarray(b, float))
        if len(ga) == 0 or len(gb) == 0:
            raise ValueError("Surface needs grid points")
        z = np.full((len(ga), len(gb)), np.nan)
        ia, ib = np.searchsorted(ga, a), np.searchsorted(gb, b)
        z[ia, ib] = np.log(np.asarray(t, float))
        la, lb = np.log(ga), np.log(gb)
        for j in range(len(gb)):
            col = z[:, j]
            ok = np.flatnonzero(np.isfinite(col))
            if len(ok) == 0:
                if j == 0:
                    raise ValueError("Surface: first column empty")
                z[:, j] = z[:, j - 1] + slope_b * (lb[j] - lb[j - 1])
                continue
            lo, hi = ok[0], ok[-1]
            col[:lo] = col[lo]
            col[hi + 1 :] = col[hi] + slope_a * (la[hi + 1 :] - la[hi])
            holes = ~np.isfinite(col)
            col[holes] = np.interp(la[holes], la[ok], col[ok])
        z = np.maximum.accumulate(np.maximum.accumulate(z, axis=0), axis=1)
        self.la, self.lb, self.z = la, lb, z
        self.slope_a, self.slope_b = slope_a, slope_b
        self._la, self._lb, self._z = la.tolist(), lb.tolist(), z.tolist()
        self._columns: dict[float, np.ndarray] = {}

    @staticmethod
    def _index1(g: list[float], v: float) -> tuple[int, int, float]:
        if len(g) == 1:
            return 0, 0, 0.0
        vc = min(max(v, g[0]), g[-1])
        i = min(max(bisect.bisect_right(g, vc) - 1, 0), len(g) - 2)
        return i, i + 1, (vc - g[i]) / (g[i + 1] - g[i])

    def scalar(self, a: float, b: float) -> float:
        """``self(a, b)`` for two numbers, in plain Python (the simulator's hot path)."""
        if a <= 0 or b <= 0:
            return 0.0
        la, lb = max(math.log(a), self._la[0]), max(math.log(b), self._lb[0])
        i0, i1, wa = self._index1(self._la, la)
        j0, j1, wb = self._index1(self._lb, lb)
        z = self._z
        v = (1 - wa) * ((1 - wb) * z[i0][j0] + wb * z[i0][j1]) + wa * ((1 - wb) * z[i1][j0] + wb * z[i1][j1])
        v += self.slope_a * max(la - self._la[-1], 0.0) + self.slope_b * max(lb - self._lb[-1], 0.0)
        return math.exp(v)

    def along_b(self, a: float, b: np.ndarray) -> np.ndarray:
        """``self(a, b)`` for one ``a`` and an array of ``b``: a cached column, then one 1-D interpolation."""
        col = self._columns.get(a)
        if col is None:
            la = max(math.log(a), self._la[0]) if a > 0 else self._la[0]
            i0, i1, wa = self._index1(self._la, la)
            col = (1 - wa) * self.z[i0] + wa * self.z[i1] + self.slope_a * max(la - self._la[-1], 0.0)
            self._columns[a] = col
        bb = np.asarray(b, float)
        lb = np.log(np.maximum(bb, math.exp(self._lb[0])))
        v = np.interp(lb, self.lb, col) + self.slope_b * np.maximum(lb - self._lb[-1], 0.0)
        return np.where(bb > 0, np.exp(v), 0.0) if a > 0 else np.zeros(bb.shape)

    @staticmethod
    def _index(g: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        vc = np.clip(v, g[0], g[-1])
        if len(g) == 1:
            zero = np.zeros(v.shape, dtype=int)
            return zero, zero, np.zeros(v.shape)
        i = np.clip(np.searchsorted(g, vc, side="right") - 1, 0, len(g) - 2)
        w = (vc - g[i]) / (g[i + 1] - g[i])
        return i, np.minimum(i + 1, len(g) - 1), w

    def __call__(self, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return self.scalar(a, b)
        aa, bb = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float))
        la = np.log(np.maximum(aa, np.exp(self.la[0])))
        lb = np.log(np.maximum(bb, np.exp(self.lb[0])))
        i0, i1, wa = self._index(self.la, la)
        j0, j1, wb = self._index(self.lb, lb)
        z = self.z
        v = ((1 - wa) * ((1 - wb) * z[i0, j0] + wb * z[i0, j1]) + wa * ((1 - wb) * z[i1, j0] + wb * z[i1, j1]))
        v = v + self.slope_a * np.maximum(la - self.la[-1], 0) + self.slope_b * np.maximum(lb - self.lb[-1], 0)
        out = np.where((aa > 0) & (bb > 0), np.exp(v), 0.0)
        return float(out) if out.ndim == 0 else out


class SliceRatio:
    """Slowdown of an op on a green-context slice: ratio(SM count, size), 1 at the whole GPU.

    Throughput (1 / ratio) is interpolated linearly in SMs between measured counts (compute scales with
    SMs) and in log(size) between measured sizes; clamped outside.
    """

    def __init__(self, sms: np.ndarray, size: np.ndarray, ratio: np.ndarray, total_sms: int) -> None:
        gs, gz = np.unique(np.r_[np.asarray(sms, float), total_sms]), np.unique(np.asarray(size, float))
        r = np.full((len(gs), len(gz)), np.nan)
        r[np.searchsorted(gs, sms), np.searchsorted(gz, size)] = ratio
        r[-1, :] = 1.0
        lz = np.log(gz)
        for i in range(len(gs)):  # fill sizes a slice lacks from its neighbours in size
            ok = np.isfinite(r[i])
            r[i, ~ok] = np.interp(lz[~ok], lz[ok], r[i, ok]) if ok.any() else np.nan
        for j in range(len(gz)):  # and SM counts lacking a size from neighbouring counts
            ok = np.isfinite(r[:, j])
            r[~ok, j] = np.interp(gs[~ok], gs[ok], r[ok, j])
        self.gs, self.lz, self.speed = gs, lz, 1.0 / np.maximum(r, 1.0)
        self._gs, self._lz = gs.tolist(), lz.tolist()
        self._rows: dict[float, np.ndarray] = {}  # speed over sizes at one SM count (few distinct counts)

    def _row(self, sm_count: float) -> np.ndarray:
        row = self._rows.get(sm_count)
        if row is None:
            gs = self._gs
            s = min(max(float(sm_count), gs[0]), gs[-1])
            if len(gs) == 1:
                row = self.speed[0]
            else:
                i = min(max(bisect.bisect_right(gs, s) - 1, 0), len(gs) - 2)
                w = (s - gs[i]) / (gs[i + 1] - gs[i])
                row = (1 - w) * self.speed[i] + w * self.speed[i + 1]
            self._rows[sm_count] = row
        return row

    def __call__(self, sm_count: float, size: np.ndarray | float) -> np.ndarray | float:
        row = self._row(sm_count)
        if isinstance(size, (int, float)):
            lz, zs = math.log(max(size, 1e-12)), self._lz
            if lz <= zs[0] or len(zs) == 1:
                return 1.0 / float(row[0])
            if lz >= zs[-1]:
                return 1.0 / float(row[-1])
            j = bisect.bisect_right(zs, lz) - 1
            w = (lz - zs[j]) / (zs[j + 1] - zs[j])
            return 1.0 / float((1 - w) * row[j] + w * row[j + 1])
        lz = np.log(np.maximum(np.asarray(size, float), 1e-12))
        out = 1.0 / np.interp(lz, self.lz, row)
        return float(out) if np.ndim(out) == 0 else out


# ---- the cost model -------------------------------------------------------------------------------
_DENSE_OPS = ("attn_proj", "router", "moe_grouped", "expert_one", "lm_head", "embed")


@COST_MODELS.register("profile", ProfileCostConfig)
class ProfileCost(CostModel):
    """Measured per-op tables composed into step times (see the module docstring)."""

    name = "profile"

    def __init__(self, cfg: ProfileCostConfig, model: ModelSpec, gpu: GPUSpec) -> None:
        super().__init__(model, gpu)
        self.cfg = cfg
        self._parts_memo: dict[tuple, tuple[float, ...]] = {}
        self._memo_keep: dict[int, Residency] = {}
        self.path = resolve_profile(cfg.path, model, gpu, cfg.execution)
        df, meta = read_profile(self.path)
        problems = [f"{k} {meta.get(k)!r} ≠ {want!r}" for k, want in (("model", model.name), ("gpu", gpu.name))
                    if meta.get(k) != want]
        if problems:
            raise UserError(f"profile {self.path}: {'; '.join(problems)}; use the profile measured for this "
                            f"gpu × model (available: {', '.join(available_profiles(self.path.parent))})")
        self.meta = meta
        self.derived = bool(meta.get("derived", False))
        self.provenance = "derived" if self.derived else "measured"
        self.total_sms = int(meta.get("sms", gpu.sms))
        ok = df[df["status"] == "ok"]
        full = ok[ok["sms"] == self.total_sms]
        self._build_tables(full)
        self._build_slices(ok[ok["sms"] < self.total_sms])
        self._build_link(meta)
        m = model
        self._L = m.n_layers
        self._Lmoe = m.n_decoder_moe_layers
        # cross-attention (encoder-decoder) adds its q and o projections over the new tokens; its k/v over
        # the encoder output are made once per request and not costed, nor its attention core
        qo = 2 * m.d_model * m.n_heads * m.head_dim
        self._proj_mult = 1.0 + (qo / m.attention_params_per_block if m.cross_attention else 0.0)
        self._pos_scale = self._Lmoe / max(1, m.n_moe_layers)
        self._residual_x = self._residual_y = np.zeros(0)
        self.concat: dict[str, Surface] = {}
        self.mixed_excess: MixedExcess | None = None
        self.tenant_fixed_s = self.mixed_fixed_s = 0.0
        if cfg.tenant_terms == "auto":
            self._build_tenant_terms(full)
        self.execution = str(meta.get("execution", "eager"))
        if cfg.step_residual == "on" or (cfg.step_residual == "auto" and self.execution == "eager"):
            self._build_residual(full[full["op"] == "step"])

    # ---- load-time tables -------------------------------------------------------------------------
    def _build_tables(self, full: pd.DataFrame) -> None:
        m = self.model
        self.curves: dict[str, Curve] = {}
        regimes = self.meta.get("moe_regimes") or []  # the fused engine's tile regimes (token counts)
        for op in _DENSE_OPS:
            d = full[full["op"] == op].groupby("tokens", as_index=False)["time_s_median"].median()
            if d.empty:
                raise UserError(f"profile {self.path}: no measured rows for op {op!r} at {self.total_sms} SMs")
            if op == "moe_grouped" and regimes:
                self.curves[op] = regime_curve(d["tokens"].to_numpy(), d["time_s_median"].to_numpy(), regimes)
            else:
                self.curves[op] = Curve(d["tokens"].to_numpy(), d["time_s_median"].to_numpy())
        # per touched expert inside the grouped layer, indexed by tokens per touched expert; the layer's
        # fixed costs spread over more touched experts as tokens grow, so this one may fall: not monotone
        n = np.exp(self.curves["moe_grouped"].lx)
        f = np.asarray(expected_active_fraction(n, m.n_experts, m.top_k))
        self.curves["expert_in_group"] = Curve(n * m.top_k / (m.n_experts * f),
                                                self.curves["moe_grouped"](n) / (m.n_experts * f), monotone=False)
        self.surfaces: dict[str, Surface] = {}
        for op, axis, slope_b in (("attn_prefill", "tokens", 2.0), ("attn_decode", "context", 1.0)):
            d = full[full["op"] == op]
            if d.empty:
                raise UserError(f"profile {self.path}: no measured rows for op {op!r}")
            self.surfaces[op] = Surface(d["batch"].to_numpy(), d[axis].to_numpy(), d["time_s_median"].to_numpy(),
                                        slope_a=1.0, slope_b=slope_b)
        # best bandwidth efficiency each op reached on the whole GPU: the floor of its memory-bound time
        bw = float(self.meta.get("ceiling_copy_Bps") or self.gpu.hbm_Bps)
        self.copy_Bps = bw
        self.bw_eff: dict[str, float] = {}
        for op in (*_DENSE_OPS, "attn_prefill", "attn_decode"):
            d = full[full["op"] == op]
            ach = [op_work(m, op, b, t, c).bytes_ / s for b, t, c, s in
                   d[["batch", "tokens", "context", "time_s_median"]].itertuples(index=False, name=None)]
            self.bw_eff[op] = float(np.clip(max(ach, default=bw) / bw, 1e-3, 1.0))

    def _size(self, op: str, batch: np.ndarray | float, tokens: np.ndarray | float,
              context: np.ndarray | float) -> np.ndarray | float:
        """Size coordinate of slice ratios: tokens, causal work b·n² (prefill) or KV rows b·(c+1) (decode)."""
        if op == "attn_prefill":
            return batch * tokens**2 if isinstance(tokens, (int, float)) else np.asarray(batch) * np.asarray(
                tokens, float) ** 2
        if op == "attn_decode":
            return batch * (context + 1) if isinstance(context, (int, float)) else np.asarray(batch) * (
                np.asarray(context, float) + 1)
        return tokens

    def _build_slices(self, sl: pd.DataFrame) -> None:
        self.slice_ratio: dict[str, SliceRatio] = {}
        for op, d in sl.groupby("op"):
            rows = []
            for s, b, t, c, tm in d[["sms", "batch", "tokens", "context", "time_s_median"]].itertuples(
                    index=False, name=None):
                ref = self._full_time(str(op), b, t, c)
                if ref > 0:
                    rows.append((s, float(self._size(str(op), b, t, c)), tm / ref))
            if rows:
                a = np.array(rows)
                self.slice_ratio[str(op)] = SliceRatio(a[:, 0], a[:, 1], a[:, 2], self.total_sms)

    def _build_tenant_terms(self, full: pd.DataFrame) -> None:
        """Concatenation surfaces, the mixed-attention excess, and the fixed per-tenant / per-mixed-step costs
        from the grid's multi-tenant whole steps (``moesim.cost.profile_tenants``); nothing without the rows."""
        from moesim.cost.base import ExpertGroup

        for op in ("concat_qkv", "concat_route"):
            d = full[full["op"] == op].groupby(["batch", "tokens"], as_index=False)["time_s_median"].median()
            if not d.empty:
                self.concat[op] = Surface(d["batch"].to_numpy(), d["tokens"].to_numpy(),
                                          d["time_s_median"].to_numpy(), slope_a=1.0, slope_b=1.0)
        self.mixed_excess = mixed_excess_from(full)
        steps = full[full["op"] == "step_mixed"]
        if steps.empty:
            return
        nt = int(self.meta.get("mixed_step_tenants", 3))
        res = Residency(groups=(ExpertGroup(frozenset(range(nt)), self.model.n_expert_positions, True),))
        dec, mix = [], []  # (measured, composed, tenants in the step)
        for b, n, c, t in steps[["batch", "tokens", "context", "time_s_median"]].itertuples(index=False, name=None):
            batch = ([SeqWork(0, int(n), 0)] if n else []) + [
                SeqWork(i % nt, 1, ci) for i, ci in enumerate(spread_contexts(int(b), int(c)))]
            k = len({s.tenant for s in batch})
            (mix if n else dec).append((float(t), self.step(tuple(batch), res).total_s, k))
        L = self._L
        self.tenant_fixed_s = median_or_zero([(t - comp) / (L * (k - 1)) for t, comp, k in dec if k > 1])
        self.mixed_fixed_s = median_or_zero([(t - comp - L * (k - 1) * self.tenant_fixed_s) / L
                                             for t, comp, k in mix])
        self._parts_memo.clear()
        self._memo_keep.clear()

    def _build_residual(self, steps: pd.DataFrame) -> None:
        """Measured whole-model step minus the composed ops, by log(tokens in the step) (seconds)."""
        if steps.empty:
            return
        from moesim.cost.base import ExpertGroup

        res = Residency(groups=(ExpertGroup(frozenset({0}), self.model.n_expert_positions, True),))
        pts: dict[float, list[float]] = {}
        for b, n, c, t in steps[["batch", "tokens", "context", "time_s_median"]].itertuples(index=False, name=None):
            composed = self.step(tuple(SeqWork(0, int(n), int(c)) for _ in range(int(b))), res).total_s
            pts.setdefault(float(np.log(b * n)), []).append(t - composed)
        xs = np.array(sorted(pts))
        self._residual_x, self._residual_y = xs, np.array([np.mean(pts[x]) for x in xs])

    def _residual(self, tokens: float, composed: float) -> float:
        """Residual for a step of ``tokens`` new tokens, never taking more than half the composed time."""
        if len(self._residual_x) == 0:
            return 0.0
        r = float(np.interp(np.log(max(tokens, 1.0)), self._residual_x, self._residual_y))
        return max(r, -0.5 * composed)

    def _build_link(self, meta: dict[str, Any]) -> None:
        link = meta.get("host_link") or {}
        self.expert_Bps = {True: float(link.get("expert_pinned_Bps") or self.gpu.h2d_pinned_Bps),
                           False: float(link.get("expert_pageable_Bps") or self.gpu.h2d_pageable_Bps)}
        self.set_Bps = {True: float(link.get("set_pinned_Bps") or self.gpu.h2d_pinned_Bps),
                        False: float(link.get("set_pageable_Bps") or self.gpu.h2d_pageable_Bps)}

    def _full_time(self, op: str, b: Any, t: Any, c: Any) -> Any:
        if op == "attn_prefill":
            return self.surfaces[op](b, t)
        if op == "attn_decode":
            return self.surfaces[op](b, c)
        return self.curves[op](t)

    # ---- evaluation -------------------------------------------------------------------------------
    def _t(self, op: str, res: Residency, b: Any = 1, t: Any = 0, c: Any = 0) -> Any:
        """Time of ``op`` at a shape on the residency's slice (vectorised over arrays)."""
        base = self._full_time(op, b, t, c)
        s = res.slice
        if s.sm_fraction >= 1.0 and s.bw_fraction >= 1.0:
            return base
        ratio = self.slice_ratio.get(op) or self.slice_ratio.get("attn_proj")
        sm_count = s.sm_fraction * self.total_sms
        r = ratio(sm_count, self._size(op, b, t, c)) if ratio else 1.0 / max(s.sm_fraction, 1e-6)
        mem = op_work(self.model, op, b, t, c).bytes_ / (self.copy_Bps * self.bw_eff[op] * s.bw_fraction)
        if isinstance(base, float) and isinstance(r, float):
            return max(base * r, float(mem))
        return np.maximum(base * r, mem)

    def expert_one_s(self, tokens: float, residency: Residency) -> float:
        """Seconds of one expert's FFN run on its own over ``tokens`` tokens (the profile's ``expert_one`` op), on
        ``residency``'s slice."""
        return float(self._t("expert_one", residency, t=max(1.0, float(tokens))))

    def _active(self, n: int, weight: float = 1.0) -> float:
        """Expected active fraction of a layer's experts for ``n`` tokens (plain Python when uniform)."""
        m = self.model
        if self.cfg.routing_skew <= 0:
            return 1.0 - (1.0 - min(1.0, weight * m.top_k / m.n_experts)) ** n
        return float(expected_active_fraction(n, m.n_experts, m.top_k, self.cfg.routing_skew, weight))

    def _tenant_parts(self, tokens: dict[int, int], seqs: dict[int, int], res: Residency
                      ) -> tuple[float, float, float, float, float, float, float]:
        """Context-independent parts: projections, router, lm_head, embed, experts, fetch, fetches.

        Memoised: the simulator's hot loop sees few distinct (residency, tokens per tenant) shapes.
        """
        key = (id(res), tuple(sorted(tokens.items())), tuple(sorted(seqs.items())))
        hit = self._parts_memo.get(key)
        if hit is None:
            if len(self._parts_memo) > 200_000:
                self._parts_memo.clear()
            hit = self._parts_memo[key] = self._tenant_parts_uncached(tokens, seqs, res)
            self._memo_keep[id(res)] = res  # keeps the id in the key valid
        return hit

    def _tenant_parts_uncached(self, tokens: dict[int, int], seqs: dict[int, int], res: Residency
                               ) -> tuple[float, float, float, float, float, float, float]:
        m = self.model
        proj = router = lm = emb = dense = 0.0
        for t, T in tokens.items():
            proj += self._L * self._proj_mult * self._t("attn_proj", res, t=T)
            if self._Lmoe:
                router += self._Lmoe * self._t("router", res, t=T)
            if self._Lmoe < self._L:
                dense += (self._L - self._Lmoe) * self._t("expert_one", res, t=T)
            lm += self._t("lm_head", res, t=seqs[t])
            emb += self._t("embed", res, t=T)
        n_t = sum(1 for T in tokens.values() if T > 0)
        if n_t > 1:  # multi-tenant glue (whole-GPU times: launch-scale kernels) and fixed per-tenant cost
            N = sum(tokens.values())
            if "concat_qkv" in self.concat:
                proj += self._L * self.concat["concat_qkv"].scalar(n_t, N)
            if "concat_route" in self.concat and self._Lmoe:
                router += self._Lmoe * self.concat["concat_route"].scalar(n_t, N)
            emb += self._L * (n_t - 1) * self.tenant_fixed_s
        experts, fetch_s, fetches = dense, 0.0, 0.0
        E, k = m.n_experts, m.top_k
        weights = host_routing_weights(res, self.cfg.host_routing_weight)
        for g, w in zip(res.groups, weights, strict=True):
            n_g = sum(T for t, T in tokens.items() if t in g.tenants)
            if n_g == 0 or g.positions == 0:
                continue
            f = self._active(n_g, w)
            touched = g.positions * self._pos_scale * f
            per = n_g * k * w / (E * f)  # tokens per touched expert
            if g.on_gpu:
                experts += touched * self._grouped_on_slice(per, n_g, res)
            else:
                experts += touched * self._t("expert_one", res, t=per)
                fg = touched * (1.0 - res.expert_cache_hit)
                fetches += fg
                link = self.expert_Bps[res.slice.pinned] * res.slice.link_fraction
                fetch_s += fg * m.expert_bytes / link * (1.0 - res.fetch_overlap)
        return proj, router, lm, emb, experts, fetch_s, fetches

    def _grouped_on_slice(self, per: float, n_g: int, res: Residency) -> float:
        """Per touched expert on a slice: the whole-GPU value scaled as the grouped layer at n_g tokens."""
        base = self.curves["expert_in_group"](per)
        if res.slice.sm_fraction >= 1.0 and res.slice.bw_fraction >= 1.0:
            return base
        full_layer = self.curves["moe_grouped"](n_g)
        return base * self._t("moe_grouped", res, t=n_g) / full_layer if full_layer > 0 else base

    def _prefill_core(self, pre: list[tuple[int, int]], res: Residency) -> float:
        if not pre:
            return 0.0
        n_eff = math.sqrt(sum(n * (n + 2 * c) for n, c in pre) / len(pre))
        return self._L * float(self._t("attn_prefill", res, b=len(pre), t=n_eff))

    def step(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost:
        """One step of ``batch`` on ``residency`` (see the module docstring for the composition)."""
        tokens: dict[int, int] = {}
        seqs: dict[int, int] = {}
        pre: list[tuple[int, int]] = []
        dec: list[int] = []
        for s in batch:
            tokens[s.tenant] = tokens.get(s.tenant, 0) + s.new_tokens
            seqs[s.tenant] = seqs.get(s.tenant, 0) + 1
            if s.new_tokens == 1 and s.context > 0:
                dec.append(s.context)
            else:
                pre.append((s.new_tokens, s.context))
        if not tokens:
            return StepCost()
        proj, router, lm, emb, experts, fetch_s, fetches = self._tenant_parts(tokens, seqs, residency)
        core = self._prefill_core(pre, residency)
        if dec:
            dcore = self._L * float(self._t("attn_decode", residency, b=len(dec), c=sum(dec) / len(dec)))
            if pre:
                core, mixed_s = self._mixed(pre, dec, core, dcore, residency)
                emb += mixed_s
            else:
                core = dcore
        composed = proj + core + router + experts + fetch_s + lm + emb
        over = emb + self._residual(sum(tokens.values()), composed)
        return StepCost(proj + core, router, experts, fetch_s, lm, over, fetches)

    def _mixed(self, pre: list[tuple[int, int]], dec: list[int], pcore: float, dcore: float, res: Residency
               ) -> tuple[float, float]:
        """Attention core of a step packing prompts with decodes (the prefill and decode cores plus the mixed
        call's measured excess), and its fixed per-mixed-step cost; both as composed before without the rows."""
        core = pcore + dcore
        if self.mixed_excess is not None:
            n_max = max(n for n, _ in pre)
            ex = self._L * self.mixed_excess(len(pre) + len(dec) - 1, n_max, sum(dec) / len(dec))
            sl = res.slice
            if sl.sm_fraction < 1.0 or sl.bw_fraction < 1.0:  # as the prompt's attention slows on the slice
                full = float(self._full_time("attn_prefill", 1, n_max, 0))
                ex *= float(self._t("attn_prefill", res, b=1, t=n_max)) / full if full > 0 else 1.0
            core = max(core + ex, pcore, dcore)
        return core, self._L * self.mixed_fixed_s

    def decode_run(self, decode_tenants: tuple[int, ...], context0: tuple[int, ...], n_steps: int,
                   residency: Residency) -> DecodeRun:
        """Vectorised: only the decode core changes from step to step (every context grows by one)."""
        if n_steps <= 0 or not decode_tenants:
            return DecodeRun(np.zeros(0 if n_steps <= 0 else n_steps), StepCost())
        tokens: dict[int, int] = {}
        for t in decode_tenants:
            tokens[t] = tokens.get(t, 0) + 1
        proj, router, lm, emb, experts, fetch_s, fetches = self._tenant_parts(tokens, tokens, residency)
        B = len(decode_tenants)
        ctx = float(sum(context0)) / B + np.arange(n_steps, dtype=float)
        sl = residency.slice
        if sl.sm_fraction >= 1.0 and sl.bw_fraction >= 1.0:  # whole GPU: one cached column of the surface
            core = self._L * self.surfaces["attn_decode"].along_b(float(B), ctx)
        else:
            core = self._L * np.asarray(self._t("attn_decode", residency, b=np.full(n_steps, B), c=ctx), float)
        fixed = proj + router + lm + emb + experts + fetch_s
        over = emb + self._residual(B, fixed + float(core[0]))
        ends = np.cumsum(core + fixed - emb + over)
        cost = StepCost(proj * n_steps + float(core.sum()), router * n_steps, experts * n_steps,
                        fetch_s * n_steps, lm * n_steps, over * n_steps, fetches * n_steps)
        return DecodeRun(ends, cost)

    def swap_s(self, nbytes: float, residency: Residency, bandwidth_fraction: float = 1.0) -> float:
        """Seconds to copy ``nbytes`` host→device at the measured non-expert-set rate (pinned or pageable)."""
        link = self.set_Bps[residency.slice.pinned] * residency.slice.link_fraction * bandwidth_fraction
        return nbytes / link
