"""Fleet speed benchmark: ``python -m moesim.fleet.bench``.

``variants=`` variants of Mixtral-8x7B on ``gpus=`` H200s, ``requests=`` requests shaped like the Azure
LLM 2023 conversation trace: the trace tiled end to end (its burstiness and its joint prompt/output lengths
kept), time compressed to ``load=`` of the fleet's estimated capacity, tenants drawn by Zipf popularity
(``zipf=``). Placement by ``placement=`` (estimated from the expected load), live routing by ``router=``.
Runs on one core and prints the placement time, the simulation's wall and CPU time,
``simulated_requests_per_cpu_s`` (requests per CPU second of the simulation: the per-core speed, unaffected
by other processes sharing the core), ``simulated_requests_per_s`` (per wall-clock second; workload
generation and placement excluded) and the process's peak resident memory.
"""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass

import numpy as np

from moesim.cli import parse_key_values
from moesim.errors import UserError, exit_on_user_error
from moesim.fleet import ROUTERS, FleetSpec, TenantLoad, plan_placement, run_fleet
from moesim.specs import get_model
from moesim.workloads.request import Request
from moesim.workloads.tenants import zipf_weights


def azure_shaped(n: int, tenants: int, rate_per_s: float, zipf_s: float, seed: int = 0) -> list[Request]:
    """``n`` requests: the Azure conversation trace tiled and time-scaled to ``rate_per_s`` in total."""
    from moesim.workloads.azure import load_shipped

    tr = load_shipped("azure_conv")
    k = len(tr.arrival_s)
    reps = -(-n // k)
    gap = float(np.mean(np.diff(tr.arrival_s)))
    span = float(tr.arrival_s[-1]) + gap
    arrival = (np.concatenate([tr.arrival_s + i * span for i in range(reps)])[:n]) * (k / span) / rate_per_s
    prompt = np.tile(tr.prompt_tokens, reps)[:n]
    output = np.tile(tr.output_tokens, reps)[:n]
    rng = np.random.default_rng(seed)
    ten = rng.choice(tenants, size=n, p=zipf_weights(tenants, zipf_s))
    return list(map(Request, range(n), ten.tolist(), arrival.tolist(), prompt.tolist(), output.tolist()))


@dataclass(frozen=True)
class FleetBenchConfig:
    """What the fleet benchmark simulates (Mixtral-8x7B variants on H200s).

    Attributes:
        variants: fine-tuned variants (tenants), ≥ 1.
        gpus: H200s in the fleet, ≥ 1.
        requests: requests simulated (Azure-conversation-shaped), ≥ 1.
        policy: sharing policy on each GPU (a policy= option of moesim.simulate).
        placement: placement strategy (which variants on which GPU).
        router: live router (which replica serves an arrival).
        cost: cost model name.
        load: offered load as a share of the fleet's estimated capacity, a finite number > 0.
        zipf: Zipf exponent of the variants' popularity, a finite number ≥ 0 (0 = equal).
    """

    variants: int = 64
    gpus: int = 32
    requests: int = 1_000_000
    policy: str = "multiplex"
    placement: str = "greedy_slo"
    router: str = "least_work"
    cost: str = "roofline"
    load: float = 0.6
    zipf: float = 0.8

    def __post_init__(self) -> None:
        for key in ("variants", "gpus", "requests"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{key}={v!r}: must be an integer ≥ 1")
        if not (math.isfinite(self.load) and self.load > 0):
            raise UserError(f"load={self.load!r}: must be a finite number > 0 (share of the fleet's capacity)")
        if not (math.isfinite(self.zipf) and self.zipf >= 0):
            raise UserError(f"zipf={self.zipf!r}: must be a finite number ≥ 0")


def parse_args(argv: list[str]) -> FleetBenchConfig:
    """``key=value`` words (``--gpus 4`` works too) → the config; ``--help`` prints every key."""
    from moesim.fleet import PLACEMENTS
    from moesim.policies import POLICIES

    return parse_key_values(argv, FleetBenchConfig, prog="python -m moesim.fleet.bench",
                            summary=" ".join(__doc__.split("\n\n")[1].replace("``", "").split()),
                            # what runs with these keys alone: placement=file needs a path and
                            # cost=profile_bucketed a table, which the bench has no key for (and the
                            # executor's cost model is registered only where it is imported)
                            choices={"policy": sorted(POLICIES.names()),
                                     "placement": sorted(set(PLACEMENTS.names()) - {"file"}),
                                     "router": sorted(ROUTERS.names()),
                                     "cost": ("constant", "profile", "profile_mixed", "roofline")},
                            examples=("python -m moesim.fleet.bench gpus=4 variants=8 requests=20000",))


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    import sys

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    model = get_model("mixtral-8x7b")
    fleet = FleetSpec.uniform("h200", args.gpus)
    probe = azure_shaped(20_000, args.variants, 1.0, args.zipf)
    load1 = TenantLoad.of(probe, args.variants, probe[-1].arrival_s)
    t0 = time.perf_counter()
    from moesim.fleet.load import PlacementProblem

    prob = PlacementProblem(model, fleet.gpus(), load1, args.policy, None, args.cost, None)
    per = max(1, -(-args.variants // args.gpus))
    per_gpu = prob.capacity(fleet.gpus()[0], per)
    if not (math.isfinite(per_gpu) and per_gpu > 0):  # was a divide-by-zero warning, then a placement error
        raise UserError(f"variants={args.variants} on gpus={args.gpus}: {per} variants per H200 do not fit with "
                        f"policy={args.policy} (estimated capacity 0 requests/s); use more gpus= or fewer variants=")
    rate = args.load * per_gpu * args.gpus
    reqs = azure_shaped(args.requests, args.variants, rate, args.zipf)
    load = TenantLoad.of(reqs, args.variants, reqs[-1].arrival_s)
    placement = plan_placement(args.placement, None, model, fleet, load, policy=args.policy, policy_cfg=None,
                               cost=args.cost, cost_cfg=None)
    place_s = time.perf_counter() - t0
    t1, c1 = time.perf_counter(), time.process_time()
    res = run_fleet(model, fleet, placement, reqs, policy=args.policy, policy_cfg=None, cost=args.cost,
                    cost_cfg=None, router=ROUTERS.build(args.router))
    wall, cpu = time.perf_counter() - t1, time.process_time() - c1
    df = res.requests
    served = df[df["rejected"] == ""]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    copies = sum(len(p.tenants) for p in placement.gpus)
    print(f"fleet: {args.gpus} x h200, {args.variants} variants ({copies} copies, placement {args.placement}), "
          f"policy {args.policy}, router {args.router}, cost {args.cost}")
    print(f"workload: {len(reqs)} Azure-conversation-shaped requests at {rate:.1f} req/s "
          f"(load {args.load} of the estimated {per_gpu * args.gpus:.1f} req/s), zipf {args.zipf}")
    print(f"served {len(served)}, refused {len(df) - len(served)}, mean turnaround "
          f"{float((served.finish_s - served.arrival_s).mean()):.2f} s, simulated span {res.horizon_s:.0f} s, "
          f"segments {len(res.segments)}")
    print(f"placement_s: {place_s:.2f}")
    print(f"wall_s: {wall:.2f}")
    print(f"cpu_s: {cpu:.2f}")
    print(f"peak_rss_mb: {peak_mb:.0f}")
    print(f"simulated_requests_per_cpu_s: {len(reqs) / cpu:.0f}")
    print(f"simulated_requests_per_s: {len(reqs) / wall:.0f}")


if __name__ == "__main__":
    main()
