"""The policy-comparison report of a sweep: one self-contained, offline HTML file.

``build_report(sweep_dir)`` reads the sweep dir (finished or not) and writes ``report.html`` into it; the
command line ``python -m moesim.report D`` does the same. What the page holds: turnaround (mean, p90), TTFT,
throughput and SLO attainment vs arrival rate with the spread over seeds; the turnaround CDF at one rate;
each policy's memory breakdown; a timeline of a short window; the configuration and headline numbers.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.errors import UserError
from moesim.io import write_text
from moesim.report import figures as F
from moesim.report.data import SweepData, baseline_series, headline, verdict
from moesim.report.options import ReportOptions, check_options, options_from_sweep
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
     "What each policy's instances hold, summed over instances (for MIG: the slices of one GPU; for dedicated: "
     "one GPU per tenant, so its bar is longer). Resident experts are expert weights on the GPU (shared copies "
     "count once); non-expert sets are attention, norms, router, embeddings and lm_head of the tenants kept "
     "resident; KV cache capacity is what is left for the cache; reserved or unused is the rest of the "
     "instances' memory (e.g. reconfig's staging slot for the next tenant's non-expert set), so the GPU parts "
     "add up to the black mark. Experts in host memory are copied over the host link when a token routes to "
     "them (for swap: the models not loaded at the moment, copied in whole on a swap). All from the job's "
     "instances.json; hover for the per-instance numbers."),
    ("timeline", "Timeline",
     "A short window of the run at the CDF's rate: each bar is a prefill batch, a run of decode steps or a "
     "swap (loading a tenant's non-expert set or a whole model), per instance; diamonds mark steps that "
     "fetched experts from the host (size grows with the number fetched). Zoom with the mouse; double-click "
     "resets."),
]


def _with_cost_note(fig: Any, kinds: str) -> None:
    """Add ``<kinds> cost, not measured`` to a figure's title as a line of its own under the subtitle, in
    the subtitle's small type, and make room for it. Appended to the title it came out in the title's big
    type; appended to the subtitle it made that line long enough to run under plotly's toolbar at 900 px."""
    note = f"<br><span style=\"font-size:12px;color:#8a4b00\"><b>{kinds} cost, not measured</b></span>"
    top = fig.layout.margin.t if fig.layout.margin.t is not None else 80
    height = fig.layout.height or 440
    fig.update_layout(title_text=(fig.layout.title.text or "") + note, margin={"t": top + 16}, height=height + 16)


