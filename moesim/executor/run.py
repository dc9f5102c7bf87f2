"""One validation run: the same trace and policy simulated (``sim_cost``) and executed for real.

Writes under ``out``: per policy ``<policy>/simulated_requests.parquet``, ``<policy>/executed_requests.parquet``
(same columns as a simulation's ``requests.parquet``), ``<policy>/executed_segments.parquet`` (the executed
timeline) and ``<policy>/per_request_errors.parquet``; then ``validation.csv`` and ``validation.json`` (one row
per policy: run-level figures, their errors, per-request error summaries; the JSON adds the command, the
config and the executor's counters). Both are rewritten after each policy, so a run cut short keeps what
finished.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.cost import COST_MODELS, build_or_auto
from moesim.cost.base import CostModel, ExpertGroup, Residency, SeqWork
from moesim.engine import simulate
from moesim.executor.compare import check_tables, per_request_errors, same_requests, summary
from moesim.executor.config import ExecutorConfig
from moesim.executor.drive import drive
from moesim.io import write_json, write_parquet
from moesim.metrics import seconds_text
from moesim.policies import POLICIES
from moesim.specs import ModelSpec, get_gpu, get_model
from moesim.workloads.capped import capped_requests


def build_sim_cost(cfg: ExecutorConfig, model: ModelSpec, gpu: Any, execution: str) -> tuple[CostModel, str]:
    """The simulated run's cost model and a description of it."""
    c, kind = build_or_auto(cfg.sim_cost, model, gpu, execution)
    return c, (f"profile {getattr(c, 'path', '')} (execution={execution})" if kind == "profile" else kind)


def _warm_up(cost: Any, model: ModelSpec, tenants: int) -> None:
    """A prefill and two decode steps on the whole shared expert set, so lazy initialisation is not timed."""
    res = Residency((ExpertGroup(frozenset(range(tenants)), model.n_expert_positions, True),))
    cost.step((SeqWork(0, 64, 0),), res)
    cost.decode_run((0,), (64,), 2, res)


def run(cfg: ExecutorConfig, argv: list[str] | None = None, log=print) -> dict[str, Any]:
    """Simulate and execute every policy of ``cfg`` on its trace; write the tables; return the summary.

    On CPU, torch runs on one thread for the run (tiny steps are far faster without thread contention).
    """
    import torch

    threads = torch.get_num_threads()
    if cfg.device == "cpu":
        torch.set_num_threads(1)
    try:
        return _run(cfg, argv, log)
    finally:
        torch.set_num_threads(threads)


def device_mismatch(gpu: str, device: str, device_name: str) -> str:
    """A note when the simulated side's GPU (``gpu=``) is not the device that executes; '' when it is.

    The simulated side is costed for ``gpu``; executed on another device (the CPU, or another GPU model), the
    per-request errors measure that difference, not the simulator.
    """
    family = gpu.split("-")[0].lower()  # h200, h100, a100, l40s, b200
    here = "".join(ch for ch in device_name.lower() if ch.isalnum())
    if device == "cpu" or family not in here:
        return (f"simulated with {gpu}'s costs but executed on {device_name or device}: the errors below compare "
                f"two different machines, not the simulator with its GPU")
    return ""


