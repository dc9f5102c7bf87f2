"""Plotly figures of a sweep (one function per figure; each returns a ``plotly.graph_objects.Figure``).

Every number drawn is a plain list (no binary-encoded arrays) so the report's embedded JSON can be read
back and checked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from moesim.report.data import SweepData, ecdf

GB = 1e9
PALETTE = qualitative.D3 + qualitative.Set2
KIND_COLORS = {"prefill": "#1f77b4", "decode": "#2ca02c", "swap": "#d62728"}
FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 13}


DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "cross", "triangle-down", "star", "pentagon",
           "hexagon")


def colors(data: SweepData) -> dict[str, str]:
    """A stable colour per series."""
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(data.series)}


def styles(data: SweepData) -> dict[str, tuple[str, str]]:
    """A distinct (dash, marker symbol) per series, so lines that coincide stay visible (up to 60 series)."""
    out = {}
    for i, s in enumerate(data.series):
        out[s] = (DASHES[i % len(DASHES)], SYMBOLS[(i + i // len(DASHES)) % len(SYMBOLS)])
    return out


def _layout(fig: go.Figure, title: str, height: int = 440, subtitle: str = "") -> go.Figure:
    """Common layout. The title is short (it must clear plotly's toolbar, top right, at 900 px width); the
    details go in a smaller second line."""
    text = title + (f"<br><span style=\"font-size:12px;color:#555\">{subtitle}</span>" if subtitle else "")
    fig.update_layout(
        title={"text": text, "x": 0, "xref": "paper", "xanchor": "left", "y": 1 - (30 if subtitle else 12) / height,
               "yref": "container", "yanchor": "top"},
        height=height,
        font=FONT,
        template="plotly_white",
        legend={"title": {"text": "policy"}, "itemclick": "toggle", "itemdoubleclick": "toggleothers"},
        margin={"l": 70, "r": 20, "t": 100 if subtitle else 80, "b": 60},
        hovermode="closest",
    )
    return fig


#: series names longer than this (characters) put the policy legend under the plot: beside it, a legend of
#: "multiplex · gpu=h200-nvl-custom-node-a" left the two panels of a figure a third of a 900 px page each,
#: and their axis titles ran into each other
LONG_SERIES_NAME = 26


def legend_below(fig: go.Figure, names: list[str]) -> go.Figure:
    """Put the legend in rows under the plot (plotly wraps them to the width) when a name is long."""
    if not names or max(len(n) for n in names) <= LONG_SERIES_NAME:
        return fig
    rows = 1 + len(names) // 2  # about two long items a row at 900 px
    fig.update_layout(legend={"orientation": "h", "x": 0, "xanchor": "left", "y": -0.22, "yanchor": "top",
                              "yref": "paper"},
                      height=int(fig.layout.height or 440) + 24 * rows,
                      margin={"b": 80 + 24 * rows})
    return fig


def _lines(fig: go.Figure, data: SweepData, metric: str, *, row: int | None = None, col: int | None = None,
           scale: float = 1.0, show_legend: bool = True, suffix: str = "") -> None:
    """One line per series: the mean over seeds, error bars from the min to the max over seeds; each
    series its own colour, dash and marker."""
    agg = data.by_rate(metric)
    cmap = colors(data)
    style = styles(data)
    for s in data.series:
        a = agg[agg["series"] == s]
        y = (a["mean"] * scale).tolist()
        trace = go.Scatter(
            x=a["rate"].tolist(),
            y=y,
            mode="lines+markers",
            name=s + suffix,
            legendgroup=s,
            showlegend=show_legend,
            line={"color": cmap[s], "dash": style[s][0], "width": 2},
            marker={"symbol": style[s][1], "size": 8, "color": cmap[s], "line": {"width": 1, "color": "white"}},
            error_y={"type": "data", "symmetric": False,
                     "array": (a["max"] * scale - a["mean"] * scale).tolist(),
                     "arrayminus": (a["mean"] * scale - a["min"] * scale).tolist(),
                     "thickness": 1, "width": 3},
            customdata=np.stack([a["min"] * scale, a["max"] * scale, a["count"]], axis=-1).tolist(),
            hovertemplate=(f"<b>{s}</b><br>rate %{{x}} req/s per tenant<br>mean %{{y:.4g}}"
                           "<br>seeds: min %{customdata[0]:.4g}, max %{customdata[1]:.4g} "
                           "(n=%{customdata[2]})<extra></extra>"),
            meta={"metric": metric, "series": s, "scale": scale},
        )
        if row is None:
            fig.add_trace(trace)
        else:
            fig.add_trace(trace, row=row, col=col)


def _rate_axis(fig: go.Figure, data: SweepData, **kw: Any) -> None:
    """Arrival-rate x axis: log scale for wide ranges, ticks at the swept rates (up to 12 of them)."""
    rates = [r for r in data.rates if r > 0]
    if not rates and data.rates:  # replays with no arrival rate (one instant): the axis read −1 … 1
        fig.update_xaxes(title_text="arrival rate per tenant (requests/s)", tickvals=[0], range=[-1, 1],
                         ticktext=["none (all requests at one instant)"], **kw)
        return
    log = len(rates) >= 3 and rates[-1] / rates[0] >= 8
    ticks = {"tickvals": rates, "ticktext": [f"{r:.4g}" for r in rates]} if 0 < len(rates) <= 12 else {}
    if not log:  # one swept rate: plotly centred it in about [r - 1, r + 1] and drew the line of rate 0 beside it
        ticks |= {"zeroline": False}
        if len(rates) == 1:
            ticks |= {"range": [0.0, 2.0 * rates[0]]}
    fig.update_xaxes(title_text="arrival rate per tenant (requests/s)", type="log" if log else "linear",
                     **ticks, **kw)


def log_ticks(values: np.ndarray) -> dict[str, Any]:
    """Tick settings of a log axis over ``values``: labels on 1-2-5 or on decades, never on every digit.

    Plotly's automatic log ticks label each minor digit once a range spans about one decade ("4 5 6 7 8 9 1 2"),
    which crowds the axis. Over more than two decades only the powers of ten are labelled; over more than half
    a decade, 1, 2 and 5 of each, written out (plotly's ``dtick="D2"`` wrote 0.5 as a small "5" left of "1",
    and 20 as "2" right of "10"); narrower ranges too, over a decade either side (plotly pads a log axis of a
    few close points to about two decades and labelled each digit).
    """
    v = np.asarray(values, float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return {}
    lo, hi = float(v.min()), float(v.max())
    decades = float(np.log10(hi / lo))
    if decades > 2:
        return {"dtick": 1}
    if decades <= 0.5:  # a few close values (a one-job report): plotly pads the axis to about two decades
        lo, hi, decades = lo / 10, hi * 10, 2.0  # and labelled every digit of them, one over the other
    if decades > 0.5:
        ticks = [float(f"{m * 10.0 ** e:.12g}") for e in range(int(np.floor(np.log10(lo))) - 1,
                                                              int(np.ceil(np.log10(hi))) + 1)
                 for m in (1, 2, 5) if lo / 1.2 <= m * 10.0 ** e <= hi * 1.2]
        return {"tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks]}
    return {}


def _log_y(fig: go.Figure, data: SweepData, metrics: tuple[str, ...], title: str) -> None:
    """Log y axis with uncrowded ticks (:func:`log_ticks`)."""
    fig.update_yaxes(type="log", **log_ticks(data.ok[list(metrics)].to_numpy(float).ravel()))
    fig.update_yaxes(title_text=title, row=1, col=1)  # the right panel shares the left one's y title


def turnaround(data: SweepData) -> go.Figure:
    """Mean and p90 turnaround (finish − arrival) vs rate."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("mean turnaround", "p90 turnaround"),
                        horizontal_spacing=0.08)
    _lines(fig, data, "mean_turnaround_s", row=1, col=1)
    _lines(fig, data, "p90_turnaround_s", row=1, col=2, show_legend=False)
    _rate_axis(fig, data)
    _log_y(fig, data, ("mean_turnaround_s", "p90_turnaround_s"), "turnaround (s, log scale)")
    return _layout(fig, "Turnaround time vs arrival rate", subtitle="mean over seeds; bars: min–max over seeds")


