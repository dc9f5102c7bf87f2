"""Cost models: routing closed forms, roofline against hand-computed floors, run/step consistency."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.cost import COST_MODELS, ExpertGroup, Residency, SeqWork, Slice, expected_active_fraction
from moesim.errors import UserError
from moesim.specs import get_gpu, get_model

MIXTRAL = get_model("mixtral-8x7b")
H200 = get_gpu("h200")


def test_active_fraction_uniform_closed_form() -> None:
    assert expected_active_fraction(1, 8, 2) == pytest.approx(0.25)
    assert expected_active_fraction(2, 8, 2) == pytest.approx(1 - 0.75**2)
    assert expected_active_fraction(10, 8, 2) == pytest.approx(1 - 0.75**10)
    assert expected_active_fraction(10_000, 8, 2) == pytest.approx(1.0)
    # neither "all experts" nor "k" at a moderate batch
    assert 2 / 8 < expected_active_fraction(4, 8, 2) < 1.0


@pytest.mark.parametrize("skew", [0.0, 1.2])
def test_active_fraction_matches_monte_carlo(skew: float) -> None:
    rng = np.random.default_rng(0)
    E, k, n, trials = 8, 2, 5, 20_000
    w = np.arange(1, E + 1, dtype=float) ** (-skew)
    q = np.minimum(w / w.sum() * k, 1.0)
    # draw each expert's inclusion independently with probability q_i (the model's assumption)
    picked = rng.random((trials, n, E)) < q
    frac = picked.any(axis=1).mean()
    assert expected_active_fraction(n, E, k, skew) == pytest.approx(frac, abs=0.01)
    if skew > 0:
        assert expected_active_fraction(n, E, k, skew) < expected_active_fraction(n, E, k, 0.0)


def _res(on_gpu: bool = True) -> Residency:
    return Residency((ExpertGroup(frozenset({0}), MIXTRAL.n_expert_positions, on_gpu),))


def test_roofline_batch1_decode_near_hbm_floor() -> None:
    """Batch-1 decode reads the active weights once: 12.88e9 params × 2 B over achievable HBM bandwidth."""
    cost = COST_MODELS.build("roofline", {"layer_overhead_s": 0.0}, model=MIXTRAL, gpu=H200)
    t = cost.step((SeqWork(0, 1, 0),), _res()).total_s
    # experts: 32 layers × 2 experts; non-expert: attention, router, lm_head (embedding is a lookup)
    active = (MIXTRAL.attention_params_per_block + MIXTRAL.d_model * MIXTRAL.n_experts) * 32 \
        + 64 * MIXTRAL.expert_params + MIXTRAL.vocab * MIXTRAL.d_model
    floor = active * 2 / (H200.hbm_Bps * 0.85)
    assert t == pytest.approx(floor, rel=0.01)


def test_roofline_large_prefill_is_compute_bound() -> None:
    cost = COST_MODELS.build("roofline", {"layer_overhead_s": 0.0}, model=MIXTRAL, gpu=H200)
    n = 8192
    c = cost.step((SeqWork(0, n, 0),), _res())
    expert_flops = 2 * n * 2 * 32 * MIXTRAL.expert_params  # top-2 over 32 layers
    assert c.experts_s == pytest.approx(expert_flops / (H200.bf16_flops * 0.75), rel=1e-9)


def test_host_experts_are_fetched_over_the_link() -> None:
    cost = COST_MODELS.build("roofline", {}, model=MIXTRAL, gpu=H200)
    c = cost.step((SeqWork(0, 1, 0),), _res(on_gpu=False))
    assert c.expert_fetches == pytest.approx(64.0)  # 32 layers × top-2 for one token
    assert c.fetch_s == pytest.approx(64 * MIXTRAL.expert_bytes / (H200.h2d_pinned_Bps * 0.95))
    half = Residency(_res(False).groups, Slice(link_fraction=0.5), fetch_overlap=0.5)
    assert cost.step((SeqWork(0, 1, 0),), half).fetch_s == pytest.approx(c.fetch_s)  # ×2 link, ×0.5 hidden
    pageable = Residency(_res(False).groups, Slice(pinned=False))
    assert cost.step((SeqWork(0, 1, 0),), pageable).fetch_s == pytest.approx(
        c.fetch_s * H200.h2d_pinned_Bps / H200.h2d_pageable_Bps)


def test_slice_scales_compute_and_bandwidth() -> None:
    cost = COST_MODELS.build("roofline", {"layer_overhead_s": 0.0}, model=MIXTRAL, gpu=H200)
    full = cost.step((SeqWork(0, 8192, 0),), _res()).experts_s
    res = Residency(_res().groups, Slice(sm_fraction=60 / 132, bw_fraction=0.5))
    assert cost.step((SeqWork(0, 8192, 0),), res).experts_s == pytest.approx(full * 132 / 60)
    one = cost.step((SeqWork(0, 1, 0),), _res()).experts_s
    assert cost.step((SeqWork(0, 1, 0),), res).experts_s == pytest.approx(one * 2)


def test_decode_run_equals_summed_steps() -> None:
    cost = COST_MODELS.build("roofline", {}, model=MIXTRAL, gpu=H200)
    tenants, ctx = (0, 0, 0), (10, 300, 4000)
    run = cost.decode_run(tenants, ctx, 50, _res())
    manual = np.cumsum([cost.step(tuple(SeqWork(0, 1, c + k) for c in ctx), _res()).total_s for k in range(50)])
    np.testing.assert_allclose(run.end_s, manual, rtol=1e-12)
    assert run.cost.total_s == pytest.approx(manual[-1], rel=1e-12)


def test_constant_model_and_bad_values() -> None:
    c = COST_MODELS.build("constant", {"prefill_s": 0.5, "decode_step_s": 0.02}, model=MIXTRAL, gpu=H200)
    assert c.step((SeqWork(0, 20, 0), SeqWork(0, 7, 0)), _res()).total_s == pytest.approx(1.0)
    assert c.decode_run((0, 0), (20, 20), 24, _res()).end_s[-1] == pytest.approx(0.48)
    assert c.swap_s(MIXTRAL.nonexpert_bytes, _res()) == pytest.approx(MIXTRAL.nonexpert_bytes / 55e9)
    with pytest.raises(UserError, match=r"cost.flops_efficiency=1.5: must be in \(0, 1\]"):
        COST_MODELS.build("roofline", {"flops_efficiency": 1.5}, model=MIXTRAL, gpu=H200)
    with pytest.raises(UserError, match="unknown field"):
        COST_MODELS.build("roofline", {"flops": 1.0}, model=MIXTRAL, gpu=H200)
