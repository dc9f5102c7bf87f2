"""Metrics: pure functions of the per-request table and the timeline.

Definitions (seconds): turnaround = finish − arrival; service (the paper's turnaround) = finish − start;
TTFT = first token − arrival; TPOT = (finish − first token) / (output tokens − 1) for outputs > 1;
queue wait = start − arrival.

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
        slo_classes: tenants with their own targets (moesim.slo); ``slo_attainment_<class>`` per class.
    """
    df = per_request(requests)
    n_all = len(df)
    n_rejected = 0
    if "rejected" in df.columns:
        refused = (df["rejected"].astype(str) != "").to_numpy()
        n_rejected = int(refused.sum())
        if n_rejected:
            df = df[~refused]
    n = len(df)
    out: dict[str, Any] = {"n_requests": n_all, "rejected": n_rejected}
    for col in ("turnaround_s", "ttft_s", "service_s", "tpot_s", "queue_wait_s"):
        v = df[col].to_numpy(dtype=float)
        v = v[~np.isnan(v)]
        base = col[:-2]
        out[f"mean_{base}_s"] = float(v.mean()) if v.size else float("nan")
        for p in PERCENTILES:
            out[f"p{p}_{base}_s"] = float(np.percentile(v, p)) if v.size else float("nan")
    if n:
        t0 = float(df["arrival_s"].min())
        t1 = float(df["finish_s"].max())
    else:
        t0 = t1 = 0.0
    span = max(horizon_s, t1) if horizon_s else max(t1 - t0, 1e-12)
    out["span_s"] = span
    out["throughput_rpm"] = 60.0 * n / span if n else 0.0
    out["tokens_per_s"] = float(df["output_tokens"].sum()) / span if n else 0.0
    out["slo_ttft_s"] = slo_ttft_s
    out["slo_tpot_s"] = slo_tpot_s
    if slo_classes:
        ten = df["tenant"].to_numpy()
        ttft_t, tpot_t = targets(ten, slo_ttft_s, slo_tpot_s, slo_classes)
        ok = ((df["ttft_s"].to_numpy() <= ttft_t) & (df["tpot_s"].isna().to_numpy()
                                                      | (df["tpot_s"].to_numpy() <= tpot_t)))
        all_ten = requests["tenant"].to_numpy()
        for c in slo_classes:
            n_c = int(np.isin(all_ten, c.tenants).sum())
            out[f"slo_attainment_{c.name}"] = (float(ok[np.isin(ten, c.tenants)].sum()) / n_c if n_c
                                               else float("nan"))
        out["slo_attainment"] = float(ok.sum()) / n_all if n_all else float("nan")
    else:
        tpot_ok = df["tpot_s"].isna() | (df["tpot_s"] <= slo_tpot_s)
        out["slo_attainment"] = (float(((df["ttft_s"] <= slo_ttft_s) & tpot_ok).sum()) / n_all if n_all
                                 else float("nan"))
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
