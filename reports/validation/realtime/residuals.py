"""Where the simulator's time differs from the runtime's, step class by step class.

    PYTHONPATH=. python reports/validation/realtime/residuals.py OUT.md CALL[/RUN] ... [link=run|table] [glob=*_host*]
        [key=value ...]

For each served run (a folder with ``segments.parquet`` and ``summary.json`` written by ``python -m moesim.serve``;
a call folder stands for its runs matching ``glob``, whole-GPU runs only: one instance), simulate it as
``python -m moesim.serve.validate CALL sim_cost=profile_bucketed table=CALL/tables/decode_table.csv`` does
(``moesim.serve.validate.simulate_run``; ``link=run`` by default: each run at its own measured copy rate, so a
drifting link is not counted as a step-model residual; further ``key=value`` are cost options, e.g.
``host_gap_s=0``) and compare the two timelines:

* **per step class** — prefills that fetch (alone, or under a streamed swap), decode steps (that fetch, by batch
  size and distinct tenants; a decode segment is a run of ``steps`` steps), swaps: count, mean seconds per step,
  and of them copy seconds (``fetch_s``) and fetches per step; ``Δ/step`` = measured − simulated mean (ms);
* **gaps** — the time between consecutive segments of the instance when it was not idle (the next segment starts
  without waiting for an arrival): the runtime's host scheduling, input preparation and graph lookup
  (``sched_s``), for which the simulator's timeline has no counterpart (its next step starts when the last ends);
  and the **admission latency** of a request arriving at an idle instance (its start − its arrival);
* **batches** — whether the simulator re-creates the runtime's sequence of steps (kind, sequences, tenants,
  steps): the share of segments matched in order (``difflib``) and the time of the first divergence;
* **excess** — measured − simulated busy time if each class's measured count had run at the simulator's mean
  (Σ count × Δ/step, per class), beside the run's measured − simulated turnaround, summed over requests.

Writes ``OUT.md`` (one section per run and a summary table). Times in seconds unless marked ms. Torch-free; needs
simpy.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.errors import UserError, exit_on_user_error
from moesim.serve.validate import simulate_run


@dataclass(frozen=True)
class ClassStat:
    """One step class of one timeline: ``n`` units (steps, or prefills/swaps/gaps), their seconds, copy seconds and
    fetches (sums)."""

    n: int
    total_s: float
    fetch_s: float
    fetches: float

    def per(self, x: float) -> float:
        return x / self.n if self.n else float("nan")


def _steps(seg: pd.DataFrame) -> np.ndarray:
    """Decode steps of each segment (measured: its ``steps`` column; simulated: tokens / sequences)."""
    if "steps" in seg:
        return seg["steps"].to_numpy(dtype=float)
    return np.where(seg["n_seqs"] > 0, seg["tokens"] / seg["n_seqs"].clip(lower=1), 1.0)


def classify(seg: pd.DataFrame) -> pd.DataFrame:
    """The segments of one instance with ``cls`` (step class), ``units`` (steps) and ``dur`` columns."""
    seg = seg.sort_values("start_s").reset_index(drop=True).copy()
    # a streamed swap's segment spans its whole copy, under the prefill that starts meanwhile: count only the
    # time before the next segment starts (what the instance waited for it)
    nxt = seg["start_s"].shift(-1).fillna(np.inf)
    seg["dur"] = np.minimum(seg["end_s"], np.maximum(nxt, seg["start_s"])) - seg["start_s"]
    seg["units"] = np.where(seg["kind"] == "decode", _steps(seg), 1.0)
    prev_swap_end = -np.inf
    cls = []
    for r in seg.itertuples():
        if r.kind == "swap":
            prev_swap_end = r.end_s if not np.isfinite(getattr(r, "copy_s", np.nan)) else \
                max(r.end_s, r.start_s + float(r.copy_s))
            cls.append("swap")
        elif r.kind == "prefill":
            under = r.start_s < prev_swap_end + 1e-4 and prev_swap_end > -np.inf and r.Index > 0 \
                and seg.at[r.Index - 1, "kind"] == "swap"
            cls.append("prefill" + (" fetching" if r.expert_fetches > 0 else " resident")
                       + (" after swap" if under else ""))
        else:
            k = len(str(r.tenants).split(",")) if str(r.tenants) else 1
            cls.append(f"decode B={r.n_seqs} k={k}" + (" fetching" if r.expert_fetches > 0 else ""))
    seg["cls"] = cls
    return seg


def class_stats(seg: pd.DataFrame) -> dict[str, ClassStat]:
    out = {}
    for c, g in seg.groupby("cls"):
        out[str(c)] = ClassStat(int(g["units"].sum()), float(g["dur"].sum()), float(g["fetch_s"].sum()),
                                float(g["expert_fetches"].sum()))
    return out


def gaps(seg: pd.DataFrame, arrivals: np.ndarray) -> tuple[ClassStat, ClassStat]:
    """(busy gaps between consecutive segments, idle-to-start admissions): a gap is idle when an arrival falls in it
    after the previous segment ended (the instance waited for it); its admission latency is then start − that
    arrival. Streamed swaps overlap their prefill (negative gap): skipped."""
    busy, lat = [], []
    ends = seg["end_s"].to_numpy()
    starts = seg["start_s"].to_numpy()
    kinds = seg["kind"].to_numpy()
    for i in range(1, len(seg)):
        g = starts[i] - ends[i - 1]
        if g < 0 or kinds[i - 1] == "swap":
            continue
        inside = arrivals[(arrivals > ends[i - 1]) & (arrivals <= starts[i])]
        if len(inside):
            lat.append(starts[i] - inside.max())
        else:
            busy.append(g)
    return (ClassStat(len(busy), float(sum(busy)), 0.0, 0.0), ClassStat(len(lat), float(sum(lat)), 0.0, 0.0))


def _add(a: ClassStat, b: ClassStat) -> ClassStat:
    return ClassStat(a.n + b.n, a.total_s + b.total_s, a.fetch_s + b.fetch_s, a.fetches + b.fetches)


def batches_match(m: pd.DataFrame, s: pd.DataFrame) -> tuple[float, float]:
    """(share of segments in the same order with the same kind, sequences, tenants and steps; start of the first
    measured segment that differs, seconds, NaN when none)."""
    def keys(d: pd.DataFrame) -> list[tuple]:
        return [(r.kind, int(r.n_seqs), str(r.tenants), int(r.units)) for r in d.itertuples()]

    a, b = keys(m), keys(s)
    sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    share = 2.0 * sum(x.size for x in sm.get_matching_blocks()) / max(1, len(a) + len(b))
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if first is None and len(a) != len(b):
        first = min(len(a), len(b))
    t = float(m["start_s"].iloc[first]) if first is not None and first < len(m) else float("nan")
    return share, t


def analyse(folder: Path, link: str, options: dict[str, Any]) -> dict[str, Any]:
    """One run's comparison (module docstring)."""
    call = folder.parent
    table = call / "tables" / "decode_table.csv"
    sim, row = simulate_run(folder, "profile_bucketed", table=str(table), link=link, options=options)
    meas = pd.read_parquet(folder / "segments.parquet")
    reqs = pd.read_parquet(folder / "requests.parquet")
    per_m = {str(i): classify(g) for i, g in meas.groupby("instance")}
    per_s = {str(i): classify(g) for i, g in sim.segments.groupby("instance")}
    m = pd.concat(per_m.values(), ignore_index=True)
    s = pd.concat(per_s.values(), ignore_index=True)
    mg, ml, sg, sl = (ClassStat(0, 0.0, 0.0, 0.0),) * 4
    n_seg = n_same = 0.0
    first = float("inf")
    for inst in sorted(set(per_m) | set(per_s)):
        a, b = per_m.get(inst, m.iloc[:0]), per_s.get(inst, s.iloc[:0])
        idx = re.match(r"[a-z]+(\d+)", inst)  # "mig1:3g.71gb" serves the requests of instance 1
        reqs_i = reqs[reqs["instance"] == int(idx.group(1))] if len(per_m) > 1 and idx else reqs
        arrivals = np.sort(reqs_i["arrival_s"].to_numpy())
        mg, ml = (_add(x, y) for x, y in zip((mg, ml), gaps(a, arrivals), strict=True))
        sg, sl = (_add(x, y) for x, y in zip((sg, sl), gaps(b, arrivals), strict=True))
        share, f = batches_match(a, b)
        n_seg += len(a) + len(b)
        n_same += share * (len(a) + len(b))
        first = min(first, f) if np.isfinite(f) else first
    share = n_same / max(1.0, n_seg)
    first = first if np.isfinite(first) else float("nan")
    sr = sim.requests.set_index("request_id").loc[reqs["request_id"]]
    turn_m = float((reqs["finish_s"] - reqs["arrival_s"]).sum())
    turn_s = float((sr["finish_s"].to_numpy() - sr["arrival_s"].to_numpy()).sum())
    doc = json.loads((folder / "summary.json").read_text())
    overlap = float((doc.get("policy_info") or {}).get("fetch_overlap") or 0.0) > 0
    return {"run": f"{call.name}/{folder.name}", "overlap": overlap,
            "meas": class_stats(m), "sim": class_stats(s), "gap": (mg, sg),
            "admit": (ml, sl), "share": share, "first": first, "row": row, "sched_s": float(meas["sched_s"].sum()),
            "turn": (turn_m, turn_s), "busy": (float(m["dur"].sum()), float(s["dur"].sum()))}


