"""The A100-80GB profile derived from an H200 one: ceilings scaled by datasheet ratios, marked derived."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from moesim.cost.base import SeqWork
from moesim.cost.profile import ProfileCost, ProfileCostConfig
from moesim.formats.profile import Row, read_profile, write_profile
from moesim.specs import get_gpu, get_model
from tests.test_profile_cost import LINK, shared, synthetic_rows

REPO = Path(__file__).resolve().parents[1]


def _derive_module():
    spec = importlib.util.spec_from_file_location("derive_a100", REPO / "calibration" / "derive_a100.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_derived_a100_profile(tmp_path: Path) -> None:
    rows = synthetic_rows(slow={16: 6.0})
    rows += [Row("h200", "mixtral-8x7b", "ceil_d2d_copy", 132, nbytes=2**31, time_s_median=2 * 2**31 / 4.2e12, n=3),
             Row("h200", "mixtral-8x7b", "h2d_plain", 132, pinned=1, nbytes=2**31, time_s_median=2**31 / 55e9, n=3),
             Row("h200", "mixtral-8x7b", "h2d_nonexpert_set", 132, pinned=1, nbytes=3_211_272_192,
                 time_s_median=3_211_272_192 / (0.98 * 55e9), n=3),
             Row("h200", "mixtral-8x7b", "step", 132, 1, 1, 512, time_s_median=0.05, n=5)]
    src = tmp_path / "h200__mixtral-8x7b.parquet"
    link = {**LINK, "plain_pinned_Bps": 55e9, "plain_pageable_Bps": 6.5e9}
    write_profile(src, rows, {"gpu": "h200", "model": "mixtral-8x7b", "sms": 132, "host_link": link,
                              "ceiling_copy_Bps": 4.2e12, "ceiling_gemm_flops": 790e12})
    out = _derive_module().derive(src, tmp_path)
    df, meta = read_profile(out)
    assert meta["derived"] is True
    assert meta["gpu"] == "a100-80gb"
    assert meta["sms"] == 108
    B_a = 2039e9 * 4.2e12 / 4800e9
    assert meta["ceiling_copy_Bps"] == pytest.approx(B_a)
    assert meta["ceiling_gemm_flops"] == pytest.approx(312e12 * 790 / 989)
    one = lambda op: df[df["op"] == op].iloc[0]  # noqa: E731
    assert one("ceil_d2d_copy")["time_s_median"] == pytest.approx(2 * 2**31 / B_a)
    assert one("h2d_plain")["time_s_median"] == pytest.approx(2**31 / 25e9)  # PCIe Gen4 pinned
    assert one("h2d_nonexpert_set")["time_s_median"] == pytest.approx(3_211_272_192 / (0.98 * 25e9))
    src_df, _ = read_profile(src)
    for op in ("attn_proj", "moe_grouped", "attn_decode"):  # an A100 is never faster than the H200
        a = df[df["op"] == op].set_index(["batch", "tokens", "context", "sms"])["time_s_median"]
        h = src_df[(src_df["op"] == op) & (src_df["sms"] == 132)].set_index(["batch", "tokens", "context"])
        h = h["time_s_median"]
        joined = a.xs(108, level="sms").reindex(h.index)
        assert (joined >= h * (1 - 1e-12)).all(), op
    assert set(df[df["sms"] < 108]["sms"]) == {13}  # 16 of 132 SMs → 13 of 108
    cm = ProfileCost(ProfileCostConfig(path=str(out)), get_model("mixtral-8x7b"), get_gpu("a100-80gb"))
    assert cm.derived
    assert cm.step((SeqWork(0, 1, 512),), shared()).total_s > 0.05  # the H200 step was 50 ms