def _job_params(root: Path, job: str) -> dict[str, Any]:
    """The ``params`` of a job's summary.json ({} when absent or unreadable)."""
    try:
        params = json.loads((root / job / "summary.json").read_text()).get("params", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return params if isinstance(params, dict) else {}


# what an empty policy parameter means (the value resolved at run time is shown when the job recorded it)
EMPTY_MEANS = {"plan": "none (the budget rule)", "layout": "one instance per tenant", "gpu": "the job's gpu",
               "tokens_from": "none (fixed counts)"}


def _params_text(params: dict[str, Any], skip: tuple[str, ...] = ("name",),
                 resolved: dict[str, Any] | None = None) -> str:
    """``k=v, …``; an empty value shows what it resolved to (``resolved``) or what empty means."""
    items = []
    for k, v in params.items():
        if k in skip:
            continue
        if v in ("", None):
            r = (resolved or {}).get(k)
            v = f"{r} (default: {EMPTY_MEANS.get(k, 'none')})" if r not in ("", None) else \
                EMPTY_MEANS.get(k, "none")
        items.append(f"{k}={v}")
    return ", ".join(items) or "defaults"


def _gpu_notes(ok: pd.DataFrame) -> str:
    """Spec figures the GPU records say are derived (not measured), marked as such."""
    from moesim.specs import GPU_SPECS

    notes = []
    # a fleet of several GPU types records them as "h200+a100-80gb"
    for name in dict.fromkeys(n for g in ok["gpu"].tolist() for n in str(g).split("+")) if len(ok) else []:
        spec = GPU_SPECS.get(str(name))
        derived = getattr(spec, "derived", "") if spec is not None else ""
        if derived:
            notes.append(f"{_esc(name)}: derived, not measured: {_esc(derived)}")
    return f" <span class=\"note\">({'; '.join(notes)})</span>" if notes else ""


def _cost_provenance(ok: pd.DataFrame) -> dict[str, str]:
    """``model × GPU`` → where its step costs came from, for each pair whose cost was not measured
    (``cost_provenance`` of summary.json other than ``measured``, or ``cost_derived``)."""
    out: dict[str, str] = {}
    if ok.empty:
        return out
    for _, r in ok.iterrows():
        prov = r.get("cost_provenance")
        prov = str(prov) if isinstance(prov, str) and prov else None
        if prov is None and bool(r.get("cost_derived", False) is True):
            prov = "derived"
        if prov is not None and prov != "measured":
            out.setdefault(f"{r.get('model')} × {r.get('gpu')}", prov)
    return out


def _series_count(data: SweepData) -> str:
    """``7 policies``, or ``4 series (2 policies × other swept settings)`` when a series is more than a policy
    (a sweep over fleet.gpus or gpu: "4 policies" counted 2 policies on 2 fleets)."""
    n_pol = int(data.ok["policy"].nunique()) if len(data.ok) else len(data.series)
    if n_pol == len(data.series):
        return f"{n_pol} polic{'ies' if n_pol != 1 else 'y'}"
    return f"{len(data.series)} series ({n_pol} polic{'ies' if n_pol != 1 else 'y'} × other swept settings)"


def _fleet_rows(data: SweepData) -> list[tuple[str, str]]:
    """Rows for the fleet, placement and router of the jobs (from each series' summary.json ``params``):
    a fleet sweep did not say which placement or router it ran."""
    gpus = pd.to_numeric(data.ok.get("gpus", pd.Series(dtype=float)), errors="coerce")
    if not (gpus > 1).any():  # single-GPU jobs: the fleet, placement and router are the trivial ones
        return []
    seen: dict[str, dict[str, None]] = {"fleet": {}, "placement": {}, "router": {}}
    for ser in data.series:
        job = data.representative_job(ser, None)
        params = _job_params(data.root, str(job)) if job is not None else {}
        for g, texts in seen.items():
            p = params.get(g)
            if isinstance(p, dict) and p:
                texts[f"{p.get('name', '?')} ({_params_text(p)})"] = None
    return [(g, "; ".join(_esc(t) for t in texts)) for g, texts in seen.items() if texts]


def _config_section(data: SweepData) -> str:
    ok, s = data.ok, data.summary
    counts = s["status"].value_counts()

    def vals(col: str) -> str:
        if col not in ok or not len(ok):
            return "—"
        values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in ok[col].tolist()]
        return ", ".join(_esc(v) for v in dict.fromkeys(values))

    cost = vals("cost")
    options = [o for o in dict.fromkeys(ok.get("cost_option", pd.Series(dtype=object)).dropna().tolist())
               if o not in ("best", *ok["cost"].tolist())]
    if options:
        cost += f" (preset {', '.join(_esc(o) for o in options)})"
    prov = _cost_provenance(ok)
    if prov:
        cost += " <b>(" + "; ".join(f"{_esc(k)}: {_esc(v)}, not measured" for k, v in prov.items()) + ")</b>"
    all_params = [_job_params(data.root, str(j)) for j in ok["job"]] if len(ok) else []

    def distinct(group: str, skip: tuple[str, ...] = ("name",)) -> str:
        """The group's parameters as `` (k=v, …)``; every distinct setting when jobs differ (e.g. one per GPU)."""
        texts = {f"{p[group].get('name', '?')}: {_params_text(p[group], skip)}": _params_text(p[group], skip)
                 for p in all_params if isinstance(p.get(group), dict) and _params_text(p[group], skip)}
        if len(texts) > 1:  # settings differ between jobs: name each
            return f" ({' | '.join(_esc(t) for t in texts)})"
        return f" ({_esc(next(iter(texts.values())))})" if texts else ""

    slo = data.options
    slo_note = " (recomputed from requests.parquet for this report)" if slo.slo_override else ""
    rows = [
        ("model", vals("model")),
        ("GPU", vals("gpu") + _gpu_notes(ok)),
        ("workload", vals("workload") + distinct("workload", ("name", "rate"))),
        ("tenants", vals("tenants")),
        ("cost model", cost + distinct("cost")),
        *_fleet_rows(data),
        ("arrival rates per tenant (req/s)", ", ".join(f"{r:.4g}" for r in data.rates) or "—"),
        ("seeds", ", ".join(map(str, data.seeds)) or "—"),
        ("SLO", f"TTFT ≤ {fmt(ok['slo_ttft_s'].iloc[0])} s and time per output token ≤ "
                f"{fmt(ok['slo_tpot_s'].iloc[0])} s{slo_note}; a rate is sustained when ≥ "
                f"{100 * slo.slo_target:g}% of requests meet it" if len(ok) else "—"),
        ("jobs", f"{int(counts.get('ok', 0))} finished, {int(counts.get('failed', 0))} failed, "
                 f"{int(counts.get('incomplete', 0))} incomplete, {int(counts.get('unreadable', 0))} unreadable, "
                 f"of {len(s)}"),
    ]
    pol_rows = []
    for ser in data.series:
        job = data.representative_job(ser, None)
        resolved: dict[str, Any] = {}
        if job is not None and data.readable(job, "instances"):
            for inst in data.instances(job):
                for k, v in inst.items():
                    resolved.setdefault(k, v)
        n_gpus = data.gpus(ser)
        pol_rows.append([_esc(ser), str(n_gpus),
                         _esc(_params_text(_job_params(data.root, job).get("policy", {}) if job else {},
                                           resolved=resolved))])
    return ("<h2>Configuration</h2>" + kv_table(rows)
            + "<p class=\"note\">Policy settings:</p>"
            + "<div class=\"wide\">" + table(pd.DataFrame(), ["policy", "GPUs", "parameters"], pol_rows, "params")
            + "</div>")


