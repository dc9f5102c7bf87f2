"""The executor on CPU: layout closed forms, the hinting driver, error figures, and the CLI end to end.

Accuracy is not asserted on CPU (the simulated side is a GPU cost model); conservation and identity are.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from moesim.cost import COST_MODELS
from moesim.cost.base import DecodeRun, ExpertGroup, Residency, SeqWork
from moesim.cost.constant import ConstantCost, ConstantCostConfig
from moesim.engine import simulate
from moesim.errors import UserError
from moesim.executor.compare import check_tables, same_requests, summary
from moesim.executor.config import parse_args
from moesim.executor.drive import drive
from moesim.executor.layout import assign_slots
from moesim.policies import POLICIES
from moesim.policies.base import consolidated_groups, private_groups
from moesim.specs import get_gpu, get_model
from moesim.workloads.request import Request

TINY = get_model("tiny")
H200 = get_gpu("h200")


# ---- layout ---------------------------------------------------------------------------------------
def test_consolidated_layout_closed_form():
    # 2 MoE layers × 8 experts = 16 positions; 10 shared on the GPU, 6 per tenant on the host
    res = Residency(consolidated_groups(TINY, (0, 1, 2), 10))
    n_gpu, n_host, assign = assign_slots(res, 2, 8)
    assert n_gpu == [8, 2]
    assert n_host == [0, 3 * 6]
    for t in range(3):
        assert assign[t][0] == [(True, e) for e in range(8)]
        assert assign[t][1][:2] == [(True, 0), (True, 1)]
        assert assign[t][1][2:] == [(False, 6 * t + j) for j in range(6)]  # own host copies


def test_private_layout_gives_each_tenant_its_copies():
    res = Residency(private_groups(TINY, (0, 1), 12))
    n_gpu, n_host, assign = assign_slots(res, 2, 8)
    # each tenant: 12 GPU positions (layer 0 whole, 4 of layer 1) and 4 host positions (rest of layer 1)
    assert n_gpu == [16, 8]
    assert n_host == [0, 8]
    assert assign[0][0] == [(True, e) for e in range(8)]
    assert assign[1][0] == [(True, 8 + e) for e in range(8)]
    assert assign[1][1] == [(True, 4 + j) for j in range(4)] + [(False, 4 + j) for j in range(4)]


def test_misaligned_shared_group_is_refused():
    groups = (ExpertGroup(frozenset({0}), 4, True), ExpertGroup(frozenset({0, 1}), 12, True),
              ExpertGroup(frozenset({1}), 4, True))
    with pytest.raises(UserError, match="different positions"):
        assign_slots(Residency(groups), 2, 8)


def test_incomplete_cover_is_refused():
    with pytest.raises(UserError, match="positions"):
        assign_slots(Residency((ExpertGroup(frozenset({0}), 15, True),)), 2, 8)


# ---- the hinting driver ---------------------------------------------------------------------------
class HintedConstant(ConstantCost):
    """Constant costs that, like the executor, leave steps after the hint unevaluated (NaN)."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.stop_hint_s = None
        self.truncated = 0

    def decode_run(self, decode_tenants, context0, n_steps, residency) -> DecodeRun:
        dr = super().decode_run(decode_tenants, context0, n_steps, residency)
        hint, self.stop_hint_s = self.stop_hint_s, None
        if hint is None:
            return dr
        j = int(np.searchsorted(dr.end_s, hint, side="left"))
        ends = dr.end_s.copy()
        if j + 1 < n_steps:
            ends[j + 1 :] = np.nan
            self.truncated += 1
        return DecodeRun(ends, dr.cost)


def _poisson(n: int, rate: float, seed: int) -> list[Request]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, n))
    return [Request(i, int(rng.integers(0, 3)), float(t[i]), int(rng.integers(5, 60)), int(rng.integers(2, 40)))
            for i in range(n)]


