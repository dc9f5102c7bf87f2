"""Replay of the shipped Azure LLM 2023 traces: counts, spans, scaling and tenant assignment read back.

Reference numbers are read from the CSV files with the standard library (independently of the loader).
"""

from __future__ import annotations

import csv
import math
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from moesim.workloads import WORKLOADS
from moesim.workloads.azure import SHIPPED_TRACES, TRACES_DIR, load_shipped
from moesim.workloads.tenants import zipf_weights

REPO = Path(__file__).resolve().parents[1]


def _stdlib_read(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with open(REPO / "workloads" / SHIPPED_TRACES[name], newline="") as f:
        rows = list(csv.DictReader(f))
    # %f takes at most 6 digits: drop the trace's 7th (always 0) fractional digit
    ts = [datetime.strptime(r["TIMESTAMP"][:26], "%Y-%m-%d %H:%M:%S.%f") for r in rows]
    arrival = np.array([(t - ts[0]).total_seconds() for t in ts])
    return (
        arrival,
        np.array([int(r["ContextTokens"]) for r in rows]),
        np.array([int(r["GeneratedTokens"]) for r in rows]),
    )


@pytest.mark.parametrize(
    ("name", "rows", "span_s"), [("azure_conv", 19_366, 3501.721937), ("azure_code", 8_819, 3435.948056)]
)
def test_full_replay_reads_back_rows_span_and_tokens(name: str, rows: int, span_s: float) -> None:
    wl = WORKLOADS.build(name, {})
    reqs = wl.generate(seed=0)
    arrival, prompt, output = _stdlib_read(name)
    assert len(reqs) == rows == len(arrival)
    assert reqs[0].arrival_s == 0.0
    assert reqs[-1].arrival_s == pytest.approx(span_s, abs=1e-6)
    assert wl.horizon_s == pytest.approx(span_s, abs=1e-6)
    assert np.array([r.arrival_s for r in reqs]) == pytest.approx(arrival, abs=1e-6)
    assert [r.prompt_tokens for r in reqs] == prompt.tolist()
    assert [r.output_tokens for r in reqs] == output.tolist()


def test_traces_are_read_from_the_repository_not_shared() -> None:
    assert TRACES_DIR == REPO / "workloads"
    assert (TRACES_DIR / "NOTICE.md").read_text().count("CC-BY 4.0") >= 2
    assert "/work/shared" not in load_shipped("azure_code").source


def test_conversation_trace_loads_well_under_a_second() -> None:
    load_shipped.cache_clear()
    t0 = time.perf_counter()
    trace = load_shipped("azure_conv")
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert load_shipped("azure_conv") is trace  # cached per process
    assert time.perf_counter() - t0 < 1e-3
    assert cold_s < 0.5, f"parsing the conversation trace took {cold_s:.3f} s"


@pytest.mark.parametrize("scale", [2.0, 0.25, 3.0])
def test_time_scale_multiplies_timestamps_exactly(scale: float) -> None:
    base = WORKLOADS.build("azure_code", {}).generate(seed=0)
    wl = WORKLOADS.build("azure_code", {"time_scale": scale})
    scaled = wl.generate(seed=0)
    assert [r.arrival_s for r in scaled] == [r.arrival_s * scale for r in base]
    assert [(r.prompt_tokens, r.output_tokens) for r in scaled] == [
        (r.prompt_tokens, r.output_tokens) for r in base
    ]
    assert wl.horizon_s == base[-1].arrival_s * scale


@pytest.mark.parametrize(("name", "rate", "tenants"), [("azure_conv", 0.05, 2), ("azure_code", 1.0, 4)])
def test_rate_sets_mean_total_rate_to_rate_times_tenants(name: str, rate: float, tenants: int) -> None:
    wl = WORKLOADS.build(name, {"rate": rate, "tenants": tenants, "time_scale": 123.0})  # rate overrides
    reqs = wl.generate(seed=0)
    span_s = reqs[-1].arrival_s - reqs[0].arrival_s
    assert len(reqs) / span_s == pytest.approx(rate * tenants, rel=1e-12)
    trace = load_shipped(name)
    assert wl.time_scale == pytest.approx(len(trace) / trace.span_s / (rate * tenants), rel=1e-15)
    # round-robin: each tenant gets the per-tenant mean rate
    for t in range(tenants):
        assert sum(r.tenant == t for r in reqs) / span_s == pytest.approx(rate, rel=1e-3)


@pytest.mark.parametrize("tenants", [1, 3, 4])
def test_round_robin_is_exact(tenants: int) -> None:
    reqs = WORKLOADS.build("azure_conv", {"tenants": tenants}).generate(seed=123)
    assert [r.tenant for r in reqs] == [i % tenants for i in range(len(reqs))]
    assert [r.id for r in reqs] == list(range(19_366))


def test_zipf_assignment_orders_tenants_by_popularity() -> None:
    tenants, s = 5, 1.2
    reqs = WORKLOADS.build("azure_conv", {"tenants": tenants, "assignment": "zipf", "zipf_s": s}).generate(
        seed=1
    )
    counts = np.bincount([r.tenant for r in reqs], minlength=tenants)
    assert counts.tolist() == sorted(counts.tolist(), reverse=True)
    n, p = len(reqs), zipf_weights(tenants, s)
    for c, pi in zip(counts, p, strict=True):  # binomial, 5 standard errors
        assert abs(c - n * pi) < 5 * math.sqrt(n * pi * (1 - pi))


def test_uniform_assignment_is_balanced_and_seeded() -> None:
    wl = WORKLOADS.build("azure_code", {"tenants": 4, "assignment": "uniform"})
    reqs = wl.generate(seed=2)
    counts = np.bincount([r.tenant for r in reqs], minlength=4)
    n = len(reqs)
    assert np.all(np.abs(counts - n / 4) < 5 * math.sqrt(n * 0.25 * 0.75))
    assert wl.generate(seed=2) == reqs
    assert [r.tenant for r in wl.generate(seed=3)] != [r.tenant for r in reqs]
    assert [r.arrival_s for r in wl.generate(seed=3)] == [
        r.arrival_s for r in reqs
    ]  # seed moves tenants only


def test_duration_and_max_requests_truncate() -> None:
    arrival, _, _ = _stdlib_read("azure_conv")
    wl = WORKLOADS.build("azure_conv", {"duration_s": 600.0})
    reqs = wl.generate(seed=0)
    assert len(reqs) == int((arrival < 600.0).sum())
    assert reqs[-1].arrival_s < 600.0 <= arrival[len(reqs)]
    assert wl.horizon_s == 600.0
    # duration_s applies in scaled time
    half = WORKLOADS.build("azure_conv", {"duration_s": 600.0, "time_scale": 2.0}).generate(seed=0)
    assert len(half) == int((arrival < 300.0).sum())
    wl = WORKLOADS.build("azure_conv", {"max_requests": 100})
    reqs = wl.generate(seed=0)
    assert len(reqs) == 100
    assert wl.horizon_s == reqs[-1].arrival_s == pytest.approx(arrival[99], abs=1e-6)
    # a duration beyond the trace keeps everything and the trace's own end
    wl = WORKLOADS.build("azure_code", {"duration_s": 1e6})
    assert len(wl.generate(seed=0)) == 8_819
    assert wl.horizon_s == pytest.approx(3435.948056, abs=1e-6)
