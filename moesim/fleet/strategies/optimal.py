"""``optimal``: the assignment minimising the most loaded GPU's utilisation, solved exactly (MILP, HiGHS).

On the expected load: binary x[v,g] (variant v on GPU g), load shares y[v,g] ∈ [0, 1] with Σ_g y[v,g] = 1
and y ≤ x, at most K_g variants on GPU g (memory: what the policy lays out), and
Σ_v λ_v·y[v,g] ≤ U·μ_g, μ_g the GPU's estimated capacity holding ⌈V/G⌉ variants (at least one).
Minimise U + ``replica_cost``·Σ x (fewer copies break ties). Solved by ``scipy.optimize.milp`` (HiGHS)
within ``time_limit_s``; sizes beyond ``max_binaries`` variables are refused (use greedy_slo or pack).
The routers then share each variant's load live; the y shares are the plan, not a routing table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moesim.errors import UserError
from moesim.fleet.load import PlacementProblem
from moesim.fleet.placement import Placement
from moesim.fleet.strategies import PLACEMENTS
from moesim.fleet.strategies.base import Strategy, StrategyConfig, from_assignment


@dataclass(frozen=True)
class OptimalConfig(StrategyConfig):
    """Attributes:
    time_limit_s: solver time limit (seconds); the best assignment found by then is used.
    replica_cost: objective weight per variant copy (utilisation units).
    max_binaries: largest variants × GPUs solved.
    """

    name: str = "optimal"
    time_limit_s: float = 20.0
    replica_cost: float = 1e-3
    max_binaries: int = 4096

    def __post_init__(self) -> None:
        for key, v in (("time_limit_s", self.time_limit_s), ("replica_cost", self.replica_cost)):
            strict = key == "time_limit_s"
            if not (isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 if strict else v >= 0)):
                raise UserError(f"placement.{key}={v!r}: must be a finite number {'>' if strict else '≥'} 0")
        if not (isinstance(self.max_binaries, int) and self.max_binaries >= 1):
            raise UserError(f"placement.max_binaries={self.max_binaries!r}: must be an integer ≥ 1")


@PLACEMENTS.register("optimal", OptimalConfig)
class Optimal(Strategy):
    """Min-max utilisation assignment by MILP."""

    def place(self, problem: PlacementProblem) -> Placement:
        """See the module docstring."""
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import lil_matrix

        V, gpus = problem.n_tenants, problem.gpus
        G = len(gpus)
        if self.cfg.max_binaries < V * G:
            raise UserError(f"placement=optimal: {V} variants × {G} GPUs = {V * G} binaries exceeds "
                            f"placement.max_binaries={self.cfg.max_binaries}; use placement=greedy_slo or pack")
        rates = np.asarray(problem.load.rates, dtype=float)
        kmax = np.array([problem.max_tenants(g) for g in gpus])
        if kmax.sum() < V:
            raise UserError(f"placement=optimal: the fleet holds at most {int(kmax.sum())} variants in memory, "
                            f"the workload has {V}")
        per = max(1, math.ceil(V / G))
        mu = np.array([problem.capacity(g, max(1, min(per, int(k)))) for g, k in zip(gpus, kmax, strict=True)])
        scale = float(rates.sum()) or 1.0
        nx = V * G
        # variables: x (V·G), y (V·G), U
        nv = 2 * nx + 1
        c = np.zeros(nv)
        c[:nx] = self.cfg.replica_cost
        c[-1] = 1.0
        rows = V + nx + G + G
        A = lil_matrix((rows, nv))
        lo, hi = np.zeros(rows), np.zeros(rows)
        r = 0
        for v in range(V):  # Σ_g y = 1
            for g in range(G):
                A[r, nx + v * G + g] = 1.0
            lo[r] = hi[r] = 1.0
            r += 1
        for i in range(nx):  # y − x ≤ 0
            A[r, nx + i] = 1.0
            A[r, i] = -1.0
            lo[r], hi[r] = -np.inf, 0.0
            r += 1
        for g in range(G):  # Σ_v x ≤ K_g
            for v in range(V):
                A[r, v * G + g] = 1.0
            lo[r], hi[r] = 0.0, float(kmax[g])
            r += 1
        for g in range(G):  # Σ_v λ_v y − U μ_g ≤ 0 (rates scaled to total 1)
            for v in range(V):
                A[r, nx + v * G + g] = rates[v] / scale
            A[r, -1] = -mu[g] / scale if mu[g] > 0 else -1e-9
            lo[r], hi[r] = -np.inf, 0.0
            r += 1
        integrality = np.zeros(nv)
        integrality[:nx] = 1
        ub = np.ones(nv)
        ub[-1] = np.inf
        for g in range(G):
            if kmax[g] < 1:
                for v in range(V):
                    ub[v * G + g] = 0.0
        res = milp(c, constraints=LinearConstraint(A.tocsr(), lo, hi), integrality=integrality,
                   bounds=Bounds(np.zeros(nv), ub), options={"time_limit": self.cfg.time_limit_s, "disp": False})
        if res.x is None:
            raise UserError(f"placement=optimal: the solver found no assignment ({res.message})")
        x = np.round(res.x[:nx]).reshape(V, G)
        y = res.x[nx:2 * nx].reshape(V, G)
        assign: dict[int, list[int]] = {g.index: [] for g in gpus}
        for v in range(V):
            for g in range(G):
                if x[v, g] > 0.5 and (y[v, g] > 1e-9 or x[v].sum() == 1):
                    assign[gpus[g].index].append(v)
        return from_assignment(assign, "optimal")
