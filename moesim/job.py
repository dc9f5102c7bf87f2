"""One simulation job: build the components, run the engine, write the job's outputs atomically.

A job dir ends up holding ``requests.parquet`` (one row per request), ``segments.parquet`` (the timeline),
``instances.json`` (per GPU/MIG instance: shares and memory breakdown, bytes), ``placement.yaml`` (which
GPU of the fleet holds which variants: a file ``placement=file`` reads back) and, written last,
``summary.json`` (the job's identity, parameters and metrics). A job that fails writes ``error.json``
instead of ``summary.json``.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from moesim.config import JobSpec
from moesim.io import write_json, write_parquet

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
ERROR = "error.json"
REQUESTS = "requests.parquet"
SEGMENTS = "segments.parquet"
INSTANCES = "instances.json"
PLACEMENT = "placement.yaml"


def provenance_kind(cost: Any) -> str:
    """``measured`` (a profile calibrated on this GPU × model), ``derived`` (a profile derived from another
    GPU's), ``roofline`` or ``constant`` (analytic models); another cost model's registry name otherwise."""
    kind = getattr(cost, "provenance", "")  # set by profile, roofline (derived when it carries a profile's
    if kind:  # measured efficiencies: moesim.cost.derive) and constant
        return str(kind)
    if hasattr(cost, "path") and hasattr(cost, "derived"):
        return "derived" if cost.derived else "measured"
    return str(getattr(cost, "name", type(cost).__name__))


def cost_provenance(cost: Any) -> dict[str, Any]:
    """Where a cost model's numbers come from: ``cost_provenance`` is measured (a profile measured on this
    GPU for this model), derived (a profile derived for another GPU, or the roofline with the measured
    efficiencies of another model's profile on this GPU), roofline (datasheet ceilings) or constant;
    ``cost_derived`` is True for derived."""
    return {
        "cost_provenance": provenance_kind(cost),
        "cost_derived": bool(getattr(cost, "derived", False)),
        "cost_source": str(getattr(cost, "path", "") or getattr(cost, "source", "") or ""),
    }


def cost_line(cost: Any, model: str, gpu: str, *, fallback: bool = False) -> str:
    """The one console line naming the cost model a run uses and whether it was measured for it.

    ``fallback``: the cost model was picked by ``cost=best`` (no better one shipped for the pair).
    """
    kind = provenance_kind(cost)
    pair = f"{gpu} × {model}"
    if kind == "measured":
        return f"cost: profile {cost.path} (measured on {pair})"
    if kind == "derived" and not hasattr(cost, "path"):  # roofline with another model's measured efficiencies
        return (f"cost: roofline with the measured efficiencies of {Path(str(cost.source)).name} "
                f"(DERIVED; no profile measured on {pair})")
    if kind == "derived":
        src = getattr(cost, "meta", {}).get("derived_from") or "another GPU's profile"
        return f"cost: profile {cost.path} (DERIVED from {src}; not measured on {gpu})"
    if fallback:
        return f"cost: {kind} (no measured profile for {pair})"
    if kind == "constant":
        return f"cost: constant (fixed step times chosen with cost=constant; not measured on {pair})"
    return f"cost: {kind} (analytic, chosen with cost={kind}; not measured on {pair})"


def run(spec: JobSpec, out_dir: str | Path, *, progress: bool = False, overrides: list[str] | None = None,
        extra: dict[str, Any] | None = None, announce: bool = False) -> dict[str, Any]:
    """Simulate ``spec`` and write its outputs into ``out_dir``; the summary written to summary.json.

    ``extra`` items (e.g. the hydra option the cost came from) are added to the summary. The workload's
    one-line account of what it serves (e.g. ``replaying 19,366 of 19,366 requests of F (whole trace)``)
    goes to the job's log and summary.json (``workload_selection``), and to stderr when ``announce``.
    """
    from moesim.fleet import FLEETS, ROUTERS, TenantLoad, plan_placement, run_fleet, save_placement
    from moesim.fleet.run import dedicated_fleet_error, idle_gpus_note, unplaced_note
    from moesim.metrics import summarize
    from moesim.workloads import WORKLOADS

    out = Path(out_dir)
    t0 = time.perf_counter()
    workload = WORKLOADS.build(spec.workload.name, spec.workload)
    requests = workload.generate(spec.seed)
    selection = f"moesim: {workload.selection(len(requests))}"
    log.info("%s", selection)
    if announce:
        print(selection, file=sys.stderr, flush=True)
    fleet_cfg = spec.fleet if spec.fleet is not None else FLEETS.config("uniform")
    # the job's GPUSpec itself, not its name: a user's GPU file may reuse a shipped name (gpu=my-h200.yaml
    # with name: h200), and its figures, not the shipped ones, must be simulated
    fleet = FLEETS.build(fleet_cfg.name, fleet_cfg).spec(spec.gpu)
    load = TenantLoad.of(requests, workload.tenants, workload.horizon_s)
    strategy = spec.placement.name if spec.placement is not None else "everywhere"
    placement = plan_placement(strategy, spec.placement, spec.model, fleet, load, policy=spec.policy.name,
                               policy_cfg=spec.policy, cost=spec.cost.name, cost_cfg=spec.cost,
                               slo_ttft_s=spec.slo_ttft_s)
    dedicated_fleet_error(placement, fleet.n_gpus, spec.policy.name)
    idle = idle_gpus_note(placement, fleet.n_gpus, strategy, spec.policy.name, fleet_cfg.name)
    notes = [n for n in (unplaced_note(placement, workload.tenants), idle) if n]
    for note in notes:
        log.info("%s", note)
        if announce:
            print(f"moesim: warning: {note}", file=sys.stderr, flush=True)
    router = ROUTERS.build(spec.router.name, spec.router) if spec.router is not None else None
    costs: dict[str, Any] = {}
    result = run_fleet(spec.model, fleet, placement, requests, policy=spec.policy.name, policy_cfg=spec.policy,
                       cost=spec.cost.name, cost_cfg=spec.cost, router=router, progress=progress, costs=costs)
    # throughput over [0, max(workload duration, last finish)]: a sparse run is not credited with a few
    # requests over a few seconds, and an overloaded policy is charged the time it takes to drain
    metrics = summarize(result.requests, result.segments, horizon_s=workload.horizon_s,
                        slo_ttft_s=spec.slo_ttft_s, slo_tpot_s=spec.slo_tpot_s, slo_classes=spec.slo_classes)
    wall_s = time.perf_counter() - t0
    names = workload.tenant_names
    if names is not None:  # the trace named its tenants: keep the names beside the ids
        result.requests["tenant_name"] = [names[t] for t in result.requests["tenant"]]
    write_parquet(out / REQUESTS, result.requests)
    write_parquet(out / SEGMENTS, result.segments)
    write_json(out / INSTANCES, result.instances)
    save_placement(placement, out / PLACEMENT)
    summary = {
        "status": "ok",
        **spec.describe(),
        # the GPUs that ran: fleet.gpu=a100-80gb (or a fleet file) replaces the job's gpu=, which summary.json
        # and the report still named
        "gpu": "+".join(dict.fromkeys(g.spec.name for g in fleet.gpus())),
        "rate": workload.rate_per_tenant,  # a replay at its own times: the rate it replays, not the 0 it was given
        "gpus": fleet.n_gpus,
        "config_hash": spec.config_hash(),
        **cost_provenance(costs.get(spec.gpu.name, next(iter(costs.values())))),
        **(extra or {}),
        **metrics,
        "workload_selection": selection.removeprefix("moesim: "),
        **({"placement_note": "; ".join(notes)} if notes else {}),
        "horizon_s": result.horizon_s,
        "wall_s": wall_s,
        "overrides": list(overrides or []),
        "params": spec.params(),
        "policy_info": result.policy,
    }
    write_json(out / SUMMARY, summary)  # last: its presence marks a finished job
    log.info("%s: %d requests in %.2f s wall", out, metrics["n_requests"], wall_s)
    return summary


def record_failure(out_dir: str | Path, exc: BaseException, *, job: dict[str, Any] | None = None,
                   overrides: list[str] | None = None) -> dict[str, Any]:
    """Write error.json for a failed job (message, type, traceback) and return it."""
    record = {
        "status": "failed",
        **(job or {}),
        "error_type": type(exc).__name__,
        "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        "overrides": list(overrides or []),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    write_json(Path(out_dir) / ERROR, record)
    return record
