"""``python -m moesim.report`` on damaged sweeps and bad options: one bad job never aborts the report (it is
listed as unreadable, with the reason, in the report and one console line); a bad option is one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report_helpers import make_sweep, read_figures, traces, turnaround

from moesim.errors import UserError
from moesim.report import build_report
from moesim.report.__main__ import main as report_main
from moesim.report.options import ReportOptions, check_options, options_from_node, options_from_sweep

# job numbering of make_sweep: mig 0-5, reconfig 6-11, multiplex 12-17 (rates 0.1, 0.2, 0.4 × seeds 0, 1),
# 18 failed, 19 incomplete
DAMAGE = {
    "0": ("summary.json", b'{"status": "ok", "policy": "mig", "ra', "malformed or truncated JSON"),
    "1": ("summary.json", b"", "empty file"),
    "6": ("summary.json", b"[1, 2]", "not a JSON object"),
    "7": ("summary.json", b'{"status": "ok", "policy": "reconfig"}', "missing rate, seed, tenants"),
    "12": ("requests.parquet", None, "requests.parquet: missing"),
    "13": ("segments.parquet", b"PAR1 this is not parquet", "segments.parquet: corrupt"),
    "10": ("instances.json", b"{", "instances.json: unreadable"),
    "11": ("requests.parquet", b"", "requests.parquet: corrupt"),
    "18": ("error.json", b"\xff\xfe garbage", "error.json"),
}


def _damage(root: Path) -> None:
    for job, (name, content, _) in DAMAGE.items():
        path = root / job / name
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)


def test_damaged_jobs_are_listed_and_the_report_is_built_from_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_sweep(tmp_path / "s")
    _damage(root)
    (root / "multirun.yaml").write_text("report: {slo_target: [unclosed\n")
    report_main([str(root)])
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    for job, (_, _, reason) in DAMAGE.items():
        lines = [line for line in err if line.startswith(f"moesim: job {job} unreadable")]
        assert len(lines) == 1, (job, err)
        assert reason in lines[0], (job, lines[0])
    assert any("multirun.yaml: unreadable" in line and "default options" in line for line in err)
    assert captured.out.splitlines()[-1] == f"moesim: report: {root / 'report.html'}"
    html = (root / "report.html").read_text()
    for job, (_, _, reason) in DAMAGE.items():
        assert reason in html, job
    assert "multirun.yaml: unreadable" in html
    csv = pd.read_csv(root / "summary.csv")
    assert set(csv[csv["status"] == "unreadable"]["job"].astype(str)) == set(DAMAGE)
    assert captured.out.splitlines()[0] == f"moesim: 10 of 20 jobs finished, 9 unreadable; table: {root / 'summary.csv'}"
    figs = read_figures(html)
    # mig at 0.1: jobs 0 and 1 (both seeds) unreadable → no point; at 0.2 both seeds remain
    (t,) = traces(figs["turnaround"], metric="mean_turnaround_s", series="mig")
    assert t["x"] == [0.2, 0.4]
    assert t["y"][0] == pytest.approx(np.mean([turnaround("mig", 0.2, s) for s in (0, 1)]))
    # multiplex at 0.1: job 12 (requests missing) and 13 (segments corrupt) are left out; reconfig at 0.4
    # (jobs 10 and 11) likewise
    (m,) = traces(figs["turnaround"], metric="mean_turnaround_s", series="multiplex")
    assert m["x"] == [0.2, 0.4]
    (r,) = traces(figs["turnaround"], metric="mean_turnaround_s", series="reconfig")
    assert r["x"] == [0.2]
    assert "9 unreadable, of 20" in html


def test_a_job_whose_requests_fail_only_when_read_is_skipped_in_the_figures(tmp_path: Path) -> None:
    """Columns that exist but cannot be computed with (text instead of seconds): found only when the CDF
    reads the file; that job is left out of the CDF and the timeline (the other seed is used) and noted."""
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    req = pd.read_parquet(root / "8" / "requests.parquet")  # reconfig, 0.2 req/s, seed 0
    req = req.astype({"arrival_s": str, "finish_s": str})
    req.to_parquet(root / "8" / "requests.parquet")
    lines: list[str] = []
    html = build_report(root, warn=lines.append).read_text()
    figs = read_figures(html)
    (c,) = traces(figs["cdf"], series="reconfig")
    assert c["meta"]["jobs"] == ["9"]
    assert {t["meta"]["job"] for t in traces(figs["timeline"], series="reconfig")} == {"9"}
    assert any(line.startswith("job 8: requests unreadable") for line in lines)
    assert "job 8: requests unreadable" in html


def test_no_readable_job_still_writes_a_report(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    for d in root.iterdir():
        (d / "summary.json").write_text("")
    lines: list[str] = []
    html = build_report(root, warn=lines.append).read_text()
    assert "No job finished" in html
    assert len(lines) == 18


@pytest.mark.parametrize(("argv", "message"), [
    (["--cdf-rate", "-1"], "cdf_rate=-1.0: must be a finite number > 0"),
    (["cdf_rate=nan"], "cdf_rate='nan': expected a finite number"),
    (["--cdf-rate", "abc"], "cdf_rate='abc': expected a number"),
    (["timeline_window_s=inf"], "timeline_window_s='inf': expected a finite number"),
    (["slo_target=5"], "slo_target=5.0: must be a share in (0, 1]"),
    (["--slo-target", "0"], "slo_target=0.0: must be a share in (0, 1]"),
    (["baselines=mig,nope"], "baselines: unknown policy 'nope'; valid: dedicated, mig"),
    (["--slo-ttft-s", "0"], "slo_ttft_s=0.0: must be a finite number > 0"),
    (["slo_tpot_s=-0.1"], "slo_tpot_s=-0.1: must be a finite number > 0"),
    (["--compare-rates", "0.1,-2"], "compare_rates=-2.0: must be a finite number > 0"),
    (["bogus=1"], "unknown key 'bogus'"),
    (["--bogus"], "unknown key 'bogus'"),
])
def test_bad_options_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                  message: str) -> None:
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    with pytest.raises(SystemExit) as exc:
        report_main([str(root), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("moesim: error: ")
    assert message in err
    assert not (root / "report.html").exists()


def test_report_node_of_multirun_yaml_is_checked(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"report.slo_target=5: must be a share in \(0, 1\]"):
        options_from_node({"slo_target": 5})
    with pytest.raises(UserError, match=r"report\.baselines: unknown policy 'nope'"):
        options_from_node({"baselines": ["nope"]})
    with pytest.raises(UserError, match=r"report\.cdf_rat: unknown report option"):
        options_from_node({"cdf_rat": 1})
    assert options_from_node({"cdf_rate": 0.5, "baselines": ["mig"]}) == ReportOptions(cdf_rate=0.5,
                                                                                     baselines=("mig",))
    # a sweep whose multirun.yaml holds a bad value: the defaults, and a note saying so
    (tmp_path / "multirun.yaml").write_text("report:\n  slo_target: 5\n")
    opts, note = options_from_sweep(tmp_path)
    assert opts == ReportOptions()
    assert note is not None
    assert "report.slo_target=5" in note
    assert "default options" in note
    with pytest.raises(UserError, match="must be a finite number > 0"):
        check_options(ReportOptions(timeline_window_s=math.nan))


def test_simulate_refuses_a_bad_report_option_up_front() -> None:
    from moesim.config import check_command_line, register_configs

    register_configs()
    with pytest.raises(UserError, match=r"report.slo_target=5.0: must be a share in \(0, 1\]"):
        check_command_line(["report.slo_target=5"])
    with pytest.raises(UserError, match=r"report\.baselines: unknown policy 'nope'"):
        check_command_line(["report.baselines=[mig,nope]"])


def test_collect_marks_unreadable_summary(tmp_path: Path) -> None:
    from moesim.sweep import collect

    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    (root / "3" / "summary.json").write_text(json.dumps({"status": "ok", "policy": "mig"})[:-5])
    df = collect(root)
    row = df[df["job"] == "3"].iloc[0]
    assert row["status"] == "unreadable"
    assert row["error"].startswith("summary.json: malformed or truncated JSON")
    assert (row["policy"], row["rate"], row["seed"]) == ("mig", 0.2, 1)  # from .hydra/overrides.yaml


def test_a_folder_of_several_sweeps_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m moesim.report multirun/` (or a scratch folder) would mix unrelated jobs into one report."""
    for sweep in ("2026-11-30/10-00-00", "2026-11-30/11-00-00"):
        make_sweep(tmp_path / sweep, failed=False, incomplete=False)
        (tmp_path / sweep / "multirun.yaml").unlink(missing_ok=True)
    with pytest.raises(SystemExit) as exc:
        report_main([str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "holds the jobs of 2 different sweeps or runs (2026-11-30/10-00-00/, 2026-11-30/11-00-00/)" in err
    assert not (tmp_path / "report.html").exists()
    report_main([str(tmp_path / "2026-11-30/10-00-00")])  # one of them is fine
    assert (tmp_path / "2026-11-30/10-00-00" / "report.html").exists()


def test_a_single_runs_own_dir_is_reported(tmp_path: Path) -> None:
    """`python -m moesim.report D` on a single run's dir (summary.json at its top) reports that one job."""
    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    job = next(d for d in sorted(root.iterdir()) if (d / "summary.json").exists())
    report_main([str(job)])
    assert (job / "report.html").exists()