@pytest.mark.parametrize("policy", ["multiplex", "reconfig_fast", "reconfig"])
def test_driver_makes_the_same_decisions_as_simulate(policy):
    reqs = _poisson(60, 4.0, 1)
    cfg = ConstantCostConfig(prefill_s=0.05, decode_step_s=0.01)
    pol = {"max_batch": 8} if policy != "reconfig" else {}
    plain = simulate(TINY, H200, POLICIES.build(policy, pol), ConstantCost(cfg, TINY, H200), reqs, n_tenants=3)
    hinted_cost = HintedConstant(cfg, TINY, H200)
    driven = drive(TINY, H200, POLICIES.build(policy, pol), hinted_cost, reqs, n_tenants=3)
    pd.testing.assert_frame_equal(plain.requests, driven.requests)
    pd.testing.assert_frame_equal(plain.segments, driven.segments)
    if policy != "reconfig":  # batching policies cut decode runs at arrivals: the hint mattered
        assert hinted_cost.truncated > 0


# ---- error figures --------------------------------------------------------------------------------
def _table(arrival, start, first, finish) -> pd.DataFrame:
    n = len(arrival)
    return pd.DataFrame({"request_id": np.arange(n), "tenant": np.zeros(n, int), "instance": np.zeros(n, int),
                         "arrival_s": arrival, "start_s": start, "first_token_s": first, "finish_s": finish,
                         "prompt_tokens": np.full(n, 10), "output_tokens": np.full(n, 5),
                         "swap_wait_s": np.zeros(n)})


def test_summary_closed_form():
    arr = np.array([0.0, 1.0, 2.0, 3.0])
    meas = _table(arr, arr + 0.5, arr + 1.0, arr + 2.0)  # turnaround 2, ttft 1, service 1.5
    sim = _table(arr, arr + 0.5, arr + 1.1, arr + 2.2)  # turnaround 2.2 (+10%), ttft 1.1 (+10%), service 1.7
    s = summary(sim, meas)
    assert s["turnaround_ape_median_pct"] == pytest.approx(10.0)
    assert s["ttft_ape_mean_pct"] == pytest.approx(10.0)
    assert s["service_ape_median_pct"] == pytest.approx(100 * 0.2 / 1.5)
    assert s["mean_turnaround_s_error_pct"] == pytest.approx(10.0)
    assert s["p90_turnaround_s_error_pct"] == pytest.approx(10.0)
    # throughput: 4 requests over 0 → 5.0 s measured, 0 → 5.2 s simulated
    assert s["throughput_rps_measured"] == pytest.approx(4 / 5.0)
    assert s["throughput_rps_error_pct"] == pytest.approx((5.0 / 5.2 - 1) * 100)


def test_tables_checks_catch_violations():
    arr = np.array([0.0, 1.0])
    good = _table(arr, arr + 0.5, arr + 1.0, arr + 2.0)
    check_tables(good)
    with pytest.raises(AssertionError, match="first_token_s after finish_s"):
        check_tables(_table(arr, arr + 0.5, arr + 3.0, arr + 2.0))
    other = good.copy()
    other.loc[1, "tenant"] = 1
    assert not same_requests(good, other)
    with pytest.raises(ValueError, match="different requests"):
        summary(other, good)


def test_config_errors_are_one_line():
    with pytest.raises(UserError, match="unknown policy 'nope'"):
        parse_args(["policies=nope:2"])
    with pytest.raises(UserError, match="unknown key"):
        parse_args(["bogus=1"])
    with pytest.raises(UserError, match="rate"):
        parse_args(["rate=0"])
    assert parse_args(["policies=reconfig,multiplex:4"]).policy_list() == [("reconfig", None), ("multiplex", 4)]


