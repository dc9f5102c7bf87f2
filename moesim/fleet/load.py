"""Expected load per variant and what one GPU can carry: the inputs placement strategies plan from.

Estimates, not simulations: a GPU's capacity (requests/s) under a policy is
``Σ_instances max_batch / (max_batch · prefill_s + mean_output · decode_step_s)``, the steps timed by the
cost model at the instance's layout for ``k`` tenants (so consolidation, host-resident experts and MIG slices
count), and a GPU whose policy cannot lay out ``k`` tenants (memory) carries none. Attainment of a GPU at
load λ and capacity μ is estimated as an M/M/1 queue's P(wait ≤ slack), ``slack`` the TTFT target:
``1 − ρ·exp(−μ(1 − ρ)·slack)`` for ρ = λ/μ < 1, else 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moesim.cost.base import SeqWork
from moesim.errors import UserError
from moesim.fleet.spec import FleetGPU
from moesim.slo import SLO_TTFT_S
from moesim.specs import ModelSpec
from moesim.workloads.request import Request


@dataclass(frozen=True)
class TenantLoad:
    """Expected load of each tenant.

    Attributes:
        rates: requests/s per tenant (index = tenant id).
        mean_prompt_tokens, mean_output_tokens: over all requests.
    """

    rates: tuple[float, ...]
    mean_prompt_tokens: float = 20.0
    mean_output_tokens: float = 25.0

    @property
    def n_tenants(self) -> int:
        """Tenants."""
        return len(self.rates)

    @classmethod
    def of(cls, requests: Sequence[Request], n_tenants: int, horizon_s: float) -> TenantLoad:
        """Measured from a request list over ``horizon_s`` seconds."""
        counts = np.zeros(n_tenants)
        prompt = output = 0
        for r in requests:
            if r.tenant < n_tenants:
                counts[r.tenant] += 1
            prompt += r.prompt_tokens
            output += r.output_tokens
        n = max(1, len(requests))
        span = horizon_s if horizon_s and horizon_s > 0 else max((r.arrival_s for r in requests), default=1.0)
        return cls(tuple(float(c / max(span, 1e-9)) for c in counts), prompt / n, output / n)


@dataclass
class PlacementProblem:
    """Everything a strategy may read. ``capacity`` and ``max_tenants`` are memoised per GPU type.

    Attributes:
        model: the model every variant fine-tunes.
        gpus: the fleet's GPUs.
        load: expected per-tenant load.
        policy: the job's policy name and config dataclass (each GPU runs it unless a file says otherwise).
        cost: the cost model's name and config (one model built per GPU type).
        slo_ttft_s: TTFT target (seconds), for attainment estimates.
    """

    model: ModelSpec
    gpus: list[FleetGPU]
    load: TenantLoad
    policy_name: str
    policy_cfg: Any
    cost_name: str
    cost_cfg: Any
    slo_ttft_s: float = SLO_TTFT_S
    _cap: dict[tuple[str, int], float] = field(default_factory=dict, repr=False)
    _costs: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_tenants(self) -> int:
        """Tenants to place."""
        return self.load.n_tenants

    def _cost(self, gpu: FleetGPU) -> Any:
        from moesim.cost import COST_MODELS

        c = self._costs.get(gpu.spec.name)
        if c is None:
            c = self._costs[gpu.spec.name] = COST_MODELS.build(self.cost_name, self.cost_cfg, model=self.model,
                                                               gpu=gpu.spec)
        return c

    def capacity(self, gpu: FleetGPU, k: int) -> float:
        """Requests/s ``gpu`` sustains holding ``k`` tenants (0 when the policy cannot lay them out)."""
        key = (gpu.spec.name, k)
        if key not in self._cap:
            self._cap[key] = self._capacity(gpu, k)
        return self._cap[key]

    def _capacity(self, gpu: FleetGPU, k: int) -> float:
        from moesim.policies import POLICIES

        if k < 1:
            return 0.0
        try:
            plans = POLICIES.build(self.policy_name, self.policy_cfg).layout(self.model, gpu.spec, k)
        except UserError:
            return 0.0
        cost = self._cost(gpu)
        p_tok = max(1, round(self.load.mean_prompt_tokens))
        o_tok = max(1.0, self.load.mean_output_tokens)
        total = 0.0
        for plan in plans:
            if not plan.ideal and plan.weight_bytes > plan.memory_bytes:
                return 0.0
            b = max(1, plan.max_batch)
            t = min(plan.tenants) if plan.tenants else 0
            prefill = cost.step((SeqWork(t, p_tok, 0),), plan.residency).total_s
            ctx = p_tok + int(o_tok / 2)
            decode = cost.step(tuple(SeqWork(t, 1, ctx) for _ in range(b)), plan.residency).total_s
            per_req = prefill + (o_tok - 1) * decode / b
            total += 1.0 / per_req if per_req > 0 else 0.0
        return total

    def max_tenants(self, gpu: FleetGPU) -> int:
        """Most tenants the policy lays out on ``gpu`` (memory), at most all of them."""
        lo = 0
        for k in range(1, self.n_tenants + 1):
            if self.capacity(gpu, k) <= 0:
                break
            lo = k
        return lo


def attainment(rate: float, capacity: float, slack_s: float) -> float:
    """Estimated share of requests within the TTFT target on a GPU at ``rate`` of ``capacity`` (M/M/1)."""
    if rate <= 0:
        return 1.0
    if capacity <= 0 or rate >= capacity:
        return 0.0
    rho = rate / capacity
    return 1.0 - rho * math.exp(-capacity * (1.0 - rho) * max(0.0, slack_s))
