"""Queueing-theory closed forms: FIFO, batch size 1, one tenant, Poisson arrivals.

Requests produce one token, so a request's service is its prefill alone and the server is M/G/1.
Pollaczek–Khinchine: mean wait W = λ E[S²] / (2 (1 − ρ)), ρ = λ E[S].
  M/D/1 (S = D): W = ρ D / (2 (1 − ρ));  M/M/1 (S ~ Exp(mean D)): W = ρ D / (1 − ρ).
"""

from __future__ import annotations

import pytest
from simtools import poisson_requests

from moesim.cost import COST_MODELS
from moesim.engine import simulate
from moesim.metrics import summarize
from moesim.policies import POLICIES
from moesim.specs import get_gpu, get_model

N = 50_000  # requests per replication
REPS = 3  # independent replications, averaged (M/M/1: more, its wait estimator has ~4x the variance)
D = 0.5  # seconds of service


def _run(dist: str, rho: float, seed: int, reps: int = REPS) -> dict:
    """Mean wait and service over REPS replications of N requests (arrival and service streams independent)."""
    model, gpu = get_model("mixtral-8x7b"), get_gpu("h200")
    waits, services = [], []
    for rep in range(reps):
        cost = COST_MODELS.build("constant", {"prefill_s": D, "decode_step_s": 0.0, "service_dist": dist,
                                              "seed": 1000 + 7 * seed + rep}, model=model, gpu=gpu)
        pol = POLICIES.build("dedicated", {"max_batch": 1})
        reqs = poisson_requests(rho / D, N, prompt=20, output=1, seed=seed * 100 + rep)
        res = simulate(model, gpu, pol, cost, reqs)
        s = summarize(res.requests, res.segments)
        assert s["n_requests"] == N
        waits.append(s["mean_queue_wait_s"])
        services.append(s["mean_service_s"])
    return {"mean_queue_wait_s": sum(waits) / reps, "mean_service_s": sum(services) / reps}


@pytest.mark.slow
@pytest.mark.parametrize("rho", [0.3, 0.5])
def test_md1_mean_wait_matches_pollaczek_khinchine(rho: float) -> None:
    s = _run("deterministic", rho, seed=11)
    expected = rho * D / (2 * (1 - rho))
    assert s["mean_queue_wait_s"] == pytest.approx(expected, rel=0.02)
    assert s["mean_service_s"] == pytest.approx(D, rel=1e-12)


@pytest.mark.slow
def test_mm1_mean_wait() -> None:
    rho = 0.5
    s = _run("exponential", rho, seed=5, reps=10)
    expected = rho * D / (1 - rho)
    assert s["mean_queue_wait_s"] == pytest.approx(expected, rel=0.02)
    assert s["mean_service_s"] == pytest.approx(D, rel=0.02)
