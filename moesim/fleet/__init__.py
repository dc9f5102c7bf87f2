"""Fleets: many GPUs serving many fine-tuned variants in one SimPy simulation.

The pieces, each a frozen record or a registry (see docs/fleet.md)::

    FleetSpec (GPU groups: gpu, count, gpus_per_node, node_host_GBps)      moesim.fleet.spec
    Placement (per GPU: tenants, optional policy + params; a YAML/JSON file)  moesim.fleet.placement
    PLACEMENTS: everywhere, file, per_variant, pack, greedy_slo, optimal      moesim.fleet.strategies
    ROUTERS: round_robin, least_work, affinity, power_of_two                  moesim.fleet.routers
    FLEETS: uniform, file (the ``fleet=`` hydra group)                        moesim.fleet.options
    TenantLoad, PlacementProblem (expected load, capacity estimates)         moesim.fleet.load

In Python::

    from moesim.fleet import FleetSpec, TenantLoad, plan_placement, run_fleet, ROUTERS
    fleet = FleetSpec.uniform("h200", count=4)
    load = TenantLoad.of(requests, n_tenants=16, horizon_s=3600)
    placement = plan_placement("greedy_slo", {}, model, fleet, load, policy="multiplex", policy_cfg=None,
                               cost="roofline", cost_cfg=None)
    result = run_fleet(model, fleet, placement, requests, policy="multiplex", policy_cfg=None,
                       cost="roofline", cost_cfg=None, router=ROUTERS.build("least_work"))
    result.requests  # today's columns + gpu (fleet index, −1 refused) + rejected (reason, "" if served)

From the command line (hydra groups ``fleet``, ``placement``, ``router``)::

    python -m moesim.simulate hydra.mode=RUN hydra.run.dir=D fleet.gpus=4 placement=pack router=affinity \
        policy=multiplex workload.tenants=16

A fleet of one GPU with ``placement=everywhere`` (the defaults) is today's single-GPU run, through the same
engine (``moesim.engine.simulate`` is ``simulate_fleet`` with one GPU).
"""

from __future__ import annotations

import importlib
from typing import Any

# names → the module holding them, imported on first use: the routers, placements and specs stay importable
# without simpy (the real-time runtime's fleet runs on machines that have none); the simulation does not
_LAZY = {
    "GPUSetup": "moesim.engine.simulation", "SimResult": "moesim.engine.simulation",
    "simulate_fleet": "moesim.engine.simulation",
    "PlacementProblem": "moesim.fleet.load", "TenantLoad": "moesim.fleet.load",
    "FLEETS": "moesim.fleet.options",
    "GPUPlacement": "moesim.fleet.placement", "Placement": "moesim.fleet.placement",
    "load_placement": "moesim.fleet.placement", "save_placement": "moesim.fleet.placement",
    "ROUTERS": "moesim.fleet.routers", "Router": "moesim.fleet.routers",
    "plan_placement": "moesim.fleet.run", "run_fleet": "moesim.fleet.run",
    "FleetGPU": "moesim.fleet.spec", "FleetSpec": "moesim.fleet.spec", "GPUGroup": "moesim.fleet.spec",
    "load_fleet": "moesim.fleet.spec",
    "PLACEMENTS": "moesim.fleet.strategies",
    "FleetView": "moesim.policies.view",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'moesim.fleet' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


__all__ = [
    "FLEETS", "PLACEMENTS", "ROUTERS", "FleetGPU", "FleetSpec", "FleetView", "GPUGroup", "GPUPlacement",
    "GPUSetup", "Placement", "PlacementProblem", "Router", "SimResult", "TenantLoad", "load_fleet",
    "load_placement", "plan_placement", "run_fleet", "save_placement", "simulate_fleet",
]
