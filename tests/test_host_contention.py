"""Host contention (``moesim.engine.host``): host-bound steps of instances driven by one host process.

Must hold: α = 0 is the simulator without the model, exactly; an instance alone is never slowed; while another
instance of the process runs fetching steps, a step's time outside its copies is ×(1 + α), its copies unchanged
(closed forms below with the step times of ``reports/validation/realtime/h200x2b/fleet_host``'s cost model:
a one-sequence fetching decode step 21.5 ms of copies + 56.3 ms, a 256-token fetching prefill 87.5 + 53.1 ms);
``validate``'s ``host_contention`` setting.
"""

from __future__ import annotations

import numpy as np
import pytest

from moesim.cost.base import CostModel, DecodeRun, Residency, SeqWork, StepCost
from moesim.engine.host import HostProcess, stretch_run, stretch_step
from moesim.engine.simulation import GPUSetup, simulate_fleet
from moesim.errors import UserError
from moesim.policies import POLICIES
from moesim.serve.validate import HOST_CONTENTION, host_contention_of
from moesim.specs import get_gpu, get_model
from moesim.workloads.request import Request

PREFILL = StepCost(fetch_s=0.0875, overhead_s=0.0531, expert_fetches=14.0)
DECODE = StepCost(fetch_s=0.0215, overhead_s=0.0563, expert_fetches=3.5)


