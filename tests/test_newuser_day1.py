"""Surprises a new user met on their first day (issue 8 verified as a user), each pinned by a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moesim.errors import UserError
from moesim.specs import get_gpu
from moesim.specs.gpus import DATA_DIR
from moesim.specs.hf import spec_from_config

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "moesim" / "specs" / "data" / "models"


def _simulate(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    d = tmp_path / name
    return subprocess.run([sys.executable, "-m", "moesim.simulate", "hydra.mode=RUN", f"hydra.run.dir={d}",
                           "progress=false", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_user_gpu_file_keeping_a_shipped_name_is_simulated_with_its_own_figures(tmp_path: Path) -> None:
    # a copy of h200.yaml with 1/10 of the HBM bandwidth and FLOP/s, still called h200: the run must use
    # the file's figures (it silently simulated the shipped H200 before)
    text = (DATA_DIR / "h200.yaml").read_text()
    slow = tmp_path / "slow.yaml"
    slow.write_text(text.replace("hbm_GBps: 4800", "hbm_GBps: 480").replace("bf16_tflops: 989", "bf16_tflops: 98"))
    renamed = tmp_path / "mygpu.yaml"
    renamed.write_text(text.replace("name: h200\n", "name: mygpu\n"))
    runs = {}
    for key, gpu in (("shipped", "h200"), ("slow", str(slow)), ("renamed", str(renamed))):
        p = _simulate(tmp_path, key, f"gpu={gpu}", "cost=roofline", "workload.duration_s=60")
        assert p.returncode == 0, p.stderr  # mygpu: "unknown gpu 'mygpu'" before
        runs[key] = json.loads((tmp_path / key / "summary.json").read_text())
    assert runs["renamed"]["gpu"] == "mygpu"
    assert runs["renamed"]["mean_turnaround_s"] == pytest.approx(runs["shipped"]["mean_turnaround_s"], rel=1e-12)
    assert runs["slow"]["mean_turnaround_s"] > 2 * runs["shipped"]["mean_turnaround_s"]


def test_get_gpu_returns_a_loaded_spec_as_it_is() -> None:
    spec = get_gpu(str(DATA_DIR / "h200.yaml"))
    assert get_gpu(spec) is spec


def test_model_config_with_more_experts_per_token_than_experts_is_refused() -> None:
    cfg = json.loads((MODELS_DIR / "mixtral-8x7b.json").read_text())
    cfg["num_experts_per_tok"] = 16
    with pytest.raises(UserError, match=r"x.json: field 'num_experts_per_tok'=16 exceeds the number of routed "
                                        r"experts \(8\); must be an integer in 1\.\.8"):
        spec_from_config(cfg, "x", "x.json")
    cfg["num_experts_per_tok"] = 8
    assert spec_from_config(cfg, "x", "x.json").top_k == 8


@pytest.mark.parametrize(("argv", "message"), [
    (["--compare-rates", "0.3"], "compare_rates=0.3: not a swept rate of"),
    (["--compare-rates", "0.1,0.7"], "compare_rates=0.7: not a swept rate of"),
    (["--cdf-rate", "0.3"], "cdf_rate=0.3: not a swept rate of"),
])
def test_report_rates_that_no_job_ran_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  argv: list[str], message: str) -> None:
    # before: --compare-rates 0.3 silently emptied every "vs" column; --cdf-rate 0.3 plotted another rate
    from test_report_helpers import make_sweep

    from moesim.report.__main__ import main as report_main

    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    with pytest.raises(SystemExit) as exc:
        report_main([str(root), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert message in err
    assert err.rstrip().endswith("valid: 0.1, 0.2, 0.4 (requests/s per tenant)")
    assert not (root / "report.html").exists()
    report_main([str(root), "--compare-rates", "0.2", "--cdf-rate", "0.4"])
    assert (root / "report.html").exists()


def test_a_closed_stdout_ends_a_command_quietly() -> None:
    # `python -m moesim.specs models --csv | head -1` printed a BrokenPipeError traceback
    code = ("import sys, os\n"
            "r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
            "from moesim.specs.__main__ import main\n"
            "main(['models', '--csv'])\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 141, p.stderr
    assert p.stderr == ""


@pytest.mark.parametrize(("argv", "message"), [
    (["--gpus", "0"], "gpus=0: must be an integer ≥ 1"),
    (["variants=0"], "variants=0: must be an integer ≥ 1"),  # a numpy traceback before
    (["--requests", "0"], "requests=0: must be an integer ≥ 1"),  # a numpy traceback before
    (["load=-1"], "load=-1.0: must be a finite number > 0"),  # ran on silently before
    (["policy=nope"], "policy='nope': valid: dedicated, mig"),  # "no GPU has memory room" before
    (["--zipf", "nan"], "zipf='nan': expected a finite number"),
])
def test_fleet_bench_takes_key_values_and_refuses_bad_ones_in_one_line(
        capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    from moesim.fleet.bench import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert message in err


def test_fleet_bench_and_specs_answer_help_with_keys_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from moesim.fleet.bench import FleetBenchConfig, parse_args
    from moesim.specs.__main__ import main as specs_main

    assert parse_args(["gpus=4", "--variants", "8", "requests=100"]) == FleetBenchConfig(variants=8, gpus=4,
                                                                                        requests=100)
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    assert "gpus=32  (int)" in out
    assert "load=0.6  (float)" in out
    assert specs_main(["gpus", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("gpu,status,sms,memory_GiB")
    with pytest.raises(SystemExit):
        specs_main(["gpu"])
    assert "what='gpu' (did you mean 'gpus'?): valid: all, models, gpus" in capsys.readouterr().err


def test_report_out_that_is_a_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `python -m moesim.report D --out D` was an IsADirectoryError traceback
    from test_report_helpers import make_sweep

    from moesim.report.__main__ import main as report_main

    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    with pytest.raises(SystemExit) as exc:
        report_main([str(root), "--out", str(root)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == f"moesim: error: out={root}: is a folder; give a file path\n"
    assert not (root / "summary.csv").exists()


def test_search_report_keeps_gpu_order_and_coinciding_lines_visible() -> None:
    # the placement chart listed GPU 0, GPU 4, GPU 1, ... (plotly's first-appearance order over variants),
    # and reconfig's GPUs-needed line was hidden exactly under swap's (both 32, 33, 34 GPUs)
    import numpy as np
    import pandas as pd

    from moesim.search.report import needed_vs_rate, placement_figure

    placement = [{"gpu": 0, "tenants": [0]}, {"gpu": 1, "tenants": [1]}, {"gpu": 2, "tenants": [0, 2]}]
    fig = placement_figure(placement, np.array([2.0, 1.0, 1.0]))
    assert fig.data[0].y == ("GPU 0", "GPU 2")  # variant 0 first: GPU 2 before GPU 1 by appearance
    assert tuple(fig.layout.yaxis.categoryarray) == ("GPU 0", "GPU 1", "GPU 2")
    assert fig.layout.yaxis.categoryorder == "array"
    needed = pd.DataFrame({"policy": ["reconfig"] * 2 + ["swap"] * 2, "gpu": ["h200"] * 4,
                           "load": [0.5, 1.0] * 2, "needed": [32, 33, 32, 33]})
    fig = needed_vs_rate(needed, {0.5: 8.0, 1.0: 16.0})
    under, over = fig.data
    assert (under.name, over.name) == ("reconfig · h200", "swap · h200")
    assert list(under.y) == list(over.y)  # they coincide ...
    assert under.line.width > over.line.width  # ... and the one drawn first shows around the other
    assert under.marker.size > over.marker.size
    assert under.marker.symbol != over.marker.symbol


def test_an_unsorted_trace_warns_in_one_line(tmp_path: Path) -> None:
    # the warning came with Python's "file.py:63: UnsortedTraceWarning:" prefix and the source line below it
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,2\n2,10,2\n1,10,2\n")
    p = _simulate(tmp_path, "u", "workload=trace", f"workload.path={trace}")
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if "not sorted" in ln]
    assert lines == [f"moesim: warning: trace file '{trace}': arrival times are not sorted (row 3 is earlier "
                     "than row 2, 1 such rows); sorted them by time"]
    assert "read_trace(" not in p.stderr


def test_memory_figure_is_tall_enough_for_its_legend_and_host_axis_starts_at_zero(tmp_path: Path) -> None:
    # with few series the legend (6 entries) was cut behind a scroll bar; a sweep with nothing on the host
    # drew the host panel's axis from -1 to 1 GB
    import json as _json

    from test_report_helpers import make_sweep

    from moesim.report import figures as F
    from moesim.report.data import SweepData
    from moesim.report.options import ReportOptions
    from moesim.sweep import collect

    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    for inst in root.glob("*/instances.json"):  # nothing on the host
        rows = _json.loads(inst.read_text())
        for r in rows if isinstance(rows, list) else rows.get("instances", []):
            r["host_expert_bytes"] = 0
        inst.write_text(_json.dumps(rows))
    data = SweepData(root, collect(root), ReportOptions())
    fig = F.FIGURES["memory"](data)
    n_legend = sum(1 for t in fig.data if t.showlegend is not False)
    assert n_legend == 6
    assert fig.layout.height >= 230 + 26 * n_legend
    host = next(t for t in fig.data if t.meta and t.meta.get("key") == "host_expert_bytes")
    assert max(host.x) == 0
    assert tuple(fig.layout.xaxis2.range) == (0, 1)


def test_simulate_help_lists_fleet_placement_and_router_keys_with_their_meaning() -> None:
    # they were one line each, "fleet={'name': 'uniform', 'gpus': 1, ...}  (Any)", with no meaning; and a
    # docstring opening with "Attributes:" (the fleet configs) gave no descriptions
    from moesim.cli import field_docs
    from moesim.config import simulate_help
    from moesim.fleet.options import UniformFleetConfig

    assert field_docs(UniformFleetConfig)["gpus"] == "number of GPUs (≥ 1)."
    text = simulate_help(["placement=greedy_slo", "router=affinity"])
    assert "fleet={'name'" not in text
    assert "keys of fleet=uniform (another option: fleet=<name> --help):\n  fleet.gpus=1  (int)\n" \
           "      number of GPUs (≥ 1)." in text
    assert "  placement.max_replicas=0  (int)\n      most copies of one variant (0: no limit)." in text
    assert "keys of router=affinity" in text


def test_fleet_sweep_report_says_which_fleet_placement_and_router_ran(tmp_path: Path) -> None:
    # the configuration table of a fleet sweep named no placement strategy nor router
    d = tmp_path / "fsw"
    p = subprocess.run([sys.executable, "-m", "moesim.simulate", "-m", f"hydra.sweep.dir={d}", "fleet.gpus=1,2",
                        "placement=pack", "router=affinity", "policy=multiplex", "workload.tenants=4",
                        "workload.rate=0.2", "workload.duration_s=30", "seed=0", "hydra.launcher.n_jobs=1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    html = (d / "report.html").read_text()
    assert "<td>placement</td><td>pack (utilization=0.7, similarity=none)</td>" in html
    assert "<td>router</td><td>affinity (seed=0, max_extra_tokens=4096)</td>" in html
    assert "<td>fleet</td><td>uniform (gpus=1, gpu=the job&#x27;s gpu" in html
    assert "uniform (gpus=2, gpu=the job&#x27;s gpu" in html
    # one policy on two fleets was announced as "2 policies"
    assert "</code>: 2 series (1 policy × other swept settings) × 1 arrival rate × 1 seed," in html


def test_too_many_mig_tenants_says_which_key_to_change() -> None:
    from moesim.specs.mig import equal_layout

    with pytest.raises(UserError, match=r"^h200 has no MIG layout with 9 instances \(one per tenant; at most 7\): "
                                        r"use workload.tenants ≤ 7, or name a layout with policy.layout=$"):
        equal_layout(get_gpu("h200"), 9)
    assert len(equal_layout(get_gpu("h200"), 7).instances) == 7


@pytest.mark.parametrize("module", ["moesim.calibrate.floors", "moesim.calibrate.validate"])
def test_profile_tools_answer_help_and_refuse_unknown_keys(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    # --help was "moesim: error: usage: ..." (exit 2), and a typo (per_ops=3) was silently ignored
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {module} ")
    assert out.split("\n", 1)[0].endswith("[key=value ...]")
    assert "  profile=''  (str" in out
    with pytest.raises(SystemExit) as exc:
        main(["profile=x.parquet", "per_ops=3"])
    assert exc.value.code == 2
    assert "unknown key 'per_ops'" in capsys.readouterr().err


def test_calibrate_validate_reads_the_shipped_profile(capsys: pytest.CaptureFixture[str]) -> None:
    from moesim.calibrate.validate import main

    main([f"profile={ROOT / 'calibration' / 'profiles' / 'h200__mixtral-8x7b.parquet'}"])
    assert capsys.readouterr().out.splitlines()[-1].startswith("median |error| 2.54%")


def test_a_nested_key_under_a_missing_one_is_named_with_the_valid_keys(tmp_path: Path) -> None:
    # "Could not override 'workload.columns.prompt_tokens'.: unknown key 'columns'" named no valid keys
    p = _simulate(tmp_path, "c", "workload=poisson", "workload.columns.prompt_tokens=x")
    assert p.returncode == 2
    assert p.stderr.strip() == ("moesim: error: workload.columns.prompt_tokens=x: unknown key 'columns'; valid keys "
                                "of workload: name, rate, tenants, duration_s, prompt_tokens, output_tokens, "
                                "popularity, zipf_s, weights, tokens_from, max_requests")


def test_executor_default_output_is_not_a_committed_reports_folder() -> None:
    # it defaulted to reports/validation/run: from the repository root, into the source tree's reports/
    from moesim.executor.config import ExecutorConfig

    out = ExecutorConfig().out
    assert out == "executor_out"
    assert not out.startswith("reports")


def test_a_sweeps_own_cdf_rate_that_it_did_not_run_still_gets_a_report(tmp_path: Path) -> None:
    # the report's refusal of an unswept --cdf-rate must not leave a sweep (report.cdf_rate=0.3 in its
    # config) without its report: that one falls back to the default and says so. (simulate now refuses such a
    # report.cdf_rate before the sweep runs, tests/test_newuser_day4.py; a sweep's multirun.yaml edited later,
    # or written before that check, still holds one)
    from omegaconf import OmegaConf

    d = tmp_path / "rc"
    p = subprocess.run([sys.executable, "-m", "moesim.simulate", "-m", f"hydra.sweep.dir={d}", "policy=mig",
                        "workload.rate=0.1,0.2", "workload.duration_s=30", "seed=0",
                        "hydra.launcher.n_jobs=1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    cfg = OmegaConf.load(d / "multirun.yaml")
    cfg.report.cdf_rate = 0.3
    OmegaConf.save(cfg, d / "multirun.yaml")
    from moesim.report import build_report

    html = build_report(d, warn=None).read_text()
    assert (f"report.cdf_rate=0.3: not a swept rate of {d}; valid: 0.1, 0.2 (requests/s per tenant); this report "
            "uses the default instead") in html
    from moesim.report.__main__ import main as report_main

    report_main([str(d)])  # the sweep's own setting again: a report, not an error
    with pytest.raises(SystemExit):
        report_main([str(d), "--cdf-rate", "0.3"])  # given by the user: refused


def test_a_misspelt_top_level_key_gets_the_nearest_one(tmp_path: Path) -> None:
    # polcy=mig named the valid keys but, unlike +polcy=mig, not the nearest one
    p = _simulate(tmp_path, "t", "polcy=mig")
    assert p.returncode == 2
    assert p.stderr.startswith("moesim: error: polcy=mig: unknown key 'polcy' (did you mean 'policy'?); valid keys: ")


def test_a_replay_at_its_own_times_records_the_rate_it_replays(tmp_path: Path) -> None:
    # a trace replayed as recorded (rate=0) was reported at "0 requests/s per tenant": the verdict read
    # "sustains ≥ 0 requests/s" and the rate axis ran from -1 to 1
    import json as _json

    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens,tenant\n0,10,2,a\n1.5,10,2,b\n2.2,10,2,a\n"
                     "4.1,10,2,b\n6,10,2,c\n")
    p = _simulate(tmp_path, "u", "workload=trace", f"workload.path={trace}", "workload.tenants=3")
    assert p.returncode == 0, p.stderr
    summary = _json.loads((tmp_path / "u" / "summary.json").read_text())
    assert summary["rate"] == pytest.approx(5 / 6.0 / 3)  # 5 requests over 6 s, 3 tenants
    from moesim.report import build_report

    html = build_report(tmp_path / "u").read_text()
    assert "≥ 0.2778 requests/s per tenant on 1 GPU" in html  # four significant figures, not 0.277778
    # a rate given is the rate recorded
    p = _simulate(tmp_path, "v", "workload=trace", f"workload.path={trace}", "workload.tenants=3",
                  "workload.rate=0.5")
    assert p.returncode == 0, p.stderr
    assert _json.loads((tmp_path / "v" / "summary.json").read_text())["rate"] == 0.5
