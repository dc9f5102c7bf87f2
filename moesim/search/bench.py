"""Capacity-search benchmark: ``python -m moesim.search.bench``.

One search over 32 Mixtral-8x7B variants (Poisson arrivals with Azure-conversation token lengths, Zipf
popularity, ``duration`` seconds, two search seeds) across 3 GPU types × 3 placement strategies × 3 policies
× 2 batch limits at two loads, run once per ``workers`` value on a local Ray. Prints, per run: the distinct
fleet configurations simulated, the wall time, the summed CPU time of the trials, the load average of the
machine (other processes share its cores), the trials' summed CPU time per wall second (the cores the search
actually got), and whether every run gave the same answer; writes the figures
as JSON to ``out`` when given.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from moesim.errors import UserError, exit_on_user_error

BASE: dict[str, Any] = {
    "model": "mixtral-8x7b",
    "workload": {"name": "poisson", "rate": 0.5, "tenants": 32, "duration_s": 60.0, "prompt_tokens": 20,
                 "output_tokens": 25, "popularity": "zipf", "zipf_s": 1.0, "tokens_from": "azure_conv"},
    "cost": {"name": "best"}, "slo_ttft_s": 2.0, "slo_tpot_s": 0.2,
}


def run_once(workers: int, backend: str = "ray", duration_s: float = 60.0) -> dict[str, Any]:
    """One benchmark search with ``workers`` workers; its figures."""
    from moesim.search.backends import make_backend
    from moesim.search.config import SearchConfig
    from moesim.search.driver import Search
    from moesim.search.prices import load_prices

    cfg = SearchConfig(gpus=("a100-80gb", "h100-80gb", "h200"), strategies=("greedy_slo", "pack", "per_variant"),
                       policies=("multiplex", "reconfig", "swap"), max_batch=(8, 32), loads=(1.0, 2.0),
                       max_gpus=64, backend=backend, workers=workers)
    base = {**BASE, "workload": {**BASE["workload"], "duration_s": duration_s}}
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    be = make_backend(backend, workers)
    try:
        res = Search(cfg, base, load_prices(), be).run()
    finally:
        be.close()
    wall = time.perf_counter() - t0
    t = res.trials
    distinct = t.drop_duplicates(["phase", "load", "gpu", "count", "strategy", "policy", "max_batch"])
    a = res.answer
    return {
        "backend": backend, "workers": workers, "variants": 32,
        "fleet_configurations": len(distinct), "trials": len(t), "rounds": res.rounds,
        "wall_s": round(wall, 1), "trial_wall_s_sum": round(float(t["wall_s"].sum()), 1),
        "trial_cpu_s_sum": round(float(t["cpu_s"].sum()), 1),
        # CPU seconds of trials per wall second: how many cores the search kept busy
        "busy_cores": round(float(t["cpu_s"].sum()) / wall, 2),
        "requests_per_trial": int(t["n_requests"].median()),
        "loadavg_1min_start": round(load0, 2), "loadavg_1min_end": round(os.getloadavg()[0], 2),
        "answer": None if a is None else f"{a.count} x {a.arm.label()} at {a.usd_per_hour:.2f}/hour",
    }


BACKENDS = ("ray", "local")


@dataclass(frozen=True)
class SearchBenchConfig:
    """The command line of ``python -m moesim.search.bench``.

    Attributes:
        workers: worker counts (comma list; one search each), each ≥ 1.
        backend: where the trials run: a local Ray, or processes of this machine.
        duration: workload duration (seconds of simulated time), > 0.
        out: write the figures as JSON to this file; empty: print only.
    """

    workers: tuple[int, ...] = (1, 2)
    backend: str = "ray"
    duration: float = 60.0
    out: str = ""


def parse_args(argv: list[str] | None) -> SearchBenchConfig:
    """The command line as a :class:`SearchBenchConfig` (``key=value``; ``--key value`` works too)."""
    import sys

    from moesim.cli import parse_key_values

    cfg = parse_key_values(sys.argv[1:] if argv is None else argv, SearchBenchConfig,
                           prog="python -m moesim.search.bench", summary=__doc__.split("\n\n")[1],
                           choices={"backend": BACKENDS},
                           examples=("python -m moesim.search.bench workers=1,2 out=/tmp/search_bench.json",
                                     "python -m moesim.search.bench backend=local workers=1 duration=30"))
    if not cfg.workers or min(cfg.workers) < 1:
        raise UserError(f"workers={','.join(map(str, cfg.workers))}: give worker counts ≥ 1, e.g. workers=1,2")
    if cfg.duration <= 0:
        raise UserError(f"duration={cfg.duration}: must be > 0 (seconds)")
    return cfg


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Run the benchmark once per worker count and print the figures."""
    args = parse_args(argv)
    rows = []
    for w in args.workers:
        r = run_once(w, args.backend, args.duration)
        rows.append(r)
        print(json.dumps(r), flush=True)
    answers = {r["answer"] for r in rows}
    print(f"same answer for every worker count: {len(answers) == 1}")
    one = min(rows, key=lambda r: r["workers"])
    for r in rows:
        if r is not one:
            print(f"speed-up {one['workers']} → {r['workers']} workers: {one['wall_s'] / r['wall_s']:.2f}x")
    if args.out:
        from moesim.io import write_json

        write_json(args.out, {"runs": rows, "same_answer": len(answers) == 1})


if __name__ == "__main__":
    main()
