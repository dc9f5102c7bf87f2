"""The capacity search's report as a reader sees it: GPU types of one policy told apart in the GPUs-needed
figure even with a single load, whole-number labels on the price axis, the workload in words, and (in
headless Chromium, when installed) no title under plotly's toolbar at 900 and 1400 px."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from moesim.search.report import log_ticks


@pytest.fixture(scope="module")
def search_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small search (about 3 s): 4 variants, two GPU types, two policies, one load."""
    from moesim.search.__main__ import main

    out = tmp_path_factory.mktemp("search") / "s"
    rc = main(["workload.tenants=4", "workload.rate=2.0", "workload.duration_s=30", "search.gpus=h100-80gb,h200",
               "search.strategies=greedy_slo", "search.policies=multiplex,swap", "search.max_batch=8",
               "search.max_gpus=8", "search.loads=1", "search.backend=local", "search.workers=1",
               "search.progress=false", f"search.out={out}"])
    assert rc == 0
    return out


def _figures(html: str) -> dict[str, Any]:
    figs = {}
    for name in ("frontier", "needed", "placement"):
        start = html.index(f'data-figure="fig-{name}">') + len(f'data-figure="fig-{name}">')
        figs[name] = json.loads(html[start:html.index("</script>", start)])
    return figs


def test_gpu_types_of_one_policy_look_different_with_a_single_load(search_out: Path) -> None:
    """With one load every trace of the GPUs-needed figure is a lone marker (no line, so no dash): each
    (policy, GPU) must differ in colour or marker, and a GPU type has the same marker as in the frontier."""
    import pandas as pd

    figs = _figures((search_out / "report.html").read_text())
    needed = [t for t in figs["needed"]["data"] if t.get("x")]
    needed_csv = pd.read_csv(search_out / "needed.csv")
    feasible = {(r.policy, r.gpu) for r in needed_csv.dropna(subset=["needed"]).itertuples()}
    assert len(needed) == len(feasible) >= 2
    looks = {(t["line"]["color"], t["marker"]["symbol"]) for t in needed}
    assert len(looks) == len(needed), [(t["name"], t["marker"]["symbol"]) for t in needed]
    frontier_symbol = {t["name"]: t["marker"]["symbol"] for t in figs["frontier"]["data"] if " · " in t["name"]}
    for t in needed:
        assert t["marker"]["symbol"] == frontier_symbol[t["name"]], t["name"]


def test_price_axis_labels_are_whole_numbers(search_out: Path) -> None:
    """The log price axis carries explicit 1-2-(3-)5 ticks labelled with their values, covering every trial."""
    figs = _figures((search_out / "report.html").read_text())
    axis = figs["frontier"]["layout"]["xaxis"]
    ticks, labels = axis["tickvals"], axis["ticktext"]
    assert labels == [f"{t:g}" for t in ticks]
    prices = [x for t in figs["frontier"]["data"] if " · " in t["name"] for x in t["x"]]
    assert min(ticks) <= min(prices) * 1.5
    assert max(ticks) >= max(prices) / 1.5
    if len(set(prices)) <= 6:  # a few prices (4 and 8 USD/hour): exactly those are labelled
        assert ticks == sorted(set(prices))
    assert log_ticks(3.0, 48.0) == [2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 50.0]
    assert log_ticks(1.3, 620.0) == [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]
    assert log_ticks(0.0, 5.0) == []
    assert log_ticks(math.nan, 5.0) == []


def test_workload_and_cost_are_written_in_words(search_out: Path) -> None:
    html = (search_out / "report.html").read_text()
    assert "poisson (rate=2.0, tenants=4, duration_s=30.0," in html
    assert "tokens_from=none" in html
    assert "<td>best</td>" in html
    assert '{&quot;name&quot;' not in html
    assert '{"name"' not in html.split("<script")[0]


@pytest.mark.parametrize("width", [900, 1400])
def test_search_report_has_nothing_under_the_toolbar(search_out: Path, tmp_path: Path, width: int) -> None:
    """At 900 and 1400 px: no title, legend, axis title or tick label under plotly's toolbar or over another,
    none past its figure's edge, no horizontal scrolling (the browser test's checks, on this report)."""
    from test_browser_report import CHROMIUM, OVERLAPS, Browser

    if CHROMIUM is None:
        pytest.skip("no chromium")
    browser = Browser(tmp_path / "profile")
    try:
        browser.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=1000,
                     deviceScaleFactor=1, mobile=False)
        browser.open((search_out / "report.html").as_uri())
        assert browser.problems() == []
        state = browser.evaluate(OVERLAPS)
        out = Path(os.environ.get("MOESIM_ARTIFACTS") or tmp_path)
        out.mkdir(parents=True, exist_ok=True)
        browser.screenshot(out / f"search_report_{width}px.png")
    finally:
        browser.close()
    assert state["figures"] == 3
    assert state["page"]["scroll"] <= width, state["page"]
    assert [(o["figure"], o["a"]["kind"], o["a"].get("text"), o["b"]["kind"], o["b"].get("text"))
            for o in state["overlaps"]] == []


def test_a_few_prices_are_labelled_exactly() -> None:
    # a search of 1 and 2 H200s (4 and 8 USD/hour) labelled its price axis "5" only
    import pandas as pd

    from moesim.search.report import frontier

    trials = pd.DataFrame({"phase": ["search"] * 2, "load": [1.0, 1.0], "policy": ["reconfig"] * 2,
                           "gpu": ["h200"] * 2, "usd_per_hour": [4.0, 8.0], "attainment_min": [0.0, 0.01],
                           "count": [1, 2], "strategy": ["greedy_slo"] * 2, "max_batch": [1, 1], "error": ["", ""]})
    axis = frontier(trials, 0.9, None, "USD").layout.xaxis
    assert list(axis.tickvals) == [4.0, 8.0]
    assert list(axis.ticktext) == ["4", "8"]


def test_gpus_needed_says_so_when_no_fleet_meets_the_target() -> None:
    # a search where nothing was feasible drew an empty axis from -1 to 6 without a word
    import pandas as pd

    from moesim.search.report import needed_vs_rate

    needed = pd.DataFrame({"policy": ["reconfig"], "gpu": ["h200"], "load": [1.0], "needed": [float("nan")]})
    fig = needed_vs_rate(needed, {1.0: 37.75})
    assert [a.text for a in fig.layout.annotations] == ["no fleet within search.max_gpus meets the target at any load"]
    assert list(fig.layout.xaxis.range) == [0.0, pytest.approx(45.3)]
