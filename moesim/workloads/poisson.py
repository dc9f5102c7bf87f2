"""``poisson``: one independent Poisson arrival stream per tenant (the paper's QoS workload: two streams at
λ each, 20-token prompts, 25 generated tokens)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from moesim.errors import UserError
from moesim.workloads import WORKLOADS
from moesim.workloads.base import (
    DEFAULT_MAX_REQUESTS,
    MAX_HORIZON_S,
    MAX_TENANTS,
    MAX_TOKENS,
    STREAM_ARRIVALS,
    STREAM_TOKENS,
    Workload,
    build_requests,
    check_choice,
    check_int,
    check_real,
    stream,
)
from moesim.workloads.request import Request
from moesim.workloads.tenants import zipf_weights

POPULARITIES = ("equal", "zipf", "weights")
TOKEN_SOURCES = ("", "azure_conv", "azure_code")


@dataclass(frozen=True)
class PoissonConfig:
    """Synthetic arrivals over ``[0, duration_s)``.

    Attributes:
        rate: mean arrival rate PER TENANT (requests/s); the total is ``rate × tenants``.
        tenants: number of tenants (independent streams).
        duration_s: length of the arrival window (seconds).
        prompt_tokens, output_tokens: fixed token counts of every request (≥ 1).
        popularity: ``equal`` (every tenant at ``rate``) or ``zipf`` (tenant i at
            ``rate × tenants × w_i``, w_i ∝ 1/(i+1)^zipf_s, so the mean per tenant stays ``rate``).
        zipf_s: Zipf exponent (≥ 0) for ``popularity="zipf"``.
        weights: per-tenant popularity for ``popularity="weights"`` (one number ≥ 0 per tenant, not all 0):
            tenant i at ``rate × tenants × weights[i] / Σ weights``, e.g. ``[4, 1, 1]``.
        tokens_from: ``""`` (fixed counts) or a shipped trace (``azure_conv`` | ``azure_code``) whose
            (prompt, output) pairs are drawn jointly, uniformly with replacement, instead.
        max_requests: the most requests the workload may generate. A config whose expected count
            ``rate × tenants × duration_s`` exceeds it is refused before anything is drawn, and so is a
            draw that exceeds it (a bursty ``gamma`` stream); raise it to run bigger workloads.
    """

    name: str = "poisson"
    rate: float = 0.05
    tenants: int = 2
    duration_s: float = 300.0
    prompt_tokens: int = 20
    output_tokens: int = 25
    popularity: str = "equal"
    zipf_s: float = 1.0
    weights: tuple[float, ...] = ()
    tokens_from: str = ""
    max_requests: int = DEFAULT_MAX_REQUESTS

    def __post_init__(self) -> None:
        n = self.name
        check_real(n, "rate", self.rate, 0.0, strict=True, unit="requests/s per tenant")
        check_int(n, "tenants", self.tenants, 1, MAX_TENANTS)
        check_real(n, "duration_s", self.duration_s, 0.0, strict=True, unit="seconds", maximum=MAX_HORIZON_S)
        check_int(n, "prompt_tokens", self.prompt_tokens, 1, MAX_TOKENS)
        check_int(n, "output_tokens", self.output_tokens, 1, MAX_TOKENS)
        check_choice(n, "popularity", self.popularity, POPULARITIES)
        check_real(n, "zipf_s", self.zipf_s, 0.0, strict=False, unit="Zipf exponent")
        if self.popularity == "weights" or self.weights:
            w = list(self.weights)
            if (len(w) != self.tenants or any(not (isinstance(x, (int, float)) and math.isfinite(x) and x >= 0)
                                               for x in w) or not sum(w) > 0):
                raise UserError(f"workload={n}: weights={w} is invalid; valid: {self.tenants} numbers ≥ 0 (one per "
                                "tenant), not all 0, with popularity=weights")
        check_choice(n, "tokens_from", self.tokens_from, TOKEN_SOURCES)
        check_int(n, "max_requests", self.max_requests, 1)
        expected = self.rate * self.tenants * self.duration_s
        if expected > self.max_requests:
            raise UserError(
                f"workload={n}: rate={self.rate:g} × tenants={self.tenants} × duration_s={self.duration_s:g} "
                f"is {expected:,.0f} requests expected, more than max_requests={self.max_requests:,}; "
                "lower rate/duration_s or raise workload.max_requests"
            )


class TooManyRequestsError(Exception):
    """A stream drew more arrivals than it was allowed (``renewal_arrivals``' ``limit``)."""


def renewal_arrivals(draw_gaps: Callable[[int], np.ndarray], rate: float, duration_s: float,
                     limit: int | None = None) -> np.ndarray:
    """Arrival times in [0, duration_s) of a renewal process whose inter-arrival gaps ``draw_gaps(n)`` gives
    (mean 1/rate); the first arrival is one gap after 0. Gaps are drawn in chunks sized to the mean count.

    Raises ``TooManyRequestsError`` as soon as more than ``limit`` arrivals fall in the window, so a bursty
    stream's work and memory stay bounded by ``limit``."""
    expected = rate * duration_s
    chunk = int(expected + 5.0 * math.sqrt(expected) + 16)
    if limit is not None:
        chunk = min(chunk, limit + 1)
    parts: list[np.ndarray] = []
    kept = 0
    t0 = 0.0
    while True:
        times = t0 + np.cumsum(draw_gaps(chunk))
        done = times[-1] >= duration_s
        if done:
            times = times[times < duration_s]
        kept += len(times)
        if limit is not None and kept > limit:
            raise TooManyRequestsError
        parts.append(times)
        if done:
            return np.concatenate(parts)
        t0 = float(times[-1])


@WORKLOADS.register("poisson", PoissonConfig)
class Poisson(Workload):
    """Independent Poisson streams, one per tenant (exponential inter-arrival gaps)."""

    cfg: PoissonConfig

    @property
    def horizon_s(self) -> float:
        """``duration_s``: arrivals lie in [0, duration_s)."""
        return float(self.cfg.duration_s)

    @property
    def tenant_rates_per_s(self) -> np.ndarray:
        """Mean arrival rate of each tenant (requests/s); their mean is ``rate``."""
        c = self.cfg
        if c.popularity == "zipf":
            return c.rate * c.tenants * zipf_weights(c.tenants, c.zipf_s)
        if c.popularity == "weights":
            w = np.asarray(c.weights, dtype=np.float64)
            return c.rate * c.tenants * w / w.sum()
        return np.full(c.tenants, float(c.rate))

    def _burst_hint(self) -> str:
        """Why a draw may exceed its expected count (for the max_requests message)."""
        return "Poisson counts rarely exceed it by much"

    def _gaps(self, rng: np.random.Generator, rate: float, n: int) -> np.ndarray:
        """``n`` inter-arrival gaps (seconds) of a stream at ``rate``."""
        return rng.exponential(1.0 / rate, n)

    def generate(self, seed: int) -> list[Request]:
        """Each tenant's stream from its own seeded generator, merged in time order."""
        c = self.cfg
        arrival_parts, tenant_parts = [], []
        left = c.max_requests
        for i, rate in enumerate(self.tenant_rates_per_s.tolist()):
            rng = stream(seed, STREAM_ARRIVALS, i)
            try:
                times = renewal_arrivals(
                    lambda n, rng=rng, rate=rate: self._gaps(rng, rate, n), rate, c.duration_s, left
                )
            except TooManyRequestsError:
                raise UserError(
                    f"workload={c.name}: seed {seed} draws more than max_requests={c.max_requests:,} requests "
                    f"(expected {c.rate * c.tenants * c.duration_s:,.0f}; {self._burst_hint()}); "
                    "raise workload.max_requests or shorten duration_s"
                ) from None
            left -= len(times)
            arrival_parts.append(times)
            tenant_parts.append(np.full(len(times), i, dtype=np.int64))
        arrival_s = np.concatenate(arrival_parts)
        tenant = np.concatenate(tenant_parts)
        n = len(arrival_s)
        if c.tokens_from:
            from moesim.workloads.azure import load_shipped

            trace = load_shipped(c.tokens_from)
            rows = stream(seed, STREAM_TOKENS).integers(0, len(trace), size=n)
            prompt, output = trace.prompt_tokens[rows], trace.output_tokens[rows]
        else:
            prompt = np.full(n, c.prompt_tokens, dtype=np.int64)
            output = np.full(n, c.output_tokens, dtype=np.int64)
        return build_requests(arrival_s, tenant, prompt, output)
