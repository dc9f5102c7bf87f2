"""Metrics: pure functions of the per-request table and the timeline.

Definitions (seconds): turnaround = finish − arrival; service (the paper's turnaround) = finish − start;
TTFT = first token − arrival; TPOT = (finish − first token) / (output tokens − 1) for outputs > 1;
queue wait = start − arrival.

With a horizon, the ``paper_*`` metrics follow the paper's QoS code (Imani et al., ICML 2025): it serves
only requests dequeued within the window (start < horizon; the rest of the queue is dropped) and logs, over
those, turnaround = finish − start, TTFT = first token − start (the swap and the prefill; queue wait
excluded), wait = start − arrival, and throughput = served requests per minute of the window.

Rejected requests (a non-empty ``rejected`` reason in the per-request table; the engine refuses a request
it can never hold) have no times: they are left out of every latency statistic, counted in
``rejected``, left out of throughput, and count as SLO misses (attainment is over all requests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from moesim.slo import SLO_TPOT_S, SLO_TTFT_S, SLOClass, targets

PERCENTILES = (50, 90, 99)
#: fewer served requests than this give no throughput figure where one is printed (the one-line summaries of
#: ``simulate`` and ``serve``, the report's table): 4 requests over 1.8 s read as "130 req/min", 1 as "1162"
MIN_THROUGHPUT_REQUESTS = 10


def seconds_text(x: float) -> str:
    """A latency for a one-line summary: ``"0.052 s"``; below 10 ms in ms or µs with three significant digits
    (``"5.41 ms"``, ``"60.3 µs"``: a tiny model's latencies read "0.000 s"), from 1,000 s whole seconds with hours
    (``"288,810 s (80.2 h)"``); ``"n/a"`` for NaN (none served)."""
    x = float(x)
    if x != x:
        return "n/a"
    if 1e-3 <= abs(x) < 0.01:
        return f"{x * 1e3:.3g} ms"
    if 0 < abs(x) < 1e-3:
        return f"{x * 1e6:.3g} µs"
    if abs(x) >= 1000:  # a saturated run's "288810.165 s": whole seconds, grouped, and in hours
        return f"{x:,.0f} s ({x / 3600:,.1f} h)"
    return f"{x:.3f} s"


def throughput_text(summary: dict[str, Any]) -> str:
    """The throughput of a run's ``summarize`` dict as a user should read it, with how it was computed:
    ``"130.51 req/min (40 served over 18.4 s)"``, or ``"4 served over 1.84 s: too few for a throughput figure"``
    below ``MIN_THROUGHPUT_REQUESTS`` served requests."""
    served = int(summary.get("n_requests", 0)) - int(summary.get("rejected", 0) or 0)
    span = float(summary.get("span_s", 0.0))
    over = f"{served:,} served over {f'{span:,.0f}' if span >= 1000 else f'{span:.3g}'} s"  # not 1.73e+05 s
    if served < MIN_THROUGHPUT_REQUESTS:
        return f"{over}: too few for a throughput figure"
    return f"{float(summary['throughput_rpm']):.2f} req/min ({over})"


def per_request(requests: pd.DataFrame) -> pd.DataFrame:
    """Add turnaround_s, service_s, ttft_s, tpot_s and queue_wait_s columns (a new frame)."""
    df = requests.copy()
    df["turnaround_s"] = df["finish_s"] - df["arrival_s"]
    df["service_s"] = df["finish_s"] - df["start_s"]
    df["ttft_s"] = df["first_token_s"] - df["arrival_s"]
    df["queue_wait_s"] = df["start_s"] - df["arrival_s"]
    steps = (df["output_tokens"] - 1).astype(float)
    df["tpot_s"] = np.where(steps > 0, (df["finish_s"] - df["first_token_s"]) / steps.where(steps > 0, 1.0),
                            np.nan)
    return df


def summarize(requests: pd.DataFrame, segments: pd.DataFrame, *, horizon_s: float | None = None,
              slo_ttft_s: float = SLO_TTFT_S, slo_tpot_s: float = SLO_TPOT_S,
              slo_classes: Sequence[SLOClass] = ()) -> dict[str, Any]:
    """Run-level metrics.

    Args:
        horizon_s: the workload's duration (seconds from time 0). Throughput and busy fraction are
            measured over ``[0, max(horizon_s, last finish)]``, so a sparse run is not credited with its
            few requests over a few seconds and an overloaded run is charged the time it takes to drain.
            ``None``: first arrival to last finish.
        slo_ttft_s, slo_tpot_s: a request attains the SLO when its TTFT and its TPOT are within both;
            a rejected request never does (``slo_attainment`` is over all ``n_requests``).
        slo_classes: tenants with their own targets (moesim.slo): ``slo_attainment`` uses each tenant's, and
            ``slo_attainment_<class>`` is each class's share.
    """
    df = per_request(requests)
    n = len(df)
    rejected = (df["rejected"].astype(str) != "").to_numpy() if "rejected" in df.columns else np.zeros(n, bool)
    n_served = n - int(rejected.sum())
    out: dict[str, Any] = {"n_requests": n, "rejected": int(rejected.sum())}
    for col in ("turnaround_s", "ttft_s", "service_s", "tpot_s", "queue_wait_s"):
        v = df[col].to_numpy(dtype=float)
        v = v[~np.isnan(v)]
        base = col[:-2]
        out[f"mean_{base}_s"] = float(v.mean()) if v.size else float("nan")
        for p in PERCENTILES:
            out[f"p{p}_{base}_s"] = float(np.percentile(v, p)) if v.size else float("nan")
    if n_served:
        t0 = float(df["arrival_s"].min())
        t1 = float(df["finish_s"].max())
    else:
        t0 = t1 = 0.0
    span = max(horizon_s, t1) if horizon_s else max(t1 - t0, 1e-12)
    out["span_s"] = span
    out["throughput_rpm"] = 60.0 * n_served / span if n_served else 0.0
    out["tokens_per_s"] = float(df["output_tokens"][~rejected].sum()) / span if n_served else 0.0
    out["slo_ttft_s"] = slo_ttft_s
    out["slo_tpot_s"] = slo_tpot_s
    out["slo_attainment"] = slo_attainment(df, slo_ttft_s, slo_tpot_s, slo_classes)
    for c in slo_classes:
        out[f"slo_attainment_{c.name}"] = slo_attainment(df[df["tenant"].isin(c.tenants)], c.ttft_s, c.tpot_s)
    if horizon_s:
        out.update(paper_metrics(df, horizon_s))
    swaps = segments[segments["kind"] == "swap"] if len(segments) else segments
    out["swap_count"] = int(sum(len(str(t).split(",")) for t in swaps["tenants"])) if len(swaps) else 0
    out["swap_time_s"] = float((swaps["end_s"] - swaps["start_s"]).sum()) if len(swaps) else 0.0
    out["expert_fetches"] = float(segments["expert_fetches"].sum()) if len(segments) else 0.0
    if len(segments):
        busy = (segments["end_s"] - segments["start_s"]).groupby(segments["instance"]).sum()
        out["busy_fraction"] = float((busy / span).mean())
    else:
        out["busy_fraction"] = 0.0
    return out


def paper_metrics(df: pd.DataFrame, horizon_s: float) -> dict[str, Any]:
    """The paper's QoS definitions over the requests started within ``[0, horizon_s)`` (see module doc).

    ``df`` is :func:`per_request`'s frame. Means are NaN when no request was served.
    """
    served = df[df["start_s"] < horizon_s]
    n = len(served)

    def mean(v: pd.Series) -> float:
        return float(v.mean()) if n else float("nan")

    return {
        "paper_n_served": n,
        "paper_mean_turnaround_s": mean(served["service_s"]),
        "paper_mean_ttft_s": mean(served["first_token_s"] - served["start_s"]),
        "paper_mean_wait_s": mean(served["queue_wait_s"]),
        "paper_throughput_rpm": 60.0 * n / horizon_s,
    }


def slo_attainment(requests: pd.DataFrame, slo_ttft_s: float, slo_tpot_s: float,
                   slo_classes: Sequence[SLOClass] = ()) -> float:
    """Share of all requests whose TTFT ≤ ``slo_ttft_s`` and TPOT ≤ ``slo_tpot_s`` (seconds); a request
    with one output token has no TPOT and needs the TTFT target only; a request that never produced a
    token (rejected, unfinished) misses. Tenants of ``slo_classes`` use their class's targets instead.
    ``requests`` is a requests table with or without the ``per_request`` columns. NaN for an empty table."""
    df = requests if "ttft_s" in requests and "tpot_s" in requests else per_request(requests)
    if not len(df):
        return float("nan")
    if slo_classes:
        ttft_t, tpot_t = targets(df["tenant"].to_numpy(), slo_ttft_s, slo_tpot_s, slo_classes)
        tpot = df["tpot_s"].to_numpy()
        ok = (df["ttft_s"].to_numpy() <= ttft_t) & (np.isnan(tpot) | (tpot <= tpot_t))
        return float(ok.mean())
    tpot_ok = df["tpot_s"].isna() | (df["tpot_s"] <= slo_tpot_s)
    return float(((df["ttft_s"] <= slo_ttft_s) & tpot_ok).mean())
