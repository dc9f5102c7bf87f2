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

from moesim.engine.simulation import GPUSetup, SimResult, simulate_fleet
from moesim.fleet.load import PlacementProblem, TenantLoad
from moesim.fleet.options import FLEETS
from moesim.fleet.placement import GPUPlacement, Placement, load_placement, save_placement
from moesim.fleet.routers import ROUTERS, Router
from moesim.fleet.run import plan_placement, run_fleet
from moesim.fleet.spec import FleetGPU, FleetSpec, GPUGroup, load_fleet
from moesim.fleet.strategies import PLACEMENTS
from moesim.policies.view import FleetView

__all__ = [
    "FLEETS", "PLACEMENTS", "ROUTERS", "FleetGPU", "FleetSpec", "FleetView", "GPUGroup", "GPUPlacement",
    "GPUSetup", "Placement", "PlacementProblem", "Router", "SimResult", "TenantLoad", "load_fleet",
    "load_placement", "plan_placement", "run_fleet", "save_placement", "simulate_fleet",
]
