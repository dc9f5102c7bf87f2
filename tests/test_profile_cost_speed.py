"""Speed of the ``profile`` cost model's hot path (benchmarks: kept out of the default run)."""

from __future__ import annotations

import pytest

from moesim.cost.base import ExpertGroup, Residency, SeqWork
from moesim.cost.profile import ProfileCost, ProfileCostConfig
from moesim.specs import get_gpu, get_model

pytestmark = pytest.mark.benchmark


@pytest.fixture(scope="module")
def cost() -> ProfileCost:
    return ProfileCost(ProfileCostConfig(), get_model("mixtral-8x7b"), get_gpu("h200"))


RES = Residency((ExpertGroup(frozenset({0, 1, 2}), 200, True), ExpertGroup(frozenset({0}), 56, False)))
BATCH = (*(SeqWork(i % 3, 1, 500 + i) for i in range(32)), SeqWork(0, 300, 0))


def test_step_speed(benchmark, cost: ProfileCost) -> None:  # type: ignore[no-untyped-def]
    c = benchmark(cost.step, BATCH, RES)
    assert c.total_s > 0


def test_decode_run_speed(benchmark, cost: ProfileCost) -> None:  # type: ignore[no-untyped-def]
    run = benchmark(cost.decode_run, tuple(i % 3 for i in range(32)), tuple(range(32)), 500, RES)
    assert len(run.end_s) == 500
