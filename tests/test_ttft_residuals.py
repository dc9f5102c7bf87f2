"""``reports/validation/realtime/ttft_residuals.py``: a run's TTFT error split into admission, queueing, prefill."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("simpy")

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "reports" / "validation" / "realtime"


@pytest.fixture(scope="module")
def tr():
    spec = importlib.util.spec_from_file_location("ttft_residuals", RUNS / "ttft_residuals.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ttft_residuals"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("ttft_residuals", None)


def _req(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["request_id", "tenant", "arrival_s", "start_s", "first_token_s"])


def test_split_by_hand(tr) -> None:
    # measured: requests 0 and 1 prefilled one after the other (0.25 s each); simulated: together in one 0.47 s
    # prefill after a decode step that ended at 0.30 s; request 2 alone in both, waiting 0.02 s more simulated
    meas = _req([(0, 0, 0.00, 0.01, 0.26), (1, 1, 0.05, 0.26, 0.51), (2, 0, 1.00, 1.00, 1.25)])
    sim = _req([(1, 1, 0.05, 0.30, 0.77), (0, 0, 0.00, 0.30, 0.77), (2, 0, 1.00, 1.02, 1.28)])
    d = tr.ttft_split(meas, sim).set_index("request_id")
    assert d["regrouped"].tolist() == [True, True, False]
    assert (d.loc[0, "n_m"], d.loc[0, "n_s"]) == (1, 2)
    assert d.loc[0, "admission"] == pytest.approx(0.77 - 0.26)
    assert d.loc[1, "admission"] == pytest.approx(0.72 - 0.46)
    assert d.loc[2, "queueing"] == pytest.approx(0.02)
    assert d.loc[2, "prefill"] == pytest.approx(0.01)
    # the three parts add up to the TTFT error of every request
    total = d["admission"] + d["queueing"] + d["prefill"]
    assert (total - (d["ttft_s"] - d["ttft_m"])).abs().max() < 1e-12
    assert [tr.token_bucket(t) for t in (203, 459, 5000)] == [256, 512, 2048]


def test_ninth_call_multiplex_read_back(tr) -> None:
    a = tr.analyse(RUNS / "h200_s5" / "multiplex_host-s5", "table", {})
    d = a["split"].set_index("request_id")
    # every one of the runtime's 20 prefills held one sequence; the simulator prefilled requests 1 and 2 together
    assert int((d["n_m"] > 1).sum()) == 0
    assert d.index[d["regrouped"]].tolist() == [1, 2]
    assert d.loc[1, "ttft_m"] == pytest.approx(0.2531, abs=5e-4)
    assert d.loc[1, "ttft_s"] == pytest.approx(0.5361, abs=5e-4)
    meas_shapes, sim_shapes = a["shapes"]
    assert meas_shapes.index.tolist() == [(1, 1, 256)]
    assert int(meas_shapes.loc[(1, 1, 256), "n"]) == 20
    assert int(sim_shapes.loc[(2, 2, 512), "n"]) == 1
    _, parts = tr.summary_cells(a)
    mean_m = float(d["ttft_m"].mean())
    # +7.5 % mean TTFT error = +5.3 % admission (the one re-grouping) + 1.2 % queueing + 1.0 % prefill
    assert 100 * parts["admission"] / mean_m == pytest.approx(5.3, abs=0.05)
    assert 100 * parts["queueing"] / mean_m == pytest.approx(1.2, abs=0.05)
    assert 100 * parts["prefill"] / mean_m == pytest.approx(1.0, abs=0.05)
    assert 100 * sum(parts.values()) / mean_m == pytest.approx(a["row"]["mean_ttft_s_error_pct"], abs=1e-9)


def test_streamed_prefills_of_the_ninth_call(tr) -> None:
    # reconfig_fast_host-s5: 9 prefills right after a swap (run eagerly under the streamed swap); the 256-token ones
    # took 269.8–274.2 ms (simulated 272.5), the 181-token one 332.9 ms (simulated 273.3), 119.9 ms outside its copies
    a = tr.analyse(RUNS / "h200_s5" / "reconfig_fast_host-s5", "table", {})
    sp = a["streamed"].set_index("request_id")
    assert sp.index.tolist() == [2, 3, 4, 5, 6, 9, 10, 14, 15]
    assert sp["tokens"].tolist() == [256, 181, 256, 256, 256, 256, 256, 9, 256]
    full = sp[sp["tokens"] == 256]
    assert 1e3 * full["dur_m"].min() == pytest.approx(269.8, abs=0.05)
    assert 1e3 * full["dur_m"].max() == pytest.approx(274.2, abs=0.05)
    assert 1e3 * sp.loc[3, "dur_m"] == pytest.approx(332.9, abs=0.05)
    assert 1e3 * sp.loc[3, "out_m"] == pytest.approx(119.9, abs=0.05)
    assert 1e3 * sp.loc[3, "dur_s"] == pytest.approx(273.3, abs=0.05)
    lines = tr.streamed_lines(a["streamed"])
    assert lines[2].startswith("| 256 tokens | 7 |")
    assert lines[3].startswith("| fewer tokens | 2 |")
