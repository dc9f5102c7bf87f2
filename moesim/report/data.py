"""The tables a report is drawn from: everything here is a pure function of a sweep dir's files.

A sweep dir holds one sub-directory per job with summary.json (or error.json), requests.parquet,
segments.parquet and instances.json (see ``moesim.job``). Aggregates over seeds use the jobs whose status
is ``ok``; a *series* is one policy, or one policy × the values of any other identifying column that varies
across the sweep (model, GPU, workload, tenants, cost).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim import job as job_files
from moesim.metrics import per_request
from moesim.report.options import ReportOptions
from moesim.report.page import pct_text

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
# columns a job's parquet files must have for the report to draw from them
REQUEST_COLUMNS = ("arrival_s", "first_token_s", "finish_s", "output_tokens")
SEGMENT_COLUMNS = ("instance", "kind", "start_s", "end_s", "n_seqs", "tokens", "tenants", "expert_fetches",
                   "fetch_s")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_job_files(job_dir: Path) -> str | None:
    """Why a finished job's files cannot be drawn from (missing, empty, corrupt, columns missing), or
    None. Cheap: reads the parquet footers and instances.json only."""
    import pyarrow.parquet as pq

    for name, cols in ((job_files.REQUESTS, REQUEST_COLUMNS), (job_files.SEGMENTS, SEGMENT_COLUMNS)):
        path = job_dir / name
        if not path.exists():
            return f"{name}: missing"
        try:
            schema = pq.read_schema(path)
        except Exception as exc:  # pyarrow raises several kinds for a corrupt file
            return f"{name}: corrupt ({_reason(exc)})"
        missing = [c for c in cols if c not in schema.names]
        if missing:
            return f"{name}: no column {', '.join(missing)}"
    path = job_dir / job_files.INSTANCES
    if not path.exists():
        return f"{job_files.INSTANCES}: missing"
    try:
        inst = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(inst, list) or not inst or not all(isinstance(i, dict) for i in inst):
            raise ValueError("not a non-empty list of instance records")
    except (OSError, ValueError) as exc:
        return f"{job_files.INSTANCES}: unreadable ({_reason(exc)})"
    return None


def mark_unreadable_files(root: Path, summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` (one row per job, see ``moesim.sweep.collect``) with every finished job whose files
    cannot be drawn from (``check_job_files``) turned into status ``unreadable`` with the reason in
    ``error``."""
    out = summary.copy()
    if "error" not in out:
        out["error"] = pd.NA
    out["error"] = out["error"].astype(object)
    for i in out.index[out["status"] == "ok"]:
        why = check_job_files(Path(root) / str(out.at[i, "job"]))
        if why is not None:
            out.at[i, "status"] = "unreadable"
            out.at[i, "error"] = why
    return out


