"""Golden single-GPU runs: the reference a fleet of one GPU must reproduce byte for byte.

``python tests/fleet_golden.py`` rewrites ``tests/data/fleet_golden/*.parquet``. The files were captured
from the single-GPU engine before the fleet existed (commit f86a7c8); the two ``mig`` files again from main's
single-GPU engine at be65d23, after the paper branch's deliberate change (MIG instances re-take their share of
the host link when another goes idle or wakes). Rerun only after such a deliberate change of a policy's or
cost model's mechanics, from the engine before your change, and say so in the commit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moesim.workloads.request import Request

GOLDEN_DIR = Path(__file__).resolve().parent / "data" / "fleet_golden"
POLICIES = ("dedicated", "mig", "multiplex", "naive", "reconfig", "reconfig_fast", "swap")
# legacy requests.parquet columns (what the single-GPU run wrote before the fleet)
LEGACY_COLUMNS = ["request_id", "tenant", "instance", "arrival_s", "start_s", "first_token_s", "finish_s",
                  "prompt_tokens", "output_tokens", "swap_wait_s"]


def workloads() -> dict[str, tuple[list[Request], int]]:
    """Small workloads built directly (independent of the workload generators): name → (requests, tenants)."""
    rng = np.random.default_rng(7)
    t = np.cumsum(rng.exponential(1.0 / 0.4, size=60))
    steady = [Request(i, i % 3, float(t[i]), 64, 32) for i in range(60)]
    rng = np.random.default_rng(11)
    gaps = rng.gamma(0.25, 1.0 / (0.25 * 1.5), size=80)
    t = np.cumsum(gaps)
    tenants = rng.choice(4, size=80, p=[0.55, 0.25, 0.15, 0.05])
    prompts = rng.integers(8, 900, size=80)
    outputs = rng.integers(1, 200, size=80)
    bursty = [Request(i, int(tenants[i]), float(t[i]), int(prompts[i]), int(outputs[i])) for i in range(80)]
    return {"steady3": (steady, 3), "bursty4": (bursty, 4)}


def policy_params(policy: str) -> dict[str, object]:
    """Batching on for every policy that batches, so both code paths (batch 1 and continuous) are covered."""
    return {} if policy in ("reconfig", "mig", "naive", "swap") else {"max_batch": 8}


def main() -> None:
    from moesim.cost import COST_MODELS
    from moesim.engine import simulate
    from moesim.io import write_parquet
    from moesim.policies import POLICIES as REG
    from moesim.specs import get_gpu, get_model

    model, gpu = get_model("mixtral-8x7b"), get_gpu("h200")
    for wname, (reqs, n_t) in workloads().items():
        for pol in POLICIES:
            cost = COST_MODELS.build("roofline", {}, model=model, gpu=gpu)
            res = simulate(model, gpu, REG.build(pol, policy_params(pol)), cost, reqs, n_tenants=n_t)
            write_parquet(GOLDEN_DIR / f"{wname}__{pol}.parquet", res.requests[LEGACY_COLUMNS])
            print(wname, pol, len(res.requests), float(res.requests.finish_s.max()))


if __name__ == "__main__":
    main()
