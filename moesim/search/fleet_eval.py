"""Simulate one fleet of a trial config for one seed, through moesim.fleet (one SimPy env, live routing).

The fleet is ``count`` GPUs of one type (``FleetSpec.uniform``), every GPU running the trial's policy over the
variants the placement strategy (a ``moesim.fleet.PLACEMENTS`` name) puts on it; the strategy plans from the
expected load measured on the FIRST search seed's requests (``TenantLoad.of``), so every seed of a trial runs
the same placement. Requests are routed live by the trial's router (default ``least_work``); a request no
GPU can take is refused with a reason and counts as missing the SLO.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from moesim.errors import UserError
from moesim.workloads.request import Request

DEFAULT_ROUTER = "least_work"


@dataclass(frozen=True)
class FleetRun:
    """One seed of one fleet.

    Attributes:
        requests: one row per request: tenant, gpu (fleet index, -1 when refused), arrival_s, first_token_s,
            finish_s, prompt_tokens, output_tokens, refused (bool); times in seconds.
        refused: requests no GPU took.
        placement: ``[{"gpu": i, "tenants": [...]}, ...]`` (the placement file's ``gpus`` list).
        horizon_s: the workload's duration (seconds).
        span_s: ``max(horizon_s, last finish)`` (seconds), the window throughput is measured over.
    """

    requests: pd.DataFrame
    refused: int
    placement: list[dict[str, Any]]
    horizon_s: float
    span_s: float


def strategies() -> list[str]:
    """Placement strategies the search may try: every registered one but ``file`` (a fixed placement)."""
    from moesim.fleet import PLACEMENTS

    return [s for s in PLACEMENTS.names() if s != "file"]


def routers() -> list[str]:
    """Registered routers."""
    from moesim.fleet import ROUTERS

    return ROUTERS.names()


@functools.lru_cache(maxsize=8)
def _requests(workload_json: str, seed: int) -> tuple[tuple[Request, ...], int, float]:
    from moesim.workloads import WORKLOADS

    params = json.loads(workload_json)
    wl = WORKLOADS.build(params["name"], {k: v for k, v in params.items() if k != "name"})
    return tuple(wl.generate(seed)), wl.tenants, float(wl.horizon_s)


def _cost_cfg(model: str, gpu: str, cost_json: str) -> Any:
    """The cost model's config dataclass (``best``: the most faithful one shipped for the pair)."""
    from moesim.config import best_cost
    from moesim.cost import COST_MODELS
    from moesim.specs import get_gpu, get_model

    params = json.loads(cost_json)
    name = params.get("name", "best")
    if name == "best":
        return best_cost(get_model(model), get_gpu(gpu))
    return COST_MODELS.config(name, params)


@functools.lru_cache(maxsize=16)
def _cost(model: str, gpu: str, cost_json: str) -> Any:
    """The cost model built for ``gpu`` (memoised per process: its step-time memos are shared by trials)."""
    from moesim.cost import COST_MODELS
    from moesim.specs import get_gpu, get_model

    cfg = _cost_cfg(model, gpu, cost_json)
    return COST_MODELS.build(cfg.name, cfg, model=get_model(model), gpu=get_gpu(gpu))


def _policy_cfg(config: dict[str, Any]) -> Any:
    from moesim.policies import POLICIES

    return POLICIES.config(config["policy"], {"max_batch": 1, **(config.get("policy_params") or {})})


@functools.lru_cache(maxsize=256)
def _placement(key: str) -> Any:
    """The strategy's placement for a trial config (``key``: its JSON without seeds but the first)."""
    from moesim.fleet import FleetSpec, TenantLoad, plan_placement
    from moesim.specs import get_model

    config = json.loads(key)
    first, n_tenants, horizon = _requests(json.dumps(config["workload"], sort_keys=True), config["seed0"])
    load = TenantLoad.of(first, n_tenants=n_tenants, horizon_s=horizon)
    cost_cfg = _cost_cfg(config["model"], config["gpu"], json.dumps(config.get("cost") or {"name": "best"},
                                                                    sort_keys=True))
    return plan_placement(config["strategy"], None, get_model(config["model"]),
                          FleetSpec.uniform(config["gpu"], count=int(config["count"])), load,
                          policy=config["policy"], policy_cfg=_policy_cfg(config), cost=cost_cfg.name,
                          cost_cfg=cost_cfg, slo_ttft_s=float(config["slo_ttft_s"]))


def placement_of(config: dict[str, Any]) -> Any:
    """The ``moesim.fleet.Placement`` a trial config runs (planned once, on its first seed's load)."""
    if config["strategy"] not in strategies():
        raise UserError(f"unknown placement strategy {config['strategy']!r}; valid: {', '.join(strategies())}")
    key = {k: v for k, v in config.items() if k != "seeds"}
    key["seed0"] = int(config["seeds"][0])
    return _placement(json.dumps(key, sort_keys=True))


def evaluate(config: dict[str, Any], seed: int) -> FleetRun:
    """Run ``config``'s fleet on the workload drawn with ``seed`` (UserError when it cannot be built)."""
    from moesim.fleet import ROUTERS, FleetSpec, run_fleet
    from moesim.specs import get_model

    cost_json = json.dumps(config.get("cost") or {"name": "best"}, sort_keys=True)
    requests, _, horizon = _requests(json.dumps(config["workload"], sort_keys=True), seed)
    placement = placement_of(config)
    cost_cfg = _cost_cfg(config["model"], config["gpu"], cost_json)
    router = ROUTERS.build(config.get("router") or DEFAULT_ROUTER)
    result = run_fleet(get_model(config["model"]), FleetSpec.uniform(config["gpu"], count=int(config["count"])),
                       placement, requests, policy=config["policy"], policy_cfg=_policy_cfg(config),
                       cost=cost_cfg.name, cost_cfg=cost_cfg, router=router,
                       costs={config["gpu"]: _cost(config["model"], config["gpu"], cost_json)})
    r = result.requests
    refused = (r["rejected"].astype(str) != "").to_numpy()
    df = pd.DataFrame({
        "tenant": r["tenant"].to_numpy(), "gpu": r["gpu"].to_numpy(), "arrival_s": r["arrival_s"].to_numpy(),
        "first_token_s": r["first_token_s"].to_numpy(), "finish_s": r["finish_s"].to_numpy(),
        "prompt_tokens": r["prompt_tokens"].to_numpy(), "output_tokens": r["output_tokens"].to_numpy(),
        "refused": refused,
    })
    fin = df["finish_s"].to_numpy(float)
    last = float(np.nanmax(fin)) if len(fin) and not np.isnan(fin).all() else 0.0
    gpus = placement.to_dict()["gpus"]
    return FleetRun(df, int(refused.sum()), gpus, horizon, max(horizon, last))