def _ratio_title(ratios: dict[float, float]) -> str:
    """The per-rate changes behind a “vs” cell (its tooltip)."""
    return "per rate: " + ", ".join(f"{r:.4g} req/s: {100 * (v - 1):+.1f}%" for r, v in ratios.items()) \
        if ratios else ""


def _rejection_reasons(data: SweepData, jobs: pd.Series, shown: int = 3) -> str:
    """Why the requests of ``jobs`` were refused, from their requests.parquet ``rejected`` column: the most
    common reasons with their counts over all of them (the banner said "they could not fit an instance" also
    when a placement put a tenant on no GPU); the generic reason when no file says."""
    import collections
    import re

    counts: collections.Counter[str] = collections.Counter()
    example: dict[str, str] = {}  # reasons alike but for their numbers (context 40025 > …, context 40100 > …)
    for job in jobs:
        try:
            col = pd.read_parquet(data.root / job / "requests.parquet", columns=["rejected"])["rejected"]
        except Exception:
            continue
        for r in col:
            if isinstance(r, str) and r:
                key = re.sub(r"\d[\d.,]*", "#", r)
                counts[key] += 1
                example.setdefault(key, r)
    if not counts:
        return "they could not fit an instance"
    top = counts.most_common(shown)
    rest = sum(counts.values()) - sum(n for _, n in top)
    text = "; ".join(f"{example[k]}{' and alike' if '#' in k and n > 1 else ''}: {n:,}" for k, n in top)
    return "reasons: " + text + (f"; {rest:,} for other reasons" if rest else "")


