"""The second real-time validation call on one H200: bucketed decode graphs, reconfig_fast, mig executed.

Run from the repository root on the GPU machine:
``PACK=$OUT python3 reports/validation/realtime/runs2.py OUTDIR`` (``PACK``: a folder that gets one
``<run>.tar.gz`` per finished run, written as soon as it ends). ``SERVE_SMOKE=1`` runs it on CPU with the
tiny model. Each run is ``python -m moesim.serve`` with the keys below (``compare=false``: no simpy on the GPU
machine; the simulated side is computed afterwards by ``python -m moesim.serve.validate OUTDIR``).

* ``multiplex_saturated``, ``multiplex_light``: the first call's keys (``runs.py``), now with decode steps in
  CUDA graphs per batch-size bucket captured ahead (one engine, 4 non-expert sets, shared by both runs).
* ``reconfig_fast_host``: streamed swaps (layer by layer under the prefill) and overlapped host-expert fetches
  (85e9-byte budget: 223 positions shared on the GPU, 33 per tenant on the host), same engine.
* ``mig2``: two 3g.71gb slices, tenant i on slice i, each its own engine (196 positions on the GPU, 60 on the
  host), both running concurrently in CUDA green contexts of 64 SMs and sharing the one host link. If that
  run fails, ``mig2_nogreen`` runs the same with streams only (no SM partition).
"""

from __future__ import annotations

import gc
import os
import sys
import time
import traceback
from pathlib import Path

COMMON = ["device=cuda", "model=mixtral-8x7b", "gpu=h200", "workload=poisson", "compare=false", "seed=0"]
RUNS = {
    "multiplex_saturated": ["policy=multiplex", "max_batch=16", "tenants=4", "rate=4", "max_requests=32",
                            "max_prompt=512", "max_output=24"],
    "multiplex_light": ["policy=multiplex", "max_batch=16", "tenants=4", "rate=0.23", "max_requests=32",
                        "max_prompt=512", "max_output=24"],
    "reconfig_fast_host": ["policy=reconfig_fast", "max_batch=8", "tenants=2", "budget_bytes=85e9", "rate=1",
                           "max_requests=30", "max_prompt=256", "max_output=8", "warmup=false"],
    "mig2": ["policy=mig", "tenants=2", "rate=0.6", "max_requests=30", "max_prompt=256", "max_output=8",
             "warmup=false"],
}
DEADLINE_S = 285.0  # the call's budget (the device limit is 330 s); a run is skipped past its estimate
ESTIMATE_S = {"multiplex_saturated": 40, "multiplex_light": 60, "reconfig_fast_host": 50, "mig2": 60}


def main(out: str) -> int:
    from moesim.policies import POLICIES
    from moesim.serve.backend import TorchBackend
    from moesim.serve.config import parse_args
    from moesim.serve.run import build_backends, run
    from moesim.specs import get_gpu, get_model

    smoke = bool(os.environ.get("SERVE_SMOKE"))
    if smoke:
        COMMON[:3] = ["device=cpu", "model=tiny", "gpu=h200"]
        for a in RUNS.values():
            a[:] = [x for x in a if not x.startswith(("budget_bytes", "max_requests"))]
            a += ["max_requests=8"] + ["budget_bytes=6e5"] * ("policy=reconfig_fast" in a)
    t0 = time.perf_counter()
    model = get_model("tiny" if smoke else "mixtral-8x7b")
    gpu = get_gpu("h200")
    device = "cpu" if smoke else "cuda"
    shared = TorchBackend(model, gpu, device=device, n_tenants=4, max_batch=16)
    print(f"engine built in {time.perf_counter() - t0:.1f} s", flush=True)
    failed = 0
    only = sys.argv[2].split(",") if len(sys.argv) > 2 else list(RUNS)

    def one(name: str, args: list[str], backend) -> bool:
        t = time.perf_counter()
        ok = True
        try:
            run(parse_args(args), args, backend=backend)
        except Exception:  # keep the other runs
            ok = False
            traceback.print_exc()
        print(f"{name}: {'ok' if ok else 'FAILED'} {time.perf_counter() - t:.1f} s "
              f"(total {time.perf_counter() - t0:.1f} s)", flush=True)
        if os.environ.get("PACK") and Path(out, name).exists():
            import shutil

            shutil.make_archive(str(Path(os.environ["PACK"], name)), "gztar", out, name)
        return ok

    for name in only:
        if time.perf_counter() - t0 + ESTIMATE_S.get(name, 60) > DEADLINE_S:
            print(f"{name}: skipped (time)", flush=True)
            continue
        args = [*COMMON, *RUNS[name], f"out={out}/{name}"]
        if name != "mig2":
            failed += not one(name, args, shared)
            continue
        # mig: free the shared engine first (two slice engines need ~145 GB)
        if shared is not None:
            print(shared.describe(), flush=True)
            del shared
            shared = None
            gc.collect()
            if not smoke:
                import torch

                torch.cuda.empty_cache()
        cfg = parse_args(args)
        plans = POLICIES.build(cfg.policy, cfg.policy_params()).layout(model, gpu, cfg.tenants)
        backends = build_backends(cfg, model, gpu, plans)
        print(f"mig: {len(backends)} slice engines built, SMs {[b.sms for b in backends]}", flush=True)
        if one(name, args, backends):
            continue
        failed += 1
        if time.perf_counter() - t0 + ESTIMATE_S[name] > DEADLINE_S:
            continue
        for b in backends:  # retry without SM partition (streams only)
            b.sms = 0
        args = [*COMMON, *RUNS[name], f"out={out}/{name}_nogreen"]
        failed += not one(name + "_nogreen", args, backends)
    if shared is not None:
        print(shared.describe(), flush=True)
    return failed


if __name__ == "__main__":
    code = main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip teardown: green contexts destroyed before their streams' tensors abort the process
