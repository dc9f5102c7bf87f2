"""One served run end to end: build the trace and the backend, (replay to warm up), serve, write the tables.

Writes under ``out``: ``requests.parquet`` (the simulator's columns), ``segments.parquet`` (the runtime's
timeline), ``summary.json`` (``moesim.metrics.summarize`` of the run, plus the command, the config and the
backend's counters); with ``warmup``, ``replay_requests.parquet`` (the same trace on the virtual clock with
measured step times); with ``compare``, ``simulated_requests.parquet``, ``per_request_errors.parquet`` and the
errors in ``summary.json`` under ``validation``. Torch and simpy are imported only when needed.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.errors import first_line
from moesim.io import write_json, write_parquet
from moesim.policies import POLICIES
from moesim.serve.config import ServeConfig, make_requests, resolve_moe_kernel
from moesim.serve.runtime import CostBackend, ServeResult, SleepingCostBackend, serve
from moesim.specs import get_gpu, get_model


def build_cost(cfg: ServeConfig, model: Any, gpu: Any, execution: str = "graphs",
               options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The cost model named by ``sim_cost`` and a description of it (``options``: more of ``profile_bucketed``'s
    settings, e.g. ``fetch_model``, ``fetch_prefix``)."""
    from moesim.cost import COST_MODELS, build_or_auto

    if cfg.sim_cost == "profile_bucketed":
        opts = dict(options or {})
        c = COST_MODELS.build("profile_bucketed", {"table": cfg.sim_table, "kv_bucket": cfg.kv_bucket, **opts},
                              model=model, gpu=gpu)
        extra = "".join(f", {k}={v}" for k, v in sorted(opts.items()))
        return c, f"profile_bucketed {_rel(c.path)} + decode table {_rel(cfg.sim_table)}{extra}"
    if cfg.sim_cost in ("auto", "profile") and execution == "graphs" \
            and resolve_moe_kernel(cfg.moe_kernel, cfg.device) == "triton":
        # the runtime runs the fused Triton kernel: its own shipped profile where there is one
        from moesim.cost.profile import PROFILES_DIR

        path = PROFILES_DIR / f"{gpu.name}__{model.name}.triton.parquet"
        if path.is_file():
            c = COST_MODELS.build("profile", {"path": str(path), "execution": "graphs"}, model=model, gpu=gpu)
            return c, f"profile {_rel(path)} (execution=graphs, the Triton engine's)"
    c, kind = build_or_auto(cfg.sim_cost, model, gpu, execution)
    if kind == "profile":
        return c, f"profile {_rel(getattr(c, 'path', ''))} (execution={execution})"
    return c, (f"{kind} {_rel(c.path)}" if getattr(c, "path", None) else kind)


def _rel(path: Any) -> str:
    """``path`` relative to the working directory when it lies below it (reports stay machine-independent)."""
    import os

    p = str(path)
    try:
        rel = os.path.relpath(p)
    except ValueError:
        return p
    return p if rel.startswith("..") else rel