def _throughput_cell(r: pd.Series) -> str:
    """The headline's throughput at the top rate; a dash (hover: why) when its jobs served too few requests
    for one (``moesim.metrics.MIN_THROUGHPUT_REQUESTS``, as the one-line summaries)."""
    from moesim.metrics import MIN_THROUGHPUT_REQUESTS

    served = r.get("served_at_max_rate", float("nan"))
    if served is not None and math.isfinite(served) and served < MIN_THROUGHPUT_REQUESTS:
        return (f'<span title="{served:.3g} served requests per job: too few for a throughput figure (fewer than '
                f'{MIN_THROUGHPUT_REQUESTS})">—</span>')
    return fmt(r["throughput_rpm_at_max_rate"])


def _headline_section(data: SweepData, head: pd.DataFrame) -> str:
    rate = data.chosen_rate
    # baselines the sweep ran: a sweep without mig had two columns of "—" under "vs mig"
    ran = set(data.ok["policy"].astype(str)) if "policy" in data.ok else set()
    bases = [b for b in data.options.baselines if b in ran]
    at = ("the rates " + ", ".join(f"{r:.4g}" for r in data.options.compare_rates) + " req/s"
          if data.options.compare_rates else "the swept rates")
    header = ["policy", "GPUs", f"mean turn&shy;around (s) at {fmt(rate)} req/s"]
    header += [f"turn&shy;around vs {_esc(b)}" for b in bases]
    header += [f"mean TTFT (s) at {fmt(rate)} req/s"] + [f"TTFT vs {_esc(b)}" for b in bases]
    header += ["highest rate within the SLO (req/s per tenant)", "the same per GPU (req/s)",
               "through&shy;put at the top rate (req/min)"]
    show_rejected = "rejected" in head and bool((pd.to_numeric(head["rejected"], errors="coerce") > 0).any())
    if show_rejected:
        header += ["rejected requests (all jobs)"]
    lowest = data.rates[0] if data.rates else None
    cells = []
    for _, r in head.iterrows():
        row = [_esc(r["series"]), str(int(r["gpus"])), fmt(r["mean_turnaround_s_at_rate"])]
        for short in ("turnaround", "ttft"):
            if short == "ttft":
                row += [fmt(r["mean_ttft_s_at_rate"])]
            for b in bases:
                if r["policy"] == b and baseline_series(data, r["series"], b) == r["series"]:
                    row += ['<span class="baseline">baseline</span>']  # itself: "+0.0%" read as a measured tie
                    continue
                title = _esc(_ratio_title(r.get(f"{short}_ratios_vs_{b}") or {}))
                row += [f'<span title="{title}">{fmt_pct(r.get(f"{short}_pct_vs_{b}", float("nan")))}</span>']
        sr = r["sustained_rate"]
        if sr is None or (isinstance(sr, float) and math.isnan(sr)):
            sr_text = f"&lt; {fmt(lowest)}" if lowest is not None else "—"
            per_text = "—"
        else:
            ge = "≥ " if r["sustained_at_top"] else ""
            sr_text = ge + fmt(float(sr))
            per_text = ge + fmt(float(r["sustained_rps_per_gpu"]))
        row += [sr_text, per_text, _throughput_cell(r)]
        if show_rejected:
            row += [fmt(int(r["rejected"])) if pd.notna(r["rejected"]) else "—"]
        cells.append(row)
    note = (f"<p class=\"note\">“vs X” is the median over {at} of the per-rate ratio of the means (over seeds) "
            "against policy X at the same rate, as a change: −85% means 85% lower (better) at a typical rate. "
            "A median of per-rate ratios, so the few rates where a policy saturates do not dominate it; hover a "
            "cell for the change at each rate. The highest rate within the SLO is the largest swept rate at "
            f"which this and every lower rate keep ≥ {100 * data.options.slo_target:g}% of requests within the "
            "SLO; “≥” marks a policy that still meets it at the sweep's top rate (its limit lies higher), “&lt;” "
            "one that misses it at the lowest rate. Per GPU: that rate × tenants ÷ the GPUs the policy "
            "occupies.</p>")
    records = [{k: _plain(v) for k, v in r.items()} for r in head.to_dict("records")]
    return ("<h2>Headline numbers</h2><div class=\"wide\">" + table(head, header, cells) + "</div>" + note
            + data_block("headline", records))


