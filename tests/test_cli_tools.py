"""Issue 8 items 9 and 10: one ``key=value`` style with ``--help`` generated from the config dataclasses for
every tool; profiles, the calibrator, ``consolidate`` and ``bench`` refuse bad input in one line."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_simulate_cli import env_here

from moesim.cli import field_docs, help_text, parse_key_values
from moesim.errors import UserError

# ---- item 10: help and arguments, generated in one place -----------------------------------------------


@dataclass(frozen=True)
class _Demo:
    """A demo tool.

    Attributes:
        rate: arrivals per tenant (requests/s); the total
            is rate × tenants.
        lo, hi: bounds (tokens).
        fast: skip the slow part.
        names: tenants' names.
    """

    rate: float = 0.5
    lo: int = 1
    hi: int = 8
    fast: bool = False
    names: tuple[str, ...] = ("a", "b")


def test_field_docs_reads_attributes_with_shared_and_continued_entries() -> None:
    assert field_docs(_Demo) == {"rate": "arrivals per tenant (requests/s); the total is rate × tenants.",
                                 "lo": "bounds (tokens).", "hi": "bounds (tokens).", "fast": "skip the slow part.",
                                 "names": "tenants' names."}


def test_help_text_lists_every_key_default_type_choices_and_units() -> None:
    text = help_text(_Demo, prog="demo", choices={"lo": (1, 2)})
    assert text.splitlines()[0] == "usage: demo [key=value ...]"
    assert "  rate=0.5  (float)\n      arrivals per tenant (requests/s); the total is rate × tenants." in text
    assert "  lo=1  (int; one of: 1, 2)" in text
    assert "  fast=false  (bool)" in text
    assert "  names=a,b  (comma list of str)" in text


def test_gnu_spellings_positional_and_finite_numbers() -> None:
    cfg = parse_key_values(["--rate", "2", "--fast", "--hi=9", "x", "y"], _Demo, positional="names")
    assert cfg == _Demo(rate=2.0, lo=1, hi=9, fast=True, names=("x", "y"))
    assert parse_key_values(["+lo=3", "fast=no"], _Demo) == _Demo(lo=3)
    for bad, needle in ((["rate=nan"], "rate='nan': expected a finite number"),
                        (["rate=inf"], "expected a finite number"),
                        (["rte=1"], "unknown key 'rte' (did you mean 'rate'?)"),
                        (["lo=3"], "lo=3: valid: 1, 2"),
                        (["--hi"], "--hi: expected a value"),
                        (["--rte"], "unknown key 'rte' (did you mean 'rate'?)")):  # not "expected a value"
        with pytest.raises(UserError) as exc:
            parse_key_values(bad, _Demo, choices={"lo": (1, 2)} if bad == ["lo=3"] else None)
        assert needle in str(exc.value)


def _tools() -> list[tuple[str, type, object]]:
    from moesim.bench import BenchConfig
    from moesim.bench import main as bench
    from moesim.calibrate.__main__ import main as calibrate
    from moesim.calibrate.config import CalibrateConfig
    from moesim.consolidate import ConsolidateConfig
    from moesim.consolidate import main as consolidate
    from moesim.executor.__main__ import main as executor
    from moesim.executor.config import ExecutorConfig

    return [("calibrate", CalibrateConfig, calibrate), ("executor", ExecutorConfig, executor),
            ("consolidate", ConsolidateConfig, consolidate), ("bench", BenchConfig, bench)]


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("index", range(4))
def test_every_tool_answers_help_from_its_dataclass(capsys: pytest.CaptureFixture[str], index: int,
                                                    flag: str) -> None:
    name, cls, main = _tools()[index]
    with pytest.raises(SystemExit) as exc:
        main([flag])  # type: ignore[operator]
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m moesim.{name}")
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        assert f"\n  {f.name}=" in out, f.name
        assert f.name in docs, f"{cls.__name__}.{f.name} has no Attributes entry"
        assert docs[f.name].replace("``", "")[:40] in out.replace("\n      ", " ")


def test_simulate_help_is_generated_with_composed_defaults() -> None:
    p = subprocess.run([sys.executable, "-m", "moesim.simulate", "policy=mig", "--help"], env=env_here(),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "  policy=mig  (one of: dedicated, mig, multiplex, naive, reconfig, reconfig_fast, swap)" in out
    assert "  policy.layout=''  (str)" in out  # mig's own key
    assert "  slo_ttft_s=2.0  (float)\n      TTFT target of the SLO (seconds)." in out  # moesim/slo.py's value
    assert "  workload.duration_s=" in out
    assert "  sweep.resume=false  (bool)" in out
    assert "  report.slo_target=0.9  (float)" in out


# ---- item 9: profiles, calibrator, consolidate, bench ----------------------------------------------------


def _bad_profile(tmp_path: Path, row: int, value: float) -> Path:
    from moesim.resources import shipped_profiles_dir

    src = shipped_profiles_dir() / "h200__switch-base-8.parquet"
    dst = tmp_path / src.name
    df = pd.read_parquet(src)
    df.loc[row, "time_s_median"] = value
    df.to_parquet(dst, index=False)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


@pytest.mark.parametrize("value", [-0.001, float("nan"), float("inf")])
def test_profile_with_bad_time_refused_naming_file_and_row(tmp_path: Path, value: float) -> None:
    from moesim.cost import COST_MODELS
    from moesim.formats.profile import read_profile
    from moesim.specs import get_gpu, get_model

    path = _bad_profile(tmp_path, 7, value)
    with pytest.raises(UserError) as exc:
        read_profile(path)
    msg = str(exc.value)
    assert msg.startswith(f"profile {path}: row 7 (op=")
    assert f"time_s_median={value}" in msg
    assert "\n" not in msg
    with pytest.raises(UserError, match="row 7"):
        COST_MODELS.build("profile", {"path": str(path)}, model=get_model("switch-base-8"), gpu=get_gpu("h200"))


def test_shipped_profiles_pass_the_time_check() -> None:
    from moesim.formats.profile import read_profile
    from moesim.resources import shipped_profiles_dir

    paths = [p for p in shipped_profiles_dir().glob("*.parquet") if "validation" not in p.name]
    assert paths
    for p in paths:
        df, _ = read_profile(p)
        assert np.isfinite(df.loc[df["status"] == "ok", "time_s_median"]).all()


def _one_line_exit_2(capsys: pytest.CaptureFixture[str], main: object, argv: list[str], needle: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)  # type: ignore[operator]
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert needle in err, err


def test_calibrator_checks_output_and_values_before_measuring(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from moesim.calibrate.__main__ import main

    (tmp_path / "f").write_text("")
    _one_line_exit_2(capsys, main, ["device=cpu", "model=tiny", f"out={tmp_path / 'f'}"], "is a file, not a folder")
    _one_line_exit_2(capsys, main, ["device=cpu", "model=tiny", f"out={tmp_path / 'f' / 'sub'}"],
                     "is a file, so the folder cannot be created")
    _one_line_exit_2(capsys, main, ["device=cpu", "model=tiny", "target_s=nan"], "target_s='nan': expected a finite")
    _one_line_exit_2(capsys, main, ["device=cpu", "model=tiny", f"out={tmp_path}", "plan=/nonexistent.json"],
                     "plan=/nonexistent.json: no such file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # nothing measured or written


def test_consolidate_bad_out_and_old_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from moesim.consolidate import main

    base = ["synthetic=mixtral-8x7b", "budget_bytes=82.9e9"]
    _one_line_exit_2(capsys, main, [*base, f"out={tmp_path}"], f"out={tmp_path}: is a folder; give a file path")
    (tmp_path / "file").write_text("")
    _one_line_exit_2(capsys, main, [*base, f"out={tmp_path / 'file' / 'plan.json'}"], "is a file, so the folder")
    _one_line_exit_2(capsys, main, ["synthetic=mixtral-8x7b", f"out={tmp_path / 'p.json'}"], "budget_bytes is required")
    _one_line_exit_2(capsys, main, [*base, f"out={tmp_path / 'p.json'}", "method=best"], "method='best': valid: ")
    # the old flag spellings still work and give the same plan as key=value
    main(["--synthetic", "mixtral-8x7b", "--budget-bytes", "82.9e9", "--out", str(tmp_path / "a.json")])
    main([*base, f"out={tmp_path / 'b.json'}"])
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a == b
    assert a["budget_bytes"] == 82_900_000_000


def test_bench_repeat_zero_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from moesim.bench import main

    _one_line_exit_2(capsys, main, ["--repeat", "0"], "repeat=0: must be ≥ 1")
    _one_line_exit_2(capsys, main, ["repeat=-1"], "repeat=-1: must be ≥ 1")
    _one_line_exit_2(capsys, main, ["policy=nope"], "policy='nope': valid: ")


# ---- the study tools (search bench, consolidation study / report) on the same parser --------------------

_STUDY_TOOLS = [  # (module, config class, needs torch)
    ("search.bench", "SearchBenchConfig", False),
    ("consolidation.report", "ReportConfig", False),
    ("consolidation.quality_report", "QualityReportConfig", False),
    ("consolidation.study", "StudyConfig", True),
    ("consolidation.quality_study", "QualityStudyConfig", True),
]


def _study_tool(index: int) -> tuple[str, type, object]:
    import importlib

    name, cls_name, needs_torch = _STUDY_TOOLS[index]
    if needs_torch:
        pytest.importorskip("torch")
    mod = importlib.import_module(f"moesim.{name}")
    return name, getattr(mod, cls_name), mod.main


@pytest.mark.parametrize("index", range(len(_STUDY_TOOLS)))
def test_study_tools_answer_help_and_refuse_unknown_keys(capsys: pytest.CaptureFixture[str], index: int) -> None:
    name, cls, main = _study_tool(index)
    with pytest.raises(SystemExit) as exc:
        main(["--help"])  # type: ignore[operator]
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m moesim.{name}")
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        assert f"\n  {f.name}=" in out, f.name
        assert f.name in docs, f"{cls.__name__}.{f.name} has no Attributes entry"
        assert docs[f.name][:40] in out.replace("\n      ", " ")
    keys = ", ".join(f.name for f in dataclasses.fields(cls))
    _one_line_exit_2(capsys, main, ["bogus=1"], f"moesim: error: unknown key 'bogus'; valid: {keys}")


def test_search_bench_keys_and_old_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from moesim.search.bench import SearchBenchConfig, main, parse_args

    assert parse_args(["--workers", "1,4", "--backend", "local", "--duration", "30", "--out", "b.json"]) == \
        SearchBenchConfig(workers=(1, 4), backend="local", duration=30.0, out="b.json")
    assert parse_args([]) == SearchBenchConfig(workers=(1, 2), backend="ray", duration=60.0, out="")
    _one_line_exit_2(capsys, main, ["backend=slurm"], "backend='slurm': valid: ray, local")
    _one_line_exit_2(capsys, main, ["workers=0,2"], "workers=0,2: give worker counts ≥ 1")
    _one_line_exit_2(capsys, main, ["duration=0"], "duration=0.0: must be > 0")


def test_consolidation_studies_keys_and_old_flags(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from moesim.consolidation import quality_study as Q
    from moesim.consolidation import study as S

    s = S.parse_args(["--preset", "unit", "--device", "cpu", "--out", "/o", "--ckpt-dir", "/ck", "--deadline-s", "240"])
    assert s == S.StudyConfig(preset="unit", device="cpu", out="/o", ckpt_dir="/ck", deadline_s=240.0)
    assert S.parse_args(["out=/o", "device=cpu"]).deadline_s is None
    q = Q.parse_args(["--preset", "h200-next", "--families", "large", "--device", "cpu", "--out", "/o",
                      "--deadline-s", "540"])
    assert q == Q.QualityStudyConfig(preset="h200-next", device="cpu", out="/o", families=("large",), deadline_s=540.0)
    assert Q.parse_args(["out=/o", "device=cpu"]) == Q.QualityStudyConfig(out="/o", device="cpu", deadline_s=1e9)
    _one_line_exit_2(capsys, S.main, ["preset=huge", "out=/o"], "preset='huge': valid: gpu, smoke, unit")
    _one_line_exit_2(capsys, S.main, ["preset=smoke"], "out is required")
    _one_line_exit_2(capsys, Q.main, ["device=cpu"], "out is required")
    _one_line_exit_2(capsys, Q.main, ["preset=h200-next", "families=large,tiny", "out=/o"],
                     "families=large,tiny: tiny not in preset 'h200-next'")


def test_quality_report_positional_folder_and_old_merge_spelling(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from moesim.consolidation import quality_report as R

    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(R, "merge", lambda folder, parts: calls.append(("merge", (folder, parts))))
    monkeypatch.setattr(R, "build", lambda folder: calls.append(("build", folder)) or {"targets": []})
    R.main(["OUT", "--merge", "OUT/large", "OUT/fine"])  # the old spelling: several folders after one flag
    R.main(["OUT", "merge=OUT/large,OUT/fine"])
    want = [("merge", (Path("OUT"), [Path("OUT/large"), Path("OUT/fine")])), ("build", Path("OUT"))]
    assert calls == want * 2
    calls.clear()
    R.main([])
    assert calls == [("build", Path("reports/consolidation"))]
    assert "wrote reports/consolidation/index.html" in capsys.readouterr().out
    _one_line_exit_2(capsys, R.main, ["A", "B"], "'A,B': one study folder at a time")
