"""Surprises a new user met on day 5 (a fresh torch-free venv outside the repository, the README's commands, their
own odd traces, every command's --help, serve on the CPU), each pinned by a test that failed before its fix."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moesim.errors import UserError, did_you_mean

ROOT = Path(__file__).resolve().parents[1]
GPUS = ["a100-40gb", "a100-80gb", "b200", "h100-80gb", "h100-pcie", "h200", "l40s"]


def _env() -> dict[str, str]:
    """This checkout's moesim from any working directory."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=_env())


@pytest.mark.parametrize(("name", "valid", "hint"), [
    ("h100", GPUS, " (did you mean 'h100-80gb' or 'h100-pcie'?)"),  # was 'h200', another GPU
    ("a100", GPUS, " (did you mean 'a100-40gb' or 'a100-80gb'?)"),
    ("mixtral", ["mixtral-8x22b", "mixtral-8x7b", "tiny"], " (did you mean 'mixtral-8x22b' or 'mixtral-8x7b'?)"),
    ("qwen3", ["qwen3-30b-a3b", "qwen3-235b-a22b", "tiny"], " (did you mean 'qwen3-30b-a3b' or 'qwen3-235b-a22b'?)"),
    ("h2000", GPUS, " (did you mean 'h200'?)"),  # a misspelling still gets its nearest name
    ("H100", GPUS, " (did you mean 'h100-80gb' or 'h100-pcie'?)"),
])
def test_a_prefix_of_several_names_names_them_all(name: str, valid: list[str], hint: str) -> None:
    assert did_you_mean(name, valid) == hint


def test_gpu_h100_is_pointed_at_the_h100s_not_the_h200(tmp_path: Path) -> None:
    p = _run(["-m", "moesim.simulate", "hydra.mode=RUN", f"hydra.run.dir={tmp_path / 'r'}", "gpu=h100"], tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "moesim: error: unknown gpu 'h100' (did you mean 'h100-80gb' or 'h100-pcie'?); valid: a100-40gb, a100-80gb, "
        "b200, h100-80gb, h100-pcie, h200, l40s (or a GPU .yaml path)"]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("text", "line"), [
    # an empty arrival_s cell was "arrival_s=nan is not a number ≥ 0"
    ("arrival_s,prompt_tokens,output_tokens\n0,100,20\n,50,10\n",
     "row 2: arrival_s is missing (empty); must be a number ≥ 0 (seconds)"),
    # an empty timestamp cell among numbers blamed row 1's '0' as "not a parsable date-time"
    ("timestamp,prompt_tokens,output_tokens\n0,100,20\n,50,10\n5,1,1\n",
     "row 2: timestamp is missing (empty); must be a date-time or a number"),
    ("timestamp,prompt_tokens,output_tokens\n2024-01-01 10:00:00,100,20\n  ,50,10\n",
     "row 2: timestamp is missing (empty); must be a date-time or a number"),
])
def test_an_empty_time_cell_is_called_empty_on_its_own_row(tmp_path: Path, text: str, line: str) -> None:
    from moesim.workloads import read_trace

    f = tmp_path / "t.csv"
    f.write_text(text)
    with pytest.raises(UserError) as e:
        read_trace(f, tenants=2)
    assert str(e.value) == f"trace file {str(f)!r}: {line}"


def test_a_null_timestamp_in_jsonl_is_called_empty(tmp_path: Path) -> None:
    from moesim.workloads import read_trace

    f = tmp_path / "t.jsonl"
    f.write_text('{"timestamp": 0, "prompt_tokens": 1, "output_tokens": 2}\n'
                 '{"timestamp": null, "prompt_tokens": 1, "output_tokens": 2}\n')
    with pytest.raises(UserError, match=r": row 2: timestamp is missing \(empty\); must be a date-time or a number$"):
        read_trace(f, tenants=2)


