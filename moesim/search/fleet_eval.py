"""Simulate one fleet of a trial config for one seed.

Interim fleet model (until moesim.fleet lands): the fleet is ``count`` GPUs of one type, each running the
trial's policy over the variants placed on it, with requests pinned to their variant's GPU (a variant with
several replicas has its requests dealt to them round-robin in arrival order). GPUs share nothing, so the
fleet is that many independent single-GPU simulations.

Placement ``spread``: with at least as many GPUs as variants, every variant gets one GPU and the remaining
GPUs go, one at a time, to the variant with the highest expected load per replica; with fewer GPUs, variants
are dealt to the least-loaded GPU in decreasing order of expected load (longest-processing-time first).
Expected load is each variant's tokens (prompt + output) in the first seed's requests.
"""

from __future__ import annotations

import functools
import heapq
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from moesim.errors import UserError
from moesim.workloads.request import Request

STRATEGIES = ("spread",)


@dataclass(frozen=True)
class FleetRun:
    """One seed of one fleet.

    Attributes:
        requests: one row per request: tenant, gpu (index, -1 when refused), arrival_s, first_token_s,
            finish_s, prompt_tokens, output_tokens, refused (bool); times in seconds.
        refused: requests no GPU could take.
        placement: ``[{"gpu": i, "variants": [...]}, ...]``.
        horizon_s: the workload's duration (seconds).
        span_s: ``max(horizon_s, last finish)`` (seconds), the window throughput is measured over.
    """

    requests: pd.DataFrame
    refused: int
    placement: list[dict[str, Any]]
    horizon_s: float
    span_s: float


@functools.lru_cache(maxsize=8)
def _requests(workload_json: str, seed: int) -> tuple[tuple[Request, ...], int, float]:
    from moesim.workloads import WORKLOADS

    params = json.loads(workload_json)
    wl = WORKLOADS.build(params["name"], {k: v for k, v in params.items() if k != "name"})
    return tuple(wl.generate(seed)), wl.tenants, float(wl.horizon_s)


@functools.lru_cache(maxsize=16)
def _cost(model: str, gpu: str, cost_json: str) -> Any:
    from moesim.config import best_cost
    from moesim.cost import COST_MODELS
    from moesim.specs import get_gpu, get_model

    m, g = get_model(model), get_gpu(gpu)
    params = json.loads(cost_json)
    name = params.get("name", "best")
    cfg = best_cost(m, g) if name == "best" else COST_MODELS.config(name, params)
    return COST_MODELS.build(cfg.name, cfg, model=m, gpu=g)


def spread(loads: np.ndarray, count: int) -> list[list[int]]:
    """Variants per GPU (see the module doc); every variant is placed at least once."""
    k = len(loads)
    if count < 1:
        raise UserError(f"count={count}: a fleet needs at least one GPU")
    if count >= k:
        replicas = np.ones(k, dtype=np.int64)
        heap = [(-float(loads[v]), v) for v in range(k)]
        heapq.heapify(heap)
        for _ in range(count - k):
            _, v = heapq.heappop(heap)
            replicas[v] += 1
            heapq.heappush(heap, (-float(loads[v]) / replicas[v], v))
        return [[v] for v in range(k) for _ in range(int(replicas[v]))]
    gpus: list[list[int]] = [[] for _ in range(count)]
    heap2 = [(0.0, g) for g in range(count)]
    for v in sorted(range(k), key=lambda v: (-float(loads[v]), v)):
        total, g = heapq.heappop(heap2)
        gpus[g].append(v)
        heapq.heappush(heap2, (total + float(loads[v]), g))
    return [sorted(vs) for vs in gpus]


def evaluate(config: dict[str, Any], seed: int) -> FleetRun:
    """Run ``config``'s fleet on the workload drawn with ``seed`` (UserError when it cannot be built)."""
    from moesim.engine import simulate
    from moesim.policies import POLICIES
    from moesim.specs import get_gpu, get_model

    if config["strategy"] not in STRATEGIES:
        raise UserError(f"unknown placement strategy {config['strategy']!r}; valid: {', '.join(STRATEGIES)}")
    model, gpu = get_model(config["model"]), get_gpu(config["gpu"])
    wl_json = json.dumps(config["workload"], sort_keys=True)
    requests, n_tenants, horizon = _requests(wl_json, seed)
    first, _, _ = _requests(wl_json, int(config["seeds"][0]))
    loads = np.zeros(n_tenants)
    for r in first:
        loads[r.tenant] += r.prompt_tokens + r.output_tokens
    groups = spread(loads, int(config["count"]))
    cost = _cost(config["model"], config["gpu"], json.dumps(config.get("cost") or {"name": "best"},
                                                            sort_keys=True))
    # requests → GPU: a variant's replicas take its requests in turn
    replicas: dict[int, list[int]] = {}
    for g, vs in enumerate(groups):
        for v in vs:
            replicas.setdefault(v, []).append(g)
    turn = dict.fromkeys(replicas, 0)
    per_gpu: list[list[Request]] = [[] for _ in groups]
    for r in requests:
        gs = replicas[r.tenant]
        per_gpu[gs[turn[r.tenant] % len(gs)]].append(r)
        turn[r.tenant] += 1
    n = len(requests)
    first_s, finish_s = np.full(n, np.nan), np.full(n, np.nan)
    where = np.full(n, -1, dtype=np.int64)
    params = {"max_batch": 1, **(config.get("policy_params") or {})}
    for g, (vs, reqs) in enumerate(zip(groups, per_gpu, strict=True)):
        if not reqs:
            continue
        local = {v: i for i, v in enumerate(vs)}
        sub = [Request(i, local[r.tenant], r.arrival_s, r.prompt_tokens, r.output_tokens)
               for i, r in enumerate(reqs)]
        policy = POLICIES.build(config["policy"], params)
        res = simulate(model, gpu, policy, cost, sub, n_tenants=len(vs))
        ids = np.fromiter((r.id for r in reqs), dtype=np.int64, count=len(reqs))
        first_s[ids] = res.requests["first_token_s"].to_numpy()
        finish_s[ids] = res.requests["finish_s"].to_numpy()
        where[ids] = g
    df = pd.DataFrame({
        "tenant": np.fromiter((r.tenant for r in requests), dtype=np.int64, count=n),
        "gpu": where,
        "arrival_s": np.fromiter((r.arrival_s for r in requests), dtype=float, count=n),
        "first_token_s": first_s,
        "finish_s": finish_s,
        "prompt_tokens": np.fromiter((r.prompt_tokens for r in requests), dtype=np.int64, count=n),
        "output_tokens": np.fromiter((r.output_tokens for r in requests), dtype=np.int64, count=n),
        "refused": where < 0,
    })
    last = float(np.nanmax(finish_s)) if n and not np.isnan(finish_s).all() else 0.0
    placement = [{"gpu": g, "variants": vs} for g, vs in enumerate(groups)]
    return FleetRun(df, int((where < 0).sum()), placement, horizon, max(horizon, last))
