"""Surprises a new user met on day 3 (a fresh venv, the README's commands, their own odd traces, fleet files,
the capacity search, the runtime, the tools' reports opened in Chromium), each pinned by a test that failed
before its fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moesim.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _simulate(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    d = tmp_path / name
    return subprocess.run([sys.executable, "-m", "moesim.simulate", "hydra.mode=RUN", f"hydra.run.dir={d}",
                           "progress=false", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=_env())


def _env() -> dict[str, str]:
    """This checkout's moesim from any working directory (relative paths in a user's files are the user's)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def test_every_missing_trace_column_is_named_with_its_mapping_in_one_line(tmp_path: Path) -> None:
    # "ts_ms,input_length,output_length": the error named only the timestamp, so the user ran three times,
    # learning one missing column per run
    from moesim.workloads import read_trace

    f = tmp_path / "t.csv"
    f.write_text("ts_ms,input_length,output_length,user\n3000,100,20,alice\n")
    with pytest.raises(UserError) as e:
        read_trace(f)
    assert str(e.value) == (
        f"trace file '{f}': missing columns 'arrival_s' or 'timestamp', 'prompt_tokens', 'output_tokens' "
        "(has: ts_ms, input_length, output_length, user); need arrival_s or timestamp, prompt_tokens, "
        "output_tokens (tenant optional); map yours with workload.columns.timestamp=ts_ms workload.time_unit=ms "
        "workload.columns.prompt_tokens=input_length workload.columns.output_tokens=output_length")
    # the mapping it prints is the one that works, in one run
    t = read_trace(f, columns={"timestamp": "ts_ms", "prompt_tokens": "input_length",
                               "output_tokens": "output_length"}, time_unit="ms")
    assert t.prompt_tokens.tolist() == [100]


def test_a_timestamp_column_named_in_ms_is_read_in_ms(tmp_path: Path) -> None:
    # workload.columns.timestamp=ts_ms without time_unit=ms: 1000/2000/3000 were read as seconds, and a 2 s
    # trace became 2,000 s long (0.09 req/min instead of 77)
    from moesim.workloads import read_trace

    f = tmp_path / "t.csv"
    f.write_text("ts_ms,p,o\n3000,100,20\n1000,50,10\n2000,80,15\n")
    cols = {"timestamp": "ts_ms", "prompt_tokens": "p", "output_tokens": "o"}
    with pytest.warns(UserWarning, match="not sorted"):
        assert read_trace(f, columns=cols).arrival_s.tolist() == [0.0, 1.0, 2.0]
    g = tmp_path / "u.csv"
    g.write_text("Time (us),p,o\n0,1,1\n1500000,1,1\n")
    assert read_trace(g, columns={**cols, "timestamp": "Time (us)"}).arrival_s.tolist() == [0.0, 1.5]
    # an explicit unit wins; a name without a unit keeps the epoch rule
    with pytest.warns(UserWarning, match="not sorted"):
        assert read_trace(f, columns=cols, time_unit="s").arrival_s.tolist() == [0.0, 1000.0, 2000.0]
    h = tmp_path / "v.csv"
    h.write_text("timestamp,p,o\n0,1,1\n1500,1,1\n")
    assert read_trace(h, columns={"prompt_tokens": "p", "output_tokens": "o"}).arrival_s.tolist() == [0.0, 1500.0]


