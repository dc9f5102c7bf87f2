"""The report answers the question: a verdict in words, “≥” at the sweep's top rate, per-rate “vs”
columns, GPU cost, distinct line styles, and SLO attainment recomputed for another SLO."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_report_helpers import RATES, make_sweep, read_data, read_figures, traces

from moesim.io import write_json
from moesim.report import ReportOptions, build_report
from moesim.report.__main__ import main as report_main


def _edit(root: Path, fn: Callable[[dict[str, Any], Path], Any]) -> None:
    """Apply ``fn`` to each job's summary (and dir), and write the summary back."""
    for d in root.iterdir():
        if (d / "summary.json").exists():
            s = json.loads((d / "summary.json").read_text())
            fn(s, d)
            write_json(d / "summary.json", s)


def _verdict(html: str) -> str:
    return " ".join(read_data(html)["verdict"])


def test_verdict_names_the_best_policy_and_by_how_much(tmp_path: Path) -> None:
    # SLO attainment (helpers): mig 0.95/0.5/0.1, reconfig 1/0.95/0.85, multiplex 0.95/0.8/0.95 at
    # 0.1/0.2/0.4 req/s: reconfig holds up to 0.2, mig and multiplex up to 0.1
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    html = build_report(root).read_text()
    v = _verdict(html)
    assert v.startswith("For the SLO (TTFT ≤ 2 s and time per output token ≤ 0.2 s for ≥ 90% of requests), "
                        "reconfig sustains the highest per-tenant rate: 0.2 requests/s per tenant on 1 GPU, "
                        "0.4 requests/s per GPU, 2× the next best, multiplex (0.1 requests/s per tenant on 1 GPU, "
                        "0.2 requests/s per GPU) and mig (on 1 GPU, 0.2 requests/s per GPU).")  # a tie for second
    assert "≥ 0." not in v
    assert v.endswith("At a typical swept rate reconfig's mean turnaround is 80% lower than mig's (median over "
                      "rates of the per-rate ratio).")
    body = html.split("<body>")[1]
    assert body.index('id="verdict"') < body.index("<h2>Headline numbers</h2>")


def test_a_tie_at_the_top_is_named_as_a_tie(tmp_path: Path) -> None:
    """multiplex made to hold up to 0.2 req/s, as reconfig does: the verdict names both at the top before
    the next best (mig, 0.1), instead of one winner “2× the next best” followed by others that reach the
    same rate (which read as a contradiction). multiplex is named first: the lower mean turnaround."""
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)

    def tie(s: dict, d: Path) -> None:
        if s["policy"] == "multiplex":
            s["slo_attainment"] = {0.1: 0.95, 0.2: 0.95, 0.4: 0.5}[s["rate"]]

    _edit(root, tie)
    v = _verdict(build_report(root).read_text())
    assert ("multiplex sustains the highest per-tenant rate: 0.2 requests/s per tenant on 1 GPU, 0.4 requests/s "
            "per GPU; reconfig reaches the same rate on 1 GPU, 0.4 requests/s per GPU (multiplex is named first: "
            "the lowest mean turnaround at 0.2 requests/s per tenant). These 2 policies are 2× the next best, mig "
            "(0.1 requests/s per tenant on 1 GPU, 0.2 requests/s per GPU).") in v
    assert v.count("the next best") == 1


def test_top_rate_is_a_lower_bound_and_more_gpus_are_a_cost(tmp_path: Path) -> None:
    """multiplex renamed ``dedicated`` on two whole GPUs that meets the SLO at every rate: its rate is
    “≥ 0.4” (the top), a lower bound, and it needs 2 GPUs, so per GPU it is half of that × tenants."""
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)

    def to_dedicated(s: dict, d: Path) -> None:
        if s["policy"] == "multiplex":
            s["policy"] = "dedicated"
            s["slo_attainment"] = 1.0
            s["overrides"] = [o.replace("multiplex", "dedicated") for o in s["overrides"]]
            inst = json.loads((d / "instances.json").read_text())
            write_json(d / "instances.json", [dict(inst[0], name=f"gpu{k}", tenants=[k]) for k in range(2)])

    _edit(root, to_dedicated)
    html = build_report(root).read_text()
    head = {r["policy"]: r for r in read_data(html)["headline"]}
    assert head["dedicated"]["gpus"] == 2
    assert head["dedicated"]["sustained_at_top"] is True
    assert head["dedicated"]["sustained_rps_per_gpu"] == pytest.approx(0.4 * 2 / 2)
    assert head["reconfig"]["sustained_rps_per_gpu"] == pytest.approx(0.2 * 2)
    row = re.search(r"<tr><td>dedicated</td><td>2</td>(.*?)</tr>", html).group(1)
    assert "<td>≥ 0.4</td><td>≥ 0.4</td>" in row
    assert re.search(r"<tr><td>mig</td>.*?<td>0.1</td><td>0.2</td>", html)
    v = _verdict(html)
    assert ("dedicated sustains the highest per-tenant rate: ≥ 0.4 requests/s per tenant on 2 GPUs, "
            "≥ 0.4 requests/s per GPU (the sweep's top rate: its limit lies higher), at least 2× the next "
            "best, reconfig (0.2 requests/s per tenant on 1 GPU, 0.4 requests/s per GPU)") in v
    assert "dedicated needs 2 GPUs; on fewer, the best is reconfig" in v


