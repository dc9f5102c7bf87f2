"""Test helpers: requests built directly (independent of the workload generators)."""

from __future__ import annotations

import numpy as np

from moesim.workloads.request import Request


def poisson_requests(rate: float, n: int, *, tenants: int = 1, prompt: int = 20, output: int = 25,
                     seed: int = 0) -> list[Request]:
    """``n`` requests of one merged Poisson stream of total rate ``rate`` (req/s), tenants round-robin."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, size=n))
    return [Request(i, i % tenants, float(t[i]), prompt, output) for i in range(n)]
