"""Admission: a request that can never be served is rejected (with its reason) and the rest are served;
a run where every request is rejected is one UserError line; metrics count rejected requests apart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.cost import COST_MODELS
from moesim.engine import simulate
from moesim.errors import UserError
from moesim.metrics import summarize
from moesim.policies import POLICIES
from moesim.specs import get_gpu, get_model
from moesim.workloads.request import Request

MIXTRAL = get_model("mixtral-8x7b")
A100 = get_gpu("a100-80gb")
ROOT = Path(__file__).resolve().parents[1]


def _run(reqs: list[Request], **policy: float):
    cost = COST_MODELS.build("roofline", {}, model=MIXTRAL, gpu=A100)
    pol = POLICIES.build("reconfig", dict(policy))
    return simulate(MIXTRAL, A100, pol, cost, reqs, n_tenants=2)


def test_too_long_and_too_big_requests_are_rejected_and_the_rest_served() -> None:
    # weight budget 0.9995 leaves 0.204 GB of KV on the A100 (1,559 Mixtral tokens): 1,600 tokens don't fit
    reqs = [
        Request(0, 0, 0.0, 200, 20),
        Request(1, 1, 0.5, 40_000, 10),  # 40,010 tokens > Mixtral's 32,768
        Request(2, 0, 1.0, 1_500, 100),  # fits the context, not the instance's KV cache
        Request(3, 1, 2.0, 300, 30),
    ]
    res = _run(reqs, weight_budget_fraction=0.9995)
    df = res.requests
    cap = res.instances[0]["kv_capacity_bytes"]
    kv = 1_600 * MIXTRAL.kv_bytes_per_token
    assert kv > cap > 330 * MIXTRAL.kv_bytes_per_token
    assert df["rejected"].tolist() == [
        "",
        "context 40010 > model max 32768",
        f"kv {kv / 1e9:.3g} GB > instance capacity {cap / 1e9:.3g} GB",
        "",
    ]
    rej = df["rejected"] != ""
    assert df.loc[rej, ["start_s", "first_token_s", "finish_s"]].isna().all().all()
    assert (df.loc[rej, "instance"] == -1).all()
    assert df.loc[~rej, "finish_s"].notna().all()
    assert (df.loc[~rej, "finish_s"] > df.loc[~rej, "arrival_s"]).all()
    # the served requests' timeline holds exactly their tokens (conservation)
    pre = res.segments[res.segments["kind"] == "prefill"]
    assert int(pre["tokens"].sum()) == 200 + 300


def test_every_request_rejected_is_one_user_error_line() -> None:
    with pytest.raises(UserError) as err:
        _run([Request(0, 0, 0.0, 40_000, 10), Request(1, 1, 1.0, 33_000, 1)])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == ("every one of the 2 requests is rejected: 2 longer than mixtral-8x7b's context of 32,768 tokens "
                   "(shorten them or use a model with a longer context: no GPU changes this)")


def test_summary_counts_rejected_apart_and_as_slo_misses() -> None:
    reqs = [Request(0, 0, 0.0, 200, 20), Request(1, 1, 0.5, 40_000, 10), Request(2, 0, 1.0, 300, 30)]
    res = _run(reqs)
    s = summarize(res.requests, res.segments, horizon_s=60.0, slo_ttft_s=1e9, slo_tpot_s=1e9)
    served = res.requests[res.requests["rejected"] == ""]
    assert (s["n_requests"], s["rejected"]) == (3, 1)
    assert s["mean_turnaround_s"] == pytest.approx((served["finish_s"] - served["arrival_s"]).mean(), rel=1e-12)
    assert s["throughput_rpm"] == pytest.approx(60.0 * 2 / 60.0)
    assert s["tokens_per_s"] == pytest.approx(50 / 60.0)
    assert s["slo_attainment"] == pytest.approx(2 / 3)  # an infinite SLO: only the rejected one misses


def test_summary_of_old_request_tables_without_the_column() -> None:
    res = _run([Request(0, 0, 0.0, 200, 20)])
    s = summarize(res.requests.drop(columns="rejected"), res.segments)
    assert (s["n_requests"], s["rejected"]) == (1, 0)


def test_cli_run_writes_rejected_column_and_count(tmp_path: Path) -> None:
    trace = tmp_path / "long.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,100,10\n1,126000,100\n2,50,5\n")
    d = tmp_path / "D"
    p = subprocess.run([sys.executable, "-m", "moesim.simulate", "hydra.mode=RUN", f"hydra.run.dir={d}",
                        "policy=mig", "workload=trace", f"workload.path={trace}", "progress=false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    req = pd.read_parquet(d / "requests.parquet")
    assert req["rejected"].tolist() == ["", "context 126100 > model max 32768", ""]
    assert np.isnan(req["finish_s"][1])
    s = json.loads((d / "summary.json").read_text())
    assert (s["n_requests"], s["rejected"]) == (3, 1)
    assert "(1 rejected)" in p.stdout
    assert f"replaying 3 of 3 requests of {trace} (whole trace" in p.stderr
