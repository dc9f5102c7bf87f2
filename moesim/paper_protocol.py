"""The paper's MIG experiment as its code runs it: two unsynchronised processes, each its own schedule.

The official code (github.com/hamid-74/Multi-MoE, ``qos_evaluator_MIG1.py`` / ``_MIG2.py``) runs MIG as two
independent Python processes, one per MIG instance and variant. Each loops over its own rate list
``[0.05, 0.05, 0.005, 0.010, …, 0.080]`` (two warm-up windows, then the sweep) and per rate:

* starts an arrival thread (Poisson at λ for 120 s; the first request after an exponential gap) and a fresh
  queue;
* dequeues while ``time − start < 120 s``, serving one request at a time (batch 1); the window therefore
  ends at 120 s when idle, or when the request in service at 120 s finishes; what is still queued is dropped;
* logs per window: each served request's turnaround (finish − dequeue), TTFT, wait (dequeue − arrival) and
  the throughput (served / 120 s · 60).

So the two instances' windows are not aligned: each process starts its next rate when its own window ends,
and the two drift apart by the difference of their window tails; and an instance's first low-rate windows
follow its own and the other's saturated warm-up windows at λ = 0.05. The only coupling between the
processes is the host link their expert copies share (facts/paper.md; the code's MIG logs: 52 ms per host
expert while the other instance fetches, 27 ms alone).

moesim's sweep and ``paper_compare.expected`` run every rate as its own experiment with both instances
starting idle at the same instant and no warm-up. This module simulates the code's protocol instead, as a
fluid model of the engine's link sharing: a MIG request alone takes ``T1 = C + F`` (compute ``C``, host copies
``F`` at the whole link), and while ``k`` instances serve at once its copies run at ``1/k`` of the link, so it
progresses at ``1 / (C + k·F)`` of its work per second (the engine shares the link per pass; both are
checked against each other in tests/test_paper_protocol.py). ``C`` and ``F`` are read off the engine for the
paper's costs (:func:`mig_times`), not fitted.

The paper's per-rate aggregation (its ``TTFT_plotter.py``): over the windows of every run and both MIG
processes that served a request, the per-window means weighted by the requests served (= the mean over
all served requests); throughput (``qos_plotter.py``): the mean over runs of each process's throughput,
MIG1 + MIG2. Its headline pools every rate the same way: the 85 % is
``1 − pooled reconfig / pooled MIG`` turnaround over all rates and runs (:func:`pooled_reduction`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: the code's sweep (qos_plotter.py) and the MIG processes' rate list: two warm-up windows at 0.05 first
RATES: tuple[float, ...] = tuple(round(0.005 * i, 3) for i in range(1, 17))
WARMUP: tuple[float, ...] = (0.05, 0.05)
WINDOW_S = 120.0
RUNS = 5


@dataclass(frozen=True)
class MigTimes:
    """One MIG request's costs on the paper's A100 (seconds).

    Attributes:
        compute_s: ``C``, the non-copy part of a lone request (attention, resident experts, placeholder use).
        fetch_s: ``F``, its host-expert copies with the whole host link.
        ttft_fraction: the share of a lone request's time up to its first token (its prefill pass).
    """

    compute_s: float
    fetch_s: float
    ttft_fraction: float

    @property
    def alone_s(self) -> float:
        """``T1 = C + F``: a request while the other instance is idle."""
        return self.compute_s + self.fetch_s

    def service_s(self, busy: int) -> float:
        """Duration of a request served while ``busy`` instances (itself included) serve: ``C + busy·F``."""
        return self.compute_s + busy * self.fetch_s


def mig_times(cost=None) -> MigTimes:
    """``C``, ``F`` and the prefill share of a lone MIG request, read off the engine (paper_a100 costs)."""
    from moesim.cost import COST_MODELS
    from moesim.cost.roofline import PAPER_A100
    from moesim.engine import simulate
    from moesim.metrics import per_request
    from moesim.paper import OUTPUT_TOKENS, PROMPT_TOKENS
    from moesim.policies import POLICIES
    from moesim.specs import get_gpu, get_model
    from moesim.workloads.request import Request

    model, gpu = get_model("mixtral-8x7b"), get_gpu("a100-80gb")
    cost = cost or COST_MODELS.build("roofline", PAPER_A100, model=model, gpu=gpu)
    res = simulate(model, gpu, POLICIES.build("mig", {"max_batch": 1}), cost,
                   [Request(0, 0, 0.0, PROMPT_TOKENS, OUTPUT_TOKENS)], n_tenants=2)
    df = per_request(res.requests)
    t1 = float(df["service_s"].iloc[0])
    fetch = float(res.segments["fetch_s"].sum())
    return MigTimes(compute_s=t1 - fetch, fetch_s=fetch, ttft_fraction=float(df["ttft_s"].iloc[0]) / t1)


@dataclass(frozen=True)
class WindowLog:
    """What one process logs for one rate window (the code's qos_metrics_rate_*.json), seconds.

    ``turnaround_s`` etc. are the window's per-request values (finish − dequeue, dequeue − arrival,
    dequeue → first token); ``start_s``/``end_s`` the window on the common clock.
    """

    process: int
    index: int
    rate: float
    warmup: bool
    start_s: float
    end_s: float
    turnaround_s: tuple[float, ...]
    wait_s: tuple[float, ...]
    ttft_s: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.turnaround_s)

    @property
    def throughput_rpm(self) -> float:
        """Served requests per minute of the 120 s window, as the code computes it."""
        return self.n / WINDOW_S * 60.0


#: a window's arrival offsets (seconds from its start) given (process, window index, rate)
Arrivals = Callable[[int, int, float], Sequence[float]]


def poisson_arrivals(seed: int) -> Arrivals:
    """The code's arrival thread: sleep Exp(1/rate), enqueue, while under 120 s; one stream per process ×
    window, drawn from ``seed`` (an arrival at or after 120 s is never dequeued, so it is not drawn)."""

    def draw(process: int, index: int, rate: float) -> list[float]:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(process, index)))
        out, t = [], 0.0
        while True:
            t += float(rng.exponential(1.0 / rate))
            if t >= WINDOW_S:
                return out
            out.append(t)

    return draw


class _Proc:
    __slots__ = ("ai", "arr", "arrivals", "cur", "done", "idx", "job", "logs", "p", "queue", "rates",
                 "started", "warmup", "ws")

    def __init__(self, p: int, rates: Sequence[float], arrivals: Arrivals, start_s: float, warmup: int) -> None:
        self.p, self.rates, self.arrivals, self.warmup = p, tuple(rates), arrivals, warmup
        self.idx, self.ws, self.started, self.done = -1, start_s, False, not rates
        self.arr: list[float] = []
        self.ai = 0
        self.queue: list[float] = []
        self.job: list[float] | None = None  # [arrival, dequeue, work left, first-token time or nan]
        self.logs: list[WindowLog] = []
        self.cur: tuple[list, list, list] = ([], [], [])

    def open(self, t: float) -> None:
        """Start the next window at ``t`` (or finish the schedule)."""
        self.idx += 1
        if self.idx >= len(self.rates):
            self.done = True
            return
        self.ws, self.started = t, True
        self.arr = [t + a for a in self.arrivals(self.p, self.idx, self.rates[self.idx]) if a < WINDOW_S]
        self.ai = 0
        self.queue = []
        self.cur = ([], [], [])

    def close(self, t: float) -> None:
        tt, w, f = self.cur
        self.logs.append(WindowLog(self.p, self.idx, self.rates[self.idx], self.idx < self.warmup, self.ws, t,
                                   tuple(tt), tuple(w), tuple(f)))
        self.open(t)


def simulate_protocol(schedules: Sequence[Sequence[float]], seed: int | Arrivals, times: MigTimes,
                      offsets_s: Sequence[float] | None = None, warmup: int = 0) -> list[WindowLog]:
    """Run the code's protocol for several processes sharing one host link; every window of every process.

    Args:
        schedules: each process's rate list (requests/s), e.g. ``WARMUP + RATES`` for both MIG processes.
        seed: the repetition (each process × window draws its own arrivals from it, :func:`poisson_arrivals`),
            or the arrivals themselves.
        times: the request's costs (:func:`mig_times`).
        offsets_s: when each process starts its first window (seconds; default all 0: launched together).
        warmup: the first ``warmup`` windows of each schedule are warm-ups (``WindowLog.warmup``).
    """
    offsets = list(offsets_s) if offsets_s is not None else [0.0] * len(schedules)
    arrivals = poisson_arrivals(seed) if isinstance(seed, int) else seed
    procs = [_Proc(i, s, arrivals, o, warmup) for i, (s, o) in enumerate(zip(schedules, offsets, strict=True))]
    t = 0.0
    eps = 1e-9
    while not all(p.done for p in procs):
        busy = sum(1 for p in procs if p.job is not None)
        dur = times.service_s(max(busy, 1))
        # next event of each process: (time, kind)
        best, who, kind = math.inf, None, ""
        for p in procs:
            if p.done:
                continue
            if not p.started:
                cand = [(p.ws, "start")]
            else:
                cand = []
                if p.job is not None:
                    left = p.job[2]
                    cand.append((t + left * dur, "finish"))
                    if math.isnan(p.job[3]) and left > 1.0 - times.ttft_fraction:
                        cand.append((t + (left - (1.0 - times.ttft_fraction)) * dur, "first"))
                if p.ai < len(p.arr):
                    cand.append((p.arr[p.ai], "arrive"))
                if p.job is None and not (p.ai < len(p.arr) and p.arr[p.ai] < p.ws + WINDOW_S):
                    cand.append((p.ws + WINDOW_S, "end"))
            for c_t, c_k in cand:
                if c_t < best:
                    best, who, kind = c_t, p, c_k
        dt = max(0.0, best - t)
        for p in procs:
            if p.job is not None:
                p.job[2] -= dt / dur
        t = best
        p = who
        if kind == "start":
            p.open(t)
        elif kind == "first":
            p.job[3] = t
        elif kind == "arrive":
            p.queue.append(p.arr[p.ai])
            p.ai += 1
        elif kind == "finish":
            a, d, _, f = p.job
            p.cur[0].append(t - d)
            p.cur[1].append(d - a)
            p.cur[2].append((f if not math.isnan(f) else t) - d)
            p.job = None
            if t >= p.ws + WINDOW_S - eps:
                p.close(t)
        elif kind == "end":
            p.close(t)
        if p.started and not p.done and p.job is None and p.queue and t < p.ws + WINDOW_S:
            p.job = [p.queue.pop(0), t, 1.0, math.nan]
    return [log for p in procs for log in p.logs]


def aligned_protocol(rate: float, seed: int, times: MigTimes, processes: int = 2) -> list[WindowLog]:
    """moesim's protocol: one rate, every process's window starting idle at the same instant, no warm-up."""
    return simulate_protocol([(rate,)] * processes, seed, times)


def paper_protocol(seed: int, times: MigTimes, offset_s: float = 0.0) -> list[WindowLog]:
    """The code's protocol: both MIG processes run ``WARMUP + RATES``; the second starts ``offset_s`` later.

    The warm-up windows are returned too (``warmup``); the code overwrote their files with the real
    λ = 0.05 window, so :func:`per_rate` leaves them out.
    """
    sched = WARMUP + RATES
    return simulate_protocol([sched, sched], seed, times, offsets_s=[0.0, offset_s], warmup=len(WARMUP))


@dataclass(frozen=True)
class RateStats:
    """The paper's aggregate at one rate over some runs (seconds, req/min)."""

    rate: float
    n: int
    turnaround_s: float
    ttft_s: float
    wait_s: float
    throughput_rpm: float


