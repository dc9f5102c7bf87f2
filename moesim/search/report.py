"""The search report: one self-contained HTML file (plotly.js embedded, as the sweep report).

Figures: the cost-vs-attainment frontier of every trial at the workload's load, the GPUs each policy needs
against the total arrival rate, and the chosen placement (GPU → variants, sized by expected load). Tables:
the answer, the cheapest fleets per policy, the price table (labelled approximate when it is the shipped one).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from moesim.io import write_text
from moesim.report.page import _esc, data_block, figure_block, fmt, kv_table, page, table
from moesim.search.driver import SearchResult, offered_rate
from moesim.search.prices import DEFAULT_PRICES, PriceTable

PALETTE = qualitative.D3 + qualitative.Set2
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "cross")
FILLS = ("", "-open", "-dot", "-open-dot")  # one per GPU type: filled, hollow, dotted, hollow dotted


def symbol(pi: int, gi: int) -> str:
    """The marker of policy ``pi`` on GPU type ``gi`` (indices in sorted order), the same in every figure:
    the shape is the policy's (so coinciding policies stay apart), the fill the GPU type's (so one policy on
    two GPU types stays apart, also where a single load draws lone markers and no dash shows)."""
    return SYMBOLS[pi % len(SYMBOLS)] + FILLS[gi % len(FILLS)]
FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 13}


def _layout(fig: go.Figure, title: str, height: int = 460, legend: str = "", subtitle: str = "") -> go.Figure:
    """Common layout: a short title (it must clear plotly's toolbar, top right, at 900 px width) and the
    details in a smaller second line, as in the sweep report."""
    text = title + (f"<br><span style=\"font-size:12px;color:#555\">{subtitle}</span>" if subtitle else "")
    fig.update_layout(title={"text": text, "x": 0.01, "xanchor": "left"}, height=height, font=FONT,
                      template="plotly_white", legend={"title": {"text": legend}},
                      margin={"l": 70, "r": 20, "t": 90 if subtitle else 60, "b": 60}, hovermode="closest")
    return fig


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis over [lo, hi]: 1-2-5 per decade (1-2-3-5 when the range spans under two
    decades), so every label is a whole number. plotly's own labels on a short log axis read
    '3 4 5 … 10 2 3 4 5' (the 2 meaning 20)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi <= 0:
        return []
    lo, hi = min(lo, hi), max(lo, hi)
    steps = (1, 2, 3, 5) if hi / lo < 100 else (1, 2, 5)
    out = []
    for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in steps:
            v = m * 10.0 ** e
            if lo / 1.5 <= v <= hi * 1.5:
                out.append(float(f"{v:.12g}"))
    return out


def _colors(policies: list[str]) -> dict[str, str]:
    return {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(policies)}


def frontier(trials: pd.DataFrame, target: float, answer: Any, currency: str) -> go.Figure:
    """Every search trial at load 1: $/hour vs attainment (worst seed), and the frontier of the best
    attainment reachable at each price."""
    df = trials[(trials["phase"] == "search") & (trials["load"] == 1.0)].copy()
    fig = go.Figure()
    policies = sorted(df["policy"].unique())
    col = _colors(policies)
    gpus = sorted(df["gpu"].unique())
    for pol in policies:
        for gi, gpu in enumerate(gpus):
            d = df[(df["policy"] == pol) & (df["gpu"] == gpu)]
            if d.empty:
                continue
            text = [f"{c} x {gpu}, {s}, {pol}, max_batch {b}" + (f"<br>{e}" if e else "")
                    for c, s, b, e in zip(d["count"], d["strategy"], d["max_batch"], d["error"].fillna(""),
                                          strict=True)]
            fig.add_trace(go.Scatter(
                x=[float(v) for v in d["usd_per_hour"]], y=[float(v) for v in d["attainment_min"]],
                mode="markers", name=f"{pol} · {gpu}", legendgroup=pol, text=text,
                marker={"color": col[pol], "symbol": symbol(policies.index(pol), gi), "size": 8, "opacity": 0.75},
                hovertemplate="%{text}<br>%{x:.2f}/hour<br>attainment %{y:.3f}<extra></extra>"))
    if len(df):
        d = df.sort_values(["usd_per_hour", "attainment_min"], ascending=[True, False])
        xs, ys, best = [], [], -1.0
        for x, y in zip(d["usd_per_hour"], d["attainment_min"], strict=True):
            if y > best:
                xs.append(float(x))
                ys.append(float(y))
                best = float(y)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"shape": "hv", "color": "#444", "width": 1.5},
                                 name="frontier", hoverinfo="skip"))
        fig.add_hline(y=target, line={"dash": "dot", "color": "#b42318"},
                      annotation_text=f"target {target:g}", annotation_position="bottom right")
    if answer is not None:
        fig.add_trace(go.Scatter(
            x=[float(answer.usd_per_hour)], y=[float(min(answer.attainment_search or [math.nan]))],
            mode="markers", name="chosen", marker={"symbol": "star", "size": 18, "color": "#f5b800",
                                                   "line": {"color": "#000", "width": 1}},
            hovertemplate=f"chosen: {answer.count} x {answer.arm.label()}<extra></extra>"))
    prices = sorted({round(float(v), 6) for v in df["usd_per_hour"] if pd.notna(v) and float(v) > 0})
    # a few distinct prices (a small search: 4 and 8 USD/hour): label exactly those; else 1-2-5 steps
    ticks = prices if len(prices) <= 6 else log_ticks(prices[0], prices[-1]) if prices else []
    fig.update_xaxes(title=f"fleet price ({currency}/hour)", type="log",
                     **({"tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks]} if ticks else {}))
    fig.update_yaxes(title="SLO attainment (worst search seed)", range=[-0.02, 1.02])
    return _layout(fig, "Cost vs SLO attainment", legend="policy · GPU",
                   subtitle="every trial at the workload's load; worst search seed")


def needed_vs_rate(needed: pd.DataFrame, rates: dict[float, float]) -> go.Figure:
    """Per policy and GPU type: the fewest GPUs any strategy / batch limit needs, against total rate."""
    fig = go.Figure()
    policies = sorted(needed["policy"].unique())
    col = _colors(policies)
    gpus = sorted(needed["gpu"].unique())
    # a policy is a colour and a marker shape, a GPU type a marker fill and a dash (as in the frontier
    # figure): with a single load there are no lines, so the marker alone must tell them apart. Lines that
    # coincide (two policies needing the same GPUs at every rate) stay visible: a policy drawn earlier is
    # wider with larger markers, so it shows around the ones drawn over it
    for pi, pol in enumerate(policies):
        under = len(policies) - 1 - pi
        for gi, gpu in enumerate(gpus):
            d = needed[(needed["policy"] == pol) & (needed["gpu"] == gpu)]
            if d.empty:
                continue
            best = d.groupby("load")["needed"].min()
            loads = sorted(best.index)
            xs = [float(rates[x]) for x in loads]
            ys = [float(best[x]) if pd.notna(best[x]) else None for x in loads]
            if all(y is None for y in ys):
                continue
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines+markers", name=f"{pol} · {gpu}", legendgroup=pol,
                line={"color": col[pol], "dash": DASHES[gi % len(DASHES)], "width": 2 + 1.5 * under},
                marker={"symbol": symbol(pi, gi), "size": 7 + 3 * under},
                hovertemplate=f"{pol} on {gpu}<br>%{{x:.3g}} req/s: %{{y}} GPUs<extra></extra>"))
    if not fig.data:  # nothing feasible anywhere: the empty axis says so in words (a legend of an empty
        # trace showed nothing), over the loads' rates rather than plotly's −1 … 6
        fig.add_trace(go.Scatter(x=[], y=[], name="no fleet meets the target"))
        fig.add_annotation(text="no fleet within search.max_gpus meets the target at any load", x=0.5, y=0.5,
                           xref="paper", yref="paper", showarrow=False, font={"size": 15, "color": "#b42318"})
        if rates:
            lo, hi = min(rates.values()), max(rates.values())
            fig.update_xaxes(range=[0.0, hi * 1.2 if hi > 0 else 1.0] if lo == hi else [lo * 0.9, hi * 1.1])
    elif len(set(rates.values())) == 1:  # one load: plotly spanned about r ± 1 (negative rates) and drew the
        # line of rate 0 beside the points
        fig.update_xaxes(range=[0.0, 2.0 * float(next(iter(rates.values())))])
    top = needed["needed"].max() if len(needed) else math.nan
    fig.update_xaxes(title="total arrival rate (requests/s, all variants)", zeroline=False)
    # whole GPUs: plotly ticked 0, 0.5, 1, 1.5, 2 for a fleet of 1 or 2
    fig.update_yaxes(title="GPUs needed", rangemode="tozero",
                     **({"dtick": 1} if pd.notna(top) and float(top) <= 10 else {"tickformat": "d"}))
    return _layout(fig, "GPUs needed vs total rate", legend="policy · GPU",
                   subtitle="the fewest over placement strategies and batch limits")


def placement_figure(placement: list[dict[str, Any]], loads: np.ndarray) -> go.Figure:
    """One bar per GPU, stacked by the variants on it, each sized by its expected share of the load
    (a variant with r replicas puts 1/r of its load on each)."""
    replicas: dict[int, int] = {}
    for p in placement:
        for v in p["tenants"]:
            replicas[v] = replicas.get(v, 0) + 1
    total = float(loads.sum()) or 1.0
    fig = go.Figure()
    gpu_labels = [f"GPU {p['gpu']}" for p in placement]
    variants = sorted(replicas)
    for v in variants:
        xs, ys, text = [], [], []
        for p, label in zip(placement, gpu_labels, strict=True):
            if v in p["tenants"]:
                xs.append(float(loads[v]) / replicas[v] / total * 100)
                ys.append(label)
                text.append(f"v{v}" + (f" (1/{replicas[v]})" if replicas[v] > 1 else ""))
        fig.add_trace(go.Bar(x=xs, y=ys, orientation="h", name=f"variant {v}", text=text, textposition="inside",
                             marker={"color": PALETTE[v % len(PALETTE)], "line": {"color": "#fff", "width": 1}},
                             hovertemplate=f"variant {v}: %{{x:.2f}}% of the load on %{{y}}<extra></extra>",
                             showlegend=False))
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title="share of the load the placement was planned for (tokens, %)")
    # GPUs in placement order (plotly would order categories by first appearance over the traces: the
    # GPUs of variant 0 first, e.g. GPU 0, GPU 4, GPU 1, ...)
    fig.update_yaxes(autorange="reversed", type="category", categoryorder="array", categoryarray=gpu_labels)
    return _layout(fig, "The chosen placement", height=max(290, 90 + 34 * len(placement)),
                   # one seed's draw: equal popularity showed 9-17 % shares under "expected load"
                   subtitle="variants on each GPU, sized by their share of the first search seed's tokens")


def variant_loads(workload: dict[str, Any], seed: int) -> np.ndarray:
    """Tokens (prompt + output) per variant in ``seed``'s requests (the placement's expected load)."""
    from moesim.search.fleet_eval import _requests

    reqs, n, _ = _requests(json.dumps(workload, sort_keys=True), seed)
    loads = np.zeros(n)
    for r in reqs:
        loads[r.tenant] += r.prompt_tokens + r.output_tokens
    return loads


def _params_line(params: dict[str, Any]) -> str:
    """``poisson (rate=0.5, tenants=8, …)`` from a config dict with a ``name`` (empty values shown as
    ``none``)."""
    rest = ", ".join(f"{k}={'none' if v in ('', None) else v}" for k, v in params.items() if k != "name")
    name = str(params.get("name", "?"))
    return f"{name} ({rest})" if rest else name


def build(out: Path, result: SearchResult, prices: PriceTable, *, command: str, wall_s: float) -> Path:
    """Write ``out/report.html``; its path."""
    from moesim.search.driver import scale_workload

    cfg = result.config
    s = cfg["search"]
    ans = result.answer
    trials = result.trials
    cur = prices.currency
    seeds = list(s["seeds"])
    rates = {x: offered_rate(scale_workload(cfg["workload"], x), seeds[0]) for x in sorted(result.needed["load"].unique())}
    approx = Path(prices.path).resolve() == DEFAULT_PRICES.resolve()
    parts = [f"<h1>Capacity search</h1><p class=\"lead\">The cheapest fleet whose simulated SLO attainment "
             f"reaches {s['target']:g} on the workload below. Command: <code>{_esc(command)}</code></p>"]
    if ans is None:
        parts.append(f"<p class=\"failed\">No fleet of at most {s['max_gpus']} GPUs reached the target on every "
                     "search seed (and its verify seeds). Raise search.max_gpus, relax the SLO, or try other "
                     "GPU types or policies.</p>")
    else:
        parts.append(kv_table([
            ("fleet", _esc(f"{ans.count} x {ans.arm.gpu}")),
            ("placement strategy", _esc(ans.arm.strategy)),
            ("policy, batch limit", _esc(f"{ans.arm.policy}, max_batch {ans.arm.max_batch}")),
            (f"price ({cur}/hour)", fmt(ans.usd_per_hour, 4)),
            (f"{cur} per million tokens (prompt + output)", fmt(ans.usd_per_mtok, 4)),
            (f"{cur} per million output tokens", fmt(ans.usd_per_mtok_output, 4)),
            ("tokens served per second", fmt(ans.tokens_per_s, 4)),
            ("attainment on search seeds " + _esc(",".join(map(str, seeds))),
             _esc(", ".join(f"{a:.4f}" for a in ans.attainment_search))),
            ("attainment on fresh verify seeds " + _esc(",".join(map(str, s["verify_seeds"]))),
             _esc(", ".join(f"{a:.4f}" for a in ans.attainment_verify))),
        ]))
    parts.append(f"<p class=\"note\">Margin rule: a fleet is feasible when its attainment is at least target + "
                 f"margin = {s['target'] + s['margin']:g} on every search seed; the cheapest is then re-simulated on "
                 f"the fresh verify seeds and must reach {s['target']:g} on each, else its GPU count is raised. "
                 f"{len(trials)} trials in {result.rounds} rounds, {wall_s:.0f} s.</p>")
    unmeasured = {g: ln for g, ln in cfg.get("cost_models", {}).items() if "(measured on" not in ln}
    if unmeasured:
        parts.append("<p class=\"derived\">Not every GPU's step times were measured: "
                     + "; ".join(f"<b>{_esc(g)}</b>: {_esc(ln)}" for g, ln in unmeasured.items())
                     + ". Comparisons across GPU types are only as good as these estimates.</p>")
    price_rows = [(g, fmt(p, 4)) for g, p in sorted(prices.prices.items())]
    label = ("APPROXIMATE list prices (shipped default; edit a copy and pass search.prices=FILE)" if approx
             else f"from {prices.path}")
    parts.append(f"<h2>Prices</h2><p class=\"{'derived' if approx else 'note'}\">{_esc(label)}. Source: "
                 f"{_esc(prices.source or '—')}.</p>" + kv_table([(g, f"{v} {cur}/GPU-hour") for g, v in price_rows]))
    parts.append("<h2>Cost vs attainment</h2><p class=\"note\">Every trial at the workload's own load: the "
                 "price of the fleet per hour against the attainment of its worst search seed. The line is the "
                 "frontier (the best attainment any cheaper-or-equal fleet reached); the star is the answer.</p>")
    parts.append(figure_block("frontier", frontier(trials, s["target"], ans, cur)))
    parts.append("<h2>GPUs needed vs rate</h2><p class=\"note\">For each policy and GPU type the fewest GPUs "
                 "that meet the target (over placement strategies and batch limits) at each load factor "
                 f"({', '.join(f'{x:g}' for x in rates)}); a missing point needs more than search.max_gpus.</p>")
    parts.append(figure_block("needed", needed_vs_rate(result.needed, rates)))
    if ans is not None:
        parts.append("<h2>The chosen placement</h2>")
        parts.append(figure_block("placement", placement_figure(ans.placement, variant_loads(cfg["workload"],
                                                                                               seeds[0]))))
    # cheapest per policy at load 1
    n1 = result.needed[(result.needed["load"] == 1.0) & result.needed["needed"].notna()]
    if len(n1):
        best = n1.sort_values(["usd_per_hour", "needed"]).groupby("policy", sort=False).head(1)
        cells = [[_esc(r.policy), _esc(r.gpu), _esc(r.strategy), str(r.max_batch), str(int(r.needed)),
                  fmt(float(r.usd_per_hour), 4)] for r in best.itertuples()]
        parts.append("<h2>Cheapest fleet per policy</h2>" + table(best, ["policy", "GPU", "strategy", "max_batch",
                                                                          "GPUs", f"{cur}/hour"], cells))
    parts.append("<h2>Workload and SLO</h2>" + kv_table(
        [("model", _esc(cfg["model"])), ("workload", _esc(_params_line(cfg["workload"]))),
         ("cost model", _esc(_params_line(cfg["cost"]))),
         *[(f"cost model on {g}", _esc(line)) for g, line in cfg.get("cost_models", {}).items()],
         ("SLO", _esc(f"TTFT ≤ {cfg['slo_ttft_s']} s and TPOT ≤ {cfg['slo_tpot_s']} s")),
         ("total arrival rate at load 1", fmt(rates.get(1.0, math.nan), 4) + " requests/s")]))
    parts.append(data_block("answer", None if ans is None else {
        "gpu": ans.arm.gpu, "count": ans.count, "strategy": ans.arm.strategy, "policy": ans.arm.policy,
        "max_batch": ans.arm.max_batch, "usd_per_hour": ans.usd_per_hour, "usd_per_mtok": ans.usd_per_mtok}))
    return write_text(out / "report.html", page("moesim capacity search", "\n".join(parts)))
