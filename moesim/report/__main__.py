"""``python -m moesim.report D``: (re)build D/summary.csv and D/report.html from a sweep dir.

Works on a finished sweep and on one still running or interrupted (finished jobs only; the others are
listed). Options default to those the sweep ran with (its multirun.yaml).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from moesim.errors import UserError, exit_on_user_error


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Parse the command line and write the report."""
    ap = argparse.ArgumentParser(prog="python -m moesim.report", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path, help="a hydra sweep dir (holds one sub-dir per job)")
    ap.add_argument("--cdf-rate", type=float, help="per-tenant rate (req/s) of the CDF and the timeline")
    ap.add_argument("--timeline-window-s", type=float, help="timeline window (seconds)")
    ap.add_argument("--slo-target", type=float, help="share of requests within the SLO to sustain a rate")
    ap.add_argument("--out", type=Path, help="report path (default: SWEEP_DIR/report.html)")
    args = ap.parse_args(argv)

    from moesim.io import write_csv
    from moesim.report import build_report, options_from_sweep
    from moesim.sweep import SUMMARY_CSV, collect

    if not args.sweep_dir.is_dir():
        raise UserError(f"{args.sweep_dir}: not a directory; give a sweep dir (the hydra.sweep.dir of a multirun)")
    opts = options_from_sweep(args.sweep_dir)
    changes = {k: v for k, v in (("cdf_rate", args.cdf_rate), ("timeline_window_s", args.timeline_window_s),
                                 ("slo_target", args.slo_target)) if v is not None}
    if "slo_target" in changes and not 0 <= changes["slo_target"] <= 1:
        raise UserError(f"--slo-target={args.slo_target}: must be in [0, 1]")
    opts = dataclasses.replace(opts, **changes)
    df = collect(args.sweep_dir)
    csv = write_csv(args.sweep_dir / SUMMARY_CSV, df) if not df.empty else None
    html = build_report(args.sweep_dir, summary=df, options=opts, out=args.out)
    n_ok = int((df["status"] == "ok").sum())
    print(f"moesim: {n_ok} of {len(df)} jobs finished; table: {csv}")
    print(f"moesim: report: {html}")


if __name__ == "__main__":
    main()
