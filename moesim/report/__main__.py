"""``python -m moesim.report D [key=value ...]``: (re)build D/summary.csv and D/report.html from a sweep dir.

Works on a finished sweep and on one still running or interrupted (finished jobs only; the others are
listed). A job whose files cannot be read is listed as unreadable (one line each) and the report is built
from the rest. Options default to those the sweep ran with (its multirun.yaml); ``slo_ttft_s=`` and
``slo_tpot_s=`` recompute SLO attainment from the jobs' requests.parquet without re-running them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moesim.errors import UserError, exit_on_user_error


@dataclass(frozen=True)
class ReportCommand:
    """The command line of ``python -m moesim.report`` (report options unset: the sweep's own).

    Attributes:
        sweep_dir: a hydra sweep dir (one sub-dir per job).
        out: report path; empty: SWEEP_DIR/report.html.
        cdf_rate: per-tenant rate (requests/s) of the CDF and the timeline, one of the swept rates; unset: the
            swept rate nearest the geometric middle.
        timeline_window_s: timeline window (seconds; the sweep's default 30).
        slo_target: share of requests within the SLO for a rate to count as sustained, in (0, 1].
        baselines: policies the headline table compares against (comma list; default mig,reconfig).
        compare_rates: per-tenant rates (requests/s, comma list; swept rates) the “vs” columns compare at;
            unset: every common rate (median of the per-rate ratios).
        slo_ttft_s: TTFT target (seconds): recompute SLO attainment from requests.parquet.
        slo_tpot_s: time-per-output-token target (seconds): recompute SLO attainment.
    """

    sweep_dir: str = ""
    out: str = ""
    cdf_rate: float | None = None
    timeline_window_s: float | None = None
    slo_target: float | None = None
    baselines: tuple[str, ...] | None = None
    compare_rates: tuple[float, ...] | None = None
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None


def parse_args(argv: list[str] | None) -> ReportCommand:
    """The command line: the sweep dir, then ``key=value`` options (``--key value`` works too)."""
    import sys

    from moesim.cli import parse_key_values

    cmd = parse_key_values(sys.argv[1:] if argv is None else argv, ReportCommand, prog="python -m moesim.report",
                           summary=__doc__.split("\n\n")[0], positional="sweep_dir",
                           examples=("python -m moesim.report multirun/2026-11-30/10-00-00",
                                     "python -m moesim.report D slo_ttft_s=1 slo_tpot_s=0.1 out=strict.html"))
    if not cmd.sweep_dir:
        raise UserError("give a sweep dir: python -m moesim.report SWEEP_DIR [key=value ...] (see --help)")
    if "," in cmd.sweep_dir:
        raise UserError(f"{cmd.sweep_dir!r}: one sweep dir at a time")
    return cmd


def _check_one_sweep(sweep_dir: Path) -> None:
    """Refuse a folder that holds the jobs of several sweeps or runs (e.g. ``multirun/`` or a scratch folder):
    their jobs would be mixed into one report. A sweep dir has multirun.yaml (hydra writes it first)."""
    from moesim.sweep import _job_dirs

    if (sweep_dir / "multirun.yaml").exists():
        return
    # a single run's own dir (its summary.json at the top) is one job, not a second sweep
    parents = sorted({d.parent.relative_to(sweep_dir).as_posix() if d != sweep_dir else "."
                      for d in _job_dirs(sweep_dir)})
    if len(parents) > 1:
        shown = ", ".join(f"{p}/" for p in parents[:3]) + (", …" if len(parents) > 3 else "")
        raise UserError(f"{sweep_dir}: holds the jobs of {len(parents)} different sweeps or runs ({shown}) and no "
                        "multirun.yaml; give one sweep dir (the folder hydra.sweep.dir named, with multirun.yaml)")


def _check_other_tool(sweep_dir: Path) -> None:
    """The folder of a capacity search or of a served run: refused naming the tool that made it and the one
    that reads it (they were "no jobs found … is it a sweep dir?" and "./summary.json: missing policy, rate,
    seed, tenants")."""
    if (sweep_dir / "search.csv").is_file() and not (sweep_dir / "multirun.yaml").exists():
        raise UserError(f"{sweep_dir}: holds a capacity search (python -m moesim.search), whose own report.html "
                        "the search writes; python -m moesim.report reads simulate sweeps (hydra.sweep.dir)")
    summary = sweep_dir / "summary.json"
    if summary.is_file():
        import json

        try:
            doc = json.loads(summary.read_text())
        except (OSError, ValueError):
            return
        if isinstance(doc, dict) and isinstance(doc.get("config"), dict) and "backend" in doc["config"]:
            raise UserError(f"{sweep_dir}: holds a served run (python -m moesim.serve); python -m "
                            f"moesim.serve.validate {sweep_dir} simulates it again and writes the errors; python -m "
                            "moesim.report reads simulate sweeps (hydra.sweep.dir)")


def _check_some_job(sweep_dir: Path, df: Any) -> None:
    """A folder none of whose summary.json / error.json files is a moesim job's and that hydra never ran in
    (no ``.hydra/``), e.g. a consolidation study's folder: refused in one line before summary.csv and
    report.html are written into it (they were, with "0 of 5 jobs finished, 5 unreadable")."""
    if df.empty or not (df["status"] == "unreadable").all():
        return
    if next(sweep_dir.rglob(".hydra"), None) is not None:  # a sweep whose jobs are all damaged: reported
        return
    first = str(df["error"].dropna().iloc[0]) if "error" in df and df["error"].notna().any() else "unreadable"
    raise UserError(f"{sweep_dir}: no moesim simulate job in it: none of its {len(df)} job file(s) is a job's "
                    f"(first: {df['job'].iloc[0]}/{first}); give the hydra.sweep.dir of a sweep or the "
                    "hydra.run.dir of a run")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Parse the command line and write the report."""
    args = parse_args(argv)

    from moesim.io import write_csv
    from moesim.report import build_report
    from moesim.report.data import mark_unreadable_files
    from moesim.report.options import options_from_args, options_from_sweep
    from moesim.sweep import SUMMARY_CSV, collect

    sweep_dir = Path(args.sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: not a directory; give a sweep dir (the hydra.sweep.dir of a multirun)")
    _check_other_tool(sweep_dir)
    _check_one_sweep(sweep_dir)
    base, note = options_from_sweep(sweep_dir)
    opts = options_from_args(base, dataclasses.asdict(args))
    if args.out:  # before anything is written: --out DIR was an IsADirectoryError traceback
        from moesim.outdir import check_writable

        check_writable(args.out, "out", is_file=True)
        if Path(args.out).suffix.lower() not in (".html", ".htm"):
            # out=S/summary.csv (or a job's requests.parquet) was overwritten with the HTML page
            raise UserError(f"out={args.out}: the report is an HTML page; give a path ending in .html")
    df = collect(sweep_dir)
    _check_some_job(sweep_dir, df)
    if not df.empty:
        df = mark_unreadable_files(sweep_dir, df)
    csv = write_csv(sweep_dir / SUMMARY_CSV, df) if not df.empty else None
    html = build_report(sweep_dir, summary=df, options=opts, out=Path(args.out) if args.out else None,
                        notes=[note] if note else None,
                        given=frozenset(k for k in ("cdf_rate", "compare_rates") if getattr(args, k) is not None))
    n_ok = int((df["status"] == "ok").sum())
    n_bad = int((df["status"] == "unreadable").sum())
    print(f"moesim: {n_ok} of {len(df)} jobs finished" + (f", {n_bad} unreadable" if n_bad else "")
          + f"; table: {csv}")
    print(f"moesim: report: {html}")


if __name__ == "__main__":
    main()
