"""Every figure and table of a report, read back out of report.html, against the job files it comes from
(summary.json, requests.parquet, segments.parquet, instances.json) of real simulated jobs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report_helpers import read_data, read_figures, traces

from moesim import job
from moesim.config import JobSpec
from moesim.cost import COST_MODELS
from moesim.metrics import per_request, slo_attainment, summarize
from moesim.policies import POLICIES
from moesim.report import build_report
from moesim.report.data import ecdf
from moesim.specs import get_gpu, get_model
from moesim.workloads import WORKLOADS

GB = 1e9
REAL_POLICIES = ("reconfig", "mig", "swap", "dedicated", "multiplex", "naive")
REAL_RATES = (0.2, 1.0)
REAL_SEEDS = (0, 1)
DURATION_S = 20.0


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Policies × rates × seeds of two Mixtral tenants on one H200 (roofline cost, 20 s each)."""
    root = tmp_path_factory.mktemp("real")
    n = 0
    for pol in REAL_POLICIES:
        for rate in REAL_RATES:
            for seed in REAL_SEEDS:
                spec = JobSpec(model=get_model("mixtral-8x7b"), gpu=get_gpu("h200"), policy=POLICIES.config(pol),
                               cost=COST_MODELS.config("roofline"),
                               workload=WORKLOADS.config("poisson", {"rate": rate, "tenants": 2,
                                                                     "duration_s": DURATION_S}),
                               seed=seed, slo_ttft_s=2.0, slo_tpot_s=0.2)
                job.run(spec, root / str(n), overrides=[f"policy={pol}", f"workload.rate={rate}", f"seed={seed}"])
                n += 1
    return root, build_report(root).read_text()


def _jobs(root: Path) -> pd.DataFrame:
    rows = []
    for d in sorted(root.iterdir()):
        if (d / "summary.json").exists():
            s = json.loads((d / "summary.json").read_text())
            rows.append({"job": d.name, **{k: v for k, v in s.items() if k not in ("params", "policy_info")}})
    return pd.DataFrame(rows)


def test_summary_json_agrees_with_requests_parquet(real: tuple[Path, str]) -> None:
    """The per-job metrics the curves show are those of the job's own requests (and the SLO recompute
    at the job's own targets gives the job's number)."""
    root, _ = real
    for _, s in _jobs(root).iterrows():
        req = pd.read_parquet(root / s["job"] / "requests.parquet")
        seg = pd.read_parquet(root / s["job"] / "segments.parquet")
        again = summarize(req, seg, horizon_s=DURATION_S, slo_ttft_s=2.0, slo_tpot_s=0.2)
        for k in ("n_requests", "mean_turnaround_s", "p90_turnaround_s", "mean_ttft_s", "throughput_rpm",
                  "slo_attainment"):
            assert again[k] == pytest.approx(s[k], rel=1e-12), (s["job"], k)
        assert slo_attainment(req, 2.0, 0.2) == pytest.approx(s["slo_attainment"], rel=1e-12)


@pytest.mark.parametrize(("name", "metric", "scale"), [
    ("turnaround", "mean_turnaround_s", 1.0), ("turnaround", "p90_turnaround_s", 1.0),
    ("ttft", "mean_ttft_s", 1.0), ("ttft", "p90_ttft_s", 1.0), ("throughput", "throughput_rpm", 1.0),
    ("slo", "slo_attainment", 100.0),
])
def test_rate_curves_are_summary_json_means(real: tuple[Path, str], name: str, metric: str, scale: float) -> None:
    root, html = real
    jobs = _jobs(root)
    fig = read_figures(html)[name]
    for pol in REAL_POLICIES:
        (t,) = traces(fig, metric=metric, series=pol)
        g = jobs[jobs["policy"] == pol].groupby("rate")[metric]
        assert t["x"] == list(REAL_RATES)
        np.testing.assert_allclose(t["y"], scale * g.mean().to_numpy(), rtol=1e-12)
        np.testing.assert_allclose(np.array(t["y"]) + t["error_y"]["array"], scale * g.max().to_numpy(), rtol=1e-12)


def test_memory_chart_is_what_instances_json_holds_and_fits_the_gpu(real: tuple[Path, str]) -> None:
    """Each bar is the sum over the job's instances.json; the GPU parts add up to the instances' memory;
    ``swap`` holds one tenant's experts at a time (it showed every tenant's copies: 180 GB on a 150 GB
    GPU) and keeps the other tenant's in host memory."""
    root, html = real
    fig = read_figures(html)["memory"]
    by_key = {t["meta"]["key"]: t for t in fig["data"]}
    labels = by_key["memory_bytes"]["y"]
    assert labels == ["reconfig", "mig", "swap", "dedicated (2 GPUs)", "multiplex", "naive"]
    model = get_model("mixtral-8x7b")
    for i, label in enumerate(labels):
        inst = json.loads((root / by_key["memory_bytes"]["meta"]["jobs"][i] / "instances.json").read_text())
        for key in ("resident_expert_bytes", "nonexpert_bytes", "kv_capacity_bytes", "host_expert_bytes",
                    "memory_bytes"):
            assert by_key[key]["x"][i] == pytest.approx(sum(r[key] for r in inst) / GB, rel=1e-12), (label, key)
        gpu_parts = sum(by_key[k]["x"][i] for k in ("resident_expert_bytes", "nonexpert_bytes",
                                                     "kv_capacity_bytes", "other_bytes"))
        assert gpu_parts == pytest.approx(by_key["memory_bytes"]["x"][i], rel=1e-9), label
        for r in inst:  # nothing is over-committed
            used = r["resident_expert_bytes"] + r["nonexpert_bytes"] + r["kv_capacity_bytes"]
            assert used <= r["memory_bytes"] * (1 + 1e-12), (label, r["name"])
    swap = labels.index("swap")
    assert by_key["resident_expert_bytes"]["x"][swap] == pytest.approx(
        model.n_expert_positions * model.expert_bytes / GB, rel=1e-12)
    assert by_key["host_expert_bytes"]["x"][swap] == pytest.approx(
        model.n_expert_positions * model.expert_bytes / GB, rel=1e-12)
    assert by_key["memory_bytes"]["x"][labels.index("dedicated (2 GPUs)")] == pytest.approx(
        2 * get_gpu("h200").memory_bytes / GB)


