"""The tables a report is drawn from: everything here is a pure function of a sweep dir's files.

A sweep dir holds one sub-directory per job with summary.json (or error.json), requests.parquet,
segments.parquet and instances.json (see ``moesim.job``). Aggregates over seeds use the jobs whose status
is ``ok``; a *series* is one policy, or one policy × the values of any other identifying column that varies
across the sweep (model, GPU, workload, tenants, cost).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim import job as job_files
from moesim.metrics import per_request

CONTEXT_COLUMNS = ("model", "gpu", "workload", "tenants", "cost", "cost_option")
# override keys that are the sweep's axes or already covered by a context column
_AXIS_KEYS = {"policy", "workload.rate", "seed", "model", "gpu", "workload", "cost", "workload.tenants"}


def override_values(overrides: str) -> dict[str, str]:
    """``"policy=mig workload.rate=0.1"`` → ``{"policy": "mig", "workload.rate": "0.1"}``."""
    out = {}
    for item in str(overrides or "").split():
        key, sep, value = item.partition("=")
        if sep and not key.startswith(("hydra.", "hydra/")):
            out[key.lstrip("+~")] = value
    return out
CDF_MAX_POINTS = 1000


@dataclass(frozen=True)
class ReportOptions:
    """What the report shows (see ``moesim.config.ReportConfig``).

    Attributes:
        cdf_rate: per-tenant rate (requests/s) of the CDF and the timeline; None: the swept rate nearest the
            middle of the range (geometric middle).
        timeline_window_s: length of the timeline window (seconds).
        slo_target: share of requests that must meet the SLO for a rate to count as sustained.
        baselines: policies compared against in the headline table.
    """

    cdf_rate: float | None = None
    timeline_window_s: float = 30.0
    slo_target: float = 0.9
    baselines: tuple[str, ...] = ("mig", "reconfig")


@dataclass
class SweepData:
    """A sweep's tables. ``summary`` has one row per job (status ok, failed or incomplete)."""

    root: Path
    summary: pd.DataFrame
    options: ReportOptions
    ok: pd.DataFrame = field(init=False)
    series: list[str] = field(init=False)
    context_columns: list[str] = field(init=False)

    def __post_init__(self) -> None:
        ok = self.summary[self.summary["status"] == "ok"].copy()
        ok["rate"] = ok["rate"].astype(float)
        ok["seed"] = ok["seed"].astype(int)
        # other swept parameters (policy.max_batch=1,8 …) keep their series apart too
        values = pd.DataFrame([override_values(o) for o in ok.get("overrides", pd.Series("", index=ok.index))],
                              index=ok.index)
        extra = [k for k in values.columns if k not in _AXIS_KEYS and values[k].nunique(dropna=False) > 1]
        for k in extra:
            ok[k] = values[k]
        self.context_columns = [c for c in CONTEXT_COLUMNS if c in ok.columns and ok[c].nunique() > 1] + extra
        ok["series"] = [series_label(r, self.context_columns) for _, r in ok.iterrows()]
        self.ok = ok
        self.series = list(dict.fromkeys(ok["series"]))  # order of first appearance (the sweep's order)

    # ---- aggregates -------------------------------------------------------------------------------
    @property
    def rates(self) -> list[float]:
        """Swept per-tenant rates (requests/s), ascending."""
        return sorted(self.ok["rate"].unique().tolist())

    @property
    def seeds(self) -> list[int]:
        """Seeds of the finished jobs."""
        return sorted(self.ok["seed"].unique().tolist())

    def by_rate(self, metric: str) -> pd.DataFrame:
        """Per series and rate: mean, min and max over seeds of ``metric``, and the number of seeds."""
        g = self.ok.groupby(["series", "rate"], sort=False)[metric]
        out = g.agg(["mean", "min", "max", "count"]).reset_index()
        return out.sort_values(["series", "rate"], key=lambda s: s.map(self._order) if s.name == "series" else s)

    def _order(self, label: str) -> int:
        return self.series.index(label)

    @property
    def chosen_rate(self) -> float | None:
        """The rate of the CDF and timeline: the option if swept, else the swept rate nearest the middle."""
        rates = self.rates
        if not rates:
            return None
        want = self.options.cdf_rate
        if want is None:
            pos = [r for r in rates if r > 0]
            want = math.sqrt(pos[0] * pos[-1]) if pos else rates[len(rates) // 2]
        return min(rates, key=lambda r: (abs(math.log(r / want)) if r > 0 and want > 0 else abs(r - want), r))

    def jobs_at(self, rate: float) -> pd.DataFrame:
        """Finished jobs at ``rate``."""
        return self.ok[np.isclose(self.ok["rate"], rate)]

    # ---- per-job files ------------------------------------------------------------------------------
    def requests(self, job: str) -> pd.DataFrame:
        """A job's per-request table with turnaround_s, ttft_s, … added (``moesim.metrics.per_request``)."""
        return per_request(pd.read_parquet(self.root / job / job_files.REQUESTS))

    def segments(self, job: str) -> pd.DataFrame:
        """A job's timeline."""
        return pd.read_parquet(self.root / job / job_files.SEGMENTS)

    def instances(self, job: str) -> list[dict[str, Any]]:
        """A job's instances (memory in bytes)."""
        return json.loads((self.root / job / job_files.INSTANCES).read_text())

    def representative_job(self, series: str, rate: float | None) -> str | None:
        """The job of ``series`` at ``rate`` (nearest rate if absent) with the lowest seed."""
        rows = self.ok[self.ok["series"] == series]
        if rows.empty:
            return None
        if rate is not None:
            nearest = rows.iloc[(rows["rate"] - rate).abs().argsort()]["rate"].iloc[0]
            rows = rows[rows["rate"] == nearest]
        return str(rows.sort_values("seed")["job"].iloc[0])


def series_label(row: pd.Series, context_columns: list[str]) -> str:
    """``policy`` or ``policy · gpu=h200 · …`` when other identifying columns vary."""
    parts = [str(row["policy"])] + [f"{c}={row[c]}" for c in context_columns]
    return " · ".join(parts)


def ecdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF points (x ascending, y = share ≤ x); exact up to ``CDF_MAX_POINTS`` values, else
    the ``inverted_cdf`` quantiles at ``CDF_MAX_POINTS`` evenly spaced probabilities."""
    v = np.sort(values[~np.isnan(values)])
    n = len(v)
    if n <= CDF_MAX_POINTS:
        return v, np.arange(1, n + 1) / n
    q = np.arange(1, CDF_MAX_POINTS + 1) / CDF_MAX_POINTS
    return np.quantile(v, q, method="inverted_cdf"), q


def pct_change(data: SweepData, metric: str, series: str, baseline_series: str) -> float:
    """Mean over the rates both series have of 100·(m_series − m_baseline)/m_baseline, with m the mean
    over seeds of ``metric``. NaN when they share no rate."""
    a = data.by_rate(metric)
    s = a[a["series"] == series].set_index("rate")["mean"]
    b = a[a["series"] == baseline_series].set_index("rate")["mean"]
    common = s.index.intersection(b.index)
    common = [r for r in common if b[r] > 0 and np.isfinite(b[r]) and np.isfinite(s[r])]
    if not common:
        return float("nan")
    return float(np.mean([100.0 * (s[r] - b[r]) / b[r] for r in common]))


def sustained_rate(data: SweepData, series: str) -> float | None:
    """The highest swept rate at which this series, and at every lower swept rate, meets the SLO for at
    least ``slo_target`` of requests (mean over seeds). None when even the lowest rate misses."""
    a = data.by_rate("slo_attainment")
    a = a[a["series"] == series].sort_values("rate")
    best = None
    for _, r in a.iterrows():
        if r["mean"] >= data.options.slo_target - 1e-12:
            best = float(r["rate"])
        else:
            break
    return best


def baseline_series(data: SweepData, series: str, baseline_policy: str) -> str | None:
    """The series of ``baseline_policy`` with the same context (model, GPU, …) as ``series``."""
    rows = data.ok[data.ok["series"] == series]
    if rows.empty:
        return None
    row = rows.iloc[0].copy()
    row["policy"] = baseline_policy
    label = series_label(row, data.context_columns)
    return label if label in data.series else None


def headline(data: SweepData) -> pd.DataFrame:
    """One row per series: headline numbers (see ``pct_change`` and ``sustained_rate``)."""
    rate = data.chosen_rate
    rows = []
    for s in data.series:
        sub = data.ok[data.ok["series"] == s]
        at = sub[np.isclose(sub["rate"], rate)] if rate is not None else sub.iloc[0:0]
        row: dict[str, Any] = {
            "series": s,
            "policy": str(sub["policy"].iloc[0]),
            "mean_turnaround_s_at_rate": float(at["mean_turnaround_s"].mean()) if len(at) else float("nan"),
            "mean_ttft_s_at_rate": float(at["mean_ttft_s"].mean()) if len(at) else float("nan"),
            "throughput_rpm_at_max_rate": float(sub[sub["rate"] == sub["rate"].max()]["throughput_rpm"].mean()),
            "sustained_rate": sustained_rate(data, s),
        }
        for base in data.options.baselines:
            b = baseline_series(data, s, base)
            for metric, short in (("mean_turnaround_s", "turnaround"), ("mean_ttft_s", "ttft")):
                row[f"{short}_pct_vs_{base}"] = (pct_change(data, metric, s, b) if b is not None
                                                 else float("nan"))
        rows.append(row)
    return pd.DataFrame(rows)
