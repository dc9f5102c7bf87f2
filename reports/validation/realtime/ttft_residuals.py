"""Where a run's TTFT error comes from: its prefills, the wait before them, or which requests share a prefill.

    PYTHONPATH=. python reports/validation/realtime/ttft_residuals.py OUT.md CALL[/RUN] ... [link=table|run]
        [glob=*_host*] [key=value ...]

For each whole-GPU served run (a folder with ``segments.parquet``, ``requests.parquet`` and ``summary.json``; a call
folder stands for its runs matching ``glob``, default ``multiplex_host*`` and ``reconfig_fast_host*``), simulate it
as ``python -m moesim.serve.validate CALL sim_cost=profile_bucketed table=CALL/tables/decode_table.csv`` does
(``moesim.serve.validate.simulate_run``; ``link=table`` by default, as the committed four-figure tables; further
``key=value`` are cost options) and compare:

* **prefills that fetch, by shape** — (sequences, distinct tenants, token bucket), measured vs simulated: count,
  mean seconds, copy seconds and fetches per prefill (the simulated prefill of the same shape);
* **each request's TTFT** split as ``wait`` (arrival → the start of the step that holds its prefill, or of the
  swap before it) + ``prefill`` (that start → its first token). A request is **re-grouped** when the simulator
  puts it in a prefill with other requests than the runtime did (the requests sharing a prefill are those whose
  first tokens come at the same time); its whole TTFT error is then counted as *admission*. Otherwise its error is
  counted as *queueing* (the wait: decode steps or prefills under way before its prefill) and *prefill* (its own
  prefill step);
* **prefills right after a swap** (reconfig_fast runs them under the streamed swap, eagerly, at the exact prompt
  length; the others from their token bucket's graphs): per request, measured vs simulated seconds, whole and
  outside the copies, pooled by prompt length (256 tokens, the runs' cap, or fewer);
* the run's **mean TTFT error** (seconds per request and % of the measured mean) split into those three parts,
  which add up to it.

Writes ``OUT.md`` (a summary table, the pooled prefill shapes, then one section per run). Times in seconds unless
marked ms. Torch-free; needs simpy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.errors import UserError, exit_on_user_error
from moesim.serve.validate import simulate_run

DEFAULT_GLOBS = ("multiplex_host*", "reconfig_fast_host*")
TOKEN_BUCKETS = (256, 512, 768, 1024, 1536, 2048)


def token_bucket(tokens: int) -> int:
    """The smallest of ``TOKEN_BUCKETS`` ≥ ``tokens`` (the largest past them): the class key of a prefill."""
    return next((b for b in TOKEN_BUCKETS if b >= tokens), TOKEN_BUCKETS[-1])


def prefill_groups(req: pd.DataFrame, tol_s: float = 1e-6) -> pd.Series:
    """Per request (index: ``request_id``), the ids of the requests sharing its prefill (a frozenset): those whose
    ``first_token_s`` is the same within ``tol_s`` seconds."""
    r = req.sort_values("first_token_s")
    ft = r["first_token_s"].to_numpy()
    ids = r["request_id"].to_numpy()
    out: dict[int, frozenset[int]] = {}
    i = 0
    while i < len(r):
        j = i + 1
        while j < len(r) and ft[j] - ft[i] <= tol_s:
            j += 1
        g = frozenset(int(x) for x in ids[i:j])
        for x in ids[i:j]:
            out[int(x)] = g
        i = j
    return pd.Series(out).reindex(req["request_id"].to_numpy())


def ttft_split(meas: pd.DataFrame, sim: pd.DataFrame) -> pd.DataFrame:
    """Per measured request: ``ttft_m``/``ttft_s``, ``wait_m``/``wait_s``, ``prefill_m``/``prefill_s`` (seconds),
    ``n_m``/``n_s`` (requests sharing its prefill), ``regrouped`` and the error parts ``admission``, ``queueing``,
    ``prefill`` (simulated − measured seconds; they add up to the TTFT error)."""
    s = sim.set_index("request_id").loc[meas["request_id"]].reset_index()
    gm, gs = prefill_groups(meas), prefill_groups(s)
    d = pd.DataFrame({"request_id": meas["request_id"].to_numpy(), "tenant": meas["tenant"].to_numpy(),
                      "arrival_s": meas["arrival_s"].to_numpy()})
    for tag, r in (("m", meas.reset_index(drop=True)), ("s", s)):
        d[f"ttft_{tag}"] = (r["first_token_s"] - r["arrival_s"]).to_numpy()
        d[f"wait_{tag}"] = (r["start_s"] - r["arrival_s"]).to_numpy()
        d[f"prefill_{tag}"] = (r["first_token_s"] - r["start_s"]).to_numpy()
    d["n_m"] = [len(g) for g in gm]
    d["n_s"] = [len(g) for g in gs]
    d["regrouped"] = [a != b for a, b in zip(gm, gs, strict=True)]
    err = d["ttft_s"] - d["ttft_m"]
    d["admission"] = np.where(d["regrouped"], err, 0.0)
    d["queueing"] = np.where(d["regrouped"], 0.0, d["wait_s"] - d["wait_m"])
    d["prefill"] = np.where(d["regrouped"], 0.0, d["prefill_s"] - d["prefill_m"])
    return d


def prefill_shapes(seg: pd.DataFrame) -> pd.DataFrame:
    """The fetching prefills of a timeline by (sequences, distinct tenants, token bucket): count and sums of
    seconds, copy seconds and fetches."""
    p = seg[(seg["kind"] == "prefill") & (seg["expert_fetches"] > 0)].copy()
    p["k"] = [len(str(t).split(",")) for t in p["tenants"]]
    p["bucket"] = [token_bucket(int(t)) for t in p["tokens"]]
    p["dur"] = p["end_s"] - p["start_s"]
    return p.groupby(["n_seqs", "k", "bucket"]).agg(n=("dur", "size"), total_s=("dur", "sum"),
                                                    fetch_s=("fetch_s", "sum"), fetches=("expert_fetches", "sum"))


def _prefill_of(seg: pd.DataFrame, first_token_s: float, tol_s: float = 1e-6) -> tuple[pd.Series | None, bool]:
    """The prefill segment ending at ``first_token_s`` (None: none), and whether a swap segment precedes it."""
    seg = seg.sort_values("start_s").reset_index(drop=True)
    hit = seg.index[(seg["kind"] == "prefill") & ((seg["end_s"] - first_token_s).abs() <= tol_s)]
    if not len(hit):
        return None, False
    i = int(hit[0])
    return seg.loc[i], i > 0 and seg.at[i - 1, "kind"] == "swap"


def streamed_prefills(seg_m: pd.DataFrame, seg_s: pd.DataFrame, meas: pd.DataFrame, sim: pd.DataFrame
                      ) -> pd.DataFrame:
    """The fetching prefills that follow a swap in the measured timeline (reconfig_fast: under a streamed swap, run
    eagerly at their exact token count), one row per such prefill of one request: ``request_id``, ``tokens``, and
    measured / simulated seconds (``dur_m``/``dur_s``) and seconds outside their copies (``out_m``/``out_s``)."""
    rows = []
    s = sim.set_index("request_id")
    for r in meas.itertuples():
        pm, after = _prefill_of(seg_m, float(r.first_token_s))
        if pm is None or not after or pm["expert_fetches"] <= 0 or int(pm["n_seqs"]) != 1:
            continue
        ps, _ = _prefill_of(seg_s, float(s.at[r.request_id, "first_token_s"]))
        if ps is None:
            continue
        rows.append({"request_id": int(r.request_id), "tokens": int(pm["tokens"]),
                     "dur_m": float(pm["end_s"] - pm["start_s"]), "out_m": float(pm["end_s"] - pm["start_s"]
                                                                                 - pm["fetch_s"]),
                     "dur_s": float(ps["end_s"] - ps["start_s"]), "out_s": float(ps["end_s"] - ps["start_s"]
                                                                                 - ps["fetch_s"])})
    return pd.DataFrame(rows, columns=["request_id", "tokens", "dur_m", "out_m", "dur_s", "out_s"])


def analyse(folder: Path, link: str, options: dict[str, Any]) -> dict[str, Any]:
    """One run's comparison (module docstring)."""
    table = folder.parent / "tables" / "decode_table.csv"
    sim, row = simulate_run(folder, "profile_bucketed", table=str(table), link=link, options=options)
    seg = pd.read_parquet(folder / "segments.parquet")
    reqs = pd.read_parquet(folder / "requests.parquet")
    return {"run": f"{folder.parent.name}/{folder.name}", "row": row, "split": ttft_split(reqs, sim.requests),
            "shapes": (prefill_shapes(seg), prefill_shapes(sim.segments)),
            "streamed": streamed_prefills(seg, sim.segments, reqs, sim.requests)}


