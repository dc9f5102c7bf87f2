"""Hydra glue: the job body, and the sweep callback that tracks progress and aggregates at the end.

At the end of a multirun the sweep dir gets ``summary.csv`` (one row per job, failed ones included with
their error) and ``report.html``; the report path is printed. A failed job writes ``error.json`` in its dir
and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from moesim import job
from moesim.config import job_spec, sweep_jobs
from moesim.errors import UserError, exit_on_user_error
from moesim.io import write_csv

log = logging.getLogger(__name__)

SUMMARY_CSV = "summary.csv"
REPORT_HTML = "report.html"

# summary.csv: identification first, then metrics, then bookkeeping
ID_COLUMNS = ["job", "status", "policy", "model", "gpu", "workload", "rate", "tenants", "seed", "cost",
              "cost_option", "cost_derived"]
TAIL_COLUMNS = ["cost_source", "wall_s", "error", "overrides"]
SKIP_KEYS = {"params", "policy_info", "traceback"}


def run_hydra_job(cfg: DictConfig) -> None:
    """The task function: one job in hydra's output dir; in a multirun a failure is recorded, not raised."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    out = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    extra = {"cost_option": hc.runtime.choices.get("cost")}  # e.g. paper_a100, a preset of roofline
    if not multirun:
        _run_single(cfg, out, overrides, extra)
        return
    ident: dict[str, Any] = {}
    try:
        spec = job_spec(cfg)
        ident = spec.describe()
        job.run(spec, out, progress=bool(cfg.progress), overrides=overrides, extra=extra)
    except Exception as exc:
        rec = job.record_failure(out, exc, job=ident, overrides=overrides)
        log.error("moesim: job %s failed (%s): %s", out.name, " ".join(overrides), rec["error"])


@exit_on_user_error
def _run_single(cfg: DictConfig, out: Path, overrides: list[str], extra: dict[str, Any]) -> None:
    spec = job_spec(cfg)
    progress = True if cfg.progress is None else bool(cfg.progress)
    s = job.run(spec, out, progress=progress, overrides=overrides, extra=extra, announce=True)
    rejected = f" ({s['rejected']} rejected)" if s.get("rejected") else ""
    print(f"moesim: {s['n_requests']} requests{rejected}, mean turnaround {s['mean_turnaround_s']:.3f} s, "
          f"mean TTFT {s['mean_ttft_s']:.3f} s, {s['throughput_rpm']:.2f} req/min; "
          f"outputs in {out}/ ({job.SUMMARY}, {job.REQUESTS})")


# ---- aggregation --------------------------------------------------------------------------------------


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Directories hydra created for jobs (they hold .hydra/) or that hold a job's result."""
    dirs = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml") if p.parent.parent != sweep_dir}
    dirs |= {p.parent for p in sweep_dir.rglob(job.SUMMARY)}
    dirs |= {p.parent for p in sweep_dir.rglob(job.ERROR)}
    dirs |= {p.parent for p in sweep_dir.rglob(job.REQUESTS)}
    return sorted(dirs, key=lambda d: (len(d.parts), _natural(d.relative_to(sweep_dir).as_posix())))


def _natural(s: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in s.replace("/", " / ").split())


def _read_overrides(d: Path) -> list[str]:
    p = d / ".hydra" / "overrides.yaml"
    return [str(x) for x in OmegaConf.load(p)] if p.exists() else []


