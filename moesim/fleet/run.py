"""Run a workload on a fleet: build each GPU's policy and cost model, then one SimPy simulation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moesim.engine.instance import Instance
from moesim.engine.simulation import GPUSetup, Router, SimResult, simulate_fleet
from moesim.errors import UserError
from moesim.fleet.load import PlacementProblem, TenantLoad
from moesim.fleet.placement import GPUPlacement, Placement
from moesim.fleet.spec import FleetSpec
from moesim.slo import SLO_TTFT_S
from moesim.specs import ModelSpec
from moesim.workloads.request import Request


def plan_placement(strategy: str, strategy_cfg: Any, model: ModelSpec, fleet: FleetSpec, load: TenantLoad, *,
                   policy: str, policy_cfg: Any, cost: str, cost_cfg: Any, slo_ttft_s: float = SLO_TTFT_S) -> Placement:
    """The placement strategy ``strategy`` (a PLACEMENTS name) chooses for ``load`` on ``fleet``."""
    from moesim.fleet.strategies import PLACEMENTS

    problem = PlacementProblem(model, fleet.gpus(), load, policy, policy_cfg, cost, cost_cfg, slo_ttft_s)
    placement = PLACEMENTS.build(strategy, strategy_cfg).place(problem)
    placement.check(fleet.n_gpus, load.n_tenants)
    return placement


def idle_gpus_note(placement: Placement, n_gpus: int, strategy: str, policy: str,
                   fleet: str = "uniform") -> str | None:
    """One line when ``placement`` leaves some of the fleet's ``n_gpus`` GPUs empty (None otherwise): ``pack``
    fills as few GPUs as memory and load allow, so a light load sat on GPU 0 (split into MIG slices with
    ``policy=mig``) while GPU 1 idled, with nothing said. ``fleet``: the fleet source's name; ``fleet.gpus=N``
    is suggested only where it runs the same placement (a uniform fleet whose GPUs 0..N-1 are the used ones)."""
    used = [p.gpu for p in placement.gpus if p.tenants]
    idle = [g for g in range(n_gpus) if g not in used]
    if not idle or not used:
        return None
    shown = ", ".join(map(str, idle[:8])) + (", …" if len(idle) > 8 else "")
    why = (" (pack fills as few GPUs as memory and load at placement.utilization allow)" if strategy == "pack"
           else "")
    crowded = [p for p in placement.gpus if len(p.tenants) > 1]
    mig = (f"; with policy=mig GPU {crowded[0].gpu}'s {len(crowded[0].tenants)} tenants share it as MIG slices"
           if policy == "mig" and crowded else "")
    # fleet=file has no fleet.gpus, and a placement on GPUs 0 and 2 is not the one fleet.gpus=2 runs
    first = sorted(used) == list(range(len(used)))
    if first and fleet == "uniform":
        fewer = f", fleet.gpus={len(used)} runs the same placement without the idle ones"
    elif first and fleet == "file":
        fewer = f", a fleet file of its first {len(used)} GPUs alone runs the same placement"
    else:
        fewer = ""
    return (f"placement={strategy} uses {len(used)} of the fleet's {n_gpus} GPUs{why} and leaves GPU"
            f"{'s' if len(idle) > 1 else ''} {shown} idle{mig}; placement=per_variant or everywhere spreads the "
            f"tenants over every GPU{fewer}")


def dedicated_fleet_message(n_gpus: int, gpu: int, k: int) -> str:
    """The one line for ``policy=dedicated`` on a fleet whose GPU ``gpu`` holds ``k`` > 1 tenants."""
    return (f"policy=dedicated on a fleet of {n_gpus} GPUs: GPU {gpu} holds {k} tenants and dedicated gives each its "
            f"own whole GPU, so the fleet would simulate more GPUs than its {n_gpus}; use placement=per_variant (one "
            "tenant per GPU), fleet.gpus=1 (dedicated's own GPUs), or another policy")


def dedicated_fleet_error(placement: Placement, n_gpus: int, policy: str) -> None:
    """UserError when ``policy=dedicated`` runs on a fleet GPU that holds several tenants (see the message)."""
    if policy != "dedicated" or n_gpus < 2:
        return
    crowded = next((p for p in placement.gpus if len(p.tenants) > 1 and not p.policy), None)
    if crowded is not None:
        raise UserError(dedicated_fleet_message(n_gpus, crowded.gpu, len(crowded.tenants)))


def unplaced_note(placement: Placement, n_tenants: int) -> str | None:
    """One line when ``placement`` puts some of the ``n_tenants`` tenants on no GPU (their requests are refused),
    else None: a placement file that forgot a tenant ran with every one of its requests refused, said only in
    the count of rejected requests."""
    placed = {t for p in placement.gpus for t in p.tenants}
    missing = [t for t in range(n_tenants) if t not in placed]
    if not missing:
        return None
    shown = ", ".join(map(str, missing[:8])) + (", …" if len(missing) > 8 else "")
    where = f"placement file {placement.source}" if placement.source else f"placement={placement.strategy}"
    return (f"{where} puts tenant{'s' if len(missing) > 1 else ''} {shown} on no GPU: "
            f"{'their' if len(missing) > 1 else 'its'} requests are refused (rejected in summary.json)")


def gpu_policy(placement: Placement, p: GPUPlacement, policy: str, policy_cfg: Any) -> Any:
    """The policy GPU ``p`` of ``placement`` runs: its own (``p.policy``, ``p.policy_params``) or the job's
    ``policy`` (with ``p.policy_params`` over ``policy_cfg``). A bad one in a placement file is one line naming
    the file and the GPU."""
    from moesim.policies import POLICIES

    try:
        if p.policy:
            return POLICIES.build(p.policy, p.policy_params or None)
        if p.policy_params:
            base = {k: v for k, v in vars(policy_cfg).items() if k != "name"} if policy_cfg is not None else {}
            return POLICIES.build(policy, {**base, **dict(p.policy_params)})
        return POLICIES.build(policy, policy_cfg)
    except UserError as e:
        if not placement.source:
            raise
        raise UserError(f"placement file {placement.source}: GPU {p.gpu}: {e}") from None


def run_fleet(model: ModelSpec, fleet: FleetSpec, placement: Placement, requests: Sequence[Request], *,
              policy: str, policy_cfg: Any, cost: str, cost_cfg: Any, router: Router | None = None,
              progress: bool = False, instance_cls: type[Instance] = Instance,
              costs: dict[str, Any] | None = None, host_contention: float = 0.0) -> SimResult:
    """Simulate ``requests`` on ``fleet`` laid out as ``placement``.

    Each placed GPU runs ``policy`` (or the policy its placement entry names) over its tenants, timed by a
    cost model ``cost`` built for its GPU type; ``router`` shares replicated variants' load. Requests of a
    tenant placed nowhere are refused with a reason. Returns the single-GPU tables plus ``gpu`` and
    ``rejected`` columns. ``costs`` (GPU type name → cost model) is filled with the cost models built.
    ``host_contention``: as ``simulate_fleet`` (one host process driving every GPU; 0: none).
    """
    from moesim.cost import COST_MODELS

    placement.check(fleet.n_gpus)
    gpus = fleet.gpus()
    costs = {} if costs is None else costs
    setups = []
    for p in placement.gpus:
        if not p.tenants:
            continue
        fg = gpus[p.gpu]
        pol = gpu_policy(placement, p, policy, policy_cfg)
        c = costs.get(fg.spec.name)
        if c is None:
            c = costs[fg.spec.name] = COST_MODELS.build(cost, cost_cfg, model=model, gpu=fg.spec)
        setups.append(GPUSetup(fg.spec, pol, c, tuple(p.tenants), fg.node, fg.name, fg.index))
    if not setups:
        raise UserError("placement: no GPU holds any variant")
    if router is None and any(len(g) > 1 for g in placement.replicas().values()):
        from moesim.fleet.routers import ROUTERS

        router = ROUTERS.build("least_work")
    return simulate_fleet(model, setups, requests, router=router, node_caps_Bps=fleet.node_caps_Bps(),
                          progress=progress, instance_cls=instance_cls, host_contention=host_contention)
