"""The policy-comparison report of a sweep: one self-contained, offline HTML file.

``build_report(sweep_dir)`` reads the sweep dir (finished or not) and writes ``report.html`` into it; the
command line ``python -m moesim.report D`` does the same. What the page holds: turnaround (mean, p90), TTFT,
throughput and SLO attainment vs arrival rate with the spread over seeds; the turnaround CDF at one rate;
each policy's memory breakdown; a timeline of a short window; the configuration and headline numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.errors import UserError
from moesim.io import write_text
from moesim.report import figures as F
from moesim.report.data import ReportOptions, SweepData, headline
from moesim.report.page import _esc, data_block, figure_block, fmt, fmt_pct, kv_table, page, table

__all__ = ["ReportOptions", "build_report", "options_from_sweep"]

REPORT_HTML = "report.html"

SECTIONS = [
    ("turnaround", "Turnaround time",
     "Turnaround is a request's time from arrival to its last token (queueing, swaps, prefill and decode). "
     "Each point is the mean over seeds of a run's mean (left) or 90th percentile (right); the bars span the "
     "lowest to the highest seed. Lower is better; a line that bends upward sharply marks the rate at which "
     "the policy saturates and its queue grows for the whole run."),
    ("ttft", "Time to first token",
     "TTFT is arrival to first token: queueing, any non-expert or model swap needed first, and the prefill."),
    ("throughput", "Throughput",
     "Completed requests per minute over [0, max(workload duration, last finish)]. Below saturation every policy "
     "keeps up with the offered load (dotted line); above it, throughput flattens at the policy's capacity."),
    ("slo", "SLO attainment",
     "The share of requests whose TTFT and time per output token are both within the targets."),
    ("cdf", "Turnaround distribution",
     "The share of requests (of all seeds) finished within a given turnaround, at one arrival rate. A curve "
     "further left is faster; a long tail to the right is the queueing behind swaps or slow steps."),
    ("memory", "Memory breakdown",
     "What each policy's instances hold, summed over instances (for MIG: the slices; for dedicated: one GPU "
     "per tenant, so it may exceed one GPU). Resident experts are expert weights on the GPU (shared copies "
     "count once); non-expert sets are attention, norms, router, embeddings and lm_head of the tenants kept "
     "resident; KV cache capacity is what is left for the cache; experts on host stay in host memory and "
     "are copied over the host link when a token routes to them. Hover for the per-instance numbers."),
    ("timeline", "Timeline",
     "A short window of the run at the CDF's rate: each bar is a prefill batch, a run of decode steps or a "
     "swap (loading a tenant's non-expert set or a whole model), per instance; diamonds mark steps that "
     "fetched experts from the host (size grows with the number fetched). Zoom with the mouse; double-click "
     "resets."),
]


def options_from_sweep(root: Path) -> ReportOptions:
    """The report options the sweep ran with (``report`` in its multirun.yaml), else the defaults."""
    p = root / "multirun.yaml"
    if not p.exists():
        return ReportOptions()
    from omegaconf import OmegaConf

    node = OmegaConf.load(p).get("report")
    if node is None:
        return ReportOptions()
    d = OmegaConf.to_container(node, resolve=False)
    return ReportOptions(
        cdf_rate=d.get("cdf_rate"),
        timeline_window_s=float(d.get("timeline_window_s", 30.0)),
        slo_target=float(d.get("slo_target", 0.9)),
        baselines=tuple(d.get("baselines", ("mig", "reconfig"))),
    )


def _job_params(root: Path, job: str) -> dict[str, Any]:
    p = root / job / "summary.json"
    return json.loads(p.read_text()).get("params", {}) if p.exists() else {}


def _params_text(params: dict[str, Any], skip: tuple[str, ...] = ("name",)) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if k not in skip) or "defaults"


def _gpu_notes(ok: pd.DataFrame) -> str:
    """Spec figures the GPU records say are derived (not measured), marked as such."""
    from moesim.specs import GPU_SPECS

    notes = []
    for name in dict.fromkeys(ok["gpu"].tolist()) if len(ok) else []:
        spec = GPU_SPECS.get(str(name))
        derived = getattr(spec, "derived", "") if spec is not None else ""
        if derived:
            notes.append(f"{_esc(name)}: derived, not measured: {_esc(derived)}")
    return f" <span class=\"note\">({'; '.join(notes)})</span>" if notes else ""


def _config_section(data: SweepData) -> str:
    ok, s = data.ok, data.summary
    counts = s["status"].value_counts()

    def vals(col: str) -> str:
        return ", ".join(_esc(v) for v in dict.fromkeys(ok[col].tolist())) if col in ok and len(ok) else "—"

    cost = vals("cost")
    options = [o for o in dict.fromkeys(ok.get("cost_option", pd.Series(dtype=object)).dropna().tolist())
               if o not in ("best", *ok["cost"].tolist())]
    if options:
        cost += f" (preset {', '.join(_esc(o) for o in options)})"
    if len(ok) and ok["cost_derived"].astype(bool).any():
        cost += ' <b>(derived profile: not measured on this GPU)</b>'
    first = str(ok["job"].iloc[0]) if len(ok) else None
    params = _job_params(data.root, first) if first else {}
    rows = [
        ("model", vals("model")),
        ("GPU", vals("gpu") + _gpu_notes(ok)),
        ("workload", vals("workload") + (f" ({_esc(_params_text(params.get('workload', {}), ('name', 'rate')))})"
                                         if params else "")),
        ("tenants", vals("tenants")),
        ("cost model", cost + (f" ({_esc(_params_text(params.get('cost', {})))})" if params else "")),
        ("arrival rates per tenant (req/s)", ", ".join(f"{r:g}" for r in data.rates) or "—"),
        ("seeds", ", ".join(map(str, data.seeds)) or "—"),
        ("SLO", f"TTFT ≤ {fmt(ok['slo_ttft_s'].iloc[0])} s and time per output token ≤ "
                f"{fmt(ok['slo_tpot_s'].iloc[0])} s; a rate is sustained when ≥ "
                f"{100 * data.options.slo_target:g}% of requests meet it" if len(ok) else "—"),
        ("jobs", f"{int(counts.get('ok', 0))} finished, {int(counts.get('failed', 0))} failed, "
                 f"{int(counts.get('incomplete', 0))} incomplete, of {len(s)}"),
    ]
    pol_rows = []
    for ser in data.series:
        job = data.representative_job(ser, None)
        pol_rows.append([_esc(ser), _esc(_params_text(_job_params(data.root, job).get("policy", {})))])
    return ("<h2>Configuration</h2>" + kv_table(rows)
            + "<p class=\"note\">Policy settings:</p>" + table(pd.DataFrame(), ["policy", "parameters"], pol_rows))


def _headline_section(data: SweepData, head: pd.DataFrame) -> str:
    rate = data.chosen_rate
    bases = list(data.options.baselines)
    header = ["policy", f"mean turnaround at {fmt(rate)} req/s (s)"]
    header += [f"turnaround vs {_esc(b)}" for b in bases]
    header += [f"mean TTFT at {fmt(rate)} req/s (s)"] + [f"TTFT vs {_esc(b)}" for b in bases]
    header += ["highest rate within the SLO (req/s per tenant)", "throughput at the highest rate (req/min)"]
    cells = []
    for _, r in head.iterrows():
        row = [_esc(r["series"]), fmt(r["mean_turnaround_s_at_rate"])]
        row += [fmt_pct(r.get(f"turnaround_pct_vs_{b}", float("nan"))) for b in bases]
        row += [fmt(r["mean_ttft_s_at_rate"])] + [fmt_pct(r.get(f"ttft_pct_vs_{b}", float("nan"))) for b in bases]
        sr = r["sustained_rate"]
        sr_text = fmt(sr) if sr is not None and not (isinstance(sr, float) and math.isnan(sr)) else \
            (f"&lt; {fmt(data.rates[0])}" if data.rates else "—")
        row += [sr_text, fmt(r["throughput_rpm_at_max_rate"])]
        cells.append(row)
    note = ("<p class=\"note\">“vs X” is the mean over the swept rates of the relative change of the mean "
            "(over seeds) against policy X at the same rate: −85% means 85% lower (better) on average. "
            "The highest rate within the SLO is the largest swept rate at which this and every lower rate "
            f"keep ≥ {100 * data.options.slo_target:g}% of requests within the SLO.</p>")
    records = json.loads(head.to_json(orient="records"))
    return ("<h2>Headline numbers</h2>" + table(head, header, cells) + note
            + data_block("headline", records))


def _failures_section(data: SweepData) -> str:
    bad = data.summary[data.summary["status"] != "ok"]
    if bad.empty:
        return ""
    cells = [[_esc(r["job"]), _esc(r["status"]), _esc(r.get("overrides", "")),
              _esc(r.get("error", "") if isinstance(r.get("error", ""), str) else "")]
             for _, r in bad.iterrows()]
    return ("<h2>Jobs without results</h2><div class=\"failed\">These jobs are missing from every figure: "
            "failed ones wrote error.json (with the traceback) in their dir; incomplete ones were still "
            "running or were killed.</div>" + table(bad, ["job", "status", "overrides", "error"], cells))


def build_report(sweep_dir: str | Path, *, summary: pd.DataFrame | None = None,
                 options: ReportOptions | None = None, out: str | Path | None = None) -> Path:
    """Write the report of ``sweep_dir`` (default: ``<sweep_dir>/report.html``); its path."""
    from moesim.sweep import collect

    root = Path(sweep_dir)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory; give a sweep dir (the hydra.sweep.dir of a multirun)")
    df = collect(root) if summary is None else summary
    if df.empty:
        raise UserError(f"{root}: no jobs found (no */summary.json, */error.json or */.hydra/); is it a sweep dir?")
    data = SweepData(root, df, options or options_from_sweep(root))
    derived = bool(len(data.ok)) and bool(data.ok["cost_derived"].astype(bool).any())
    parts = [f"<h1>moesim policy comparison</h1><p class=\"lead\">Sweep <code>{_esc(root)}</code>: "
             f"{len(data.series)} policies × {len(data.rates)} arrival rates × {len(data.seeds)} seeds, "
             "simulated (SimPy discrete-event model of the GPU serving several fine-tuned MoE variants).</p>"]
    if derived:
        parts.append("<p class=\"derived\">Step costs come from a <b>derived</b> profile (scaled from another GPU, "
                     "not measured on this one): treat absolute times as estimates.</p>")
    if data.ok.empty:
        parts.append("<p class=\"failed\">No job finished: nothing to plot.</p>")
    else:
        head = headline(data)
        parts.append(_headline_section(data, head))
        parts.append(_config_section(data))
        for name, title, text in SECTIONS:
            fig = F.FIGURES[name](data)
            if derived:
                fig.update_layout(title_text=fig.layout.title.text + " — derived profile")
            parts.append(f"<h2>{_esc(title)}</h2><p class=\"note\">{_esc(text)}</p>" + figure_block(name, fig))
    parts.append(_failures_section(data))
    target = Path(out) if out is not None else root / REPORT_HTML
    write_text(target, page(f"moesim report: {root.name}", "\n".join(parts)))
    return target