def ttft(data: SweepData) -> go.Figure:
    """Mean and p90 time to first token vs rate."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("mean TTFT", "p90 TTFT"), horizontal_spacing=0.08)
    _lines(fig, data, "mean_ttft_s", row=1, col=1)
    _lines(fig, data, "p90_ttft_s", row=1, col=2, show_legend=False)
    _rate_axis(fig, data)
    _log_y(fig, data, ("mean_ttft_s", "p90_ttft_s"), "time to first token (s, log scale)")
    return _layout(fig, "Time to first token vs arrival rate", subtitle="mean over seeds; bars: min–max over seeds")


def throughput(data: SweepData) -> go.Figure:
    """Completed requests per minute vs rate, with the offered load for reference."""
    fig = go.Figure()
    _lines(fig, data, "throughput_rpm")
    tenants = data.ok.groupby("rate")["tenants"].max()
    rates = [r for r in data.rates if r in tenants.index]
    # one swept rate: a line of one point draws nothing, and the legend named an invisible line
    fig.add_trace(go.Scatter(x=rates, y=[60.0 * r * float(tenants[r]) for r in rates],
                             mode="lines" if len(rates) > 1 else "markers", marker={"symbol": "line-ew-open",
                                                                                     "size": 24, "color": "#888"},
                             name="offered load (rate × tenants)", line={"color": "#888", "dash": "dot"},
                             hovertemplate="offered %{y:.4g} req/min<extra></extra>",
                             meta={"metric": "offered_rpm"}))
    _rate_axis(fig, data)
    fig.update_yaxes(title_text="throughput (completed requests/min)")
    return _layout(fig, "Throughput vs arrival rate", subtitle="requests finished per minute of the run")


def slo(data: SweepData) -> go.Figure:
    """Share of requests meeting both SLO targets vs rate."""
    fig = go.Figure()
    _lines(fig, data, "slo_attainment", scale=100.0)
    target = 100.0 * data.options.slo_target
    fig.add_hline(y=target, line={"color": "#888", "dash": "dot"},
                  annotation_text=f"target {target:.0f}%", annotation_position="bottom right")
    _rate_axis(fig, data)
    fig.update_yaxes(title_text="requests within the SLO (%)", range=[-2, 102])
    ttft_s = data.ok["slo_ttft_s"].iloc[0] if len(data.ok) else float("nan")
    tpot_s = data.ok["slo_tpot_s"].iloc[0] if len(data.ok) else float("nan")
    return _layout(fig, "SLO attainment vs arrival rate",
                   subtitle=f"TTFT ≤ {ttft_s:g} s and time per output token ≤ {tpot_s:g} s")


def cdf(data: SweepData) -> go.Figure:
    """CDF of per-request turnaround at the chosen rate, requests of all seeds pooled."""
    rate = data.chosen_rate
    fig = go.Figure()
    cmap = colors(data)
    style = styles(data)
    pooled: list[np.ndarray] = []
    for s in data.series:
        jobs = data.jobs_at(rate) if rate is not None else data.ok.iloc[0:0]
        jobs = jobs[jobs["series"] == s]
        if jobs.empty:
            continue
        readable = [j for j in jobs["job"].astype(str) if data.readable(j, "requests")]
        if not readable:
            continue
        jobs = jobs[jobs["job"].astype(str).isin(readable)]
        values = np.concatenate([data.requests(j)["turnaround_s"].to_numpy(float) for j in readable])
        x, y = ecdf(values)
        pooled.append(values)
        fig.add_trace(go.Scatter(
            x=x.tolist(), y=y.tolist(), mode="lines", name=s, line={"color": cmap[s], "shape": "hv", "dash": style[s][0], "width": 2},
            hovertemplate=f"<b>{s}</b><br>%{{y:.1%}} of requests within %{{x:.4g}} s<extra></extra>",
            meta={"series": s, "rate": rate, "jobs": jobs["job"].tolist(), "n_requests": len(values)},
        ))
    fig.update_xaxes(title_text="turnaround (s, log scale)", type="log",
                     **(log_ticks(np.concatenate(pooled)) if pooled else {}))
    v = np.concatenate(pooled) if pooled else np.array([])
    v = v[np.isfinite(v) & (v > 0)]
    if v.size and np.log10(v.max() / v.min()) > 0.5:
        # plotly fits lines tightly: the fastest series' first step (often most of its requests, e.g. 70 % at
        # the minimum turnaround) sat on the axis line, and its curve seemed to start in mid-air at the edge
        lo, hi = float(np.log10(v.min())), float(np.log10(v.max()))
        pad = 0.03 * (hi - lo)
        fig.update_xaxes(range=[lo - pad, hi + pad])
    fig.update_yaxes(title_text="share of requests finished within x", range=[0, 1.02], tickformat=".0%")
    return _layout(fig, "Turnaround distribution",
                   subtitle=f"at {rate:.4g} requests/s per tenant, all seeds pooled; share of all requests"
                   if rate is not None else "")


MEMORY_PARTS = (
    ("resident_expert_bytes", "resident experts (GPU)", "#1f77b4"),
    ("nonexpert_bytes", "non-expert sets (GPU)", "#ff7f0e"),
    ("kv_capacity_bytes", "KV cache capacity (GPU)", "#2ca02c"),
    ("other_bytes", "reserved or unused (GPU)", "#c7c7c7"),
)


def memory_parts(inst: dict[str, Any]) -> dict[str, float]:
    """One instance's device memory by use (bytes); ``other_bytes`` is what the three uses leave of the
    instance's memory (a staging slot reserved for swaps, headroom), so the parts add up to
    ``memory_bytes`` when nothing is over-committed."""
    parts = {k: float(inst.get(k, 0) or 0) for k, _, _ in MEMORY_PARTS[:3]}
    parts["other_bytes"] = max(0.0, float(inst.get("memory_bytes", 0) or 0) - sum(parts.values()))
    return parts


def memory(data: SweepData) -> go.Figure:
    """Per series (a horizontal bar each): GPU memory by use, summed over its instances, and expert bytes
    kept in host memory. Every bar's ``x`` is in GB (10⁹ bytes), ``y`` the series (with its GPU count
    when more than one)."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.72, 0.28], horizontal_spacing=0.04, shared_yaxes=True,
                        subplot_titles=("GPU memory by use", "experts in<br>host memory"))  # the narrow panel
    names, inst, jobs = [], [], []
    for s in data.series:
        job = data.representative_job(s, data.chosen_rate, "instances")
        if job is not None:
            g = data.gpus(s)
            names.append(s if g == 1 else f"{s} ({g} GPUs)")
            inst.append(data.instances(job))
            jobs.append(job)

    def detail(rows: list[dict[str, Any]], key: str) -> str:
        return "<br>".join(f"{r['name']} ({r['profile']}): {memory_parts(r).get(key, r.get(key, 0)) / GB:.2f} GB"
                           for r in rows)

    for key, label, color in MEMORY_PARTS:
        fig.add_trace(go.Bar(
            y=names, x=[sum(memory_parts(r)[key] for r in rows) / GB for rows in inst], name=label,
            orientation="h", marker_color=color, legendgroup=key, text=[detail(rows, key) for rows in inst],
            textposition="none", hovertemplate=f"<b>%{{y}}</b><br>{label}: %{{x:.2f}} GB<br>%{{text}}<extra></extra>",
            meta={"key": key, "jobs": jobs},
        ), row=1, col=1)
    fig.add_trace(go.Bar(
        y=names, x=[sum(r.get("host_expert_bytes", 0) for r in rows) / GB for rows in inst], orientation="h",
        name="experts in host memory", marker_color="#9467bd", legendgroup="host",
        text=[detail(rows, "host_expert_bytes") for rows in inst], textposition="none",
        hovertemplate="<b>%{y}</b><br>experts in host memory: %{x:.2f} GB<br>%{text}<extra></extra>",
        meta={"key": "host_expert_bytes", "jobs": jobs},
    ), row=1, col=2)
    caps = [sum(r.get("memory_bytes", 0) for r in rows) / GB for rows in inst]
    fig.add_trace(go.Scatter(
        y=names, x=caps, mode="markers", name="device memory of the instances",
        marker={"symbol": "line-ns-open", "size": 26, "color": "#333", "line": {"width": 2}},
        hovertemplate="<b>%{y}</b><br>device memory: %{x:.2f} GB<extra></extra>",
        meta={"key": "memory_bytes", "jobs": jobs},
    ), row=1, col=1)
    fig.update_layout(barmode="stack", bargap=0.3)
    fig.update_xaxes(title_text="GB (10⁹ bytes)")
    fig.update_yaxes(autorange="reversed", automargin=True)
    host = [t for t in fig.data if (t.meta or {}).get("key") == "host_expert_bytes"]
    if host and not any(x > 0 for x in host[0].x):  # nothing on the host: 0 … 1 GB, not plotly's −1 … 1
        fig.update_xaxes(range=[0, 1], row=1, col=2)
    # tall enough for the legend too (with two series it was cut, behind a scroll bar)
    n_legend = sum(1 for t in fig.data if t.showlegend is not False)
    fig = _layout(fig, "Memory by use", height=max(200 + 34 * max(1, len(names)), 230 + 26 * n_legend),
                  subtitle="what each policy keeps on its GPU(s) and in host memory")
    fig.update_layout(legend={"title": {"text": "memory use"}}, margin={"l": 20})
    # long series names (the y labels) push the plot, and a title anchored to it, right under the toolbar:
    # anchor the title to the figure's left edge instead
    fig.update_layout(title={"xref": "container", "x": 0.01})
    return fig


