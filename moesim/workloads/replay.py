"""Replaying a recorded trace: time scaling, truncation and tenant assignment shared by ``azure_conv``,
``azure_code`` and ``trace``."""

from __future__ import annotations

import warnings
from abc import abstractmethod
from dataclasses import dataclass

import numpy as np

from moesim.errors import UserError
from moesim.workloads.base import (
    MAX_HORIZON_S,
    MAX_TENANTS,
    STREAM_TENANTS,
    Workload,
    build_requests,
    check_choice,
    check_int,
    check_real,
    invalid,
    stream,
)
from moesim.workloads.request import Request
from moesim.workloads.tenants import ASSIGNMENTS, assign_tenants

MIN_TIME_SCALE = 1e-9  # a smaller factor squeezes an hour of trace into microseconds
MAX_RATE_PER_S = 1e6  # requests/s per tenant, beyond any server


@dataclass(frozen=True, eq=False)
class TraceArrays:
    """A parsed trace, sorted by time. Arrays are read-only (they may be cached and shared).

    Attributes:
        source: the file it came from (for messages).
        arrival_s: arrival times, seconds, non-decreasing (float64).
        prompt_tokens, output_tokens: token counts ≥ 1 (int64).
        tenant: tenant ids (int64) when the file has a tenant column, else None.
        tenant_names: the names of tenants 0..k-1 when the file's tenant column holds names (ids are given
            in order of first appearance), else None.
        skipped: rows of the file left out (e.g. BurstGPT's failed requests), with ``skip_reason``.
    """

    source: str
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    tenant: np.ndarray | None = None
    tenant_names: tuple[str, ...] | None = None
    skipped: int = 0
    skip_reason: str = ""

    def __post_init__(self) -> None:
        for arr in (self.arrival_s, self.prompt_tokens, self.output_tokens, self.tenant):
            if arr is not None:
                arr.setflags(write=False)

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def span_s(self) -> float:
        """Time from the first to the last arrival (seconds)."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0

    @property
    def mean_rate_per_s(self) -> float:
        """Requests over span: ``len / span_s`` (requests/s); 0 when the span is 0."""
        return len(self) / self.span_s if self.span_s > 0 else 0.0


@dataclass(frozen=True)
class ReplayConfig:
    """Replay of a trace (all times in seconds, rates in requests/s).

    Attributes:
        tenants: requests are spread over tenants 0..tenants-1 (unless the file has a tenant column).
        assignment: ``round_robin`` (request i → tenant i mod tenants), ``uniform`` or ``zipf``.
        zipf_s: Zipf exponent for ``assignment="zipf"`` (tenant 0 most popular; 0 = uniform).
        time_scale: multiplies every timestamp (> 1 stretches the trace, lowering the rate).
        rate: mean arrival rate PER TENANT; when > 0 it overrides ``time_scale`` so that the whole trace's
            mean total rate (requests / span) becomes ``rate × tenants``. 0 = use ``time_scale``.
        duration_s: keep arrivals before this time (after scaling); 0 = the whole trace (the default).
        max_requests: keep at most this many (the earliest); 0 = all (the default).

    Scaling must keep the replay meaningful: the scaled trace may span at most ``MAX_HORIZON_S`` seconds,
    ``time_scale`` is at least ``MIN_TIME_SCALE`` and ``rate`` at most ``MAX_RATE_PER_S``.
    """

    name: str = "replay"
    tenants: int = 2
    assignment: str = "round_robin"
    zipf_s: float = 1.0
    time_scale: float = 1.0
    rate: float = 0.0
    duration_s: float = 0.0
    max_requests: int = 0

    def __post_init__(self) -> None:
        n = self.name
        check_int(n, "tenants", self.tenants, 1, MAX_TENANTS)
        check_choice(n, "assignment", self.assignment, ASSIGNMENTS)
        check_real(n, "zipf_s", self.zipf_s, 0.0, strict=False, unit="Zipf exponent")
        check_real(n, "time_scale", self.time_scale, MIN_TIME_SCALE, strict=False, unit="factor on timestamps")
        check_real(n, "rate", self.rate, 0.0, strict=False, maximum=MAX_RATE_PER_S,
                   unit="requests/s per tenant; 0 = use time_scale")
        check_real(n, "duration_s", self.duration_s, 0.0, strict=False, maximum=MAX_HORIZON_S,
                   unit="seconds; 0 = whole trace")
        check_int(n, "max_requests", self.max_requests, 0)


class IgnoredSettingWarning(UserWarning):
    """A setting the user gave that this workload does not use (it would be silently ignored)."""


class Replay(Workload):
    """Replays ``self.trace`` scaled and truncated as the config says; the seed only drives tenants."""

    cfg: ReplayConfig

    def __init__(self, cfg: ReplayConfig) -> None:
        super().__init__(cfg)
        self.trace = self._load()
        if len(self.trace) == 0:
            raise invalid(cfg.name, "trace", self.trace.source, "a trace with at least one request")
        if self.trace.tenant is not None and cfg.assignment != "round_robin":  # given, and silently ignored
            warnings.warn(f"workload={cfg.name}: assignment={cfg.assignment} is not used: {self.trace.source}'s "
                          "tenant column assigns the tenants (workload.columns.tenant=- ignores it, to assign "
                          "them instead)", IgnoredSettingWarning, stacklevel=2)
        if cfg.rate > 0:
            if self.trace.mean_rate_per_s <= 0:
                raise invalid(
                    cfg.name,
                    "rate",
                    cfg.rate,
                    # the default sweep set the rate; "use time_scale" cannot spread requests at one instant
                    f"0, the trace's own times (workload.rate=0; the default sweep sets its rates unless given "
                    f"one): {self.trace.source} spans 0 s, so it has no mean rate to scale to",
                )
            self.time_scale = self.trace.mean_rate_per_s / (cfg.rate * cfg.tenants)
        else:
            self.time_scale = float(cfg.time_scale)
        with np.errstate(over="ignore"):
            arrival_s = self.trace.arrival_s * self.time_scale
        end_s = float(arrival_s[-1])
        if not end_s <= MAX_HORIZON_S:  # also catches inf/nan
            knob = f"rate={cfg.rate:g}" if cfg.rate > 0 else f"time_scale={cfg.time_scale:g}"
            raise UserError(
                f"workload={cfg.name}: {knob} stretches {self.trace.source}'s {self.trace.span_s:,.0f} s to "
                f"{end_s:.3g} s, more than {MAX_HORIZON_S:g} s; valid: time_scale ≤ "
                f"{MAX_HORIZON_S / max(self.trace.span_s, 1e-300):.3g} (or rate ≥ "
                f"{self.trace.mean_rate_per_s * self.trace.span_s / MAX_HORIZON_S / cfg.tenants:.3g})"
            )
        n = len(arrival_s)
        self.cut = "whole trace"
        if cfg.duration_s > 0:
            n = int(np.searchsorted(arrival_s, cfg.duration_s, side="left"))
            end_s = min(end_s, float(cfg.duration_s))
            if n < len(arrival_s):
                self.cut = f"cut at workload.duration_s={cfg.duration_s:g}"
        if 0 < cfg.max_requests < n:
            n = cfg.max_requests
            end_s = float(arrival_s[n - 1])
            self.cut = f"cut at workload.max_requests={cfg.max_requests:,}"
        if n == 0:
            raise UserError(
                f"workload={cfg.name}: duration_s={cfg.duration_s:g} keeps no request of {self.trace.source} "
                f"(its first arrives at {float(arrival_s[0]):g} s after scaling); valid: duration_s > "
                f"{float(arrival_s[0]):g} or 0 (whole trace)"
            )
        self._arrival_s = arrival_s[:n]
        self._horizon_s = end_s

    @abstractmethod
    def _load(self) -> TraceArrays:
        """The trace to replay (validated, sorted)."""

    @property
    def horizon_s(self) -> float:
        """End of the replayed window (seconds): ``duration_s`` when it cuts the trace, the last kept
        arrival when ``max_requests`` cuts it, else the scaled time of the trace's last request."""
        return self._horizon_s

    @property
    def tenant_names(self) -> tuple[str, ...] | None:
        """The trace's tenant names (ids in order of first appearance), if its tenant column holds names."""
        return self.trace.tenant_names

    @property
    def rate_per_tenant(self) -> float:
        """The configured ``rate``, or with ``rate=0`` (the trace's own times) the rate it replays: requests kept
        over the replayed span, per tenant (requests/s; 0 when the span is 0)."""
        if self.cfg.rate > 0:
            return float(self.cfg.rate)
        n = len(self._arrival_s)
        return n / self._horizon_s / self.tenants if self._horizon_s > 0 and self.tenants > 0 else 0.0

    def selection(self, n_requests: int) -> str:
        """E.g. ``replaying 1,445 of 19,366 requests of F (cut at workload.duration_s=300)``."""
        t = self.trace
        in_file = len(t) + t.skipped
        why = self.cut
        if t.skipped:
            why += f"; skipped {t.skipped:,} {t.skip_reason}"
        scale = f", time_scale {self.time_scale:.4g}" if self.time_scale != 1.0 else ""
        return (f"replaying {n_requests:,} of {in_file:,} request{'s' if in_file != 1 else ''} of {t.source} ({why}{scale}; "
                f"{self._horizon_s:,.1f} s){self._idle_tenants()}")

    def _idle_tenants(self) -> str:
        """``"; no request for tenant 1 of workload.tenants=2 ..."`` when the file's tenant column leaves some of
        the configured tenants without a replayed request (a trace naming 1 tenant, run with the default 2:
        ``policy=mig`` gave the idle tenant half the GPU, with nothing said); ``""`` otherwise."""
        if self.trace.tenant is None:
            return ""
        used = {int(v) for v in np.unique(self.trace.tenant[: len(self._arrival_s)])}
        idle = [t for t in range(self.tenants) if t not in used]
        if not idle:
            return ""
        names = self.trace.tenant_names
        has = (f"the trace's tenants: {', '.join(names)}" if names is not None
               else f"the replayed rows name tenant{'s' if len(used) != 1 else ''} {', '.join(map(str, sorted(used)))}")
        shown = ", ".join(map(str, idle[:8])) + (", …" if len(idle) > 8 else "")
        return (f"; no request for tenant{'s' if len(idle) > 1 else ''} {shown} of workload.tenants={self.tenants} "
                f"({has}): it still takes its place on the GPU; workload.tenants={len(used)} serves only the trace's"
                if len(used) and max(used) < len(used) else
                f"; no request for tenant{'s' if len(idle) > 1 else ''} {shown} of workload.tenants={self.tenants} "
                f"({has}): it still takes its place on the GPU")

    def generate(self, seed: int) -> list[Request]:
        """The trace's requests in order, times scaled; tenants from the file or assigned by the config."""
        n = len(self._arrival_s)
        if self.trace.tenant is not None:
            tenant = self.trace.tenant[:n]
        else:
            c = self.cfg
            tenant = assign_tenants(n, c.tenants, c.assignment, c.zipf_s, stream(seed, STREAM_TENANTS))
        return build_requests(
            self._arrival_s, tenant, self.trace.prompt_tokens[:n], self.trace.output_tokens[:n]
        )
