"""Helpers shared by the report tests: a hand-made sweep dir with known numbers, and reading a report back.

The synthetic sweep has policies mig, reconfig and multiplex × rates 0.1, 0.2, 0.4 req/s per tenant ×
seeds 0, 1. Its metrics follow closed forms so every aggregate the report shows is known exactly:

* mean_turnaround_s = BASE[policy] · (1 + rate) · (1 + 0.1·seed); p90 = 2 × that; TTFT = half of it;
* slo_attainment = SLO[policy][rate index] (identical for both seeds);
* per-request turnaround of job (policy, rate, seed): BASE[policy] · (1 + k/10) · (1 + seed), k = 0..9.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.io import write_json, write_parquet

POLICIES = ("mig", "reconfig", "multiplex")
RATES = (0.1, 0.2, 0.4)
SEEDS = (0, 1)
BASE = {"mig": 10.0, "reconfig": 2.0, "multiplex": 1.0}
SLO = {"mig": (0.95, 0.5, 0.1), "reconfig": (1.0, 0.95, 0.85), "multiplex": (0.95, 0.8, 0.95)}
GB = 1e9
MEMORY = {  # per policy: instances (resident experts, host experts, non-expert, kv, memory) in GB
    "mig": [(35.0, 50.0, 1.5, 3.0, 40.0), (35.0, 50.0, 1.5, 3.0, 40.0)],
    "reconfig": [(75.0, 15.0, 1.5, 3.0, 80.0)],
    "multiplex": [(70.0, 20.0, 3.0, 6.0, 80.0)],
}
N_REQ = 10


def turnaround(policy: str, rate: float, seed: int) -> float:
    """Closed form of a job's mean turnaround (s)."""
    return BASE[policy] * (1 + rate) * (1 + 0.1 * seed)


def request_turnarounds(policy: str, seed: int) -> np.ndarray:
    """The per-request turnarounds (s) of one job."""
    return BASE[policy] * (1 + np.arange(N_REQ) / 10) * (1 + seed)


def make_sweep(root: Path, *, derived: bool = False, failed: bool = True, incomplete: bool = True) -> Path:
    """Write the synthetic sweep into ``root`` (job dirs 0..17, plus a failed and an incomplete one)."""
    root.mkdir(parents=True, exist_ok=True)
    num = 0
    for policy in POLICIES:
        for i, rate in enumerate(RATES):
            for seed in SEEDS:
                d = root / str(num)
                t = request_turnarounds(policy, seed)
                arrival = np.arange(N_REQ, dtype=float) * 2.0
                start = arrival + 0.1 * t
                req = pd.DataFrame({
                    "request_id": np.arange(N_REQ), "tenant": np.arange(N_REQ) % 2,
                    "instance": np.zeros(N_REQ, dtype=int), "arrival_s": arrival, "start_s": start,
                    "first_token_s": arrival + 0.5 * t, "finish_s": arrival + t,
                    "prompt_tokens": np.full(N_REQ, 20), "output_tokens": np.full(N_REQ, 25),
                })
                seg = pd.DataFrame({
                    "instance": ["gpu0", "gpu0", "gpu0", "gpu0"], "kind": ["swap", "prefill", "decode", "decode"],
                    "start_s": [0.0, 1.0, 2.0, 100.0], "end_s": [1.0, 2.0, 5.0, 101.0],
                    "n_seqs": [0, 1, 1, 1], "tokens": [0, 20, 24, 24], "tenants": ["1", "1", "1", "0"],
                    "expert_fetches": [0.0, 3.0, 0.0, 1.0], "attention_s": [0.0, 0.5, 1.0, 0.5],
                    "experts_s": [0.0, 0.4, 2.0, 0.5], "fetch_s": [0.0, 0.1, 0.0, 0.0],
                })
                share = 1.0 / len(MEMORY[policy])  # mig: two halves of one GPU
                inst = [{"name": f"i{k}", "profile": "full" if share == 1 else "3g", "sm_fraction": share,
                         "bw_fraction": share,
                         "resident_expert_bytes": r * GB, "host_expert_bytes": h * GB, "nonexpert_bytes": n * GB,
                         "kv_capacity_bytes": kv * GB, "memory_bytes": m * GB, "tenants": [k]}
                        for k, (r, h, n, kv, m) in enumerate(MEMORY[policy])]
                mt = turnaround(policy, rate, seed)
                summary = {
                    "status": "ok", "policy": policy, "model": "mixtral-8x7b", "gpu": "a100-80gb",
                    "workload": "poisson", "rate": rate, "tenants": 2, "seed": seed, "cost": "profile",
                    "cost_derived": derived, "slo_ttft_s": 2.0, "slo_tpot_s": 0.2, "n_requests": N_REQ,
                    "mean_turnaround_s": mt, "p90_turnaround_s": 2 * mt, "mean_ttft_s": mt / 2,
                    "p90_ttft_s": mt, "throughput_rpm": 60 * rate * 2 * (1 - 0.01 * seed),
                    "slo_attainment": SLO[policy][i], "wall_s": 0.1,
                    "overrides": [f"policy={policy}", f"workload.rate={rate}", f"seed={seed}"],
                    "params": {"policy": {"name": policy, "max_batch": 1}, "workload": {"name": "poisson"},
                               "cost": {"name": "profile"}},
                }
                write_parquet(d / "requests.parquet", req)
                write_parquet(d / "segments.parquet", seg)
                write_json(d / "instances.json", inst)
                write_json(d / "summary.json", summary)
                (d / ".hydra").mkdir()
                (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in summary["overrides"]))
                num += 1
    if failed:
        write_json(root / str(num) / "error.json", {
            "status": "failed", "policy": "mig", "rate": 0.8, "seed": 0, "error_type": "UserError",
            "error": "instance mig0 cannot fit", "overrides": ["policy=mig", "workload.rate=0.8", "seed=0"],
            "traceback": "Traceback ...",
        })
        num += 1
    if incomplete:
        hyd = root / str(num) / ".hydra"
        hyd.mkdir(parents=True)
        (hyd / "overrides.yaml").write_text("- policy=reconfig\n- workload.rate=0.8\n- seed=1\n")
    return root


