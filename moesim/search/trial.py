"""One search trial: a plain simulation job, config dict in → summary dict out.

``run_trial(config)`` is pure and deterministic: the same config gives the same summary (apart from
``wall_s``) in any process, on any Ray worker. The config is a JSON-able dict::

    {"model": "mixtral-8x7b", "gpu": "h200", "count": 3, "strategy": "spread", "policy": "multiplex",
     "policy_params": {"max_batch": 8}, "workload": {"name": "poisson", "rate": 0.2, "tenants": 32, ...},
     "cost": {"name": "best"}, "seeds": [0, 1], "slo_ttft_s": 2.0, "slo_tpot_s": 0.2}

The summary holds the SLO attainment of each seed (the share of requests whose TTFT and TPOT are both within
the targets; a refused request counts as missed), the request and token counts, latency figures and the
placement the fleet ran.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pandas as pd

from moesim.errors import UserError

# the keys of a trial config; anything else is refused (a typo would otherwise be silently ignored)
KEYS = ("model", "gpu", "count", "strategy", "policy", "policy_params", "router", "workload", "cost", "seeds",
        "slo_ttft_s", "slo_tpot_s")
# summary keys that vary between runs of the same config (left out when comparing answers)
NONDETERMINISTIC = ("wall_s", "cpu_s")


def trial_key(config: dict[str, Any]) -> str:
    """A stable text identity of a trial config (dict order does not matter)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def run_trial(config: dict[str, Any]) -> dict[str, Any]:
    """Simulate the fleet ``config`` describes on each of its seeds; the summary (see the module doc).

    A fleet that cannot hold its variants (a policy layout that does not fit, a placement that cannot be
    made) is not an exception: its summary has ``error`` set and attainment 0.
    """
    bad = sorted(set(config) - set(KEYS))
    if bad:
        raise UserError(f"trial config: unknown key(s) {bad}; valid: {', '.join(KEYS)}")
    t0, c0 = time.perf_counter(), time.process_time()
    from moesim.search.fleet_eval import evaluate

    seeds = [int(s) for s in config["seeds"]]
    per_seed: list[float] = []
    frames: list[pd.DataFrame] = []
    n_refused = 0
    tokens = output_tokens = 0.0
    horizon = 0.0
    placement: Any = None
    error = ""
    try:
        for seed in seeds:
            run = evaluate(config, seed)
            placement = run.placement if placement is None else placement
            df = run.requests
            frames.append(df)
            n_refused += run.refused
            horizon = run.horizon_s
            served = df[~df["refused"]]
            tokens += float((served["prompt_tokens"] + served["output_tokens"]).sum()) / max(run.span_s, 1e-12)
            output_tokens += float(served["output_tokens"].sum()) / max(run.span_s, 1e-12)
            per_seed.append(attainment(df, config["slo_ttft_s"], config["slo_tpot_s"]))
    except UserError as exc:
        error = str(exc).splitlines()[0]
        per_seed = [0.0] * len(seeds)
        frames = []
    pooled = pd.concat(frames, ignore_index=True) if frames else None
    ok = pooled[~pooled["refused"]] if pooled is not None else None
    ttft = (ok["first_token_s"] - ok["arrival_s"]).to_numpy(float) if ok is not None else np.array([])
    n_seeds = max(len(seeds), 1)
    return {
        "attainment": per_seed,
        "attainment_min": float(min(per_seed)) if per_seed else 0.0,
        "attainment_mean": float(np.mean(per_seed)) if per_seed else 0.0,
        "n_requests": len(pooled) if pooled is not None else 0,
        "n_refused": int(n_refused),
        "tokens_per_s": tokens / n_seeds,
        "output_tokens_per_s": output_tokens / n_seeds,
        "mean_ttft_s": float(ttft.mean()) if ttft.size else float("nan"),
        "p90_ttft_s": float(np.percentile(ttft, 90)) if ttft.size else float("nan"),
        "horizon_s": horizon,
        "placement": placement,
        "error": error,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
    }


def attainment(requests: pd.DataFrame, slo_ttft_s: float, slo_tpot_s: float) -> float:
    """Share of ``requests`` (columns arrival_s, first_token_s, finish_s, output_tokens, refused) that met
    both SLO targets; refused requests count as missed; 1.0 for no requests."""
    if not len(requests):
        return 1.0
    ttft = requests["first_token_s"] - requests["arrival_s"]
    steps = (requests["output_tokens"] - 1).astype(float)
    tpot = (requests["finish_s"] - requests["first_token_s"]) / steps.where(steps > 0, 1.0)
    tpot_ok = (steps <= 0) | (tpot <= slo_tpot_s)
    met = (~requests["refused"]) & (ttft <= slo_ttft_s) & tpot_ok
    return float(met.mean())