def test_fleet_and_placement_file_errors_name_the_file_and_entry_before_any_folder(tmp_path: Path) -> None:
    # "unknown gpu 'h2000'", "placement: GPU 7 is not in the fleet", "unknown policy 'multiplx'" named no file;
    # a misspelt 'tennants' read "needs 'gpu' and 'tenants'"; and each left a run folder behind
    files = {
        "fl.yaml": "groups:\n  - gpu: h2000\n    count: 2\n",
        "fl2.yaml": "groups:\n  - gpu: h200\n    cont: 2\n",
        "pl.yaml": "gpus:\n  - gpu: 0\n    tenants: [0]\n  - gpu: 7\n    tenants: [1]\n",
        "pl2.yaml": "gpus:\n  - gpu: 0\n    tennants: [0, 1]\n",
        "pl3.yaml": "gpus:\n  - gpu: 0\n    tenants: [0, 1]\n    policy: multiplx\n",
        "pl4.yaml": "gpus:\n  - gpu: 0\n    tenants: [0, 1]\n    policy_params: {max_bach: 4}\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    cases = [
        (["fleet=file", "fleet.path=fl.yaml"],
         "fleet file fl.yaml: groups[0]: unknown gpu 'h2000' (did you mean 'h200'?); valid: a100-40gb, a100-80gb, "
         "b200, h100-80gb, h100-pcie, h200, l40s"),
        (["fleet=file", "fleet.path=fl2.yaml"],
         "fleet file fl2.yaml: groups[0]: unknown field 'cont' (did you mean 'count'?); valid: gpu, count, "
         "gpus_per_node, node_host_GBps"),
        (["fleet.gpus=4", "placement=file", "placement.path=pl.yaml"],
         "placement file pl.yaml: gpu=7 is not in the fleet; valid: 0..3 (the fleet's 4 GPUs: fleet.gpus= or "
         "fleet.path= sets them)"),
        (["fleet.gpus=2", "placement=file", "placement.path=pl2.yaml"],
         "placement file pl2.yaml: gpus[0]: unknown field 'tennants' (did you mean 'tenants'?); valid: gpu, "
         "tenants, policy, policy_params"),
        (["fleet.gpus=2", "placement=file", "placement.path=pl3.yaml"],
         "placement file pl3.yaml: GPU 0: unknown policy 'multiplx' (did you mean 'multiplex'?); valid: dedicated, "
         "mig, multiplex, naive, reconfig, reconfig_fast, swap"),
        (["fleet.gpus=2", "placement=file", "placement.path=pl4.yaml", "policy=multiplex"],
         "placement file pl4.yaml: GPU 0: policy 'multiplex': unknown field 'max_bach' (did you mean 'max_batch'?); "
         "valid: budget_bytes, fetch_overlap, max_batch, plan, weight_budget_fraction"),
    ]
    for i, (args, line) in enumerate(cases):
        p = _simulate(tmp_path, f"run{i}", *args)
        assert p.returncode == 2, p.stderr
        assert p.stderr.strip().splitlines()[-1] == f"moesim: error: {line}"
        assert "Traceback" not in p.stderr
        assert not (tmp_path / f"run{i}").exists()


def test_a_saturated_lowest_rate_is_not_called_a_slo_tighter_than_service(tmp_path: Path) -> None:
    # reconfig on an A100 at 0.1 req/s per tenant: median TTFT 23.8 s, all but ~1.3 s of it queueing (busy
    # 86-98 %); the verdict said "the SLO is tighter than an unloaded request's service" and pointed at
    # slo_ttft_s=, where the answer is a lower rate
    import json

    sys.path.insert(0, str(ROOT / "tests"))
    from test_report_helpers import make_sweep, read_data

    from moesim.io import write_json
    from moesim.report import build_report

    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)

    def edit(wait: float) -> str:
        for d in root.iterdir():
            if (d / "summary.json").exists():
                s = json.loads((d / "summary.json").read_text())
                s.update(slo_attainment=0.5, p50_ttft_s=30.0, mean_ttft_s=31.0 + {"mig": 1}.get(s["policy"], 0),
                         mean_queue_wait_s=wait, p50_tpot_s=0.05)
                write_json(d / "summary.json", s)
        return " ".join(read_data(build_report(root).read_text())["verdict"])

    v = edit(30.0)
    assert ("no policy meets it even at the lowest swept rate (0.1 requests/s per tenant): even there the best "
            "median TTFT is 30 s (mig), mostly queueing (without the wait before it starts, multiplex's mean TTFT "
            "is 1 s): this rate already saturates every policy; sweep lower rates to find where each policy "
            "holds.") in v
    assert "tighter" not in v
    # no wait: the SLO is tighter than the service itself, as before
    v = edit(0.0)
    assert ("even there the best median TTFT is 30 s (mig), above the 2 s target, so the SLO is tighter than an "
            "unloaded request's service; slo_ttft_s= recomputes the report for another target.") in v


def test_the_search_reports_the_configured_total_rate() -> None:
    # workload.rate=0.5 × 8 tenants: the search report's "total arrival rate at load 1" read 4.067 requests/s
    # (one seed's Poisson draw over 30 s), and the GPUs-needed figure sat at x = 4.067
    from moesim.search.driver import offered_rate, scale_workload

    w = {"name": "poisson", "rate": 0.5, "tenants": 8, "duration_s": 30.0}
    assert offered_rate(w, 0) == 4.0
    assert offered_rate(scale_workload(w, 2.0), 0) == 8.0
    # a trace at its own times has no configured rate: its requests over its span
    t = {"name": "azure_conv", "tenants": 2, "max_requests": 100}
    from moesim.workloads import WORKLOADS

    wl = WORKLOADS.build("azure_conv", {"tenants": 2, "max_requests": 100})
    assert offered_rate(t, 0) == pytest.approx(100 / wl.horizon_s)


