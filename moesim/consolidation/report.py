"""The consolidation quality report: numbers against the targets and a plotly HTML page (CPU; no torch).

    python -m moesim.consolidation.report reports/consolidation/study4

Reads ``quality.csv``, ``distances.json`` and ``metadata.json`` of the study in that folder and writes
``summary.json`` (targets, margins) and ``index.html`` (quality vs memory per method and number of variants,
per-domain curves, expert-distance heat maps). Quality is the ratio of a method's held-out perplexity to the
variant alone on the same domain (1.0 = no loss); "mean" is the mean over every subset of variants and every
member's domain, "worst" their maximum.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.errors import UserError, exit_on_user_error

OURS = "cluster-mean+reconfig"
PAPER = "paper+reconfig"
MERGES = ("uniform-average", "task-arithmetic", "ties")
TARGET_RATIO = 1.03


def load_quality(path: str | Path) -> pd.DataFrame:
    """quality.csv with ``ratio`` = perplexity / the variant alone's on that domain."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"quality file {str(p)!r} not found")
    q = pd.read_csv(p)
    need = {"method", "n_variants", "memory_bytes", "memory_fraction", "domain", "perplexity", "subset"}
    if not need <= set(q.columns):
        raise UserError(f"{str(p)!r} lacks columns {sorted(need - set(q.columns))}")
    alone = q[q.method == "alone"].groupby("domain").perplexity.first()
    q["ratio"] = q.perplexity / q.domain.map(alone)
    return q


def curve(q: pd.DataFrame, method: str, n: int) -> pd.DataFrame:
    """Per memory level: mean and worst ratio over subsets × domains, and the number of cases."""
    sel = q[(q.method == method) & (q.n_variants == n)]
    return (sel.groupby("memory_fraction").ratio.agg(mean="mean", worst="max", cases="count").reset_index())


def half_memory_point(c: pd.DataFrame) -> float:
    """The memory fraction nearest to one half from below, else the smallest there is."""
    below = c.memory_fraction[c.memory_fraction <= 0.5 + 1e-9]
    return float(below.max()) if len(below) else float(c.memory_fraction.min())


def margins(q: pd.DataFrame, n: int, method: str, against: str, same_level: bool) -> pd.DataFrame:
    """Per memory level of ``method``: ``against``'s perplexity over ``method``'s, minus 1, per case.

    ``same_level``: compare at the same plan (``shared_positions`` and ``gpu_copies``; used for the
    no-reconfiguration ablation); otherwise against ``against``'s one point (the merged models).
    """
    a = q[(q.method == method) & (q.n_variants == n)]
    b = q[(q.method == against) & (q.n_variants == n)]
    keys = ["subset", "domain"] + (["shared_positions", "gpu_copies"] if same_level else [])
    m = a.merge(b[[*keys, "perplexity"]], on=keys, suffixes=("", "_other"))
    m["margin"] = m.perplexity_other / m.perplexity - 1
    return m.groupby("memory_fraction").margin.agg(min="min", mean="mean").reset_index()