def run(cfg: ServeConfig, argv: list[str] | None = None, log=print, backend: Any = None) -> dict[str, Any]:
    """Serve ``cfg``'s trace and write the outputs; returns the summary written to summary.json.

    ``backend``: a ``TorchBackend`` built earlier (several runs in one process share its weights); None builds one.
    """
    t_start = time.perf_counter()
    out = Path(cfg.out)
    model, gpu = get_model(cfg.model), get_gpu(cfg.gpu)
    requests = make_requests(cfg)
    names, selection = _announce_trace(cfg, requests, log)
    last = max(r.arrival_s for r in requests)
    if cfg.trace:  # the config as summary.json keeps it: moesim.serve.validate re-reads the trace from any folder
        cfg_doc = dataclasses.asdict(dataclasses.replace(cfg, trace=str(Path(cfg.trace).expanduser().resolve())))
    else:
        cfg_doc = dataclasses.asdict(cfg)
    command = "python -m moesim.serve " + " ".join(argv if argv is not None else sys.argv[1:])
    params = cfg.policy_params()
    POLICIES.build(cfg.policy, params)  # a bad policy parameter is one line before anything is built
    doc: dict[str, Any] = {"command": command, "config": cfg_doc,
                           "trace": {"n_requests": len(requests),
                                     "prompt_tokens_mean": sum(r.prompt_tokens for r in requests) / len(requests),
                                     "output_tokens_mean": sum(r.output_tokens for r in requests) / len(requests),
                                     "last_arrival_s": max(r.arrival_s for r in requests),
                                     **({"selection": selection} if selection else {})}}
    execution = "graphs"
    threads = None
    if cfg.backend == "torch":
        import torch


        if cfg.device == "cpu":  # tiny steps are far faster on one thread
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
        if backend is None:
            if cfg.is_fleet:
                backend = build_fleet_backends(cfg, model, gpu)
            elif cfg.policy == "dedicated" and cfg.gpus > 1:
                backend = build_dedicated_backends(cfg, model, gpu)
            else:
                plans = POLICIES.build(cfg.policy, params).layout(model, gpu, cfg.tenants)
                backend = build_backends(cfg, model, gpu, plans)
        backends = backend if isinstance(backend, list) else [backend]
        batch = POLICIES.build(cfg.policy, params).cfg.max_batch
        for b in backends:
            b.reset_stats()
            b.reserve_kv(batch * max(r.prompt_tokens + r.output_tokens for r in requests))
        execution = backends[0].x.execution
        log(f"serve: {model.name} on {backends[0].describe().get('gpu_name', cfg.device)} ({execution}), "
            f"{len(backends)} instance(s), built in {sum(b.x.build_s for b in backends):.1f} s; "
            f"{len(requests)} requests, policy {cfg.policy}", flush=True)
    out.mkdir(parents=True, exist_ok=True)  # after the layout and the engine are built: a refusal leaves no folder
    before = {f.name: f.stat().st_mtime_ns for f in out.iterdir() if f.is_file()}  # an earlier run's files
    try:
        if cfg.backend == "torch" and cfg.warmup:
            t0 = time.perf_counter()
            for b in backends:
                b.capture = True  # a shared backend's previous run left it off
            rep = _serve(cfg, model, gpu, backend, requests, "virtual")
            write_parquet(out / "replay_requests.parquet", rep.requests)
            doc["replay"] = {"wall_s": time.perf_counter() - t0, "backend": rep.meta["backend"]}
            for b in backends:
                b.reset_stats()
                b.capture = False  # the timed run replays what the warm-up captured, else runs eagerly
            log(f"warm-up replay (virtual clock, measured steps): {time.perf_counter() - t0:.1f} s", flush=True)
        elif cfg.backend == "torch":
            for b in backends:
                b.capture = True
                b.warm_up()  # lazy initialisation (library handles, streams) outside the timed run
        if cfg.backend == "cost":
            cost, desc = build_cost(cfg, model, gpu)
            n_inst = cfg.gpus if cfg.is_fleet else len(POLICIES.build(cfg.policy, params).layout(model, gpu,
                                                                                                    cfg.tenants))
            backend = [CostBackend(cost) if cfg.clock == "virtual" else SleepingCostBackend(cost)
                       for _ in range(n_inst)]
            backend = backend[0] if n_inst == 1 and not cfg.is_fleet else backend
            doc["backend_cost"] = desc
        if cfg.clock == "wall" and last > WALL_NOTE_S:  # a sparse trace in ms replayed in real time: hours
            # of waiting; said just before the timed run (not ahead of a refusal such as device=cuda without one)
            log(f"serve: the requests arrive over {_duration(last)}: clock=wall replays them in real time, so the "
                f"run takes at least that long; clock=virtual, a higher rate= or a smaller max_requests= shortens it",
                flush=True)
        traced = cfg.timeline and cfg.backend == "torch"
        for b in backends if traced else ():
            b.trace_timeline(True)
        t0 = time.perf_counter()
        res = _serve(cfg, model, gpu, backend, requests, cfg.clock)
        wall = time.perf_counter() - t0
        if traced:
            timeline = _timeline(backends, res.meta.get("wall_t0") or t0, res.instances)
    finally:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
    _check(res)
    if names is not None:  # the trace named its tenants: keep the names beside the ids (as the simulator does)
        res.requests["tenant_name"] = [names[t] for t in res.requests["tenant"]]
        doc["trace"]["tenant_names"] = list(names)
    write_parquet(out / "requests.parquet", res.requests)
    write_parquet(out / "segments.parquet", res.segments)
    res.meta.pop("wall_t0", None)
    if cfg.timeline and cfg.backend == "torch":
        write_parquet(out / "timeline.parquet", timeline)
    from moesim.metrics import seconds_text, summarize, throughput_text

    doc.update(summarize(res.requests, res.segments))
    doc.update({"status": "ok", "serve_wall_s": wall, "horizon_s": res.horizon_s, "swap_count": res.swap_count,
                "instances": res.instances, "policy_info": res.policy, **res.meta})
    doc["hidden"] = hidden_summary(res)
    n = len(requests)
    log(f"served {n} request{'s' if n != 1 else ''} in {wall:.1f} s ({cfg.clock} clock): mean turnaround "
        f"{seconds_text(doc['mean_turnaround_s'])}, mean TTFT {seconds_text(doc['mean_ttft_s'])}, {throughput_text(doc)}, "
        f"{res.swap_count} swaps", flush=True)
    if cfg.compare:
        doc["validation"] = compare(cfg, model, gpu, requests, res, out, execution)
        v = doc["validation"]
        # on the CPU the measured side is this CPU, the simulated side the GPU named by gpu=: say so, or the
        # large "errors" read as a broken simulator
        cpu = (f" (measured on this CPU, simulated on gpu={cfg.gpu}: not comparable)"
               if cfg.device == "cpu" and cfg.backend == "torch" else "")
        if cfg.backend == "cost" and cfg.clock == "wall":  # read as a broken simulator too (TTFT -94%)
            cpu = (" (backend=cost sleeps the same step costs on the wall clock: the gap is this host's time "
                   "around each step; clock=virtual gives the simulator's figures)")
        log(f"simulated ({v['sim_cost']}): mean turnaround {v['mean_turnaround_s_error_pct']:+.1f}%, mean TTFT "
            f"{v['mean_ttft_s_error_pct']:+.1f}%, per-request median |err| turnaround "
            f"{v['turnaround_ape_median_pct']:.1f}%{cpu}", flush=True)
    doc["wall_s"] = time.perf_counter() - t_start
    write_json(out / "summary.json", doc)
    ours = [f for f in out.iterdir() if f.is_file() and f.suffix in (".parquet", ".json")]
    # a second run into the same out= (say compare=false after compare=true) listed the first run's
    # simulated_requests.parquet and per_request_errors.parquet as its own
    stale = sorted(f.name for f in ours if before.get(f.name) == f.stat().st_mtime_ns)
    files = sorted(f.name for f in ours if f.name not in stale)
    log(f"outputs in {out}/ ({', '.join(files)})"
        + (f"; not from this run (an earlier run's): {', '.join(stale)}" if stale else ""), flush=True)
    return doc


