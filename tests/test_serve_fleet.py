"""The runtime over several GPUs (``moesim.serve.fleet``), and the layouts that let naive and swap run. CPU.

* Without replicas (routing fixed by the variant) on the virtual clock with a cost backend, the fleet runtime
  makes the simulator's fleet decisions (same per-request table, same GPU per request).
* With replicas on the wall clock, requests are routed live by the router (least_work spreads a burst over both
  replicas), conserved, and the router's outstanding work returns to zero.
* ``swap`` is laid out as one physical expert set shared by every tenant; ``host_pool`` bounds distinct host
  copies; the decode/prefill step tables time the runtime's own steps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moesim.cost import COST_MODELS
from moesim.cost.base import SeqWork
from moesim.errors import UserError
from moesim.executor.compare import check_tables
from moesim.fleet import FleetSpec, GPUPlacement, Placement, run_fleet
from moesim.fleet.routers import ROUTERS
from moesim.policies import POLICIES
from moesim.serve.fleet import parse_placement, serve_fleet
from moesim.serve.runtime import CostBackend, SleepingCostBackend
from moesim.specs import get_gpu, get_model
from moesim.workloads.request import Request

MIXTRAL = get_model("mixtral-8x7b")
TINY = get_model("tiny")
H200 = get_gpu("h200")


def _trace(n: int, rate: float, seed: int, tenants: int) -> list[Request]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, n))
    return [Request(i, int(rng.integers(0, tenants)), float(t[i]), int(rng.integers(5, 400)),
                    int(rng.integers(1, 40))) for i in range(n)]


def _roofline():
    return COST_MODELS.build("roofline", None, model=MIXTRAL, gpu=H200)


def test_placement_is_parsed_and_bad_ones_refused_in_one_line() -> None:
    assert parse_placement("0,1,2;1,2,3", 2, 4) == [(0, 1, 2), (1, 2, 3)]
    assert parse_placement(" 2,0 ; 1,3", 2, 4) == [(0, 2), (1, 3)]
    for text, match in (("0,1", "one ';'-separated"), ("0,1;x", "not comma-separated"), ("0,1;1,7", "GPU 1"),
                        ("0;1", r"tenants \[2, 3\]")):
        with pytest.raises(UserError, match=match):
            parse_placement(text, 2, 4)
    from moesim.serve.config import ServeConfig

    with pytest.raises(UserError, match="needs gpus > 1"):
        ServeConfig(placement="0;1")
    with pytest.raises(UserError, match="router='nope'"):
        ServeConfig(gpus=2, tenants=2, placement="0;1", router="nope")
    with pytest.raises(UserError, match="single-instance"):
        ServeConfig(gpus=2, tenants=2, placement="0;1", policy="mig")


@pytest.mark.parametrize("policy", ["multiplex", "reconfig"])
def test_fleet_without_replicas_makes_the_simulators_decisions(policy: str) -> None:
    reqs = _trace(60, 6.0, 3, 4)
    placement = [(0, 2), (1, 3)]
    params = {"max_batch": 8} if policy == "multiplex" else {}
    run = serve_fleet(MIXTRAL, H200, [POLICIES.build(policy, params) for _ in placement],
                      [CostBackend(_roofline()) for _ in placement], reqs, placement, None, clock="virtual")
    sim = run_fleet(MIXTRAL, FleetSpec.uniform("h200", 2),
                    Placement(tuple(GPUPlacement(g, ts) for g, ts in enumerate(placement)), "file"), reqs,
                    policy=policy, policy_cfg=POLICIES.build(policy, params).cfg, cost="roofline", cost_cfg=None)
    cols = ["request_id", "tenant", "arrival_s", "start_s", "first_token_s", "finish_s", "gpu", "swap_wait_s"]
    pd.testing.assert_frame_equal(sim.requests[cols], run.requests[cols])
    assert set(run.requests["gpu"]) == {0, 1}
    # each request served on the GPU holding its variant
    assert (run.requests["gpu"] == run.requests["tenant"] % 2).all()
    assert run.swap_count == sim.swap_count
    check_tables(run.requests)


def test_fleet_routes_live_on_the_wall_clock() -> None:
    from moesim.cost.constant import ConstantCost, ConstantCostConfig

    # a burst of variant 1 (on both GPUs) while GPU 0 is busy with variant 0: least_work sends it to GPU 1
    reqs = [Request(0, 0, 0.0, 50, 20)] + [Request(i, 1, 0.01 + 0.002 * i, 50, 6) for i in range(1, 7)]
    placement = [(0, 1), (1, 2)]

    def cost():
        return SleepingCostBackend(ConstantCost(ConstantCostConfig(prefill_s=0.01, decode_step_s=0.004),
                                                MIXTRAL, H200))

    router = ROUTERS.build("least_work")
    run = serve_fleet(MIXTRAL, H200, [POLICIES.build("multiplex", {"max_batch": 4}) for _ in placement],
                      [cost(), cost()], reqs, placement, router, clock="wall")
    r = run.requests
    check_tables(r)
    assert r.loc[0, "gpu"] == 0  # variant 0 only on GPU 0
    assert set(r.loc[1:, "gpu"]) == {0, 1}  # the replicated variant went to both
    assert int((r.loc[1:, "gpu"] == 1).sum()) >= 3  # mostly to the GPU without the long request
    assert (r["first_token_s"] >= r["arrival_s"] + 0.01 - 1e-3).all()  # a prefill really took 10 ms
    seg = run.segments
    assert int(seg.loc[seg["kind"] == "prefill", "n_seqs"].sum()) == len(reqs)
    assert set(seg["instance"]) == {"gpu0", "gpu1"}
    assert run.meta["fleet"]["requests_per_gpu"] == [int((r["gpu"] == 0).sum()), int((r["gpu"] == 1).sum())]
    with pytest.raises(UserError, match="needs a router"):
        serve_fleet(MIXTRAL, H200, [POLICIES.build("multiplex") for _ in placement], [cost(), cost()], reqs,
                    placement, None, clock="wall")


def test_fleet_served_with_torch_on_cpu_and_validated(tmp_path) -> None:
    pytest.importorskip("torch")
    from moesim.serve.config import ServeConfig, make_requests
    from moesim.serve.run import run
    from moesim.serve.validate import validate_run

    cfg = ServeConfig(model="tiny", device="cpu", policy="multiplex", max_batch=4, tenants=3, gpus=2,
                      placement="0,1;1,2", rate=8.0, max_requests=12, max_prompt=64, max_output=6,
                      out=str(tmp_path), compare=False, warmup=True)
    doc = run(cfg, [], log=lambda *a, **k: None)
    req = pd.read_parquet(tmp_path / "requests.parquet")
    reqs = make_requests(cfg)
    assert len(req) == 12
    assert doc["fleet"]["placement"] == [[0, 1], [1, 2]]
    assert (req.loc[req["tenant"] == 0, "gpu"] == 0).all()
    assert (req.loc[req["tenant"] == 2, "gpu"] == 1).all()
    assert int(req["output_tokens"].sum()) == sum(r.output_tokens for r in reqs)
    assert len(doc["backend"]) == 2
    assert all(b["steps"] > 0 for b in doc["backend"])
    row = validate_run(tmp_path, "roofline")
    assert row["n_requests"] == 12


def test_swap_is_laid_out_as_one_physical_expert_set() -> None:
    from moesim.serve.backend import physical_residency, whole_model_swap

    plan = POLICIES.build("swap", {"budget_bytes": 50e9}).layout(MIXTRAL, H200, 3)[0]
    assert whole_model_swap(plan, MIXTRAL)
    phys = physical_residency(plan, MIXTRAL)
    assert [(sorted(g.tenants), g.positions, g.on_gpu) for g in phys.groups] == [
        ([0, 1, 2], 132, True), ([0, 1, 2], 124, False)]
    assert phys.gpu_expert_copies() == 132  # one tenant's worth on the device, not three
    for name in ("reconfig", "multiplex", "naive"):
        p = POLICIES.build(name).layout(MIXTRAL, H200, 3)[0]
        assert not whole_model_swap(p, MIXTRAL)
        assert physical_residency(p, MIXTRAL) is p.residency


def test_host_pool_bounds_distinct_host_copies() -> None:
    torch = pytest.importorskip("torch")
    from moesim.calibrate.engine import MoEEngine
    from moesim.executor.layout import apply_residency

    res = POLICIES.build("naive", {"budget_bytes": 4e5}).layout(TINY, H200, 2)[0].residency
    counts = []
    for pool in (0, 3):
        eng = MoEEngine(TINY, torch.device("cpu"), n_tenants=2, seed=1, dtype=torch.float32)
        eng.host_pool = pool
        apply_residency(eng, res, 2)
        tensors = [t for layer in eng.host_in for t in layer]
        counts.append((len(tensors), len({id(t) for t in tensors})))
    n_host = sum(g.positions for g in res.groups if not g.on_gpu)
    assert counts[0] == (n_host, n_host)  # one copy per host position
    assert counts[1] == (n_host, 3)  # the same positions, 3 distinct copies


def test_step_tables_time_the_runtimes_steps_on_cpu() -> None:
    pytest.importorskip("torch")
    from moesim.serve.backend import TorchBackend

    b = TorchBackend(TINY, H200, device="cpu", n_tenants=3, max_batch=8)
    b.setup(POLICIES.build("multiplex", {"max_batch": 8}).layout(TINY, H200, 3)[0], 3)
    dec = pd.DataFrame(b.decode_table(contexts=(20,), reps=2))
    assert list(dec["n_seqs"]) == [1, 2, 2, 3, 3, 3, 4, 4, 4, 6, 6, 6, 8, 8, 8]
    assert list(dec["bucket"]) == [1, 2, 2, 4, 4, 4, 4, 4, 4, 8, 8, 8, 8, 8, 8]
    assert (dec["step_s"] > 0).all()
    assert (dec["step_s_min"] <= dec["step_s"]).all()
    pre = pd.DataFrame(b.prefill_table(tokens=(8, 16), n_seqs=(1,), reps=2, fills=((2, 16),)))
    assert list(pre["tokens"]) == [8, 16, 16]
    assert list(pre["bucket"]) == [16, 16, 32]  # the token bucket each prefill runs in (CPU buckets 16, 24, 32)
    assert (pre[["eager_s", "graph_s", "bucket_s"]] > 0).all().all()
    assert b.stats["steps"] == len(dec) * 3 + 3 * 9  # per row: eager, exact shape, bucket; 1 untimed + 2 each
    syn = pd.DataFrame(b.sync_table(reps=1, decode=((1, 1), (4, 1), (4, 2), (16, 3))))
    assert list(syn["batch"]) == ["decode_1", "decode_4_t1", "decode_4", "decode_16_t3", "prefill_256"]
    assert list(syn["n_tenants"]) == [1, 1, 2, 3, 1]
    assert list(syn["n_seqs"]) == [1, 4, 4, 16, 1]
    assert (syn[["eager_s", "eager_sync_s"]] > 0).all().all()


def test_streamed_swap_delays_the_prefills_fetches_by_the_shared_link() -> None:
    """Closed form of ``swap_link_delay``, and the simulator applies it to a prefill right after a streamed swap."""
    from moesim.cost.base import StepCost, swap_link_delay
    from moesim.engine import simulate

    c = StepCost(attention_s=0.1, fetch_s=0.2, experts_s=0.05)
    # copies in one direction run one at a time: the fetches wait for the swap queued before them
    assert swap_link_delay(c, 0.06).fetch_s == pytest.approx(0.26)
    assert swap_link_delay(c, 0.5).fetch_s == pytest.approx(0.7)  # longer than the fetches: all of it still
    late = StepCost(attention_s=0.1, fetch_s=0.2, fetch_start_s=0.45)  # first fetch issued 0.45 s in
    assert swap_link_delay(late, 0.5).fetch_s == pytest.approx(0.25)  # only the 0.05 s still queued
    assert swap_link_delay(late, 0.4) is late  # the swap is done before the first fetch
    assert swap_link_delay(StepCost(attention_s=0.1), 0.5) == StepCost(attention_s=0.1)  # nothing fetched
    assert swap_link_delay(c, 0.0) is c
    # two tenants alternating under reconfig_fast (one non-expert slot, streamed swaps) with host experts
    reqs = [Request(i, i % 2, 2.0 * i, 200, 2) for i in range(4)]
    pol = POLICIES.build("reconfig_fast", {"budget_bytes": 80e9})
    cost = _roofline()
    sim = simulate(MIXTRAL, H200, pol, cost, reqs, n_tenants=2)
    seg = sim.segments
    pre = seg[seg["kind"] == "prefill"].reset_index(drop=True)
    plan = pol.layout(MIXTRAL, H200, 2)[0]
    swap_s = cost.swap_s(plan.swap_bytes, plan.residency, plan.swap_bandwidth_fraction)
    base = cost.step((SeqWork(1, 200, 0),), plan.residency)
    assert base.fetch_s > 0
    # request 0 (tenant 0) is resident at the start: no swap; request 1 swaps tenant 1 in under its prefill
    assert pre.loc[0, "fetch_s"] == pytest.approx(cost.step((SeqWork(0, 200, 0),), plan.residency).fetch_s)
    assert pre.loc[1, "fetch_s"] == pytest.approx(base.fetch_s + swap_s)  # roofline: first fetch at once
    assert sim.swap_count == 3
    # with profile_mixed the prefill under the streamed swap is timed eagerly (it waits on the swap's events)
    mixed = COST_MODELS.build("profile_mixed", None, model=MIXTRAL, gpu=H200)
    sim = simulate(MIXTRAL, H200, pol, mixed, reqs, n_tenants=2)
    pre = sim.segments[sim.segments["kind"] == "prefill"].reset_index(drop=True)
    eager = mixed.eager.step((SeqWork(1, 200, 0),), plan.residency)
    under = mixed.step_streamed((SeqWork(1, 200, 0),), plan.residency)
    assert under == mixed.step((SeqWork(1, 200, 0),), plan.residency)  # fetching host experts: eager anyway
    assert under.attention_s == eager.attention_s
    resident = POLICIES.build("reconfig_fast").layout(MIXTRAL, H200, 2)[0].residency  # no host experts
    b = (SeqWork(1, 200, 0),)
    assert mixed.step_streamed(b, resident) == mixed.eager.step(b, resident)
    assert mixed.step_streamed(b, resident).total_s > mixed.step(b, resident).total_s  # eager, not the graph
    swap_s = mixed.swap_s(plan.swap_bytes, plan.residency, plan.swap_bandwidth_fraction)
    assert under.fetch_start_s == 0.0  # host_layout=spread: host copies in the first layer too
    assert pre.loc[1, "end_s"] - pre.loc[1, "start_s"] == pytest.approx(under.total_s + swap_s, rel=1e-9)



def test_dedicated_one_gpu_per_tenant_makes_the_simulators_decisions() -> None:
    from moesim.engine import simulate
    from moesim.serve.runtime import serve

    reqs = _trace(40, 5.0, 2, 2)
    sim = simulate(MIXTRAL, H200, POLICIES.build("dedicated"), _roofline(), reqs, n_tenants=2)
    with pytest.raises(UserError, match="gpus=2"):
        serve(MIXTRAL, H200, POLICIES.build("dedicated"), [CostBackend(_roofline()) for _ in range(2)], reqs,
              n_tenants=2, clock="virtual")
    run = serve(MIXTRAL, H200, POLICIES.build("dedicated"), [CostBackend(_roofline()) for _ in range(2)], reqs,
                n_tenants=2, clock="virtual", whole_gpus=True)
    pd.testing.assert_frame_equal(sim.requests, run.requests[list(sim.requests.columns)])
    assert run.instances[0]["resident_expert_copies"] == MIXTRAL.n_expert_positions  # the whole model
    assert (run.requests["instance"] == run.requests["tenant"]).all()


def test_dedicated_served_with_torch_on_cpu(tmp_path) -> None:
    pytest.importorskip("torch")
    from moesim.serve.config import ServeConfig
    from moesim.serve.run import run

    with pytest.raises(UserError, match="gpus=<tenants>"):
        ServeConfig(policy="dedicated", tenants=2)
    cfg = ServeConfig(model="tiny", device="cpu", policy="dedicated", tenants=2, gpus=2, rate=6.0, max_requests=10,
                      max_prompt=64, max_output=6, out=str(tmp_path), compare=True, sim_cost="roofline")
    doc = run(cfg, [], log=lambda *a, **k: None)
    req = pd.read_parquet(tmp_path / "requests.parquet")
    assert len(req) == 10
    assert (req["instance"] == req["tenant"]).all()
    assert len(doc["backend"]) == 2
    assert all(b["steps"] > 0 for b in doc["backend"])
    assert doc["validation"]["n_requests"] == 10
