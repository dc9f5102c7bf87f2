"""summary.json and a plotly page (index.html) from the 8-domain quality study's files (torch-free).

    python -m moesim.consolidation.quality_report reports/consolidation

Reads ``quality.csv``, ``metadata.json`` and ``distances.json`` written by
``moesim.consolidation.quality_study``. Quality of a row = its perplexity over the variant alone's on the same
domain (same family and seed) minus 1 ("change"); accuracy change = next-byte accuracy minus the variant
alone's. ``summary.json`` holds, per family, N, budget and method: memory fraction, mean and worst-domain
change per seed and their spread over seeds, accuracy change; the half-memory targets; case-by-case wins
against the merging baselines; each variant's gain over the base; per-layer expert drift.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.errors import UserError, exit_on_user_error, first_line

OURS = "act-cluster-mean"
PLANS = ("paper", "cluster-mean", "act-cluster-mean", "act-cluster-ties")
MERGES = ("uniform-average", "task-arithmetic", "ties", "dare")
TARGET = 0.03
#: a family/seed's colour, the same in every panel of a figure (plotly's default sequence)
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")
REQUIRED = ("family", "seed", "method", "n_variants", "subset", "domain", "budget", "memory_fraction",
            "perplexity", "accuracy")


def load(folder: str | Path) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """quality.csv with ``change`` and ``acc_change`` columns, metadata.json and distances.json."""
    folder = Path(folder)
    paths = [folder / n for n in ("quality.csv", "metadata.json", "distances.json")]
    for p in paths:
        if not p.is_file():
            raise UserError(f"{str(p)!r} not found (python -m moesim.consolidation.quality_study writes it)")
    try:
        q = pd.read_csv(paths[0], dtype={"budget": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{str(paths[0])!r} is not a readable CSV ({first_line(exc)})") from None
    missing = [c for c in REQUIRED if c not in q.columns]
    if missing:
        raise UserError(f"{str(paths[0])!r} lacks column(s) {', '.join(missing)}")
    if not (q.method != "alone").any():  # the table, every figure and summary.json would be empty
        raise UserError(f"{str(paths[0])!r} has no row of a plan or a merge (only {len(q)} 'alone' rows): nothing "
                        f"to compare; valid methods: {', '.join((*PLANS, *MERGES))}")
    alone = (q[q.method == "alone"].drop_duplicates(["family", "seed", "domain"])
             .set_index(["family", "seed", "domain"])[["perplexity", "accuracy"]])
    key = pd.MultiIndex.from_frame(q[["family", "seed", "domain"]])
    q["change"] = q.perplexity.to_numpy() / alone.perplexity.reindex(key).to_numpy() - 1
    q["acc_change"] = q.accuracy.to_numpy() - alone.accuracy.reindex(key).to_numpy()
    orphan = q[q.change.isna()]
    if len(orphan):  # a change is relative to the variant alone on the same domain: NaN in every figure
        r = orphan.iloc[0]
        raise UserError(f"{str(paths[0])!r}: {len(orphan)} row(s) without their 'alone' row (first: data row "
                        f"{int(orphan.index[0]) + 1}, family {r.family}, seed {r.seed}, domain {r.domain}, method "
                        f"{r.method}); every change is against the variant alone on the same family, seed and domain")
    docs = []
    for p in paths[1:]:
        try:
            docs.append(json.loads(p.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{str(p)!r} is not JSON ({first_line(exc)})") from None
    _check_metadata(docs[0], paths[1])
    return q, docs[0], docs[1]


def _check_metadata(meta: Any, path: Path) -> None:
    """The fields of metadata.json the page quotes (the study writes them all): one line naming the first
    missing one, not a KeyError from the middle of the page."""
    need = {"": ("gpu", "date_utc", "torch", "families")}
    fams = meta.get("families") if isinstance(meta, dict) else None
    for name, f in (fams.items() if isinstance(fams, dict) else ()):
        need[f"families.{name}."] = ("params", "config", "pretrain")
        for sub, keys in (("config", ("n_layers", "n_experts", "top_k")), ("pretrain", ("tokens", "tokens_per_s"))):
            if isinstance(f, dict) and isinstance(f.get(sub), dict):
                need[f"families.{name}.{sub}."] = keys
    for prefix, keys in need.items():
        node: Any = meta
        for part in filter(None, prefix.rstrip(".").split(".")):
            node = node.get(part) if isinstance(node, dict) else None
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                raise UserError(f"{str(path)!r} lacks {prefix}{k} (python -m moesim.consolidation.quality_study "
                                "writes it)")


def half_budget(q: pd.DataFrame, family: str, n: int) -> str:
    """The budget label standing for half memory: ``0.5`` where reachable, else ``all-shared``."""
    b = q[(q.family == family) & (q.n_variants == n) & (q.method == OURS)].budget
    return "0.5" if (b == "0.5").any() else "all-shared"


def table(q: pd.DataFrame) -> list[dict[str, Any]]:
    """One record per family, N, budget, method: per-seed mean / worst change, their spread, accuracy."""
    out = []
    sub = q[q.method != "alone"]
    for (fam, n, budget, method), g in sub.groupby(["family", "n_variants", "budget", "method"], sort=True):
        per_seed = g.groupby("seed").agg(mean=("change", "mean"), worst=("change", "max"),
                                         acc=("acc_change", "mean"), cases=("change", "size"))
        worst_row = g.loc[g.change.idxmax()]
        out.append({
            "family": fam, "n_variants": int(n), "budget": budget, "method": method,
            "memory_fraction": round(float(g.memory_fraction.mean()), 4),
            "seeds": [int(s) for s in per_seed.index], "cases": len(g),
            "mean_change": round(float(per_seed["mean"].mean()), 5),
            "mean_change_seed_min": round(float(per_seed["mean"].min()), 5),
            "mean_change_seed_max": round(float(per_seed["mean"].max()), 5),
            "worst_change": round(float(g.change.max()), 5),
            "worst_change_seed_min": round(float(per_seed["worst"].min()), 5),
            "worst_domain": f"{worst_row.domain} (seed {int(worst_row.seed)}, {worst_row.subset})",
            "acc_change": round(float(per_seed["acc"].mean()), 5),
        })
    return out


def wins(q: pd.DataFrame, method: str, against: str) -> dict[str, Any]:
    """Case by case (family, seed, subset, domain, every budget of ``method``): ``method``'s change against the
    ``against`` merge of the same subset; a win is strictly lower perplexity."""
    a = q[q.method == method]
    b = q[q.method == against][["family", "seed", "subset", "domain", "change"]].rename(columns={"change": "other"})
    m = a.merge(b, on=["family", "seed", "subset", "domain"])
    if m.empty:
        return {"cases": 0}
    margin = m.other - m.change
    return {"cases": len(m), "wins": int((margin > 0).sum()), "min_margin": round(float(margin.min()), 5),
            "median_margin": round(float(margin.median()), 5)}


def by_budget(q: pd.DataFrame, method: str = OURS) -> list[dict[str, Any]]:
    """Per family, N and budget of ``method``: its mean / worst change (per-seed means' range, seeds), the
    accuracy change, whether every domain is within ``TARGET``, and case-by-case wins against each merge
    (same seed, subset and domain; merges hold 1/N of the memory)."""
    out = []
    for (fam, n, budget), g in q[q.method == method].groupby(["family", "n_variants", "budget"], sort=True):
        per_seed = g.groupby("seed").change.agg(["mean", "max"])
        rec: dict[str, Any] = {
            "family": fam, "n_variants": int(n), "budget": budget,
            "memory_fraction": round(float(g.memory_fraction.mean()), 4), "seeds": len(per_seed), "cases": len(g),
            "mean_change": round(float(per_seed["mean"].mean()), 5),
            "mean_change_seed_range": [round(float(per_seed["mean"].min()), 5),
                                       round(float(per_seed["mean"].max()), 5)],
            "worst_change": round(float(g.change.max()), 5),
            "worst_change_seed_range": [round(float(per_seed["max"].min()), 5), round(float(per_seed["max"].max()), 5)],
            "acc_change": round(float(g.acc_change.mean()), 5),
            "every_domain_within_target": bool((g.change <= TARGET).all()),
        }
        fq = q[(q.family == fam) & (q.n_variants == n)]
        for merge_name in MERGES:
            w = wins(pd.concat([g, fq[fq.method == merge_name]]), method, merge_name)
            mg = fq[fq.method == merge_name]
            rec[merge_name] = {**w, "mean_change": round(float(mg.change.mean()), 5) if len(mg) else None,
                               "worst_change": round(float(mg.change.max()), 5) if len(mg) else None}
        out.append(rec)
    return out


def markdown(summary: dict[str, Any]) -> str:
    """The docs' table: per family, N and budget, ours (mean [seed range], worst domain, accuracy) and each
    merge's mean / worst and ours' wins against it."""
    head = ("| family | N | budget (memory) | seeds | ours: mean change [seed range] | ours: worst domain | "
            "ours: accuracy | " + " | ".join(f"{m}: mean / worst (ours wins)" for m in MERGES) + " |")
    lines = [head, "|" + "---|" * (7 + len(MERGES))]
    for r in summary["by_budget"]:
        lo, hi = r["mean_change_seed_range"]
        cells = [r["family"], str(r["n_variants"]), f"{r['budget']} ({100 * r['memory_fraction']:.1f} %)",
                 str(r["seeds"]), f"{100 * r['mean_change']:+.2f} % [{100 * lo:+.2f}, {100 * hi:+.2f}]",
                 f"{100 * r['worst_change']:+.2f} %", f"{100 * r['acc_change']:+.2f} pt"]
        for m in MERGES:
            x = r[m]
            cells.append("—" if x["mean_change"] is None else
                         f"{100 * x['mean_change']:+.2f} / {100 * x['worst_change']:+.2f} % "
                         f"({x.get('wins', 0)}/{x['cases']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summarize(q: pd.DataFrame, meta: dict[str, Any]) -> dict[str, Any]:
    """Everything the page and README quote (see the module docstring)."""
    s: dict[str, Any] = {"table": table(q), "targets": [], "wins": {}, "variant_gain": {}, "layer_drift": {},
                         "by_budget": by_budget(q), "depth_profile": {}, "training": {}}
    for fam in sorted(q.family.unique()):
        fq = q[q.family == fam]
        for n in sorted(fq.n_variants.unique()):
            hb = half_budget(q, fam, int(n))
            g = fq[(fq.n_variants == n) & (fq.budget == hb)]
            rec: dict[str, Any] = {"family": fam, "n_variants": int(n), "budget": hb}
            for method in PLANS:
                gm = g[g.method == method]
                if gm.empty:
                    continue
                rec[method] = {"memory_fraction": round(float(gm.memory_fraction.mean()), 4),
                               "mean_change": round(float(gm.change.mean()), 5),
                               "worst_change": round(float(gm.change.max()), 5),
                               "every_domain_within_target": bool((gm.change <= TARGET).all())}
            s["targets"].append(rec)
        s["wins"][fam] = {f"{m} vs {b}": wins(fq, m, b) for m in PLANS for b in MERGES}
    for fam, f in meta.get("families", {}).items():
        s["training"][fam] = {k: f[k] for k in ("params", "dispatch", "schedule") if k in f}
        s["training"][fam]["pretrain"] = f.get("pretrain")
        kept = [ft["kept_step"] for sm in f.get("seeds", {}).values() if isinstance(sm, dict)
                for ft in sm.get("finetune", {}).values()]
        s["training"][fam]["finetune_kept_steps"] = sorted(kept)
        base = f.get("base", {})
        for seed, sm in f.get("seeds", {}).items():
            if not isinstance(sm, dict):
                continue
            s["variant_gain"][f"{fam}/{seed}"] = {
                d: round(math.exp(ce - base[d][0]) - 1, 5) for d, (ce, _acc) in sm["alone"].items()}
            s["layer_drift"][f"{fam}/{seed}"] = sm["layer_drift"]
            if "depth_profile" in sm:
                s["depth_profile"][f"{fam}/{seed}"] = sm["depth_profile"]
    return s


def _series_key(g: pd.DataFrame, metric: str) -> tuple[float, ...]:
    """A panel series as a hashable tuple (x then y, rounded to 1e-9: equal numbers, equal keys)."""
    return tuple(round(float(v), 9) for v in (*g.memory_fraction, *g[metric]))


#: dash styles of the 2nd, 3rd, … of series that coincide exactly (the first is drawn as usual)
COINCIDENT_DASHES = ("dash", "dot", "dashdot", "longdash")


def _coincident_style(rank: int, merge: bool) -> dict[str, dict[str, Any]]:
    """Marker and line style of a method whose series is the ``rank``-th (0: the first) with the same values in
    a panel: later ones dashed with larger open markers, so each stays visible on top of the others."""
    if rank == 0:
        return {"marker": {"size": 9 if merge else 6, "symbol": "x" if merge else "circle"}, "line": {}}
    return {"marker": {"size": 10 + 3 * rank, "symbol": "x-open" if merge else "circle-open", "line": {"width": 2}},
            "line": {"dash": COINCIDENT_DASHES[(rank - 1) % len(COINCIDENT_DASHES)], "width": 2 + rank}}


def _figures(q: pd.DataFrame, summary: dict[str, Any]) -> list[tuple[str, str, Any]]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figs = []
    t = pd.DataFrame(summary["table"])
    for fam in sorted(t.family.unique()):
        ns = sorted(t[t.family == fam].n_variants.unique())
        for metric, label in (("mean_change", "mean"), ("worst_change", "worst domain")):
            fig = make_subplots(rows=1, cols=len(ns), subplot_titles=[f"N = {n}" for n in ns], shared_yaxes=True)
            for k, n in enumerate(ns, 1):
                drawn: dict[tuple[float, ...], list[str]] = {}  # a panel's series → the methods drawn with it
                for j, method in enumerate((*PLANS, *MERGES)):
                    g = t[(t.family == fam) & (t.n_variants == n) & (t.method == method)].sort_values(
                        "memory_fraction")
                    if g.empty:
                        continue
                    same = drawn.setdefault(_series_key(g, metric), [])
                    same.append(method)
                    # a series equal to one drawn before would hide it (or be hidden): dashed, with a larger open
                    # marker, and named in the hover and the panel's note
                    style = _coincident_style(len(same) - 1, method in MERGES)
                    fig.add_trace(go.Scatter(
                        x=g.memory_fraction, y=100 * g[metric], name=method, legendgroup=method,
                        showlegend=k == 1, mode="lines+markers" if method in PLANS else "markers",
                        marker=style["marker"], line={"color": f"hsl({j * 45},60%,45%)", **style["line"]},
                        hovertemplate=(f"{method}: %{{y:.2f}} % at memory %{{x:.3f}}"
                                       + (f" (same as {', '.join(same[:-1])})" if len(same) > 1 else "")
                                       + "<extra></extra>"),
                        error_y=None if metric != "mean_change" else {
                            "type": "data", "symmetric": False,
                            "array": 100 * (g.mean_change_seed_max - g.mean_change),
                            "arrayminus": 100 * (g.mean_change - g.mean_change_seed_min)}), row=1, col=k)
                fig.add_hline(y=100 * TARGET, line_dash="dot", row=1, col=k)
                ties = [" = ".join(ms) for ms in drawn.values() if len(ms) > 1]
                if ties:  # the panel says which lines lie on top of each other
                    fig.add_annotation(text="coincide: " + "; ".join(ties), xref=f"x{k if k > 1 else ''} domain",
                                       yref=f"y{k if k > 1 else ''} domain", x=0.02, y=0.02, showarrow=False,
                                       xanchor="left", yanchor="bottom", font={"size": 10},
                                       bgcolor="rgba(255,255,255,0.7)")
            # one x title under all panels: one per panel ran into each other at 900 px with four panels
            fig.add_annotation(text="memory / N separate models", xref="paper", yref="paper", x=0.5, y=0,
                               yshift=-48, showarrow=False, xanchor="center", yanchor="top")
            fig.update_yaxes(title_text=f"{label} perplexity change vs alone (%)", row=1, col=1)
            fig.update_layout(height=460, margin={"t": 70, "b": 80})  # panel titles clear the toolbar
            figs.append((f"{fam}-{metric}", f"{fam}: {label} change vs memory (bars: spread over seeds)", fig))
    fig = go.Figure()
    for key, d in summary["layer_drift"].items():
        fig.add_trace(go.Scatter(y=d["between_variants"], name=f"{key} between variants", mode="lines+markers"))
        fig.add_trace(go.Scatter(y=d["to_base"], name=f"{key} to base", mode="lines", line={"dash": "dot"}))
    fig.update_layout(height=380, xaxis_title="MoE layer", yaxis_title="‖Δ expert‖ / ‖base expert‖ (mean)")
    figs.append(("drift", "Expert drift per layer (the paper: Mixtral's layers 18–31 of 32 least similar)", fig))
    if summary.get("depth_profile"):
        fig = make_subplots(rows=1, cols=2, subplot_titles=[
            "summed L2 between variants / base expert norm, per layer (mean)",
            "where the 15 % least similar positions are (the paper: mostly layers 18–31 of 32)"])
        # one colour per family/seed in both panels: the bars took plotly's next colours, which no legend
        # entry explained
        for k, (key, d) in enumerate(summary["depth_profile"].items()):
            color = PALETTE[k % len(PALETTE)]
            fig.add_trace(go.Scatter(y=d.get("relative_by_layer", d["by_layer"]), name=key, mode="lines+markers",
                                     legendgroup=key, line={"color": color}), row=1, col=1)
            fig.add_trace(go.Bar(y=d["least_similar_per_layer"], name=key, legendgroup=key, showlegend=False,
                                 marker={"color": color}), row=1, col=2)
        fig.update_xaxes(title_text="MoE layer")
        fig.update_yaxes(title_text="L2 between variants / base norm", row=1, col=1)
        fig.update_yaxes(title_text="least similar positions (count)", row=1, col=2)
        fig.update_layout(height=380, barmode="group")
        figs.append(("depth", "Drift by depth against the paper's Mixtral finding", fig))
    fig = go.Figure()
    for key, g in summary["variant_gain"].items():
        fig.add_trace(go.Bar(x=list(g), y=[100 * v for v in g.values()], name=key))
    fig.update_layout(height=380, yaxis_title="variant alone vs base, perplexity change (%)", barmode="group")
    figs.append(("gain", "What each fine-tune gained over the base on its own domain", fig))
    return figs


def _table_html(summary: dict[str, Any]) -> str:
    rows = []
    for r in summary["table"]:
        if r["method"] not in (OURS, "paper", *MERGES):
            continue
        rows.append(
            f"<tr><td>{r['family']}</td><td>{r['n_variants']}</td><td>{r['budget']}</td><td>{r['method']}</td>"
            f"<td>{r['memory_fraction']:.3f}</td><td>{100 * r['mean_change']:+.2f} % "
            f"[{100 * r['mean_change_seed_min']:+.2f}, {100 * r['mean_change_seed_max']:+.2f}]</td>"
            f"<td>{100 * r['worst_change']:+.2f} %</td><td>{100 * r['acc_change']:+.2f} pt</td>"
            f"<td>{len(r['seeds'])}</td><td>{r['cases']}</td></tr>")
    return ("<table><tr><th>family</th><th>N</th><th>budget</th><th>method</th><th>memory</th>"
            "<th>mean change [seed min, max]</th><th>worst domain</th><th>accuracy</th><th>seeds</th>"
            "<th>cases</th></tr>" + "".join(rows) + "</table>")


def _by_budget_html(summary: dict[str, Any]) -> str:
    rows = []
    for r in summary.get("by_budget", []):
        lo, hi = r["mean_change_seed_range"]
        cells = [r["family"], r["n_variants"], r["budget"], f"{100 * r['memory_fraction']:.1f} %", r["seeds"],
                 f"{100 * r['mean_change']:+.2f} % [{100 * lo:+.2f}, {100 * hi:+.2f}]",
                 f"{100 * r['worst_change']:+.2f} %", f"{100 * r['acc_change']:+.2f} pt",
                 "yes" if r["every_domain_within_target"] else "<b>no</b>"]
        for m in MERGES:
            x = r[m]
            cells.append("—" if x["mean_change"] is None else
                         f"{100 * x['mean_change']:+.2f} / {100 * x['worst_change']:+.2f} % "
                         f"(ours wins {x.get('wins', 0)}/{x['cases']})")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    head = ["family", "N", "budget", "memory", "seeds", "ours: mean change [seed range]", "ours: worst domain",
            "ours: accuracy", f"every domain ≤ {100 * TARGET:.0f} %", *(f"{m} (1/N): mean / worst" for m in MERGES)]
    return ("<h2>Ours (" + OURS + ") per N and budget, against the whole-model merges, case by case</h2><table><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


def _training_html(summary: dict[str, Any]) -> str:
    out = []
    for fam, t in summary.get("training", {}).items():
        pre = t.get("pretrain") or {}
        conv = pre.get("convergence") or {}
        out.append(
            f"<li>{fam}: dispatch <code>{t.get('dispatch', 'loop')}</code>; pretraining {pre.get('steps')} steps, "
            f"{pre.get('tokens', 0):,d} tokens at {pre.get('tokens_per_s', 0):,d} tokens/s, kept step "
            f"{pre.get('kept_step')} (val loss {pre.get('kept_val_loss')}), early stop: {pre.get('early_stop')}; "
            f"last quarter bought {100 * (conv.get('tail_gain') or 0):.2f} % of perplexity "
            f"(converged: {conv.get('converged')}); fine-tunes kept steps {t.get('finetune_kept_steps')}</li>")
    return "<ul>" + "".join(out) + "</ul>" if out else ""


def build(folder: str | Path) -> dict[str, Any]:
    """Write summary.json and index.html into ``folder``; returns the summary."""
    import plotly.io as pio

    folder = Path(folder)
    q, meta, _dist = load(folder)
    summary = summarize(q, meta)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    blocks = []
    for k, (key, title, fig) in enumerate(_figures(q, summary)):
        blocks.append(f"<h2>{title}</h2>" + pio.to_html(fig, include_plotlyjs=(k == 0), full_html=False,
                                                         div_id=key))
    fams = "; ".join(
        f"{name}: {f['params']:,d} parameters, {f['config']['n_layers']} layers × {f['config']['n_experts']} "
        f"experts top-{f['config']['top_k']}" + (f" + a shared expert (d_ff {f['config']['shared_d_ff']})"
                                                 if f['config'].get('shared_d_ff') else "")
        + f", pretrained {f['pretrain']['tokens']:,d} tokens at {f['pretrain']['tokens_per_s']:,d} tokens/s"
        for name, f in meta["families"].items())
    gains = "; ".join(
        f"{key}: {100 * min(g.values()):+.1f} to {100 * max(g.values()):+.1f} % "
        f"({sum(v < 0 for v in g.values())} of {len(g)} variants better than the base)"
        for key, g in summary["variant_gain"].items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>moesim consolidation quality (8 domains)</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1300px;margin:auto;padding:1em}}
table{{border-collapse:collapse;font-size:90%}}td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}</style>
</head><body><h1>Expert consolidation on 8 domains: what it costs in output quality</h1>
<p>Measured on {meta['gpu']} ({meta['date_utc']} UTC, torch {meta['torch']}). {fams}.</p>
<p><b>Read first — what each fine-tune gained over the base on its own domain</b> (perplexity change; a
consolidation can only show a cost where the variants are better than their base): {gains}. See
docs/consolidation.md.</p>
<p>Change = held-out perplexity over the variant alone's on its own domain, minus 1; accuracy = next-byte
accuracy change (points). Memory = every weight held (all non-expert sets plus every expert copy) over N
separate models. Ours = {OURS}.</p>
{_training_html(summary)}
{_by_budget_html(summary)}
<h2>Every method, budget and N</h2>
{_table_html(summary)}
{''.join(blocks)}
<p>Data: quality.csv, metadata.json, distances.json, train_log.csv, study_log.txt; numbers in summary.json.</p>
</body></html>"""
    (folder / "index.html").write_text(page)
    return summary


def merge(folder: str | Path, parts: list[Path]) -> None:
    """Combine the outputs of runs of single families (``families=``, e.g. one per GPU) into ``folder``:
    quality.csv and train_log.csv concatenated, metadata.json's ``families`` and distances.json joined."""
    folder = Path(folder)
    frames, logs, meta, dist = [], [], None, {}
    for p in parts:
        for name in ("quality.csv", "metadata.json", "distances.json"):
            if not (p / name).is_file():
                raise UserError(f"{str(p / name)!r} not found (a part to merge must be a study's output folder)")
        frames.append(pd.read_csv(p / "quality.csv", dtype={"budget": str}))
        if (p / "train_log.csv").is_file():
            logs.append(pd.read_csv(p / "train_log.csv"))
        m = json.loads((p / "metadata.json").read_text())
        if meta is None:
            meta = m
        else:
            dup = set(meta["families"]) & set(m["families"])
            if dup:
                raise UserError(f"{str(p)!r}: family {sorted(dup)[0]!r} is in more than one part")
            meta["families"].update(m["families"])
        dist.update(json.loads((p / "distances.json").read_text()))
    folder.mkdir(parents=True, exist_ok=True)  # after every part is read: a bad one left an empty folder
    pd.concat(frames).to_csv(folder / "quality.csv", index=False)
    if logs:
        pd.concat(logs).to_csv(folder / "train_log.csv", index=False)
    (folder / "metadata.json").write_text(json.dumps(meta, indent=1))
    (folder / "distances.json").write_text(json.dumps(dist))


@dataclass(frozen=True)
class QualityReportConfig:
    """The command line of ``python -m moesim.consolidation.quality_report``.

    Attributes:
        folder: the study's folder (quality.csv, metadata.json, distances.json); summary.json and index.html
            are written there.
        merge: single-family output folders (comma list) to combine into FOLDER first; empty: none.
    """

    folder: str = "reports/consolidation"
    merge: tuple[str, ...] = ()


def _old_merge_spelling(argv: list[str]) -> list[str]:
    """The old ``--merge A B ...`` (several folders after one flag) → ``merge=A,B``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--merge":
            j = i + 1
            while j < len(argv) and not argv[j].startswith("-") and "=" not in argv[j]:
                j += 1
            out.append("merge=" + ",".join(argv[i + 1:j]))
            i = j
        else:
            out.append(argv[i])
            i += 1
    return out


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Merge single-family folders if asked, then build summary.json and index.html and print the targets."""
    import sys

    from moesim.cli import parse_key_values

    cfg = parse_key_values(_old_merge_spelling(sys.argv[1:] if argv is None else list(argv)), QualityReportConfig,
                           prog="python -m moesim.consolidation.quality_report", summary=__doc__.splitlines()[0],
                           positional="folder",
                           examples=("python -m moesim.consolidation.quality_report reports/consolidation",
                                     "python -m moesim.consolidation.quality_report OUT merge=OUT/large,OUT/fine"))
    if "," in cfg.folder:
        raise UserError(f"{cfg.folder!r}: one study folder at a time (folders to combine go in merge=A,B)")
    folder = Path(cfg.folder)
    if cfg.merge:
        merge(folder, [Path(m) for m in cfg.merge])
    s = build(folder)
    for r in s["targets"]:
        o = r.get(OURS, {})
        print(f"{r['family']} N={r['n_variants']} budget {r['budget']}: ours mean {100 * o.get('mean_change', 0):+.2f} %"
              f", worst {100 * o.get('worst_change', 0):+.2f} %")
    print(f"wrote {folder / 'index.html'} and summary.json")


if __name__ == "__main__":
    main()
