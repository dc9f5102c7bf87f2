"""The runtime over several GPUs: variants placed on GPUs, each arrival routed live by a fleet router. Torch-free.

Each GPU serves the variants placed on it with a single-instance policy (one ``ServeInstance``, its own backend
and host thread; on CUDA the backend's steps run on its own device). A dispatcher thread releases the trace's
requests at their arrival times; a request whose variant has several replicas is routed then by the router
(``moesim.fleet.routers``: ``least_work``, ``round_robin``, ``affinity``, ``power_of_two``), which reads the
fleet's live state (``FleetView``: outstanding tokens and requests per GPU, updated as requests finish, the
variants whose non-expert sets are resident on each GPU). The request then enters that GPU's feed with the
GPU's local tenant number, and, as in the simulator, a decode run there may be cut for it to join.

On the virtual clock (``clock=virtual``, used for warm-up replays) routing is decided up front, in arrival
order, with the router seeing routed-but-never-finished work; each GPU then runs on its own clock from 0.
That equals the simulator's fleet when no variant has replicas (routing fixed by the variant); with replicas
only the wall clock routes on live state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from moesim.errors import UserError
from moesim.policies.base import Policy
from moesim.request_table import request_table
from moesim.serve.clock import ReleasedQueue
from moesim.serve.runtime import (
    SEGMENT_COLUMNS,
    Backend,
    Recorder,
    ServeInstance,
    ServeResult,
    _check_fits,
    _instance_info,
    _merge,
    prepare_backend,
)
from moesim.specs import GPUSpec, ModelSpec
from moesim.workloads.request import Request


def parse_placement(text: str, n_gpus: int, n_tenants: int) -> list[tuple[int, ...]]:
    """``"0,1,2;1,2,3"`` → per GPU its variants (global tenant ids, ascending); one clear line when invalid."""
    parts = [p.strip() for p in text.split(";")] if text.strip() else []
    if len(parts) != n_gpus:
        raise UserError(f"placement={text!r}: needs one ';'-separated tenant list per GPU ({n_gpus} GPUs), "
                        "e.g. placement=0,1,2;1,2,3")
    out = []
    for g, p in enumerate(parts):
        try:
            ts = tuple(sorted({int(x) for x in p.split(",") if x.strip()}))
        except ValueError:
            raise UserError(f"placement={text!r}: GPU {g}'s list {p!r} is not comma-separated integers") from None
        bad = [t for t in ts if t < 0 or t >= n_tenants]
        if bad:  # '0,1;5' with 4 tenants: name the tenant, not "GPU 1 must hold ≥ 1"
            raise UserError(f"placement={text!r}: GPU {g} lists tenant {bad[0]}; valid: 0..{n_tenants - 1} "
                            f"(tenants={n_tenants})")
        if not ts:
            raise UserError(f"placement={text!r}: GPU {g} must hold ≥ 1 of tenants 0..{n_tenants - 1}")
        out.append(ts)
    missing = sorted(set(range(n_tenants)) - {t for ts in out for t in ts})
    if missing:
        raise UserError(f"placement={text!r}: tenants {missing} are placed on no GPU")
    return out


class LiveBoard:
    """The fleet's shared state the router reads (``moesim.policies.view.FleetView``), thread-safe."""

    def __init__(self, placement: Sequence[tuple[int, ...]], clock: Any) -> None:
        self.placement = [tuple(p) for p in placement]
        self.clock = clock
        self.outstanding_tokens = [0] * len(placement)
        self.outstanding_requests = [0] * len(placement)
        self.insts: list[ServeInstance | None] = [None] * len(placement)
        self.lock = threading.Lock()

    @property
    def now(self) -> float:
        """The runtime's clock (seconds)."""
        return self.clock.now()

    def active_tenants(self, gpu: int) -> set[int]:
        """Global tenants whose non-expert sets are resident on ``gpu`` now."""
        inst = self.insts[gpu]
        ts = self.placement[gpu]
        return {ts[t] for t in inst.resident} if inst is not None else set()

    def routed(self, gpu: int, r: Request) -> None:
        """``r`` goes to ``gpu``."""
        with self.lock:
            self.outstanding_tokens[gpu] += r.prompt_tokens + r.output_tokens
            self.outstanding_requests[gpu] += 1

    def done(self, gpu: int, r: Request) -> None:
        """``r`` finished on ``gpu``."""
        with self.lock:
            self.outstanding_tokens[gpu] -= r.prompt_tokens + r.output_tokens
            self.outstanding_requests[gpu] -= 1


