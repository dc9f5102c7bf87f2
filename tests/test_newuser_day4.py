"""Surprises a new user met on day 4 (the previous audit's leftovers, then the README's commands with odd inputs
from a scratch folder), each pinned by a test that failed before its fix."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from moesim.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """This checkout's moesim from any working directory."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _serve(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``python -m moesim.serve`` in-process: (exit status, stdout, stderr)."""
    from moesim.serve.__main__ import main

    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_serve_replays_a_users_trace_through_the_simulators_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # python -m moesim.serve took only azure_conv or poisson: a user's own trace (which the simulator replays with
    # workload=trace workload.path=F and column maps) could not be served at all
    monkeypatch.chdir(tmp_path)
    (tmp_path / "u.csv").write_text("ts_ms,input_length,output_length,user\n3000,10,5,alice\n1000,20,4,bob\n"
                                    "2000,30,3,alice\n2500,2000,3,carol\n")
    base = ["device=cpu", "model=tiny", "backend=cost", "clock=virtual", "sim_cost=roofline", "out=s"]
    # the loader's one-line error, in this tool's spelling: the hint it prints is a command line that works
    code, _, err = _serve([*base, "trace=u.csv"], capsys)
    assert code == 2
    hint = ("map yours with columns.timestamp=ts_ms time_unit=ms columns.prompt_tokens=input_length "
            "columns.output_tokens=output_length")
    assert err.strip().endswith(hint)
    assert err.count("\n") == 1
    assert not (tmp_path / "s").exists()
    # the simulator's spellings work too (workload.path=, workload.columns.X=)
    with pytest.warns(UserWarning, match="not sorted"):
        code, out, err = _serve([*base, "workload.path=u.csv", *hint.split()[3:], "workload.columns.tenant=user"],
                                capsys)
    assert code == 0, err
    assert ("serve: replaying 4 of 4 requests of u.csv (whole trace; 2.0 s); no request for tenant 3 of tenants=4 "
            "(the trace's tenants: alice, bob, carol): it still takes its place on the GPU; tenants=3 serves only the "
            "trace's; capped 1 prompts at max_prompt=1024 tokens") in out
    r = pd.read_parquet(tmp_path / "s" / "requests.parquet").sort_values("request_id")
    assert r.arrival_s.tolist() == [0.0, 1.0, 1.5, 2.0]  # sorted, ms read as ms, relative to the first
    assert r.tenant_name.tolist() == ["bob", "alice", "carol", "alice"]
    assert r.prompt_tokens.tolist() == [20, 30, 1024, 10]
    assert (r.finish_s > r.arrival_s).all()
    assert len(r) == 4
    sim = pd.read_parquet(tmp_path / "s" / "simulated_requests.parquet")
    assert len(sim) == 4
    s = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert s["n_requests"] == 4
    assert s["rejected"] == 0
    assert s["trace"]["tenant_names"] == ["alice", "bob", "carol"]
    assert out.splitlines()[0] == f"serve: {s['trace']['selection']}"  # kept, as simulate's workload_selection
    assert s["config"]["workload"] == "trace"
    assert s["config"]["rate"] == 0.0


@pytest.mark.parametrize(("args", "line"), [
    (["workload=trace"], "workload=trace needs trace=FILE (a .csv, .jsonl or .parquet trace; docs/workloads.md)"),
    (["workload=poisson", "trace=t.csv"], "trace='t.csv' applies to a trace file; workload='poisson' does not read "
                                          "one (give trace=FILE and leave workload= out)"),
    (["trace=t.csv", "trace_format=azure"], "trace_format='azure' is invalid (did you mean 'azure2023' or 'azure2024'?); valid: '', "
                                            "'azure2023', 'azure2024', 'mooncake', 'burstgpt'"),
    (["trace=t.csv", "columns=foo"], "columns='foo': expected field:column with a field among arrival_s, timestamp, "
                                     "prompt_tokens, output_tokens, tenant (e.g. columns=prompt_tokens:input_length,"
                                     "output_tokens:output_length)"),
    (["trace=t.csv", "columns=prompt_tokens:a", "columns.prompt_tokens=b"],
     "columns: prompt_tokens is mapped twice ('a' and 'b'); map each field once"),
    (["trace=empty.csv"], "trace file 'empty.csv': no data rows (need columns arrival_s or timestamp, prompt_tokens, "
                          "output_tokens (tenant optional))"),
    (["trace=names.csv", "tenants=2"], "trace file 'names.csv': tenant names 3 tenants (a, b, c) but tenants=2; "
                                       "set tenants=3"),
])
def test_serve_trace_options_are_one_line_each(args: list[str], line: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0,10,2\n")
    (tmp_path / "empty.csv").write_text("arrival_s,prompt_tokens,output_tokens\n")
    (tmp_path / "names.csv").write_text("arrival_s,prompt_tokens,output_tokens,tenant\n0,1,1,a\n1,1,1,b\n2,1,1,c\n")
    code, _, err = _serve(["device=cpu", "model=tiny", "backend=cost", "clock=virtual", "out=s", *args], capsys)
    assert (code, err) == (2, f"moesim: error: {line}\n")
    assert not (tmp_path / "s").exists()


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "moesim.simulate", "hydra.mode=RUN", "progress=false", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=_env())


