"""What every workload shares: the ``Workload`` interface, seeded streams, and building the request list.

A workload is a small class built from a frozen config dataclass; ``generate(seed)`` returns the requests
sorted by arrival time (seconds) with ids dense 0..n-1 in arrival order, identical for identical seeds.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from moesim.errors import UserError
from moesim.workloads.request import Request

# Independent random streams of one seed, keyed by purpose, so that e.g. tenant 3's arrival times do not
# change when the token lengths are drawn differently or a tenant is added.
STREAM_ARRIVALS = 0
STREAM_TOKENS = 1
STREAM_TENANTS = 2

# Bounds that keep every number a workload produces meaningful (and inside int64/float64 arithmetic).
MAX_TOKENS = 2**31 - 1  # tokens per prompt or output: far beyond any model's context, safe in int64 sums
MAX_HORIZON_S = 1e9  # seconds (~32 years): a longer arrival window is a unit mistake, not a workload
MAX_TENANTS = 100_000  # tenants of one workload (each gets its own random stream and plan entries)
DEFAULT_MAX_REQUESTS = 5_000_000  # requests a synthetic workload may generate (workload.max_requests)


def stream(seed: int, purpose: int, index: int = 0) -> np.random.Generator:
    """A generator for ``(seed, purpose, index)``, independent of every other key."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(purpose, index)))


class Workload(ABC):
    """A source of requests. ``cfg`` is the workload's frozen config dataclass."""

    registry_name: ClassVar[str]

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @property
    def tenants(self) -> int:
        """Number of tenants (fine-tuned variants); requests carry tenant ids 0..tenants-1."""
        return int(self.cfg.tenants)

    @property
    def rate_per_tenant(self) -> float:
        """Mean arrival rate per tenant that the workload offers (requests/s): the configured ``rate``."""
        return float(getattr(self.cfg, "rate", float("nan")))

    @property
    @abstractmethod
    def horizon_s(self) -> float:
        """Duration the workload spans (seconds from 0): every arrival_s lies in [0, horizon_s]."""

    @abstractmethod
    def generate(self, seed: int) -> list[Request]:
        """Requests sorted by arrival_s, ids dense 0..n-1 in arrival order, deterministic for ``seed``."""

    def selection(self, n_requests: int) -> str:
        """The one line a run prints about what it serves (``n_requests``: what ``generate`` returned)."""
        return (f"workload={self.cfg.name}: generated {n_requests:,} requests over {self.horizon_s:g} s "
                f"({self.tenants} tenant{'s' if self.tenants != 1 else ''})")

    @property
    def tenant_names(self) -> tuple[str, ...] | None:
        """Names of tenants 0..k-1 when the source named them (a trace's string tenant column), else None."""
        return None


def build_requests(
    arrival_s: np.ndarray, tenant: np.ndarray, prompt_tokens: np.ndarray, output_tokens: np.ndarray
) -> list[Request]:
    """Sort by arrival_s (stable: ties keep their input order) and number the requests 0..n-1."""
    order = np.argsort(arrival_s, kind="stable")
    return list(
        map(
            Request,
            range(len(order)),
            tenant[order].tolist(),
            arrival_s[order].astype(np.float64).tolist(),
            prompt_tokens[order].tolist(),
            output_tokens[order].tolist(),
        )
    )


# --- config validation: one line naming the workload, the field, the value and what would be valid ---


def invalid(workload: str, field: str, value: Any, valid: str) -> UserError:
    """The error for a bad config value."""
    return UserError(f"workload={workload}: {field}={value!r} is invalid; valid: {valid}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def check_int(workload: str, field: str, value: Any, minimum: int, maximum: int | None = None,
              why: str = "") -> None:
    """``value`` must be an integer ≥ ``minimum`` (and ≤ ``maximum`` when given; ``why`` says why)."""
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        valid = f"an integer ≥ {minimum}" if maximum is None else f"an integer in {minimum}..{maximum:,}"
        raise invalid(workload, field, value, valid + (f" ({why})" if why else ""))


def check_real(workload: str, field: str, value: Any, minimum: float, *, strict: bool, unit: str,
               maximum: float | None = None) -> None:
    """``value`` must be a finite number > ``minimum`` (``strict``) or ≥ ``minimum``, and ≤ ``maximum``."""
    ok = _is_real(value) and math.isfinite(value) and (value > minimum if strict else value >= minimum)
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        top = f" and ≤ {maximum:g}" if maximum is not None else ""
        raise invalid(workload, field, value, f"a finite number {'>' if strict else '≥'} {minimum}{top} ({unit})")


def check_choice(workload: str, field: str, value: Any, choices: tuple[str, ...]) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        from moesim.errors import did_you_mean

        near = did_you_mean(str(value), [c for c in choices if c]) if isinstance(value, str) else ""
        raise UserError(f"workload={workload}: {field}={value!r} is invalid{near}; valid: "
                        + ", ".join(repr(c) for c in choices))