def per_rate(runs: Sequence[Sequence[WindowLog]], n_processes: int = 2) -> dict[float, RateStats]:
    """Aggregate as the code's plotters do: per rate, means over every served request of every run and
    process (= TTFT_plotter's request-weighted per-window means); throughput = Σ over processes of the mean
    over runs (qos_plotter: MIG1 + MIG2). NaN means where nothing was served."""
    out: dict[float, RateStats] = {}
    wins = [w for logs in runs for w in logs if not w.warmup]
    for rate in sorted({w.rate for w in wins}):
        ws = [w for w in wins if w.rate == rate]
        tt = [x for w in ws for x in w.turnaround_s]
        ft = [x for w in ws for x in w.ttft_s]
        wt = [x for w in ws for x in w.wait_s]
        thr = sum(w.throughput_rpm for w in ws) / max(1, len(runs))
        out[rate] = RateStats(rate, len(tt), _mean(tt), _mean(ft), _mean(wt), thr)
    return out


def _mean(v: Sequence[float]) -> float:
    return float(np.mean(v)) if len(v) else math.nan


def pooled_reduction(ours: Sequence[tuple[float, int]], mig: Sequence[tuple[float, int]]) -> float:
    """The paper's headline (TTFT_plotter.py): ``1 − pooled ours / pooled mig``, each pooled over every
    window with a served request as ``Σ n·mean / Σ n`` (``(mean turnaround, requests served)`` pairs)."""

    def pool(v: Sequence[tuple[float, int]]) -> float:
        n = sum(k for _, k in v if k > 0)
        return sum(m * k for m, k in v if k > 0) / n

    return 1.0 - pool(ours) / pool(mig)


