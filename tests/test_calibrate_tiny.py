"""The calibrator's CPU path end to end (tiny model, quick grid), its schema, resume, OOM handling, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from moesim.calibrate.config import CalibrateConfig, parse_args
from moesim.calibrate.engine import KVCache, MoEEngine
from moesim.calibrate.grids import log_grid, make_grids
from moesim.calibrate.validate import validation_batches
from moesim.calibrate.work import op_work
from moesim.errors import UserError
from moesim.formats.profile import COLUMNS, OPS, SCHEMA_VERSION, read_profile
from moesim.specs import get_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CPU calibration of the tiny model, run as a user would (a subprocess of the CLI)."""
    out = tmp_path_factory.mktemp("profiles")
    proc = subprocess.run(
        [sys.executable, "-m", "moesim.calibrate", "device=cpu", "model=tiny", f"out={out}", "heldout_seed=3"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out / "cpu__tiny.eager.parquet"  # no CUDA graphs on a CPU: the eager profile


def test_tiny_profile_has_every_op_measured(tiny_run: Path) -> None:
    df, meta = read_profile(tiny_run)
    assert list(df.columns) == COLUMNS
    assert meta["schema_version"] == SCHEMA_VERSION
    assert (meta["gpu"], meta["model"], meta["derived"], meta["execution"]) == ("cpu", "tiny", False, "eager")
    g = make_grids("quick")
    ok = df[df["status"] == "ok"]
    # every grid point of the per-layer dense ops, exactly once
    for op in ("attn_proj", "router", "moe_grouped", "expert_one"):
        assert sorted(ok[ok["op"] == op]["tokens"]) == sorted(g.tokens), op
    assert len(ok[ok["op"] == "attn_prefill"]) == len(g.prefill_points())
    assert len(ok[ok["op"] == "attn_decode"]) == len(g.decode_points())
    assert sorted(ok[ok["op"] == "lm_head"]["tokens"]) == sorted(g.lm_rows)
    assert len(ok[ok["op"] == "step"]) == len(g.step_points)
    assert set(df["op"]) <= set(OPS)
    assert not df.duplicated(["op", "sms", "batch", "tokens", "context", "pinned", "nbytes"]).any()
    assert (ok["time_s_p10"] <= ok["time_s_median"]).all()
    assert (ok["time_s_median"] <= ok["time_s_p90"]).all()
    assert (ok["time_s_median"] > 0).all()
    assert (ok["n"] >= 3).all()
    per_layer_ops = {"attn_proj", "router", "moe_grouped", "moe_loop", "expert_one", "attn_prefill", "attn_decode",
                     "concat_qkv", "concat_route", "attn_mixed", "attn_mixed_parts"}
    assert (ok["per_layer"] == ok["op"].isin(per_layer_ops).astype(int)).all()
    assert meta["checks"]["moe_grouped_vs_loop_rel_err"] < 1e-4
    assert meta["rows"] == len(df)


def test_tiny_validation_file_times_every_held_out_batch(tiny_run: Path) -> None:
    v = pd.read_parquet(tiny_run.with_name("cpu__tiny.eager.validation.parquet"))
    batches = validation_batches(3, "quick", 0)
    assert len(v) == len(batches)
    assert [json.loads(s) for s in v["seqs"]] == [[list(x) for x in b] for b in batches]
    assert (v["status"] == "ok").all()
    assert (v["time_s_median"] > 0).all()


def test_tiny_run_times_what_multi_tenant_and_mixed_steps_add(tiny_run: Path) -> None:
    from moesim.calibrate.grids import spread_contexts

    df, meta = read_profile(tiny_run)
    g = make_grids("quick")
    ok = df[df["status"] == "ok"]
    for op in ("concat_qkv", "concat_route"):  # tenants × tokens, each once
        assert sorted(map(tuple, ok[ok["op"] == op][["batch", "tokens"]].to_numpy().tolist())) == sorted(
            g.concat_points()), op
    for op in ("attn_mixed", "attn_mixed_parts"):  # (decodes, prompt, context), each once
        got = ok[ok["op"] == op][["batch", "tokens", "context"]].to_numpy().tolist()
        assert sorted(map(tuple, got)) == sorted(g.mixed_points()), op
    mixed = ok[ok["op"] == "step_mixed"]
    assert sorted(map(tuple, mixed[["tokens", "batch", "context"]].to_numpy().tolist())) == sorted(
        g.mixed_step_points)
    assert (mixed["per_layer"] == 0).all()
    assert meta["mixed_step_tenants"] == 3
    assert meta["grids"]["mixed_ctx"] == list(g.mixed_ctx)
    # the spread contexts of a grid point: a factor e^3 end to end, mean as asked
    cs = spread_contexts(64, 2048)
    assert abs(sum(cs) / 64 - 2048) < 1
    assert max(cs) / min(cs) == pytest.approx(np.exp(3.0), rel=0.01)


def test_tiny_second_held_out_set_is_drawn_from_its_seed(tiny_run: Path) -> None:
    from moesim.calibrate.validate import draw_heldout_batches

    _, meta = read_profile(tiny_run)
    name = meta["validation_files_extra"]["seed3"]
    assert name == "cpu__tiny.eager.validation.seed3.parquet"
    v = pd.read_parquet(tiny_run.with_name(name))
    batches = draw_heldout_batches(3, "quick", 3)
    assert [json.loads(s) for s in v["seqs"]] == [[list(x) for x in b] for b in batches]
    assert batches != validation_batches(3, "quick", 0)
    assert (v["status"] == "ok").all()
    assert (v["time_s_median"] > 0).all()


def test_resume_keeps_points_and_adds_none(tiny_run: Path, tmp_path: Path) -> None:
    from moesim.calibrate.suite import Calibration

    target = tmp_path / tiny_run.name
    target.write_bytes(tiny_run.read_bytes())
    target.with_suffix(".json").write_text(tiny_run.with_suffix(".json").read_text())
    before, _ = read_profile(target)
    cal = Calibration(CalibrateConfig(device="cpu", model="tiny", grid="quick", out=str(tmp_path),
                                      validate=False, host=False, slices=False))
    kept = int(before["status"].isin(["ok", "oom"]).sum())
    assert cal.rec.resumed == kept
    calls = []
    assert cal.point("attn_proj", lambda: calls.append(1) or ((lambda: None), 1), tokens=1, per_layer=1) is None
    assert calls == []  # a resumed point is not measured again
    old_meta = json.loads(tiny_run.with_suffix(".json").read_text())
    cal.ceilings()  # both points resumed: the figures they gave are kept
    assert cal.meta["ceiling_copy_Bps"] == old_meta["ceiling_copy_Bps"]
    assert cal.meta["host_link"] == old_meta["host_link"]


def test_out_of_memory_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    from moesim.calibrate.suite import Calibration

    cal = Calibration(CalibrateConfig(device="cpu", model="tiny", grid="quick", out=str(tmp_path)))

    def oom() -> tuple:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    assert cal.point("attn_decode", oom, batch=256, tokens=1, context=16384, per_layer=1) is None
    t = cal.point("embed", lambda: ((lambda: torch.zeros(4)), 1), tokens=4)
    assert t is not None
    assert t.median_s > 0
    status = {(r.op, r.batch): r.status for r in cal.rec.rows}
    assert status == {("attn_decode", 256): "oom", ("embed", 1): "ok"}


def test_budget_marks_points_instead_of_measuring(tmp_path: Path) -> None:
    from moesim.calibrate.suite import Calibration

    cal = Calibration(CalibrateConfig(device="cpu", model="tiny", grid="quick", out=str(tmp_path), budget_s=1e-9))
    assert cal.point("embed", lambda: ((lambda: None), 1), tokens=2) is None
    assert [r.status for r in cal.rec.rows] == ["budget"]


def test_cli_parses_hydra_style_and_refuses_bad_input() -> None:
    cfg = parse_args(["device=cpu", "model=tiny", "tenants=2", "validate=false", "budget_s=1.5", "sms=16,32"])
    assert (cfg.device, cfg.model, cfg.tenants, cfg.validate, cfg.budget_s) == ("cpu", "tiny", 2, False, 1.5)
    assert cfg.sm_counts() == (16, 32)
    for bad, needle in ((["colour=red"], "unknown key 'colour'"), (["model=gpt"], "model='gpt'"),
                        (["tenants=x"], "integer"), (["validate=maybe"], "true or false"), (["device"], "key=value"),
                        (["sms=16,a"], "sms=")):
        with pytest.raises(UserError, match=needle) as e:
            parse_args(bad)
        assert "\n" not in str(e.value)


def test_cli_user_error_is_one_line_and_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "moesim.calibrate", "device=cpu", "model=nope"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
    assert "model='nope'" in proc.stderr


def test_grouped_experts_equal_one_gemm_per_expert() -> None:
    eng = MoEEngine(get_model("tiny"), torch.device("cpu"), n_tenants=1, seed=3, dtype=torch.float32)
    h = eng.random_hidden(53)
    hh, ti, tw = eng.router(h, 0, 1)
    got, ref = eng.moe(hh, ti, tw, 1, "grouped"), eng.moe(hh, ti, tw, 1, "loop")
    assert float((got - ref).norm() / ref.norm()) < 1e-5
    # by hand for one token: Σ_k w_k · expert_k(h)
    tok = 7
    manual = sum(tw[tok, j] * eng.expert_one(hh[tok : tok + 1], 1, int(ti[tok, j]))[0] for j in range(2))
    torch.testing.assert_close(got[tok], manual, rtol=1e-5, atol=1e-6)


def test_packed_attention_is_bottom_right_causal() -> None:
    spec = get_model("tiny")
    eng = MoEEngine(spec, torch.device("cpu"), seed=1, dtype=torch.float32)
    seqs = [(4, 0), (1, 6), (3, 5)]  # prefill, decode, chunked prefill over a context
    meta = eng.make_meta(seqs)
    N = sum(n for n, _ in seqs)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(N, spec.n_heads, spec.head_dim, generator=gen)
    k = torch.randn(N, spec.n_kv_heads, spec.head_dim, generator=gen)
    v = torch.randn(N, spec.n_kv_heads, spec.head_dim, generator=gen)
    cache = KVCache(spec, meta.kv_tokens, eng.device, torch.float32, gen, n_layers=1)
    out = eng.attention(q, k, v, meta, cache.k[0], cache.v[0]).view(N, spec.n_heads, spec.head_dim)
    rep = spec.n_heads // spec.n_kv_heads
    sq = sk = 0
    for n, c in seqs:  # reference: softmax over keys 0 … c+i for the i-th new token, in float64
        K = cache.k[0][sk : sk + c + n].double().repeat_interleave(rep, dim=1)
        V = cache.v[0][sk : sk + c + n].double().repeat_interleave(rep, dim=1)
        for i in range(n):
            s = torch.einsum("hd,khd->hk", q[sq + i].double(), K[: c + i + 1]) / spec.head_dim**0.5
            ref = torch.einsum("hk,khd->hd", torch.softmax(s, -1), V[: c + i + 1])
            torch.testing.assert_close(out[sq + i].double(), ref, rtol=1e-4, atol=1e-5)
        sq += n
        sk += c + n
    # new keys landed in each sequence's last rows
    torch.testing.assert_close(cache.k[0][meta.slots], k)


def test_step_is_deterministic_under_a_seed() -> None:
    spec = get_model("tiny")
    outs = []
    for _ in range(2):
        eng = MoEEngine(spec, torch.device("cpu"), n_tenants=2, seed=11, dtype=torch.float32)
        si = eng.make_inputs([(1, 5, 0), (0, 1, 9), (1, 1, 3)])
        cache = KVCache(spec, si.meta.kv_tokens, eng.device, eng.dtype, eng.gen)
        outs.append(eng.step(si, cache))
    assert torch.equal(outs[0], outs[1])
    assert outs[0].shape == (3,)
    assert eng.tenants[0].nbytes() == spec.nonexpert_params * 4  # float32 on CPU: every non-expert weight once


def test_switch_nonexpert_set_matches_spec_decoder_part() -> None:
    spec = get_model("switch-base-8")
    eng = MoEEngine(spec, torch.device("cpu"), seed=0, dtype=torch.float32)
    m = spec
    # the engine builds the decoder stack only: self-attention, 2 norms, routers/dense FFNs, tied embedding
    expect = (m.n_layers * (m.attention_params_per_block + 2 * m.d_model) + (m.n_layers // 2) * m.d_model * 8
              + (m.n_layers // 2) * m.expert_params + m.vocab * m.d_model + m.d_model)
    assert eng.tenants[0].nbytes() == expect * 4


def test_op_work_closed_forms() -> None:
    m = get_model("mixtral-8x7b")
    w = op_work(m, "expert_one", tokens=100)
    assert w.flops == 2 * 100 * 3 * 4096 * 14336
    assert w.bytes_ == (m.expert_bytes + 100 * (2 * 4096 + 2 * 14336 * 2) * 2)
    d = op_work(m, "attn_decode", batch=4, context=999)
    assert d.bytes_ == 4 * (1000 * 2 * 1024 + 2 * 4096 + 2 * 1024) * 2
    assert op_work(m, "attn_prefill", batch=1, tokens=8).flops == 4.0 * 8 * 4.5 * 4096
    assert op_work(m, "ceil_gemm", tokens=8192).flops == 2 * 8192**3


def test_log_grid_is_log_spaced_and_inclusive() -> None:
    g = log_grid(1, 8192, 2)
    assert g[0] == 1
    assert g[-1] == 8192
    assert list(g) == sorted(set(g))
    ratios = np.diff(np.log2(np.array(g[3:], float)))
    assert np.all(np.abs(ratios - 0.5) < 0.2)