def streamed_lines(sp: pd.DataFrame) -> list[str]:
    """Prefills after a swap, pooled by prompt length (256 tokens, the runs' cap, or fewer): mean ms measured /
    simulated, whole and outside the copies."""
    lines = ["| prompt | prefills | ms per prefill meas. / sim. | outside copies ms meas. / sim. | outside copies "
             "meas. min–max |", "|---|---:|---|---|---|"]
    for name, g in (("256 tokens", sp[sp["tokens"] == 256]), ("fewer tokens", sp[sp["tokens"] != 256])):
        if not len(g):
            continue
        lines.append(f"| {name} | {len(g)} | {_ms(g['dur_m'].mean())} / {_ms(g['dur_s'].mean())} | "
                     f"{_ms(g['out_m'].mean())} / {_ms(g['out_s'].mean())} | {_ms(g['out_m'].min())}–"
                     f"{_ms(g['out_m'].max())} |")
    return lines


def _ms(x: float) -> str:
    return "—" if not np.isfinite(x) else f"{1e3 * x:.1f}"


def shape_lines(meas: pd.DataFrame, sim: pd.DataFrame) -> list[str]:
    """A markdown table of prefill shapes, measured vs simulated (per prefill: ms, copy ms, fetches)."""
    lines = ["| sequences | tenants | token bucket | prefills meas. / sim. | ms per prefill meas. / sim. | Δ ms | "
             "copy ms meas. / sim. | fetches meas. / sim. | outside copies ms meas. / sim. |",
             "|---:|---:|---:|---|---|---:|---|---|---|"]
    for key in sorted(set(meas.index) | set(sim.index)):
        a = meas.loc[key] if key in meas.index else None
        b = sim.loc[key] if key in sim.index else None

        def per(r: pd.Series | None, c: str) -> float:
            return float(r[c]) / float(r["n"]) if r is not None and r["n"] else float("nan")

        d = per(a, "total_s") - per(b, "total_s")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {0 if a is None else int(a['n'])} / "
                     f"{0 if b is None else int(b['n'])} | {_ms(per(a, 'total_s'))} / {_ms(per(b, 'total_s'))} | "
                     f"{_ms(d)} | {_ms(per(a, 'fetch_s'))} / {_ms(per(b, 'fetch_s'))} | "
                     f"{per(a, 'fetches'):.1f} / {per(b, 'fetches'):.1f} | "
                     f"{_ms(per(a, 'total_s') - per(a, 'fetch_s'))} / {_ms(per(b, 'total_s') - per(b, 'fetch_s'))} |")
    return lines