FIGURE_RE = re.compile(r'<script type="application/json" data-figure="fig-([a-z_]+)">(.*?)</script>', re.S)
DATA_RE = re.compile(r'<script type="application/json" id="data-([a-z_]+)">(.*?)</script>', re.S)


def read_figures(html: str) -> dict[str, dict[str, Any]]:
    """The plotly figures embedded in a report, by name (``turnaround``, ``cdf``, …)."""
    return {name: json.loads(text) for name, text in FIGURE_RE.findall(html)}


def read_data(html: str) -> dict[str, Any]:
    """The machine-readable data blocks of a report (``headline``)."""
    return {name: json.loads(text) for name, text in DATA_RE.findall(html)}


def traces(fig: dict[str, Any], **meta: Any) -> list[dict[str, Any]]:
    """The traces of ``fig`` whose ``meta`` has all the given items."""
    return [t for t in fig["data"] if all((t.get("meta") or {}).get(k) == v for k, v in meta.items())]


def test_read_figures_round_trips_escaped_script_end() -> None:
    """A figure whose text contains ``</script>`` survives embedding and reading back."""
    import plotly.graph_objects as go

    from moesim.report.page import figure_block

    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4], name="a</script><b>"))
    block = figure_block("x", fig)
    assert block.count("</script>") == 1
    back = read_figures(block)["x"]
    assert back["data"][0]["name"] == "a</script><b>"
    assert back["data"][0]["y"] == [3, 4]


def test_log_ticks_label_decades_or_1_2_5_never_every_digit():
    from moesim.report.figures import log_ticks

    assert log_ticks(np.array([0.05, 1.0, 300.0])) == {"dtick": 1}        # 3.8 decades: powers of ten
    # 1.35 decades: 1, 2, 5 written out (plotly's "D2" labelled 0.5 as a small "5" left of the "1")
    assert log_ticks(np.array([0.4, 2.0, 9.0])) == {"tickvals": [0.5, 1.0, 2.0, 5.0, 10.0],
                                                    "ticktext": ["0.5", "1", "2", "5", "10"]}
    assert log_ticks(np.array([0.35, 6.0]))["ticktext"] == ["0.5", "1", "2", "5"]
    assert log_ticks(np.array([1.0, 2.5]))["ticktext"] == ["0.1", "0.2", "0.5", "1", "2", "5", "10", "20"]
    # one value (a one-job report): plotly's axis spans about two decades around it, labelling every digit
    assert log_ticks(np.array([7.9, 7.9]))["ticktext"] == ["1", "2", "5", "10", "20", "50"]
    assert log_ticks(np.array([0.0, -1.0, np.nan])) == {}                 # nothing positive: untouched
    assert log_ticks(np.array([0.0, 0.1, 1e3])) == {"dtick": 1}           # zeros ignored