class RoutedFeed(ReleasedQueue):
    """One GPU's arrivals, pushed by the dispatcher once routed (the ``WallFeed`` interface)."""

    def __init__(self, gpu: int, board: LiveBoard) -> None:
        super().__init__()
        self.gpu = gpu
        self.board = board
        self.closed = False  # the dispatcher has routed every request
        self._stop = False

    def push(self, r: Request) -> None:
        """A routed arrival."""
        with self._cv:
            self.released.append(r)
            self._cv.notify_all()

    def close(self) -> None:
        """No more arrivals will come."""
        with self._cv:
            self.closed = True
            self._cv.notify_all()

    def stop(self) -> None:
        """Another instance failed: wake and fail the waiting loop."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()

    def exhausted(self) -> bool:
        """Every request routed here has been pulled and none will come."""
        with self._cv:
            return self.closed and not self.released

    def wait(self) -> None:
        """Block until a request is routed here or the dispatch is over."""
        with self._cv:
            while not self.released and not self.closed:
                if self._stop:
                    raise RuntimeError("arrival feed stopped (another instance failed)")
                self._cv.wait(timeout=0.5)

    def finished(self, r: Request) -> None:
        """The instance finished ``r`` (the board's outstanding work drops)."""
        self.board.done(self.gpu, r)


def _local(r: Request, placement: tuple[int, ...]) -> Request:
    return Request(r.id, placement.index(r.tenant), r.arrival_s, r.prompt_tokens, r.output_tokens)


def _choose(router: Any, r: Request, cands: tuple[int, ...], board: Any) -> int:
    if len(cands) == 1:
        return cands[0]
    if router is None:
        raise UserError("a variant is placed on several GPUs: the fleet needs a router (e.g. router=least_work)")
    g = router.choose(r, cands, board)
    if g not in cands:
        raise RuntimeError(f"router chose GPU {g} for tenant {r.tenant}; replicas: {cands}")
    return g


def serve_fleet(model: ModelSpec, gpu: GPUSpec, policies: Sequence[Policy], backends: Sequence[Backend],
                requests: Sequence[Request], placement: Sequence[tuple[int, ...]], router: Any = None, *,
                clock: str = "wall") -> ServeResult:
    """Serve ``requests`` on ``len(placement)`` GPUs (``placement[g]``: GPU g's variants) with live routing.

    ``policies[g]`` (a single-instance policy) decides on GPU g over its variants numbered locally (0 = the
    smallest global id placed there); ``backends[g]`` executes there. Returns the single-GPU tables with the
    ``gpu`` column set (``instance`` = GPU index), tenants as global ids.
    """
    from moesim.serve.clock import VirtualClock, VirtualFeed, WallClock

    n_gpus = len(placement)
    if not (len(policies) == len(backends) == n_gpus):
        raise UserError(f"{n_gpus} GPUs placed but {len(policies)} policies and {len(backends)} backends given")
    n = len(requests)
    by_id = sorted(requests, key=lambda r: r.id)
    if n and any(r.id != i for i, r in enumerate(by_id)):
        raise UserError("request ids must be dense 0..n-1 and unique")
    replicas: dict[int, tuple[int, ...]] = {}
    for g, ts in enumerate(placement):
        for t in ts:
            replicas[t] = (*replicas.get(t, ()), g)
    for r in by_id:
        if r.tenant not in replicas:
            raise UserError(f"request {r.id}: tenant {r.tenant} is placed on no GPU")
    plans = []
    for g, (pol, ts) in enumerate(zip(policies, placement, strict=True)):
        ps = pol.layout(model, gpu, len(ts))
        if len(ps) != 1:
            raise UserError(f"GPU {g}: policy {pol.registry_name!r} lays out {len(ps)} instances; a fleet GPU runs "
                            "a single-instance policy (reconfig, reconfig_fast, multiplex, naive, swap)")
        pol.bind(ps)
        plans.append(ps[0])
    order = sorted(requests, key=lambda r: (r.arrival_s, r.id))
    for g, (p, b) in enumerate(zip(plans, backends, strict=True)):
        mine = [_local(r, placement[g]) for r in order if g in replicas[r.tenant]]
        _check_fits(p, mine, model)
        b.setup(p, len(placement[g]))
        prepare_backend(b, p, mine)
    recs = [Recorder(n) for _ in plans]
    gpu_of = np.full(n, -1, dtype=np.int64)
    late = np.zeros(n)
    origin = None  # the wall clock's perf_counter origin (a timeline's times are placed on it)
    if clock == "virtual":
        board = LiveBoard(placement, VirtualClock())
        routed: list[list[Request]] = [[] for _ in plans]
        for r in order:
            board.clock.set(r.arrival_s)
            g = _choose(router, r, replicas[r.tenant], board)
            board.routed(g, r)
            gpu_of[r.id] = g
            routed[g].append(_local(r, placement[g]))
        horizon = 0.0
        for g, (p, b, rec) in enumerate(zip(plans, backends, recs, strict=True)):
            clk = VirtualClock()
            clk.start()
            ServeInstance(p, policies[g], model, b, clk, VirtualFeed(routed[g], clk), rec).serve()
            horizon = max(horizon, clk.now())
    else:
        wclk = WallClock()
        board = LiveBoard(placement, wclk)
        feeds = [RoutedFeed(g, board) for g in range(n_gpus)]
        insts = [ServeInstance(p, policies[g], model, b, wclk, feeds[g], rec)
                 for g, (p, b, rec) in enumerate(zip(plans, backends, recs, strict=True))]
        for g, inst in enumerate(insts):
            board.insts[g] = inst
            inst.rec.name = f"gpu{g}"
        stop = threading.Event()
        errors: list[BaseException] = []

        def dispatch() -> None:
            try:
                for r in order:
                    target = wclk.wall(r.arrival_s)
                    while True:
                        left = target - time.perf_counter()
                        if left <= 0 or stop.is_set():
                            break
                        if left > 1e-3:
                            time.sleep(left - 5e-4)
                    if stop.is_set():
                        return
                    late[r.id] = max(0.0, time.perf_counter() - target)
                    g = _choose(router, r, replicas[r.tenant], board)
                    board.routed(g, r)
                    gpu_of[r.id] = g
                    feeds[g].push(_local(r, placement[g]))
            except BaseException as exc:  # re-raised by the caller
                errors.append(exc)
                for f in feeds:
                    f.stop()
            finally:
                for f in feeds:
                    f.close()

        from moesim.serve.runtime import _serve_concurrently

        wclk.start()
        th = threading.Thread(target=dispatch, name="moesim-dispatch", daemon=True)
        th.start()
        try:
            _serve_concurrently(insts)
        finally:
            stop.set()
            th.join(timeout=5.0)
        if errors:
            raise errors[0]
        horizon = wclk.now()
        origin = wclk.t0
    rec = _merge(recs, n)
    if n and np.isnan(rec.finish).any():
        raise RuntimeError(f"{int(np.isnan(rec.finish).sum())} requests never finished: runtime bug")
    req_df = request_table(by_id, instance=gpu_of.copy(), gpu=gpu_of, start=rec.start, first=rec.first,
                           finish=rec.finish, swap_wait=rec.swap_wait)
    seg = pd.DataFrame(rec.rows, columns=list(SEGMENT_COLUMNS))
    for c in ("n_seqs", "tokens", "steps", "eager_steps"):
        seg[c] = seg[c].astype(np.int64)
    desc = [b.describe() for b in backends]
    meta = {"clock": clock, "backend": desc, "wall_t0": origin, "release_late_s_max": float(late.max()) if n else 0.0,
            "release_late_s_mean": float(late.mean()) if n else 0.0,
            "fleet": {"placement": [list(p) for p in placement],
                      "router": getattr(router, "registry_name", "") if router is not None else "",
                      "requests_per_gpu": [int((gpu_of == g).sum()) for g in range(n_gpus)]}}
    infos = []
    for g, p in enumerate(plans):
        info = _instance_info(p, model)
        info.update(name=f"gpu{g}", tenants=list(placement[g]))
        infos.append(info)
    return ServeResult(req_df, seg, infos, policies[0].describe(), float(horizon),
                       sum(r.swaps for r in recs), meta)
