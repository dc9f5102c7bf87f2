"""Simulated against measured: per-request and run-level errors. Torch-free.

Per request (``turnaround``, ``ttft``, ``service``): absolute percentage error ``|sim − meas| / meas × 100``,
summarised by its median and mean. Run level: signed percentage error ``(sim − meas) / meas × 100`` of the
mean turnaround, p90 turnaround, mean TTFT and throughput (requests over first arrival to last finish).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd

from moesim.metrics import per_request

IDENTITY_COLUMNS = ("request_id", "tenant", "arrival_s", "prompt_tokens", "output_tokens")
PER_REQUEST = ("turnaround", "ttft", "service")


def check_tables(requests: pd.DataFrame) -> None:
    """Conservation of one per-request table: every request once and finished, times in causal order.

    Raises ``AssertionError`` naming the first violation.
    """
    ids = requests["request_id"].to_numpy()
    assert len(np.unique(ids)) == len(ids), "a request id appears twice"
    assert np.array_equal(np.sort(ids), np.arange(len(ids))), "request ids are not 0..n-1"
    cols = ("arrival_s", "start_s", "first_token_s", "finish_s")
    v = requests[list(cols)].to_numpy(dtype=float)
    assert not np.isnan(v).any(), "a request has a missing timestamp"
    for a, b in itertools.pairwise(cols):
        bad = requests[a].to_numpy(dtype=float) > requests[b].to_numpy(dtype=float) + 1e-12
        assert not bad.any(), f"{int(bad.sum())} requests have {a} after {b}"


def same_requests(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """The two tables hold the same requests (ids, tenants, arrivals, token counts)."""
    x = a.sort_values("request_id")[list(IDENTITY_COLUMNS)].reset_index(drop=True)
    y = b.sort_values("request_id")[list(IDENTITY_COLUMNS)].reset_index(drop=True)
    return x.equals(y)


def _pct(sim: float, meas: float) -> float:
    return float((sim - meas) / meas * 100.0) if meas else float("nan")


def _throughput_rps(df: pd.DataFrame) -> float:
    span = float(df["finish_s"].max() - df["arrival_s"].min())
    return len(df) / span if span > 0 else float("nan")


def per_request_errors(simulated: pd.DataFrame, measured: pd.DataFrame) -> pd.DataFrame:
    """One row per request: simulated and measured turnaround/TTFT/service (s) and their errors (%)."""
    s = per_request(simulated).set_index("request_id").sort_index()
    m = per_request(measured).set_index("request_id").sort_index()
    out = pd.DataFrame({"tenant": m["tenant"], "prompt_tokens": m["prompt_tokens"],
                        "output_tokens": m["output_tokens"]})
    for k in PER_REQUEST:
        out[f"{k}_s_measured"] = m[f"{k}_s"]
        out[f"{k}_s_simulated"] = s[f"{k}_s"]
        out[f"{k}_error_pct"] = (s[f"{k}_s"] - m[f"{k}_s"]) / m[f"{k}_s"] * 100.0
    return out.reset_index()


def summary(simulated: pd.DataFrame, measured: pd.DataFrame) -> dict[str, Any]:
    """Run-level figures and errors of ``simulated`` against ``measured`` (same requests)."""
    if not same_requests(simulated, measured):
        raise ValueError("simulated and measured tables hold different requests")
    pr = per_request_errors(simulated, measured)
    s, m = per_request(simulated), per_request(measured)
    out: dict[str, Any] = {"n_requests": len(m)}
    for k in PER_REQUEST:
        ape = pr[f"{k}_error_pct"].abs()
        out[f"{k}_ape_median_pct"] = float(ape.median())
        out[f"{k}_ape_mean_pct"] = float(ape.mean())
    figures = {
        "mean_turnaround_s": (float(s["turnaround_s"].mean()), float(m["turnaround_s"].mean())),
        "p90_turnaround_s": (float(np.percentile(s["turnaround_s"], 90)),
                             float(np.percentile(m["turnaround_s"], 90))),
        "mean_ttft_s": (float(s["ttft_s"].mean()), float(m["ttft_s"].mean())),
        "throughput_rps": (_throughput_rps(s), _throughput_rps(m)),
    }
    for name, (sv, mv) in figures.items():
        out[f"{name}_simulated"] = sv
        out[f"{name}_measured"] = mv
        out[f"{name}_error_pct"] = _pct(sv, mv)
    return out
