"""``python -m moesim.simulate``: the single-run form of issue 2, sweeps, and one-line errors.

These run the real command in a subprocess (hydra, the joblib launcher, the engine), so they check what a
user gets: files, numbers that agree with each other, exit codes and messages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report_helpers import read_data, read_figures, traces

from moesim.config import check_command_line, register_configs
from moesim.errors import UserError

REQUEST_COLUMNS = ["request_id", "tenant", "arrival_s", "start_s", "first_token_s", "finish_s",
                   "prompt_tokens", "output_tokens"]
ISSUE2 = ["model=mixtral-8x7b", "gpu=a100-80gb", "policy=reconfig", "workload=poisson", "workload.rate=0.05", "workload.tenants=2", "workload.duration_s=3600", "workload.prompt_tokens=20", "workload.output_tokens=25", "seed=1"]


ROOT = Path(__file__).resolve().parents[1]


def env_here() -> dict[str, str]:
    """The environment for a subprocess that runs this checkout's moesim (and its hydra plugin) from any cwd."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = env_here()
    return subprocess.run([sys.executable, "-m", "moesim.simulate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_issue2_single_run(tmp_path: Path) -> None:
    d = tmp_path / "D"
    p = run("hydra.mode=RUN", f"hydra.run.dir={d}", *ISSUE2, "progress=false", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    req = pd.read_parquet(d / "requests.parquet")
    assert list(req.columns[: len(REQUEST_COLUMNS)]) == REQUEST_COLUMNS or set(REQUEST_COLUMNS) <= set(req.columns)
    s = json.loads((d / "summary.json").read_text())
    assert s["n_requests"] == len(req) > 0
    turnaround = req["finish_s"] - req["arrival_s"]
    assert s["mean_turnaround_s"] == pytest.approx(turnaround.mean(), rel=1e-12)
    assert s["p90_turnaround_s"] == pytest.approx(np.percentile(turnaround, 90), rel=1e-12)
    assert s["mean_ttft_s"] == pytest.approx((req["first_token_s"] - req["arrival_s"]).mean(), rel=1e-12)
    assert s["mean_service_s"] == pytest.approx((req["finish_s"] - req["start_s"]).mean(), rel=1e-12)
    assert s["throughput_rpm"] > 0
    assert (s["policy"], s["gpu"], s["rate"], s["seed"], s["tenants"]) == ("reconfig", "a100-80gb", 0.05, 1, 2)
    assert (req["prompt_tokens"] == 20).all()
    assert (req["output_tokens"] == 25).all()
    assert set(req["tenant"]) == {0, 1}
    assert (d / "segments.parquet").exists()
    assert (d / "instances.json").exists()
    assert f"outputs in {d}/" in p.stdout


def test_constant_cost_closed_form(tmp_path: Path) -> None:
    """With fixed prefill 0.5 s and 0.02 s per decode step, an unqueued request is served in
    0.5 + 24·0.02 = 0.98 s: the dedicated policy never queues tenants behind each other at this rate."""
    d = tmp_path / "D"
    args = [a if not a.startswith("policy=") else "policy=dedicated" for a in ISSUE2] + ["policy.max_batch=1"]
    p = run("hydra.mode=RUN", f"hydra.run.dir={d}", *args, "cost=constant", "cost.prefill_s=0.5",
            "cost.decode_step_s=0.02", "workload.duration_s=600", "progress=false", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    req = pd.read_parquet(d / "requests.parquet")
    service = (req["finish_s"] - req["start_s"]).to_numpy()
    np.testing.assert_allclose(service, 0.98, atol=1e-9)
    np.testing.assert_allclose(req["first_token_s"] - req["start_s"], 0.5, atol=1e-9)
    s = json.loads((d / "summary.json").read_text())
    assert s["cost"] == "constant"
    assert s["mean_service_s"] == pytest.approx(0.98)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small comparison sweep: 2 policies × 2 rates × 2 seeds (the -m overrides replace the default grid)."""
    tmp = tmp_path_factory.mktemp("cli")
    d = tmp / "sweep"
    p = run("-m", f"hydra.sweep.dir={d}", "policy=mig,multiplex", "workload.rate=0.05,0.2",
            "seed=0,1", "gpu=a100-80gb", "workload.duration_s=60", cwd=tmp)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == f"moesim: report: {d / 'report.html'}"
    assert "moesim: sweep of 8 jobs" in p.stderr
    return d


def test_sweep_summary_matches_job_files(sweep: Path) -> None:
    csv = pd.read_csv(sweep / "summary.csv")
    assert len(csv) == 8
    assert set(csv["status"]) == {"ok"}
    assert sorted(set(csv["policy"])) == ["mig", "multiplex"]
    assert sorted(set(csv["rate"])) == [0.05, 0.2]
    assert sorted(set(csv["seed"])) == [0, 1]
    for _, row in csv.iterrows():
        req = pd.read_parquet(sweep / str(row["job"]) / "requests.parquet")
        assert row["n_requests"] == len(req)
        assert row["mean_turnaround_s"] == pytest.approx((req["finish_s"] - req["arrival_s"]).mean(), rel=1e-9)
        assert row["mean_ttft_s"] == pytest.approx((req["first_token_s"] - req["arrival_s"]).mean(), rel=1e-9)


def test_sweep_report_numbers_match_summary_and_requests(sweep: Path) -> None:
    csv = pd.read_csv(sweep / "summary.csv")
    html = (sweep / "report.html").read_text()
    figs = read_figures(html)
    for policy in ("mig", "multiplex"):
        sub = csv[csv["policy"] == policy]
        for name, metric in (("turnaround", "mean_turnaround_s"), ("turnaround", "p90_turnaround_s"),
                             ("ttft", "mean_ttft_s"), ("throughput", "throughput_rpm")):
            (t,) = traces(figs[name], metric=metric, series=policy)
            g = sub.groupby("rate")[metric]
            assert t["x"] == [0.05, 0.2]
            np.testing.assert_allclose(t["y"], g.mean().to_numpy(), rtol=1e-9)
            np.testing.assert_allclose(np.array(t["y"]) + t["error_y"]["array"], g.max().to_numpy(), rtol=1e-9)
        (s,) = traces(figs["slo"], metric="slo_attainment", series=policy)
        np.testing.assert_allclose(s["y"], 100 * sub.groupby("rate")["slo_attainment"].mean().to_numpy())
        # CDF at the chosen rate (0.2: the nearer to the geometric middle of 0.05..0.2; ties go up)
        (c,) = traces(figs["cdf"], series=policy)
        jobs = sub[sub["rate"] == c["meta"]["rate"]]["job"]
        pooled = np.sort(np.concatenate([
            (lambda r: (r["finish_s"] - r["arrival_s"]).to_numpy())(pd.read_parquet(sweep / str(j) / "requests.parquet"))
            for j in jobs]))
        np.testing.assert_allclose(c["x"], pooled, rtol=1e-12)
    # the report says "derived" exactly when the jobs' costs came from a derived profile
    assert ('class="derived"' in html) == bool(csv["cost_derived"].all())
    head = {r["policy"]: r for r in read_data(html)["headline"]}
    mean = csv.groupby(["policy", "rate"])["mean_turnaround_s"].mean()
    want = 100 * (np.median([mean["multiplex", r] / mean["mig", r] for r in (0.05, 0.2)]) - 1)
    assert head["multiplex"]["turnaround_pct_vs_mig"] == pytest.approx(want, rel=1e-9)
    inst = json.loads((sweep / str(csv[csv["policy"] == "mig"]["job"].iloc[0]) / "instances.json").read_text())
    (host,) = traces(figs["memory"], key="host_expert_bytes")
    assert host["x"][host["y"].index("mig")] == pytest.approx(sum(i["host_expert_bytes"] for i in inst) / 1e9)


def test_failed_job_is_reported_and_others_kept(tmp_path: Path) -> None:
    d = tmp_path / "s"
    p = run("-m", f"hydra.sweep.dir={d}", "policy=mig", "gpu=a100-80gb", "workload.tenants=2,8",
            "workload.rate=0.05", "seed=0", "workload.duration_s=60", "hydra.launcher.n_jobs=1", cwd=tmp_path)
    assert p.returncode == 1, p.stderr  # a sweep with a failed job exits non-zero, after its summary/report
    csv = pd.read_csv(d / "summary.csv")
    assert list(csv["status"]) == ["ok", "failed"]
    assert "at most 7" in csv["error"].iloc[1]
    assert not (d / "1" / "summary.json").exists()
    err = json.loads((d / "1" / "error.json").read_text())
    assert err["error_type"] == "UserError"
    assert "Traceback" in err["traceback"]
    assert "moesim: job 1 failed" in p.stderr
    assert "Traceback" not in p.stderr
    assert "at most 7" in (d / "report.html").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["policy=nope"], "unknown policy 'nope'; valid: "),
    (["-m", "workload.rate=0.1,-0.5", "policy.nope=1"], "policy.nope=1: unknown key 'nope'; valid keys of policy: "),
    (["-m", "workload.rate=0.1,-0.5"], "rate=-0.5 is invalid"),
    (["hydra.mode=RUN", "workload.tenants=two"], "workload.tenants=two: Value 'two'"),
    (["hydra.mode=RUN", "workload.prompt_tokens=1e23"], "could not be converted to Integer; valid: a whole number"),
])
def test_bad_override_fails_in_one_line_before_any_job(tmp_path: Path, args: list[str], message: str) -> None:
    p = run(*args, f"hydra.sweep.dir={tmp_path / 's'}", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("moesim: error: ")
    assert message in p.stderr
    assert not (tmp_path / "s").exists()
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def registered() -> None:
    register_configs()


@pytest.mark.parametrize(("argv", "n_jobs"), [
    ([], 7 * 6 * 3),  # the default comparison grid of conf/config.yaml
    (["-m", "policy=mig,reconfig", "seed=4"], 2 * 6),  # -m replaces a key of the grid; a plain value too
    (["hydra.mode=RUN", "policy=swap"], 1),
    (["-m", "experiment=paper_a100", "policy=reconfig,mig"], 2 * 16 * 5),
])
def test_job_count_of_command_lines(registered: None, argv: list[str], n_jobs: int) -> None:
    assert check_command_line(argv) == n_jobs


@pytest.mark.parametrize(("argv", "message"), [
    (["seed=-1"], "seed=-1: the seed must be an integer ≥ 0"),
    (["-m", "policy=reconfig,bogus"], "unknown policy 'bogus'"),
    (["model=gpt"], "unknown model 'gpt' (did you mean 'gpt-oss-120b' or 'gpt-oss-20b'?); valid: deepseek-v2, deepseek-v2-lite, deepseek-v3, gpt-oss-120b, "
                    "gpt-oss-20b, mixtral-8x22b, mixtral-8x7b, olmoe-1b-7b, phi-3.5-moe, qwen1.5-moe-a2.7b, "
                    "qwen3-235b-a22b, qwen3-30b-a3b, switch-base-8, tiny (or a config.json path)"),
    (["foo=1"], "foo=1: unknown key 'foo'; valid keys: model, gpu, policy, workload, cost, fleet, placement, router, seed"),
    (["cost=best", "cost.flops_efficiency=0.5"], "cost.flops_efficiency=0.5: unknown key"),
    (["cost=roofline", "cost.flops_efficiency=2"], "cost.flops_efficiency=2.0: must be in (0, 1]"),
    (["slo_ttft_s=0"], "slo_ttft_s=0.0: must be a finite number > 0"),
    (["workload.rate=[1,"], "no viable alternative"),
    (["hydra.mode=RUN", "policy=mig,reconfig"], "policy=mig,reconfig: a sweep in a single run"),
    (["-m", "workload=azure_conv,azure_code", "workload.time_scale=2"],
     "workload.time_scale=2: unknown key 'time_scale'; valid keys of workload: name, rate"),
    (["workload.rate=abc"], "workload.rate=abc: Value 'abc' of type 'str' could not be converted to Float"),
    (["policy=mig", "-m", "seed=1,2"], "unrecognized arguments: seed=1,2; flags such as -m/--multirun go before"),
])
def test_bad_command_lines_in_process(registered: None, argv: list[str], message: str) -> None:
    with pytest.raises(UserError) as exc:
        check_command_line(argv)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("workload", ["azure_conv", "azure_code"])
def test_every_policy_replays_the_azure_traces(registered: None, tmp_path: Path, workload: str) -> None:
    """The job path (compose → validate → simulate → write) in-process for every registered policy on both
    shipped traces; the requests written are the trace's first 20, round-robin over 2 tenants."""
    from hydra import compose, initialize_config_dir

    from moesim import job
    from moesim.config import CONF_DIR, job_spec
    from moesim.policies import POLICIES
    from moesim.workloads.azure import load_shipped

    trace = load_shipped(workload)
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        for policy in POLICIES.names():
            cfg = compose("config", overrides=[f"policy={policy}", f"workload={workload}", "workload.rate=0",
                                               "workload.max_requests=20", "cost=roofline"])
            out = tmp_path / policy
            s = job.run(job_spec(cfg), out)
            req = pd.read_parquet(out / "requests.parquet").sort_values("request_id")
            assert s["n_requests"] == 20, policy
            assert (s["policy"], s["workload"]) == (policy, workload)
            np.testing.assert_array_equal(req["prompt_tokens"], trace.prompt_tokens[:20])
            np.testing.assert_array_equal(req["output_tokens"], trace.output_tokens[:20])
            np.testing.assert_allclose(req["arrival_s"], trace.arrival_s[:20])
            assert list(req["tenant"]) == [i % 2 for i in range(20)]
            assert (req["finish_s"] >= req["first_token_s"]).all()
            assert json.loads((out / "summary.json").read_text())["mean_turnaround_s"] == pytest.approx(
                (req["finish_s"] - req["arrival_s"]).mean())


def test_ray_launcher_is_not_shipped(registered: None) -> None:
    # removed: hydra-ray-launcher pins cloudpickle<3 and pulls ray[default] + boto3; Ray runs the capacity
    # search instead (moesim.search, tested on a real local Ray in tests/test_search_ray.py)
    with pytest.raises(UserError, match=r"unknown hydra/launcher 'ray_cluster'; valid: .*joblib"):
        check_command_line(["hydra/launcher=ray_cluster"])