def _estimates(times: MigTimes, reps: int, runs: int, offset_s: float | None) -> np.ndarray:
    """``reps`` × rates × (turnaround, TTFT, wait, throughput, served): the paper's aggregate of ``runs``
    runs, repeated ``reps`` times (``offset_s`` None: moesim's aligned protocol, one rate at a time)."""
    out = np.full((reps, len(RATES), 5), np.nan)
    for r in range(reps):
        if offset_s is None:
            all_runs = [[w for rate in RATES for w in aligned_protocol(rate, (r * runs + k) * 64 + RATES.index(rate),
                                                                        times)] for k in range(runs)]
        else:
            all_runs = [paper_protocol(r * runs + k, times, offset_s) for k in range(runs)]
        st = per_rate(all_runs)
        for i, rate in enumerate(RATES):
            s = st.get(rate)
            if s is not None:
                out[r, i] = (s.turnaround_s, s.ttft_s, s.wait_s, s.throughput_rpm, s.n)
    return out


def study(times: MigTimes, reps: int = 400, runs: int = RUNS, offsets_s: Sequence[float] = (0.0, 60.0, 150.0, 300.0),
          reference: Sequence[float] | None = None):
    """The MIG curve as the paper's code measures it, per rate, with the spread of a ``runs``-run estimate.

    Columns (seconds, req/min): ``aligned`` — moesim's protocol (both instances start each rate idle
    together), ``protocol`` — the code's (two processes with their own schedules and warm-ups, launched
    together), both in expectation (the mean of ``reps`` ``runs``-run estimates, aggregated as the code's
    plotters); ``p5``/``p50``/``p95`` of one ``runs``-run estimate under the code's protocol; ``within10`` the
    share of estimates within ±10 % of its expectation; ``all_alone`` the share equal to a lone request's
    time (no two requests ever overlapped); ``served`` the requests a ``runs``-run estimate rests on;
    ``protocol_<offset>`` the expectation when the second process starts ``offset`` s later (the paper does
    not say; not fitted); TTFT, wait and throughput under the code's protocol; with ``reference`` (the paper's
    values per rate), ``below_reference`` = the share of estimates under it.
    """
    import pandas as pd

    aligned = _estimates(times, reps, runs, None)
    proto = {o: _estimates(times, reps, runs, o) for o in offsets_s}
    base = proto[offsets_s[0]]
    tt = base[:, :, 0]
    exp = np.nanmean(tt, axis=0)
    df = pd.DataFrame({
        "rate": RATES,
        "aligned": np.nanmean(aligned[:, :, 0], axis=0),
        "protocol": exp,
        "p5": np.nanpercentile(tt, 5, axis=0),
        "p50": np.nanpercentile(tt, 50, axis=0),
        "p95": np.nanpercentile(tt, 95, axis=0),
        "within10": np.mean(np.abs(tt - exp) <= 0.1 * exp, axis=0),
        "all_alone": np.mean(np.abs(tt - times.alone_s) < 1e-6, axis=0),
        "served": np.nanmean(base[:, :, 4], axis=0),
        "ttft": np.nanmean(base[:, :, 1], axis=0),
        "wait": np.nanmean(base[:, :, 2], axis=0),
        "throughput_rpm": np.nanmean(base[:, :, 3], axis=0),
        "aligned_ttft": np.nanmean(aligned[:, :, 1], axis=0),
        "aligned_wait": np.nanmean(aligned[:, :, 2], axis=0),
        "aligned_throughput_rpm": np.nanmean(aligned[:, :, 3], axis=0),
    })
    for o in offsets_s[1:]:
        df[f"protocol_{o:g}"] = np.nanmean(proto[o][:, :, 0], axis=0)
    if reference is not None:
        ref = np.asarray(reference, dtype=float)
        df["reference"] = ref
        df["below_reference"] = np.mean(tt < ref, axis=0)
    return df


def joint_share_at_least(times: MigTimes, reference: Sequence[float], reps: int = 400, runs: int = RUNS,
                         offset_s: float | None = 0.0, first: int = 3) -> float:
    """Share of ``runs``-run estimates at or above ``reference`` at each of the ``first`` lowest rates at once
    (``offset_s`` None: moesim's aligned protocol): how often one experiment lands where the paper's did."""
    est = _estimates(times, reps, runs, offset_s)[:, :first, 0]
    ref = np.asarray(reference, dtype=float)[:first]
    return float(np.mean(np.all(est >= ref, axis=1)))
