"""The runtime validation matrix: every policy × three workloads, one device call (``python -m moesim.serve`` runs).

Run from the repository root on the GPU machine::

    PACK=$OUT python3 reports/validation/realtime/matrix.py OUTDIR [run,run,...]

``PACK``: a folder that gets ``matrix.tar.gz`` (every finished run of the main process so far, rewritten after
each run), ``mig.tar.gz`` and ``rest.tar.gz`` (the same for the runs in processes of their own) and their logs.
``SERVE_SMOKE=1`` runs everything on CPU with the tiny model (the CI path of this script). ``MATRIX_DEADLINE_S``:
the script's own deadline (seconds from its start, default 490); a run whose estimate does not fit before it
is skipped and logged.

What it does (Mixtral-8x7B real shapes, random bf16 weights, 2 tenants per single-GPU run; token pairs of the
conversation trace, prompts ≤ 256, outputs ≤ 8; Poisson arrivals), most valuable first:

* ``link_probe``: whether the two GPUs' host links slow each other (if not, the GPUs work at once below);
* the ``mig`` runs (two slice engines in green contexts of 64 SMs; light, saturated, host) start at once in a
  process of their own on GPU 1, while GPU 0 builds ONE engine (3 non-expert sets, host expert copies pooled:
  ``host_pool``) and serves ``FIRST``: the runs that missed 5% in the last call and ``tables`` (decode steps in
  bucket graphs, prefills eager / exact-shape graph / token-bucket graph, eager steps with a host sync at every
  layer at 1–16 sequences, the parts of a piecewise fetching decode step (``fetch_table.csv``) and prefill
  (``prefill_fetch_table.csv``), the same on a
  64-SM green context (and, last, the piecewise decode step's parts there: ``sm64/fetch_table.csv``), a streamed
  swap beside host-expert fetches);
* ``TWO_GPU`` once GPU 1 is free: ``dedicated`` (GPU g serves tenant g's whole model) and the ``fleet`` (4
  variants over 2 H200s, GPU 0: variants 0,1,2; GPU 1: 1,2,3; multiplex on each; routed live by
  ``least_work``) at light and saturated load and with host experts;
* ``REST`` (the other single-GPU runs: ``naive``, ``swap``, ``reconfig``, ``reconfig_fast``, ``multiplex`` ×
  light / saturated / host), split over both GPUs (every other run in a process of its own on GPU 1);
* ``<host run>-s2``: held-out repeats (``seed=2``) of every host-expert run, last in their phase;
* ``<host run>-s3``: held-out repeats (``seed=3``) for the seventh call (piecewise prefills), first in their phase;
* ``<host run>-long``: held-out runs twice as long (``seed=4``, twice the requests at the same rate), first of all
  in their phase (the eighth call);
* ``<run>-s5`` (the ninth call) and ``<run>-s6`` (the tenth; with the resident light and saturated runs too):
  held-out runs twice as long, seeds 5 and 6; ``fleet_host-s7`` a second fleet run;
* ``<run>-s8`` (the eleventh call): the single-GPU policies, resident and with host experts, with every engine on the
  fused Triton MoE kernel (``MATRIX_MOE_KERNEL=triton``; tables measured on it too); ``<run>-s9`` (the twelfth):
  mig and the 2-GPU fleet on it;
* ``contention`` (two GPUs): synced eager steps on each GPU alone and on both at once from two threads of this
  process (``contention/contention.csv``: the fleet's host contention, measured);
* the calibrator with a consolidation plan only when asked (``calibrate`` in the run list).

Nothing here needs simpy: the simulated side is computed afterwards with ``python -m moesim.serve.validate``.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMON = ["device=cuda", "model=mixtral-8x7b", "gpu=h200", "workload=poisson", "compare=false", "seed=0",
          "max_prompt=256", "max_output=8", "tenants=2"]
# name → (keys, estimated seconds on the H200 including warm-up); order = the order they run in
RUNS: dict[str, tuple[list[str], float]] = {
    "naive_light": (["policy=naive", "budget_bytes=120e9", "rate=0.12", "max_requests=4", "warmup=false"], 22),
    "naive_saturated": (["policy=naive", "budget_bytes=120e9", "rate=4", "max_requests=4", "warmup=false"], 13),
    "naive_host": (["policy=naive", "budget_bytes=85e9", "rate=0.12", "max_requests=4", "warmup=false"], 24),
    "swap_light": (["policy=swap", "rate=0.2", "max_requests=6"], 22),
    "swap_saturated": (["policy=swap", "rate=4", "max_requests=6"], 16),
    "swap_host": (["policy=swap", "budget_bytes=70e9", "rate=0.15", "max_requests=5", "warmup=false"], 22),
    "reconfig_light": (["policy=reconfig", "rate=0.35", "max_requests=8"], 18),
    "reconfig_saturated": (["policy=reconfig", "rate=4", "max_requests=8"], 13),
    "reconfig_host": (["policy=reconfig", "budget_bytes=85e9", "rate=0.3", "max_requests=8", "warmup=false"], 22),
    "reconfig_fast_light": (["policy=reconfig_fast", "max_batch=8", "rate=0.5", "max_requests=8"], 14),
    "reconfig_fast_saturated": (["policy=reconfig_fast", "max_batch=8", "rate=20", "max_requests=16"], 12),
    "reconfig_fast_host": (["policy=reconfig_fast", "max_batch=8", "budget_bytes=85e9", "rate=0.3",
                            "max_requests=8", "warmup=false"], 22),
    "multiplex_light": (["policy=multiplex", "max_batch=16", "rate=0.6", "max_requests=10"], 14),
    "multiplex_saturated": (["policy=multiplex", "max_batch=16", "rate=40", "max_requests=24"], 12),
    "multiplex_host": (["policy=multiplex", "max_batch=16", "budget_bytes=85e9", "rate=0.4", "max_requests=10",
                        "warmup=false"], 20),
    # decode and prefill steps timed on the runtime's engine (all experts resident): 78 s in the sixth call
    # (h200_split), + ~23 s for prefill_fetch_table (10 rows × 4 × ~0.43 s, 25 prefix captures; not yet measured)
    "tables": ([], 100),
    "fleet": (["policy=multiplex", "max_batch=16", "tenants=4", "gpus=2", "placement=0,1,2;1,2,3",
               "router=least_work", "rate=0.6", "max_requests=24"], 30),
    "fleet_saturated": (["policy=multiplex", "max_batch=16", "tenants=4", "gpus=2", "placement=0,1,2;1,2,3",
                         "router=least_work", "rate=10", "max_requests=32"], 20),
    "fleet_host": (["policy=multiplex", "max_batch=16", "tenants=4", "gpus=2", "placement=0,1,2;1,2,3",
                    "router=least_work", "budget_bytes=95e9", "rate=0.4", "max_requests=16", "warmup=false"], 25),
    "dedicated_light": (["policy=dedicated", "gpus=2", "max_batch=16", "rate=0.6", "max_requests=10"], 14),
    "dedicated_saturated": (["policy=dedicated", "gpus=2", "max_batch=16", "rate=40", "max_requests=24"], 10),
    "mig_light": (["policy=mig", "rate=0.15", "max_requests=5", "warmup=false"], 22),
    "mig_saturated": (["policy=mig", "rate=4", "max_requests=6", "warmup=false"], 14),
    "mig_host": (["policy=mig", "budget_bytes=50e9", "rate=0.2", "max_requests=5", "warmup=false"], 22),
}


def _longer(name: str, seed: int, *extra: str) -> tuple[list[str], float]:
    """Run ``name`` again with ``seed`` and twice its requests at the same rate (keys ``extra`` added): its keys and
    twice its estimate."""
    keys, est = RUNS[name]
    n = next(int(k.split("=")[1]) for k in keys if k.startswith("max_requests="))
    return [*(k for k in keys if not k.startswith("max_requests=")), f"seed={seed}", f"max_requests={2 * n}",
            *extra], 2 * est


# held-out repeats (another seed: other arrivals and token pairs) of runs that missed 5% in the last call, last in
# their phase: run when time is left
for _name in ("multiplex_saturated", "dedicated_saturated", "mig_saturated", "reconfig_fast_host", "multiplex_host"):
    RUNS[f"{_name}-s1"] = ([*RUNS[_name][0], "seed=1"], RUNS[_name][1])
# held-out repeats (seed 2) of every host-expert run: the fetching decode steps now run piecewise (prefix graph)
HOST_S2 = ("naive_host", "swap_host", "reconfig_host", "reconfig_fast_host", "multiplex_host", "mig_host", "fleet_host")
for _name in HOST_S2:
    RUNS[f"{_name}-s2"] = ([*RUNS[_name][0], "seed=2"], RUNS[_name][1])
    RUNS[f"{_name}-s3"] = ([*RUNS[_name][0], "seed=3"], RUNS[_name][1])
    RUNS[f"{_name}-long"] = _longer(_name, 4)
# the ninth call: held-out runs twice as long with seed 5 (never run before), the host-expert runs and mig at light and
# saturated load (host experts at every load at Mixtral's size: both slices fetch at once)
# the tenth call: held-out runs twice as long with seed 6 (seed 7: a second fleet run), after the ninth call's
# mechanisms were written; every expert resident too (light and saturated load)
RESIDENT = ("swap_light", "swap_saturated", "reconfig_light", "reconfig_saturated", "reconfig_fast_light",
            "reconfig_fast_saturated", "multiplex_light", "multiplex_saturated")
# seed 8: the eleventh call, every single-GPU policy on the fused Triton MoE engine (``MATRIX_MOE_KERNEL=triton``)
SINGLE_HOST = ("naive_host", "swap_host", "reconfig_host", "reconfig_fast_host", "multiplex_host")
for _seed, _names in ((5, (*HOST_S2, "mig_light", "mig_saturated")),
                      (6, (*HOST_S2, "mig_light", "mig_saturated", *RESIDENT)), (7, ("fleet_host",)),
                      (8, (*RESIDENT, *SINGLE_HOST)), (9, ("mig_light", "mig_saturated", "mig_host", "fleet_host", "fleet"))):
    for _name in _names:
        RUNS[f"{_name}-s{_seed}"] = _longer(_name, _seed)
# seeds 10 and 11 (the fourteenth call): mig with the runtime's timeline (``timeline=true``: each step, routing read
# and expert copy of both slices on one clock), held out; ``-sw``: the same runs with the interpreter's thread switch
# interval at 0.1 ms (``MATRIX_SWITCH_S``, set by the process that runs them) instead of Python's 5 ms
for _seed, _names in ((10, ("mig_saturated", "mig_host", "mig_light")), (11, ("mig_saturated", "mig_host"))):
    for _name in _names:
        RUNS[f"{_name}-s{_seed}"] = _longer(_name, _seed, "timeline=true")
for _name in ("mig_saturated-s10", "mig_saturated-s11"):
    RUNS[f"{_name}-sw"] = RUNS[_name]
# (the sixteenth call: seed 14 of mig and the fleet, and the single-GPU seed-12 runs the fifteenth call lost;
# the seventeenth: seed 15 of all of them, the tables' link rate measured before the mig process started; the
# eighteenth: seeds 16 and 17, the same)
# the fifteenth call, after the routing read went through a pinned buffer (``HostReader``): the fourteenth call's
# saturated mig traces again (``-p``, same seeds: before and after on identical traces), and held-out seeds 12 and 13
# of mig, the fleet with host experts and the single-GPU host-expert runs, all with the timeline
for _name in ("mig_saturated-s10", "mig_saturated-s11"):
    RUNS[f"{_name}-p"] = RUNS[_name]
for _seed, _names in ((12, ("mig_saturated", "mig_host", "mig_light", "fleet_host", *SINGLE_HOST)),
                      (13, ("mig_saturated",)), (14, ("mig_saturated", "mig_host", "mig_light", "fleet_host")),
                      (15, ("mig_saturated", "mig_host", "mig_light", "fleet_host", *SINGLE_HOST)),
                      (16, ("mig_saturated", "mig_host", "mig_light", "fleet_host", *SINGLE_HOST)),
                      (17, ("mig_saturated", "fleet_host"))):
    for _name in _names:
        RUNS[f"{_name}-s{_seed}"] = _longer(_name, _seed, "timeline=true")
# the nineteenth call: the seventeenth call's fleet and multiplex host-expert traces again (``-w``), the staging
# buffers now allocated before the run (``Fetcher.reserve``): before and after on identical traces
for _name in ("fleet_host-s15", "multiplex_host-s15"):
    RUNS[f"{_name}-w"] = RUNS[_name]
# two GPUs' host threads running synced eager steps alone and at once (the fleet's host contention)
RUNS["contention"] = ([], 40)
SMOKE_KEYS = {"naive": ["budget_bytes=0"], "swap": ["budget_bytes=0"]}
DEADLINE_S = float(os.environ.get("MATRIX_DEADLINE_S", "490"))
#: the experts' kernel of every engine of the call (``grouped``: torch._grouped_mm; ``triton``: the fused MoE kernel)
MOE_KERNEL = os.environ.get("MATRIX_MOE_KERNEL", "grouped")
# the order of the call, most valuable first (the runs that missed 5% or never ran): FIRST on GPU 0 while the mig
# runs go on GPU 1 in a process of their own (MIG), then TWO_GPU (both GPUs), then the rest on GPU 0
FIRST = ["multiplex_saturated", "tables", "multiplex_host", "reconfig_fast_host", "naive_saturated"]
TWO_GPU = ["fleet_host-s15-w", "fleet_host-s16", "fleet_host-s17", "fleet_host-s15", "contention", "fleet_host-s14", "fleet_host-s12", "fleet_host-s9", "fleet-s9", "fleet_host-s6", "fleet_host-s7", "fleet_host-s5", "dedicated_saturated", "fleet_saturated", "fleet_host", "dedicated_light", "fleet", "dedicated_saturated-s1",
           "fleet_host-s2", "fleet_host-s3", "fleet_host-long"]
MIG = ["mig_saturated-s16", "mig_host-s16", "mig_light-s16", "mig_saturated-s17", "mig_saturated-s15", "mig_host-s15", "mig_light-s15", "mig_saturated-s14", "mig_host-s14", "mig_light-s14", "mig_saturated-s10-p", "mig_saturated-s11-p", "mig_saturated-s12", "mig_host-s12", "mig_saturated-s13",
       "mig_light-s12", "mig_saturated-s10", "mig_saturated-s11", "mig_host-s10", "mig_host-s11", "mig_light-s10",
       "mig_saturated-s10-sw", "mig_saturated-s11-sw", "mig_host-s9", "mig_saturated-s9", "mig_light-s9", "mig_host-s6", "mig_saturated-s6", "mig_light-s6", "mig_host-s5", "mig_saturated-s5", "mig_light-s5", "mig_host-long", "mig_host-s3", "mig_light", "mig_saturated", "mig_host", "mig_saturated-s1", "mig_host-s2"]
# the held-out host-expert repeats first of the rest (-s3: the seventh call; -s2: the sixth), then naive_light
# (naive has host experts at every load), then the earlier runs
REST = ["multiplex_host-s15-w", *(f"{n}-s16" for n in SINGLE_HOST), *(f"{n}-s15" for n in SINGLE_HOST), *(f"{n}-s12" for n in SINGLE_HOST), *(f"{n}-s8" for n in (*SINGLE_HOST, *RESIDENT)), "naive_host-s6", "swap_host-s6", "reconfig_host-s6", "reconfig_fast_host-s6", "multiplex_host-s6",
        *(f"{n}-s6" for n in RESIDENT), "naive_host-s5", "swap_host-s5", "reconfig_host-s5", "reconfig_fast_host-s5", "multiplex_host-s5",
        "naive_host-long", "swap_host-long", "reconfig_host-long", "reconfig_fast_host-long", "multiplex_host-long",
        "naive_host-s3", "swap_host-s3", "reconfig_host-s3", "reconfig_fast_host-s3", "multiplex_host-s3",
        "naive_light", "naive_host-s2", "swap_host-s2", "reconfig_host-s2", "reconfig_fast_host-s2", "multiplex_host-s2",
        "reconfig_fast_light", "reconfig_fast_saturated", "multiplex_light", "reconfig_light", "reconfig_saturated",
        "reconfig_host", "swap_saturated", "swap_host", "swap_light", "naive_host",
        "multiplex_saturated-s1", "reconfig_fast_host-s1", "multiplex_host-s1"]
CAL_BUDGET_S = 150.0


#: Objects kept alive until ``os._exit`` (the mig slice engines: their tensors outlive their green contexts, and
#: freeing them when ``main`` returns aborted the process after every output was written, fourth call).
_KEEP: list = []


def _smoke() -> bool:
    return bool(os.environ.get("SERVE_SMOKE"))


def run_keys(name: str) -> list[str]:
    """The ``python -m moesim.serve`` keys of run ``name`` (CPU/tiny variants with ``SERVE_SMOKE``)."""
    keys = list(RUNS[name][0])
    common = [*COMMON, f"moe_kernel={MOE_KERNEL}"] if MOE_KERNEL != "grouped" and not _smoke() else list(COMMON)
    if _smoke():
        common[:2] = ["device=cpu", "model=tiny"]
        keys = [k for k in keys if not k.startswith(("budget_bytes", "max_requests", "rate"))]
        tiny_budget = {"naive_host": "budget_bytes=4e5", "swap_host": "budget_bytes=2.5e5", "fleet_host": "budget_bytes=6e5",
                       "reconfig_host": "budget_bytes=6e5", "reconfig_fast_host": "budget_bytes=6e5",
                       "multiplex_host": "budget_bytes=6e5", "mig_host": "budget_bytes=2.5e5"}
        keys += ["max_requests=6", "rate=3" if "saturated" in name else "rate=1"]
        if name.split("-")[0] in tiny_budget:
            keys.append(tiny_budget[name.split("-")[0]])
    merged: dict[str, str] = {}
    for k in common + keys:
        merged[k.split("=", 1)[0]] = k
    return list(merged.values())


def calibrate_command(out: Path) -> list[str]:
    """The calibrator with a consolidation plan (CUDA: Mixtral's synthetic plan; smoke: the tiny one)."""
    plan = HERE / ("plan_tiny.json" if _smoke() else "plan_mixtral.json")
    dev, model = ("cpu", "tiny") if _smoke() else ("cuda", "mixtral-8x7b")
    return [sys.executable, "-m", "moesim.calibrate", f"device={dev}", f"model={model}", f"plan={plan}",
            "grid=quick", "slices=false", "tenants=2", f"budget_s={CAL_BUDGET_S:.0f}", f"out={out}"]


def start_calibrator(out: Path, gpu: int | None) -> subprocess.Popen:
    """Start the calibrator in the background (on CUDA device ``gpu`` only); its log in ``out/calibrate.log``."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    log = open(out / "calibrate.log", "w")  # noqa: SIM115 (closed by the OS at exit)
    cmd = calibrate_command(out)
    log.write(" ".join(cmd) + "\n")
    log.flush()
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def link_probe(n_gpus: int, nbytes: int = 1 << 30, reps: int = 5) -> dict[str, float]:
    """Pinned host→device copy rate of GPU 0 alone and of GPUs 0 and 1 copying at once (GB/s per GPU, medians):
    whether the two GPUs' host links share an uplink (then the calibrator must not run beside host-link runs)."""
    import statistics

    import torch

    host = [torch.empty(nbytes, dtype=torch.uint8).pin_memory() for _ in range(min(n_gpus, 2))]
    dev = [torch.empty(nbytes, dtype=torch.uint8, device=f"cuda:{g}") for g in range(len(host))]
    streams = [torch.cuda.Stream(device=f"cuda:{g}") for g in range(len(host))]

    def copy(gs: list[int]) -> float:
        for g in gs:
            torch.cuda.synchronize(g)
        t = time.perf_counter()
        for g in gs:
            with torch.cuda.stream(streams[g]):
                dev[g].copy_(host[g], non_blocking=True)
        for g in gs:
            streams[g].synchronize()
        return nbytes / (time.perf_counter() - t) / 1e9

    copy([0])
    out = {"solo_GBps": statistics.median(copy([0]) for _ in range(reps))}
    if len(host) > 1:
        copy([0, 1])
        out["both_GBps_per_gpu"] = statistics.median(copy([0, 1]) for _ in range(reps))
        out["ratio"] = out["both_GBps_per_gpu"] / out["solo_GBps"]
    host.clear()
    dev.clear()
    torch.cuda.empty_cache()
    return out


def pack(out: Path, what: str, names: list[str]) -> None:
    """``$PACK/<what>.tar.gz`` of the folders ``names`` under ``out`` (rewritten: the latest state)."""
    dest = os.environ.get("PACK")
    if not dest:
        return
    tmp = Path(dest, f".{what}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for n in names:
        if Path(out, n).is_dir():
            shutil.copytree(Path(out, n), tmp / n)
        elif Path(out, n).is_file():
            shutil.copy2(Path(out, n), tmp / n)
    shutil.make_archive(str(Path(dest, what)), "gztar", tmp)
    shutil.rmtree(tmp, ignore_errors=True)


def tables(backend, out: Path, model, gpu) -> bool:
    """Steps timed on ``backend`` laid out as multiplex over 3 tenants (every expert resident), as the runtime
    runs them (``TorchBackend``): ``decode_table.csv``, ``prefill_table.csv`` (eager, exact-shape graph, token
    bucket graph), ``sync_table.csv`` (eager steps without/with a host sync per layer, decode at 1, 2, 4, 8, 16
    sequences), ``fetch_table.csv`` (the parts of a piecewise fetching decode step: eager layers with and without
    a host sync, the bucket graph's step, prefix graphs of 8–31 layers; ``TorchBackend.fetch_table``),
    ``prefill_fetch_table.csv`` (the same for a fetching prefill of the token buckets 256–1024 at 1 and 2 tenants:
    eager layers with a host sync, the bucket graph's prefill, prefix graphs; ``prefill_fetch_table``), the same
    sync and eager prefill timings on a 64-SM green context (``sm64/``), a streamed swap
    beside host-expert fetches (``link_share.json``), and the bucket graphs' next tokens against the eager
    engine's (``tables.json``). Each file is written as soon as it is measured."""
    import pandas as pd

    from moesim.policies import POLICIES

    t = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    info: dict = {"model": model.name, "gpu": gpu.name}
    ok = True

    def step(name: str, fn) -> None:
        nonlocal ok
        t1 = time.perf_counter()
        try:
            fn()
            print(f"tables/{name}: {time.perf_counter() - t1:.1f} s", flush=True)
        except Exception:
            traceback.print_exc()
            ok = False
        (out / "tables.json").write_text(json.dumps(info, indent=1, default=str))

    def csv(rows, name: str, sub: str = "") -> None:
        d = out / sub if sub else out
        d.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame(rows)
        df.to_csv(d / name, index=False)
        print(df.to_string(index=False), flush=True)

    plan = POLICIES.build("multiplex", {"max_batch": 16}).layout(model, gpu, 3)[0]
    backend.setup(plan, 3)
    backend.reserve_kv(16 * 460)  # before capturing: a larger cache later would drop the graphs
    backend.prepare(16, 460, prefill_tokens=16 * 256)
    step("decode", lambda: csv(backend.decode_table(), "decode_table.csv"))
    step("prefill", lambda: csv(backend.prefill_table(), "prefill_table.csv"))
    if backend.bucket_prefill:
        step("prefill_check", lambda: info.update(prefill_bucket_check=prefill_check(backend)))
    step("sync", lambda: csv(backend.sync_table(), "sync_table.csv"))
    step("fetch", lambda: csv(backend.fetch_table(reps=11), "fetch_table.csv"))
    step("prefill_fetch", lambda: csv(backend.prefill_fetch_table(), "prefill_fetch_table.csv"))

    def sm64() -> None:
        with backend.slice_context(64):
            csv(backend.sync_table(reps=3), "sync_table.csv", "sm64")
            csv(backend.prefill_table(tokens=(256,), n_seqs=(1, 2), fills=((4, 256),), modes=("eager",)),
                "prefill_table.csv", "sm64")
        info["sm64"] = {"sms": 64}

    step("sm64", sm64)

    def link() -> None:
        if (out / "link_share.json").is_file():  # measured before the other GPU's processes started (``main``)
            info["link_share"] = json.loads((out / "link_share.json").read_text())
            return
        d = backend.link_share()
        info["link_share"] = d
        (out / "link_share.json").write_text(json.dumps(d, indent=1))
        print(json.dumps(d), flush=True)

    step("link_share", link)

    def sm64_fetch() -> None:  # last: it captures prefix graphs in the green context
        with backend.slice_context(64):
            csv(backend.fetch_table(reps=15, decode=((1, 1), (2, 1), (4, 1), (2, 2))), "fetch_table.csv", "sm64")

    step("sm64_fetch", sm64_fetch)
    info["backend"] = backend.describe()
    (out / "tables.json").write_text(json.dumps(info, indent=1, default=str))
    print(f"tables: {'ok' if ok else 'FAILED'} {time.perf_counter() - t:.1f} s", flush=True)
    return ok


def contention(backends: list, out: Path, model, gpu, reps: int = 7) -> bool:
    """Host contention between GPUs driven by one process (the fleet's runtime: one host thread per GPU): eager
    steps with a host sync at every layer (``TorchBackend.sync_table``: one- and two-sequence decode steps and a
    256-token prefill, the host-bound steps of a fetching run without their copies) timed on each GPU alone, then on
    both GPUs at once from two threads of this process. ``contention.csv``: per GPU and batch, the medians alone and
    together (seconds) and their ratio; α of ``moesim.engine.host`` is ratio − 1 (one other GPU busy)."""
    import threading

    import pandas as pd

    from moesim.policies import POLICIES

    t = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    try:
        plan = POLICIES.build("multiplex", {"max_batch": 16}).layout(model, gpu, 3)[0]
        for b in backends:
            b.setup(plan, 3)
            b.reserve_kv(16 * 460)
            b.prepare(16, 460, prefill_tokens=16 * 256)
        decode = ((1, 1), (2, 2))
        alone = [b.sync_table(reps=reps, decode=decode) for b in backends]
        together: list = [None] * len(backends)
        errors: list = []

        def work(i: int) -> None:
            try:
                together[i] = backends[i].sync_table(reps=reps, decode=decode)
            except Exception as e:  # reported after the join
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(backends))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        rows = []
        for g, (a, b) in enumerate(zip(alone, together, strict=True)):
            for ra, rb in zip(a, b, strict=True):
                rows.append({"gpu": g, "batch": ra["batch"], "alone_sync_s": ra["eager_sync_s"],
                             "together_sync_s": rb["eager_sync_s"], "ratio_sync": rb["eager_sync_s"] / ra["eager_sync_s"],
                             "alone_s": ra["eager_s"], "together_s": rb["eager_s"], "ratio": rb["eager_s"] / ra["eager_s"]})
        df = pd.DataFrame(rows)
        df.to_csv(out / "contention.csv", index=False)
        print(df.to_string(index=False), flush=True)
        print(f"contention: ok {time.perf_counter() - t:.1f} s", flush=True)
        return True
    except Exception:
        traceback.print_exc()
        print(f"contention: FAILED {time.perf_counter() - t:.1f} s", flush=True)
        return False


def prefill_check(backend) -> list[dict]:
    """Next tokens of prefills run in their token bucket's graph (padded) against the engine's eager step of
    the same batch and token ids: per batch, how many sequences agree."""
    import torch

    from moesim.cost.base import SeqWork

    rows = []
    pg, x = backend.pg, backend.x
    for batch in [(SeqWork(0, 256, 0),), (SeqWork(0, 100, 0), SeqWork(2, 200, 0)),
                  (SeqWork(1, 256, 0), SeqWork(0, 256, 0), SeqWork(1, 131, 0))]:
        si = x._inputs(batch)
        p = pg.plan(tuple(w.tenant for w in batch), tuple(w.new_tokens for w in batch))
        ids = torch.cat([si.ids.cpu(), torch.zeros(p.bucket - p.tokens, dtype=si.ids.dtype)])
        x._ensure_cache(max(p.bucket, si.meta.kv_tokens))
        pg.capture = True
        graph = pg.run(p, x.cache, x.execution == "graphs", ids=ids)
        got = (pg.graphs[p.bucket].out if graph else pg.last_out)[: p.n_real].clone()
        ref = backend.eng.step(si, x.cache)
        x._sync()
        rows.append({"n_seqs": len(batch), "tokens": p.tokens, "bucket": p.bucket, "graph": graph,
                     "agree": int((got == ref).sum()), "of": len(batch)})
    return rows


#: Run in a process of its own before anything else on the GPU: FlashAttention's varlen forward with empty
#: sequences (the prefill bucket graphs' unused slots) against the same call without them. A failure there
#: (even a sticky CUDA error) cannot reach the matrix, which then keeps the executor's exact-shape prefills.
FLASH_CHECK = """
import torch
torch.manual_seed(0)
H, Hk, d = 32, 8, 128
lens = [100, 37, 0, 0, 19, 0]
cu = torch.tensor([0] + [sum(lens[:i + 1]) for i in range(len(lens))], dtype=torch.int32, device="cuda")
n = int(cu[-1])
q = torch.randn(n, H, d, device="cuda", dtype=torch.bfloat16)
k = torch.randn(n, Hk, d, device="cuda", dtype=torch.bfloat16)
v = torch.randn(n, Hk, d, device="cuda", dtype=torch.bfloat16)
f = torch.ops.aten._flash_attention_forward
out = f(q, k, v, cu, cu, 256, 256, 0.0, True, False, scale=d ** -0.5)[0]
nz = [x for x in lens if x]
cu2 = torch.tensor([0] + [sum(nz[:i + 1]) for i in range(len(nz))], dtype=torch.int32, device="cuda")
ref = f(q, k, v, cu2, cu2, 100, 100, 0.0, True, False, scale=d ** -0.5)[0]
torch.cuda.synchronize()
diff = float((out.float() - ref.float()).abs().max())
ok = bool(torch.isfinite(out).all()) and out.shape == ref.shape and diff <= 2e-2
print(("FLASH_EMPTY_OK" if ok else "FLASH_EMPTY_DIFFERS") + f" max abs diff {diff:.3g}", flush=True)
"""


def flash_check() -> subprocess.Popen | None:
    """Start ``FLASH_CHECK`` (CUDA only); ``flash_ok`` reads its verdict."""
    if _smoke():
        return None
    return subprocess.Popen([sys.executable, "-c", FLASH_CHECK], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def flash_ok(proc: subprocess.Popen | None) -> bool:
    """True when the check printed its OK (or on CPU); its output is logged."""
    if proc is None:
        return True
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        out = "timed out"
    ok = "FLASH_EMPTY_OK" in (out or "")
    print(f"flash check (empty varlen sequences): {'ok' if ok else 'FAILED: ' + (out or '')[-500:]}", flush=True)
    return ok


def spawn(kind: str, out: Path, names: list[str], deadline_s: float, gpu: int | None) -> subprocess.Popen:
    """Runs ``names`` in a process of their own (on CUDA device ``gpu`` only), packing ``$PACK/<kind>.tar.gz``
    with its log ``<kind>.log``."""
    env = dict(os.environ, MATRIX_CHILD=kind, MATRIX_DEADLINE_S=f"{deadline_s:.0f}")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    log = open(out / f"{kind}.log", "w")  # noqa: SIM115 (closed by the OS at exit)
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(out), ",".join(names)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def main(out_s: str, only: list[str] | None = None) -> int:
    from moesim.policies import POLICIES
    from moesim.serve.backend import TorchBackend
    from moesim.serve.config import parse_args
    from moesim.serve.run import build_backends, run
    from moesim.specs import get_gpu, get_model

    out = Path(out_s)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if os.environ.get("MATRIX_SWITCH_S"):  # the interpreter's thread switch interval (Python's default: 5 ms)
        sys.setswitchinterval(float(os.environ["MATRIX_SWITCH_S"]))
        print(f"thread switch interval: {sys.getswitchinterval() * 1e3:g} ms", flush=True)
    smoke = _smoke()
    child = os.environ.get("MATRIX_CHILD", "")
    names = [n for n in RUNS if only is None or n in only]
    device = "cpu" if smoke else "cuda"
    n_gpus = 1
    if not smoke:
        import torch

        n_gpus = torch.cuda.device_count()
    print(f"matrix{' (' + child + ')' if child else ''}: {len(names)} runs, {n_gpus} GPU(s), deadline "
          f"{DEADLINE_S:.0f} s", flush=True)
    checker = flash_check() if not child else None
    pack_name = child or "matrix"
    done: list[str] = [] if child else ["link_probe.json"]
    failed = 0
    cal = None
    want_cal = only is not None and "calibrate" in only
    probe: dict[str, float] = {}
    if not smoke and not child:
        try:
            probe = link_probe(n_gpus)
        except Exception:
            traceback.print_exc()
        print(f"host link probe: {probe}", flush=True)
        (out / "link_probe.json").write_text(json.dumps(probe, indent=1))
    two_links = n_gpus >= 2 and probe.get("ratio", 0.0) >= 0.9
    mig_names = [n for n in MIG if n in names]
    mig_proc = None
    model = get_model("tiny" if smoke else "mixtral-8x7b")
    gpu = get_gpu("h200")
    single = [n for n in FIRST + REST if n in names]
    two = [n for n in TWO_GPU if n in names]
    shared = None
    # prefill bucket graphs only where FlashAttention takes empty sequences (a child: the parent checked)
    buckets = os.environ.get("MATRIX_PREFILL_BUCKETS") != "0" if child else flash_ok(checker)
    os.environ["MATRIX_PREFILL_BUCKETS"] = "1" if buckets else "0"
    if single or two:
        shared = TorchBackend(model, gpu, device=device, n_tenants=3, max_batch=16, host_pool=8,
                              moe_kernel=MOE_KERNEL if not smoke else "grouped")
        shared.bucket_prefill = buckets
        print(f"engine built in {time.perf_counter() - t0:.1f} s (prefill buckets: {buckets})", flush=True)
    if "tables" in names and shared is not None and mig_names and not child:
        # the tables' link rate, measured before the other GPU's processes copy too (the sixteenth call measured
        # it beside the mig process's fetches: 51.0 GB/s against 55.0 alone, ``link_probe``)
        (out / "tables").mkdir(parents=True, exist_ok=True)
        d = shared.link_share()
        (out / "tables" / "link_share.json").write_text(json.dumps(d, indent=1))
        print(f"link share (before the other processes): {json.dumps(d)}", flush=True)
    if mig_names and not child and (two_links or smoke):
        # the mig slices on the last GPU, beside the single-GPU runs (the GPUs' host links do not slow each
        # other: ``link_probe``); GPU 1 is then free for the two-GPU runs
        mig_proc = spawn("mig", out, mig_names, DEADLINE_S - 20 - (time.perf_counter() - t0),
                             None if smoke else n_gpus - 1)
        print(f"mig: started on GPU {n_gpus - 1} in process {mig_proc.pid}", flush=True)
        mig_names = []

    def wait_child(proc: subprocess.Popen | None, kind: str, limit_s: float) -> None:
        nonlocal failed
        if proc is None:
            return
        try:
            proc.wait(timeout=max(1.0, limit_s))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print(f"{kind} process: killed (time)", flush=True)
        print(f"{kind} process: exit {proc.returncode} (total {time.perf_counter() - t0:.1f} s)", flush=True)
        failed += proc.returncode != 0

    def wait_mig(limit_s: float) -> None:
        nonlocal mig_proc
        wait_child(mig_proc, "mig", limit_s)
        mig_proc = None

    def one(name: str, backend) -> bool:
        t = time.perf_counter()
        args = [*run_keys(name), f"out={out}/{name}"]
        ok = True
        try:
            run(parse_args(args), args, backend=backend)
        except Exception:  # keep the other runs
            ok = False
            traceback.print_exc()
        print(f"{name}: {'ok' if ok else 'FAILED'} {time.perf_counter() - t:.1f} s "
              f"(total {time.perf_counter() - t0:.1f} s)", flush=True)
        done.append(name)
        pack(out, pack_name, done + ([f"{child}.log"] if child else []))
        return ok

    def fits(name: str) -> bool:
        # smoke: every run, unless a deadline was given (then the estimates are CPU seconds: a tenth)
        est = RUNS[name][1] / (10 if smoke else 1)
        if (smoke and "MATRIX_DEADLINE_S" not in os.environ) or time.perf_counter() - t0 + est <= DEADLINE_S:
            return True
        print(f"{name}: skipped (time: {time.perf_counter() - t0:.0f} s + estimate {est:.0f} s > "
              f"{DEADLINE_S:.0f} s)", flush=True)
        return False

    for name in [n for n in FIRST if n in names]:
        if not fits(name):
            continue
        if name == "tables":
            failed += not tables(shared, out / "tables", model, gpu)
            done.append("tables")
            pack(out, pack_name, done)
        else:
            failed += not one(name, shared)
    if two and (n_gpus >= 2 or smoke):
        wait_mig(DEADLINE_S - 60 - (time.perf_counter() - t0))  # GPU 1 must be free
        second = TorchBackend(model, gpu, device=device, n_tenants=3, max_batch=16, host_pool=8,
                              gpu_index=None if smoke else 1, moe_kernel=MOE_KERNEL if not smoke else "grouped")
        second.bucket_prefill = buckets
        for name in two:  # fleet: GPU 0 holds variants 0-2, GPU 1 variants 1-3; dedicated: GPU g serves tenant g
            if name == "contention" and fits(name):
                failed += not contention([shared, second], out / "contention", model, gpu)
                done.append("contention")
                pack(out, pack_name, done)
            elif fits(name):
                failed += not one(name, [shared, second])
        del second
        gc.collect()
        if not smoke:
            import torch

            torch.cuda.empty_cache()
    elif two:
        print("fleet, dedicated: skipped (one GPU)", flush=True)
    rest = [n for n in REST if n in names]
    rest_proc = None
    if rest and not child and (two_links or smoke) and len(rest) > 1 and \
            DEADLINE_S - (time.perf_counter() - t0) > min(RUNS[n][1] for n in rest) / (10 if smoke else 1):
        # the rest split over both GPUs: every other run (by estimate) in a process of its own on GPU 1
        wait_mig(DEADLINE_S - 60 - (time.perf_counter() - t0))
        mine, theirs, load = [], [], [0.0, 0.0]
        for n in sorted(rest, key=lambda n: -RUNS[n][1]):
            (mine if load[0] <= load[1] else theirs).append(n)
            load[0 if load[0] <= load[1] else 1] += RUNS[n][1]
        mine = [n for n in rest if n in mine]  # each in the call's order
        theirs = [n for n in rest if n in theirs]
        rest_proc = spawn("rest", out, theirs, DEADLINE_S - 5 - (time.perf_counter() - t0),
                          None if smoke else n_gpus - 1)
        print(f"rest: {', '.join(theirs)} on GPU {n_gpus - 1} in process {rest_proc.pid}", flush=True)
        rest = mine
    for name in rest:
        if fits(name):
            failed += not one(name, shared)
    if shared is not None:
        print(shared.describe(), flush=True)
        del shared
        gc.collect()
        if not smoke:
            import torch

            torch.cuda.empty_cache()
    backends = None
    for name in mig_names:  # one slice engine per slice, built once and reused (a later budget re-lays it out):
        if not fits(name):  # green contexts are never destroyed before the process exits
            continue
        cfg = parse_args([*run_keys(name), f"out={out}/{name}"])
        if backends is None:
            try:
                plans = POLICIES.build(cfg.policy, cfg.policy_params()).layout(model, gpu, cfg.tenants)
                backends = build_backends(cfg, model, gpu, plans, host_pool=8)
            except Exception:
                traceback.print_exc()
                failed += 1
                break
            print(f"mig: {len(backends)} slice engines built, SMs {[b.sms for b in backends]}", flush=True)
            _KEEP.append(backends)  # freed only by os._exit: tensors freed after their green context abort
        failed += not one(name, backends)
    wait_mig(DEADLINE_S + 10 - (time.perf_counter() - t0))
    wait_child(rest_proc, "rest", DEADLINE_S + 10 - (time.perf_counter() - t0))
    if want_cal:
        left = DEADLINE_S - (time.perf_counter() - t0)
        if smoke or left > 60:
            cal = start_calibrator(out / "calibrate", 1 if n_gpus >= 2 else None)
            print(f"calibrator started after the matrix (pid {cal.pid})", flush=True)
            try:
                cal.wait(timeout=max(1.0, DEADLINE_S + 20 - (time.perf_counter() - t0)))
            except subprocess.TimeoutExpired:
                cal.terminate()
                cal.wait()
            print(f"calibrator: exit {cal.returncode}", flush=True)
            failed += cal.returncode != 0
            pack(out, "calibrate", ["calibrate"])
    for kind in ("mig", "rest"):
        if not child and (out / f"{kind}.log").is_file() and os.environ.get("PACK"):
            shutil.copy2(out / f"{kind}.log", Path(os.environ["PACK"], f"{kind}.log"))
    print(f"matrix{' (' + child + ')' if child else ''} done in {time.perf_counter() - t0:.1f} s, {failed} failed",
          flush=True)
    return failed


if __name__ == "__main__":
    code = main(sys.argv[1], sys.argv[2].split(",") if len(sys.argv) > 2 else None)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip teardown: green contexts destroyed before their streams' tensors abort the process