def summarize(q: pd.DataFrame) -> dict[str, Any]:
    """Targets reached and margins, per number of variants."""
    out: dict[str, Any] = {"target_ratio": TARGET_RATIO, "by_n": {}}
    for n in sorted(q.n_variants.unique()):
        n = int(n)
        rec: dict[str, Any] = {}
        for method in (OURS, PAPER, "cluster+reconfig"):
            c = curve(q, method, n)
            h = half_memory_point(c)
            row = c[c.memory_fraction == h].iloc[0]
            rec[method] = {
                "half_memory_fraction": round(h, 4),
                "mean_ratio_at_half": round(float(row["mean"]), 4),
                "worst_ratio_at_half": round(float(row["worst"]), 4),
                "target_met_on_mean": bool(row["mean"] <= TARGET_RATIO),
                "target_met_every_domain": bool(row["worst"] <= TARGET_RATIO),
                "smallest_memory_with_every_domain_within_target": (
                    float(c[c.worst <= TARGET_RATIO].memory_fraction.min()) if (c.worst <= TARGET_RATIO).any() else None
                ),
            }
        for method in (OURS, PAPER):
            vs: dict[str, Any] = {}
            for other in MERGES:
                m = margins(q, n, method, other, same_level=False)
                vs[other] = {"min_margin": round(float(m["min"].min()), 4),
                             "mean_margin_range": [round(float(m["mean"].min()), 4), round(float(m["mean"].max()), 4)],
                             "beats_every_case_every_budget": bool((m["min"] > 0).all()),
                             "beats_on_mean_every_budget": bool((m["mean"] > 0).all())}
            nr = method.replace("+reconfig", "-noreconfig")
            m = margins(q, n, method, nr, same_level=True)
            m = m[m.memory_fraction < 1.0]  # nothing shared: the two differ only in non-expert layers
            vs["no-reconfig (same plan)"] = {
                "min_margin": round(float(m["min"].min()), 4),
                "mean_margin_range": [round(float(m["mean"].min()), 4), round(float(m["mean"].max()), 4)],
                "beats_every_case_every_budget": bool((m["min"] > 0).all()),
            }
            rec[f"{method} margins"] = vs
        for other in MERGES:
            sel = q[(q.method == other) & (q.n_variants == n)]
            rec[other] = {"memory_fraction": round(float(sel.memory_fraction.iloc[0]), 4),
                          "mean_ratio": round(float(sel.ratio.mean()), 4), "worst_ratio": round(float(sel.ratio.max()), 4)}
        out["by_n"][str(n)] = rec
    return out


