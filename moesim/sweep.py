"""Hydra glue: the job body, and the sweep callback that tracks progress and aggregates at the end.

At the end of a multirun the sweep dir gets ``summary.csv`` (one row per job, failed ones included with
their error) and ``report.html``; the report path is printed. A failed job writes ``error.json`` in its dir
and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
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
from moesim.config import CommandLine, job_spec, sweep_jobs
from moesim.errors import UserError, exit_on_user_error
from moesim.io import write_csv
from moesim.metrics import seconds_text, throughput_text

log = logging.getLogger(__name__)

SUMMARY_CSV = "summary.csv"
REPORT_HTML = "report.html"

# summary.csv: identification first, then metrics, then bookkeeping
ID_COLUMNS = ["job", "status", "policy", "model", "gpu", "workload", "rate", "tenants", "seed", "cost",
              "cost_option", "cost_derived"]
TAIL_COLUMNS = ["cost_source", "wall_s", "error", "overrides"]
NOT_STARTED = "not_started"
# files a sweep writes next to its job folders (``sweep.overwrite`` removes these and the job folders only)
SWEEP_FILES = {SUMMARY_CSV, REPORT_HTML, "multirun.yaml"}
LAUNCHER_PID_ENV = "MOESIM_LAUNCHER_PID"
DEFAULT_SUBDIR = "${hydra.job.num}"
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
    _guard_worker()
    ident: dict[str, Any] = {}
    try:
        spec = job_spec(cfg)
        ident = spec.describe()
        if bool(cfg.sweep.get("resume", False)) and _finished_with(out, spec.config_hash()):
            log.info("moesim: job %s finished earlier with the same config; kept", out.name)
            return
        job.run(spec, out, progress=bool(cfg.progress), overrides=overrides, extra=extra)
    except Exception as exc:
        try:
            rec = job.record_failure(out, exc, job=ident, overrides=overrides)
            error = rec["error"]
        except OSError as exc2:  # e.g. the disk filled up: the launcher reports the job as incomplete
            error = f"{exc} (and error.json could not be written: {exc2.strerror or exc2})"
        log.error("moesim: job %s failed (%s): %s", out.name, " ".join(overrides), error)


def _finished_with(out: Path, config_hash: str) -> bool:
    """Whether ``out`` holds a finished job (summary.json, status ok) of the config with this hash."""
    try:
        rec = json.loads((out / job.SUMMARY).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and rec.get("status") == "ok" and rec.get("config_hash") == config_hash


_guarded: list[int] = []


def _guard_worker() -> None:
    """In a launcher's worker process: ignore Ctrl-C (the launcher handles it and stops the workers) and
    exit at once when the launcher is gone (SIGKILL leaves no chance to stop us), checked every 0.2 s."""
    launcher = int(os.environ.get(LAUNCHER_PID_ENV, "0") or 0)
    if not launcher or os.getpid() == launcher or _guarded:
        return
    _guarded.append(os.getppid())
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = _guarded[0]

    def watch() -> None:
        while True:
            time.sleep(0.2)
            if os.getppid() != parent:  # reparented: the launcher died
                os._exit(1)

    threading.Thread(target=watch, name="moesim-parent-watch", daemon=True).start()


@exit_on_user_error
def _run_single(cfg: DictConfig, out: Path, overrides: list[str], extra: dict[str, Any]) -> None:
    spec = job_spec(cfg)
    progress = True if cfg.progress is None else bool(cfg.progress)
    try:
        s = job.run(spec, out, progress=progress, overrides=overrides, extra=extra, announce=True)
    except OSError as exc:
        raise UserError(f"hydra.run.dir={out}: cannot write the outputs ({exc.strerror or exc}); "
                        "files already written are complete (atomic writes)") from None
    rejected = f" ({s['rejected']} rejected)" if s.get("rejected") else ""
    n = int(s["n_requests"])
    print(f"moesim: {n:,} request{'s' if n != 1 else ''}{rejected}, mean turnaround "
          f"{seconds_text(s['mean_turnaround_s'])}, mean TTFT {seconds_text(s['mean_ttft_s'])}, {throughput_text(s)}; "
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
    try:
        return [str(x) for x in OmegaConf.load(p)] if p.exists() else []
    except Exception:  # a corrupt file of a job that never finished: identify it by its dir alone
        return []


def collect(sweep_dir: str | Path, planned: list[list[str]] | None = None) -> pd.DataFrame:
    """One row per job of a (possibly unfinished) sweep: ``status`` ok, failed, incomplete or not_started.

    Metrics come from each job's summary.json; failed jobs carry ``error``; a job dir with neither file
    (running, or killed) is ``incomplete``. ``planned``: the overrides of every job of the sweep (job ``i``
    in subdir ``i``); those without a folder are listed as ``not_started``.
    """
    root = Path(sweep_dir)
    rows = []
    for i, overrides in enumerate(planned or []):
        if not (root / str(i)).exists():
            rows.append({"job": str(i), "status": NOT_STARTED, "overrides": " ".join(overrides),
                         **_ident_from_overrides(overrides)})
    for d in _job_dirs(root):
        rel = d.relative_to(root).as_posix()
        if (d / job.SUMMARY).exists():
            rec = read_record(d / job.SUMMARY, "ok")
        elif (d / job.ERROR).exists():
            rec = read_record(d / job.ERROR, "failed")
        else:
            rec = {"status": "incomplete"}
        if rec["status"] != "ok" and not rec.get("overrides"):
            rec["overrides"] = _read_overrides(d)
        row = {k: v for k, v in rec.items() if k not in SKIP_KEYS}
        row["job"] = rel
        row["overrides"] = " ".join(str(o) for o in rec.get("overrides") or [])
        if rec["status"] != "ok" and "policy" not in rec:
            row.update(_ident_from_overrides(rec.get("overrides") or []))
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.iloc[sorted(range(len(df)), key=lambda i: _natural(str(df["job"].iloc[i])))].reset_index(drop=True)
    if df.empty:
        return pd.DataFrame(columns=ID_COLUMNS + TAIL_COLUMNS)
    for c in ID_COLUMNS + TAIL_COLUMNS:
        if c not in df.columns:
            df[c] = pd.NA
    metric_cols = [c for c in df.columns if c not in ID_COLUMNS and c not in TAIL_COLUMNS]
    return df[ID_COLUMNS + metric_cols + TAIL_COLUMNS]


# keys an ok job's summary.json must hold for the report to use it
REQUIRED_OK_KEYS = ("policy", "rate", "seed", "tenants")


def read_record(path: Path, status: str) -> dict[str, Any]:
    """A job's summary.json (``status`` "ok") or error.json ("failed"); a file that cannot be used
    (empty, truncated, not a JSON object, a wrong status or missing keys) gives a record with status
    ``unreadable`` and the reason in ``error``, never an exception."""
    try:
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise ValueError("empty file")
        rec = json.loads(text)
        if not isinstance(rec, dict):
            raise ValueError(f"not a JSON object but {type(rec).__name__}")
        if rec.get("status") != status:
            raise ValueError(f"status is {rec.get('status')!r}, expected {status!r}")
        if status == "ok":
            missing = [k for k in REQUIRED_OK_KEYS if rec.get(k) is None]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            float(rec["rate"])
            int(rec["seed"])
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, json.JSONDecodeError):
            reason = f"malformed or truncated JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        return {"status": "unreadable", "error": f"{path.name}: {reason}"}
    return rec


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


def aggregate(sweep_dir: str | Path, *, quiet: bool = False,
              planned: list[list[str]] | None = None) -> tuple[Path, Path]:
    """Write summary.csv and report.html into ``sweep_dir``; their paths."""
    from moesim.report import build_report

    root = Path(sweep_dir)
    df = collect(root, planned)
    _last["counts"] = df["status"].value_counts().to_dict() if len(df) else {}
    csv = write_csv(root / SUMMARY_CSV, df)
    html = build_report(root, summary=df)
    if not quiet:
        failed = df[df["status"] == "failed"]
        for _, r in failed.iterrows():
            print(f"moesim: job {r['job']} failed ({r['overrides']}): {r['error']}", file=sys.stderr)
        n_inc = int((df["status"] == "incomplete").sum())
        n_new = int((df["status"] == NOT_STARTED).sum())
        print(f"moesim: {int((df['status'] == 'ok').sum())} of {len(df)} jobs finished"
              + (f", {len(failed)} failed" if len(failed) else "")
              + (f", {n_inc} incomplete" if n_inc else "")
              + (f", {n_new} not started" if n_new else "")
              + f"; table: {csv}", file=sys.stderr)
    return csv, html


# ---- the callback ---------------------------------------------------------------------------------------


#: seconds between two draws of the sweep's bar when stderr is not a terminal
LOG_INTERVAL_S = 60.0


class _Progress(threading.Thread):
    """Counts finished jobs (summary.json or error.json newer than the sweep's start) on a tqdm bar."""

    def __init__(self, sweep_dir: Path, total: int) -> None:
        super().__init__(daemon=True)
        from tqdm.auto import tqdm

        self.sweep_dir = sweep_dir
        self.t0 = time.time() - 1.0
        self.stop = threading.Event()
        # into a log file (CI, nohup, 2> log) a bar redrawn twice a second made one line of ~160 bytes a second
        # (280 kB for a half-hour sweep): there it moves once a minute, when jobs have finished
        self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.bar = tqdm(total=total, unit="job", desc="sweep", mininterval=0.5 if self.tty else LOG_INTERVAL_S,
                        file=sys.stderr)

    def _done(self) -> int:
        n = 0
        for name in (job.SUMMARY, job.ERROR):
            for p in self.sweep_dir.glob(f"*/{name}"):
                with contextlib.suppress(FileNotFoundError):
                    n += p.stat().st_mtime >= self.t0
        return n

    def run(self) -> None:
        while not self.stop.wait(0.5):
            n = min(self._done(), self.bar.total)
            if self.tty:
                self.bar.n = n
                self.bar.refresh()
            elif n > self.bar.n:
                self.bar.update(n - self.bar.n)  # drawn at most every LOG_INTERVAL_S

    def finish(self) -> None:
        self.stop.set()
        self.join()
        self.bar.n = min(self._done(), self.bar.total)
        self.bar.close()


# The sweep running in this (the launching) process. Kept out of the callback object, which hydra pickles
# to the launcher's workers.
_active: dict[str, Any] = {}
# status counts of the last sweep aggregated in this process (``moesim.simulate`` sets its exit status)
_last: dict[str, Any] = {}


def last_counts() -> dict[str, int]:
    """Jobs per status of the sweep ``finish_sweep`` aggregated last in this process ({} if none)."""
    return dict(_last.get("counts", {}))


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
    planned = _active.pop("jobs", None)
    if progress is not None:
        progress.finish()
    try:
        _, html = aggregate(sweep_dir, planned=planned)
    except UserError as exc:
        print(f"moesim: error: {exc}", file=sys.stderr)
        return
    print(f"moesim: report: {html}")


class SweepCallback(Callback):
    """Announces a sweep, shows its progress, and writes summary.csv + report.html when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        params = OmegaConf.to_container(config.hydra.sweeper.params, resolve=True) or {}
        jobs = sweep_jobs(params, list(config.hydra.overrides.task))  # type: ignore[arg-type]
        n = len(jobs)
        kept = _active.pop("kept", 0)
        print(f"moesim: sweep of {n} jobs into {sweep_dir}/"
              + (f" ({kept} finished earlier, kept)" if kept else ""), file=sys.stderr)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        _active["dir"] = sweep_dir
        if str(OmegaConf.to_container(config.hydra.sweep, resolve=False)["subdir"]) == DEFAULT_SUBDIR:
            _active["jobs"] = jobs
        if config.get("progress") is not False:  # progress=false: no bar at all (it drew the sweep's anyway)
            _active["progress"] = _Progress(sweep_dir, n - kept)
            _active["progress"].start()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finish_sweep()


# ---- a sweep dir that is not empty ------------------------------------------------------------------------


def _is_job_dir(p: Path) -> bool:
    return p.is_dir() and any((p / n).exists() for n in (".hydra", job.SUMMARY, job.ERROR, job.REQUESTS))


def check_run_dir(plan: CommandLine) -> None:
    """Refuse a single run into a ``hydra.run.dir`` that holds another run's results (a summary.json of
    another config): they would be overwritten file by file, and lost. The same config again (a re-run,
    deterministic) or ``sweep.overwrite=true`` writes over them."""
    root = Path(plan.out_dir)
    f = root / job.SUMMARY
    if plan.overwrite or not plan.hashes or not f.is_file():
        return
    try:
        rec = json.loads(f.read_text())
    except (OSError, ValueError):
        return  # a damaged summary: nothing complete to lose
    if isinstance(rec, dict) and rec.get("config_hash") is None and isinstance(rec.get("config"), dict):
        # a served run's (python -m moesim.serve): no config hash, and it was overwritten file by file
        raise UserError(f"hydra.run.dir={root} holds a served run's results (python -m moesim.serve, policy="
                        f"{rec['config'].get('policy')}); add sweep.overwrite=true to replace them, or choose another "
                        "hydra.run.dir")
    if not isinstance(rec, dict) or rec.get("config_hash") in (None, plan.hashes[0]):
        return
    what = ", ".join(f"{k}={rec[k]}" for k in ("policy", "model", "gpu", "workload", "rate", "tenants", "seed")
                     if k in rec)
    raise UserError(f"hydra.run.dir={root} holds another run's results ({what}); add sweep.overwrite=true to "
                    "replace them, or choose another hydra.run.dir")


def prepare_sweep_dir(plan: CommandLine) -> int:
    """Make ``plan.out_dir`` ready for the sweep; the number of finished jobs kept (resume).

    An empty or new dir: nothing to do. A non-empty one is refused unless ``sweep.overwrite=true`` (the
    previous sweep's job folders and files are deleted; other files make it refuse) or ``sweep.resume=true``
    (a finished job whose config hash equals that of the job of the same number is kept and skipped; a
    finished job of another config is refused, so stale results never mix into the new report; failed and
    unfinished jobs, and jobs beyond the new sweep's count, are deleted and run again).
    """
    root = Path(plan.out_dir)
    entries = sorted(root.iterdir()) if root.is_dir() else []
    if not entries:
        return 0
    where = f"hydra.sweep.dir={root}"
    if plan.resume and plan.overwrite:
        raise UserError("sweep.resume=true and sweep.overwrite=true: choose one")
    if not (plan.resume or plan.overwrite):
        raise UserError(f"{where} is not empty ({len(entries)} entries); add sweep.resume=true to keep its "
                        "finished jobs and run the rest, sweep.overwrite=true to start over, or choose another "
                        "hydra.sweep.dir")
    jobs = [p for p in entries if _is_job_dir(p)]
    other = [p.name for p in entries if p not in jobs and p.name not in SWEEP_FILES
             and not p.name.startswith(".")]
    if plan.overwrite:
        if other:
            raise UserError(f"{where}: sweep.overwrite=true deletes only a sweep's outputs, and this folder "
                            f"also holds {', '.join(other[:5])}; choose another hydra.sweep.dir")
        for p in jobs:
            shutil.rmtree(p)
        for name in SWEEP_FILES:
            (root / name).unlink(missing_ok=True)
        return 0
    if plan.subdir != DEFAULT_SUBDIR:
        raise UserError(f"sweep.resume=true needs hydra.sweep.subdir={DEFAULT_SUBDIR} (job i in folder i), "
                        f"not {plan.subdir}")
    want = {str(i): h for i, h in enumerate(plan.hashes)}
    keep, stale, rerun = [], [], []
    for p in jobs:
        try:
            rec = json.loads((p / job.SUMMARY).read_text())
            finished = isinstance(rec, dict) and rec.get("status") == "ok"
        except (OSError, ValueError):
            rec, finished = {}, False
        if not finished:
            rerun.append(p)
        elif want.get(p.name) == rec.get("config_hash"):
            keep.append(p)
        else:
            stale.append((p, rec))
    if stale:
        p, rec = stale[0]
        was = " ".join(rec.get("overrides") or []) or "?"
        now = " ".join(o for o in plan.jobs[int(p.name)] if not o.startswith(("hydra.", "hydra/", "sweep.")))\
            if p.name in want else "no job (the new sweep is smaller)"
        raise UserError(f"{where}: sweep.resume=true, but {len(stale)} finished job(s) were run with another "
                        f"config than this sweep's job of the same number (job {p.name}: was {was}; now {now}); "
                        "resume with the same command line, or use sweep.overwrite=true or another dir")
    for p in rerun:
        shutil.rmtree(p)
    for name in (SUMMARY_CSV, REPORT_HTML):
        (root / name).unlink(missing_ok=True)
    _active["kept"] = len(keep)
    return len(keep)