def test_a_tenant_column_mixing_ids_and_names_says_how_it_was_read(tmp_path: Path) -> None:
    # tenant 1, 0, x: the file's tenant '1' became tenant 0 (and '0' tenant 1) with nothing said
    from moesim.workloads import read_trace
    from moesim.workloads.loader import MixedTenantWarning

    f = tmp_path / "t.csv"
    f.write_text("arrival_s,prompt_tokens,output_tokens,tenant\n0,100,20,1\n1,50,10,0\n2,5,5,x\n")
    with pytest.warns(MixedTenantWarning) as w:
        tr = read_trace(f, tenants=3)
    assert [str(x.message) for x in w] == [
        f"trace file {str(f)!r}: tenant mixes integer ids and names (row 3: 'x'), so every value is read as a name "
        "and numbered in order of first appearance ('1' → 0, '0' → 1, 'x' → 2); use only ids 0..tenants-1 or only "
        "names"]
    assert tr.tenant.tolist() == [0, 1, 2]
    assert tr.tenant_names == ("1", "0", "x")
    # all ids, or all names: nothing to say
    g = tmp_path / "g.csv"
    g.write_text("arrival_s,prompt_tokens,output_tokens,tenant\n0,100,20,1\n1,50,10,0\n")
    h = tmp_path / "h.csv"
    h.write_text("arrival_s,prompt_tokens,output_tokens,tenant\n0,100,20,bob\n1,50,10,al\n")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", MixedTenantWarning)
        assert read_trace(g, tenants=2).tenant.tolist() == [1, 0]
        assert read_trace(h, tenants=2).tenant_names == ("bob", "al")