#: a wall-clock run whose last arrival is later than this (seconds) says how long it will take
WALL_NOTE_S = 10.0


def _duration(s: float) -> str:
    """``"172,800 s (48.0 h)"``, ``"300 s (5.0 min)"``."""
    if s >= 3600:
        return f"{s:,.0f} s ({s / 3600:.1f} h)"
    return f"{s:,.0f} s ({s / 60:.1f} min)"


def _announce_trace(cfg: ServeConfig, requests: list, log: Any) -> tuple[tuple[str, ...] | None, str]:
    """With ``trace=F``: one line saying which of the file's requests are served and how many token counts
    ``max_prompt``/``max_output`` cap; the trace's tenant names (None when it has none) and that line ("" without
    a trace)."""
    if cfg.workload != "trace":
        return None, ""
    from moesim.serve.config import serve_spelling, trace_workload

    wl = trace_workload(cfg)  # read once: the loader caches the file per version
    full = wl.generate(cfg.seed)
    capped = [f"{sum(a.prompt_tokens != b.prompt_tokens for a, b in zip(full, requests, strict=True))} prompts at "
              f"max_prompt={cfg.max_prompt}",
              f"{sum(a.output_tokens != b.output_tokens for a, b in zip(full, requests, strict=True))} outputs at "
              f"max_output={cfg.max_output}"]
    capped = [c for c in capped if not c.startswith("0 ")]
    line = serve_spelling(wl.selection(len(requests))) + (f"; capped {' and '.join(capped)} tokens" if capped else "")
    log(f"serve: {line}", flush=True)
    return wl.tenant_names, line


