"""The paper's MIG protocol (two unsynchronised processes, 120 s windows) and the paper's aggregation.

Closed forms of ``moesim.paper_protocol``'s fluid link model, the code's window rules (dequeue while under
120 s, end at the finish of the request in service, drop the queue), the served-request counts, the
aggregation of its plotters, the closed forms of ``moesim.paper`` for TTFT and throughput, and the fluid model
against the engine on the same arrivals.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from moesim import paper
from moesim import paper_protocol as pp
from moesim.cost import COST_MODELS
from moesim.cost.roofline import PAPER_A100
from moesim.engine import simulate
from moesim.metrics import summarize
from moesim.policies import POLICIES
from moesim.specs import get_gpu, get_model
from moesim.workloads import WORKLOADS

MIXTRAL, A100 = get_model("mixtral-8x7b"), get_gpu("a100-80gb")
COST = COST_MODELS.build("roofline", PAPER_A100, model=MIXTRAL, gpu=A100)
T = pp.mig_times(COST)


def _fixed(arrivals: dict[tuple[int, int], list[float]]) -> pp.Arrivals:
    return lambda process, index, rate: arrivals.get((process, index), [])


# ---- a MIG request's costs -----------------------------------------------------------------------------
def test_mig_times_are_the_engines_lone_request_in_closed_form() -> None:
    # 150 host positions (layers 14–31 and part of 13), each copied when one of the 7 prompt tokens picks it
    # (top-2 of 8), then 25 decode passes copying 2/8 of them each: 1067.5 copies at 352 MB / 13.05 GB/s
    copies = 150 * (1 - 0.75**7) + 25 * 150 * 2 / 8
    assert T.fetch_s == pytest.approx(copies * MIXTRAL.expert_bytes / 13.05e9, rel=1e-9)
    assert T.fetch_s / copies == pytest.approx(paper.HOST_EXPERT_S, rel=0.01)  # the paper's ≈ 27 ms
    res = simulate(MIXTRAL, A100, POLICIES.build("mig", {}), COST,
                   [pp_request(0, 0.0)], n_tenants=2)
    row = res.requests.iloc[0]
    assert T.alone_s == pytest.approx(row["finish_s"] - row["start_s"], rel=1e-12)
    assert T.ttft_fraction * T.alone_s == pytest.approx(row["first_token_s"] - row["start_s"], rel=1e-12)
    assert 0 < T.compute_s < 0.1 * T.alone_s  # a MIG request is copy-bound
    assert T.service_s(2) == pytest.approx(T.alone_s + T.fetch_s)


def pp_request(tenant: int, arrival: float):
    from moesim.workloads.request import Request

    return Request(tenant, tenant, arrival, paper.PROMPT_TOKENS, paper.OUTPUT_TOKENS)


# ---- the fluid link model ------------------------------------------------------------------------------
def test_lone_request_takes_t1_and_a_busy_window_ends_at_its_finish() -> None:
    logs = pp.simulate_protocol([(0.01, 0.01)], _fixed({(0, 0): [110.0], (0, 1): [5.0]}), T)
    w0, w1 = logs
    assert w0.turnaround_s == pytest.approx((T.alone_s,))
    assert w0.wait_s == (0.0,)
    assert w0.ttft_s == pytest.approx((T.ttft_fraction * T.alone_s,))
    assert w0.end_s == pytest.approx(110.0 + T.alone_s)  # in service at 120 s: the window waits for it
    assert w1.start_s == w0.end_s
    assert w1.end_s == pytest.approx(w1.start_s + 120.0)
    assert w1.turnaround_s == pytest.approx((T.alone_s,))


def test_two_overlapping_requests_share_the_link_in_closed_form() -> None:
    x = 10.0
    logs = pp.simulate_protocol([(0.01,), (0.01,)], _fixed({(0, 0): [0.0], (1, 0): [x]}), T)
    a, b = (w.turnaround_s[0] for w in logs)
    t1, t2 = T.alone_s, T.service_s(2)
    fa = x + (1 - x / t1) * t2  # alone for x s, then both progress at 1 / (C + 2F)
    fb = fa + (1 - (fa - x) / t2) * t1  # B alone again once A is done
    assert a == pytest.approx(fa, rel=1e-9)
    assert b == pytest.approx(fb - x, rel=1e-9)
    both = pp.simulate_protocol([(0.01,), (0.01,)], _fixed({(0, 0): [0.0], (1, 0): [0.0]}), T)
    assert [w.turnaround_s[0] for w in both] == pytest.approx([t2, t2], rel=1e-9)


def test_queue_left_at_120_s_is_dropped() -> None:
    logs = pp.simulate_protocol([(0.01,)], _fixed({(0, 0): [100.0, 101.0, 119.0]}), T)
    (w,) = logs
    assert w.n == 1
    assert w.throughput_rpm == pytest.approx(0.5)
    assert w.end_s == pytest.approx(100.0 + T.alone_s)
    logs = pp.simulate_protocol([(0.01,)], _fixed({(0, 0): [50.0, 60.0]}), T)
    assert logs[0].wait_s == pytest.approx((0.0, 50.0 + T.alone_s - 60.0))  # dequeued at 80.9 s < 120 s


def test_served_counts_are_the_poisson_mean_when_service_is_instant() -> None:
    quick = pp.MigTimes(1e-9, 1e-9, 0.5)
    n = [w.n for s in range(200) for w in pp.simulate_protocol([(0.05,), (0.05,)], s, quick)]
    assert len(n) == 400
    assert np.mean(n) == pytest.approx(0.05 * 120, abs=3 * math.sqrt(6 / 400))  # E[arrivals < 120 s] = 120 λ
    runs = [pp.simulate_protocol([(0.005,), (0.005,)], s, quick) for s in range(2000)]
    st = pp.per_rate(runs)[0.005]
    # the code's throughput: MIG1 + MIG2, each the mean over runs of served / 2 min
    assert st.throughput_rpm == pytest.approx(paper.low_load_throughput_rpm(0.005), abs=3 * math.sqrt(1.2 / 2000))
    assert st.n == sum(w.n for r in runs for w in r)


def test_paper_protocol_runs_each_schedule_back_to_back_and_drifts() -> None:
    logs = pp.paper_protocol(3, T)
    for proc in (0, 1):
        ws = [w for w in logs if w.process == proc]
        assert [w.rate for w in ws] == list(pp.WARMUP + pp.RATES)
        assert [w.warmup for w in ws] == [True, True] + [False] * 16
        assert ws[0].start_s == 0.0
        for a, b in itertools.pairwise(ws):
            assert b.start_s == a.end_s
            assert a.end_s >= a.start_s + 120.0 - 1e-9
    ends = {p: [w.end_s for w in logs if w.process == p] for p in (0, 1)}
    assert ends[0] != ends[1]  # each window ends with its own last request: the processes drift apart
    late = pp.paper_protocol(3, T, offset_s=60.0)
    assert min(w.start_s for w in late if w.process == 1) == 60.0


def test_fluid_model_agrees_with_the_engine_on_the_same_arrivals() -> None:
    from moesim.paper_compare import served_in_window

    for lam in (0.01, 0.04):
        wl = WORKLOADS.build("poisson", {"rate": lam, "tenants": 2, "duration_s": 120.0,
                                         "prompt_tokens": paper.PROMPT_TOKENS, "output_tokens": paper.OUTPUT_TOKENS})
        eng, flu = [], []
        for seed in range(25):
            reqs = wl.generate(seed)
            if not reqs:
                continue
            res = served_in_window(MIXTRAL, A100, "mig", COST, reqs)
            eng += (res.requests["finish_s"] - res.requests["start_s"]).tolist()
            arr = {(r.tenant, 0): [] for r in reqs}
            for r in reqs:
                arr[(r.tenant, 0)].append(r.arrival_s)
            logs = pp.simulate_protocol([(lam,), (lam,)], _fixed(arr), T)
            flu += [x for w in logs for x in w.turnaround_s]
        # the same requests are served in the window, but for one that starts within a step of 120 s
        assert abs(len(flu) - len(eng)) <= max(1, 0.02 * len(eng))
        assert np.mean(flu) == pytest.approx(np.mean(eng), rel=0.04)


# ---- the paper's aggregation ---------------------------------------------------------------------------
def _log(p: int, rate: float, tt: tuple[float, ...]) -> pp.WindowLog:
    return pp.WindowLog(p, 2, rate, False, 0.0, 120.0, tt, (0.0,) * len(tt), (1.0,) * len(tt))


def test_per_rate_weights_windows_by_requests_and_sums_the_two_processes() -> None:
    runs = [[_log(0, 0.01, (30.0,)), _log(1, 0.01, (40.0, 50.0, 60.0))], [_log(0, 0.01, ()), _log(1, 0.01, ())]]
    st = pp.per_rate(runs)[0.01]
    assert st.n == 4
    assert st.turnaround_s == pytest.approx((30 + 40 + 50 + 60) / 4)  # not (30 + 50) / 2
    assert st.throughput_rpm == pytest.approx((0.5 + 1.5) / 2)  # MIG1 + MIG2, mean over the two runs
    warm = [[pp.WindowLog(0, 0, 0.05, True, 0.0, 120.0, (99.0,), (0.0,), (1.0,)), _log(0, 0.05, (50.0,))]]
    assert pp.per_rate(warm)[0.05].turnaround_s == 50.0  # warm-up windows are not measured


def test_pooled_reduction_is_the_request_weighted_ratio() -> None:
    ours = [(7.0, 10), (8.0, 30)]
    mig = [(30.0, 1), (50.0, 3)]
    assert pp.pooled_reduction(ours, mig) == pytest.approx(1 - (70 + 240) / 40 / ((30 + 150) / 4))


def test_headline_table_pools_every_served_request(tmp_path) -> None:
    from moesim import paper_compare as pc

    rows = []
    for pol, svc, n in (("reconfig", 8.0, 4), ("mig", 40.0, 2)):
        for seed in range(2):
            rows.append({"policy": pol, "rate": 0.005 * (seed + 1), "seed": seed,
                         "paper_mean_turnaround_s": svc + seed, "paper_n_served": n * (seed + 1),
                         "paper_mean_ttft_s": 1.0, "paper_mean_wait_s": 0.5, "paper_throughput_rpm": 1.0,
                         "mean_turnaround_s": 2 * svc, "mean_ttft_s": 3.0})
    h = pc.headline(pd.DataFrame(rows)).iloc[0]
    assert h["reconfig_pooled_s"] == pytest.approx((8 * 4 + 9 * 8) / 12)
    assert h["mig_pooled_s"] == pytest.approx((40 * 2 + 41 * 4) / 6)
    assert h["pooled"] == pytest.approx(1 - h["reconfig_pooled_s"] / h["mig_pooled_s"])
    assert h["mean_over_rates"] == pytest.approx(np.mean([1 - 8 / 40, 1 - 9 / 41]))
    path = tmp_path / "summary.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert pc.main([f"summary={path}", f"out={tmp_path}", "seeds=0", "protocol_reps=2"]) == 0
    back = pd.read_csv(tmp_path / "headline.csv")
    assert back["pooled"].iloc[0] == pytest.approx(h["pooled"])
    proto = pd.read_csv(tmp_path / "protocol.csv")
    assert proto["rate"].tolist() == list(pp.RATES)
    assert (proto["p5"] <= proto["p95"]).all()
    assert (proto["protocol"] >= T.alone_s - 1e-9).all()  # never faster than a lone request


# ---- closed forms of the code's TTFT and throughput ------------------------------------------------------
def test_reconfig_ttft_and_low_load_throughput_against_the_closed_forms() -> None:
    assert paper.reconfig_ttft_s() == pytest.approx(0.5 * 2.0 + 0.5 * 0.87)
    assert paper.low_load_throughput_rpm(0.005) == pytest.approx(0.6)
    assert paper.nonempty_window_throughput_rpm(0.005, tenants=1) == pytest.approx(
        0.3 / (1 - math.exp(-0.6)))
    ttft, thr = [], []
    for seed in range(60):
        reqs = WORKLOADS.build("poisson", {"rate": 0.005, "tenants": 2, "duration_s": 120.0,
                                           "prompt_tokens": paper.PROMPT_TOKENS,
                                           "output_tokens": paper.OUTPUT_TOKENS}).generate(seed)
        if not reqs:
            thr.append(0.0)
            continue
        res = simulate(MIXTRAL, A100, POLICIES.build("reconfig", {}), COST, reqs, n_tenants=2)
        m = summarize(res.requests, res.segments, horizon_s=120.0)
        ttft += [m["paper_mean_ttft_s"]] * m["paper_n_served"]
        thr.append(m["paper_throughput_rpm"])
    assert np.mean(ttft) == pytest.approx(paper.reconfig_ttft_s(), rel=0.10)
    assert np.mean(thr) == pytest.approx(paper.low_load_throughput_rpm(0.005), abs=3 * math.sqrt(1.2 / 60))


def test_joint_share_counts_estimates_at_or_above_the_reference() -> None:
    n = len(pp.RATES)
    assert pp.joint_share_at_least(T, [T.alone_s - 1e-6] * n, reps=4) == 1.0  # never faster than alone
    assert pp.joint_share_at_least(T, [T.service_s(2) + 1e-6] * n, reps=4) == 0.0  # never slower than contended
