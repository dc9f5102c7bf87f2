"""The shipped profiles: they load by ``auto``, are marked measured or derived, and meet the must-holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moesim.calibrate.validate import report, shared_residency
from moesim.cost.base import SeqWork, Slice
from moesim.cost.profile import PROFILES_DIR, ProfileCost, ProfileCostConfig, available_profiles
from moesim.formats.profile import read_profile
from moesim.specs import get_gpu, get_model

MIXTRAL = get_model("mixtral-8x7b")


@pytest.mark.parametrize("execution", ["graphs", "eager"])
@pytest.mark.parametrize(("gpu", "derived"), [("h200", False), ("a100-80gb", True)])
@pytest.mark.parametrize("model", ["mixtral-8x7b", "switch-base-8"])
def test_shipped_profiles_load_and_say_how_they_were_made(gpu: str, derived: bool, model: str,
                                                          execution: str) -> None:
    cm = ProfileCost(ProfileCostConfig(execution=execution), get_model(model), get_gpu(gpu))
    assert cm.derived is derived
    assert cm.execution == execution
    _, meta = read_profile(cm.path)
    assert meta["derived"] is derived
    if derived:
        assert "H200" in meta["derived_method"] or "h200" in meta["derived_from"]
    else:
        assert meta["system"]["nvml"]["name"] == "NVIDIA H200"
        assert meta["system"]["nvml"]["mig_mode"] == 0  # measured as found, never changed
    step = cm.step((SeqWork(0, 1, 700),), shared_residency(model)).total_s
    assert 1e-3 < step < 0.2


def test_available_profiles_lists_the_shipped_ones() -> None:
    have = available_profiles()
    assert {"h200__mixtral-8x7b", "h200__mixtral-8x7b.eager", "a100-80gb__mixtral-8x7b"} <= set(have)
    assert not any(".validation" in s for s in have)


def test_held_out_median_error_within_five_percent() -> None:
    v = report(PROFILES_DIR / "h200__mixtral-8x7b.parquet")
    ok = v[v["status"] == "ok"]
    assert len(ok) == 18
    assert ok["n_tenants"].max() == 3
    assert float(np.median(ok["error_pct"].abs())) <= 5.0


@pytest.mark.parametrize("model", ["qwen3-30b-a3b", "olmoe-1b-7b", "qwen1.5-moe-a2.7b", "mixtral-8x7b"])
@pytest.mark.parametrize("heldout", ["", "seed1"])
def test_issue10_held_out_target_on_both_held_out_sets(model: str, heldout: str) -> None:
    """Median |error| ≤ 5 % and max ≤ 10 % (calibration/NOTES.md, mixed steps, 2026-11-30): the first set as
    re-timed with routing per packed token (Mixtral: as measured 2026-11-29) and the set drawn with seed 1."""
    v = report(PROFILES_DIR / f"h200__{model}.parquet", heldout)
    ok = v[v["status"] == "ok"]
    assert len(ok) == 18
    assert sorted(ok["kind"].value_counts().items()) == [("decode", 6), ("mixed", 6), ("prefill", 6)]
    err = ok["error_pct"].abs()
    assert float(err.median()) <= 5.0
    assert float(err.max()) <= 10.0
    # the earlier composition (tenant_terms=off) misses the max on every fine-grained model's mixed steps
    if model == "qwen3-30b-a3b":
        off = report(PROFILES_DIR / f"h200__{model}.parquet", heldout, tenant_terms="off")
        assert float(off.loc[off["kind"] == "mixed", "error_pct"].min()) < -10.0


def test_nonexpert_set_moves_at_least_90_percent_of_plain_pinned() -> None:
    for stem in ("h200__mixtral-8x7b", "h200__mixtral-8x7b.eager"):
        link = json.loads((PROFILES_DIR / f"{stem}.json").read_text())["host_link"]
        assert link["set_pinned_Bps"] / link["plain_pinned_Bps"] >= 0.9
        assert link["set_over_plain_pinned"] == pytest.approx(link["set_pinned_Bps"] / link["plain_pinned_Bps"])


def test_measured_h200_is_faster_than_derived_a100_and_slices_are_slower() -> None:
    h = ProfileCost(ProfileCostConfig(), MIXTRAL, get_gpu("h200"))
    a = ProfileCost(ProfileCostConfig(), MIXTRAL, get_gpu("a100-80gb"))
    res = shared_residency(MIXTRAL.name)
    for batch in ((SeqWork(0, 1, 1000),), (SeqWork(0, 2048, 0),), tuple(SeqWork(i % 3, 1, 500) for i in range(64))):
        t_h, t_a = h.step(batch, res).total_s, a.step(batch, res).total_s
        assert t_a > t_h
        one_g = h.step(batch, type(res)(res.groups, Slice(sm_fraction=16 / 132, bw_fraction=1 / 8))).total_s
        four_g = h.step(batch, type(res)(res.groups, Slice(sm_fraction=64 / 132, bw_fraction=4 / 8))).total_s
        assert one_g > four_g > t_h
    assert a.swap_s(MIXTRAL.nonexpert_bytes, res) > 2 * h.swap_s(MIXTRAL.nonexpert_bytes, res)


def test_profiles_folder_is_inside_the_repository() -> None:
    assert Path(__file__).resolve().parents[1] / "calibration" / "profiles" == PROFILES_DIR


def test_fused_engine_profile_held_out_errors_as_documented() -> None:
    """h200__mixtral-8x7b.triton (third calibration, 2026-11-30 08:41, calibration/NOTES.md): median 2.15 %,
    max 6.36 % (target ≤ 10 %); without the regime-aware MoE curve the 1,310-token mixed step is +7.9 %
    (interpolated across the 1,025-token tile change, where the layer drops from 1,983 to 1,609 µs)."""
    v = report(PROFILES_DIR / "h200__mixtral-8x7b.triton.parquet")
    ok = v[v["status"] == "ok"]
    assert len(ok) == 18
    err = ok["error_pct"]
    assert float(err.abs().median()) == pytest.approx(2.15, abs=0.01)
    assert float(err.abs().max()) == pytest.approx(6.36, abs=0.01)
    mixed = ok[ok["description"].str.startswith("prefill 1200,50 + decode 60")]["error_pct"]
    assert float(mixed.iloc[0]) == pytest.approx(3.3, abs=0.05)


def test_fused_engine_profile_regimes_keep_the_tile_change_as_a_step() -> None:
    """The MoE layer measured on both sides of the 1,025-token regime start: 1,983 µs at 1,024 tokens, 1,609 µs at
    1,025; the composed curve keeps the drop (a monotone curve would carry 1,983 µs up to 1,448 tokens)."""
    from moesim.calibrate.validate import gpu_spec_for
    from moesim.cost.profile import ProfileCost, ProfileCostConfig
    from moesim.formats.profile import profile_model, read_profile

    path = PROFILES_DIR / "h200__mixtral-8x7b.triton.parquet"
    _, meta = read_profile(path)
    assert meta["moe_regimes"] == [33, 129, 1025, 2049]
    assert meta["route_layer_stride"] == 1031
    cost = ProfileCost(ProfileCostConfig(path=str(path)), profile_model(meta), gpu_spec_for(meta))
    c = cost.curves["moe_grouped"]
    assert c(1024.0) == pytest.approx(1.983e-3, rel=2e-3)
    assert c(1025.0) == pytest.approx(1.609e-3, rel=2e-3)
    assert c(1200.0) < c(1024.0)