@dataclass
class SweepData:
    """A sweep's tables. ``summary`` has one row per job (status ok, failed, incomplete or unreadable).

    Finished jobs whose files cannot be read are turned into ``unreadable`` rows (with the reason in
    ``error``) before anything is aggregated, so the figures and tables are drawn from the rest. When the
    options set another SLO, every finished job's ``slo_attainment`` is recomputed from its requests.parquet.
    """

    root: Path
    summary: pd.DataFrame
    options: ReportOptions
    ok: pd.DataFrame = field(init=False)
    series: list[str] = field(init=False)
    context_columns: list[str] = field(init=False)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.summary = mark_unreadable_files(self.root, self.summary)
        self._cache: dict[tuple[str, str], Any] = {}
        if self.options.slo_override:
            self._recompute_slo()
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

    def _mark_unreadable(self, index: Any, reason: str) -> None:
        self.summary.at[index, "status"] = "unreadable"
        self.summary.at[index, "error"] = reason

    def _recompute_slo(self) -> None:
        """slo_attainment (and the targets) of every finished job at the options' SLO."""
        from moesim.metrics import slo_attainment

        s = self.summary
        for i in s.index[s["status"] == "ok"]:
            ttft = self.options.slo_ttft_s if self.options.slo_ttft_s is not None else float(s.at[i, "slo_ttft_s"])
            tpot = self.options.slo_tpot_s if self.options.slo_tpot_s is not None else float(s.at[i, "slo_tpot_s"])
            try:
                req = self.requests(str(s.at[i, "job"]))
            except Exception as exc:
                self._mark_unreadable(i, f"{job_files.REQUESTS}: unreadable ({_reason(exc)})")
                continue
            s.at[i, "slo_attainment"] = slo_attainment(req, ttft, tpot)
            s.at[i, "slo_ttft_s"] = ttft
            s.at[i, "slo_tpot_s"] = tpot

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
    def _read(self, job: str, what: str) -> Any:
        key = (job, what)
        if key not in self._cache:
            d = self.root / job
            if what == "requests":
                self._cache[key] = per_request(pd.read_parquet(d / job_files.REQUESTS))
            elif what == "segments":
                self._cache[key] = pd.read_parquet(d / job_files.SEGMENTS)
            else:
                self._cache[key] = json.loads((d / job_files.INSTANCES).read_text())
        return self._cache[key]

    def requests(self, job: str) -> pd.DataFrame:
        """A job's per-request table with turnaround_s, ttft_s, … added (``moesim.metrics.per_request``)."""
        return self._read(job, "requests")

    def segments(self, job: str) -> pd.DataFrame:
        """A job's timeline."""
        return self._read(job, "segments")

    def instances(self, job: str) -> list[dict[str, Any]]:
        """A job's instances (memory in bytes)."""
        return self._read(job, "instances")

    def readable(self, job: str, *whats: str) -> bool:
        """Whether the job's files read (a failure is noted for the report and the job skipped)."""
        try:
            for w in whats:
                self._read(job, w)
        except Exception as exc:
            note = f"job {job}: {w} unreadable ({_reason(exc)}); left out of the figures that need it"
            if note not in self.notes:
                self.notes.append(note)
            return False
        return True

    def representative_job(self, series: str, rate: float | None, *needs: str) -> str | None:
        """The job of ``series`` at ``rate`` (nearest rate if absent) with the lowest seed whose files
        ``needs`` (requests, segments, instances) read."""
        rows = self.ok[self.ok["series"] == series]
        if rows.empty:
            return None
        if rate is not None:
            rows = rows.iloc[np.lexsort((rows["seed"].to_numpy(), (rows["rate"] - rate).abs().to_numpy()))]
        else:
            rows = rows.sort_values("seed")
        for job in rows["job"].astype(str):
            if self.readable(job, *needs):
                return job
        return None

    def gpus(self, series: str) -> int:
        """GPUs a series' instances occupy: the sum of their SM shares, rounded up (MIG slices of one
        GPU count once; ``dedicated`` counts one per tenant)."""
        job = self.representative_job(series, self.chosen_rate, "instances")
        if job is None:
            return 1
        total = sum(float(i.get("sm_fraction", 1.0)) for i in self.instances(job))
        return max(1, math.ceil(total - 1e-6))


def series_label(row: pd.Series, context_columns: list[str]) -> str:
    """``policy`` or ``policy · gpu=h200 · …`` when other identifying columns vary."""
    parts = [str(row["policy"])] + [f"{c}={row[c]}" for c in context_columns]
    return " · ".join(parts)


def ecdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF points (x ascending, y = share of *all* values ≤ x; NaN values, e.g. requests that
    were rejected or never finished, count in the total, so the curve then tops out below 1); exact up
    to ``CDF_MAX_POINTS`` values, else the ``inverted_cdf`` quantiles at ``CDF_MAX_POINTS`` evenly
    spaced probabilities."""
    total = len(values)
    v = np.sort(values[~np.isnan(values)])
    n = len(v)
    if n == 0:
        return v, v.astype(float)
    if n <= CDF_MAX_POINTS:
        return v, np.arange(1, n + 1) / total
    q = np.arange(1, CDF_MAX_POINTS + 1) / CDF_MAX_POINTS
    return np.quantile(v, q, method="inverted_cdf"), q * n / total


def rate_ratios(data: SweepData, metric: str, series: str, baseline_series: str) -> dict[float, float]:
    """Per rate both series ran (only ``options.compare_rates`` when set): m_series / m_baseline, with m
    the mean over seeds of ``metric``. Rates where either mean is not finite or the baseline's is 0 are left out."""
    a = data.by_rate(metric)
    s = a[a["series"] == series].set_index("rate")["mean"]
    b = a[a["series"] == baseline_series].set_index("rate")["mean"]
    common = [r for r in s.index.intersection(b.index) if b[r] > 0 and np.isfinite(b[r]) and np.isfinite(s[r])]
    want = data.options.compare_rates
    if want:
        common = [r for r in common if any(math.isclose(r, w, rel_tol=1e-9) for w in want)]
    return {float(r): float(s[r] / b[r]) for r in sorted(common)}