def _natural(name: str) -> tuple[Any, ...]:
    """Sort key reading digit runs as numbers: gpu2 < gpu10, gpu1/mig0 < gpu1/mig1 < gpu2/mig0."""
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def timeline(data: SweepData, max_segments: int = 3000) -> go.Figure:
    """Per series (a row each) and instance: prefill/decode batches and swaps over a short window, with
    the expert fetches of each segment as markers (size ~ fetches)."""
    rate = data.chosen_rate
    window = data.options.timeline_window_s
    rows = [(s, data.representative_job(s, rate, "requests", "segments")) for s in data.series]
    rows = [(s, j) for s, j in rows if j is not None]
    n = max(1, len(rows))
    fig = make_subplots(rows=n, cols=1, shared_xaxes=True, vertical_spacing=min(0.04, 0.3 / n),
                        subplot_titles=[f"{s} (job {j})" for s, j in rows])
    t0 = min((float(data.requests(j)["arrival_s"].min()) for _, j in rows), default=0.0)
    t1 = t0 + window
    shown: set[str] = set()
    for i, (s, j) in enumerate(rows, start=1):
        seg = data.segments(j).copy()
        # a fleet's whole-GPU instance is "gpu1/gpu0" (GPU 1's instance gpu0): show it as gpu1
        seg["instance"] = seg["instance"].astype(str).str.replace(r"^(gpu\d+)/gpu0$", r"\1", regex=True)
        # instances in name order (gpu0 above gpu1, mig0 above mig1, gpu2 above gpu10), every one of the
        # run's, also one idle in the window; plotly's order was the first segment's in the window
        order = sorted(seg["instance"].astype(str).unique(), key=_natural)
        fig.update_yaxes(categoryorder="array", categoryarray=order, type="category", row=i, col=1)
        seg = seg[(seg["end_s"] > t0) & (seg["start_s"] < t1)]
        if len(seg) > max_segments:  # say so in the row's title: the window holds more than is drawn
            fig.layout.annotations[i - 1].text += f" — first {max_segments} of {len(seg)} segments"
            seg = seg.head(max_segments)
        for kind, color in KIND_COLORS.items():
            k = seg[seg["kind"] == kind]
            fig.add_trace(go.Bar(
                y=k["instance"].astype(str).tolist(), x=(k["end_s"] - k["start_s"]).tolist(),
                base=k["start_s"].tolist(), orientation="h", name=kind, legendgroup=kind,
                showlegend=kind not in shown and len(k) > 0, marker_color=color,
                customdata=[list(t) for t in zip(k["n_seqs"].tolist(), k["tokens"].tolist(),
                                                     k["tenants"].astype(str).tolist(),
                                                     k["expert_fetches"].tolist(), k["fetch_s"].tolist(),
                                                     strict=True)],
                hovertemplate=(f"<b>{kind}</b> on %{{y}}<br>%{{base:.3f}} s + %{{x:.4f}} s<br>"
                               "sequences %{customdata[0]}, tokens %{customdata[1]}, tenants %{customdata[2]}"
                               "<br>expert fetches %{customdata[3]:.1f} (%{customdata[4]:.4f} s)<extra></extra>"),
                meta={"series": s, "job": j, "kind": kind},
            ), row=i, col=1)
            if len(k):
                shown.add(kind)
        f = seg[seg["expert_fetches"] > 0]
        fig.add_trace(go.Scatter(
            x=((f["start_s"] + f["end_s"]) / 2).tolist(), y=f["instance"].astype(str).tolist(), mode="markers",
            name="expert fetches", legendgroup="fetch", showlegend="fetch" not in shown and len(f) > 0,
            marker={"symbol": "diamond", "color": "#9467bd", "line": {"width": 0},
                    "size": (4 + 3 * np.sqrt(f["expert_fetches"].to_numpy(float))).clip(4, 18).tolist()},
            customdata=f["expert_fetches"].tolist(),
            hovertemplate="%{customdata:.1f} expert fetches at %{x:.3f} s<extra></extra>",
            meta={"series": s, "job": j, "kind": "fetch"},
        ), row=i, col=1)
        if len(f):
            shown.add("fetch")
    fig.update_layout(barmode="overlay", bargap=0.35)
    fig.update_xaxes(range=[t0, t1])
    fig.update_xaxes(title_text="simulated time (s)", row=n, col=1)
    fig.update_yaxes(title_text="instance", autorange="reversed")
    sub = (f"the first {window:g} s at {rate:.4g} requests/s per tenant (lowest seed)" if rate is not None else "")
    fig = _layout(fig, "Timeline", height=200 + 150 * n, subtitle=sub)
    fig.update_layout(legend={"title": {"text": "segment"}}, margin={"l": 130})
    return fig


FIGURES = {
    "turnaround": turnaround,
    "ttft": ttft,
    "throughput": throughput,
    "slo": slo,
    "cdf": cdf,
    "memory": memory,
    "timeline": timeline,
}