def test_simulator_side_stays_torch_free():
    code = ("import sys, moesim.cost, moesim.engine, moesim.policies, moesim.workloads, "
            "moesim.executor, moesim.executor.compare, moesim.executor.config, moesim.executor.drive; "
            "import moesim.cost as c; assert 'executed' not in c.COST_MODELS.names(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the executed cost on CPU ---------------------------------------------------------------------
def _executed(tenants: int = 3):
    from moesim.executor.gpu_cost import ExecutedCostConfig

    return COST_MODELS.build("executed", ExecutedCostConfig(device="cpu", tenants=tenants), model=TINY, gpu=H200)


def test_executed_cost_runs_host_experts_and_decode_hint():
    torch = pytest.importorskip("torch")
    cost = _executed()
    res = Residency(consolidated_groups(TINY, (0, 1, 2), 10))
    c = cost.step((SeqWork(0, 16, 0), SeqWork(2, 1, 30)), res)
    assert c.total_s > 0
    assert c.total_s == c.overhead_s
    eng = cost.eng
    assert eng.n_gpu_slots == [8, 2]
    assert [len(h) for h in eng.host_in] == [0, 18]
    assert all(t.is_pinned() is False for t in eng.host_in[1])  # CPU: plain host memory
    assert torch.equal(eng.remap[1][1][2:], torch.arange(2 + 6, 2 + 12))  # tenant 1's own host copies
    full = cost.decode_run((0, 1), (5, 9), 4, res)
    assert np.all(np.diff(full.end_s) > 0)
    assert full.cost.total_s == pytest.approx(full.end_s[-1])
    cost.stop_hint_s = 0.0  # the first step already ends at or after the hint
    cut = cost.decode_run((0, 1), (5, 9), 4, res)
    assert not np.isnan(cut.end_s[0])
    assert np.isnan(cut.end_s[1:]).all()
    assert cost.stop_hint_s is None
    assert cost.stats["decode_steps_skipped"] == 3
    assert cost.stats["steps"] == 1 + 4 + 1
    assert cost.stats["eager_steps"] == 6
    assert cost.swap_s(1 << 20, res, 0.5) > 0
    with pytest.raises(UserError, match="tenant 5"):
        cost.step((SeqWork(5, 1, 0),), res)


def test_cli_end_to_end_on_cpu(tmp_path):
    pytest.importorskip("torch")
    from moesim.executor.__main__ import main

    out = tmp_path / "val"
    args = ["device=cpu", "model=tiny", "max_requests=10", "max_prompt=40", "max_output=8", "rate=2",
            "tenants=3", "policies=reconfig:1,multiplex:4", "workload=poisson", f"out={out}"]
    main(args)
    val = pd.read_csv(out / "validation.csv")
    assert list(val["policy"]) == ["reconfig", "multiplex"]
    assert set(val["status"]) == {"ok"}
    doc = json.loads((out / "validation.json").read_text())
    assert doc["command"] == "python -m moesim.executor " + " ".join(args)
    assert doc["sim_cost"] == "roofline"  # no shipped tiny profile
    for p in ("reconfig", "multiplex"):
        ex = pd.read_parquet(out / p / "executed_requests.parquet")
        sim = pd.read_parquet(out / p / "simulated_requests.parquet")
        assert list(ex.columns) == list(sim.columns)
        assert len(ex) == 10
        assert same_requests(ex, sim)
        check_tables(ex)
        check_tables(sim)
        assert ex["output_tokens"].max() <= 8
        assert ex["prompt_tokens"].max() <= 40
        segs = pd.read_parquet(out / p / "executed_segments.parquet")
        # every request's output tokens come out of exactly one prefill and its decode steps
        assert segs.loc[segs.kind == "prefill", "n_seqs"].sum() == 10
        assert segs.loc[segs.kind == "decode", "tokens"].sum() == (ex["output_tokens"] - 1).sum()


def test_budget_stops_cleanly(tmp_path):
    pytest.importorskip("torch")
    from moesim.executor.run import run

    cfg = parse_args(["device=cpu", "model=tiny", "max_requests=5", "max_prompt=20", "max_output=4",
                      "policies=multiplex:4", "budget_s=1e-9", f"out={tmp_path}"])
    doc = run(cfg, [])
    assert [r["status"] for r in doc["policies"]] == ["budget"]
    assert pd.read_csv(tmp_path / "validation.csv")["status"].tolist() == ["budget"]
    assert (tmp_path / "multiplex" / "simulated_requests.parquet").is_file()
    assert not (tmp_path / "multiplex" / "executed_requests.parquet").exists()


def test_device_mismatch_note_names_both_machines() -> None:
    from moesim.executor.run import device_mismatch

    assert device_mismatch("h200", "cuda", "NVIDIA H200") == ""
    assert device_mismatch("h100-80gb", "cuda", "NVIDIA H100 80GB HBM3") == ""
    note = device_mismatch("h200", "cpu", "cpu")
    assert "h200" in note
    assert "cpu" in note
    assert "NVIDIA H100" in device_mismatch("h200", "cuda", "NVIDIA H100 80GB HBM3")