class FetchingCost(CostModel):
    """Every prefill ``PREFILL``, every decode step ``DECODE`` (both fetch host experts)."""

    name = "fetching_test"

    def step(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost:
        return DECODE if all(w.new_tokens == 1 for w in batch) else PREFILL


def test_factor_and_stretch_closed_forms() -> None:
    h = HostProcess(0.3)
    assert h.factor() == 1.0
    h.begin(True)
    h.begin(False)  # not host-bound: not counted
    assert h.factor() == pytest.approx(1.3)
    h.end(True)
    assert h.factor() == 1.0
    s = stretch_step(DECODE, 1.3)
    assert s.fetch_s == DECODE.fetch_s
    assert s.expert_fetches == 3.5
    assert s.total_s == pytest.approx(0.0215 + 1.3 * 0.0563)  # 94.69 ms (measured, other GPU busy: 90.6)
    assert stretch_step(DECODE, 1.0) is DECODE
    run = DecodeRun(np.array([0.0778, 0.1556]), DECODE + DECODE)
    r = stretch_run(run, 1.3)
    assert r.cost.total_s == pytest.approx(0.043 + 1.3 * 0.1126)
    assert r.end_s[-1] == pytest.approx(r.cost.total_s)
    assert r.end_s[0] == pytest.approx(r.cost.total_s / 2)
    with pytest.raises(ValueError, match="≥ 0"):
        HostProcess(-0.1)


def _fleet(alpha: float, arrival_b: float):
    model, gpu = get_model("mixtral-8x7b"), get_gpu("h200")
    cost = FetchingCost(model, gpu)
    setups = [GPUSetup(gpu, POLICIES.build("multiplex", {"max_batch": 16, "budget_bytes": 60e9}), cost, (g,),
                       name=f"gpu{g}", index=g) for g in (0, 1)]
    reqs = [Request(0, 0, 0.0, 256, 3), Request(1, 1, arrival_b, 256, 3)]
    return simulate_fleet(model, setups, reqs, host_contention=alpha).requests.set_index("request_id")


def test_two_gpus_of_one_process_slow_each_others_fetching_steps() -> None:
    p, d = PREFILL.total_s, DECODE.total_s
    base = _fleet(0.0, 0.05)
    assert base.loc[0, "finish_s"] == pytest.approx(p + 2 * d)
    assert base.loc[1, "finish_s"] == pytest.approx(0.05 + p + 2 * d)
    # apart in time: never slowed
    apart = _fleet(0.3, 1.0)
    assert apart.loc[1, "finish_s"] == pytest.approx(1.0 + p + 2 * d)
    assert apart.loc[0, "finish_s"] == pytest.approx(p + 2 * d)
    r = _fleet(0.3, 0.05)
    # A's prefill alone (×1); B's prefill while A prefills (×1.3 outside its 87.5 ms of copies)
    pb = 0.0875 + 1.3 * 0.0531
    assert r.loc[0, "first_token_s"] == pytest.approx(p)
    assert r.loc[1, "first_token_s"] == pytest.approx(0.05 + pb)
    # A's two decode steps start while B prefills, B's while A decodes: both ×1.3
    ds = 0.0215 + 1.3 * 0.0563
    assert r.loc[0, "finish_s"] == pytest.approx(p + 2 * ds)
    assert r.loc[1, "finish_s"] == pytest.approx(0.05 + pb + 2 * ds)
    # α = 0 is the simulator without the model
    assert _fleet(0.0, 0.05).equals(base)


def test_validate_setting() -> None:
    class Cfg:
        gpus = 2

    class One:
        gpus = 1

    assert host_contention_of("auto", Cfg()) == HOST_CONTENTION == 0.3
    assert host_contention_of("auto", One()) == 0.0
    assert host_contention_of("0.5", One()) == 0.5
    for bad in ("-1", "x", "nan"):
        with pytest.raises(UserError, match="host_contention="):
            host_contention_of(bad, Cfg())


def test_mig_slices_of_one_process_take_the_same_rule() -> None:
    from moesim.engine import simulate

    model, gpu = get_model("mixtral-8x7b"), get_gpu("h200")
    reqs = [Request(0, 0, 0.0, 256, 3), Request(1, 1, 0.05, 256, 3)]

    def run(alpha: float):
        pol = POLICIES.build("mig", {"layout": "3g+3g"})
        return simulate(model, gpu, pol, FetchingCost(model, gpu), reqs, n_tenants=2,
                        host_contention=alpha).requests.set_index("request_id")

    p = PREFILL.total_s
    pb, ds = 0.0875 + 1.3 * 0.0531, 0.0215 + 1.3 * 0.0563
    assert run(0.0).loc[1, "finish_s"] == pytest.approx(0.05 + p + 2 * DECODE.total_s)
    r = run(0.3)
    assert r.loc[1, "first_token_s"] == pytest.approx(0.05 + pb)
    assert r.loc[0, "finish_s"] == pytest.approx(p + 2 * ds)
    assert r.loc[1, "finish_s"] == pytest.approx(0.05 + pb + 2 * ds)


class PiecewiseCost(FetchingCost):
    """``FetchingCost`` whose fetching steps replay the first 24 of 32 layers from a graph: a quarter of their time
    outside the copies is launched op by op (``host_bound_share``)."""

    def host_bound_share(self, residency: Residency) -> float:
        return 0.25


def test_only_the_eagerly_launched_share_contends() -> None:
    model, gpu = get_model("mixtral-8x7b"), get_gpu("h200")
    setups = [GPUSetup(gpu, POLICIES.build("multiplex", {"max_batch": 16, "budget_bytes": 60e9}),
                       PiecewiseCost(model, gpu), (g,), name=f"gpu{g}", index=g) for g in (0, 1)]
    reqs = [Request(0, 0, 0.0, 256, 3), Request(1, 1, 0.05, 256, 3)]
    r = simulate_fleet(model, setups, reqs, host_contention=0.3).requests.set_index("request_id")
    f = 1 + 0.3 * 0.25  # ×1.075 outside the copies
    pb, ds = 0.0875 + f * 0.0531, 0.0215 + f * 0.0563
    assert r.loc[1, "first_token_s"] == pytest.approx(0.05 + pb)
    assert r.loc[0, "finish_s"] == pytest.approx(PREFILL.total_s + 2 * ds)


def test_profile_bucketed_eager_share_from_the_first_host_layer() -> None:
    from pathlib import Path

    from moesim.cost import COST_MODELS

    table = Path(__file__).resolve().parents[1] / "reports/validation/realtime/h200_s6/tables/decode_table.csv"
    model, gpu = get_model("mixtral-8x7b"), get_gpu("h200")
    res = POLICIES.build("multiplex", {"max_batch": 16, "budget_bytes": 85e9}).layout(model, gpu, 2)[0].residency
    from moesim.cost.fetch_pipeline import host_slots_by_layer

    layers = host_slots_by_layer(res, model.n_moe_layers, model.n_experts)
    first = next(i for i, x in enumerate(layers) if x)
    graphs = COST_MODELS.build("profile_bucketed", {"table": str(table), "fetch_prefix": "graphs"}, model=model, gpu=gpu)
    eager = COST_MODELS.build("profile_bucketed", {"table": str(table), "fetch_prefix": "eager"}, model=model, gpu=gpu)
    assert 0 < first < 32
    assert graphs.host_bound_share(res) == pytest.approx((32 - first) / 32)
    assert eager.host_bound_share(res) == 1.0
