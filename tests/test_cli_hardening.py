"""Issue 8 items 6, 8 and 11: hydra edge cases in one line, sweeps that resume / overwrite / stop cleanly,
and the cost model's provenance announced and recorded.

Subprocess tests run the real ``python -m moesim.simulate`` on tiny jobs (constant cost, 20-60 s of
simulated time) so that each takes a few seconds.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from test_simulate_cli import env_here

from moesim.config import check_command_line, plan_command_line, register_configs
from moesim.errors import UserError
from moesim.outdir import check_writable

TINY = ["gpu=a100-80gb", "cost=constant", "workload.duration_s=40", "workload.rate=0.1", "progress=false"]


def simulate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "moesim.simulate", *args], cwd=cwd, env=env_here(),
                          capture_output=True, text=True, timeout=120)


def one_error_line(p: subprocess.CompletedProcess[str], message: str) -> None:
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("moesim: error: "), p.stderr
    assert message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


@pytest.fixture(scope="module")
def registered() -> None:
    register_configs()


# ---- item 6: hydra edge cases -------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["+polcy=mig"], "unknown key 'polcy' (did you mean 'policy'?); valid keys: model, gpu, policy"),
    (["+foo.bar=1"], "unknown key 'foo'"),
    (["hydra.mode=RUN", "+model.foo=1"], "unknown key model.'foo'"),
    (["hydra.mode=RUN", "~policy"], "policy: no value (was it removed with ~policy?)"),
    (["hydra.mode=RUN", "workload.rate=${oops.x}"], "workload.rate: cannot resolve its ${...} reference"),
    (["hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0: must be a number of processes ≥ 1, or negative"),
    (["hydra.mode=RUN", "hydra.run.dir="], "hydra.run.dir=: empty; give an output directory"),
    (["-m", "hydra.sweep.dir=", "seed=1"], "hydra.sweep.dir=: empty"),
])
def test_hydra_edge_cases_in_one_line(registered: None, argv: list[str], message: str) -> None:
    with pytest.raises(UserError) as exc:
        check_command_line(argv)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_plus_key_refused_before_any_job(tmp_path: Path) -> None:
    p = simulate("hydra.mode=RUN", f"hydra.run.dir={tmp_path / 'r'}", "+polcy=mig", *TINY, cwd=tmp_path)
    one_error_line(p, "unknown key 'polcy' (did you mean 'policy'?)")
    assert not (tmp_path / "r").exists()


def test_non_ascii_output_path_works_quoted_and_is_one_line_unquoted(tmp_path: Path) -> None:
    d = tmp_path / "résumé — 実験"
    p = simulate("hydra.mode=RUN", f"hydra.run.dir={d}", *TINY, cwd=tmp_path)
    one_error_line(p, f"hydra.run.dir={d}: hydra's override syntax takes non-ASCII characters only in quotes; "
                      f"write hydra.run.dir='{d}'")
    assert not d.exists()
    p = simulate("hydra.mode=RUN", f"hydra.run.dir='{d}'", *TINY, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads((d / "summary.json").read_text(encoding="utf-8"))
    assert s["n_requests"] == len(pd.read_parquet(d / "requests.parquet")) > 0


def test_output_dir_under_a_file_refused_nothing_written(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    p = simulate("hydra.mode=RUN", f"hydra.run.dir={tmp_path / 'afile' / 'run'}", *TINY, cwd=tmp_path)
    one_error_line(p, "is a file, so the folder cannot be created")
    assert sorted(os.listdir(tmp_path)) == ["afile"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        p = simulate("hydra.mode=RUN", f"hydra.run.dir={ro / 'run'}", *TINY, cwd=tmp_path)
        one_error_line(p, "cannot write in")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize(("err", "text"), [(errno.ENOSPC, "No space left on device"),
                                           (errno.EROFS, "Read-only file system")])
def test_full_or_read_only_disk_is_one_line_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, text: str) -> None:
    real_write = os.write

    def failing_write(fd: int, data: bytes) -> int:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(UserError) as exc:
        check_writable(tmp_path / "out" / "run", "hydra.run.dir")
    monkeypatch.setattr(os, "write", real_write)
    assert f"hydra.run.dir={tmp_path / 'out' / 'run'}: cannot write in {tmp_path} ({text})" == str(exc.value)
    assert os.listdir(tmp_path) == []  # the probe file is removed, no folder created


def test_check_writable_passes_and_creates_nothing(tmp_path: Path) -> None:
    assert check_writable(tmp_path / "a" / "b", "out") == tmp_path / "a" / "b"
    assert os.listdir(tmp_path) == []
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_writable(tmp_path / "f", "out")
    with pytest.raises(UserError, match="is a folder; give a file path"):
        check_writable(tmp_path, "--out", is_file=True)


# ---- item 8: sweeps -----------------------------------------------------------------------------------


SWEEP = ["policy=mig,multiplex", "seed=0", "hydra.launcher.n_jobs=1", *TINY]


def test_sweep_dir_refused_unless_resume_or_overwrite(tmp_path: Path) -> None:
    d = tmp_path / "s"
    p = simulate("-m", f"hydra.sweep.dir={d}", *SWEEP, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    first = json.loads((d / "0" / "summary.json").read_text())
    assert len(first["config_hash"]) == 16
    mtime0 = (d / "0" / "summary.json").stat().st_mtime_ns

    # a second run into the same dir is refused, nothing touched (the refusals are checked in-process from
    # here on: the same functions moesim.simulate calls before hydra starts)
    p = simulate("-m", f"hydra.sweep.dir={d}", *SWEEP, cwd=tmp_path)
    one_error_line(p, f"hydra.sweep.dir={d} is not empty")
    assert (d / "0" / "summary.json").stat().st_mtime_ns == mtime0

    # resume: job 0 (finished, same config) kept and skipped; job 1 (made unfinished) runs again
    (d / "1" / "summary.json").unlink()
    p = simulate("-m", f"hydra.sweep.dir={d}", *SWEEP, "sweep.resume=true", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "(1 finished earlier, kept)" in p.stderr
    assert (d / "0" / "summary.json").stat().st_mtime_ns == mtime0
    csv = pd.read_csv(d / "summary.csv")
    assert list(csv["status"]) == ["ok", "ok"]
    assert list(csv["policy"]) == ["mig", "multiplex"]
    assert list(csv["config_hash"]) == [first["config_hash"],
                                        json.loads((d / "1" / "summary.json").read_text())["config_hash"]]

    # resume with another config: refused (stale results would mix into the report)
    refused(["-m", f"hydra.sweep.dir={d}", *SWEEP, "workload.duration_s=20", "sweep.resume=true"],
            "sweep.resume=true, but 2 finished job(s) were run with another config")
    # a smaller sweep: job 1 would be stale
    refused(["-m", f"hydra.sweep.dir={d}", *[a.replace("mig,multiplex", "mig") for a in SWEEP],
             "sweep.resume=true"], "now no job (the new sweep is smaller)")
    refused(["-m", f"hydra.sweep.dir={d}", *SWEEP, "sweep.resume=true", "sweep.overwrite=true"], "choose one")

    # overwrite: everything runs again, the old job files are gone
    (d / "1" / "stale.txt").write_text("old")
    p = simulate("-m", f"hydra.sweep.dir={d}", *SWEEP, "workload.duration_s=20", "sweep.overwrite=true",
                 cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert not (d / "1" / "stale.txt").exists()
    assert (d / "0" / "summary.json").stat().st_mtime_ns != mtime0
    assert json.loads((d / "0" / "summary.json").read_text())["params"]["workload"]["duration_s"] == 20

    # overwrite never deletes what a sweep did not write
    (d / "notes.txt").write_text("mine")
    refused(["-m", f"hydra.sweep.dir={d}", *SWEEP, "sweep.overwrite=true"], "also holds notes.txt")
    assert (d / "0" / "summary.json").exists()


def refused(argv: list[str], message: str) -> None:
    """``moesim.simulate argv`` is refused before hydra starts with one line holding ``message``."""
    from moesim.sweep import prepare_sweep_dir

    register_configs()
    plan = plan_command_line(argv)
    assert plan is not None
    with pytest.raises(UserError) as exc:
        prepare_sweep_dir(plan)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def _group_members(pgid: int) -> list[int]:
    out = []
    for q in Path("/proc").iterdir():
        if q.name.isdigit():
            try:
                if os.getpgid(int(q.name)) == pgid:
                    out.append(int(q.name))
            except OSError:
                pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_stopping_a_sweep_leaves_no_workers(tmp_path: Path, sig: int, code: int) -> None:
    """4 long jobs on 2 workers; stopped once both run. SIGINT goes to the process group (as Ctrl-C in a
    terminal does). No process of the sweep may be left 5 s later; Ctrl-C/SIGTERM end in one line and a
    summary listing the jobs that never started."""
    d = tmp_path / "s"
    p = subprocess.Popen(
        [sys.executable, "-m", "moesim.simulate", "-m", f"hydra.sweep.dir={d}", "policy=mig,multiplex",
         "seed=0,1", "gpu=a100-80gb", "cost=constant", "workload.rate=5", "workload.duration_s=100000",
         "hydra.launcher.n_jobs=2"],
        cwd=tmp_path, env=env_here(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        t0 = time.time()
        while not all((d / j / ".hydra").exists() for j in ("0", "1")) and time.time() - t0 < 60:
            assert p.poll() is None, p.communicate()
            time.sleep(0.1)
        time.sleep(0.5)
        assert len(_group_members(p.pid)) >= 3  # the launcher and its two workers
        (os.killpg if sig == signal.SIGINT else os.kill)(p.pid, sig)
        _, err = p.communicate(timeout=60)
        t1 = time.time()
        while _group_members(p.pid) and time.time() - t1 < 5:
            time.sleep(0.1)
        assert _group_members(p.pid) == []
        assert p.returncode == code
    finally:
        for pid in _group_members(p.pid):
            os.kill(pid, signal.SIGKILL)
    if sig == signal.SIGKILL:
        return
    assert "Traceback" not in err, err
    stopped = "interrupted (Ctrl-C)" if sig == signal.SIGINT else "terminated (SIGTERM)"
    assert err.strip().splitlines()[-1] == f"moesim: {stopped}; 0 jobs finished, 4 not finished (listed in summary.csv)"
    csv = pd.read_csv(d / "summary.csv")
    assert list(csv["status"]) == ["incomplete", "incomplete", "not_started", "not_started"]
    assert list(csv["policy"]) == ["mig", "mig", "multiplex", "multiplex"]
    assert list(csv["seed"]) == [0, 1, 0, 1]


# ---- item 11: cost provenance -------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "line"), [
    (["gpu=h100-80gb"], "cost: roofline (no measured profile for h100-80gb × mixtral-8x7b)"),
    (["gpu=a100-80gb"], "a100-80gb__mixtral-8x7b.parquet (DERIVED from h200__mixtral-8x7b.parquet; "
                        "not measured on a100-80gb)"),
    (["gpu=h200"], "h200__mixtral-8x7b.parquet (measured on h200 × mixtral-8x7b)"),
    (["gpu=h200", "cost=roofline"], "cost: roofline (analytic, chosen with cost=roofline; not measured on h200"),
])
def test_cost_line_names_the_provenance(registered: None, args: list[str], line: str) -> None:
    plan = plan_command_line(["hydra.mode=RUN", *args])
    assert plan is not None
    (got,) = plan.cost_lines
    assert line in got


@pytest.mark.parametrize(("gpu", "kind"), [("h100-80gb", "roofline"), ("a100-80gb", "derived"),
                                           ("h200", "measured")])
def test_summary_records_cost_provenance(tmp_path: Path, gpu: str, kind: str) -> None:
    d = tmp_path / "r"
    p = simulate("hydra.mode=RUN", f"hydra.run.dir={d}", f"gpu={gpu}", "workload.duration_s=20",
                 "workload.rate=0.1", "progress=false", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads((d / "summary.json").read_text())
    assert s["cost_provenance"] == kind
    assert s["cost_derived"] == (kind == "derived")
    assert p.stderr.startswith("moesim: cost: ")


def test_disk_full_during_a_single_run_is_one_line_and_no_summary(
        registered: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The disk fills while the job writes its outputs: one line, exit 2, and no summary.json (written
    last), so the folder never looks like a finished job."""
    from hydra import compose, initialize_config_dir

    from moesim import job, sweep
    from moesim.config import CONF_DIR

    def full(path: object, df: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[*TINY])
    monkeypatch.setattr(job, "write_parquet", full)
    out = tmp_path / "r"
    with pytest.raises(SystemExit) as exc:
        sweep._run_single(cfg, out, [], {})
    assert exc.value.code == 2
    before, err = capsys.readouterr().err.split("moesim: error: ")  # before: the workload's own line
    assert before.startswith("moesim: workload=poisson: generated ")
    assert before.count("\n") == 1
    assert err == (f"hydra.run.dir={out}: cannot write the outputs (No space left on device); "
                   "files already written are complete (atomic writes)\n")
    assert not (out / "summary.json").exists()


def test_first_line_of_an_error_message() -> None:
    """Error handlers record an exception's first line; an empty message gives "" instead of an IndexError."""
    from moesim.errors import first_line

    assert first_line(RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronous")) == (
        "CUDA error: out of memory")
    assert first_line(RuntimeError("x" * 300)) == "x" * 200
    assert first_line(RuntimeError("abc"), limit=2) == "ab"
    assert first_line(RuntimeError()) == ""