def test_cdf_is_the_requests_parquet_ecdf(real: tuple[Path, str]) -> None:
    root, html = real
    jobs = _jobs(root)
    fig = read_figures(html)["cdf"]
    for pol in REAL_POLICIES:
        (t,) = traces(fig, series=pol)
        rate = t["meta"]["rate"]
        sel = jobs[(jobs["policy"] == pol) & np.isclose(jobs["rate"], rate)]
        assert sorted(t["meta"]["jobs"]) == sorted(sel["job"])
        v = np.concatenate([per_request(pd.read_parquet(root / j / "requests.parquet"))["turnaround_s"].to_numpy()
                            for j in sel["job"]])
        x, y = ecdf(v)
        np.testing.assert_allclose(t["x"], x, rtol=1e-12)
        np.testing.assert_allclose(t["y"], y, rtol=1e-12)


def test_timeline_is_the_segments_parquet_window(real: tuple[Path, str]) -> None:
    root, html = real
    fig = read_figures(html)["timeline"]
    t0, t1 = fig["layout"]["xaxis"]["range"]
    for pol in REAL_POLICIES:
        bars = {t["meta"]["kind"]: t for t in traces(fig, series=pol)}
        seg = pd.read_parquet(root / bars["decode"]["meta"]["job"] / "segments.parquet")
        seg = seg[(seg["end_s"] > t0) & (seg["start_s"] < t1)]
        for kind in ("prefill", "decode", "swap"):
            k = seg[seg["kind"] == kind]
            np.testing.assert_allclose(bars[kind]["base"], k["start_s"], rtol=1e-12)
            np.testing.assert_allclose(bars[kind]["x"], k["end_s"] - k["start_s"], rtol=1e-12)
            assert bars[kind]["y"] == k["instance"].astype(str).tolist()


def test_tables_agree_with_the_job_files(real: tuple[Path, str]) -> None:
    """Headline numbers from summary.json and instances.json; policy settings without empty cells, the
    resolved MIG layout from instances.json."""
    root, html = real
    jobs = _jobs(root)
    head = {r["series"]: r for r in read_data(html)["headline"]}
    rate = min(REAL_RATES, key=lambda r: abs(np.log(r / np.sqrt(REAL_RATES[0] * REAL_RATES[-1]))))
    for pol in REAL_POLICIES:
        at = jobs[(jobs["policy"] == pol) & np.isclose(jobs["rate"], rate)]
        assert head[pol]["mean_turnaround_s_at_rate"] == pytest.approx(at["mean_turnaround_s"].mean(), rel=1e-12)
        assert head[pol]["mean_ttft_s_at_rate"] == pytest.approx(at["mean_ttft_s"].mean(), rel=1e-12)
        top = jobs[(jobs["policy"] == pol) & (jobs["rate"] == max(REAL_RATES))]
        assert head[pol]["throughput_rpm_at_max_rate"] == pytest.approx(top["throughput_rpm"].mean(), rel=1e-12)
        assert head[pol]["gpus"] == (2 if pol == "dedicated" else 1)
    settings = html.split("Policy settings:")[1].split("</table>")[0]
    assert not re.search(r"=(,|<|\s*$)", settings), "an empty parameter cell"
    mig_layout = json.loads((root / "4" / "instances.json").read_text())[0]["layout"]
    assert f"layout={mig_layout} (default" in settings
    assert "plan=none" in settings
    config = html.split("<h2>Configuration</h2>")[1].split("</table>")[0]
    assert "0.2, 1" in config
    assert "24 finished, 0 failed, 0 incomplete, 0 unreadable, of 24" in config


def test_timeline_says_when_it_draws_fewer_segments_than_the_window_holds(real: tuple[Path, str]) -> None:
    from moesim.report import figures as F
    from moesim.report.data import SweepData
    from moesim.report.options import ReportOptions
    from moesim.sweep import collect

    root, _ = real
    data = SweepData(root, collect(root), ReportOptions(timeline_window_s=DURATION_S))
    fig = F.timeline(data, max_segments=5).to_plotly_json()
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    for pol in REAL_POLICIES:
        (title,) = [t for t in titles if t.startswith(f"{pol} (job")]
        job_dir = root / re.search(r"\(job (\d+)\)", title).group(1)
        seg = pd.read_parquet(job_dir / "segments.parquet")
        t0 = fig["layout"]["xaxis"]["range"][0]
        n = int(((seg["end_s"] > t0) & (seg["start_s"] < t0 + DURATION_S)).sum())
        assert title.endswith(f" — first 5 of {n} segments") == (n > 5), title