def pct_change(data: SweepData, metric: str, series: str, baseline_series: str) -> float:
    """100 · (median over rates of the per-rate ratio − 1) (see ``rate_ratios``): −85 means the series'
    ``metric`` is 85% lower than the baseline's at a typical swept rate. A median of per-rate ratios,
    not a mean of differences, so a few saturated rates (where a baseline's queue grows without bound)
    do not dominate it. NaN when they share no rate."""
    ratios = rate_ratios(data, metric, series, baseline_series)
    if not ratios:
        return float("nan")
    return float(100.0 * (np.median(list(ratios.values())) - 1.0))


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


def _sum_col(sub: pd.DataFrame, col: str) -> float | None:
    if col not in sub:
        return None
    v = pd.to_numeric(sub[col], errors="coerce")
    return float(v.sum()) if v.notna().any() else None


def _served(jobs: pd.DataFrame) -> float:
    """Mean served requests per job (``n_requests`` − ``rejected``); NaN when the table lacks the counts."""
    if "n_requests" not in jobs or not len(jobs):
        return float("nan")
    n = pd.to_numeric(jobs["n_requests"], errors="coerce")
    rej = pd.to_numeric(jobs["rejected"], errors="coerce").fillna(0) if "rejected" in jobs else 0
    return float((n - rej).mean())


def headline(data: SweepData) -> pd.DataFrame:
    """One row per series: headline numbers (see ``pct_change`` and ``sustained_rate``).

    ``sustained_at_top`` is True when the series still meets the SLO at its highest swept rate (its limit
    lies above the sweep); ``gpus`` the GPUs its instances occupy; ``sustained_rps_per_gpu`` the sustained
    rate × tenants / GPUs (requests/s per GPU); ``rejected`` the requests refused over all its jobs (when
    the jobs record it).
    """
    rate = data.chosen_rate
    rows = []
    for s in data.series:
        sub = data.ok[data.ok["series"] == s]
        at = sub[np.isclose(sub["rate"], rate)] if rate is not None else sub.iloc[0:0]
        sr = sustained_rate(data, s)
        gpus = data.gpus(s)
        tenants = float(pd.to_numeric(sub["tenants"], errors="coerce").max())
        row: dict[str, Any] = {
            "series": s,
            "policy": str(sub["policy"].iloc[0]),
            "mean_turnaround_s_at_rate": float(at["mean_turnaround_s"].mean()) if len(at) else float("nan"),
            "mean_ttft_s_at_rate": float(at["mean_ttft_s"].mean()) if len(at) else float("nan"),
            "throughput_rpm_at_max_rate": float(sub[sub["rate"] == sub["rate"].max()]["throughput_rpm"].mean()),
            "served_at_max_rate": _served(sub[sub["rate"] == sub["rate"].max()]),
            "sustained_rate": sr,
            "sustained_at_top": sr is not None and math.isclose(sr, float(sub["rate"].max())),
            "gpus": gpus,
            "tenants": tenants,
            "sustained_rps_per_gpu": (sr * tenants / gpus) if sr is not None else None,
            "rejected": _sum_col(sub, "rejected"),
        }
        for base in data.options.baselines:
            b = baseline_series(data, s, base)
            for metric, short in (("mean_turnaround_s", "turnaround"), ("mean_ttft_s", "ttft")):
                row[f"{short}_pct_vs_{base}"] = (pct_change(data, metric, s, b) if b is not None
                                                 else float("nan"))
                row[f"{short}_ratios_vs_{base}"] = (rate_ratios(data, metric, s, b) if b is not None else {})
        rows.append(row)
    return pd.DataFrame(rows)


def _rate_text(rate: float | None, at_top: bool, lowest: float | None) -> str:
    if rate is None:
        return f"< {lowest:g}" if lowest is not None else "—"
    return f"≥ {rate:.4g}" if at_top else f"{rate:.4g}"