def test_throughput_says_how_it_was_computed_and_not_for_a_handful_of_requests(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a one-request trace printed "1162.23 req/min" (1 request over its own 0.05 s), 4 requests "130.51 req/min"
    from moesim.metrics import MIN_THROUGHPUT_REQUESTS, throughput_text

    assert MIN_THROUGHPUT_REQUESTS == 10
    assert throughput_text({"n_requests": 4, "rejected": 0, "span_s": 1.8391, "throughput_rpm": 130.5}) == \
        "4 served over 1.84 s: too few for a throughput figure"
    assert throughput_text({"n_requests": 12, "rejected": 2, "span_s": 300.0, "throughput_rpm": 2.0}) == \
        "2.00 req/min (10 served over 300 s)"
    assert throughput_text({"n_requests": 4, "rejected": 0, "span_s": 172800.62, "throughput_rpm": 0.0014}) == \
        "4 served over 172,801 s: too few for a throughput figure"  # a trace in ms with day-long gaps
    (tmp_path / "t1.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0,10,2\n")
    p = _run(tmp_path, "hydra.run.dir=r", "workload=trace", "workload.path=t1.csv", "cost=roofline")
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert f"{throughput_text(s)};" in p.stdout
    assert "too few for a throughput figure" in p.stdout
    assert "req/min" not in p.stdout
    # serve says the same, the same way
    code, out, err = _serve(["device=cpu", "model=tiny", "backend=cost", "clock=virtual", "sim_cost=roofline",
                             "max_requests=3", "compare=false", f"out={tmp_path / 's'}"], capsys)
    assert code == 0, err
    s = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert f", 3 served over {s['span_s']:.3g} s: too few for a throughput figure, 0 swaps" in out


def test_the_reports_throughput_cell_is_a_dash_for_too_few_requests(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_report_helpers import make_sweep

    from moesim.io import write_json
    from moesim.report import build_report

    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    html = build_report(root, warn=None).read_text()
    assert "too few for a throughput figure" not in html  # 10 served per job: a figure
    for d in root.iterdir():
        if (d / "summary.json").exists():
            s = json.loads((d / "summary.json").read_text())
            write_json(d / "summary.json", {**s, "n_requests": 4})
    html = build_report(root, warn=None).read_text()
    assert html.count('title="4 served requests per job: too few for a throughput figure (fewer than 10)">—<') == \
        len({json.loads((d / "summary.json").read_text())["policy"] for d in root.iterdir()
             if (d / "summary.json").exists()})


def test_a_plan_for_more_variants_than_tenants_is_one_line_before_any_folder(tmp_path: Path) -> None:
    # a 4-variant consolidation plan with workload.tenants=2 ran silently, its memory counting the expert copies
    # of two variants nobody served; a job-level plan on a packed fleet mapped GPU 1's tenants to variants 0, 1
    from moesim.consolidation.plan import plan_from_distance_model
    from moesim.specs import get_model

    plan_from_distance_model(get_model("mixtral-8x7b"), 4, int(100e9)).save(tmp_path / "plan4.json")
    base = ["policy=reconfig", "policy.plan=plan4.json", "workload=poisson", "workload.rate=0.1",
            "workload.duration_s=30", "cost=roofline"]
    p = _run(tmp_path, "hydra.run.dir=r2", *base, "workload.tenants=2")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == (
        "moesim: error: policy.plan=plan4.json: the plan consolidates 4 variants (variant0, variant1, variant2, "
        "variant3) but 2 tenants are served; a plan's variant i serves tenant i, so the counts must match: build "
        "one for 2 (python -m moesim.consolidate … n_variants=2) or serve 4 tenants")
    assert not (tmp_path / "r2").exists()


def test_a_plans_model_and_fleet_are_checked_before_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moesim.config import plan_command_line, register_configs
    from moesim.consolidation.plan import plan_from_distance_model
    from moesim.specs import get_model

    plan_from_distance_model(get_model("mixtral-8x7b"), 4, int(100e9)).save(tmp_path / "plan4.json")
    base = ["policy=reconfig", "policy.plan=plan4.json", "workload=poisson", "workload.rate=0.1",
            "workload.duration_s=30", "cost=roofline"]

    register_configs()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        plan_command_line(["hydra.mode=RUN", "hydra.run.dir=m", *base, "workload.tenants=4", "model=qwen3-30b-a3b"])
    assert str(e.value) == "plan4.json: plan is for model 'mixtral-8x7b', the simulation uses 'qwen3-30b-a3b'"
    with pytest.raises(UserError) as e:
        plan_command_line(["hydra.mode=RUN", "hydra.run.dir=f", *base, "workload.tenants=4", "fleet.gpus=2",
                           "placement=per_variant"])
    assert str(e.value).startswith("policy.plan=plan4.json with placement=per_variant on 2 GPUs: a plan's variant i "
                                   "is the i-th tenant of the GPU it runs on")
    assert plan_command_line(["hydra.mode=RUN", "hydra.run.dir=ok", *base, "workload.tenants=4"]) is not None
    assert not any((tmp_path / d).exists() for d in ("m", "f", "ok"))
    # serve says it in its own key (plan=), for one GPU and per GPU of a fleet
    from moesim.serve.config import ServeConfig

    with pytest.raises(UserError, match=r"^plan=.*plan4.json: the plan consolidates 4 variants .* but 2 tenants"):
        ServeConfig(policy="reconfig", plan=str(tmp_path / "plan4.json"), tenants=2)
    with pytest.raises(UserError, match=r"plan4.json \(a GPU of the placement\): the plan consolidates 4 .* but 2"):
        ServeConfig(policy="multiplex", plan=str(tmp_path / "plan4.json"), tenants=4, gpus=2, placement="0,1;2,3")
    assert ServeConfig(policy="reconfig", plan=str(tmp_path / "plan4.json"), tenants=4).tenants == 4
    from moesim.policies.reconfig import plan_groups

    groups, shared = plan_groups(str(tmp_path / "plan4.json"), 4, get_model("mixtral-8x7b"))  # 4 tenants: taken
    assert shared == sum(g.positions for g in groups if g.on_gpu) > 0


def test_an_all_rejected_run_suggests_the_remedy_of_each_cause() -> None:
    # one request over Mixtral's context and one over the instance's KV cache: the line said "shorten the
    # requests, lower policy.weight_budget_fraction or use a larger GPU/profile" — no GPU fixes the first
    from moesim.cost import COST_MODELS
    from moesim.engine import simulate
    from moesim.errors import UserError
    from moesim.policies import POLICIES
    from moesim.specs import get_gpu, get_model
    from moesim.workloads.request import Request

    model, gpu = get_model("mixtral-8x7b"), get_gpu("a100-80gb")
    cost = COST_MODELS.build("roofline", {}, model=model, gpu=gpu)
    pol = POLICIES.build("reconfig", {"weight_budget_fraction": 0.9995})  # 0.204 GB of KV: 1,559 tokens

    def line(reqs: list[Request]) -> str:
        with pytest.raises(UserError) as e:
            simulate(model, gpu, pol, cost, reqs, n_tenants=2)
        return str(e.value)

    ctx = ("longer than mixtral-8x7b's context of 32,768 tokens (shorten them or use a model with a longer "
           "context: no GPU changes this)")
    kv = ("needing more KV cache than the instances hold (0.204 GB; shorten them, lower "
          "policy.weight_budget_fraction or use a larger GPU/MIG profile)")
    assert line([Request(0, 0, 0.0, 40_000, 10), Request(1, 1, 1.0, 1_500, 100)]) == \
        f"every one of the 2 requests is rejected: 1 {ctx}; 1 {kv}"
    assert line([Request(0, 0, 0.0, 1_500, 100), Request(1, 1, 1.0, 1_600, 100)]) == \
        f"every one of the 2 requests is rejected: 2 {kv}"
    assert "larger GPU" not in line([Request(0, 0, 0.0, 40_000, 10)])


def test_a_report_cdf_rate_no_job_runs_is_refused_before_the_sweep(tmp_path: Path) -> None:
    # report.cdf_rate=0.7 in a sweep of 0.1 and 0.2: the whole sweep ran, then the report said "not a swept rate
    # ... this report uses the default instead"
    d = tmp_path / "sw"
    p = subprocess.run([sys.executable, "-m", "moesim.simulate", "-m", f"hydra.sweep.dir={d}", "policy=multiplex",
                        "workload.rate=0.1,0.2", "seed=1", "workload.duration_s=30", "report.cdf_rate=0.7",
                        "progress=false"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=_env())
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "moesim: error: report.cdf_rate=0.7: not a rate this sweep runs; valid: 0.1, 0.2 (requests/s per tenant, "
        "the swept workload.rate)"]
    assert not d.exists()


def test_pack_leaving_a_gpu_idle_says_so_in_one_line(tmp_path: Path) -> None:
    # fleet.gpus=2 placement=pack policy=mig at a light load: both tenants on GPU 0 as MIG slices (mean turnaround
    # 3.4 s) while GPU 1 idled (0.4 s with one GPU each), with nothing said
    from moesim.fleet.placement import GPUPlacement, Placement
    from moesim.fleet.run import idle_gpus_note

    one = Placement((GPUPlacement(0, (0, 1)),), "pack")
    assert idle_gpus_note(one, 2, "pack", "mig") == (
        "placement=pack uses 1 of the fleet's 2 GPUs (pack fills as few GPUs as memory and load at "
        "placement.utilization allow) and leaves GPU 1 idle; with policy=mig GPU 0's 2 tenants share it as MIG "
        "slices; placement=per_variant or everywhere spreads the tenants over every GPU, fleet.gpus=1 runs the "
        "same placement without the idle ones")
    assert idle_gpus_note(Placement((GPUPlacement(0, (0,)), GPUPlacement(1, (1,))), "pack"), 2, "pack", "mig") is None
    p = _run(tmp_path, "hydra.run.dir=r", "fleet.gpus=2", "placement=pack", "policy=mig", "workload=poisson",
             "workload.tenants=2", "workload.rate=0.01", "workload.duration_s=300", "cost=roofline")
    assert p.returncode == 0, p.stderr
    warn = [ln for ln in p.stderr.splitlines() if "idle" in ln]
    assert warn == [f"moesim: warning: {idle_gpus_note(one, 2, 'pack', 'mig')}"]
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["placement_note"] == warn[0].removeprefix("moesim: warning: ")


def test_quality_report_lines_that_coincide_stay_visible_and_are_named() -> None:
    # in reports/consolidation, task arithmetic at scale 1/N is uniform averaging: their markers lay exactly on
    # top of each other and one method seemed missing from the panels
    pytest.importorskip("plotly")
    from moesim.consolidation.quality_report import _figures, load, summarize

    q, meta, _ = load(ROOT / "reports" / "consolidation")
    figs = {key: fig for key, _, fig in _figures(q, summarize(q, meta))}
    fig = figs["large-mean_change"]
    notes = [a.text for a in fig.layout.annotations if a.text.startswith("coincide")]
    assert notes == ["coincide: uniform-average = task-arithmetic"] * 2
    first = [t for t in fig.data if t.name == "uniform-average" and t.xaxis == "x"]
    later = [t for t in fig.data if t.name == "task-arithmetic" and t.xaxis == "x"]
    assert list(first[0].y) == list(later[0].y)  # the same numbers ...
    assert (first[0].marker.symbol, later[0].marker.symbol) == ("x", "x-open")  # ... drawn differently
    assert later[0].marker.size > first[0].marker.size
    assert later[0].line.dash == "dash"
    assert first[0].line.dash is None
    assert "(same as uniform-average)" in later[0].hovertemplate
    assert "same as" not in first[0].hovertemplate
    # our plan's line coincides with nothing: drawn as before
    ours = next(t for t in fig.data if t.name == "act-cluster-mean")
    assert (ours.marker.symbol, ours.line.dash) == ("circle", None)


@pytest.mark.parametrize(("name", "valid", "hint"), [
    ("MIG", ["mig", "multiplex"], " (did you mean 'mig'?)"),
    ("TINY", ["mixtral-8x7b", "tiny"], " (did you mean 'tiny'?)"),
    ("Poisson", ["gamma", "poisson"], " (did you mean 'poisson'?)"),
])
def test_a_name_in_the_wrong_case_gets_its_right_spelling(name: str, valid: list[str], hint: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # policy=MIG: "unknown policy 'MIG'; valid: ..., mig, ..." without the hint a misspelling gets
    from moesim.errors import did_you_mean

    assert did_you_mean(name, valid) == hint
    code, _, err = _serve(["device=cpu", "model=TINY"], capsys)
    assert code == 2
    assert err.startswith("moesim: error: model='TINY' (did you mean 'tiny'?): valid: ")


def test_one_line_latencies_of_a_tiny_model_are_not_zero(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # model=tiny on the virtual clock printed "served 1 requests ...: mean turnaround 0.000 s, mean TTFT 0.000 s"
    from moesim.metrics import seconds_text

    assert [seconds_text(x) for x in (0.052, 0.00541, 6.03e-05, 0.0, float("nan"), 12.5)] == \
        ["0.052 s", "5.41 ms", "60.3 µs", "0.000 s", "n/a", "12.500 s"]
    code, out, err = _serve(["device=cpu", "model=tiny", "backend=cost", "clock=virtual", "sim_cost=roofline",
                             "max_requests=1", "compare=false", f"out={tmp_path / 's'}"], capsys)
    assert code == 0, err
    s = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert (f"served 1 request in 0.0 s (virtual clock): mean turnaround {seconds_text(s['mean_turnaround_s'])}, "
            f"mean TTFT {seconds_text(s['mean_ttft_s'])}, ") in out
    assert "0.000 s" not in out


def test_a_trace_naming_fewer_tenants_than_configured_says_who_gets_nothing(tmp_path: Path) -> None:
    # a trace of one tenant ("a") with the default workload.tenants=2 and policy=mig: two MIG slices, one idle
    # for a tenant without a request, and not a word about it
    from moesim.workloads import WORKLOADS

    f = tmp_path / "one.csv"
    f.write_text("arrival_s,prompt_tokens,output_tokens,tenant\n0,5,2,a\n1,5,2,a\n")
    wl = WORKLOADS.build("trace", {"path": str(f), "tenants": 2})
    assert wl.selection(2) == (f"replaying 2 of 2 requests of {f} (whole trace; 1.0 s); no request for tenant 1 of "
                               "workload.tenants=2 (the trace's tenants: a): it still takes its place on the GPU; "
                               "workload.tenants=1 serves only the trace's")
    assert "no request" not in WORKLOADS.build("trace", {"path": str(f), "tenants": 1}).selection(2)
    g = tmp_path / "ids.csv"
    g.write_text("arrival_s,prompt_tokens,output_tokens,tenant\n0,5,2,2\n1,5,2,2\n")
    assert WORKLOADS.build("trace", {"path": str(g), "tenants": 3}).selection(2).endswith(
        "; no request for tenants 0, 1 of workload.tenants=3 (the replayed rows name tenant 2): it still takes its "
        "place on the GPU")
    # without a tenant column the tenants are assigned: nothing to say
    h = tmp_path / "plain.csv"
    h.write_text("arrival_s,prompt_tokens,output_tokens\n0,5,2\n")
    assert "no request" not in WORKLOADS.build("trace", {"path": str(h), "tenants": 4}).selection(1)


def test_quality_report_of_odd_study_files_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a quality.csv of 'alone' rows only, a metadata.json that is not JSON or lacks a field the page quotes, rows
    # without their 'alone' row: each was a traceback (AttributeError, JSONDecodeError, KeyError) or NaN figures
    import shutil

    from moesim.consolidation.quality_report import main

    src = ROOT / "reports" / "consolidation"
    q = pd.read_csv(src / "quality.csv", dtype={"budget": str})

    def run(csv: pd.DataFrame, meta: str | None = None) -> str:
        d = tmp_path / "q"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        csv.to_csv(d / "quality.csv", index=False)
        shutil.copy(src / "distances.json", d)
        if meta is None:
            shutil.copy(src / "metadata.json", d)
        else:
            (d / "metadata.json").write_text(meta)
        with pytest.raises(SystemExit) as e:
            main([str(d)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert not (d / "index.html").exists()
        assert not (d / "summary.json").exists()
        return err.removeprefix("moesim: error: ").strip()

    d = tmp_path / "q"
    assert run(q[q.method == "alone"].head(2)) == (
        f"'{d}/quality.csv' has no row of a plan or a merge (only 2 'alone' rows): nothing to compare; valid "
        "methods: paper, cluster-mean, act-cluster-mean, act-cluster-ties, uniform-average, task-arithmetic, ties, "
        "dare")
    assert run(q, "{bad").startswith(f"'{d}/metadata.json' is not JSON (Expecting property name")
    assert run(q, '{"gpu": "h200"}') == (f"'{d}/metadata.json' lacks date_utc (python -m "
                                         "moesim.consolidation.quality_study writes it)")
    drop = (q.method == "alone") & (q.domain == "milton") & (q.seed == 0) & (q.family == "large")
    assert run(q[~drop].reset_index(drop=True)).startswith(
        f"'{d}/quality.csv': 52 row(s) without their 'alone' row (first: data row 9, family large, seed 0, "
        "domain milton, method paper)")


def test_a_served_trace_is_validated_again_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # moesim.serve.validate re-reads the run's trace from summary.json's config: with the path as typed
    # ("two.csv") it was looked for in the validating shell's folder
    from moesim.serve.validate import validate_run

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "two.csv").write_text("arrival_s,prompt_tokens,output_tokens,tenant\n0,50,5,a\n0.5,60,5,b\n"
                                            "1,70,5,a\n")
    monkeypatch.chdir(tmp_path / "w")
    code, _, err = _serve(["device=cpu", "model=tiny", "backend=cost", "clock=virtual", "sim_cost=roofline",
                           "trace=two.csv", "tenants=2", "rate=0", "out=s"], capsys)
    assert code == 0, err
    s = json.loads((tmp_path / "w" / "s" / "summary.json").read_text())
    assert s["config"]["trace"] == str(tmp_path / "w" / "two.csv")
    assert s["command"].endswith("trace=two.csv tenants=2 rate=0 out=s")  # as typed
    monkeypatch.chdir(tmp_path)
    v = validate_run(tmp_path / "w" / "s", sim_cost="roofline")
    assert v["n_requests"] == 3


def test_a_placement_that_places_a_tenant_nowhere_says_so() -> None:
    # a placement file that forgot tenant 1: its requests were refused, said only in the count of rejected
    # requests; with only tenant 1's requests the all-rejected line read "... request 0: no replica ..."
    # after "shorten the requests ... or use a larger GPU"
    from moesim.errors import UserError
    from moesim.fleet import run_fleet
    from moesim.fleet.placement import GPUPlacement, Placement
    from moesim.fleet.run import unplaced_note
    from moesim.fleet.spec import FleetSpec
    from moesim.specs import get_model
    from moesim.workloads.request import Request

    pl = Placement((GPUPlacement(0, (0,)),), "file", source="pl.yaml")
    assert unplaced_note(pl, 2) == ("placement file pl.yaml puts tenant 1 on no GPU: its requests are refused "
                                    "(rejected in summary.json)")
    assert unplaced_note(Placement((GPUPlacement(0, (0,)),), "pack"), 4) == (
        "placement=pack puts tenants 1, 2, 3 on no GPU: their requests are refused (rejected in summary.json)")
    assert unplaced_note(pl, 1) is None
    with pytest.raises(UserError) as e:
        run_fleet(get_model("mixtral-8x7b"), FleetSpec.uniform("h200", 2), pl,
                  [Request(0, 1, 0.0, 20, 5), Request(1, 1, 1.0, 20, 5)], policy="multiplex", policy_cfg=None,
                  cost="roofline", cost_cfg=None)
    assert str(e.value) == ("every one of the 2 requests is rejected: 2 of tenant 1, placed on no GPU (put it on a "
                            "GPU of the placement)")


def test_a_wall_clock_replay_of_a_sparse_trace_says_how_long_it_takes(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # a trace in ms with day-long gaps, served on the default wall clock: the command sat silent for 48 hours
    import moesim.serve.run as R
    from moesim.serve.config import ServeConfig

    f = tmp_path / "gap.csv"
    f.write_text("ts_ms,prompt_tokens,output_tokens\n0,100,20\n1000,100,20\n86400000,100,20\n172800000,50,10\n")

    def stop(*a: object, **k: object) -> None:
        raise RuntimeError("stop before serving")

    monkeypatch.setattr(R, "_serve", stop)
    lines: list[str] = []
    cfg = ServeConfig(model="tiny", device="cpu", backend="cost", clock="wall", trace=str(f),
                      columns=("timestamp:ts_ms",), tenants=2, out=str(tmp_path / "s"))
    with pytest.raises(RuntimeError, match="stop"):
        R.run(cfg, [], log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert ("serve: the requests arrive over 172,800 s (48.0 h): clock=wall replays them in real time, so the run "
            "takes at least that long; clock=virtual, a higher rate= or a smaller max_requests= shortens it") in lines
    lines.clear()
    with pytest.raises(RuntimeError, match="stop"):
        R.run(dataclasses.replace(cfg, max_requests=2), [], log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert not any("arrive over" in ln for ln in lines)  # 1 s: nothing to say


def test_the_report_of_a_folder_without_simulate_jobs_is_refused(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # python -m moesim.report on a consolidation study's folder (its summary.json files are the quality
    # report's) wrote summary.csv and report.html there: "0 of 5 jobs finished, 5 unreadable"
    from moesim.report.__main__ import main

    q = tmp_path / "study"
    (q / "h200-v2").mkdir(parents=True)
    (q / "summary.json").write_text('{"table": []}')
    (q / "h200-v2" / "summary.json").write_text('{"table": []}')
    with pytest.raises(SystemExit) as e:
        main([str(q)])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        f"moesim: error: {q}: no moesim simulate job in it: none of its 2 job file(s) is a job's (first: "
        "./summary.json: status is None, expected 'ok'); give the hydra.sweep.dir of a sweep or the hydra.run.dir "
        "of a run\n")
    assert sorted(p.name for p in q.iterdir()) == ["h200-v2", "summary.json"]
    # a sweep whose every job is damaged is still reported (hydra ran there): the damage is what it shows
    (q / "h200-v2" / ".hydra").mkdir()
    (q / "h200-v2" / ".hydra" / "overrides.yaml").write_text("- policy=mig\n")
    main([str(q)])
    assert (q / "report.html").is_file()
    assert "moesim: 0 of 2 jobs finished, 2 unreadable" in capsys.readouterr().out


def test_a_folder_given_as_the_trace_is_called_a_folder(tmp_path: Path) -> None:
    # workload.path=/tmp read "trace file '/tmp': no such file"
    from moesim.workloads import read_trace

    with pytest.raises(UserError) as e:
        read_trace(tmp_path)
    assert str(e.value) == (f"trace file '{tmp_path}': is a folder; give the trace file itself (.csv, .jsonl or "
                            ".parquet)")
    with pytest.raises(UserError, match="no such file"):
        read_trace(tmp_path / "nope.csv")


def test_a_bad_similarity_matrix_is_one_line_before_any_folder(tmp_path: Path) -> None:
    # placement=pack placement.similarity=F with a 2×2 matrix for 3 tenants (or a missing file): the one-line
    # error came after hydra had made the run folder (simulate.log alone in it)
    (tmp_path / "sim2.csv").write_text("1,0\n0,1\n")
    p = _run(tmp_path, "hydra.run.dir=u", "fleet.gpus=2", "placement=pack", "placement.similarity=sim2.csv",
             "workload.tenants=3", "cost=roofline")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == ("moesim: error: placement.similarity=sim2.csv: need a finite 3×3 "
                                                 "matrix, got shape (2, 2)")
    assert not (tmp_path / "u").exists()


def test_a_value_swept_twice_is_refused_before_the_sweep(tmp_path: Path) -> None:
    # seed=1,1 ran the 126-job default sweep's jobs twice (84 of 84 "finished" with 2 policies) and counted each
    # twice in every mean over seeds
    from moesim.config import sweep_jobs

    with pytest.raises(UserError) as e:
        sweep_jobs({"policy": "mig,multiplex"}, ["seed=1,1"])
    assert str(e.value) == ("seed=1,1: 1 is listed twice; list each value once (a sweep would run the same jobs twice "
                            "and count them twice in every mean)")
    assert len(sweep_jobs({"policy": "mig,multiplex"}, ["seed=1,2"])) == 4
    with pytest.raises(UserError) as e:  # a sweep nested in a sweep: an omegaconf traceback
        sweep_jobs(None, ["workload.rate=0.1,choice(0.2)"])
    assert str(e.value).startswith("workload.rate=0.1,choice(0.2): cannot expand this sweep (")
    d = tmp_path / "sw"
    p = subprocess.run([sys.executable, "-m", "moesim.simulate", "-m", f"hydra.sweep.dir={d}", "policy=mig,mig",
                        "progress=false"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=_env())
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("moesim: error: policy=mig,mig: mig is listed twice")
    assert not d.exists()


def test_a_fleet_file_without_groups_is_named() -> None:
    from moesim.fleet.spec import FleetSpec

    with pytest.raises(UserError) as e:
        FleetSpec.from_dict({"groups": []}, "fleet file f3.yaml")
    assert str(e.value) == "fleet file f3.yaml: no GPU groups; give at least one (gpu: <name>, count: <n>)"


def test_the_calibrator_refuses_a_plan_of_another_model_before_timing() -> None:
    # model=tiny plan=<a Mixtral plan>: the whole calibration ran, then "section consolidate failed" and the
    # profile was written without the plan's layout, exit status 0
    pytest.importorskip("torch")
    from moesim.calibrate.suite import check_plan_fits
    from moesim.consolidation.plan import plan_from_distance_model
    from moesim.specs import get_model

    tiny, mixtral = get_model("tiny"), get_model("mixtral-8x7b")
    with pytest.raises(UserError) as e:
        check_plan_fits(plan_from_distance_model(mixtral, 2, int(100e9)), tiny, "p.json")
    assert str(e.value) == ("plan=p.json: a plan for 'mixtral-8x7b' (32 MoE layers × 8 experts of 352,321,536 bytes) "
                            "does not fit model=tiny (2 × 8 of 49,152 bytes); build one for it (python -m "
                            "moesim.consolidate synthetic=tiny …) or calibrate model=mixtral-8x7b")
    check_plan_fits(plan_from_distance_model(tiny, 2, int(1e6)), tiny, "t.json")  # its own model: fine


def test_serve_respells_the_simulators_keys_not_file_names() -> None:
    # serve's copy of the loader's messages dropped every "workload.": a trace named data/workload.csv read "data/csv"
    from moesim.serve.config import serve_spelling

    assert serve_spelling("replaying 4 of 9 requests of data/workload.csv (cut at workload.max_requests=4); no "
                          "request for tenant 1 of workload.tenants=2") == (
        "replaying 4 of 9 requests of data/workload.csv (cut at max_requests=4); no request for tenant 1 of tenants=2")
    assert serve_spelling("trace file 'workload.csv': map yours with workload.columns.timestamp=ts_ms "
                          "workload.time_unit=ms") == ("trace file 'workload.csv': map yours with "
                                                       "columns.timestamp=ts_ms time_unit=ms")
    assert serve_spelling("workload=trace: format='x' is invalid") == "trace_format='x' is invalid"


def test_relative_ms_times_read_as_seconds_are_flagged(tmp_path: Path) -> None:
    # "timestamp" 0, 1000, 86400000, 172800000 (ms, relative): read as seconds, a two-day trace ran for 5.5 years
    # with nothing said
    import warnings

    from moesim.workloads import read_trace
    from moesim.workloads.loader import LongTraceWarning

    f = tmp_path / "t.csv"
    f.write_text("timestamp,prompt_tokens,output_tokens\n0,100,20\n1000,100,20\n172800000,50,10\n")
    with pytest.warns(LongTraceWarning) as w:
        t = read_trace(f)
    assert str(w[0].message) == (f"trace file '{f}': timestamp read in seconds spans 172,800,000 s (2,000 days); "
                                 "if its times are milliseconds, add workload.time_unit=ms (or name the column "
                                 "timestamp_ms)")
    assert t.arrival_s.tolist() == [0.0, 1000.0, 172800000.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_trace(f, time_unit="ms").arrival_s.tolist() == [0.0, 1.0, 172800.0]  # a unit given: quiet
    g = tmp_path / "a.csv"
    g.write_text("arrival_s,prompt_tokens,output_tokens\n0,100,20\n172800000,50,10\n")
    with pytest.warns(LongTraceWarning, match="add workload.columns.timestamp=arrival_s workload.time_unit=ms"):
        read_trace(g)
    h = tmp_path / "e.csv"  # epoch seconds over a week: seconds, rightly, and nothing to say
    h.write_text("timestamp,prompt_tokens,output_tokens\n1700000000,1,1\n1700604800,1,1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_trace(h).arrival_s.tolist() == [0.0, 604800.0]


def test_progress_false_draws_no_sweep_bar(tmp_path: Path) -> None:
    # progress=false still drew the sweep's bar (a hundred "sweep: 12%|█▏ ..." updates in a CI log)
    d = tmp_path / "sw"
    p = subprocess.run([sys.executable, "-m", "moesim.simulate", "-m", f"hydra.sweep.dir={d}", "policy=mig",
                        "workload.rate=0.1", "seed=0", "workload.duration_s=10", "cost=roofline",
                        "hydra.launcher.n_jobs=1", "progress=false"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env=_env())
    assert p.returncode == 0, p.stderr
    assert "sweep:" not in p.stderr
    assert "moesim: 1 of 1 jobs finished" in p.stderr
    assert (d / "report.html").is_file()


def test_serve_validate_of_a_simulate_sweep_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # python -m moesim.serve.validate S (a simulate sweep, not served runs): KeyError: 'config' traceback
    from moesim.serve.validate import main

    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "summary.json").write_text('{"status": "ok", "policy": "mig", "rate": 0.1}')
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        f"moesim: error: {tmp_path}: no served run in it (its summary.json files are not python -m moesim.serve's, "
        "which hold the run's config); give the out= folder of a served run, or a folder of them\n")


def test_paper_compare_refuses_another_gpu_and_counts_its_repetitions(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # an H200 sweep of reconfig and mig at two of the paper's rates was compared with the paper's A100 numbers
    # ("the paper: 85 %") and headed "5 repetitions per rate" though it ran 3 seeds
    from moesim.paper_compare import _repetitions, main

    ship = pd.read_csv(ROOT / "reports" / "paper_a100" / "summary.csv")
    assert _repetitions(ship) == "5 repetitions per rate"
    three = ship[ship["seed"].isin(sorted(ship["seed"].unique())[:3])]
    assert _repetitions(three) == "3 repetitions per rate"
    h200 = ship.assign(gpu="h200")
    h200.to_csv(tmp_path / "s.csv", index=False)
    assert main([f"summary={tmp_path / 's.csv'}", f"out={tmp_path / 'o'}", "seeds=0"]) == 2
    assert capsys.readouterr().err == (
        f"moesim: error: summary={tmp_path / 's.csv'}: its reconfig/mig jobs ran gpu=h200; the paper's numbers are "
        "a100-80gb's, so the 'paper' columns would compare another setup; valid: a sweep of gpu=a100-80gb (python -m "
        "moesim.simulate -m experiment=paper_a100)\n")


def test_an_assignment_a_tenant_column_overrides_is_flagged(tmp_path: Path) -> None:
    # workload.assignment=zipf on a trace with a tenant column: silently not used
    import warnings

    from moesim.workloads import WORKLOADS
    from moesim.workloads.replay import IgnoredSettingWarning

    f = tmp_path / "t.csv"
    f.write_text("arrival_s,prompt_tokens,output_tokens,tenant\n0,5,2,a\n1,5,2,b\n")
    with pytest.warns(IgnoredSettingWarning) as w:
        WORKLOADS.build("trace", {"path": str(f), "assignment": "zipf"})
    assert str(w[0].message) == (f"workload=trace: assignment=zipf is not used: {f}'s tenant column assigns the "
                                 "tenants (workload.columns.tenant=- ignores it, to assign them instead)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WORKLOADS.build("trace", {"path": str(f)})  # the default: nothing to say
        WORKLOADS.build("trace", {"path": str(f), "assignment": "zipf", "columns": {"tenant": "-"}})


def test_dedicated_on_a_fleet_gpu_holding_several_tenants_is_refused(tmp_path: Path) -> None:
    # fleet.gpus=2 policy=dedicated: every fleet GPU ran dedicated for both tenants, 4 whole GPUs simulated while
    # summary.json said gpus=2 (the report counted 4)
    from moesim.fleet.placement import GPUPlacement, Placement
    from moesim.fleet.run import dedicated_fleet_error

    line = ("policy=dedicated on a fleet of 2 GPUs: GPU 0 holds 2 tenants and dedicated gives each its own whole GPU, "
            "so the fleet would simulate more GPUs than its 2; use placement=per_variant (one tenant per GPU), "
            "fleet.gpus=1 (dedicated's own GPUs), or another policy")
    p = _run(tmp_path, "hydra.run.dir=d", "fleet.gpus=2", "policy=dedicated", "workload.duration_s=30",
             "cost=roofline")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == f"moesim: error: {line}"
    assert not (tmp_path / "d").exists()
    with pytest.raises(UserError) as e:  # a placement that crowds a GPU (pack), found once placed
        dedicated_fleet_error(Placement((GPUPlacement(0, (0, 1)),), "pack"), 2, "dedicated")
    assert str(e.value) == line
    dedicated_fleet_error(Placement((GPUPlacement(0, (0,)), GPUPlacement(1, (1,))), "per_variant"), 2, "dedicated")
    dedicated_fleet_error(Placement((GPUPlacement(0, (0, 1)),), "pack"), 2, "multiplex")


def test_a_bad_quality_merge_leaves_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # quality_report OUT merge=nope: one line, but an empty OUT folder was left behind
    from moesim.consolidation.quality_report import main

    with pytest.raises(SystemExit):
        main([str(tmp_path / "out"), f"merge={tmp_path / 'nope'}"])
    assert "a part to merge must be a study's output folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_misspelt_flag_gets_its_spelling_not_a_placement_hint() -> None:
    # --multi-run: "unrecognized arguments: --multi-run; flags such as -m/--multirun go before the overrides"
    from moesim.config import plan_command_line, register_configs

    register_configs()
    with pytest.raises(UserError) as e:
        plan_command_line(["--multi-run", "policy=mig"])
    assert str(e.value).startswith("unrecognized arguments: --multi-run (did you mean '--multirun'?); valid flags: "
                                   "--cfg, ")
    assert "go before" not in str(e.value)
    with pytest.raises(UserError, match="flags such as -m/--multirun go before the overrides"):
        plan_command_line(["policy=mig", "-m", "seed=1,2"])  # a misplaced flag: as before


def test_a_public_format_file_is_pointed_at_its_format() -> None:
    # BurstGPT's and Mooncake's own files without workload.format=: the hint mapped columns one by one, and
    # Mooncake's ms timestamps would then have been read as seconds
    from moesim.workloads import read_trace

    data = ROOT / "tests" / "data"
    with pytest.raises(UserError) as e:
        read_trace(data / "mooncake.jsonl")
    assert str(e.value).endswith("; its columns are the mooncake format's: add workload.format=mooncake (it reads "
                                 "the timestamps in ms)")
    with pytest.raises(UserError) as e:
        read_trace(data / "burstgpt.csv")
    assert str(e.value).endswith("; its columns are the burstgpt format's: add workload.format=burstgpt")
    assert len(read_trace(data / "mooncake.jsonl", format="mooncake")) == 4
    with pytest.raises(UserError, match=r"map yours with workload\.columns\.prompt_tokens=input_length"):
        read_trace(data / "mooncake.jsonl", columns={"tenant": "-"})  # columns given: the mapping hint, as before


def test_an_unquoted_sweep_list_is_pointed_at_the_key_it_meant() -> None:
    # sweep.policies=mig,multiplex (unquoted) was a hydra sweep of sweep.policies itself: 14 jobs, the default 7
    # policies twice, for the two policies asked
    from moesim.config import plan_command_line, register_configs

    register_configs()
    with pytest.raises(UserError) as e:
        plan_command_line(["sweep.policies=mig,multiplex"])
    assert str(e.value) == (
        "sweep.policies=mig,multiplex: hydra reads a comma list here as a sweep of sweep.policies itself (each value "
        "would run the whole default comparison); write policy=mig,multiplex (it replaces the swept key), or quote "
        "the list as one value: 'sweep.policies=\"mig,multiplex\"'")
    with pytest.raises(UserError, match=r"write workload\.rate=0\.1,0\.2 "):
        plan_command_line(["sweep.rates=0.1,0.2"])
    plan = plan_command_line(['sweep.policies="mig,multiplex"', "sweep.rates=0.1", "sweep.seeds=0"])
    assert plan is not None
    assert len(plan.jobs) == 2


def test_the_search_does_not_overwrite_another_runs_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # search.out=S, a simulate sweep's folder: the sweep's report.html was replaced by the search's
    from moesim.search.__main__ import main

    (tmp_path / "S").mkdir()
    (tmp_path / "S" / "report.html").write_text("the sweep's report")
    with pytest.raises(SystemExit) as e:
        main(["search.gpus=h200", "search.policies=multiplex", "search.strategies=pack", "search.loads=1",
              "workload.tenants=2", "workload.duration_s=20", "search.backend=local", "cost=roofline",
              f"search.out={tmp_path / 'S'}"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"moesim: error: search.out={tmp_path / 'S'}: already holds report.html (another run's), which the search "
        "would overwrite; give an empty or new directory")
    assert (tmp_path / "S" / "report.html").read_text() == "the sweep's report"


def test_serve_does_not_overwrite_a_simulate_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # python -m moesim.serve out=D, D a simulate run's folder: its summary.json and requests.parquet were replaced
    d = tmp_path / "D"
    d.mkdir()
    (d / "summary.json").write_text('{"status": "ok", "policy": "mig", "rate": 0.1}')
    base = ["device=cpu", "model=tiny", "backend=cost", "clock=virtual", "compare=false", "max_requests=2"]
    code, _, err = _serve([*base, f"out={d}"], capsys)
    assert (code, err) == (2, f"moesim: error: out={d}: its summary.json is not a served run's (a simulate run's?), "
                              "and serve would overwrite it; give an empty or new folder\n")
    assert json.loads((d / "summary.json").read_text())["policy"] == "mig"
    code, _, err = _serve([*base, f"out={tmp_path / 's'}"], capsys)  # a served run's folder: run over, as before
    assert code == 0, err
    code, _, err = _serve([*base, f"out={tmp_path / 's'}"], capsys)
    assert code == 0, err
    # and the other way round: a simulate run into a served run's folder overwrote it (no config hash to compare)
    p = _run(tmp_path, f"hydra.run.dir={tmp_path / 's'}", "workload.duration_s=10", "cost=roofline")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == (
        f"moesim: error: hydra.run.dir={tmp_path / 's'} holds a served run's results (python -m moesim.serve, "
        "policy=multiplex); add sweep.overwrite=true to replace them, or choose another hydra.run.dir")


def test_the_report_out_must_be_an_html_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # python -m moesim.report S out=S/summary.csv wrote the HTML page over the sweep's table (out=S/0/requests.parquet
    # over a job's requests)
    sys.path.insert(0, str(ROOT / "tests"))
    from test_report_helpers import make_sweep

    from moesim.report.__main__ import main

    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    (root / "summary.csv").write_text("job,status\n")
    with pytest.raises(SystemExit) as e:
        main([str(root), f"out={root / 'summary.csv'}"])
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"moesim: error: out={root / 'summary.csv'}: the report is an HTML page; give "
                                       "a path ending in .html\n")
    assert (root / "summary.csv").read_text() == "job,status\n"


def test_a_ms_named_column_mapped_to_arrival_s_is_flagged(tmp_path: Path) -> None:
    # columns=arrival_s:ts_ms read a 2.4 s trace as 2,400 s without a word: arrival_s is seconds, the name says ms
    import warnings

    from moesim.workloads import read_trace
    from moesim.workloads.loader import LongTraceWarning

    f = tmp_path / "odd.csv"
    f.write_text("ts_ms,prompt_len,gen_len\n100,50,5\n900,120,30\n2500,300,10\n")
    cols = {"arrival_s": "ts_ms", "prompt_tokens": "prompt_len", "output_tokens": "gen_len"}
    with pytest.warns(LongTraceWarning) as w:
        t = read_trace(f, columns=cols)
    assert str(w[0].message) == (f"trace file '{f}': column 'ts_ms' is read as arrival_s in seconds, but its name "
                                 "says ms; to read it in ms, map it as the timestamp instead "
                                 "(workload.columns.timestamp=ts_ms, or columns=timestamp:ts_ms for serve)")
    assert t.arrival_s.tolist() == [100.0, 900.0, 2500.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # mapped as the timestamp: read in ms, nothing to say
        got = read_trace(f, columns={**{k: v for k, v in cols.items() if k != "arrival_s"}, "timestamp": "ts_ms"})
    assert got.arrival_s.tolist() == pytest.approx([0.0, 0.8, 2.4])
