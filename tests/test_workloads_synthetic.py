"""Poisson and Gamma arrival generators: counts, gaps and burstiness against their closed forms.

Tolerances come from the CLT, at 5 standard errors (two-sided p ≈ 6e-7 per check, so a correct generator
essentially never fails; the seeds are fixed, so the outcome is deterministic anyway):
- a Poisson count over T at rate λ has sd √(λT);
- the mean of n gaps with mean μ and coefficient of variation c has standard error c·μ/√n;
- the sample CV of n Gamma gaps has standard error c·√((1 + c²) / (2n)) (delta method: for Gamma,
  skewness 2c and kurtosis 3 + 6c², so Var ≈ c²/n · (c² − c·2c + (2 + 6c²)/4)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from moesim.workloads import WORKLOADS
from moesim.workloads.request import Request
from moesim.workloads.tenants import zipf_weights

Z = 5.0  # standard errors allowed


def _by_tenant(reqs: list[Request], tenants: int) -> list[np.ndarray]:
    arr = np.array([r.arrival_s for r in reqs])
    ten = np.array([r.tenant for r in reqs])
    return [arr[ten == i] for i in range(tenants)]


def _gaps(times: np.ndarray) -> np.ndarray:
    return np.diff(np.concatenate([[0.0], times]))  # the first gap runs from 0


def test_poisson_counts_and_gaps_match_closed_forms() -> None:
    rate, tenants, duration_s = 2.0, 3, 20_000.0  # λT = 40,000 per tenant
    wl = WORKLOADS.build("poisson", {"rate": rate, "tenants": tenants, "duration_s": duration_s})
    reqs = wl.generate(seed=7)
    expected = rate * duration_s
    for times in _by_tenant(reqs, tenants):
        assert abs(len(times) - expected) < Z * math.sqrt(expected)  # ±1,000 of 40,000
        gaps = _gaps(times)
        assert abs(gaps.mean() - 1 / rate) < Z * (1 / rate) / math.sqrt(len(gaps))  # ±0.0125 s of 0.5 s
        # exponential gaps: P(gap > mean) = e^-1; binomial standard error
        p = math.exp(-1)
        assert abs((gaps > 1 / rate).mean() - p) < Z * math.sqrt(p * (1 - p) / len(gaps))
    assert all(0 <= r.arrival_s < duration_s for r in reqs)
    assert {(r.prompt_tokens, r.output_tokens) for r in reqs} == {(20, 25)}
    assert wl.horizon_s == duration_s


def test_poisson_zipf_popularity_keeps_per_tenant_mean_rate() -> None:
    rate, tenants, duration_s, s = 1.0, 4, 10_000.0, 1.0
    wl = WORKLOADS.build(
        "poisson",
        {"rate": rate, "tenants": tenants, "duration_s": duration_s, "popularity": "zipf", "zipf_s": s},
    )
    rates = wl.tenant_rates_per_s
    assert rates.mean() == pytest.approx(rate, rel=1e-12)
    assert rates == pytest.approx(rate * tenants * np.array([1, 1 / 2, 1 / 3, 1 / 4]) / (25 / 12), rel=1e-12)
    counts = [len(t) for t in _by_tenant(wl.generate(seed=3), tenants)]
    for n, lam in zip(counts, rates, strict=True):
        assert abs(n - lam * duration_s) < Z * math.sqrt(lam * duration_s)
    assert counts == sorted(counts, reverse=True)


def test_tenant_stream_does_not_depend_on_other_tenants() -> None:
    base = {"rate": 0.3, "duration_s": 500.0}
    two = WORKLOADS.build("poisson", {**base, "tenants": 2}).generate(seed=11)
    five = WORKLOADS.build("poisson", {**base, "tenants": 5}).generate(seed=11)
    assert [r.arrival_s for r in two if r.tenant == 1] == [r.arrival_s for r in five if r.tenant == 1]


@pytest.mark.parametrize("cv", [0.5, 2.5])
def test_gamma_cv_and_mean_gap(cv: float) -> None:
    rate, n_expected = 1.0, 200_000
    wl = WORKLOADS.build("gamma", {"rate": rate, "tenants": 1, "duration_s": n_expected / rate, "cv": cv})
    gaps = _gaps(np.array([r.arrival_s for r in wl.generate(seed=5)]))
    n = len(gaps)
    sample_cv = gaps.std(ddof=1) / gaps.mean()
    assert abs(sample_cv - cv) < Z * cv * math.sqrt((1 + cv**2) / (2 * n))  # cv=2.5: ±0.053
    assert abs(gaps.mean() - 1 / rate) < Z * cv / (rate * math.sqrt(n))


def test_gamma_with_cv_one_is_the_poisson_workload() -> None:
    params = {"rate": 0.2, "tenants": 3, "duration_s": 1000.0}
    assert WORKLOADS.build("gamma", {**params, "cv": 1.0}).generate(seed=2) == WORKLOADS.build(
        "poisson", params
    ).generate(seed=2)


def test_bursty_gamma_has_more_variable_counts_than_poisson() -> None:
    # counts in windows of 100 mean arrivals: index of dispersion ≈ cv² for a renewal process
    params = {"rate": 1.0, "tenants": 1, "duration_s": 100_000.0}

    def dispersion(reqs: list[Request]) -> float:
        counts = np.bincount((np.array([r.arrival_s for r in reqs]) // 100).astype(int), minlength=1000)
        return counts.var() / counts.mean()

    assert dispersion(WORKLOADS.build("poisson", params).generate(seed=1)) == pytest.approx(1.0, abs=0.25)
    assert dispersion(WORKLOADS.build("gamma", {**params, "cv": 3.0}).generate(seed=1)) == pytest.approx(
        9.0, rel=0.25
    )


def test_tokens_from_trace_draws_real_pairs() -> None:
    from moesim.workloads.azure import load_shipped

    trace = load_shipped("azure_conv")
    pairs = set(zip(trace.prompt_tokens.tolist(), trace.output_tokens.tolist(), strict=True))
    reqs = WORKLOADS.build(
        "poisson", {"rate": 2.0, "tenants": 2, "duration_s": 2000.0, "tokens_from": "azure_conv"}
    ).generate(seed=4)
    assert all((r.prompt_tokens, r.output_tokens) in pairs for r in reqs)
    out = np.array([r.output_tokens for r in reqs])
    # mean output of the trace is 211 tokens; sd of the sample mean = sd(trace) / √n
    sd = trace.output_tokens.std() / math.sqrt(len(out))
    assert abs(out.mean() - trace.output_tokens.mean()) < Z * sd


@pytest.mark.parametrize("name", ["poisson", "gamma"])
def test_same_seed_same_requests_other_seed_differs(name: str) -> None:
    wl = WORKLOADS.build(name, {"rate": 0.5, "tenants": 3, "duration_s": 300.0})
    assert wl.generate(seed=9) == wl.generate(seed=9)
    assert wl.generate(seed=9) != wl.generate(seed=10)


def test_zipf_weights_closed_form() -> None:
    assert zipf_weights(3, 2.0) == pytest.approx(np.array([1, 1 / 4, 1 / 9]) / (49 / 36), rel=1e-12)
    assert zipf_weights(4, 0.0) == pytest.approx(np.full(4, 0.25))