def _timeline(backends: list, origin: float, instances: list[dict[str, Any]]) -> pd.DataFrame:
    """Every backend's recorded timeline (``TorchBackend.timeline``, read in its instance's context, then
    switched off) as one frame: ``instance`` (the plan's name, as in segments.parquet), ``kind``, ``layer``,
    ``start_s``/``end_s`` on the run's clock (seconds since its start), ``fetches``."""
    frames = []
    for i, b in enumerate(backends):
        try:
            with b.instance_context():
                rows = b.timeline()
        except RuntimeError as e:  # a diagnostic: the run's own outputs are kept
            print(f"serve: timeline of instance {i} not read ({first_line(e)})", flush=True)
            rows = []
        b.trace_timeline(False)
        df = pd.DataFrame(rows, columns=["kind", "layer", "start_s", "end_s", "fetches"])
        df.insert(0, "instance", instances[i]["name"] if i < len(instances) else str(i))
        frames.append(df)
    tl = pd.concat(frames, ignore_index=True)
    tl[["start_s", "end_s"]] -= origin
    return tl.sort_values(["start_s", "instance"], kind="stable").reset_index(drop=True)


def _serve(cfg: ServeConfig, model: Any, gpu: Any, backend: Any, requests: list, clock: str) -> ServeResult:
    """One pass of the trace: ``serve`` on one GPU, ``serve_fleet`` (a fresh router) on several."""
    params = cfg.policy_params()
    if cfg.is_fleet:
        from moesim.fleet.routers import ROUTERS
        from moesim.serve.fleet import serve_fleet

        placement = cfg.fleet_placement()
        return serve_fleet(model, gpu, [POLICIES.build(cfg.policy, params) for _ in placement], backend, requests,
                           placement, ROUTERS.build(cfg.router, {"seed": cfg.seed}), clock=clock)
    return serve(model, gpu, POLICIES.build(cfg.policy, params), backend, requests, n_tenants=cfg.tenants,
                 clock=clock, whole_gpus=cfg.gpus > 1)


def build_dedicated_backends(cfg: ServeConfig, model: Any, gpu: Any) -> list:
    """``dedicated``: one ``TorchBackend`` per tenant, GPU g (CUDA device g) holding tenant g's whole model."""
    from moesim.serve.backend import TorchBackend

    batch = POLICIES.build(cfg.policy, cfg.policy_params()).cfg.max_batch
    return [TorchBackend(model, gpu, device=cfg.device, execution=cfg.execution, kv_bucket=cfg.kv_bucket,
                         seed=cfg.seed, n_tenants=1, max_batch=batch, host_pool=cfg.host_pool,
                         moe_kernel=cfg.moe_kernel, fetch_graphs=cfg.fetch_graphs,
                         gpu_index=g if cfg.device == "cuda" else None)
            for g in range(cfg.gpus)]


def build_fleet_backends(cfg: ServeConfig, model: Any, gpu: Any) -> list:
    """One ``TorchBackend`` per fleet GPU (CUDA: on device g), each holding its variants' non-expert sets."""
    from moesim.serve.backend import TorchBackend

    batch = POLICIES.build(cfg.policy, cfg.policy_params()).cfg.max_batch
    return [TorchBackend(model, gpu, device=cfg.device, execution=cfg.execution, kv_bucket=cfg.kv_bucket,
                         seed=cfg.seed, n_tenants=len(ts), max_batch=batch, host_pool=cfg.host_pool,
                         moe_kernel=cfg.moe_kernel, fetch_graphs=cfg.fetch_graphs,
                         gpu_index=g if cfg.device == "cuda" else None)
            for g, ts in enumerate(cfg.fleet_placement())]


