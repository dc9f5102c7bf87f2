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
    @abstractmethod
    def horizon_s(self) -> float:
        """Duration the workload spans (seconds from 0): every arrival_s lies in [0, horizon_s]."""

    @abstractmethod
    def generate(self, seed: int) -> list[Request]:
        """Requests sorted by arrival_s, ids dense 0..n-1 in arrival order, deterministic for ``seed``."""


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


def check_int(workload: str, field: str, value: Any, minimum: int) -> None:
    """``value`` must be an integer ≥ ``minimum``."""
    if not _is_int(value) or value < minimum:
        raise invalid(workload, field, value, f"an integer ≥ {minimum}")


def check_real(workload: str, field: str, value: Any, minimum: float, *, strict: bool, unit: str) -> None:
    """``value`` must be a finite number > ``minimum`` (``strict``) or ≥ ``minimum``."""
    ok = _is_real(value) and math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        raise invalid(workload, field, value, f"a finite number {'>' if strict else '≥'} {minimum} ({unit})")


def check_choice(workload: str, field: str, value: Any, choices: tuple[str, ...]) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise invalid(workload, field, value, ", ".join(repr(c) for c in choices))
