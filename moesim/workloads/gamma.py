"""``gamma``: per-tenant renewal streams with Gamma-distributed inter-arrival gaps of a given coefficient of
variation — cv = 1 is Poisson, cv > 1 bursty, cv < 1 smoother than Poisson."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.workloads import WORKLOADS
from moesim.workloads.base import check_real
from moesim.workloads.poisson import Poisson, PoissonConfig


@dataclass(frozen=True)
class GammaConfig(PoissonConfig):
    """As ``PoissonConfig`` plus ``cv``: std / mean of each tenant's inter-arrival gaps (> 0)."""

    name: str = "gamma"
    cv: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_real(self.name, "cv", self.cv, 0.0, strict=True, unit="coefficient of variation; 1 = Poisson")


@WORKLOADS.register("gamma", GammaConfig)
class Gamma(Poisson):
    """Gamma gaps with shape 1/cv² and scale cv²/rate (mean 1/rate, std cv/rate)."""

    cfg: GammaConfig

    def _burst_hint(self) -> str:
        return f"cv={self.cfg.cv:g} makes the arrivals bursty"

    def _gaps(self, rng: np.random.Generator, rate: float, n: int) -> np.ndarray:
        if self.cfg.cv == 1.0:  # exactly the Poisson workload for the same seed
            return super()._gaps(rng, rate, n)
        shape = 1.0 / self.cfg.cv**2
        return rng.gamma(shape, 1.0 / (rate * shape), n)
