"""The ``profile`` cost model: interpolation, composition against closed forms, slices, refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.cost import COST_MODELS
from moesim.cost.base import ExpertGroup, Residency, SeqWork, Slice, expected_active_fraction
from moesim.cost.profile import Curve, ProfileCost, ProfileCostConfig, SliceRatio, Surface
from moesim.errors import UserError
from moesim.formats.profile import SCHEMA_VERSION, Row, write_profile
from moesim.specs import get_gpu, get_model

M = get_model("mixtral-8x7b")
H200 = get_gpu("h200")
POW2 = [2**i for i in range(14)]  # 1 … 8192

# closed-form op times (seconds) used to build a synthetic profile
F = {
    "attn_proj": lambda T: 1e-5 + 1e-8 * T,
    "router": lambda T: 2e-6 + 1e-10 * T,
    "moe_grouped": lambda T: 1e-4 + 1e-7 * T,
    "expert_one": lambda T: 5e-5 + 2e-8 * T,
    "lm_head": lambda T: 3e-5 + 1e-8 * T,
    "embed": lambda T: 1e-6 + 1e-10 * T,
}
PREFILL = lambda b, n: 1e-5 + 1e-10 * b * n * n  # noqa: E731
DECODE = lambda b, c: 1e-5 + 1e-9 * b * (c + 1)  # noqa: E731
LINK = {"expert_pinned_Bps": 50e9, "expert_pageable_Bps": 6e9, "set_pinned_Bps": 54e9, "set_pageable_Bps": 6.4e9}


def synthetic_rows(gpu: str = "h200", model: str = "mixtral-8x7b", sms: int = 132,
                   slow: dict[int, float] | None = None) -> list[Row]:
    rows = []
    for op, f in F.items():
        rows += [Row(gpu, model, op, sms, 1, T, time_s_median=f(T), time_s_p10=f(T), time_s_p90=f(T), n=5,
                     per_layer=int(op not in ("lm_head", "embed"))) for T in POW2]
    rows += [Row(gpu, model, "attn_prefill", sms, b, n, 0, time_s_median=PREFILL(b, n), n=5, per_layer=1)
             for b in (1, 2, 4, 8) for n in (16, 64, 256, 1024, 4096) if b * n <= 8192]
    rows += [Row(gpu, model, "attn_decode", sms, b, 1, c, time_s_median=DECODE(b, c), n=5, per_layer=1)
             for b in (1, 4, 16, 64, 256) for c in (16, 128, 1024, 8192) if b * (c + 1) <= 300_000]
    for s, factor in (slow or {}).items():  # a slice: every compute op `factor` times slower
        rows += [Row(gpu, model, op, s, 1, T, time_s_median=factor * f(T), n=5, per_layer=1)
                 for op, f in F.items() for T in (1, 64, 4096)]
    return rows


def write_synthetic(tmp: Path, meta_over: dict | None = None, **kw) -> Path:
    p = tmp / "h200__mixtral-8x7b.parquet"
    meta = {"gpu": "h200", "model": "mixtral-8x7b", "sms": 132, "derived": False, "host_link": LINK,
            "ceiling_copy_Bps": 4.2e12, **(meta_over or {})}
    write_profile(p, synthetic_rows(**kw), meta)
    return p


def shared(positions: int = M.n_expert_positions, on_gpu: bool = True, **res) -> Residency:
    return Residency(groups=(ExpertGroup(frozenset({0, 1, 2}), positions, on_gpu),), **res)


def model_for(p: Path, **cfg) -> ProfileCost:
    return ProfileCost(ProfileCostConfig(path=str(p), step_residual="off", **cfg), M, H200)


# ---- interpolation ----------------------------------------------------------------------------------
def test_curve_exact_at_grid_points_and_power_law_past_the_end() -> None:
    x = np.array(POW2, float)
    c = Curve(x, F["attn_proj"](x))
    np.testing.assert_allclose(c(x), F["attn_proj"](x), rtol=1e-12)
    assert c(0) == 0.0
    assert c(0.5) == pytest.approx(F["attn_proj"](1))  # below the grid the first value holds
    assert c(16384) == pytest.approx(F["attn_proj"](8192) * 2, rel=1e-12)  # slope 1 in log-log


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1e-6, 1.0), min_size=3, max_size=12), st.floats(0.5, 20000), st.floats(0.5, 20000))
def test_curve_is_monotone_even_on_noisy_data(ts: list[float], a: float, b: float) -> None:
    x = np.array([2**i for i in range(len(ts))], float)
    c = Curve(x, np.array(ts))
    lo, hi = min(a, b), max(a, b)
    assert c(lo) <= c(hi) * (1 + 1e-12)
    grid = c(x)
    assert np.all(np.diff(grid) >= -1e-15)  # noisy dips are lifted: a larger size never costs less


def test_surface_exact_at_grid_points_fills_missing_cells_proportionally() -> None:
    a = [1, 2, 4, 1, 2, 1]
    b = [16, 16, 16, 64, 64, 256]
    t = [PREFILL(x, y) for x, y in zip(a, b, strict=True)]
    s = Surface(np.array(a), np.array(b), np.array(t), slope_a=1.0, slope_b=2.0)
    for x, y, v in zip(a, b, t, strict=True):
        assert s(x, y) == pytest.approx(v, rel=1e-12)
    assert s(4, 64) == pytest.approx(PREFILL(2, 64) * 2, rel=1e-12)  # missing cell: ∝ batch
    assert s(1, 512) == pytest.approx(PREFILL(1, 256) * 4, rel=1e-12)  # past the end: ∝ n²


@settings(max_examples=60, deadline=None)
@given(st.floats(1, 400), st.floats(1, 400), st.floats(8, 9000), st.floats(8, 9000))
def test_surface_is_monotone_in_each_axis(b1: float, b2: float, c1: float, c2: float) -> None:
    rows = [(b, c) for b in (1, 4, 16, 64, 256) for c in (16, 128, 1024, 8192) if b * (c + 1) <= 300_000]
    s = Surface(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                np.array([DECODE(*r) for r in rows]), 1.0, 1.0)
    assert s(min(b1, b2), c1) <= s(max(b1, b2), c1) * (1 + 1e-12)
    assert s(b1, min(c1, c2)) <= s(b1, max(c1, c2)) * (1 + 1e-12)


def test_slice_ratio_is_one_on_the_whole_gpu_and_throughput_linear_in_sms() -> None:
    r = SliceRatio(np.array([16, 16, 64, 64]), np.array([1, 100, 1, 100]), np.array([8.0, 4.0, 2.0, 1.5]), 132)
    assert r(132, 10) == pytest.approx(1.0)
    assert r(16, 1) == pytest.approx(8.0)
    assert r(64, 100) == pytest.approx(1.5)
    assert r(40, 1) == pytest.approx(1 / ((1 / 8 + 1 / 2) / 2))  # throughput halfway between 16 and 64 SMs
    assert r(16, 10) == pytest.approx(1 / ((1 / 8 + 1 / 4) / 2))  # halfway in log(size)


# ---- composition ------------------------------------------------------------------------------------
def test_single_tenant_decode_step_equals_the_closed_form(tmp_path: Path) -> None:
    cm = model_for(write_synthetic(tmp_path))
    c = cm.step((SeqWork(0, 1, 1024),), shared())
    L = 32
    # one token: 64 of 256 positions touched (f = 1/4), one token per touched expert → L·moe_grouped(1)
    assert c.experts_s == pytest.approx(L * F["moe_grouped"](1), rel=1e-12)
    assert c.attention_s == pytest.approx(L * (F["attn_proj"](1) + DECODE(1, 1024)), rel=1e-12)
    assert c.router_s == pytest.approx(L * F["router"](1), rel=1e-12)
    assert c.lm_head_s == pytest.approx(F["lm_head"](1), rel=1e-12)
    assert c.overhead_s == pytest.approx(F["embed"](1), rel=1e-12)
    assert c.fetch_s == 0.0
    assert c.expert_fetches == 0.0


def test_tenants_pay_their_own_projections_and_share_experts(tmp_path: Path) -> None:
    cm = model_for(write_synthetic(tmp_path))
    batch = tuple(SeqWork(t, 1, 128) for t in (0, 0, 1, 1))  # 4 decode tokens, 2 per tenant
    c = cm.step(batch, shared())
    assert c.attention_s == pytest.approx(32 * (2 * F["attn_proj"](2) + DECODE(4, 128)), rel=1e-12)
    assert c.lm_head_s == pytest.approx(2 * F["lm_head"](2), rel=1e-12)
    assert c.experts_s == pytest.approx(32 * F["moe_grouped"](4), rel=1e-12)  # one shared group, 4 tokens


def test_prefill_core_uses_equal_causal_work(tmp_path: Path) -> None:
    cm = model_for(write_synthetic(tmp_path))
    one = cm.step((SeqWork(0, 256, 0),), shared())
    assert one.attention_s == pytest.approx(32 * (F["attn_proj"](256) + PREFILL(1, 256)), rel=1e-12)
    # two prompts of 64 and 448 tokens: n_eff² = (64² + 448²)/2 = 256²·(1.5625) … on the grid at b=2 only
    two = cm.step((SeqWork(0, 64, 0), SeqWork(0, 448, 0)), shared())
    n_eff = np.sqrt((64**2 + 448**2) / 2)
    core = two.attention_s / 32 - F["attn_proj"](512)
    assert core == pytest.approx(float(cm.surfaces["attn_prefill"](2, n_eff)), rel=1e-12)


def test_host_group_fetch_closed_form(tmp_path: Path) -> None:
    cm = model_for(write_synthetic(tmp_path))
    res = Residency(groups=(ExpertGroup(frozenset({0}), 200, True), ExpertGroup(frozenset({0}), 56, False)),
                    slice=Slice(link_fraction=0.5), fetch_overlap=0.25, expert_cache_hit=0.1)
    c = cm.step((SeqWork(0, 1, 100),), res)
    touched = 56 * float(expected_active_fraction(1, 8, 2))
    assert c.expert_fetches == pytest.approx(touched * 0.9, rel=1e-12)
    link = LINK["expert_pinned_Bps"] * 0.5
    assert c.fetch_s == pytest.approx(touched * 0.9 * M.expert_bytes / link * 0.75, rel=1e-12)
    assert c.experts_s == pytest.approx(200 / 256 * 32 * F["moe_grouped"](1) + touched * F["expert_one"](1),
                                        rel=1e-12)


def test_decode_run_matches_step_by_step(tmp_path: Path) -> None:
    cm = model_for(write_synthetic(tmp_path))
    tenants, ctx0 = (0, 1, 1, 2, 0), (100, 300, 50, 1000, 7)
    run = cm.decode_run(tenants, ctx0, 40, shared())
    steps = [cm.step(tuple(SeqWork(t, 1, c + k) for t, c in zip(tenants, ctx0, strict=True)), shared()).total_s
             for k in range(40)]
    np.testing.assert_allclose(run.end_s, np.cumsum(steps), rtol=1e-9)
    assert run.cost.total_s == pytest.approx(sum(steps), rel=1e-9)
    assert np.all(np.diff(run.end_s) > 0)


def test_slices_slow_compute_and_bound_memory_time(tmp_path: Path) -> None:
    cm = model_for(write_synthetic(tmp_path, slow={16: 6.0, 64: 2.0}))
    batch = (SeqWork(0, 64, 0),)
    full = cm.step(batch, shared())
    c16 = cm.step(batch, shared(slice=Slice(sm_fraction=16 / 132)))
    assert c16.router_s == pytest.approx(6.0 * full.router_s, rel=1e-9)
    c40 = cm.step(batch, shared(slice=Slice(sm_fraction=40 / 132)))
    assert c40.router_s == pytest.approx(3.0 * full.router_s, rel=1e-9)  # speed 1/6 … 1/2: 1/3 at 40 SMs
    # a 1/8 memory slice: an expert layer at one token must move its touched experts' bytes at 1/8 rate
    mem = cm.step((SeqWork(0, 1, 10),), shared(slice=Slice(bw_fraction=1 / 8)))
    base = cm.step((SeqWork(0, 1, 10),), shared())
    assert mem.experts_s > 4 * base.experts_s
    assert mem.total_s >= base.total_s


def test_swap_uses_the_measured_set_rate(tmp_path: Path) -> None:
    cm = model_for(write_synthetic(tmp_path))
    assert cm.swap_s(3.2e9, shared()) == pytest.approx(3.2e9 / 54e9)
    assert cm.swap_s(3.2e9, shared(slice=Slice(pinned=False)), 0.5) == pytest.approx(3.2e9 / 6.4e9 / 0.5)


def test_step_residual_calibrates_the_composition(tmp_path: Path) -> None:
    rows = synthetic_rows()
    plain = model_for(write_synthetic(tmp_path))
    grid_steps = [(1, 1, 1024), (16, 1, 128), (1, 1024, 0)]
    extra = {1: 2e-3, 16: 3e-3, 1024: 4e-3}  # measured = composed + extra(tokens)
    for b, n, c in grid_steps:
        composed = plain.step(tuple(SeqWork(0, n, c) for _ in range(b)), shared()).total_s
        rows.append(Row("h200", "mixtral-8x7b", "step", 132, b, n, c, time_s_median=composed + extra[b * n], n=5))
    p = tmp_path / "r" / "h200__mixtral-8x7b.parquet"
    write_profile(p, rows, {"gpu": "h200", "model": "mixtral-8x7b", "sms": 132, "host_link": LINK,
                            "execution": "eager"})
    cm = ProfileCost(ProfileCostConfig(path=str(p)), M, H200)  # auto: on for an eager profile
    assert ProfileCost(ProfileCostConfig(path=str(p), step_residual="off"), M, H200).step(
        (SeqWork(0, 1, 1024),), shared()).total_s == pytest.approx(plain.step((SeqWork(0, 1, 1024),), shared()).total_s)
    got = cm.step((SeqWork(0, 1, 1024),), shared()).total_s
    assert got == pytest.approx(plain.step((SeqWork(0, 1, 1024),), shared()).total_s + 2e-3, rel=1e-9)
    # 4 tokens: halfway in log(tokens) between 1 and 16
    four = tuple(SeqWork(0, 1, 128) for _ in range(4))
    assert cm.step(four, shared()).total_s == pytest.approx(plain.step(four, shared()).total_s + 2.5e-3, rel=1e-9)


# ---- refusals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value", "needle"), [
    ("model", "tiny", "model 'tiny' ≠ 'mixtral-8x7b'"),
    ("gpu", "a100-80gb", "gpu 'a100-80gb' ≠ 'h200'"),
])
def test_mismatched_profile_is_refused_in_one_line(tmp_path: Path, field: str, value: str, needle: str) -> None:
    p = write_synthetic(tmp_path, meta_over={field: value})
    with pytest.raises(UserError, match=needle) as e:
        model_for(p)
    assert "\n" not in str(e.value)


def test_wrong_schema_version_is_refused(tmp_path: Path) -> None:
    p = write_synthetic(tmp_path)
    meta = json.loads(p.with_suffix(".json").read_text())
    meta["schema_version"] = "moesim.profile/0"
    p.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=f"schema_version 'moesim.profile/0'.*{SCHEMA_VERSION}") as e:
        model_for(p)
    assert "\n" not in str(e.value)


def test_missing_file_and_missing_op_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        model_for(tmp_path / "nope.parquet")
    p = tmp_path / "h200__mixtral-8x7b.parquet"
    write_profile(p, [r for r in synthetic_rows() if r.op != "router"], {"gpu": "h200", "model": "mixtral-8x7b"})
    with pytest.raises(UserError, match="no measured rows for op 'router'"):
        model_for(p)


def test_auto_without_a_shipped_profile_lists_what_exists() -> None:
    tiny_gpu = dataclasses.replace(H200, name="no-such-gpu")
    with pytest.raises(UserError, match=r"no profile for gpu=no-such-gpu × model=mixtral-8x7b \(execution"
                       r"=graphs\).*available"):
        ProfileCost(ProfileCostConfig(), M, tiny_gpu)


def test_registered_under_profile() -> None:
    cls, cfg_cls = COST_MODELS.get("profile")
    assert cls is ProfileCost
    assert cfg_cls is ProfileCostConfig
    assert COST_MODELS.config("profile", {"path": "x.parquet"}).path == "x.parquet"


def test_load_time_tables_are_numpy_not_frames(tmp_path: Path) -> None:
    cm = model_for(write_synthetic(tmp_path))
    for table in (*cm.curves.values(), *cm.surfaces.values()):
        assert all(isinstance(v, np.ndarray | list | float | dict) for v in vars(table).values())  # dict: column cache
    assert not any(isinstance(v, pd.DataFrame | pd.Series) for v in vars(cm).values())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.1, 40000), min_size=1, max_size=6), st.floats(10, 140))
def test_scalar_fast_paths_equal_the_array_paths(xs: list[float], sms: float) -> None:
    x = np.array(POW2, float)
    c = Curve(x, F["expert_one"](x))
    s = Surface(np.array([1, 2, 4, 1, 2]), np.array([16, 16, 16, 64, 64]),
                np.array([PREFILL(1, 16), PREFILL(2, 16), PREFILL(4, 16), PREFILL(1, 64), PREFILL(2, 64)]), 1.0, 2.0)
    r = SliceRatio(np.array([16, 16, 64]), np.array([1, 100, 1]), np.array([8.0, 4.0, 2.0]), 132)
    arr = np.array(xs)
    np.testing.assert_allclose([c(v) for v in xs], c(arr), rtol=1e-12)
    np.testing.assert_allclose([s(v, v) for v in xs], s(arr, arr), rtol=1e-12)
    np.testing.assert_allclose([r(sms, v) for v in xs], r(sms, arr), rtol=1e-12)