def summary_cells(a: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """The run's summary row and its error parts (seconds per request)."""
    d, row = a["split"], a["row"]
    n, mean_m = len(d), float(d["ttft_m"].mean())
    parts = {k: float(d[k].sum()) / n for k in ("admission", "queueing", "prefill")}
    pct = {k: 100 * v / mean_m for k, v in parts.items()}
    cells = (f"| {a['run']} | {n} | {row['mean_ttft_s_measured']:.3f} / {row['mean_ttft_s_simulated']:.3f} s | "
             f"{row['mean_ttft_s_error_pct']:+.1f} % | {int(d['regrouped'].sum())} | "
             f"{int((d['n_m'] > 1).sum())} / {int((d['n_s'] > 1).sum())} | "
             + " | ".join(f"{pct[k]:+.1f} %" for k in ("admission", "queueing", "prefill"))
             + f" | {row['mean_turnaround_s_error_pct']:+.1f} % |")
    return cells, parts


def section(a: dict[str, Any]) -> str:
    d = a["split"].copy()
    lines = [f"### {a['run']}", "", *shape_lines(*a["shapes"]), "",
             "| request | tenant | arrival s | TTFT ms meas. / sim. | error | wait ms meas. / sim. | "
             "prefill ms meas. / sim. | sharing its prefill meas. / sim. | counted as |",
             "|---:|---:|---:|---|---:|---|---|---|---|"]
    for r in d.itertuples():
        err = 100 * (r.ttft_s - r.ttft_m) / r.ttft_m
        what = "admission" if r.regrouped else ("queueing" if abs(r.wait_s - r.wait_m) > abs(r.prefill_s - r.prefill_m)
                                                else "prefill")
        lines.append(f"| {r.request_id} | {r.tenant} | {r.arrival_s:.3f} | {_ms(r.ttft_m)} / {_ms(r.ttft_s)} | "
                     f"{err:+.1f} % | {_ms(r.wait_m)} / {_ms(r.wait_s)} | {_ms(r.prefill_m)} / {_ms(r.prefill_s)} | "
                     f"{r.n_m} / {r.n_s} | {what} |")
    sp = a["streamed"]
    if len(sp):
        lines += ["", "Prefills after a swap (request: prompt tokens, ms measured / simulated, outside the copies "
                  "measured / simulated): " + "; ".join(
                      f"{r.request_id}: {r.tokens} tok., {_ms(r.dur_m)} / {_ms(r.dur_s)}, {_ms(r.out_m)} / "
                      f"{_ms(r.out_s)}" for r in sp.itertuples()) + "."]
    lines.append("")
    return "\n".join(lines)


def _runs(targets: list[Path], globs: tuple[str, ...]) -> list[Path]:
    runs: list[Path] = []
    for t in targets:
        if (t / "segments.parquet").is_file():
            runs.append(t)
            continue
        for pattern in globs:
            for f in sorted(t.glob(pattern)):
                if (f / "segments.parquet").is_file():
                    doc = json.loads((f / "summary.json").read_text())
                    if doc["config"].get("gpus", 1) == 1 and len(doc.get("instances", [])) == 1:
                        runs.append(f)
    return runs


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] in ("-h", "--help"):
        print(__doc__)
        return
    out = Path(args[0])
    link, globs, options, targets = "table", DEFAULT_GLOBS, {}, []
    for a in args[1:]:
        key, eq, value = a.partition("=")
        if not eq:
            targets.append(Path(a))
        elif key == "link":
            link = value
        elif key == "glob":
            globs = tuple(value.split(","))
        else:
            try:
                options[key] = json.loads(value)
            except ValueError:
                options[key] = value
    runs = _runs(targets, globs)
    if not runs:
        raise UserError(f"no whole-GPU served run matching {','.join(globs)} under {', '.join(map(str, targets))}")
    rows, secs, pooled_m, pooled_s, tot = [], [], [], [], {"admission": 0.0, "queueing": 0.0, "prefill": 0.0}
    streamed = []
    for f in runs:
        a = analyse(f, link, options)
        cells, _ = summary_cells(a)
        rows.append(cells)
        print(cells, flush=True)
        secs.append(section(a))
        pooled_m.append(a["shapes"][0])
        pooled_s.append(a["shapes"][1])
        streamed.append(a["streamed"])
        for k in tot:
            tot[k] += float(a["split"][k].sum())
    pm = pd.concat(pooled_m).groupby(level=[0, 1, 2]).sum()
    ps = pd.concat(pooled_s).groupby(level=[0, 1, 2]).sum()
    opts = " ".join(f"{k}={v}" for k, v in options.items())
    head = [f"# TTFT errors split into admission, queueing and prefill (`link={link}`{', ' + opts if opts else ''})",
            "", "Written by `PYTHONPATH=. python reports/validation/realtime/ttft_residuals.py " + " ".join(args)
            + "` (see its docstring). Error parts: simulated − measured TTFT summed over the run's requests, per "
            "request, as % of the measured mean TTFT (they add up to the mean TTFT error). *Admission*: requests the "
            "simulator prefilled with other requests than the runtime did (their whole error); *queueing*: the "
            "others' wait before their prefill; *prefill*: the others' prefill step.", "",
            "| run | requests | mean TTFT meas. / sim. | error | re-grouped requests | requests in shared prefills "
            "meas. / sim. | admission | queueing | prefill | mean turnaround error |",
            "|---|---:|---|---:|---:|---|---:|---:|---:|---:|", *rows, "",
            "Summed over the runs above (seconds, simulated − measured TTFT): "
            + ", ".join(f"{k} {v:+.3f} s" for k, v in tot.items()) + ".", "",
            "Fetching prefills pooled over the runs above, by shape (measured vs simulated, per prefill):", "",
            *shape_lines(pm, ps), ""]
    sp = pd.concat(streamed, ignore_index=True)
    if len(sp):
        head += ["Fetching prefills of one sequence right after a swap (reconfig_fast: under its streamed swap, run "
                 "eagerly at the exact prompt length), pooled over the runs above:", "", *streamed_lines(sp), ""]
    out.write_text("\n".join(head + secs) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    exit_on_user_error(main)()
