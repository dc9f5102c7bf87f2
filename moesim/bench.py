"""Simulator speed benchmark: ``python -m moesim.bench``.

Simulates the Azure LLM 2023 conversation trace (19,366 requests over about an hour) spread round-robin
over 4 tenants of Mixtral-8x7B on an H200 with the paper's ``reconfig`` policy and continuous batching
(max batch 32), on one core, and prints as its last line ``simulated_requests_per_s: <number>``
(requests simulated per wall-clock second, best of ``--repeat`` runs; workload generation excluded).
"""

from __future__ import annotations

import argparse
import os
import time

from moesim.cost import COST_MODELS
from moesim.engine import simulate
from moesim.errors import exit_on_user_error
from moesim.metrics import summarize
from moesim.policies import POLICIES
from moesim.specs import get_gpu, get_model
from moesim.workloads import WORKLOADS


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(prog="python -m moesim.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="reconfig")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--tenants", type=int, default=4)
    ap.add_argument("--gpu", default="h200")
    ap.add_argument("--cost", default="roofline")
    ap.add_argument("--workload", default="azure_conv")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
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