def collect(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job of a (possibly unfinished) sweep: ``status`` ok, failed or incomplete.

    Metrics come from each job's summary.json; failed jobs carry ``error``; a job dir with neither file
    (running, or killed) is ``incomplete``.
    """
    root = Path(sweep_dir)
    rows = []
    for d in _job_dirs(root):
        rel = d.relative_to(root).as_posix()
        if (d / job.SUMMARY).exists():
            rec = json.loads((d / job.SUMMARY).read_text())
        elif (d / job.ERROR).exists():
            rec = json.loads((d / job.ERROR).read_text())
        else:
            rec = {"status": "incomplete", "overrides": _read_overrides(d)}
        row = {k: v for k, v in rec.items() if k not in SKIP_KEYS}
        row["job"] = rel
        row["overrides"] = " ".join(rec.get("overrides") or [])
        if rec["status"] != "ok" and "policy" not in rec:
            row.update(_ident_from_overrides(rec.get("overrides") or []))
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=ID_COLUMNS + TAIL_COLUMNS)
    for c in ID_COLUMNS + TAIL_COLUMNS:
        if c not in df.columns:
            df[c] = pd.NA
    metric_cols = [c for c in df.columns if c not in ID_COLUMNS and c not in TAIL_COLUMNS]
    return df[ID_COLUMNS + metric_cols + TAIL_COLUMNS]


def _ident_from_overrides(overrides: list[str]) -> dict[str, Any]:
    """Best-effort identification of a job that never wrote its own from its overrides."""
    keys = {"policy": "policy", "workload.rate": "rate", "seed": "seed", "model": "model", "gpu": "gpu",
            "workload": "workload", "cost": "cost"}
    out: dict[str, Any] = {}
    for o in overrides:
        k, _, v = o.partition("=")
        if k in keys:
            out[keys[k]] = float(v) if k == "workload.rate" else int(v) if k == "seed" else v
    return out


def aggregate(sweep_dir: str | Path, *, quiet: bool = False) -> tuple[Path, Path]:
    """Write summary.csv and report.html into ``sweep_dir``; their paths."""
    from moesim.report import build_report

    root = Path(sweep_dir)
    df = collect(root)
    csv = write_csv(root / SUMMARY_CSV, df)
    html = build_report(root, summary=df)
    if not quiet:
        failed = df[df["status"] == "failed"]
        for _, r in failed.iterrows():
            print(f"moesim: job {r['job']} failed ({r['overrides']}): {r['error']}", file=sys.stderr)
        n_inc = int((df["status"] == "incomplete").sum())
        print(f"moesim: {int((df['status'] == 'ok').sum())} of {len(df)} jobs finished"
              + (f", {len(failed)} failed" if len(failed) else "")
              + (f", {n_inc} incomplete" if n_inc else "")
              + f"; table: {csv}", file=sys.stderr)
    return csv, html


# ---- the callback ---------------------------------------------------------------------------------------


class _Progress(threading.Thread):
    """Counts finished jobs (summary.json or error.json newer than the sweep's start) on a tqdm bar."""

    def __init__(self, sweep_dir: Path, total: int) -> None:
        super().__init__(daemon=True)
        from tqdm.auto import tqdm

        self.sweep_dir = sweep_dir
        self.t0 = time.time() - 1.0
        self.stop = threading.Event()
        self.bar = tqdm(total=total, unit="job", desc="sweep", mininterval=0.5, file=sys.stderr)

    def _done(self) -> int:
        n = 0
        for name in (job.SUMMARY, job.ERROR):
            for p in self.sweep_dir.glob(f"*/{name}"):
                with contextlib.suppress(FileNotFoundError):
                    n += p.stat().st_mtime >= self.t0
        return n

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.bar.n = min(self._done(), self.bar.total)
            self.bar.refresh()

    def finish(self) -> None:
        self.stop.set()
        self.join()
        self.bar.n = min(self._done(), self.bar.total)
        self.bar.close()


# The sweep running in this (the launching) process. Kept out of the callback object, which hydra pickles
# to the launcher's workers.
_active: dict[str, Any] = {}


def finish_sweep() -> None:
    """Stop the progress bar, write summary.csv + report.html and print the report path.

    Called by the callback at the end of a sweep, and by ``moesim.simulate`` after a sweep that aborted
    (hydra skips ``on_multirun_end`` then), so the finished jobs are never lost. Does nothing when no sweep
    is active.
    """
    if not _active:
        return
    progress: _Progress | None = _active.pop("progress", None)
    sweep_dir: Path = _active.pop("dir")
    if progress is not None:
        progress.finish()
    try:
        _, html = aggregate(sweep_dir)
    except UserError as exc:
        print(f"moesim: error: {exc}", file=sys.stderr)
        return
    print(f"moesim: report: {html}")


class SweepCallback(Callback):
    """Announces a sweep, shows its progress, and writes summary.csv + report.html when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        params = OmegaConf.to_container(config.hydra.sweeper.params, resolve=True) or {}
        n = len(sweep_jobs(params, list(config.hydra.overrides.task)))  # type: ignore[arg-type]
        print(f"moesim: sweep of {n} jobs into {sweep_dir}/", file=sys.stderr)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        _active["dir"] = sweep_dir
        _active["progress"] = _Progress(sweep_dir, n)
        _active["progress"].start()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finish_sweep()
