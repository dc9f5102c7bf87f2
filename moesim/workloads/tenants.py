"""Which tenant each request of a trace goes to: round-robin, uniform or Zipf popularity."""

from __future__ import annotations

import numpy as np

ASSIGNMENTS = ("round_robin", "uniform", "zipf")


def zipf_weights(tenants: int, zipf_s: float) -> np.ndarray:
    """Popularity of tenants 0..tenants-1 under Zipf's law: weight ∝ 1 / (i + 1) ** zipf_s, summing to 1.

    Tenant 0 is the most popular; ``zipf_s = 0`` is uniform.
    """
    w = 1.0 / np.arange(1, tenants + 1, dtype=np.float64) ** zipf_s
    return w / w.sum()


def assign_tenants(
    n_requests: int, tenants: int, assignment: str, zipf_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Tenant ids for ``n_requests`` requests taken in arrival order.

    ``round_robin``: request i → tenant i mod tenants (exact, no randomness); ``uniform``: independent and
    equally likely; ``zipf``: independent with probabilities ``zipf_weights(tenants, zipf_s)``.
    """
    if assignment == "round_robin":
        return np.arange(n_requests, dtype=np.int64) % tenants
    if assignment == "uniform":
        return rng.integers(0, tenants, size=n_requests, dtype=np.int64)
    if assignment == "zipf":
        return rng.choice(tenants, size=n_requests, p=zipf_weights(tenants, zipf_s)).astype(np.int64)
    raise ValueError(f"unknown assignment {assignment!r}; valid: {', '.join(ASSIGNMENTS)}")
