"""``python -m moesim.report D``: (re)build D/summary.csv and D/report.html from a sweep dir.

Works on a finished sweep and on one still running or interrupted (finished jobs only; the others are
listed). A job whose files cannot be read is listed as unreadable (one line each) and the report is built
from the rest. Options default to those the sweep ran with (its multirun.yaml); ``--slo-ttft-s`` and
``--slo-tpot-s`` recompute SLO attainment from the jobs' requests.parquet without re-running them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moesim.errors import UserError, exit_on_user_error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (a bad value: one-line UserError, never argparse's usage text)."""
    from moesim.report.options import add_arguments

    ap = argparse.ArgumentParser(prog="python -m moesim.report", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path, help="a hydra sweep dir (holds one sub-dir per job)")
    add_arguments(ap)
    ap.add_argument("--out", type=Path, help="report path (default: SWEEP_DIR/report.html)")

    def error(message: str) -> None:
        raise UserError(f"{message}; see python -m moesim.report --help")

    ap.error = error  # type: ignore[method-assign]
    return ap.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Parse the command line and write the report."""
    args = parse_args(argv)

    from moesim.io import write_csv
    from moesim.report import build_report
    from moesim.report.data import mark_unreadable_files
    from moesim.report.options import options_from_args, options_from_sweep
    from moesim.sweep import SUMMARY_CSV, collect

    if not args.sweep_dir.is_dir():
        raise UserError(f"{args.sweep_dir}: not a directory; give a sweep dir (the hydra.sweep.dir of a multirun)")
    base, note = options_from_sweep(args.sweep_dir)
    opts = options_from_args(base, args)
    df = collect(args.sweep_dir)
    if not df.empty:
        df = mark_unreadable_files(args.sweep_dir, df)
    csv = write_csv(args.sweep_dir / SUMMARY_CSV, df) if not df.empty else None
    html = build_report(args.sweep_dir, summary=df, options=opts, out=args.out,
                        notes=[note] if note else None)
    n_ok = int((df["status"] == "ok").sum())
    n_bad = int((df["status"] == "unreadable").sum())
    print(f"moesim: {n_ok} of {len(df)} jobs finished" + (f", {n_bad} unreadable" if n_bad else "")
          + f"; table: {csv}")
    print(f"moesim: report: {html}")


if __name__ == "__main__":
    main()