def _figures(q: pd.DataFrame, dist: dict[str, Any]) -> list[tuple[str, str, Any]]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figs: list[tuple[str, str, Any]] = []
    ns = sorted(int(n) for n in q.n_variants.unique())
    styles = {
        OURS: ("ours: cluster sharing, mean copy, + reconfiguration", "#1f77b4", "solid"),
        "cluster+reconfig": ("ours: cluster sharing, medoid copy, + reconfiguration", "#17becf", "dot"),
        PAPER: ("paper plan + reconfiguration", "#d62728", "solid"),
        "cluster-mean-noreconfig": ("ours without reconfiguration", "#1f77b4", "dash"),
        "paper-noreconfig": ("paper plan without reconfiguration", "#d62728", "dash"),
    }
    marks = {"uniform-average": ("uniform averaging", "x"), "task-arithmetic": ("task arithmetic", "diamond"),
             "ties": ("TIES merging", "triangle-up")}
    for stat, title in (("mean", "mean over subsets and domains"), ("worst", "worst subset and domain")):
        fig = make_subplots(rows=1, cols=len(ns), subplot_titles=[f"N = {n} variants" for n in ns], shared_yaxes=True)
        for col, n in enumerate(ns, start=1):
            for method, (label, color, dash) in styles.items():
                c = curve(q, method, n)
                fig.add_trace(go.Scatter(x=c.memory_fraction, y=c[stat], mode="lines+markers", name=label,
                                         legendgroup=method, showlegend=col == 1,
                                         line={"color": color, "dash": dash}), row=1, col=col)
            for method, (label, sym) in marks.items():
                c = curve(q, method, n)
                fig.add_trace(go.Scatter(x=c.memory_fraction, y=c[stat], mode="markers", name=label,
                                         legendgroup=method, showlegend=col == 1,
                                         marker={"symbol": sym, "size": 11, "color": "#444"}), row=1, col=col)
            fig.add_hline(y=TARGET_RATIO, line={"color": "#2ca02c", "dash": "dot"}, row=1, col=col)
            fig.add_vline(x=0.5, line={"color": "#999", "dash": "dot"}, row=1, col=col)
            fig.update_xaxes(title_text="memory / N separate models", row=1, col=col)
        fig.update_yaxes(title_text=f"perplexity / variant alone ({stat})", row=1, col=1)
        fig.update_layout(height=480, title=f"Quality vs memory — {title} (green: the 3 % target)",
                          legend={"orientation": "h", "y": -0.25})
        figs.append((f"quality_{stat}", f"Quality vs memory ({title})", fig))

    n = max(ns)
    fig = make_subplots(rows=1, cols=4, subplot_titles=sorted(q.domain.unique()), shared_yaxes=False)
    for col, dom in enumerate(sorted(q.domain.unique()), start=1):
        for method, (label, color, dash) in styles.items():
            sel = q[(q.method == method) & (q.n_variants == n) & (q.domain == dom)].sort_values("memory_fraction")
            fig.add_trace(go.Scatter(x=sel.memory_fraction, y=sel.perplexity, mode="lines+markers", name=label,
                                     legendgroup=method, showlegend=col == 1, line={"color": color, "dash": dash}),
                          row=1, col=col)
        alone = q[(q.method == "alone") & (q.domain == dom)].perplexity.iloc[0]
        fig.add_hline(y=alone, line={"color": "#2ca02c"}, row=1, col=col)
        fig.update_xaxes(title_text="memory fraction", row=1, col=col)
    fig.update_layout(height=420, title=f"Held-out perplexity per domain, N = {n} (green: the variant alone)",
                      legend={"orientation": "h", "y": -0.3})
    figs.append(("per_domain", f"Per-domain perplexity, N = {n}", fig))

    names = dist["variants"]
    l2 = np.array(dist["l2"])
    norm = np.array(dist["base_expert_l2_norm"])  # (L, E)
    pairs = [(u, v) for u in range(len(names)) for v in range(u + 1, len(names))]
    fig = make_subplots(rows=2, cols=3, subplot_titles=[f"{names[u]} vs {names[v]}" for u, v in pairs])
    zmax = float(max((l2[u, v] / norm).max() for u, v in pairs))
    for k, (u, v) in enumerate(pairs):
        fig.add_trace(go.Heatmap(z=l2[u, v] / norm, zmin=0, zmax=zmax, coloraxis="coloraxis",
                                 hovertemplate="layer %{y}, expert %{x}: %{z:.4f}<extra></extra>"),
                      row=k // 3 + 1, col=k % 3 + 1)
    fig.update_layout(height=520, coloraxis={"colorscale": "Viridis", "colorbar": {"title": "L2 / ‖base‖"}},
                      title="Expert distance between variants: L2 of concatenated w1/w2/w3 over the base expert's norm "
                            "(rows: layer, columns: expert)")
    fig.update_xaxes(title_text="expert")
    fig.update_yaxes(title_text="layer")
    figs.append(("distance_pairs", "Expert distances between variants", fig))

    tb = np.array(dist["l2_to_base"])  # (N, L, E)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[f"{nm} vs base" for nm in names])
    for k in range(len(names)):
        fig.add_trace(go.Heatmap(z=tb[k] / norm, coloraxis="coloraxis"), row=1, col=k + 1)
    fig.update_layout(height=340, coloraxis={"colorscale": "Magma", "colorbar": {"title": "L2 / ‖base‖"}},
                      title="How far fine-tuning moved each expert from the base (relative L2)")
    figs.append(("distance_base", "Expert drift from the base", fig))

    cos = np.array(dist["cosine"])
    fig = make_subplots(rows=2, cols=3, subplot_titles=[f"{names[u]} vs {names[v]}" for u, v in pairs])
    for k, (u, v) in enumerate(pairs):
        fig.add_trace(go.Heatmap(z=cos[u, v], coloraxis="coloraxis"), row=k // 3 + 1, col=k % 3 + 1)
    fig.update_layout(height=520, coloraxis={"colorscale": "Cividis", "colorbar": {"title": "1 − cos"}},
                      title="Cosine distance between variants' experts")
    figs.append(("distance_cosine", "Cosine distances", fig))
    return figs


def _targets_table(summary: dict[str, Any]) -> str:
    rows = []
    for n, rec in summary["by_n"].items():
        for method in (OURS, PAPER):
            r = rec[method]
            avg = rec[f"{method} margins"]["uniform-average"]
            nr = rec[f"{method} margins"]["no-reconfig (same plan)"]
            rows.append(
                f"<tr><td>{n}</td><td>{method}</td><td>{r['half_memory_fraction']:.3f}</td>"
                f"<td>{(r['mean_ratio_at_half'] - 1) * 100:+.2f} %</td><td>{(r['worst_ratio_at_half'] - 1) * 100:+.2f} %</td>"
                f"<td>{avg['min_margin'] * 100:+.2f} % / {avg['mean_margin_range'][0] * 100:+.2f}…{avg['mean_margin_range'][1] * 100:+.2f} %</td>"
                f"<td>{nr['min_margin'] * 100:+.2f} % / {nr['mean_margin_range'][0] * 100:+.2f}…{nr['mean_margin_range'][1] * 100:+.2f} %</td></tr>"
            )
    return (
        "<table><tr><th>N</th><th>method</th><th>memory at ≈½</th><th>mean perplexity change</th>"
        "<th>worst domain</th><th>margin over uniform averaging (worst case / range of means)</th>"
        "<th>margin over no-reconfiguration</th></tr>" + "".join(rows) + "</table>"
    )


def build(folder: str | Path) -> dict[str, Any]:
    """Write summary.json and index.html into ``folder``; returns the summary."""
    import plotly.io as pio

    folder = Path(folder)
    q = load_quality(folder / "quality.csv")
    dpath, mpath = folder / "distances.json", folder / "metadata.json"
    for p in (dpath, mpath):
        if not p.is_file():
            raise UserError(f"{str(p)!r} not found (the study writes it next to quality.csv)")
    dist = json.loads(dpath.read_text())
    meta = json.loads(mpath.read_text())
    summary = summarize(q)
    summary["alone_perplexity"] = meta["checks"]["alone_perplexity"]
    summary["base_perplexity"] = meta["base_perplexity"]
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    blocks = []
    for k, (key, title, fig) in enumerate(_figures(q, dist)):
        html = pio.to_html(fig, include_plotlyjs=(k == 0), full_html=False, div_id=key)
        blocks.append(f"<h2>{title}</h2>{html}")
    ft = meta["finetune"]
    train = (
        f"Model: TinyMoE {meta['model']['n_layers']} layers, d_model {meta['model']['d_model']}, d_ff "
        f"{meta['model']['d_ff']}, {meta['model']['n_experts']} experts top-{meta['model']['top_k']}, "
        f"{meta['params']:,d} parameters; pretrain {meta['pretrain']['steps_done']} steps "
        f"({meta['pretrain']['tokens']:,d} tokens); fine-tunes kept at steps "
        + ", ".join(f"{d} {v.get('kept_step')}" for d, v in ft.items())
        + f"; trained on {meta['gpu']} in {meta['total_s']:.0f} s (study included)."
    )
    base_vs = ", ".join(
        f"{d}: {meta['base_perplexity'][d]:.3f} → {meta['checks']['alone_perplexity'][d]:.3f}" for d in ft
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>moesim consolidation quality</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1300px;margin:auto;padding:1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>
<h1>Expert consolidation: what it costs in output quality</h1>
<p>{train}</p><p>Held-out perplexity, base → fine-tuned variant on its own domain: {base_vs}.</p>
<p>Quality = held-out perplexity over the variant alone's on the same domain. Memory = every weight the
method holds (all tenants' non-expert sets plus every expert copy, GPU and host) over N separate models.
Targets: ≤ {TARGET_RATIO:.2f} at half memory for every domain; better than uniform averaging and than the same
plan without reconfiguration at every budget.</p>
{_targets_table(summary)}
{''.join(blocks)}
<p>Data: quality.csv, distances.json, metadata.json, train_log.csv; summary.json holds the numbers above.</p>
</body></html>"""
    (folder / "index.html").write_text(page)
    return summary


@dataclass(frozen=True)
class ReportConfig:
    """The command line of ``python -m moesim.consolidation.report``.

    Attributes:
        folder: the study's folder (quality.csv, distances.json, metadata.json); summary.json and index.html
            are written there.
    """

    folder: str = "reports/consolidation/study4"


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Build summary.json and index.html in the study folder and print the targets."""
    import sys

    from moesim.cli import parse_key_values

    cfg = parse_key_values(sys.argv[1:] if argv is None else argv, ReportConfig,
                           prog="python -m moesim.consolidation.report", summary=__doc__.splitlines()[0],
                           positional="folder", examples=("python -m moesim.consolidation.report "
                                                          "reports/consolidation/study4",))
    if "," in cfg.folder:
        raise UserError(f"{cfg.folder!r}: one study folder at a time")
    folder = Path(cfg.folder)
    s = build(folder)
    for n, rec in s["by_n"].items():
        r = rec[OURS]
        print(f"N={n}: ours at memory {r['half_memory_fraction']:.3f}: mean {r['mean_ratio_at_half']:.4f}, "
              f"worst {r['worst_ratio_at_half']:.4f}")
    print(f"wrote {folder / 'index.html'} and summary.json")


if __name__ == "__main__":
    main()