def test_serve_refusals_name_its_own_keys_and_leave_no_folder(tmp_path: Path) -> None:
    # placement '0,1;5' with 4 tenants read "GPU 1 must hold ≥ 1 of tenants 0..3"; router=leastwork had no
    # "did you mean"; policy=mig tenants=8 told the user to set workload.tenants / policy.layout= (simulate's
    # keys) and, like any layout refusal, left an empty out folder behind
    from moesim.serve.__main__ import main
    from moesim.serve.config import parse_args

    base = ["device=cpu", "model=tiny", "compare=false", "warmup=false"]
    for args, line in (
        (["gpus=2", "placement=0,1;5"], "placement='0,1;5': GPU 1 lists tenant 5; valid: 0..3 (tenants=4)"),
        (["gpus=2", "placement=0,1;2,3", "router=leastwork"],
         "router='leastwork' (did you mean 'least_work'?): valid: affinity, least_work, power_of_two, round_robin"),
        (["policy=mig", "tenants=8"],
         "policy=mig with tenants=8: h200 has at most 7 MIG instances (one per tenant); use tenants ≤ 7"),
    ):
        with pytest.raises(UserError) as e:
            parse_args([*base, *args])
        assert str(e.value) == line
    out = tmp_path / "s"
    with pytest.raises(SystemExit) as ex:
        main([*base, "policy=mig", "tenants=3", "gpu=l40s", f"out={out}"])
    assert ex.value.code == 2
    assert not out.exists()


