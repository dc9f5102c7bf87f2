"""The report's numbers, read back out of report.html, against closed forms of a hand-made sweep."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report_helpers import (
    MEMORY,
    POLICIES,
    RATES,
    SEEDS,
    SLO,
    make_sweep,
    read_data,
    read_figures,
    request_turnarounds,
    traces,
    turnaround,
)

from moesim.errors import UserError
from moesim.io import write_json, write_text
from moesim.report import ReportOptions, build_report
from moesim.report.__main__ import main as report_main
from moesim.sweep import collect


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = make_sweep(tmp_path_factory.mktemp("sweep"))
    html_path = build_report(root)
    return root, html_path.read_text()


def test_collect_reports_every_job_with_status(sweep: tuple[Path, str]) -> None:
    root, _ = sweep
    df = collect(root)
    assert len(df) == len(POLICIES) * len(RATES) * len(SEEDS) + 2
    assert df["status"].value_counts().to_dict() == {"ok": 18, "failed": 1, "incomplete": 1}
    inc = df[df["status"] == "incomplete"].iloc[0]
    assert (inc["policy"], inc["rate"], inc["seed"]) == ("reconfig", 0.8, 1)  # from .hydra/overrides.yaml
    assert df[df["status"] == "failed"]["error"].iloc[0] == "instance mig0 cannot fit"


@pytest.mark.parametrize(("name", "metric", "factor"), [
    ("turnaround", "mean_turnaround_s", 1.0), ("turnaround", "p90_turnaround_s", 2.0),
    ("ttft", "mean_ttft_s", 0.5), ("ttft", "p90_ttft_s", 1.0),
])
def test_rate_curves_are_seed_means_with_min_max_bars(sweep: tuple[Path, str], name: str, metric: str,
                                                      factor: float) -> None:
    _, html = sweep
    fig = read_figures(html)[name]
    for p in POLICIES:
        (t,) = traces(fig, metric=metric, series=p)
        assert t["x"] == list(RATES)
        lo = [factor * turnaround(p, r, 0) for r in RATES]
        hi = [factor * turnaround(p, r, 1) for r in RATES]
        mean = [(a + b) / 2 for a, b in zip(lo, hi, strict=True)]
        np.testing.assert_allclose(t["y"], mean, rtol=1e-12)
        np.testing.assert_allclose(np.array(t["y"]) + t["error_y"]["array"], hi, rtol=1e-12)
        np.testing.assert_allclose(np.array(t["y"]) - t["error_y"]["arrayminus"], lo, rtol=1e-12)


def test_throughput_and_slo_curves_match_summary_csv(sweep: tuple[Path, str]) -> None:
    root, html = sweep
    figs = read_figures(html)
    csv = pd.read_csv(root / "summary.csv") if (root / "summary.csv").exists() else collect(root)
    ok = csv[csv["status"] == "ok"]
    for p in POLICIES:
        want = ok[ok["policy"] == p].groupby("rate")["throughput_rpm"].mean()
        (t,) = traces(figs["throughput"], metric="throughput_rpm", series=p)
        np.testing.assert_allclose(t["y"], want.to_numpy(), rtol=1e-12)
        (s,) = traces(figs["slo"], metric="slo_attainment", series=p)
        np.testing.assert_allclose(s["y"], [100 * v for v in SLO[p]], rtol=1e-12)
    (offered,) = traces(figs["throughput"], metric="offered_rpm")
    np.testing.assert_allclose(offered["y"], [60 * r * 2 for r in RATES])


def test_cdf_is_the_pooled_ecdf_at_the_middle_rate(sweep: tuple[Path, str]) -> None:
    _, html = sweep
    fig = read_figures(html)["cdf"]
    assert "0.2 requests/s" in fig["layout"]["title"]["text"]  # geometric middle of 0.1..0.4
    for p in POLICIES:
        (t,) = traces(fig, series=p)
        pooled = np.sort(np.concatenate([request_turnarounds(p, s) for s in SEEDS]))
        np.testing.assert_allclose(t["x"], pooled, rtol=1e-12)
        np.testing.assert_allclose(t["y"], np.arange(1, len(pooled) + 1) / len(pooled))
        assert t["meta"]["rate"] == 0.2


def test_memory_breakdown_sums_instances_in_gb(sweep: tuple[Path, str]) -> None:
    _, html = sweep
    fig = read_figures(html)["memory"]
    for col, key in enumerate(["resident_expert_bytes", "host_expert_bytes", "nonexpert_bytes",
                               "kv_capacity_bytes", "memory_bytes"]):
        (t,) = traces(fig, key=key)
        assert t["y"] == ["mig", "reconfig", "multiplex"]
        want = [sum(inst[col] for inst in MEMORY[p]) for p in POLICIES]
        np.testing.assert_allclose(t["x"], want, rtol=1e-12)


def test_timeline_shows_the_window_segments(sweep: tuple[Path, str]) -> None:
    _, html = sweep
    fig = read_figures(html)["timeline"]
    # window: first arrival (0 s) + 30 s holds the swap, the prefill and the first decode run, not the
    # decode at 100 s
    for p in POLICIES:
        kinds = {t["meta"]["kind"]: t for t in traces(fig, series=p)}
        assert kinds["swap"]["base"] == [0.0]
        assert kinds["swap"]["x"] == [1.0]
        assert kinds["prefill"]["base"] == [1.0]
        assert kinds["prefill"]["x"] == [1.0]
        assert kinds["decode"]["base"] == [2.0]
        assert kinds["decode"]["x"] == [3.0]
        assert kinds["fetch"]["x"] == [1.5]
        assert kinds["fetch"]["customdata"] == [3.0]
    assert fig["layout"]["xaxis"]["range"] == [0.0, 30.0]


def test_headline_percentages_and_sustained_rates(sweep: tuple[Path, str]) -> None:
    _, html = sweep
    head = {r["policy"]: r for r in read_data(html)["headline"]}
    # turnaround ratios are rate- and seed-independent: multiplex/mig = 1/10, multiplex/reconfig = 1/2
    assert head["multiplex"]["turnaround_pct_vs_mig"] == pytest.approx(-90.0)
    assert head["multiplex"]["turnaround_pct_vs_reconfig"] == pytest.approx(-50.0)
    assert head["reconfig"]["turnaround_pct_vs_mig"] == pytest.approx(-80.0)
    assert head["mig"]["ttft_pct_vs_reconfig"] == pytest.approx(400.0)
    assert head["mig"]["turnaround_pct_vs_mig"] == pytest.approx(0.0)
    # SLO target 0.9: mig meets it at 0.1 only; reconfig up to 0.2; multiplex misses at 0.2, so 0.1 even
    # though it meets it again at 0.4
    assert head["mig"]["sustained_rate"] == 0.1
    assert head["reconfig"]["sustained_rate"] == 0.2
    assert head["multiplex"]["sustained_rate"] == 0.1
    want_rate = np.mean([turnaround("reconfig", 0.2, s) for s in SEEDS])
    assert head["reconfig"]["mean_turnaround_s_at_rate"] == pytest.approx(want_rate)
    # the same numbers are in the visible table
    assert "−90.0%" in html
    assert "+400.0%" in html


def test_report_is_self_contained_and_lists_missing_jobs(sweep: tuple[Path, str]) -> None:
    _, html = sweep
    assert "<script src" not in html
    assert "<link" not in html
    assert "Plotly" in html
    from plotly.offline import get_plotlyjs

    assert html.count(get_plotlyjs()[:2000]) == 1  # plotly.js once, whatever the number of figures
    assert len(html) > 1_000_000
    assert "instance mig0 cannot fit" in html
    assert "incomplete" in html
    assert "derived" not in html.split("<body>")[1].split("<script")[0]
    for name in ("turnaround", "ttft", "throughput", "slo", "cdf", "memory", "timeline"):
        fig = read_figures(html)[name]
        assert fig["data"], name
        assert fig["layout"]["title"]["text"], name


def test_derived_profile_is_marked(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", derived=True, failed=False, incomplete=False)
    html = build_report(root).read_text()
    assert 'class="derived"' in html
    assert all(f["layout"]["title"]["text"].endswith("<b>derived cost, not measured</b></span>") for f in read_figures(html).values())


def test_chosen_rate_and_window_options(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    html = build_report(root, options=ReportOptions(cdf_rate=0.4, timeline_window_s=200.0)).read_text()
    figs = read_figures(html)
    assert all(t["meta"]["rate"] == 0.4 for t in figs["cdf"]["data"])
    decode = traces(figs["timeline"], series="mig", kind="decode")[0]
    assert decode["base"] == [2.0, 100.0]  # the wider window holds the second decode run


def test_report_cli_rebuilds_partial_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_sweep(tmp_path / "s")
    os.remove(root / "5" / "summary.json")  # a job killed before it finished: files but no summary
    report_main([str(root), "--cdf-rate", "0.1"])
    out = capsys.readouterr().out.splitlines()
    assert out == [f"moesim: 17 of 20 jobs finished; table: {root / 'summary.csv'}",
                   f"moesim: report: {root / 'report.html'}"]
    csv = pd.read_csv(root / "summary.csv")
    assert (csv["status"] == "incomplete").sum() == 2
    figs = read_figures((root / "report.html").read_text())
    (t,) = traces(figs["turnaround"], metric="mean_turnaround_s", series="mig")
    # job 5 is mig at 0.4 with seed 1: that point is now seed 0 alone
    assert t["y"][2] == pytest.approx(turnaround("mig", 0.4, 0))


def test_report_cli_bad_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        report_main([str(tmp_path / "nope")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("moesim: error: ")
    assert "not a directory" in err
    with pytest.raises(UserError, match="no jobs found"):
        build_report(tmp_path)


def test_atomic_writes_leave_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    write_json(target, {"a": 1})

    class Boom:
        def __repr__(self) -> str:
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        write_json(target, {"a": Boom()})  # json cannot encode it: fails mid-write
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left behind
    write_text(target, "x")
    assert target.read_text() == "x"
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    write_json(tmp_path / "nan.json", {"v": float("nan"), "w": np.float64(2.5), "t": (1, 2)})
    assert json.loads((tmp_path / "nan.json").read_text()) == {"v": None, "w": 2.5, "t": [1, 2]}


def test_series_split_by_varying_gpu(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    # the seed-1 jobs claim another GPU: the report then keeps the GPUs apart
    for d in root.iterdir():
        s = json.loads((d / "summary.json").read_text())
        if s["seed"] == 1:
            s["gpu"] = "h200"
            write_json(d / "summary.json", s)
    html = build_report(root).read_text()
    figs = read_figures(html)
    names = [t["name"] for t in figs["turnaround"]["data"] if t["showlegend"] is not False]
    assert "mig · gpu=a100-80gb" in names
    assert "mig · gpu=h200" in names
    (t,) = traces(figs["turnaround"], metric="mean_turnaround_s", series="mig · gpu=h200")
    np.testing.assert_allclose(t["y"], [turnaround("mig", r, 1) for r in RATES])
    head = re.findall(r"multiplex · gpu=h200</td><td>[^<]*</td><td>[^<]*</td><td>(.*?)</td>", html)
    assert head
    assert "−90.0%" in head[0]


def test_series_split_by_swept_parameter(tmp_path: Path) -> None:
    """A parameter swept besides policy/rate/seed (here policy.max_batch) is not averaged like a seed."""
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    for d in root.iterdir():
        s = json.loads((d / "summary.json").read_text())
        s["overrides"].append(f"policy.max_batch={1 if s['seed'] == 0 else 8}")
        write_json(d / "summary.json", s)
    html = build_report(root).read_text()
    figs = read_figures(html)
    (t,) = traces(figs["turnaround"], metric="mean_turnaround_s", series="mig · policy.max_batch=8")
    np.testing.assert_allclose(t["y"], [turnaround("mig", r, 1) for r in RATES])
    head = {r["series"]: r for r in read_data(html)["headline"]}
    assert head["multiplex · policy.max_batch=1"]["turnaround_pct_vs_mig"] == pytest.approx(-90.0)


def test_configuration_lists_every_distinct_cost_setting(tmp_path: Path) -> None:
    """Jobs on two GPUs with different cost models: the configuration table names both, not the first job's."""
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    for d in root.iterdir():
        s = json.loads((d / "summary.json").read_text())
        if s["seed"] == 1:
            s["gpu"], s["cost"] = "h100-80gb", "roofline"
            s["params"]["cost"] = {"name": "roofline", "bw_efficiency": 0.85}
        else:
            s["params"]["cost"] = {"name": "profile", "execution": "graphs"}
        write_json(d / "summary.json", s)
    html = build_report(root).read_text()
    row = re.search(r"<td>cost model</td><td>(.*?)</td>", html)
    assert row, "no cost model row"
    assert "profile: execution=graphs" in row.group(1)
    assert "roofline: bw_efficiency=0.85" in row.group(1)
    # one setting shared by all jobs is shown once, unnamed
    root2 = make_sweep(tmp_path / "t", failed=False, incomplete=False)
    for d in root2.iterdir():
        s = json.loads((d / "summary.json").read_text())
        s["params"]["cost"] = {"name": "profile", "execution": "graphs"}
        write_json(d / "summary.json", s)
    row2 = re.search(r"<td>cost model</td><td>(.*?)</td>", build_report(root2).read_text())
    assert row2
    assert row2.group(1).endswith("(execution=graphs)")