@pytest.mark.parametrize(("args", "line"), [
    # the error came after the run folder (holding simulate.log) was made, although the README says before
    (["placement=file"], "moesim: error: placement=file needs placement.path=<a placement YAML/JSON file>"),
    # "nope.yaml: no such file" did not say which file it was
    (["placement=file", "placement.path=nope.yaml"], "moesim: error: placement file 'nope.yaml': no such file"),
    (["placement=file", "placement.path=."], "moesim: error: placement file '.': is a folder; give the YAML or JSON "
                                             "file itself"),
    (["fleet=file", "fleet.path=nope.yaml"], "moesim: error: fleet file 'nope.yaml': no such file"),
])
def test_a_missing_placement_or_fleet_file_is_one_line_before_any_folder(tmp_path: Path, args: list[str],
                                                                          line: str) -> None:
    gpus = [] if args[0].startswith("fleet=") else ["fleet.gpus=2"]
    p = _run(["-m", "moesim.simulate", "hydra.mode=RUN", "hydra.run.dir=r", "progress=false", *gpus, *args], tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == line
    assert not (tmp_path / "r").exists()


def test_a_placement_file_that_does_not_parse_names_the_file() -> None:
    from moesim.fleet.placement import load_placement

    bad = ROOT / "tests" / "data"
    with pytest.raises(UserError, match=r"^placement file '.*tests/data': is a folder; give the YAML or JSON file"):
        load_placement(bad)


def test_python_m_moesim_lists_the_commands_that_exist(tmp_path: Path) -> None:
    # "No module named moesim.__main__; 'moesim' is a package and cannot be directly executed"
    from moesim.commands import COMMANDS

    for module, _, _ in COMMANDS:
        assert importlib.util.find_spec(module) is not None, module
    p = _run(["-m", "moesim"], tmp_path)
    assert (p.returncode, p.stderr) == (0, "")
    lines = p.stdout.splitlines()
    assert lines[0] == "moesim has no command of its own; its commands (each answers --help):"
    assert [ln.split()[2] for ln in lines[1:]] == [m for m, _, _ in COMMANDS]
    assert "python -m moesim.calibrate " in p.stdout
    assert "[pip install 'moesim[gpu]']" in p.stdout
    p = _run(["-m", "moesim", "simulate", "policy=mig"], tmp_path)
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr.splitlines() == ["moesim: error: python -m moesim is not a command and takes no arguments; run "
                                     "python -m moesim.simulate policy=mig"]


def test_python_m_moesim_fleet_points_at_the_fleet_commands(tmp_path: Path) -> None:
    p = _run(["-m", "moesim.fleet"], tmp_path)
    assert p.returncode == 0
    assert p.stdout.startswith("moesim.fleet is a library package, not a command. Fleets are simulated by python -m "
                               "moesim.simulate fleet.gpus=N placement=NAME router=NAME (docs/fleet.md)")
    assert [ln.split()[2] for ln in p.stdout.splitlines()[1:]] == [
        "moesim.simulate", "moesim.search", "moesim.fleet.bench", "moesim.search.bench"]


@pytest.mark.parametrize("module", ["moesim.consolidation.study", "moesim.consolidation.quality_study"])
def test_a_torch_command_without_torch_is_one_line_even_for_help(tmp_path: Path, module: str) -> None:
    # without torch, `--help` of the study commands was a ModuleNotFoundError traceback from their imports
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['x', '--help']; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    p = _run(["-c", code], tmp_path)
    assert p.returncode == 2
    assert p.stderr.splitlines() == [f"moesim: error: python -m {module} needs torch, which is not installed; install "
                                     "it with pip install 'moesim[gpu]' (the simulator and reports need none of it)"]
    # imported as a library, a missing torch is still the ModuleNotFoundError of `import torch`
    code = "import sys; sys.modules['torch'] = None; import moesim.consolidation.study"
    p = _run(["-c", code], tmp_path)
    assert p.returncode == 1
    assert "ModuleNotFoundError" in p.stderr


def test_a_default_serve_run_says_it_takes_two_minutes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the default serve (32 requests at 0.25 req/s per tenant, wall clock) sat silent for 113 s
    import moesim.serve.run as R
    from moesim.serve.config import ServeConfig

    def stop(*a: object, **k: object) -> None:
        raise RuntimeError("stop before serving")

    monkeypatch.setattr(R, "_serve", stop)
    lines: list[str] = []
    cfg = ServeConfig(model="tiny", device="cpu", backend="cost", out=str(tmp_path / "s"))
    with pytest.raises(RuntimeError, match="stop"):
        R.run(cfg, [], log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert [ln for ln in lines if "arrive over" in ln] == [
        "serve: the requests arrive over 113 s (1.9 min): clock=wall replays them in real time, so the run takes at "
        "least that long; clock=virtual, a higher rate= or a smaller max_requests= shortens it"]
    lines.clear()
    with pytest.raises(RuntimeError, match="stop"):
        R.run(dataclasses.replace(cfg, rate=20.0), [], log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert not any("arrive over" in ln for ln in lines)


def test_a_wall_clock_cost_run_says_what_its_gap_to_the_simulator_is(tmp_path: Path) -> None:
    # backend=cost on the wall clock: "simulated (roofline): mean TTFT -93.8%" read as a broken simulator; the
    # served side sleeps the very same costs, the gap is the host's time around each step
    from moesim.serve.config import ServeConfig
    from moesim.serve.run import run

    lines: list[str] = []
    cfg = ServeConfig(model="tiny", device="cpu", backend="cost", tenants=2, rate=50.0, max_requests=4,
                      sim_cost="roofline", out=str(tmp_path / "s"))
    run(cfg, [], log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    (line,) = [ln for ln in lines if ln.startswith("simulated (roofline)")]
    assert line.endswith("(backend=cost sleeps the same step costs on the wall clock: the gap is this host's time "
                         "around each step; clock=virtual gives the simulator's figures)")
    lines.clear()
    run(dataclasses.replace(cfg, clock="virtual", out=str(tmp_path / "v")), [],
        log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    (line,) = [ln for ln in lines if ln.startswith("simulated (roofline)")]
    assert line == ("simulated (roofline): mean turnaround +0.0%, mean TTFT +0.0%, per-request median |err| "
                    "turnaround 0.0%")


def test_a_refused_serve_run_does_not_first_announce_how_long_it_takes(tmp_path: Path) -> None:
    # device=cuda on a machine without one printed "the requests arrive over 113 s ... the run takes at least
    # that long" and then refused to run
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from moesim.serve.config import ServeConfig
    from moesim.serve.run import run

    lines: list[str] = []
    with pytest.raises(UserError, match=r"^device=cuda but torch sees no CUDA device"):
        run(ServeConfig(model="tiny", device="cuda", out=str(tmp_path / "s")), [],
            log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert lines == []
    assert not (tmp_path / "s").exists()


def test_table_numbers_from_1000_up_are_written_out() -> None:
    # a saturated policy's mean turnaround read "1.99e+03" in the headline table (only ≥ 10,000 was written out)
    from moesim.report.page import fmt

    assert [fmt(x) for x in (1990.4, 2248.7, 999.6, 30300.0, 283.0, 0.432, 1.5e-5)] == [
        "1,990", "2,250", "1,000", "30,300", "283", "0.432", "1.5e-05"]


@pytest.fixture(scope="module")
def one_rate_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-policy sweep at one arrival rate (a few seconds)."""
    root = tmp_path_factory.mktemp("one_rate") / "S"
    p = _run(["-m", "moesim.simulate", "-m", f"hydra.sweep.dir={root}", "policy=reconfig,multiplex",
              "workload.rate=0.1", "workload.duration_s=60", "sweep.seeds=0", "progress=false"], root.parent)
    assert p.returncode == 0, p.stderr
    return root


def test_a_one_rate_sweep_draws_no_rate_zero_line_and_shows_its_offered_load(one_rate_sweep: Path) -> None:
    # one swept rate: plotly centred it in about [r - 1, r + 1] on a linear axis and drew the line of rate 0
    # (a heavy vertical line beside the points); the offered load, a line of one point, drew nothing while
    # the legend named it
    from moesim.report import figures as F
    from moesim.report.data import SweepData
    from moesim.report.options import ReportOptions
    from moesim.sweep import collect

    data = SweepData(one_rate_sweep, collect(one_rate_sweep), ReportOptions())
    assert data.rates == [0.1]
    for make in (F.turnaround, F.ttft, F.throughput, F.slo):
        lay = make(data).to_plotly_json()["layout"]
        axes = [v for k, v in lay.items() if k.startswith("xaxis")]
        assert axes, make.__name__
        for ax in axes:
            assert ax.get("type", "linear") == "linear"
            assert ax["zeroline"] is False, make.__name__
            assert ax["range"] == [0.0, 0.2], make.__name__
    (offered,) = [t for t in F.throughput(data).data if t.name == "offered load (rate × tenants)"]
    assert offered.mode == "markers"
    assert list(offered.y) == [12.0]  # 0.1 req/s × 2 tenants × 60 s


def test_a_wide_sweeps_rate_axis_is_unchanged(tmp_path: Path) -> None:
    from test_report_helpers import make_sweep

    from moesim.report import figures as F
    from moesim.report.data import SweepData
    from moesim.report.options import ReportOptions
    from moesim.sweep import collect

    root = make_sweep(tmp_path / "S")
    data = SweepData(root, collect(root), ReportOptions())
    lay = F.throughput(data).to_plotly_json()["layout"]
    assert "range" not in lay["xaxis"]
    (offered,) = [t for t in F.throughput(data).data if t.name == "offered load (rate × tenants)"]
    assert offered.mode == "lines"


def test_the_search_names_the_nearest_key_and_a_file_given_as_its_out(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from moesim.search.__main__ import main

    (tmp_path / "f.txt").write_text("x")
    for argv, line in (
            (["search.strategy=pack"], "moesim: error: unknown key 'search.strategy' (did you mean "
                                       "'search.strategies'?); valid: search.gpus, search.strategies,"),
            (["search.maxgpus=3"], "moesim: error: unknown key 'search.maxgpus' (did you mean 'search.max_gpus'?)"),
            # was "search.out=f.txt: cannot create it (File exists)"
            ([f"search.out={tmp_path / 'f.txt'}"], f"moesim: error: search.out={tmp_path / 'f.txt'}: is a file, not "
                                                   "a folder; give an empty or new folder")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(line), err
        assert err.count("\n") == 1


def test_gpus_needed_at_one_load_has_whole_gpu_ticks_and_no_negative_rates() -> None:
    # one load: the x axis ran from -0.5 with a line at rate 0, the y axis ticked 0.5 and 1.5 GPUs
    import pandas as pd

    from moesim.search.report import needed_vs_rate

    needed = pd.DataFrame({"policy": ["multiplex", "reconfig"], "gpu": ["h200", "h200"], "load": [1.0, 1.0],
                           "needed": [1.0, 2.0]})
    lay = needed_vs_rate(needed, {1.0: 0.4}).layout
    assert list(lay.xaxis.range) == [0.0, 0.8]
    assert lay.xaxis.zeroline is False
    assert lay.yaxis.dtick == 1
    # several loads: plotly's own x range, still whole GPUs
    needed = pd.DataFrame({"policy": ["multiplex"] * 3, "gpu": ["h200"] * 3, "load": [0.5, 1.0, 2.0],
                           "needed": [1.0, 2.0, 40.0]})
    lay = needed_vs_rate(needed, {0.5: 8.0, 1.0: 16.0, 2.0: 32.0}).layout
    assert lay.xaxis.range is None
    assert (lay.yaxis.dtick, lay.yaxis.tickformat) == (None, "d")


def test_serve_validate_without_a_folder_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # python -m moesim.serve.validate (no folder) printed its 20-line docstring and exited 0, as if it had run
    from moesim.serve.validate import main

    for argv in ([], ["sim_cost=profile"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert capsys.readouterr().err == (
            "moesim: error: give the folder of served runs first: python -m moesim.serve.validate DIR [key=value ...] "
            "(DIR: the out= of python -m moesim.serve, or a folder of them; --help lists the keys)\n")
    main(["--help"])
    assert capsys.readouterr().out.startswith("usage: python -m moesim.serve.validate DIR [key=value ...]\n")
    with pytest.raises(SystemExit):
        main(["somewhere", "sim_cst=profile"])
    assert capsys.readouterr().err.startswith("moesim: error: argument 'sim_cst=profile' (did you mean 'sim_cost'?): "
                                              "keys: sim_cost=auto|")


def test_a_saturated_runs_one_line_latency_reads_in_whole_seconds_and_hours(tmp_path: Path) -> None:
    # a 2M-request trace at 100 req/s: "mean turnaround 288810.165 s, mean TTFT 288800.686 s"
    from moesim.metrics import seconds_text

    assert [seconds_text(x) for x in (288810.165, 1000.0, 999.9, 0.052)] == [
        "288,810 s (80.2 h)", "1,000 s (0.3 h)", "999.900 s", "0.052 s"]
    p = _run(["-m", "moesim.simulate", "hydra.mode=RUN", "hydra.run.dir=r", "progress=false", "policy=mig",
              "workload.rate=2", "workload.duration_s=600"], tmp_path)
    assert p.returncode == 0, p.stderr
    import json

    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["mean_turnaround_s"] >= 1000  # mig saturates at 2 req/s per tenant
    (line,) = [ln for ln in (p.stdout + p.stderr).splitlines() if "mean turnaround" in ln]
    assert f"mean turnaround {s['mean_turnaround_s']:,.0f} s ({s['mean_turnaround_s'] / 3600:,.1f} h), " in line


@pytest.mark.parametrize(("value", "tail"), [
    # was "LexerNoViableAltException: workload.path=~/t.csv"
    ("~/t.csv", f"~ is not expanded here; write the full path: workload.path={os.path.expanduser('~/t.csv')}"),
    # was "mismatched input '.' expecting <EOF>", naming no argument
    ("a(1).csv", "hydra's override syntax cannot read this value unquoted (characters such as ~ ( ) [ ] { } = # ' & ; "
                 "need quotes); write workload.path='a(1).csv' (in a shell: \"workload.path='a(1).csv'\")"),
    ("a'b.csv", "hydra's override syntax cannot read this value unquoted (characters such as ~ ( ) [ ] { } = # ' & ; "
                "need quotes); write workload.path=\"a'b.csv\" (in a shell: \"workload.path=\\\"a'b.csv\\\"\")"),
])
def test_a_value_hydra_cannot_read_unquoted_is_named_with_its_quoting(tmp_path: Path, value: str, tail: str) -> None:
    for mode in (["hydra.mode=RUN", "hydra.run.dir=r"], ["-m", "hydra.sweep.dir=r"]):
        p = _run(["-m", "moesim.simulate", *mode, "workload=trace", f"workload.path={value}"], tmp_path)
        assert p.returncode == 2
        assert p.stderr.strip().splitlines() == [f"moesim: error: workload.path={value}: {tail}"]
        assert not (tmp_path / "r").exists()


def test_the_quoting_it_suggests_is_read(tmp_path: Path) -> None:
    (tmp_path / "a(1).csv").write_text("arrival_s,prompt_tokens,output_tokens\n0,10,2\n1,10,2\n")
    p = _run(["-m", "moesim.simulate", "hydra.mode=RUN", "hydra.run.dir=r", "progress=false", "workload=trace",
              "workload.path='a(1).csv'"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "replaying 2 of 2 requests of a(1).csv" in p.stderr


def test_a_search_job_override_hydra_cannot_read_is_one_line(tmp_path: Path) -> None:
    # python -m moesim.search workload=trace workload.path=~/t.csv: an OverrideParseException traceback
    p = _run(["-m", "moesim.search", "workload=trace", "workload.path=~/t.csv", "search.out=s"], tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"moesim: error: workload.path=~/t.csv: ~ is not expanded here; write the full path: "
        f"workload.path={os.path.expanduser('~/t.csv')}"]
    assert not (tmp_path / "s").exists()


def test_serve_reads_a_trace_under_home_and_records_its_real_path(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # serve trace=~/t.csv (the shell expands ~ only at a word's start): "trace file '~/t.csv': no such file"
    import json

    from moesim.serve.config import ServeConfig
    from moesim.serve.run import run

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0,10,2\n0.5,12,3\n")
    cfg = ServeConfig(model="tiny", device="cpu", backend="cost", clock="virtual", trace="~/t.csv", tenants=2,
                      out=str(tmp_path / "s"))
    doc = run(cfg, [], log=lambda *a, **k: None)
    assert doc["trace"]["n_requests"] == 2
    # moesim.serve.validate re-reads the trace from here: it was <cwd>/~/t.csv
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["config"]["trace"] == str(tmp_path / "t.csv")


@pytest.mark.parametrize("mode", [["hydra.mode=RUN", "hydra.run.dir=r"], ["-m", "hydra.sweep.dir=r"]])
def test_a_comma_list_for_a_list_key_says_to_bracket_it(tmp_path: Path, mode: list[str]) -> None:
    # the help calls workload.weights a "comma list": workload.weights=4,1 was "a sweep in a single run" in a run
    # and "int is not a ListConfig" per job in a multirun
    p = _run(["-m", "moesim.simulate", *mode, "workload.popularity=weights", "workload.weights=4,1"], tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "moesim: error: workload.weights=4,1: workload.weights holds a list, and hydra reads a,b unquoted as a sweep; "
        "write workload.weights=[4,1] (to sweep lists: workload.weights=[..],[..] with -m)"]
    assert not (tmp_path / "r").exists()


def test_a_sweep_of_lists_still_runs(tmp_path: Path) -> None:
    import pandas as pd

    p = _run(["-m", "moesim.simulate", "-m", "hydra.sweep.dir=r", "progress=false", "sweep.seeds=0", "policy=mig",
              "workload.duration_s=20", "workload.popularity=weights", "workload.weights=[1,2],[2,1]"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert len(pd.read_csv(tmp_path / "r" / "summary.csv")) == 12  # 2 weightings × 6 rates


def test_simulate_help_writes_list_keys_in_brackets() -> None:
    # "workload.weights=''  (comma list of float)": written so, hydra read it as a sweep
    p = _run(["-m", "moesim.simulate", "--help"], ROOT)
    assert "  workload.weights=[]  (list of float, in brackets: [a,b])\n" in p.stdout
    assert "  report.baselines=[mig,reconfig]  (list of str, in brackets: [a,b])\n" in p.stdout
    assert "comma list" not in p.stdout
    # the tools that read a,b themselves keep it
    from moesim.cli import key_lines
    from moesim.search.config import SearchConfig

    assert any("search.gpus=a100-80gb,h100-80gb,h200  (comma list of str)" in ln for ln in key_lines(SearchConfig, prefix="search."))


def test_the_idle_gpus_note_suggests_fleet_gpus_only_where_it_runs_the_same_placement() -> None:
    # fleet=file (no fleet.gpus key) and a placement on GPUs 0 and 2 were both told "fleet.gpus=N runs the same
    # placement without the idle ones"
    from moesim.fleet.placement import GPUPlacement, Placement
    from moesim.fleet.run import idle_gpus_note

    head = "placement=file uses 2 of the fleet's 4 GPUs and leaves GPUs "
    spread = ("idle; placement=per_variant or everywhere spreads the tenants over every GPU")
    first = Placement((GPUPlacement(0, (0,)), GPUPlacement(1, (1,))), "file")
    gap = Placement((GPUPlacement(0, (0,)), GPUPlacement(2, (1,))), "file")
    assert idle_gpus_note(first, 4, "file", "multiplex") == (
        f"{head}2, 3 {spread}, fleet.gpus=2 runs the same placement without the idle ones")
    assert idle_gpus_note(first, 4, "file", "multiplex", "file") == (
        f"{head}2, 3 {spread}, a fleet file of its first 2 GPUs alone runs the same placement")
    assert idle_gpus_note(gap, 4, "file", "multiplex") == f"{head}1, 3 {spread}"
    assert idle_gpus_note(gap, 4, "file", "multiplex", "file") == f"{head}1, 3 {spread}"


def test_the_rejection_banner_says_why_from_the_requests(tmp_path: Path) -> None:
    # "N requests were rejected (they could not fit an instance)" also when a placement put a tenant on no GPU
    f = tmp_path / "t.csv"
    f.write_text("arrival_s,prompt_tokens,output_tokens\n0,100,20\n1,40000,10\n2,50,10\n3,40100,5\n")
    p = _run(["-m", "moesim.simulate", "-m", "hydra.sweep.dir=S", "progress=false", "policy=multiplex",
              "sweep.seeds=0", "workload.rate=1", "workload=trace", f"workload.path={f}"], tmp_path)
    assert p.returncode == 0, p.stderr
    html = (tmp_path / "S" / "report.html").read_text()
    assert ("2 requests were <b>rejected</b> (reasons: context 40010 &gt; model max 32768 and alike: 2) in 1 jobs"
            in html)
    import pandas as pd

    from moesim.report import _rejection_reasons
    from moesim.report.data import SweepData
    from moesim.report.options import ReportOptions
    from moesim.sweep import collect

    data = SweepData(tmp_path / "S", collect(tmp_path / "S"), ReportOptions())
    assert _rejection_reasons(data, pd.Series(["0", "nope"])) == (
        "reasons: context 40010 > model max 32768 and alike: 2")
    assert _rejection_reasons(data, pd.Series(["nope"])) == "they could not fit an instance"


def test_the_report_of_a_search_or_served_run_names_the_tool_that_reads_it(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # "no jobs found (no */summary.json, …); is it a sweep dir?" for a search's folder, and "./summary.json:
    # missing policy, rate, seed, tenants" for a served run's
    import json

    from moesim.report.__main__ import main

    s = tmp_path / "search"
    s.mkdir()
    (s / "search.csv").write_text("gpu,gpus\nh200,1\n")
    v = tmp_path / "served"
    v.mkdir()
    (v / "summary.json").write_text(json.dumps({"config": {"backend": "cost", "model": "tiny"}, "status": "ok"}))
    for d, line in ((s, f"{s}: holds a capacity search (python -m moesim.search), whose own report.html the search "
                        "writes; python -m moesim.report reads simulate sweeps (hydra.sweep.dir)"),
                    (v, f"{v}: holds a served run (python -m moesim.serve); python -m moesim.serve.validate {v} "
                        "simulates it again and writes the errors; python -m moesim.report reads simulate sweeps "
                        "(hydra.sweep.dir)")):
        with pytest.raises(SystemExit) as e:
            main([str(d)])
        assert e.value.code == 2
        assert capsys.readouterr().err == f"moesim: error: {line}\n"
        assert not (d / "report.html").exists()
        assert not (d / "summary.csv").exists()


def test_sweep_seeds_given_as_a_count_is_flagged(tmp_path: Path) -> None:
    # sweep.seeds=3 ran one job per point (seed 3) where three repetitions were meant, with nothing said
    args = ["-m", "moesim.simulate", "-m", "hydra.sweep.dir=S", "progress=false", "policy=mig", "workload.rate=0.1",
            "workload.duration_s=10"]
    p = _run([*args, "sweep.seeds=3"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines()[0] == ("moesim: warning: sweep.seeds=3 runs seed 3 alone (one repetition): the key "
                                        "lists seeds, not their count; 3 repetitions are sweep.seeds=0,1,2")
    assert "moesim: sweep of 1 jobs into S/" in p.stderr
    for seeds in ("sweep.seeds=1", "sweep.seeds='0,1'"):
        p = _run([*args, f"hydra.sweep.dir=T{len(seeds)}", seeds], tmp_path)
        assert p.returncode == 0, p.stderr
        assert "warning" not in p.stderr


def test_a_misspelt_mapped_column_gets_the_files_nearest_column(tmp_path: Path) -> None:
    from moesim.workloads import read_trace

    f = tmp_path / "t.csv"
    f.write_text("ts_ms,input_length,output_length\n0,10,2\n")
    with pytest.raises(UserError) as e:
        read_trace(f, tenants=2, columns={"timestamp": "ts_ms", "prompt_tokens": "input_lenght",
                                          "output_tokens": "output_length"})
    assert str(e.value) == (f"trace file {str(f)!r}: no column 'input_lenght' for prompt_tokens (did you mean "
                            "'input_length'?) (has: ts_ms, input_length, output_length)")


def test_a_held_out_step_of_one_tenant_is_singular() -> None:
    # the calibrator's validation listed "prefill 13 (1 tenants)"
    from moesim.calibrate.validate import describe

    assert describe([(0, 13, 0)]) == "prefill 13 (1 tenant)"
    assert describe([(0, 9, 0), (1, 1, 11), (2, 1, 11)]) == "prefill 9 + decode 2×ctx~11 (3 tenants)"


def test_the_executors_line_reads_milliseconds_as_such(tmp_path: Path) -> None:
    # "mean turnaround sim 0.003 s vs meas 0.039 s": three decimals of seconds for a tiny model's steps
    pytest.importorskip("torch")
    from moesim.executor.config import parse_args
    from moesim.executor.run import run

    lines: list[str] = []
    cfg = parse_args(["device=cpu", "model=tiny", "max_requests=3", "max_prompt=20", "max_output=3",
                      "policies=multiplex:4", f"out={tmp_path}"])
    run(cfg, [], log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    (line,) = [ln for ln in lines if "vs meas" in ln]
    import re

    m = re.search(r"mean turnaround sim (\S+ \S+) vs meas (\S+ \S+) \(", line)
    assert m is not None, line
    assert m.group(1).endswith((" ms", " µs")), line  # a tiny model's steps on a simulated H200
    assert m.group(2).endswith((" ms", " µs")), line


def test_the_sweep_bar_in_a_log_file_is_not_redrawn_twice_a_second(tmp_path: Path) -> None:
    # `python -m moesim.simulate 2> log`: the bar was redrawn every 0.5 s into one ever longer line of the log
    from moesim import sweep

    assert sweep.LOG_INTERVAL_S == 60.0
    p = _run(["-m", "moesim.simulate", "-m", "hydra.sweep.dir=S", "policy=reconfig,multiplex", "seed=0,1",
              "workload.duration_s=120"], tmp_path)
    assert p.returncode == 0, p.stderr
    draws = [d for d in p.stderr.replace("\r", "\n").splitlines() if d.startswith("sweep:")]
    assert draws[0].startswith("sweep:   0%|")
    assert draws[-1].startswith("sweep: 100%|██████████| 24/24 [")
    assert len(draws) <= 3, draws  # the start, the end (and one a minute)


def test_the_search_bar_in_a_log_file_is_drawn_at_most_once_a_minute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # the search's bar was redrawn every 0.5 s into a log file too
    import tqdm.auto

    from moesim.search.__main__ import main

    seen: list[float] = []
    real = tqdm.auto.tqdm

    def recording(*a: object, **k: object) -> object:
        seen.append(float(k["mininterval"]))  # type: ignore[arg-type]
        return real(*a, **k)

    monkeypatch.setattr(tqdm.auto, "tqdm", recording)
    monkeypatch.chdir(tmp_path)
    main(["workload=poisson", "workload.tenants=2", "workload.rate=0.2", "workload.duration_s=30",
          "search.gpus=h200", "search.strategies=per_variant", "search.policies=multiplex", "search.max_gpus=2",
          "search.seeds=0", "search.backend=local", "search.out=s"])
    assert seen == [60.0]  # capsys' stderr is not a terminal
    draws = [d for d in capsys.readouterr().err.replace("\r", "\n").splitlines() if d.startswith("search:")]
    assert 1 <= len(draws) <= 3, draws