def test_paper_compare_says_where_its_tables_went(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # out=. (the default) wrote per_rate.csv and headline.csv into the working directory without a word
    from moesim.paper_compare import main

    out = tmp_path / "pc"
    assert main([f"summary={ROOT / 'reports/paper_a100/summary.csv'}", "seeds=0", "protocol_reps=0",
                 f"out={out}"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"moesim: outputs in {out}/ (per_rate.csv, headline.csv)"
    assert sorted(p.name for p in out.iterdir()) == ["headline.csv", "per_rate.csv"]


@pytest.mark.parametrize(("arg", "line"), [
    ("workload=poisson", "workload='poisson': valid: azure_code, azure_conv"),
    ("cost=profile_bucketed", "cost='profile_bucketed': valid: constant, profile, profile_mixed, roofline"),
])
def test_bench_offers_only_what_it_can_run(arg: str, line: str) -> None:
    # --help listed workload poisson/gamma/trace and cost profile_bucketed; they ended in
    # "workload 'poisson': unknown field(s) ['assignment']" (the bench's own trace options) or asked for keys
    # the bench does not have (table=, path=)
    from moesim.bench import parse_args

    with pytest.raises(UserError) as e:
        parse_args([arg])
    assert str(e.value) == line


def test_quality_report_depth_bars_share_their_lines_colours_and_axes_say_what() -> None:
    # "where the 15 % least similar positions are": the bars were red and purple while the only legend showed
    # large/0 blue and large/1 green (the lines'), and neither panel's y axis said what it counted
    from moesim.consolidation.quality_report import _figures, load, summarize

    q, meta, _ = load(ROOT / "reports" / "consolidation")
    fig = {key: f for key, _, f in _figures(q, summarize(q, meta))}["depth"]
    lines = {t.name: t.line.color for t in fig.data if t.type == "scatter"}
    bars = {t.name: t.marker.color for t in fig.data if t.type == "bar"}
    assert len(lines) >= 2
    assert lines == bars
    assert len(set(lines.values())) == len(lines)
    assert fig.layout.yaxis.title.text == "L2 between variants / base norm"
    assert fig.layout.yaxis2.title.text == "least similar positions (count)"


def test_the_cdf_axis_leaves_room_left_of_the_fastest_request(tmp_path: Path) -> None:
    # default sweep at 0.5 req/s: dedicated's first step (70 % of its requests at the minimum turnaround) sat on
    # the axis line, so its curve seemed to start in mid-air at 70 % on the plot's edge
    import math

    sys.path.insert(0, str(ROOT / "tests"))
    from test_report_helpers import make_sweep, read_figures

    from moesim.report import build_report

    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    fig = read_figures(build_report(root).read_text())["cdf"]
    xs = [x for t in fig["data"] for x in t["x"]]
    lo, hi = math.log10(min(xs)), math.log10(max(xs))
    assert hi - lo > 0.5
    assert fig["layout"]["xaxis"]["range"] == pytest.approx([lo - 0.03 * (hi - lo), hi + 0.03 * (hi - lo)])


def test_the_search_refuses_a_bad_trace_before_any_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # workload=trace with a file whose columns need mapping: 378 trials ran (each failing on the file) and the
    # one-line error came only when the report was written, into a half-written search.out
    from moesim.search.__main__ import main

    f = tmp_path / "t.csv"
    f.write_text("ts_ms,input_length,output_length\n0,10,5\n")
    out = tmp_path / "s"
    with pytest.raises(SystemExit) as e:
        main(["workload=trace", f"workload.path={f}", "search.backend=local", "search.progress=false",
              f"search.out={out}"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"moesim: error: trace file '{f}': missing columns 'arrival_s' or 'timestamp', 'prompt_tokens', "
        "'output_tokens' (has: ts_ms, input_length, output_length); need arrival_s or timestamp, prompt_tokens, "
        "output_tokens (tenant optional); map yours with workload.columns.timestamp=ts_ms workload.time_unit=ms "
        "workload.columns.prompt_tokens=input_length workload.columns.output_tokens=output_length"]
    assert not out.exists()


def test_headline_has_no_columns_for_a_baseline_the_sweep_did_not_run(tmp_path: Path) -> None:
    # a sweep of multiplex and reconfig over fleet sizes: "turnaround vs mig" and "TTFT vs mig" were two
    # columns of "—" (mig is a default baseline)
    import json
    import shutil

    sys.path.insert(0, str(ROOT / "tests"))
    from test_report_helpers import make_sweep

    from moesim.report import build_report

    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    for d in list(root.iterdir()):
        if (d / "summary.json").exists() and json.loads((d / "summary.json").read_text())["policy"] == "mig":
            shutil.rmtree(d)
    html = build_report(root).read_text()
    head = html.split("<h2>Headline numbers</h2>")[1].split("</table>")[0]
    assert "vs mig" not in head
    assert head.count("vs reconfig") == 2


def test_a_hugging_face_id_names_the_shipped_model(tmp_path: Path) -> None:
    # model=mistralai/Mixtral-8x7B-v0.1 (what a user copies from the Hub) read "no such config.json file" with
    # no word that moesim ships that model as model=mixtral-8x7b
    import re

    from moesim.specs import get_model
    from moesim.specs.hf import HUB_IDS

    with pytest.raises(UserError) as e:
        get_model(str(tmp_path / "mistralai" / "Mixtral-8x7B-v0.1"))
    assert str(e.value).endswith("no such config.json file; that Hugging Face model ships with moesim as "
                                 "model=mixtral-8x7b (or give the path of its config.json)")
    with pytest.raises(UserError) as e:
        get_model("Qwen/Qwen3-30B-A3B")
    assert "model=qwen3-30b-a3b" in str(e.value)
    with pytest.raises(UserError) as e:
        get_model("foo/bar")
    assert str(e.value) == "model='foo/bar': no such config.json file"
    # the table is NOTICE.md's, model for model
    notice = (ROOT / "moesim/specs/data/NOTICE.md").read_text()
    rows = {repo: stem for stem, repo in re.findall(r"^\| ([\w.-]+)\.json \| ([\w./-]+) \|", notice, re.M)}
    assert rows
    assert {k: v for k, v in HUB_IDS.items() if k in rows} == rows
    for name in HUB_IDS.values():
        get_model(name)


def test_fleet_bench_says_when_the_variants_cannot_fit(capsys: pytest.CaptureFixture[str]) -> None:
    # variants=100 gpus=1: two numpy "divide by zero" RuntimeWarnings (with their source lines), then a
    # placement error; placement=file and cost=profile_bucketed were offered but need keys the bench lacks
    import warnings

    from moesim.fleet.bench import main, parse_args

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(SystemExit) as e:
            main(["variants=100", "gpus=1", "requests=10"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "moesim: error: variants=100 on gpus=1: 100 variants per H200 do not fit with policy=multiplex (estimated "
        "capacity 0 requests/s); use more gpus= or fewer variants="]
    for arg, line in (("placement=file", "placement='file': valid: everywhere, greedy_slo, optimal, pack, "
                                         "per_variant"),
                      ("cost=profile_bucketed", "cost='profile_bucketed': valid: constant, profile, profile_mixed, "
                                                "roofline")):
        with pytest.raises(UserError) as u:
            parse_args([arg])
        assert str(u.value) == line


def test_a_verdict_resting_on_single_requests_says_so(tmp_path: Path) -> None:
    # a 3-request trace swept at 6 rates: "multiplex sustains ≥ 2 requests/s …, at least 4× the next best",
    # with nothing saying that every figure rests on 3 requests per job (one request = 33 % of attainment)
    import json

    sys.path.insert(0, str(ROOT / "tests"))
    from test_report_helpers import make_sweep, read_data

    from moesim.io import write_json
    from moesim.report import build_report

    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)  # 10 requests a job: no caveat
    assert "single requests" not in " ".join(read_data(build_report(root).read_text())["verdict"])
    for d in root.iterdir():
        if (d / "summary.json").exists():
            s = json.loads((d / "summary.json").read_text())
            write_json(d / "summary.json", {**s, "n_requests": 3})
    v = read_data(build_report(root).read_text())["verdict"]
    assert v[-1].endswith(" Each job served at most 3 requests: one request is 33.3% of its SLO attainment, more "
                          "than the 10% the target leaves, so each figure rests on single requests; give each job "
                          "more (a longer trace or duration_s).")


def test_a_trace_at_one_instant_is_reported_without_a_rate(tmp_path: Path) -> None:
    # a one-request trace (span 0 s) records rate 0: the report read "reconfig sustains … ≥ 0 requests/s per
    # tenant on 1 GPU, ≥ 0 requests/s per GPU" and its rate axes ran from −1 to 1
    sys.path.insert(0, str(ROOT / "tests"))
    from test_report_helpers import read_data, read_figures

    from moesim.report import build_report

    (tmp_path / "one.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0,10,5\n")
    p = _simulate(tmp_path, "one", "workload=trace", "workload.path=one.csv", "policy=reconfig")
    assert p.returncode == 0, p.stderr
    html = build_report(tmp_path / "one").read_text()
    v = " ".join(read_data(html)["verdict"])
    assert ("the replayed trace has no arrival rate (its requests all arrive at one instant), so no rate is "
            "compared: reconfig meets it.") in v
    assert "≥ 0 " not in v
    ax = read_figures(html)["turnaround"]["layout"]["xaxis"]
    assert ax["ticktext"] == ["none (all requests at one instant)"]


def test_serve_lists_only_its_own_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # serve into the out= of an earlier run with compare=false: "outputs in s/ (per_request_errors.parquet, …,
    # simulated_requests.parquet, …)" listed the earlier run's comparison files as this run's
    from moesim.serve.__main__ import main

    out = tmp_path / "s"
    base = ["backend=cost", "clock=virtual", "model=tiny", "max_requests=6", f"out={out}"]
    main([*base, "compare=true"])
    first = capsys.readouterr().out.strip().splitlines()[-1]
    assert "simulated_requests.parquet" in first
    assert "not from this run" not in first
    main([*base, "compare=false"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"outputs in {out}/ (requests.parquet, segments.parquet, summary.json); not from this run (an earlier "
        "run's): per_request_errors.parquet, simulated_requests.parquet")


def test_simulate_help_says_an_option_without_keys_has_none() -> None:
    # "keys of placement=everywhere (another option: placement=<name> --help):" stood over no keys at all
    from moesim.config import register_configs, simulate_help

    register_configs()
    text = simulate_help([])
    assert "keys of placement=everywhere: none (another option: placement=<name> --help)\n" in text
    assert "keys of router=least_work (another option: router=<name> --help):\n  router.seed=0" in text


def test_a_misspelt_slo_class_key_is_named() -> None:
    # +slo_classes.gold={ttft:0.5,...}: "expected {ttft_s, tpot_s, tenants}, got {'ttft': 0.5, ...}"
    from moesim.slo import slo_classes

    with pytest.raises(UserError) as e:
        slo_classes({"gold": {"ttft": 0.5, "tpot_s": 0.05, "tenants": [0]}}, 2)
    assert str(e.value) == "slo_classes.gold: unknown key 'ttft' (did you mean 'ttft_s'?); valid: ttft_s, tpot_s, tenants"
    assert slo_classes({"gold": {"ttft_s": 0.5, "tenants": [0]}}, 2)[0].ttft_s == 0.5


def test_a_misspelt_workload_choice_gets_the_nearest_one() -> None:
    # workload.popularity=zipff listed the valid values without the one meant (keys and groups had it)
    from moesim.workloads import WORKLOADS

    with pytest.raises(UserError) as e:
        WORKLOADS.config("poisson", {"popularity": "zipff"})
    assert str(e.value) == ("workload=poisson: popularity='zipff' is invalid (did you mean 'zipf'?); valid: 'equal', "
                            "'zipf', 'weights'")


def test_calibrate_validate_takes_the_profile_as_a_bare_argument(capsys: pytest.CaptureFixture[str]) -> None:
    # `python -m moesim.calibrate.validate my.parquet` (as report, quality_report and consolidate take theirs)
    # read "argument '…parquet': expected key=value"
    from moesim.calibrate.validate import main

    main([str(ROOT / "calibration/profiles/h200__mixtral-8x7b.parquet")])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("median |error| ")


@pytest.mark.parametrize(("rows", "row"), [("0,10,5,9\n1,20,6,9\n", 1), ("0,10,5\n1,20,6,8\n2,3,4\n", 2)])
def test_a_row_with_more_values_than_the_header_is_refused_not_shifted(tmp_path: Path, rows: str, row: int) -> None:
    # every row one value longer than the header: pandas took the first value as an index and shifted the rest
    # left, so arrival_s read the prompt tokens (10, 20) and prompt_tokens the output tokens, without a word
    from moesim.workloads import read_trace

    f = tmp_path / "t.csv"
    f.write_text("arrival_s,prompt_tokens,output_tokens\n" + rows)
    with pytest.raises(UserError) as e:
        read_trace(f)
    assert str(e.value) == (f"trace file '{f}': row {row}: 4 values but the header names 3 columns (arrival_s, "
                            "prompt_tokens, output_tokens); give each row one value per column")
    # a trailing comma on every line (a spreadsheet's export) is no extra value
    f.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,5,\n1,20,6,\n")
    t = read_trace(f)
    assert (t.arrival_s.tolist(), t.prompt_tokens.tolist(), t.output_tokens.tolist()) == ([0.0, 1.0], [10, 20], [5, 6])


def test_a_misspelt_gpu_file_field_is_named_not_ignored(tmp_path: Path) -> None:
    # a copy of h200.yaml with fp8_tflops misspelt fp8_tflop ran with fp8 at 0 FLOP/s without a word; with
    # hbm_GBps misspelt it said "field 'hbm_GBps' missing" beside the field the user did write
    from moesim.specs import get_gpu
    from moesim.specs.gpus import DATA_DIR

    text = (DATA_DIR / "h200.yaml").read_text()
    for old, new, line in (
        ("fp8_tflops:", "fp8_tflop:", "unknown field 'fp8_tflop' (did you mean 'fp8_tflops'?)"),
        ("hbm_GBps:", "hbm_GBs:", "unknown field 'hbm_GBs' (did you mean 'hbm_GBps'?)"),
        ("h2d_pinned_GBps:", "h2d_pined_GBps:", "host_link: unknown field 'h2d_pined_GBps' (did you mean "
                                                "'h2d_pinned_GBps'?)"),
        ("max_instances:", "max_instance:", "mig.profiles[0]: unknown field 'max_instance' (did you mean "
                                            "'max_instances'?)"),
    ):
        f = tmp_path / "g.yaml"
        f.write_text(text.replace(old, new, 1))
        with pytest.raises(UserError) as e:
            get_gpu(str(f))
        assert str(e.value).startswith(f"{f}: {line}; valid: "), str(e.value)
    f.write_text(text)
    assert get_gpu(str(f)).fp8_flops == get_gpu("h200").fp8_flops


def test_a_price_file_names_a_misspelt_field_or_gpu(tmp_path: Path) -> None:
    # "per_gpu_hour:" instead of "prices:" read "expected a mapping with 'prices: …'", "sorce:" was ignored,
    # and "h100-80g" listed the valid GPUs without the one meant
    from moesim.search.prices import load_prices

    f = tmp_path / "p.yaml"
    for text, line in (
        ("currency: EUR\nsorce: mine\nprices:\n  h200: 3.5\n",
         "unknown field 'sorce' (did you mean 'source'?); valid: currency, unit, source, prices"),
        ("currency: EUR\nper_gpu_hour:\n  h200: 3.5\n",
         "unknown field 'per_gpu_hour'; valid: currency, unit, source, prices"),
        ("prices:\n  h100-80g: 2\n", "prices.h100-80g: unknown gpu (did you mean 'h100-80gb'?); valid: a100-40gb, "
                                     "a100-80gb, b200, h100-80gb, h100-pcie, h200, l40s"),
    ):
        f.write_text(text)
        with pytest.raises(UserError) as e:
            load_prices(f)
        assert str(e.value) == f"{f}: {line}"
    assert load_prices().per_hour("h200") == 4.0


@pytest.mark.parametrize(("name", "params", "line"), [
    ("greedy_slo", {"max_replicas": -1}, "placement.max_replicas=-1: must be an integer ≥ 0 (0: no limit)"),
    ("greedy_slo", {"min_gain": -0.5}, "placement.min_gain=-0.5: must be a number in [0, 1) (a share of all requests)"),
    ("optimal", {"time_limit_s": 0.0}, "placement.time_limit_s=0.0: must be a finite number > 0"),
    ("optimal", {"max_binaries": 0}, "placement.max_binaries=0: must be an integer ≥ 1"),
])
def test_placement_strategy_knobs_are_checked(name: str, params: dict, line: str) -> None:
    # placement=greedy_slo placement.max_replicas=-1 ran as if 1 without a word
    from moesim.fleet import PLACEMENTS

    with pytest.raises(UserError) as e:
        PLACEMENTS.config(name, params)
    assert str(e.value) == line


def test_a_fleet_of_other_gpus_is_announced_and_recorded_as_such(tmp_path: Path) -> None:
    # fleet.gpu=a100-80gb (gpu= left at h200): the command announced "cost: profile …h200__mixtral-8x7b.parquet
    # (measured on h200 …)" and summary.json said gpu: h200, while two A100s ran on the derived A100 profile
    import json

    p = _simulate(tmp_path, "f", "fleet.gpus=2", "fleet.gpu=a100-80gb")
    assert p.returncode == 0, p.stderr
    cost = [ln for ln in p.stderr.splitlines() if ln.startswith("moesim: cost: ")]
    assert len(cost) == 1
    assert "a100-80gb__mixtral-8x7b" in cost[0]
    assert "h200" not in cost[0].split("DERIVED from")[0]
    s = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert (s["gpu"], s["gpus"], s["cost_provenance"]) == ("a100-80gb", 2, "derived")
    # a fleet file of two types: one line per type, and both in the record
    (tmp_path / "fl.yaml").write_text("groups:\n  - gpu: h200\n    count: 1\n  - gpu: a100-80gb\n    count: 1\n")
    p = _simulate(tmp_path, "m", "fleet=file", "fleet.path=fl.yaml", "placement=greedy_slo")
    assert p.returncode == 0, p.stderr
    assert len([ln for ln in p.stderr.splitlines() if ln.startswith("moesim: cost: ")]) == 2
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["gpu"] == "h200+a100-80gb"


@pytest.mark.parametrize(("params", "line"), [
    ({"gpus_per_node": 0}, "fleet.gpus_per_node=0: must be an integer ≥ 1"),
    ({"node_host_GBps": -5.0}, "fleet.node_host_GBps=-5.0: must be a finite number ≥ 0 (GB/s; 0 = no cap)"),
    ({"gpu": "h2000"}, "fleet.gpu=h2000: unknown gpu 'h2000' (did you mean 'h200'?); valid: a100-40gb, a100-80gb, "
                       "b200, h100-80gb, h100-pcie, h200, l40s"),
])
def test_fleet_keys_are_named_as_typed(params: dict, line: str) -> None:
    # fleet.gpus_per_node=0 read "fleet group h200: gpus_per_node=0 is invalid"
    from moesim.fleet import FLEETS

    with pytest.raises(UserError) as e:
        FLEETS.config("uniform", params)
    assert str(e.value) == line


@pytest.mark.parametrize(("arg", "line"), [
    # every bad value in a sweep ended in "(in a sweep, … sweep that key as well, e.g. key=choice(value))",
    # which is no help when the value is wrong whatever is swept
    ("progress=maybe", "progress=maybe: Value 'maybe' is not a valid bool (type str); valid: true or false"),
    ("report.baselines=mig", "report.baselines=mig: Invalid value assigned: str is not a ListConfig, list or tuple; "
                             "valid: a list in brackets, e.g. report.baselines=[mig]"),
    ("report.baselines=[migg]", "report.baselines: unknown policy 'migg' (did you mean 'mig'?); valid: dedicated, "
                                "mig, multiplex, naive, reconfig, reconfig_fast, swap"),
])
def test_a_bad_value_in_a_sweep_says_what_is_valid(arg: str, line: str) -> None:
    from moesim.config import plan_command_line, register_configs

    register_configs()
    with pytest.raises(UserError) as e:
        plan_command_line(["-m", "policy=reconfig", "workload.rate=0.1,0.2", "sweep.seeds=0", arg])
    assert str(e.value) == line


def test_the_sweep_hint_stays_where_the_swept_values_are_needed() -> None:
    from moesim.config import plan_command_line, register_configs

    register_configs()
    with pytest.raises(UserError) as e:
        plan_command_line(["-m", "policy=mig,naive", "policy.layout=3g.71gb+3g.71gb", "workload.rate=0.1"])
    assert str(e.value).endswith("(in a sweep, the config without the swept values must take every other override; "
                                 "sweep that key as well, e.g. key=choice(value))")


def test_serve_help_tells_max_prompt_from_max_output() -> None:
    # both read "token counts are capped at these (tokens)."
    from moesim.cli import help_text
    from moesim.serve.config import ServeConfig

    text = help_text(ServeConfig, prog="python -m moesim.serve")
    assert "max_prompt=1024  (int)\n      a request's prompt is capped at this many tokens." in text
    assert "max_output=64  (int)\n      a request's output is capped at this many tokens." in text


def test_a_rate_for_a_trace_at_one_instant_says_how_to_run_it(tmp_path: Path) -> None:
    # the default sweep on a one-request trace: "rate=0.05 is invalid; valid: 0 (use time_scale)", though the
    # user set no rate and time_scale cannot spread requests that arrive at one instant
    from moesim.workloads import WORKLOADS

    f = tmp_path / "one.csv"
    f.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,5\n")
    with pytest.raises(UserError) as e:
        WORKLOADS.build("trace", {"path": str(f), "rate": 0.05})
    assert str(e.value) == (f"workload=trace: rate=0.05 is invalid; valid: 0, the trace's own times (workload.rate=0; "
                            f"the default sweep sets its rates unless given one): {f} spans 0 s, so it has no mean "
                            "rate to scale to")


def test_a_trace_longer_than_the_models_context_is_refused_before_any_job(tmp_path: Path) -> None:
    # every request of the trace beyond Mixtral's 32,768 tokens: each of a sweep's 36 jobs failed with "every one
    # of the 2 requests is rejected …: shorten the requests, lower policy.weight_budget_fraction or use a larger
    # GPU/profile" (no GPU lengthens a model's context)
    (tmp_path / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0,100000,5\n1,200000,6\n")
    d = tmp_path / "sw"
    p = subprocess.run([sys.executable, "-m", "moesim.simulate", "-m", f"hydra.sweep.dir={d}", "workload=trace",
                        "workload.path=t.csv", "policy=reconfig,multiplex", "progress=false"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env=_env())
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith(
        "moesim: error: trace file 't.csv': every one of its 2 replayed requests is longer than model=mixtral-8x7b's "
        "context of 32,768 tokens (prompt + output; the shortest is 100,005); valid: requests of at most 32,768 "
        "tokens, or a model with a longer context")
    assert not d.exists()
    # one request that fits is served, the other refused with its reason, as before
    (tmp_path / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0,100000,5\n1,20,6\n")
    p = _simulate(tmp_path, "one", "workload=trace", "workload.path=t.csv")
    assert p.returncode == 0, p.stderr
    assert "2 requests (1 rejected)" in p.stdout + p.stderr


def test_the_verdict_says_one_request_per_second_in_the_singular(tmp_path: Path) -> None:
    # the default report's verdict: "reconfig_fast (1 requests/s per tenant on 1 GPU, …)"
    import json

    sys.path.insert(0, str(ROOT / "tests"))
    from test_report_helpers import make_sweep, read_data

    from moesim.io import write_json
    from moesim.report import build_report

    root = make_sweep(tmp_path / "s", failed=False, incomplete=False)
    for d in root.iterdir():  # rates 0.1/0.2/0.4 → 1/2/4 requests/s per tenant
        if (d / "summary.json").exists():
            s = json.loads((d / "summary.json").read_text())
            write_json(d / "summary.json", {**s, "rate": 10 * s["rate"]})
    v = " ".join(read_data(build_report(root).read_text())["verdict"])
    assert "(1 request/s per tenant on 1 GPU, 2 requests/s per GPU)" in v
    assert "1 requests/s" not in v