def test_no_policy_meets_the_slo(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    _edit(root, lambda s, d: s.update(slo_attainment=0.5))
    html = build_report(root).read_text()
    v = _verdict(html)
    assert ("no policy meets it even at the lowest swept rate (0.1 requests/s per tenant); sweep lower rates "
            "to find where each policy holds.") in v
    assert "multiplex's mean turnaround is 90% lower than mig's and 50% lower than reconfig's" in v
    assert html.count("<td>&lt; 0.1</td>") == 3
    # an SLO no unloaded request can meet: the verdict says which target and how far
    _edit(root, lambda s, d: s.update(p50_ttft_s=1.0, p50_tpot_s={"mig": 0.5, "reconfig": 0.3}.get(s["policy"], 0.4)))
    v = _verdict(build_report(root).read_text())
    assert ("even there the best median time per output token is 0.3 s (reconfig), above the 0.2 s target, so "
            "the SLO is tighter than an unloaded request's service; slo_tpot_s= recomputes the report") in v


def test_vs_columns_are_the_median_per_rate_ratio(tmp_path: Path) -> None:
    """mig saturates at the top rate (100× its turnaround there): against multiplex its change is the
    median of the per-rate ratios 10, 10, 1000 (+900%), not their mean (+33 900%); at a named rate it is
    that rate's ratio."""
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)

    def saturate(s: dict, d: Path) -> None:
        if s["policy"] == "mig" and s["rate"] == 0.4:
            s["mean_turnaround_s"] *= 100

    _edit(root, saturate)
    html = build_report(root, options=ReportOptions(baselines=("multiplex",))).read_text()
    head = {r["policy"]: r for r in read_data(html)["headline"]}
    assert head["mig"]["turnaround_pct_vs_multiplex"] == pytest.approx(900.0)
    ratios = head["mig"]["turnaround_ratios_vs_multiplex"]
    assert ratios == pytest.approx({"0.1": 10.0, "0.2": 10.0, "0.4": 1000.0})
    assert 'title="per rate: 0.1 req/s: +900.0%, 0.2 req/s: +900.0%, 0.4 req/s: +99900.0%"' in html
    at = build_report(root, options=ReportOptions(baselines=("multiplex",), compare_rates=(0.4,))).read_text()
    head = {r["policy"]: r for r in read_data(at)["headline"]}
    assert head["mig"]["turnaround_pct_vs_multiplex"] == pytest.approx(99900.0)
    assert "the median over the rates 0.4 req/s" in at


def test_coinciding_lines_stay_visible(tmp_path: Path) -> None:
    """Every series has its own dash and marker in the rate figures and its own dash in the CDF, so a
    line drawn over another one still shows."""
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    _edit(root, lambda s, d: s.update(mean_turnaround_s=1.0))  # all three lines coincide
    figs = read_figures(build_report(root).read_text())
    lines = traces(figs["turnaround"], metric="mean_turnaround_s")
    assert len(lines) == 3
    assert len({t["line"]["dash"] for t in lines}) == 3
    assert len({t["marker"]["symbol"] for t in lines}) == 3
    assert len({t["line"]["dash"] for t in figs["cdf"]["data"]}) == 3