def _ms(x: float) -> str:
    return "—" if not np.isfinite(x) else f"{1e3 * x:.1f}"


def section(a: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """One run's markdown section, and its excess per class family (seconds)."""
    row = a["row"]
    lines = [f"### {a['run']}", "",
             f"mean turnaround {row['mean_turnaround_s_measured']:.3f} / {row['mean_turnaround_s_simulated']:.3f} s "
             f"({row['mean_turnaround_s_error_pct']:+.1f} %), mean TTFT {row['mean_ttft_s_error_pct']:+.1f} %; "
             f"batches matched {100 * a['share']:.0f} %"
             + (f", first divergence at {a['first']:.2f} s" if np.isfinite(a["first"]) else ", identical") + "; "
             f"busy time {a['busy'][0]:.3f} / {a['busy'][1]:.3f} s; Σ turnaround {a['turn'][0]:.3f} / "
             f"{a['turn'][1]:.3f} s.", "",
             "| class | units meas. / sim. | ms per unit meas. / sim. | Δ ms | copy ms per unit meas. / sim. | "
             "fetches per unit meas. / sim. | outside copies ms meas. / sim. | excess s (meas. count × Δ) |",
             "|---|---|---|---:|---|---|---|---:|"]
    fam: dict[str, float] = {}
    for c in sorted(set(a["meas"]) | set(a["sim"])):
        mm, ss = a["meas"].get(c), a["sim"].get(c)
        z = ClassStat(0, 0.0, 0.0, 0.0)
        mm, ss = mm or z, ss or z
        d = mm.per(mm.total_s) - ss.per(ss.total_s)
        ex = mm.n * d if np.isfinite(d) else 0.0
        f = c.split(" ")[0] + (" fetching" if "fetching" in c else "")
        fam[f] = fam.get(f, 0.0) + ex
        lines.append(f"| {c} | {mm.n} / {ss.n} | {_ms(mm.per(mm.total_s))} / {_ms(ss.per(ss.total_s))} | {_ms(d)} | "
                     f"{_ms(mm.per(mm.fetch_s))} / {_ms(ss.per(ss.fetch_s))} | {mm.per(mm.fetches):.2f} / "
                     f"{ss.per(ss.fetches):.2f} | {_ms(mm.per(mm.total_s - mm.fetch_s))} / "
                     f"{_ms(ss.per(ss.total_s - ss.fetch_s))} | {ex:+.3f} |")
    (mg, sg), (ml, sl) = a["gap"], a["admit"]
    lines.append(f"| gap between busy steps | {mg.n} / {sg.n} | {_ms(mg.per(mg.total_s))} / {_ms(sg.per(sg.total_s))}"
                 f" | | | | | {mg.total_s - sg.total_s:+.3f} |")
    lines.append(f"| admission at an idle instance | {ml.n} / {sl.n} | {_ms(ml.per(ml.total_s))} / "
                 f"{_ms(sl.per(sl.total_s))} | | | | | {ml.total_s - sl.total_s:+.3f} |")
    fam["gaps"] = mg.total_s - sg.total_s + ml.total_s - sl.total_s
    lines.append("")
    return "\n".join(lines), fam


def pooled(analyses: list[dict[str, Any]]) -> list[str]:
    """Per fetch mode (synchronous / overlapped fetches) and step family (decode steps, prefills not under a swap
    that fetch): measured − simulated copy time and time outside the copies, per measured fetch (ms), each class's
    simulated mean per unit weighted by its measured count (classes the simulator also ran only)."""
    acc: dict[tuple[str, str], list[float]] = {}
    for a in analyses:
        mode = "overlapped" if a["overlap"] else "synchronous"
        for c, mm in a["meas"].items():
            ss = a["sim"].get(c)
            if "fetching" not in c or "after swap" in c or ss is None or not ss.n or not mm.fetches:
                continue
            fam = c.split(" ")[0]
            v = acc.setdefault((mode, fam), [0.0, 0.0, 0.0, 0.0, 0.0, 0])
            v[0] += mm.fetches
            v[1] += mm.fetch_s - mm.n * ss.per(ss.fetch_s)
            v[2] += (mm.total_s - mm.fetch_s) - mm.n * ss.per(ss.total_s - ss.fetch_s)
            v[3] += mm.fetch_s
            v[4] += mm.n * ss.per(ss.fetches)
            v[5] += mm.n
    lines = ["| fetches | steps | units | measured fetches / simulated | copy meas. − sim., ms per fetch | "
             "outside copies meas. − sim., ms per fetch | measured copy ms per fetch |", "|---|---|---:|---|---:|---:|---:|"]
    for (mode, fam), v in sorted(acc.items()):
        lines.append(f"| {mode} | {fam} | {int(v[5])} | {v[0]:.0f} / {v[4]:.0f} | {1e3 * v[1] / v[0]:+.3f} | "
                     f"{1e3 * v[2] / v[0]:+.3f} | {1e3 * v[3] / v[0]:.3f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] in ("-h", "--help"):
        print(__doc__)
        return
    out = Path(args[0])
    link, pattern, instances, options, targets = "run", "*_host*", "one", {}, []
    for a in args[1:]:
        key, eq, value = a.partition("=")
        if not eq:
            targets.append(Path(a))
        elif key == "link":
            link = value
        elif key == "glob":
            pattern = value
        elif key == "instances":
            instances = value
        else:
            try:
                options[key] = json.loads(value)
            except ValueError:
                options[key] = value
    runs: list[Path] = []
    for t in targets:
        if (t / "segments.parquet").is_file():
            runs.append(t)
            continue
        for f in sorted(t.glob(pattern)):
            if (f / "segments.parquet").is_file():
                doc = json.loads((f / "summary.json").read_text())
                if doc["config"].get("gpus", 1) == 1 and (instances == "all" or len(doc.get("instances", [])) == 1):
                    runs.append(f)
    if not runs:
        raise UserError(f"no whole-GPU served run (segments.parquet, one instance) under {', '.join(map(str, targets))}")
    secs, summary, analyses = [], [], []
    keys = ("prefill fetching", "decode fetching", "swap", "gaps")
    for f in runs:
        a = analyse(f, link, options)
        analyses.append(a)
        text, fam = section(a)
        secs.append(text)
        row = a["row"]
        total = sum(fam.values())
        summary.append(f"| {a['run']} | {row['mean_turnaround_s_error_pct']:+.1f} % | {100 * a['share']:.0f} % | "
                       + " | ".join(f"{fam.get(k, 0.0):+.3f}" for k in keys)
                       + f" | {total:+.3f} | {a['busy'][0] - a['busy'][1]:+.3f} | {a['turn'][0] - a['turn'][1]:+.3f} |")
        print(summary[-1], flush=True)
    opts = " ".join(f"{k}={v}" for k, v in options.items())
    head = [f"# Measured vs simulated time per step class (`link={link}`{', ' + opts if opts else ''})", "",
            "Written by `PYTHONPATH=. python reports/validation/realtime/residuals.py " + " ".join(args) + "` (see its docstring). "
            "Excess: measured − simulated seconds if each class's measured count ran at the simulator's mean "
            "per unit; positive: the runtime is slower.", "",
            "| run | mean turnaround error | batches matched | excess: prefills fetching | decode fetching | swaps | "
            "gaps + admission | all | busy time meas. − sim. | Σ turnaround meas. − sim. |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *summary, "",
            "Pooled over the runs above: fetching steps by fetch mode (`fetch_overlap` of the policy), measured − "
            "simulated per measured fetch.", "", *pooled(analyses), ""]
    out.write_text("\n".join(head + secs) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    exit_on_user_error(main)()
