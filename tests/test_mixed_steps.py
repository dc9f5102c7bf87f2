"""What multi-tenant and mixed prefill + decode steps add: the grid's new ops, their composition in ``cost=profile``
(hand-computed from synthetic tables), backward compatibility with profiles that lack them, balanced routing
per tenant, the second held-out set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_profile_cost import DECODE, PREFILL, F, M, shared, synthetic_rows

from moesim.calibrate.grids import make_grids, spread_contexts
from moesim.calibrate.validate import (
    batch_kind,
    draw_heldout_batches,
    gpu_spec_for,
    residency_from,
    validation_batches,
)
from moesim.cost.base import ExpertGroup, Residency, SeqWork
from moesim.cost.profile import PROFILES_DIR, ProfileCost, ProfileCostConfig
from moesim.cost.profile_tenants import MixedExcess
from moesim.errors import UserError
from moesim.formats.profile import Row, profile_model, read_profile, write_profile
from moesim.specs import get_gpu

H200 = get_gpu("h200")
L = 32  # Mixtral's layers (all MoE)
NEW_OPS = ("concat_qkv", "concat_route", "attn_mixed", "attn_mixed_parts", "step_mixed")
TAU, MU = 5e-6, 3e-6  # the fixed per-extra-tenant and per-mixed-step costs the synthetic step rows carry


def CQKV(n: float, T: float) -> float:
    return 1e-6 * n**0.5 * T**0.25


def CROUTE(n: float, T: float) -> float:
    return 5e-7 * n**0.5 * T**0.5


def EXCESS(b: float, n: float, c: float) -> float:
    return 1e-9 * b * n + 2e-6 + 1e-10 * c


def tenant_rows(sms: int = 132) -> list[Row]:
    g = make_grids("full")
    rows = [Row("h200", M.name, op, sms, n, T, time_s_median=f(n, T), n=5, per_layer=1)
            for op, f in (("concat_qkv", CQKV), ("concat_route", CROUTE)) for n, T in g.concat_points()]
    for b, n, c in g.mixed_points():
        parts = PREFILL(1, n) + DECODE(b, c)
        rows.append(Row("h200", M.name, "attn_mixed_parts", sms, b, n, c, time_s_median=parts, n=5, per_layer=1))
        rows.append(Row("h200", M.name, "attn_mixed", sms, b, n, c, time_s_median=parts + EXCESS(b, n, c), n=5,
                        per_layer=1))
    return rows


def write(tmp: Path, rows: list[Row], name: str = "h200__mixtral-8x7b.parquet", **meta) -> Path:
    p = tmp / name
    write_profile(p, rows, {"gpu": "h200", "model": M.name, "sms": 132, "derived": False, "ceiling_copy_Bps": 4.2e12,
                            "mixed_step_tenants": 3, **meta})
    return p


def grid_batch(n: int, b: int, c: int, nt: int = 3) -> tuple[SeqWork, ...]:
    """A ``step_mixed`` grid point as the calibrator builds it."""
    return tuple(([SeqWork(0, n, 0)] if n else []) + [SeqWork(i % nt, 1, ci)
                                                        for i, ci in enumerate(spread_contexts(b, c))])


def profile_with_steps(tmp: Path) -> Path:
    """Synthetic tables + tenant ops + ``step_mixed`` rows measured as composed + L·(k−1)·TAU (+ L·MU if mixed)."""
    base = write(tmp, synthetic_rows() + tenant_rows(), "base.parquet")
    cm = ProfileCost(ProfileCostConfig(path=str(base)), M, H200)
    res = Residency(groups=(ExpertGroup(frozenset({0, 1, 2}), M.n_expert_positions, True),))
    rows = []
    for n, b, c in make_grids("full").mixed_step_points:
        batch = grid_batch(n, b, c)
        k = len({s.tenant for s in batch})
        t = cm.step(batch, res).total_s + L * (k - 1) * TAU + (L * MU if n else 0.0)
        rows.append(Row("h200", M.name, "step_mixed", 132, b, n, c, time_s_median=t, n=5))
    return write(tmp, synthetic_rows() + tenant_rows() + rows)


# ---- the new ops' tables ----------------------------------------------------------------------------
def test_mixed_excess_is_exact_for_bilinear_excess_and_extrapolates_along_the_last_slope() -> None:
    g = make_grids("full")
    pts = g.mixed_points()
    ex = MixedExcess(*(np.array(x, float) for x in zip(*pts, strict=True)),
                     np.array([EXCESS(*p) for p in pts]))
    for b, n, c in [(4, 256, 1000), (37, 3000, 256), (1, 16, 2048), (200, 100, 700)]:
        assert ex(b, n, c) == pytest.approx(EXCESS(b, n, c), rel=1e-12)
    assert ex(512, 8192, 2048) == pytest.approx(EXCESS(512, 8192, 2048), rel=1e-12)  # past both ends: affine
    assert ex(4, 256, 100) == pytest.approx(EXCESS(4, 256, 256), rel=1e-12)  # contexts: held outside the grid
    assert ex(4, 256, 9000) == pytest.approx(EXCESS(4, 256, 2048), rel=1e-12)


def test_mixed_excess_fills_a_missing_cell_from_its_neighbours() -> None:
    b, n, c = np.array([1, 4, 1, 4.0]), np.array([16, 16, 128, 128.0]), np.array([256.0] * 4)
    keep = np.array([True, True, True, False])
    ex = MixedExcess(b[keep], n[keep], c[keep], np.array([1.0, 2.0, 3.0]))
    assert ex(4, 128, 256) == pytest.approx((2.0 + 3.0) / 2)


# ---- composition, by hand ----------------------------------------------------------------------------
def test_fixed_costs_are_recovered_from_the_grid_steps(tmp_path: Path) -> None:
    cm = ProfileCost(ProfileCostConfig(path=str(profile_with_steps(tmp_path))), M, H200)
    assert cm.tenant_fixed_s == pytest.approx(TAU, rel=1e-9)
    assert cm.mixed_fixed_s == pytest.approx(MU, rel=1e-9)


def test_mixed_three_tenant_step_is_composed_as_computed_by_hand(tmp_path: Path) -> None:
    cm = ProfileCost(ProfileCostConfig(path=str(profile_with_steps(tmp_path))), M, H200)
    # a prompt of 256 on tenant 0, two decodes (context 1,000) on each of tenants 1 and 2: 260 tokens
    batch = (SeqWork(0, 256, 0), SeqWork(1, 1, 1000), SeqWork(1, 1, 1000), SeqWork(2, 1, 1000),
             SeqWork(2, 1, 1000))
    c = cm.step(batch, shared())
    N = 260
    dec = float(cm.surfaces["attn_decode"](4, 1000))
    core = PREFILL(1, 256) + dec + EXCESS(4, 256, 1000)  # 4 sequences besides the prompt
    assert c.attention_s == pytest.approx(
        L * (F["attn_proj"](256) + 2 * F["attn_proj"](2) + CQKV(3, N) + core), rel=1e-9)
    assert c.router_s == pytest.approx(L * (F["router"](256) + 2 * F["router"](2) + CROUTE(3, N)), rel=1e-9)
    assert c.lm_head_s == pytest.approx(F["lm_head"](1) + 2 * F["lm_head"](2), rel=1e-12)
    assert c.overhead_s == pytest.approx(F["embed"](256) + 2 * F["embed"](2) + L * 2 * TAU + L * MU, rel=1e-9)
    one = cm.step((SeqWork(0, N, 0),), shared())  # experts depend on the tokens only
    assert c.experts_s == pytest.approx(one.experts_s, rel=1e-12)
    # without the rows (tenant_terms=off) the same step is the earlier composition
    off = ProfileCost(ProfileCostConfig(path=cm.path.as_posix(), tenant_terms="off"), M, H200).step(batch, shared())
    assert off.attention_s == pytest.approx(
        L * (F["attn_proj"](256) + 2 * F["attn_proj"](2) + PREFILL(1, 256) + dec), rel=1e-9)
    assert off.total_s < c.total_s


def test_single_tenant_steps_and_decode_runs_carry_no_tenant_terms(tmp_path: Path) -> None:
    p = profile_with_steps(tmp_path)
    on = ProfileCost(ProfileCostConfig(path=str(p)), M, H200)
    off = ProfileCost(ProfileCostConfig(path=str(p), tenant_terms="off"), M, H200)
    for batch in [(SeqWork(0, 1, 500), SeqWork(0, 1, 900)), (SeqWork(1, 700, 0),), (SeqWork(0, 64, 0), SeqWork(0, 9, 0))]:
        assert on.step(batch, shared()).total_s == off.step(batch, shared()).total_s
    # a decode run over two tenants pays the concatenations and one extra tenant's fixed cost per step
    run_on, run_off = (m.decode_run((0, 1, 1), (100, 200, 300), 4, shared()) for m in (on, off))
    extra = L * (CQKV(2, 8) + CROUTE(2, 8) + TAU)  # 3 tokens: below the grid's 8, the first value holds
    np.testing.assert_allclose(run_on.end_s - run_off.end_s, extra * np.arange(1, 5), rtol=1e-9)
    step = on.step((SeqWork(0, 1, 100), SeqWork(1, 1, 200), SeqWork(1, 1, 300)), shared())
    assert run_on.end_s[0] == pytest.approx(step.total_s, rel=1e-12)


# ---- backward compatibility --------------------------------------------------------------------------
BEFORE = json.loads((Path(__file__).parent / "data" / "profile_cost_before_tenant_ops.json").read_text())


def _numbers(p: Path, **cfg: object) -> tuple[list[float], list[float]]:
    _, meta = read_profile(p)
    model = profile_model(meta)
    cost = ProfileCost(ProfileCostConfig(path=str(p), **cfg), model, gpu_spec_for(meta))  # type: ignore[arg-type]
    res = residency_from(meta.get("validation_residency") or [
        {"tenants": [0, 1, 2], "positions": model.n_expert_positions, "on_gpu": True}])
    steps = [cost.step(tuple(SeqWork(*s) for s in b), res).total_s for b in validation_batches(3, "full", 0)]
    run = cost.decode_run((0, 1, 2, 0), (100, 200, 300, 400), 5, res)
    return steps, [float(x) for x in run.end_s]


@pytest.mark.parametrize("stem", sorted(k for k in BEFORE if "/" not in k))
def test_profiles_without_the_new_rows_give_exactly_the_earlier_numbers(stem: str, tmp_path: Path) -> None:
    """Numbers recorded before the tenant terms existed (tests/data), from the shipped profiles with the new
    rows removed, and from the same profiles with ``tenant_terms=off``."""
    df, meta = read_profile(PROFILES_DIR / f"{stem}.parquet")
    old = df[~df["op"].isin(NEW_OPS)]
    p = tmp_path / f"{stem}.parquet"
    old.to_parquet(p, index=False)
    p.with_suffix(".json").write_text(json.dumps(meta))
    steps, run = _numbers(p)
    assert steps == pytest.approx(BEFORE[stem], rel=1e-12, abs=0)
    assert run == pytest.approx(BEFORE[stem + "/decode_run"], rel=1e-12, abs=0)
    steps_off, run_off = _numbers(PROFILES_DIR / f"{stem}.parquet", tenant_terms="off")
    assert steps_off == pytest.approx(BEFORE[stem], rel=1e-12, abs=0)
    assert run_off == pytest.approx(BEFORE[stem + "/decode_run"], rel=1e-12, abs=0)


def test_bad_tenant_terms_is_one_line() -> None:
    with pytest.raises(UserError, match="tenant_terms='sometimes': valid: auto, off"):
        ProfileCostConfig(tenant_terms="sometimes")


# ---- balanced routing per tenant, the second held-out set ---------------------------------------------
def test_balanced_routing_gives_each_packed_token_its_own_noise_row() -> None:
    torch = pytest.importorskip("torch")
    from moesim.calibrate.engine import ROUTE_NOISE_ROWS, MoEEngine
    from moesim.specs import get_model

    eng = MoEEngine(get_model("tiny"), torch.device("cpu"), n_tenants=2, dtype=torch.float32, balanced_routing=True)
    layer = next(i for i in range(eng.spec.n_layers) if eng.is_moe(i))
    X = eng.random_hidden(12)
    _, i_all, w_all = eng.router(X, 1, layer)
    _, i_sl, w_sl = eng.router(X[5:9], 1, layer, row0=5)  # a tenant's slice starting at packed row 5
    assert torch.equal(i_sl, i_all[5:9])
    assert torch.allclose(w_sl, w_all[5:9])
    _, i_0, _ = eng.router(X[5:9], 1, layer)  # from row 0 (the old behaviour): other noise rows
    assert not torch.equal(i_0, i_all[5:9])
    # wrapping past the table's end
    R = ROUTE_NOISE_ROWS
    x = eng.random_hidden(3)
    eng.route_noise = torch.zeros_like(eng.route_noise)
    eng.route_noise[R - 1, 0] = eng.route_noise[0, 1] = eng.route_noise[1, 2] = 1e4
    _, idx, _ = eng.router(x, 0, layer, row0=R - 1)
    assert idx[:, 0].tolist() == [0, 1, 2]


def test_drawn_held_out_set_has_the_same_kinds_and_is_seeded() -> None:
    a, b = draw_heldout_batches(3, "full", 1), draw_heldout_batches(3, "full", 1)
    assert a == b
    assert a != draw_heldout_batches(3, "full", 2)
    base = validation_batches(3, "full", 0)
    assert [batch_kind(x) for x in a] == [batch_kind(x) for x in base] == ["decode"] * 6 + ["prefill"] * 6 + [
        "mixed"] * 6
    assert a != base
    for x, y in zip(a, base, strict=True):  # same tenant spread, kind by kind
        assert len({t for t, _, _ in x}) == len({t for t, _, _ in y})
    assert all(0 <= t < 3 and n >= 1 and c >= 0 for x in a for t, n, c in x)


def test_validate_cli_reports_each_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from moesim.calibrate.validate import main

    p = profile_with_steps(tmp_path)
    batches = draw_heldout_batches(3, "full", 1)
    cm = ProfileCost(ProfileCostConfig(path=str(p)), M, H200)
    res = shared()
    meas = [cm.step(tuple(SeqWork(*s) for s in b), res).total_s * 1.02 for b in batches]  # 2 % slower than predicted
    pd.DataFrame({"batch_id": range(18), "seqs": [json.dumps([list(s) for s in b]) for b in batches],
                  "description": ["x"] * 18, "n_tenants": 3, "tokens": 1, "status": "ok",
                  "time_s_median": meas}).to_parquet(tmp_path / "h200__mixtral-8x7b.validation.seed1.parquet")
    main([f"profile={p}", "heldout=seed1"])
    out = capsys.readouterr().out
    for kind in ("decode", "prefill", "mixed"):
        assert f"  {kind:8s}  6 steps: median |error| 1.96% · max 1.96%" in out
    with pytest.raises(SystemExit):
        main([f"profile={p}", "heldout=seed9"])
