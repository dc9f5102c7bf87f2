"""What the runtime's timelines (``python -m moesim.serve ... timeline=true``) say about instances sharing a host link.

    python reports/validation/realtime/timeline_analysis.py OUT.md RUN [RUN ...]

For each served run with ``timeline.parquet`` and two or more instances fetching host experts (mig slices, fleet
GPUs), from the timeline alone (no simulation; torch- and simpy-free):

* **steps by class** — each fetching step as a prefill or a decode step (from the runtime's ``segments.parquet``),
  *alone* (no other instance in a fetching step for more than 5 % of it) or *beside* another instance's fetching
  prefill or decode step (for more than 80 % of it; *partial* otherwise): count, mean step, of it the copies (from
  the stream reaching each copy to its end, so waiting behind other copies included) and the rest, in ms;
* **late copies** — copies whose stream reached them more than 1 ms after their instance was ready to issue them
  (its routing read had returned and its previous copy had ended), and how many of those started within 0.5 ms of
  another instance's routing read returning (a host thread held back by another's synchronous read);
* **link carried** — while two or more instances were in fetching steps, the copies that ended then, each at the
  median copy time of steps alone, over that time: the share of the link's rate used (1: never idle).

Writes ``OUT.md`` (a table per run) and prints it. Times in ms unless marked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

LATE_S = 1e-3  # a copy is late when its stream reached it this long after its instance was ready
NEAR_S = 0.5e-3  # … and held back by another instance's routing read when it started this soon after that read


def step_kinds(tl: pd.DataFrame, seg: pd.DataFrame) -> pd.DataFrame:
    """The timeline's fetching steps with ``phase`` (prefill / decode, from the segment holding each step), ``dur``,
    ``copy_s`` (their copies' spans summed) and ``ctx`` (alone / beside_prefill / beside_decode / partial)."""
    st = tl[(tl["kind"] == "step")].copy()
    st["dur"] = st["end_s"] - st["start_s"]
    st["phase"] = "decode"
    for inst, s in seg.groupby("instance"):
        pre = s[s["kind"] == "prefill"]
        mine = st["instance"] == inst
        mid = (st["start_s"] + st["end_s"]) / 2
        for a, b in zip(pre["start_s"], pre["end_s"], strict=True):
            st.loc[mine & (mid >= a) & (mid <= b), "phase"] = "prefill"
    copies = tl[tl["kind"].isin(["copy", "copies"])]
    st["copy_s"] = 0.0
    for i, s in st.iterrows():
        c = copies[(copies["instance"] == s["instance"]) & (copies["start_s"] >= s["start_s"] - 1e-6)
                   & (copies["end_s"] <= s["end_s"] + 1e-6)]
        st.at[i, "copy_s"] = float((c["end_s"] - c["start_s"]).sum())
    fetching = st[st["fetches"] > 0]
    ctx = []
    for _, s in st.iterrows():
        other = fetching[fetching["instance"] != s["instance"]]
        ov = (np.minimum(other["end_s"], s["end_s"]) - np.maximum(other["start_s"], s["start_s"])).clip(lower=0)
        cover = float(ov.sum()) / s["dur"] if s["dur"] > 0 else 0.0
        if cover < 0.05:
            ctx.append("alone")
        elif cover > 0.8:
            ctx.append(f"beside_{other.loc[ov.idxmax(), 'phase']}")
        else:
            ctx.append("partial")
    st["ctx"] = ctx
    return st[st["fetches"] > 0]


def late_copies(tl: pd.DataFrame) -> tuple[int, int, int, float]:
    """(copies, late copies, of them started just after another instance's routing read, their mean delay s)."""
    n = late = near = 0
    delays = []
    for inst, mine in tl.groupby("instance"):
        others = np.sort(tl[(tl["instance"] != inst) & (tl["kind"] == "sync")]["end_s"].to_numpy())
        syncs = np.sort(mine[mine["kind"] == "sync"]["end_s"].to_numpy())
        prev_end = -np.inf
        for _, c in mine[mine["kind"] == "copy"].sort_values("start_s").iterrows():
            n += 1
            k = np.searchsorted(syncs, c["start_s"] + 1e-6) - 1
            ready = syncs[k] if k >= 0 else c["start_s"]
            if ready < prev_end <= c["start_s"] + 1e-6:
                ready = prev_end
            prev_end = c["end_s"]
            if c["start_s"] - ready > LATE_S:
                late += 1
                delays.append(c["start_s"] - ready)
                j = np.searchsorted(others, c["start_s"] + 1e-6) - 1
                if j >= 0 and c["start_s"] - others[j] < NEAR_S:
                    near += 1
    return n, late, near, float(np.mean(delays)) if delays else 0.0


def link_carried(tl: pd.DataFrame, steps: pd.DataFrame) -> float:
    """Share of the link's rate carried while ≥ 2 instances were in fetching steps: the copies ending then, each
    at the median copy time of steps alone, over that time (1: the link never idle)."""
    edges = sorted([(t, +1) for t in steps["start_s"]] + [(t, -1) for t in steps["end_s"]])
    spans, depth, t0 = [], 0, 0.0
    for t, d in edges:
        if depth < 2 <= depth + d:
            t0 = t
        elif depth >= 2 > depth + d:
            spans.append((t0, t))
        depth += d
    total = sum(b - a for a, b in spans)
    alone = steps[steps["ctx"] == "alone"]
    cp = tl[tl["kind"] == "copy"]
    solo = []
    for _, s in alone.iterrows():
        c = cp[(cp["instance"] == s["instance"]) & (cp["start_s"] >= s["start_s"]) & (cp["end_s"] <= s["end_s"])]
        solo.extend((c["end_s"] - c["start_s"]).tolist())
    if total <= 0 or not solo:
        return float("nan")
    ends = cp["end_s"].to_numpy()
    n = sum(int(((ends > a) & (ends <= b)).sum()) for a, b in spans)
    return n * float(np.median(solo)) / total


def analyse(run: Path) -> str:
    tl = pd.read_parquet(run / "timeline.parquet")
    seg = pd.read_parquet(run / "segments.parquet")
    st = step_kinds(tl, seg)
    g = st.groupby(["phase", "ctx"]).agg(n=("dur", "size"), step=("dur", "mean"), copies=("copy_s", "mean"),
                                        fetches=("fetches", "mean"))
    g["rest"] = g["step"] - g["copies"]
    n, late, near, delay = late_copies(tl)
    carried = link_carried(tl, st)
    link = (f"the link carried {carried:.0%} of its rate while two or more instances were in fetching steps."
            if carried == carried else "never two instances in fetching steps with copies timed at once.")
    lines = [f"### {run.parent.name}/{run.name}", "",
             f"{n} copies; {late} late (stream reached them > 1 ms after their instance was ready, mean "
             f"{delay * 1e3:.1f} ms), {near} of them within 0.5 ms of another instance's routing read returning; "
             + link, "",
             "| step | beside | n | step ms | copies ms | rest ms | fetches |", "|---|---|---:|---:|---:|---:|---:|"]
    for (phase, ctx), r in g.iterrows():
        lines.append(f"| {phase} | {ctx} | {int(r['n'])} | {r['step'] * 1e3:.1f} | {r['copies'] * 1e3:.1f} | "
                     f"{r['rest'] * 1e3:.1f} | {r['fetches']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out, runs = Path(argv[0]), [Path(a) for a in argv[1:]]
    missing = [str(r) for r in runs if not (r / "timeline.parquet").is_file()]
    if missing:
        print(f"timeline_analysis: no timeline.parquet in {', '.join(missing)} (serve with timeline=true)",
              file=sys.stderr)
        return 2
    cmd = "python reports/validation/realtime/timeline_analysis.py " + " ".join(argv)
    text = f"# The runtime's timelines: instances sharing the host link\n\nWritten by `{cmd}` (see its docstring).\n\n"
    text += "\n".join(analyse(r) for r in runs)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