def _plain(v: Any) -> Any:
    """A JSON-ready value at full precision (NaN → None; dict keys as text)."""
    if isinstance(v, dict):
        return {f"{k:g}" if isinstance(k, float) else str(k): _plain(x) for k, x in v.items()}
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _verdict_section(data: SweepData, head: pd.DataFrame) -> str:
    lines = verdict(data, head)
    if not lines:
        return ""
    if len(lines) > 1:  # one paragraph per GPU/model/workload: run together they were a wall of text
        body = (_esc(lines[0]) + "<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in lines[1:]) + "</ul>")
    else:
        body = _esc(lines[0])
    return ("<div class=\"verdict\" id=\"verdict\"><b>Verdict.</b> " + body
            + "</div>" + data_block("verdict", lines))


def _failures_section(data: SweepData) -> str:
    bad = data.summary[data.summary["status"] != "ok"]
    if bad.empty:
        return ""

    def text(v: Any) -> str:
        return _esc(v) if isinstance(v, str) else ""

    cells = [[_esc(r["job"]), _esc(r["status"]), text(r.get("overrides", "")), text(r.get("error", ""))]
             for _, r in bad.iterrows()]
    return ("<h2>Jobs without results</h2><div class=\"failed\">These jobs are missing from every figure: "
            "failed ones wrote error.json (with the traceback) in their dir; incomplete ones were still "
            "running or were killed; unreadable ones have a file that is empty, truncated, corrupt or missing "
            "(the reason is listed).</div><div class=\"wide\">"
            + table(bad, ["job", "status", "overrides", "error"], cells, "text") + "</div>")


def _print_line(line: str) -> None:
    print(f"moesim: {line}", file=sys.stderr)


def _check_rates_swept(data: SweepData) -> None:
    """``compare_rates`` and ``cdf_rate`` must be swept rates: a rate no job ran would silently empty every
    "vs" column (or move the CDF to another rate)."""
    rates = data.rates
    if not rates:
        return
    valid = ", ".join(f"{r:g}" for r in rates)
    for name, want in (("compare_rates", data.options.compare_rates),
                       ("cdf_rate", () if data.options.cdf_rate is None else (data.options.cdf_rate,))):
        missing = [w for w in want if not any(math.isclose(w, r, rel_tol=1e-6) for r in rates)]
        if missing:
            raise UserError(f"{name}={','.join(f'{w:g}' for w in missing)}: not a swept rate of "
                            f"{data.root}; valid: {valid} (requests/s per tenant)")


def build_report(sweep_dir: str | Path, *, summary: pd.DataFrame | None = None,
                 options: ReportOptions | None = None, out: str | Path | None = None,
                 warn: Callable[[str], None] | None = _print_line, notes: list[str] | None = None,
                 given: frozenset[str] | None = None) -> Path:
    """Write the report of ``sweep_dir`` (default: ``<sweep_dir>/report.html``); its path.

    A job whose files cannot be read is listed as unreadable (in the report, and one ``warn`` line each)
    and the report is built from the others. ``given``: the option keys the user gave (a ``cdf_rate`` or
    ``compare_rates`` among them that names no swept rate is refused; one from the sweep's config falls back
    to the default, with a note); default: all when ``options`` is passed, none when read from the sweep.
    """
    from moesim.sweep import collect

    root = Path(sweep_dir)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory; give a sweep dir (the hydra.sweep.dir of a multirun)")
    df = collect(root) if summary is None else summary
    if df.empty:
        raise UserError(f"{root}: no jobs found (no */summary.json, */error.json or */.hydra/); is it a sweep dir?")
    notes = list(notes or [])
    if given is None:  # options passed in: all of them are the caller's; read from the sweep: none
        given = frozenset() if options is None else frozenset({"cdf_rate", "compare_rates"})
    if options is None:
        options, note = options_from_sweep(root)
        if note:
            notes.append(note)
    data = SweepData(root, df, check_options(options))
    for _ in range(2):
        try:
            _check_rates_swept(data)
            break
        except UserError as exc:
            key = str(exc).split("=", 1)[0]
            if key in given:  # given on the report's command line: refuse
                raise
            # the sweep's own report.cdf_rate names a rate it did not run: the report is still written (a
            # sweep's results are never left without one), with the default and a note saying so
            import dataclasses

            notes.append(f"report.{exc}; this report uses the default instead")
            data = SweepData(root, df, check_options(dataclasses.replace(
                data.options, **({"cdf_rate": None} if key == "cdf_rate" else {"compare_rates": ()}))))
    parts = [f"<h1>moesim policy comparison</h1><p class=\"lead\">Sweep <code>{_esc(root)}</code>: "
             f"{_series_count(data)} × {len(data.rates)} arrival rate{'s' if len(data.rates) != 1 else ''} × {len(data.seeds)} seed{'s' if len(data.seeds) != 1 else ''}, "
             "simulated (SimPy discrete-event model of the GPU serving several fine-tuned MoE variants).</p>"]
    marker = len(parts)
    prov = _cost_provenance(data.ok)
    if prov:
        parts.append("<p class=\"derived\">Step costs were <b>not measured</b> for "
                     + "; ".join(f"{_esc(k)} (<b>{_esc(v)}</b>)" for k, v in prov.items())
                     + ": treat absolute times as estimates.</p>")
    if len(data.ok) and "rejected" in data.ok:
        n_rej = pd.to_numeric(data.ok["rejected"], errors="coerce").fillna(0)
        if n_rej.sum() > 0:
            why = _rejection_reasons(data, data.ok.loc[n_rej.to_numpy() > 0, "job"].astype(str))
            parts.append(f"<p class=\"warn\">{int(n_rej.sum())} requests were <b>rejected</b> ({_esc(why)}) in "
                         f"{int((n_rej > 0).sum())} jobs: they count as missing the SLO and "
                         "are absent from the turnaround and TTFT figures; see the headline table.</p>")
    if data.ok.empty:
        parts.append("<p class=\"failed\">No job finished: nothing to plot.</p>")
    else:
        head = headline(data)
        parts.append(_headline_section(data, head))
        parts.append(_config_section(data))
        for name, title, text in SECTIONS:
            fig = F.FIGURES[name](data)
            if name in ("turnaround", "ttft", "throughput", "slo", "cdf"):  # the figures with a policy legend
                F.legend_below(fig, list(data.series))
            if prov:
                kinds = ", ".join(dict.fromkeys(prov.values()))
                _with_cost_note(fig, kinds)
            parts.append(f"<h2>{_esc(title)}</h2><p class=\"note\">{_esc(text)}</p>" + figure_block(name, fig))
        parts.insert(marker, _verdict_section(data, head))
    parts.append(_failures_section(data))
    notes += data.notes
    bad = data.summary[data.summary["status"] == "unreadable"]
    if notes:
        parts.insert(marker, "<div class=\"failed\">" + "<br>".join(_esc(n) for n in notes) + "</div>")
    target = Path(out) if out is not None else root / REPORT_HTML
    write_text(target, page(f"moesim report: {root.name}", "\n".join(parts)))
    if warn is not None:
        for _, r in bad.iterrows():
            warn(f"job {r['job']} unreadable, left out of the report: {r['error']}")
        for n in notes:
            warn(n)
    return target
