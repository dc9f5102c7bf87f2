"""Simulator speed benchmark: ``python -m moesim.bench``.

Simulates the Azure LLM 2023 conversation trace (19,366 requests over about an hour) spread round-robin
over 4 tenants of Mixtral-8x7B on an H200 with the paper's ``reconfig`` policy and continuous batching
(max batch 32), on one core, and prints as its last line ``simulated_requests_per_s: <number>``
(requests simulated per wall-clock second, best of ``repeat`` runs; workload generation excluded).
Keys (``python -m moesim.bench --help``): ``policy=``, ``max_batch=``, ``tenants=``, ``gpu=``, ``cost=``,
``workload=``, ``repeat=`` (``--max-batch 32``-style flags work too).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from moesim.cli import parse_key_values
from moesim.cost import COST_MODELS
from moesim.engine import simulate
from moesim.errors import UserError, exit_on_user_error
from moesim.metrics import summarize
from moesim.policies import POLICIES
from moesim.specs import get_gpu, get_model
from moesim.workloads import WORKLOADS

#: what the bench can run with its keys alone: the shipped trace replays (poisson/gamma/trace need other
#: fields, and listing them ended in "unknown field(s) ['assignment']") and the cost models that need no file
BENCH_WORKLOADS = ("azure_code", "azure_conv")
BENCH_COSTS = ("constant", "profile", "profile_mixed", "roofline")


@dataclass(frozen=True)
class BenchConfig:
    """What the benchmark simulates (Mixtral-8x7B).

    Attributes:
        policy: sharing policy (a ``policy=`` option of moesim.simulate).
        max_batch: the policy's continuous-batching limit (requests per step, ≥ 1).
        tenants: tenants the trace's requests are spread over, round-robin (≥ 1).
        gpu: GPU spec name.
        cost: cost model name (``roofline``, ``profile`` (a shipped profile of gpu × mixtral-8x7b),
            ``profile_mixed``, ``constant``).
        workload: a shipped trace replay (``azure_conv``, ``azure_code``).
        repeat: timed runs; the best is reported (≥ 1).
    """

    policy: str = "reconfig"
    max_batch: int = 32
    tenants: int = 4
    gpu: str = "h200"
    cost: str = "roofline"
    workload: str = "azure_conv"
    repeat: int = 3

    def __post_init__(self) -> None:
        for key in ("max_batch", "tenants", "repeat"):
            if getattr(self, key) < 1:
                raise UserError(f"{key}={getattr(self, key)}: must be ≥ 1")


def parse_args(argv: list[str]) -> BenchConfig:
    """The command line as a config (one ``UserError`` line on a bad key or value; ``--help`` exits)."""
    from moesim.specs import GPU_SPECS

    return parse_key_values(argv, BenchConfig, prog="python -m moesim.bench", summary=__doc__.split("\n\n")[1],
                            choices={"policy": sorted(POLICIES.names()), "gpu": sorted(GPU_SPECS),
                                     "cost": BENCH_COSTS, "workload": BENCH_WORKLOADS},
                            examples=("python -m moesim.bench repeat=1 policy=multiplex",))


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    model, gpu = get_model("mixtral-8x7b"), get_gpu(args.gpu)
    reqs = WORKLOADS.build(args.workload, {"tenants": args.tenants, "assignment": "round_robin"}).generate(0)
    best = float("inf")
    res = None
    for _ in range(args.repeat):
        cost = COST_MODELS.build(args.cost, {}, model=model, gpu=gpu)
        pol = POLICIES.build(args.policy, {"max_batch": args.max_batch})
        t0 = time.perf_counter()
        res = simulate(model, gpu, pol, cost, reqs, n_tenants=args.tenants)
        best = min(best, time.perf_counter() - t0)
    assert res is not None
    s = summarize(res.requests, res.segments)
    print(f"workload: {args.workload} ({len(reqs)} requests, {args.tenants} tenants), policy: {args.policy} "
          f"(max_batch {args.max_batch}), gpu: {gpu.name}, cost: {args.cost}")
    print(f"timeline segments: {len(res.segments)}, swaps: {res.swap_count}, "
          f"mean turnaround: {s['mean_turnaround_s']:.1f} s, simulated span: {s['span_s']:.0f} s")
    print(f"wall_s (best of {args.repeat}): {best:.3f}")
    print(f"simulated_requests_per_s: {len(reqs) / best:.0f}")


if __name__ == "__main__":
    main()