def test_slo_recomputed_from_requests_for_another_slo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Per request (helpers): TTFT = ½·t, TPOT = ½·t/24, t = BASE·(1 + k/10)·(1 + seed), k = 0..9. At
    TTFT ≤ 1 s, TPOT ≤ 1 s: multiplex (BASE 1) meets it for all of seed 0 and k = 0 of seed 1 (55%);
    reconfig (BASE 2) for k = 0 of seed 0 only (5%); mig (BASE 10) never."""
    root = make_sweep(tmp_path / "s")
    report_main([str(root), "--slo-ttft-s", "1", "--slo-tpot-s", "1"])
    html = (root / "report.html").read_text()
    figs = read_figures(html)
    for policy, share in (("multiplex", 55.0), ("reconfig", 5.0), ("mig", 0.0)):
        (t,) = traces(figs["slo"], metric="slo_attainment", series=policy)
        np.testing.assert_allclose(t["y"], [share] * len(RATES), atol=1e-12)
    assert "TTFT ≤ 1 s and time per output token ≤ 1 s" in figs["slo"]["layout"]["title"]["text"]
    assert "recomputed from requests.parquet" in html
    assert "For the SLO (TTFT ≤ 1 s and time per output token ≤ 1 s" in _verdict(html)
    # only the TPOT target: the TTFT target stays the sweep's (2 s); all of multiplex's requests meet 2 s
    report_main([str(root), "--slo-tpot-s", "0.048"])
    figs = read_figures((root / "report.html").read_text())
    (t,) = traces(figs["slo"], metric="slo_attainment", series="multiplex")
    # TPOT ≤ 0.048 s ⇔ t ≤ 2.304 s: all 10 of seed 0 and k = 0, 1 of seed 1 → 60%
    np.testing.assert_allclose(t["y"], [60.0] * len(RATES), atol=1e-12)


def test_rejected_and_cost_provenance_are_shown_when_present(tmp_path: Path) -> None:
    """``rejected`` (refused requests) and ``cost_provenance`` of summary.json: a column and banners when
    present; old sweeps without them show neither."""
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    old = build_report(root).read_text()
    assert "<b>rejected</b>" not in old
    assert "rejected requests (all jobs)" not in old
    assert "Step costs were <b>not measured</b>" not in old

    def add(s: dict, d: Path) -> None:
        s["rejected"] = 3 if s["policy"] == "mig" and s["rate"] == 0.4 else 0
        s["cost_provenance"] = "roofline" if s["policy"] == "mig" else "measured"

    _edit(root, add)
    html = build_report(root).read_text()
    assert "6 requests were <b>rejected</b>" in html  # 3 in each of mig's two 0.4 req/s jobs
    assert "in 2 jobs" in html
    assert re.search(r"<tr><td>mig</td>.*?<td>6</td></tr>", html)
    assert re.search(r"<tr><td>reconfig</td>.*?<td>0</td></tr>", html)
    assert "mixtral-8x7b × a100-80gb (<b>roofline</b>)" in html
    # the note is a small line of its own under each figure's title and subtitle, not after the title in
    # the title's font (nor at the end of the subtitle, which then ran under the toolbar at 900 px)
    for f in read_figures(html).values():
        title = f["layout"]["title"]["text"]
        assert title.endswith("<b>roofline cost, not measured</b></span>"), title
        lines = title.split("<br>")
        assert len(lines) == 3
        assert "not measured" not in lines[0] + lines[1]


def test_cdf_counts_requests_that_never_finished(tmp_path: Path) -> None:
    """A request without a finish (rejected) is in the CDF's total: the curve tops out at the share served."""
    import pandas as pd

    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    for job in ("14", "15"):  # multiplex at 0.2 req/s, both seeds: 2 of 10 requests rejected each
        req = pd.read_parquet(root / job / "requests.parquet")
        req.loc[[3, 7], ["start_s", "first_token_s", "finish_s"]] = np.nan
        req.to_parquet(root / job / "requests.parquet")
    (t,) = traces(read_figures(build_report(root).read_text())["cdf"], series="multiplex")
    assert len(t["x"]) == 16
    assert t["y"][-1] == pytest.approx(0.8)
    assert t["y"][0] == pytest.approx(1 / 20)


def test_verdict_per_gpu_when_the_sweep_spans_two(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)

    def h200(s: dict, d: Path) -> None:
        if s["seed"] == 1:
            s["gpu"] = "h200"
        if s["policy"] == "multiplex" and s["seed"] == 1:
            s["slo_attainment"] = 1.0

    _edit(root, h200)
    html = build_report(root).read_text()
    v = read_data(html)["verdict"]
    assert v[0] == "For the SLO (TTFT ≤ 2 s and time per output token ≤ 0.2 s for ≥ 90% of requests):"
    # one list item per GPU (run together in one paragraph they were a wall of text)
    box = html[html.index('id="verdict"'):html.index("</div>", html.index('id="verdict"'))]
    assert box.count("<li>") == 2
    assert "<li>On gpu=a100-80gb, reconfig sustains" in box
    assert v[1].startswith("On gpu=a100-80gb, reconfig sustains the highest per-tenant rate: 0.2 requests/s")
    assert v[2].startswith("On gpu=h200, multiplex sustains the highest per-tenant rate: ≥ 0.4 requests/s "
                           "per tenant on 1 GPU, ≥ 0.8 requests/s per GPU (the sweep's top rate: its limit lies "
                           "higher), at least 2× the next best, reconfig (0.2 requests/s")


def test_counts_in_the_lead_line_agree_in_number() -> None:
    """'1 policies × 1 arrival rates' read wrong in a one-job report."""
    from types import SimpleNamespace

    from moesim.report import _series_count

    one = SimpleNamespace(ok=pd.DataFrame({"policy": ["reconfig"]}), series=["reconfig"])
    two = SimpleNamespace(ok=pd.DataFrame({"policy": ["reconfig", "mig"]}), series=["reconfig", "mig"])
    assert _series_count(one) == "1 policy"
    assert _series_count(two) == "2 policies"