def build_backends(cfg: ServeConfig, model: Any, gpu: Any, plans: list, green: bool = True,
                   host_pool: int | None = None) -> Any:
    """One ``TorchBackend`` for a single instance; for several (mig) one per slice, each holding only its
    tenants' non-expert sets and, on CUDA, running on a stream of its own in a green context of its slice's
    SMs (``green=False``: no SM partition, streams only)."""
    from moesim.serve.backend import TorchBackend

    kw = {"device": cfg.device, "execution": cfg.execution, "kv_bucket": cfg.kv_bucket, "seed": cfg.seed,
          "host_pool": cfg.host_pool if host_pool is None else host_pool, "moe_kernel": cfg.moe_kernel,
          "fetch_graphs": cfg.fetch_graphs}
    if len(plans) == 1:
        return TorchBackend(model, gpu, n_tenants=cfg.tenants, max_batch=plans[0].max_batch, **kw)
    sms_total = 0
    if cfg.device == "cuda" and green:
        import torch

        from moesim.calibrate.slices import effective_sms

        prop = torch.cuda.get_device_properties(0)
        sms_total = prop.multi_processor_count
    out = []
    for p in plans:
        sms = 0
        if sms_total:
            sms = effective_sms(max(1, round(p.residency.slice.sm_fraction * sms_total)), sms_total, prop.major)
        b = TorchBackend(model, gpu, n_tenants=len(p.tenants), max_batch=p.max_batch, sms=sms, concurrent=True,
                         draw_experts=False, **kw)
        b.setup(p, cfg.tenants)  # lay the slice's experts out now: the next engine needs the room
        out.append(b)
    return out


def _check(res: ServeResult) -> None:
    from moesim.executor.compare import check_tables

    check_tables(res.requests)


def hidden_summary(res: ServeResult) -> dict[str, float]:
    """What the timeline shows was hidden: swap copy time vs the host's wait for it; fetch copy time (s)."""
    seg = res.segments
    sw = seg[seg["kind"] == "swap"]
    steps = seg[seg["kind"] != "swap"]
    copy = float(sw["copy_s"].sum()) if len(sw) else 0.0
    exposed = float((sw["exposed_s"]).sum()) if len(sw) else 0.0
    return {"swap_copy_s": copy, "swap_exposed_s": exposed,
            "swap_hidden_s": max(0.0, copy - exposed) if len(sw) else 0.0,
            "expert_fetches": float(steps["expert_fetches"].sum()) if len(steps) else 0.0,
            "fetch_copy_s": float(steps["fetch_s"].sum()) if len(steps) else 0.0,
            "sched_s": float(seg["sched_s"].sum()) if len(seg) else 0.0}


def compare(cfg: ServeConfig, model: Any, gpu: Any, requests: list, res: ServeResult, out: Path,
            execution: str) -> dict[str, Any]:
    """Simulate the same trace and policy with ``sim_cost``; write it and the per-request errors."""
    from moesim.executor.compare import per_request_errors, summary

    cost, desc = build_cost(cfg, model, gpu, execution)
    sim = simulate_config(cfg, model, gpu, cost, requests)
    write_parquet(out / "simulated_requests.parquet", sim.requests)
    write_parquet(out / "per_request_errors.parquet", per_request_errors(sim.requests, res.requests))
    return {"sim_cost": desc, "sim_swap_count": sim.swap_count, **summary(sim.requests, res.requests)}


def simulate_config(cfg: ServeConfig, model: Any, gpu: Any, cost: Any, requests: list,
                    policy_overrides: dict[str, Any] | None = None, host_contention: float = 0.0) -> Any:
    """The simulator on ``cfg``'s policy (one GPU) or fleet (``gpus`` > 1: its placement and router). Needs simpy.

    ``policy_overrides``: policy parameters set on top of ``cfg.policy_params()`` (e.g. ``link_discipline``).
    ``host_contention``: α of ``moesim.engine.host`` (the runtime drives every instance from one host process; 0:
    no contention between their host-bound steps)."""
    params = {**cfg.policy_params(), **(policy_overrides or {})}
    if cfg.is_fleet:
        from moesim.fleet import FleetSpec, GPUPlacement, Placement, run_fleet
        from moesim.fleet.routers import ROUTERS

        placement = Placement(tuple(GPUPlacement(g, ts) for g, ts in enumerate(cfg.fleet_placement())), "file")
        pol = POLICIES.build(cfg.policy, params)
        return run_fleet(model, FleetSpec.uniform(cfg.gpu, cfg.gpus), placement, requests, policy=cfg.policy,
                         policy_cfg=pol.cfg, cost="", cost_cfg=None, router=ROUTERS.build(cfg.router, {"seed": cfg.seed}),
                         costs={gpu.name: cost}, host_contention=host_contention)
    from moesim.engine import simulate  # simpy

    return simulate(model, gpu, POLICIES.build(cfg.policy, params), cost, requests,
                    n_tenants=cfg.tenants, host_contention=host_contention)
