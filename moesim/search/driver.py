"""The capacity search: the fewest GPUs per (GPU type, strategy, policy, batch limit), then the cheapest.

Monotonicity: for a fixed arm (GPU type × placement strategy × policy × batch limit) more GPUs never hurt,
so the GPUs an arm needs at a load is found by galloping (1, 2, 4, … GPUs until one is feasible, at most
``max_gpus``) and then bisecting between the last infeasible and the first feasible count: about
2·log2(n) trials instead of n.

The search runs in rounds: each round asks every unfinished (arm, load) for its next count, runs that batch
of independent trials on the backend and feeds the results back. What is asked next depends only on results
already in, never on which trial finished first, so every backend (and any number of workers) gives the
same trials and the same answer.

Margin rule: a trial is feasible when its attainment reaches ``target + margin`` on every search seed. The
cheapest feasible fleet at load 1 is re-simulated on ``verify_seeds`` (fresh seeds) and must reach
``target`` on every one; when it does not, its count is raised by one and the candidates re-ranked, until
one verifies (or none is left).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from moesim.errors import UserError
from moesim.search.backends import Backend
from moesim.search.config import SearchConfig
from moesim.search.prices import PriceTable
from moesim.search.trial import trial_key


@dataclass(frozen=True, order=True)
class Arm:
    """One fleet shape whose GPU count is searched."""

    gpu: str
    strategy: str
    policy: str
    max_batch: int

    def label(self) -> str:
        """``h200 greedy_slo multiplex b8``."""
        return f"{self.gpu} {self.strategy} {self.policy} b{self.max_batch}"


@dataclass
class _Bracket:
    """What is known of one (arm, load): every count ≤ lo is infeasible, hi (when set) is feasible."""

    lo: int = 0
    hi: int | None = None

    def next_count(self, max_gpus: int) -> int | None:
        """The count to try next; None when the search of this (arm, load) is over."""
        if self.hi is None:
            if self.lo >= max_gpus:
                return None  # infeasible up to max_gpus
            return min(max(1, 2 * self.lo), max_gpus)
        if self.hi - self.lo <= 1:
            return None
        return (self.lo + self.hi) // 2


@dataclass(frozen=True)
class Answer:
    """The chosen fleet.

    Attributes:
        arm: its GPU type, strategy, policy and batch limit.
        count: GPUs.
        usd_per_hour: price of the fleet per hour (price table currency).
        usd_per_mtok: price per million tokens served (prompt + output) at the workload's load.
        usd_per_mtok_output: price per million output tokens.
        tokens_per_s: tokens served per second (prompt + output), mean over the verify seeds.
        attainment_search: attainment on each search seed.
        attainment_verify: attainment on each verify seed.
        placement: the placement it ran (GPU → variants).
    """

    arm: Arm
    count: int
    usd_per_hour: float
    usd_per_mtok: float
    usd_per_mtok_output: float
    tokens_per_s: float
    attainment_search: list[float]
    attainment_verify: list[float]
    placement: Any


@dataclass
class SearchResult:
    """Every trial (``trials``, one row each), each (arm, load)'s GPUs needed (``needed``) and the answer
    (None when no fleet up to ``max_gpus`` meets the target)."""

    trials: pd.DataFrame
    needed: pd.DataFrame
    answer: Answer | None
    rounds: int
    config: dict[str, Any] = field(default_factory=dict)


def scale_workload(workload: dict[str, Any], load: float) -> dict[str, Any]:
    """The workload at ``load`` × its rate: ``rate`` multiplied when set (> 0), else ``time_scale`` divided."""
    w = dict(workload)
    if load == 1.0:
        return w
    if float(w.get("rate", 0) or 0) > 0:
        w["rate"] = float(w["rate"]) * load
    elif "time_scale" in w:
        w["time_scale"] = float(w["time_scale"]) / load
    else:
        raise UserError(f"search.loads: workload {w.get('name')!r} has no rate or time_scale to scale")
    return w


def offered_rate(workload: dict[str, Any], seed: int) -> float:
    """Requests per second the workload offers: its configured mean ``rate × tenants`` when it has a rate (the
    report said 4.067 requests/s for rate=0.5 × 8 tenants, one seed's draw), else requests of ``seed`` /
    horizon (a trace at its own times)."""
    import json

    from moesim.search.fleet_eval import _requests

    rate, tenants = float(workload.get("rate", 0) or 0), workload.get("tenants")
    if rate > 0 and isinstance(tenants, int) and tenants > 0:
        return rate * tenants

    reqs, _, horizon = _requests(json.dumps(workload, sort_keys=True), seed)
    return len(reqs) / horizon if horizon > 0 else math.nan


def check_space(cfg: SearchConfig, base: dict[str, Any]) -> None:
    """Every GPU, policy and strategy searched exists, and the cost model builds for every GPU (UserError)."""
    import json

    from moesim.errors import unknown_name
    from moesim.policies import POLICIES
    from moesim.search.fleet_eval import _cost, routers, strategies
    from moesim.specs import GPU_SPECS

    for gpu in cfg.gpus:
        if gpu not in GPU_SPECS:
            raise unknown_name("gpu in search.gpus", gpu, GPU_SPECS)
    for pol in cfg.policies:
        if pol not in POLICIES.names():
            raise unknown_name("policy in search.policies", pol, POLICIES.names())
    for st in cfg.strategies:
        if st not in strategies():
            raise unknown_name("strategy in search.strategies", st, strategies())
    if cfg.router not in routers():
        raise unknown_name("router in search.router", cfg.router, routers())
    for gpu in cfg.gpus:
        _cost(base["model"], gpu, json.dumps(base.get("cost") or {"name": "best"}, sort_keys=True))
    # the workload at every load: a bad trace file (or a cut that keeps nothing) is one line before any trial
    # (it failed every trial, 378 of them, and surfaced only when the report was written)
    from moesim.workloads import WORKLOADS

    for x in sorted({1.0, *cfg.loads}):
        w = scale_workload(base["workload"], x)
        WORKLOADS.build(w["name"], {k: v for k, v in w.items() if k != "name"})


def cost_lines(cfg: SearchConfig, base: dict[str, Any]) -> dict[str, str]:
    """GPU → the line naming the cost model its trials use (measured profile, DERIVED profile or analytic)."""
    import json

    from moesim.job import cost_line
    from moesim.search.fleet_eval import _cost

    cost_json = json.dumps(base.get("cost") or {"name": "best"}, sort_keys=True)
    best = (base.get("cost") or {}).get("name", "best") == "best"
    from pathlib import Path

    here = f"{Path.cwd()}/"  # profile paths relative to where the search runs, as the user typed them
    return {g: cost_line(_cost(base["model"], g, cost_json), base["model"], g, fallback=best)
            .removeprefix("cost: ").replace(here, "") for g in cfg.gpus}


class Search:
    """One capacity search (see the module doc). ``base`` holds the trial keys the search does not vary:
    model, workload, cost, slo_ttft_s, slo_tpot_s, and optionally policy_params."""

    def __init__(self, cfg: SearchConfig, base: dict[str, Any], prices: PriceTable, backend: Backend, *,
                 on_round: Callable[[pd.DataFrame], None] | None = None,
                 progress: Callable[[int], None] | None = None) -> None:
        check_space(cfg, base)
        for gpu in cfg.gpus:
            prices.per_hour(gpu)  # every GPU searched has a price (UserError otherwise)
        self.cfg, self.base, self.prices, self.backend = cfg, base, prices, backend
        self.on_round, self.progress = on_round, progress
        self.arms = [Arm(g, s, p, b) for g, s, p, b in itertools.product(cfg.gpus, cfg.strategies, cfg.policies,
                                                                         cfg.max_batch)]
        self.workloads = {x: scale_workload(base["workload"], x) for x in cfg.all_loads}
        self.rows: list[dict[str, Any]] = []
        self._cache: dict[str, dict[str, Any]] = {}
        self.rounds = 0

    # ---- trials -----------------------------------------------------------------------------------
    def trial_config(self, arm: Arm, count: int, load: float, seeds: tuple[int, ...]) -> dict[str, Any]:
        """The trial config of ``arm`` with ``count`` GPUs at ``load`` on ``seeds``."""
        params = {**(self.base.get("policy_params") or {}), "max_batch": arm.max_batch}
        cfg = {
            "model": self.base["model"], "gpu": arm.gpu, "count": int(count), "strategy": arm.strategy,
            "policy": arm.policy, "policy_params": params, "workload": self.workloads[load],
            "cost": self.base.get("cost") or {"name": "best"}, "seeds": [int(s) for s in seeds],
            "slo_ttft_s": float(self.base["slo_ttft_s"]), "slo_tpot_s": float(self.base["slo_tpot_s"]),
        }
        cfg["router"] = self.cfg.router
        return cfg

    def _run(self, batch: list[tuple[Arm, int, float, str]]) -> list[dict[str, Any]]:
        """Run (arm, count, load, phase) trials (cached by config) as one round; their summaries."""
        self.rounds += 1
        configs = [self.trial_config(a, n, x, self.cfg.verify_seeds if ph == "verify" else self.cfg.seeds)
                   for a, n, x, ph in batch]
        keys = [trial_key(c) for c in configs]
        todo: dict[str, dict[str, Any]] = {}
        for k, c in zip(keys, configs, strict=True):
            if k not in self._cache and k not in todo:
                todo[k] = c
        if todo:
            results = self.backend.map(list(todo.values()), self.progress)
            self._cache.update(zip(todo, results, strict=True))
        out = []
        for (arm, n, load, phase), k in zip(batch, keys, strict=True):
            s = self._cache[k]
            out.append(s)
            self.rows.append(self._row(arm, n, load, phase, s))
        if self.on_round:
            self.on_round(self.trials())
        return out

    def feasible(self, s: dict[str, Any], phase: str) -> bool:
        """The margin rule (module doc)."""
        need = self.cfg.target + (self.cfg.margin if phase == "search" else 0.0)
        return not s["error"] and all(a >= need - 1e-12 for a in s["attainment"])

    def _row(self, arm: Arm, n: int, load: float, phase: str, s: dict[str, Any]) -> dict[str, Any]:
        usd_h = self.prices.per_hour(arm.gpu, n)
        tok = s["tokens_per_s"]
        out_tok = s["output_tokens_per_s"]
        return {
            "trial": len(self.rows), "round": self.rounds, "phase": phase, "load": load,
            "gpu": arm.gpu, "count": n, "strategy": arm.strategy, "policy": arm.policy,
            "max_batch": arm.max_batch,
            "seeds": ";".join(map(str, self.cfg.verify_seeds if phase == "verify" else self.cfg.seeds)),
            "feasible": self.feasible(s, phase), "attainment_min": s["attainment_min"],
            "attainment_mean": s["attainment_mean"], "attainment": ";".join(f"{a:.6f}" for a in s["attainment"]),
            "usd_per_hour": usd_h,
            "usd_per_mtok": usd_h / (tok * 3600) * 1e6 if tok > 0 else math.nan,
            "usd_per_mtok_output": usd_h / (out_tok * 3600) * 1e6 if out_tok > 0 else math.nan,
            "tokens_per_s": tok, "output_tokens_per_s": out_tok, "n_requests": s["n_requests"],
            "n_refused": s["n_refused"], "mean_ttft_s": s["mean_ttft_s"], "p90_ttft_s": s["p90_ttft_s"],
            "error": s["error"], "wall_s": s["wall_s"], "cpu_s": s.get("cpu_s", math.nan),
        }

    def trials(self) -> pd.DataFrame:
        """One row per trial asked for so far (a cached repeat is listed again)."""
        return pd.DataFrame(self.rows)

    # ---- the search -------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        """Search every (arm, load), then pick and verify the cheapest fleet at load 1."""
        brackets = {(a, x): _Bracket() for a in self.arms for x in self.cfg.all_loads}
        while True:
            batch = []
            for (arm, load), br in brackets.items():
                n = br.next_count(self.cfg.max_gpus)
                if n is not None:
                    batch.append((arm, n, load, "search"))
            if not batch:
                break
            for (arm, n, load, _), s in zip(batch, self._run(batch), strict=True):
                br = brackets[(arm, load)]
                if self.feasible(s, "search"):
                    br.hi = n if br.hi is None else min(br.hi, n)
                else:
                    br.lo = max(br.lo, n)
        needed = pd.DataFrame([{**asdict(a), "load": x, "needed": br.hi}
                               for (a, x), br in brackets.items()])
        needed["needed"] = needed["needed"].astype("Int64")
        needed["usd_per_hour"] = [self.prices.per_hour(g, int(n)) if pd.notna(n) else math.nan
                                  for g, n in zip(needed["gpu"], needed["needed"], strict=True)]
        answer = self._verify({a: br.hi for (a, x), br in brackets.items() if x == 1.0 and br.hi is not None})
        return SearchResult(self.trials(), needed, answer, self.rounds,
                            {"search": asdict(self.cfg), **self.base, "cost_models": cost_lines(self.cfg, self.base)})

    def _verify(self, counts: dict[Arm, int]) -> Answer | None:
        """The cheapest candidate that holds on the verify seeds (module doc)."""
        cand = dict(counts)
        while cand:
            arm, n = min(cand.items(), key=lambda kv: (self.prices.per_hour(kv[0].gpu, kv[1]), kv[1], kv[0]))
            batch = [(arm, n, 1.0, "verify")]
            if trial_key(self.trial_config(arm, n, 1.0, self.cfg.seeds)) not in self._cache:
                batch.append((arm, n, 1.0, "search"))  # a raised count: its search seeds too, for the record
            res = self._run(batch)
            s = res[0]
            row = self.rows[-len(batch)]
            if self.feasible(s, "verify"):
                search_s = self._cache[trial_key(self.trial_config(arm, n, 1.0, self.cfg.seeds))]
                return Answer(arm=arm, count=n, usd_per_hour=row["usd_per_hour"],
                              usd_per_mtok=row["usd_per_mtok"], usd_per_mtok_output=row["usd_per_mtok_output"],
                              tokens_per_s=row["tokens_per_s"], attainment_search=list(search_s["attainment"]),
                              attainment_verify=list(s["attainment"]), placement=s["placement"])
            if n + 1 > self.cfg.max_gpus:
                del cand[arm]
            else:
                cand[arm] = n + 1
        return None
