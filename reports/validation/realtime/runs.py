"""The real-time validation runs on one H200 (one device call): one engine, four served runs.

Run from the repository root on the GPU machine: ``PACK=$OUT python3 reports/validation/realtime/runs.py OUTDIR``
(``PACK``: a folder that gets one ``<run>.tar.gz`` per finished run).
Each run is ``python -m moesim.serve`` with the keys below (``compare=false``: the GPU machine has no simpy; the
simulated side is computed afterwards by ``python -m moesim.serve.validate OUTDIR``). The engine (Mixtral-8x7B
real shapes, random bf16 weights, 4 non-expert sets) is built once and shared by the runs.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

COMMON = ["device=cuda", "model=mixtral-8x7b", "gpu=h200", "workload=poisson", "compare=false", "seed=0"]
RUNS = {
    # all experts resident (256 shared positions), 4 tenants, cross-tenant continuous batching
    "multiplex_light": ["policy=multiplex", "max_batch=16", "tenants=4", "rate=0.23", "max_requests=32",
                        "max_prompt=512", "max_output=24"],
    "multiplex_saturated": ["policy=multiplex", "max_batch=16", "tenants=4", "rate=4", "max_requests=32",
                            "max_prompt=512", "max_output=24"],
    # the paper's system with host-resident experts: 85e9-byte budget -> 223 positions shared on the GPU,
    # 33 per tenant on the host fetched synchronously per use; slow synchronous swaps of non-expert sets
    "reconfig_host_light": ["policy=reconfig", "tenants=2", "budget_bytes=85e9", "rate=0.27", "max_requests=30",
                            "max_prompt=256", "max_output=8", "warmup=false"],
    "reconfig_host_saturated": ["policy=reconfig", "tenants=2", "budget_bytes=85e9", "rate=3", "max_requests=30",
                                "max_prompt=256", "max_output=8", "warmup=false"],
}


def main(out: str) -> int:
    import os

    from moesim.serve.backend import TorchBackend
    from moesim.serve.config import parse_args
    from moesim.serve.run import run
    from moesim.specs import get_gpu, get_model

    smoke = bool(os.environ.get("SERVE_SMOKE"))  # a CPU dry run of this script with the tiny model
    if smoke:
        COMMON[:3] = ["device=cpu", "model=tiny", "gpu=h200"]
        for a in RUNS.values():
            a[:] = [x for x in a if not x.startswith("budget_bytes")] + ["budget_bytes=6e5"] * ("policy=reconfig" in a)
            a.append("max_requests=8")
    t0 = time.perf_counter()
    backend = TorchBackend(get_model("tiny" if smoke else "mixtral-8x7b"), get_gpu("h200"),
                           device="cpu" if smoke else "cuda", n_tenants=4)
    print(f"engine built in {time.perf_counter() - t0:.1f} s", flush=True)
    failed = 0
    only = sys.argv[2].split(",") if len(sys.argv) > 2 else list(RUNS)
    for name in only:
        args = [*COMMON, *RUNS[name], f"out={out}/{name}"]
        t = time.perf_counter()
        try:
            run(parse_args(args), args, backend=backend)
        except Exception:  # keep the other runs
            failed += 1
            traceback.print_exc()
        print(f"{name}: {time.perf_counter() - t:.1f} s (total {time.perf_counter() - t0:.1f} s)", flush=True)
        if os.environ.get("PACK"):  # one archive per run, written as soon as it ends (survives a timeout)
            import shutil

            shutil.make_archive(str(Path(os.environ["PACK"], name)), "gztar", out, name)
    print(backend.describe(), flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