def verdict(data: SweepData, head: pd.DataFrame) -> list[str]:
    """The report's opening sentences (plain text), one list item per context group (GPU, model, … when
    the sweep spans several): which policy sustains the highest per-tenant rate within the SLO, by how
    much over the next best, and at what cost in GPUs."""
    if head.empty:
        return []
    o = data.options
    ok = data.ok
    ttft = ok["slo_ttft_s"].astype(float).unique()
    tpot = ok["slo_tpot_s"].astype(float).unique()
    slo = (f"TTFT ≤ {'/'.join(f'{x:g}' for x in ttft)} s and time per output token ≤ "
           f"{'/'.join(f'{x:g}' for x in tpot)} s for ≥ {100 * o.slo_target:g}% of requests")
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in head.to_dict("records"):
        for k in ("sustained_rate", "sustained_rps_per_gpu"):  # NaN in the frame: None here
            if r[k] is not None and not np.isfinite(r[k]):
                r[k] = None
        ctx = r["series"][len(r["policy"]):].lstrip(" ·")
        groups.setdefault(ctx, []).append(r)
    out = []
    several = len(groups) > 1
    if several:
        out.append(f"For the SLO ({slo}):")
    for ctx, rows in groups.items():
        sub = ok[ok["series"].isin([r["series"] for r in rows])]
        lowest = float(sub["rate"].min())
        lead = f"On {ctx}, " if several else f"For the SLO ({slo}), "

        def name(r: dict[str, Any]) -> str:
            return str(r["policy"])

        def rate_of(r: dict[str, Any], lowest: float = lowest) -> str:
            return _rate_text(r["sustained_rate"], bool(r["sustained_at_top"]), lowest)

        def cost(r: dict[str, Any]) -> str:
            g = int(r["gpus"])
            per = r["sustained_rps_per_gpu"]
            gp = f"{g} GPU{'s' if g != 1 else ''}"
            if per is None:
                return f"on {gp}"
            return f"on {gp}, {'≥ ' if r['sustained_at_top'] else ''}{per:.4g} requests/s per GPU"

        live = [r for r in rows if r["sustained_rate"] is not None]
        if float(sub["rate"].max()) <= 0:
            # a replay whose requests all arrive at one instant records rate 0: "≥ 0 requests/s per tenant"
            met = [name(r) for r in live]
            missed = [name(r) for r in rows if r["sustained_rate"] is None]
            text = (f"{lead}the replayed trace has no arrival rate (its requests all arrive at one instant), so "
                    "no rate is compared: " + (f"{', '.join(met)} meet{'s' if len(met) == 1 else ''} it"
                                                if met else "no policy meets it"))
            if met and missed:
                text += f"; {', '.join(missed)} miss{'es' if len(missed) == 1 else ''} it"
            out.append(text + ".")
            continue
        if not live:
            text = (f"{lead}no policy meets it even at the lowest swept rate ({lowest:.4g} requests/s per "
                    "tenant)")
            low = sub[np.isclose(sub["rate"], lowest)]
            tight = []
            queued = ""
            for col, target, label, flag in (("p50_ttft_s", "slo_ttft_s", "TTFT", "slo_ttft_s="),
                                             ("p50_tpot_s", "slo_tpot_s", "time per output token",
                                              "slo_tpot_s=")):
                p50 = low.groupby("series")[col].mean().dropna() if col in low else pd.Series(dtype=float)
                limit = float(low[target].astype(float).max())
                if len(p50) and float(p50.min()) > limit:
                    if col == "p50_ttft_s" and {"mean_ttft_s", "mean_queue_wait_s"} <= set(low.columns):
                        # TTFT net of the wait before a request starts: if that meets the target, the policies
                        # are saturated at this rate (queueing), not slower than the SLO when unloaded
                        g = low.groupby("series")
                        own = (g["mean_ttft_s"].mean() - g["mean_queue_wait_s"].mean()).dropna()
                        if len(own) and float(own.min()) <= limit:
                            best = own.idxmin()
                            queued = (f": even there the best median TTFT is {float(p50.min()):.3g} s "
                                      f"({p50.idxmin()}), mostly queueing (without the wait before it starts, "
                                      f"{best}'s mean TTFT is {float(own.min()):.3g} s): this rate already "
                                      "saturates every policy")
                            continue
                    tight.append((f"the best median {label} is {float(p50.min()):.3g} s ({p50.idxmin()}), above "
                                  f"the {limit:g} s target", flag))
            if tight:
                text += (": even there " + " and ".join(t for t, _ in tight) + ", so the SLO is tighter than "
                         "an unloaded request's service; " + " / ".join(f for _, f in tight)
                         + (" recompute" if len(tight) > 1 else " recomputes") + " the report for another target")
            else:
                text += queued + "; sweep lower rates to find where each policy holds"
            quickest = min(rows, key=lambda r: r["mean_turnaround_s_at_rate"]
                           if np.isfinite(r["mean_turnaround_s_at_rate"]) else math.inf)
            out.append(text + "." + _vs_text(data, quickest, rows))
            continue
        top = max(r["sustained_rate"] for r in live)
        best_rows = sorted([r for r in live if math.isclose(r["sustained_rate"], top)],
                           key=lambda r: (r["gpus"], r["mean_turnaround_s_at_rate"]))
        best = best_rows[0]
        text = (f"{lead}{name(best)} sustains the highest per-tenant rate: "
                f"{rate_of(best)} requests/s per tenant {cost(best)}")
        if best["sustained_at_top"]:
            text += " (the sweep's top rate: its limit lies higher)"
        others = [r for r in live if r["sustained_rate"] < top - 1e-12]
        tied = best_rows[1:]
        runner_text = ""
        if others:
            second = max(r["sustained_rate"] for r in others)
            runners = sorted([r for r in others if math.isclose(r["sustained_rate"], second)],
                             key=lambda r: (r["gpus"], r["mean_turnaround_s_at_rate"]))
            runner = runners[0]
            k = top / runner["sustained_rate"]
            also = "".join(f" and {name(r)} ({cost(r)})" for r in runners[1:])  # a tie for second: all of them
            runner_text = (f"{'at least ' if best['sustained_at_top'] else ''}{k:.3g}× the next best, "
                           f"{name(runner)} ({rate_of(runner)} requests/s per tenant {cost(runner)}){also}")
        if not tied:
            text += (f", {runner_text}" if runner_text else "") + "."
        else:
            # several policies hold the same top rate: say so first, so the "next best" below them reads as
            # below all of them (not as the second place after a single winner)
            at = f" at {data.chosen_rate:.4g} requests/s per tenant" if data.chosen_rate is not None else ""
            if best["gpus"] < min(r["gpus"] for r in tied):
                why = "the fewest GPUs"
            elif best["gpus"] < max(r["gpus"] for r in tied):
                why = f"the fewest GPUs, then the lowest mean turnaround{at}"
            else:
                why = f"the lowest mean turnaround{at}"
            text += ("; " + "; ".join(f"{name(r)} reaches the same rate {cost(r)}" for r in tied)
                     + f" ({name(best)} is named first: {why}).")
            if runner_text:
                text += f" These {len(best_rows)} policies are {runner_text}."
        if best["gpus"] > 1:
            fewer = [r for r in live if r["gpus"] < best["gpus"]]
            if fewer:
                alt = max(fewer, key=lambda r: (r["sustained_rate"], -r["gpus"]))
                text += (f" {name(best)} needs {int(best['gpus'])} GPUs; on fewer, the best is {name(alt)}: "
                         f"{rate_of(alt)} requests/s per tenant {cost(alt)}.")
        dead = [name(r) for r in rows if r["sustained_rate"] is None]
        if dead:
            text += (f" Missing the SLO even at the lowest rate ({lowest:.4g} requests/s per tenant): "
                     f"{', '.join(dead)}.")
        out.append(text + _vs_text(data, best, rows))
    n = pd.to_numeric(data.ok["n_requests"], errors="coerce").dropna() if "n_requests" in data.ok else None
    slack = 1 - data.options.slo_target  # the share of a job's requests the target lets miss
    if out and n is not None and len(n) and int(n.max()) * slack < 1 - 1e-9:
        # a 3-request trace swept at 6 rates read "≥ 2 requests/s …, at least 4× the next best" as if measured
        most = int(n.max())
        out[-1] += (f" Each job served at most {most} request{'s' if most != 1 else ''}: one request is "
                    f"{100 / max(most, 1):.3g}% of its SLO attainment, more than the {100 * slack:.3g}% the target "
                    "leaves, so each figure rests on single requests; give each job more (a longer trace or "
                    "duration_s).")
    # "reconfig_fast (1 requests/s per tenant …)" in the default report's verdict: one request/s
    return [re.sub(r"(?<![\d.,])1 requests/s", "1 request/s", t) for t in out]


def _vs_text(data: SweepData, r: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """`` X's mean turnaround is 85% lower than mig's …`` for each baseline in ``rows`` other than ``r``
    (the headline's median per-rate change); empty when there is none."""
    parts = []
    present = {row["policy"] for row in rows}
    for base in data.options.baselines:
        pct = r.get(f"turnaround_pct_vs_{base}")
        if base == r["policy"] or base not in present or pct is None or not np.isfinite(pct):
            continue
        word = "lower" if pct < 0 else "higher"
        amount = pct_text(pct) if abs(pct) >= 99.95 else f"{abs(pct):.3g}"  # not "100% lower" for 99.998 %
        amount = amount.replace("> ", "more than ")
        parts.append(f"{amount}% {word} than {base}'s")
    if not parts:
        return ""
    return (f" At a typical swept rate {r['policy']}'s mean turnaround is " + " and ".join(parts)
            + " (median over rates of the per-rate ratio).")
