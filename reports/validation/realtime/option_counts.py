"""Runs within 5 % on all four figures, per call, with and without cost options (a before/after table).

    PYTHONPATH=. python reports/validation/realtime/option_counts.py OUT.md CALL ... [link=table|run]
        --before key=value ... --after key=value ...

Each call folder is simulated as ``python -m moesim.serve.validate CALL sim_cost=profile_bucketed
table=CALL/tables/decode_table.csv [link=...]`` does (``moesim.serve.validate.simulate_run``), once with the
``--before`` cost options and once with the ``--after`` ones (``profile_bucketed``'s keys; values parsed as JSON
where they parse, e.g. ``fetch_ffn=false``). Writes ``OUT.md``: per run the four figures (signed mean turnaround and
mean TTFT errors, per-request median absolute errors, percent) before → after, and per call the counts within 5 %.
Nothing is written into the call folders. Torch-free; needs simpy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from moesim.errors import UserError, exit_on_user_error
from moesim.serve.validate import FIGURES, _is_served_run, _order, simulate_run, within_target


def _value(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


def _fig(row: dict[str, Any]) -> str:
    e = [float(row[k]) for k in FIGURES]
    return f"{e[0]:+.1f} / {e[1]:+.1f} / {e[2]:.1f} / {e[3]:.1f}"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] in ("-h", "--help"):
        print(__doc__)
        return
    out, calls, link = Path(args[0]), [], "table"
    sets: dict[str, dict[str, Any]] = {"before": {}, "after": {}}
    cur = None
    for a in args[1:]:
        if a in ("--before", "--after"):
            cur = a[2:]
            continue
        key, eq, value = a.partition("=")
        if not eq:
            calls.append(Path(a))
        elif cur is None and key == "link":
            link = value
        elif cur is None:
            raise UserError(f"argument {a!r}: cost options go after --before or --after")
        else:
            sets[cur][key] = _value(value)
    lines = [f"# Within 5 % on all four figures, before → after (`link={link}`)", "",
             "Written by `PYTHONPATH=. python reports/validation/realtime/option_counts.py " + " ".join(args) + "`. "
             "Figures: mean turnaround error / mean TTFT error / per-request median abs. error turnaround / TTFT, "
             "percent.", "",
             "| run | before | after | within 5 % before → after |", "|---|---|---|---|"]
    totals = []
    for call in calls:
        runs = sorted((p.parent for p in call.glob("*/summary.json") if _is_served_run(p.parent)),
                      key=lambda p: _order(p.name))
        if not runs:
            raise UserError(f"{call}: no served run folder in it")
        table = str(call / "tables" / "decode_table.csv")
        n = {"before": 0, "after": 0}
        for run in runs:
            rows = {k: simulate_run(run, "profile_bucketed", table=table, link=link, options=o)[1]
                    for k, o in sets.items()}
            ok = {k: within_target(r) for k, r in rows.items()}
            for k in n:
                n[k] += ok[k]
            yn = {True: "yes", False: "no"}
            lines.append(f"| {call.name}/{run.name} | {_fig(rows['before'])} | {_fig(rows['after'])} | "
                         f"{yn[ok['before']]} → {yn[ok['after']]} |")
            print(lines[-1], flush=True)
        totals.append(f"| {call.name} | {len(runs)} | {n['before']} | {n['after']} |")
    opts = {k: " ".join(f"{a}={b}" for a, b in o.items()) or "(defaults)" for k, o in sets.items()}
    lines += ["", f"Before: {opts['before']}; after: {opts['after']}.", "",
              "| call | runs | within 5 % before | after |", "|---|---:|---:|---:|", *totals]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(totals) - 2:]))


if __name__ == "__main__":
    exit_on_user_error(main)()
