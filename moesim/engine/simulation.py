"""Run a workload through a policy's instances on a SimPy clock and collect the event log."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import simpy

from moesim.cost.base import CostModel
from moesim.engine.admission import refusal
from moesim.engine.instance import Instance
from moesim.errors import UserError
from moesim.policies.base import InstancePlan, Policy
from moesim.specs import GPUSpec, ModelSpec
from moesim.workloads.request import Request


class HostLink:
    """The host→device link shared by all instances of one GPU.

    Approximation: an instance that starts a step needing expert fetches gets ``1 / k`` of the link,
    ``k`` being the instances fetching at that moment (itself included); the share is fixed for the step.
    When several instances fetch over the link (e.g. MIG instances with host-resident experts), one that
    goes idle or wakes up ends the others' decode runs at the step under way, so each re-takes its share
    from the next step on (the paper's MIG logs show a host expert taking 52 ms while the other instance
    fetches and 27 ms once it stops, within one request).
    """

    __slots__ = ("active", "members")

    def __init__(self) -> None:
        self.active = 0
        self.members: list = []  # the instances that fetch experts over this link

    def begin(self, fetches: bool) -> None:
        """An instance starts a step (counted only when it fetches)."""
        if fetches:
            self.active += 1

    def end(self, fetches: bool) -> None:
        """An instance ends a step."""
        if fetches:
            self.active -= 1

    def share(self) -> float:
        """Share of the link a step starting now gets."""
        return 1.0 / (self.active + 1)


class Recorder:
    """The event log: per-request timestamps in arrays, per-instance segments in lists."""

    SEGMENT_COLUMNS = ("instance", "kind", "start_s", "end_s", "n_seqs", "tokens", "tenants",
                       "expert_fetches", "attention_s", "experts_s", "fetch_s")

    def __init__(self, n: int) -> None:
        self.start = np.full(n, np.nan)
        self.first = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.swap_wait = np.zeros(n)
        self.instance = np.full(n, -1, dtype=np.int64)
        self.rejected: dict[int, str] = {}  # request id → reason it was refused
        self.rows: list[tuple] = []
        self.swaps = 0
        self.finished = 0

    def reject(self, request: Request, reason: str) -> None:
        """Refuse ``request`` (it is never served): its reason goes to the ``rejected`` column."""
        self.rejected[request.id] = reason

    def segment(self, inst: int, kind: str, start: float, end: float, n_seqs: int, tokens: int,
                tenants: str, fetches: float, attention_s: float, experts_s: float, fetch_s: float) -> None:
        """Log one timeline segment (a prefill step, a decode run or a swap)."""
        self.rows.append((inst, kind, start, end, n_seqs, tokens, tenants, fetches, attention_s, experts_s,
                          fetch_s))


@dataclass(frozen=True)
class SimResult:
    """What a simulation produced.

    Attributes:
        requests: one row per request (request_id, tenant, instance, arrival_s, start_s, first_token_s,
            finish_s, prompt_tokens, output_tokens, swap_wait_s, rejected); times in seconds. ``rejected``
            is "" for a served request, else why it was refused (see ``moesim.engine.admission``); a
            rejected request has instance -1 and NaN start/first-token/finish times.
        segments: the timeline (instance, kind, start_s, end_s, n_seqs, tokens, tenants, expert_fetches,
            attention_s, experts_s, fetch_s).
        instances: per instance: name, profile, slice shares and memory breakdown (bytes).
        policy: the policy's name and parameters.
        horizon_s: time of the last event (seconds).
        swap_count: non-expert-set or whole-model loads.
    """

    requests: pd.DataFrame
    segments: pd.DataFrame
    instances: list[dict[str, Any]]
    policy: dict[str, Any]
    horizon_s: float
    swap_count: int
    meta: dict[str, Any] = field(default_factory=dict)


def _check_fits(plans: Sequence[InstancePlan]) -> None:
    for p in plans:
        if not p.ideal and p.weight_bytes > p.memory_bytes:
            raise UserError(
                f"instance {p.name}: weights need {p.weight_bytes / 1e9:.2f} GB but it has "
                f"{p.memory_bytes / 1e9:.2f} GB"
            )


def _all_rejected(rec: Recorder, requests: Sequence[Request], plans: Sequence[InstancePlan],
                  model: ModelSpec) -> UserError:
    first = min(requests, key=lambda r: r.id)
    caps = ", ".join(sorted({f"{p.kv_capacity_bytes / 1e9:.3g} GB" for p in plans}))
    limit = f"{model.max_context_tokens} tokens" if model.max_context_tokens else "no stated limit"
    return UserError(
        f"every one of the {len(requests):,} requests is rejected (request {first.id}: "
        f"{rec.rejected[first.id]}); {model.name} serves at most {limit} of context and the instances hold "
        f"{caps} of KV cache: shorten the requests, lower policy.weight_budget_fraction or use a larger "
        "GPU/profile"
    )


def simulate(model: ModelSpec, gpu: GPUSpec, policy: Policy, cost: CostModel, requests: Sequence[Request],
             *, n_tenants: int | None = None, progress: bool = False,
             instance_cls: type[Instance] = Instance) -> SimResult:
    """Replay ``requests`` through ``policy``'s instances on ``gpu``, timing steps with ``cost``.

    Args:
        n_tenants: tenants served (default: 1 + the largest tenant index in ``requests``).
        progress: show a progress bar of simulated requests (tqdm).
        instance_cls: the instance process class (a subclass may observe runs, e.g. the GPU executor's).
    """
    n = len(requests)
    tenants = n_tenants if n_tenants is not None else (1 + max((r.tenant for r in requests), default=0))
    plans = policy.layout(model, gpu, tenants)
    policy.bind(plans)
    _check_fits(plans)
    env = simpy.Environment()
    rec = Recorder(n)
    link = HostLink()
    insts = [instance_cls(i, p, env, cost, policy, link, rec) for i, p in enumerate(plans)]
    order = sorted(requests, key=lambda r: (r.arrival_s, r.id))
    ids = np.array([r.id for r in order], dtype=np.int64)
    if n and (ids.min() < 0 or ids.max() >= n or len(np.unique(ids)) != n):
        raise UserError("request ids must be dense 0..n-1 and unique")
    # routing depends on the request alone, so each instance gets its arrivals up front
    routed: list[list[Request]] = [[] for _ in insts]
    route = policy.route
    for r in order:
        i = route(r)
        reason = refusal(r, plans[i], model)
        if reason is None:
            routed[i].append(r)
        else:
            rec.reject(r, reason)
    if n and len(rec.rejected) == n:
        raise _all_rejected(rec, requests, plans, model)
    procs = []
    for inst, arr in zip(insts, routed, strict=True):
        inst.feed(arr)
        inst.proc = env.process(inst.run())
        procs.append(inst.proc)

    if progress:
        from tqdm.auto import tqdm

        chunk = max(1.0, (order[-1].arrival_s if order else 0.0) / 200)
        with tqdm(total=n - len(rec.rejected), unit="req", desc=f"simulate {policy.registry_name}", mininterval=0.5) as bar:
            while any(p.is_alive for p in procs):
                env.run(until=env.now + chunk)
                bar.update(rec.finished - bar.n)
    else:
        env.run()
    unfinished = np.isnan(rec.finish)
    unfinished[list(rec.rejected)] = False
    if unfinished.any():
        stuck = int(unfinished.sum())
        raise RuntimeError(f"{stuck} requests never finished: engine bug")

    by_id = sorted(requests, key=lambda r: r.id)
    req_df = pd.DataFrame({
        "request_id": np.arange(n, dtype=np.int64),
        "tenant": np.array([r.tenant for r in by_id], dtype=np.int64),
        "instance": rec.instance,
        "arrival_s": np.array([r.arrival_s for r in by_id], dtype=float),
        "start_s": rec.start,
        "first_token_s": rec.first,
        "finish_s": rec.finish,
        "prompt_tokens": np.array([r.prompt_tokens for r in by_id], dtype=np.int64),
        "output_tokens": np.array([r.output_tokens for r in by_id], dtype=np.int64),
        "swap_wait_s": rec.swap_wait,
        "rejected": np.array([rec.rejected.get(i, "") for i in range(n)], dtype=object),
    })
    seg_df = pd.DataFrame(rec.rows, columns=list(Recorder.SEGMENT_COLUMNS))
    seg_df["instance"] = [plans[i].name for i in seg_df["instance"]] if len(seg_df) else seg_df["instance"]
    instances = [_instance_info(p, model) for p in plans]
    return SimResult(req_df, seg_df, instances, policy.describe(), float(env.now), rec.swaps)


def _instance_info(p: InstancePlan, model: ModelSpec) -> dict[str, Any]:
    res = p.residency
    gpu_copies = res.gpu_expert_copies()
    host_bytes = p.host_expert_bytes
    nonexpert = p.nonexpert_slots * model.nonexpert_bytes
    # a plan whose groups list more GPU copies than its weights hold (``swap``: every tenant's copies,
    # one tenant's loaded at a time) records what is resident; the rest waits in host memory
    resident = min(gpu_copies, max(0, round((p.weight_bytes - nonexpert) / model.expert_bytes))) \
        if model.expert_bytes > 0 else gpu_copies
    host_bytes += (gpu_copies - resident) * model.expert_bytes
    gpu_copies = resident
    return {
        "name": p.name,
        "profile": p.profile,
        "sm_fraction": res.slice.sm_fraction,
        "bw_fraction": res.slice.bw_fraction,
        "memory_bytes": p.memory_bytes,
        "resident_expert_bytes": gpu_copies * model.expert_bytes,
        "host_expert_bytes": host_bytes,
        "nonexpert_bytes": nonexpert,
        "weight_bytes": p.weight_bytes,
        "kv_capacity_bytes": p.kv_capacity_bytes,
        "tenants": sorted(p.tenants),
        "resident_expert_copies": gpu_copies,
        "ideal": p.ideal,
        **p.meta,
    }