def _run(cfg: ExecutorConfig, argv: list[str] | None, log) -> dict[str, Any]:
    from moesim.executor.gpu_cost import BudgetExceededError, ExecutedCostConfig  # imports torch

    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model, gpu = get_model(cfg.model), get_gpu(cfg.gpu)
    requests = capped_requests(cfg)
    command = "python -m moesim.executor " + " ".join(argv if argv is not None else sys.argv[1:])
    ecfg = ExecutedCostConfig(device=cfg.device, tenants=cfg.tenants, execution=cfg.execution,
                              kv_bucket=cfg.kv_bucket, seed=cfg.seed)
    cost = COST_MODELS.build("executed", ecfg, model=model, gpu=gpu)
    log(f"executor: {model.name} on {cost.describe().get('gpu_name', cfg.device)}, {cost.execution}, "
        f"built in {cost.build_s:.1f} s; {len(requests)} requests", flush=True)
    sim_cost, sim_desc = build_sim_cost(cfg, model, gpu, cost.execution)
    mismatch = device_mismatch(gpu.name, cfg.device, str(cost.describe().get("gpu_name", "")))
    if mismatch:
        log(f"executor: note: {mismatch}", flush=True)
    batches = [b or POLICIES.build(n).cfg.max_batch for n, b in cfg.policy_list()]
    cost.reserve_kv(max(batches) * max(r.prompt_tokens + r.output_tokens for r in requests))
    _warm_up(cost, model, cfg.tenants)
    full = Residency((ExpertGroup(frozenset(range(cfg.tenants)), model.n_expert_positions, True),))
    graph_ok = cost.check_graph_reuse(full, tuple(range(min(2, cfg.tenants))))
    if graph_ok is False:  # never report timings of graphs that compute something else
        log("CUDA-graph replay with new inputs differs from eager: executing eagerly", flush=True)
        cost.execution = "eager"
    if cfg.budget_s:
        cost.set_deadline(t_start + cfg.budget_s)
    rows: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"command": command, "config": dataclasses.asdict(cfg), "sim_cost": sim_desc,
                           "trace": {"n_requests": len(requests),
                                     "prompt_tokens_mean": sum(r.prompt_tokens for r in requests) / len(requests),
                                     "output_tokens_mean": sum(r.output_tokens for r in requests) / len(requests),
                                     "last_arrival_s": max(r.arrival_s for r in requests)},
                           "checks": {"graph_replay_equals_eager": graph_ok}, "policies": rows,
                           "note": mismatch}
    for name, batch in cfg.policy_list():
        params: dict[str, Any] = {}
        if batch is not None:
            params["max_batch"] = batch
        if cfg.budget_bytes:
            params["budget_bytes"] = cfg.budget_bytes
        sim = simulate(model, gpu, POLICIES.build(name, params), sim_cost, requests, n_tenants=cfg.tenants)
        pdir = out / name
        write_parquet(pdir / "simulated_requests.parquet", sim.requests)
        before = dict(cost.stats)
        t0 = time.perf_counter()
        row: dict[str, Any] = {"policy": name, "max_batch": POLICIES.build(name, params).cfg.max_batch}
        try:
            ex = drive(model, gpu, POLICIES.build(name, params), cost, requests, n_tenants=cfg.tenants)
        except BudgetExceededError as exc:
            row.update(status="budget", note=str(exc), exec_wall_s=time.perf_counter() - t0)
            rows.append(row)
            log(f"{name}: stopped, {exc}", flush=True)
            _write(out, doc, rows, cost)
            continue
        wall = time.perf_counter() - t0
        check_tables(ex.requests)
        check_tables(sim.requests)
        if not same_requests(sim.requests, ex.requests):
            raise RuntimeError(f"{name}: simulated and executed tables hold different requests")
        write_parquet(pdir / "executed_requests.parquet", ex.requests)
        write_parquet(pdir / "executed_segments.parquet", ex.segments)
        write_parquet(pdir / "per_request_errors.parquet", per_request_errors(sim.requests, ex.requests))
        delta = {k: cost.stats[k] - before[k] for k in cost.stats}
        row.update(status="ok", exec_wall_s=wall, sim_swap_count=sim.swap_count, exec_swap_count=ex.swap_count,
                   sim_horizon_s=sim.horizon_s, exec_horizon_s=ex.horizon_s, **summary(sim.requests, ex.requests),
                   **{f"exec_{k}": v for k, v in delta.items()})
        rows.append(row)
        log(f"{name} (batch {row['max_batch']}): executed in {wall:.1f} s wall ({delta['steps']} steps, "
            f"{delta['graph_captures']} captures, {delta['eager_steps']} eager); mean turnaround "
            f"sim {seconds_text(row['mean_turnaround_s_simulated'])} vs meas "
            f"{seconds_text(row['mean_turnaround_s_measured'])} "
            f"({row['mean_turnaround_s_error_pct']:+.1f}%); per-request median |err| turnaround "
            f"{row['turnaround_ape_median_pct']:.1f}%, TTFT {row['ttft_ape_median_pct']:.1f}%"
            + (f" (measured on this CPU, simulated on gpu={cfg.gpu}: not comparable)" if cfg.device == "cpu" else ""),
            flush=True)
        _write(out, doc, rows, cost)
    doc["wall_s"] = time.perf_counter() - t_start
    _write(out, doc, rows, cost)
    return doc


def _write(out: Path, doc: dict[str, Any], rows: list[dict[str, Any]], cost: Any) -> None:
    doc["executor"] = cost.describe()
    pd.DataFrame(rows).to_csv(out / "validation.csv", index=False)
    write_json(out / "validation.json", doc)
