"""The real-time runtime (moesim.serve) on CPU.

* With the virtual clock and a cost model answering each step, the runtime makes the simulator's decisions:
  the same per-request table and the same timeline (batches, their order, swaps), for every served policy.
* In real time (wall clock, arrivals released by a thread) with the tiny model executed by torch on CPU, it
  conserves requests and tokens, really copies swaps and fetches host experts, and writes the simulator's tables.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from moesim.cost import COST_MODELS
from moesim.cost.constant import ConstantCost, ConstantCostConfig
from moesim.engine import simulate
from moesim.errors import UserError
from moesim.executor.compare import check_tables
from moesim.policies import POLICIES
from moesim.policies.view import InstanceView
from moesim.serve.config import SERVED_POLICIES, parse_args
from moesim.serve.runtime import CostBackend, ServeInstance, serve
from moesim.specs import get_gpu, get_model
from moesim.workloads.request import Request

MIXTRAL = get_model("mixtral-8x7b")
TINY = get_model("tiny")
H200 = get_gpu("h200")


def _poisson(n: int, rate: float, seed: int, tenants: int = 3, max_prompt: int = 600) -> list[Request]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, n))
    return [Request(i, int(rng.integers(0, tenants)), float(t[i]), int(rng.integers(5, max_prompt)),
                    int(rng.integers(1, 60))) for i in range(n)]


PARAMS = {"multiplex": {"max_batch": 8}, "reconfig": {}, "reconfig_fast": {"max_batch": 8},
          "naive": {"max_batch": 4}, "swap": {},
          # budgets that leave experts on the host (fetched per use)
          "multiplex@host": {"max_batch": 8, "budget_bytes": 80e9}, "reconfig@host": {"budget_bytes": 80e9},
          "reconfig_fast@host": {"max_batch": 8, "budget_bytes": 80e9},  # streamed swaps share the link
          "naive@host": {"max_batch": 4, "budget_bytes": 80e9}, "swap@host": {"budget_bytes": 60e9}}


def _conserved(reqs: list[Request], requests: pd.DataFrame, segments: pd.DataFrame) -> None:
    check_tables(requests)
    pre = segments[segments["kind"] == "prefill"]
    dec = segments[segments["kind"] == "decode"]
    assert int(pre["tokens"].sum()) == sum(r.prompt_tokens for r in reqs)
    assert int(pre["n_seqs"].sum()) == len(reqs)  # every request prefilled exactly once
    assert int(dec["tokens"].sum()) == sum(max(r.output_tokens - 1, 0) for r in reqs)


@pytest.mark.parametrize("policy", sorted(PARAMS))
@pytest.mark.parametrize("cost", ["roofline", "constant", "profile_mixed"])
def test_virtual_clock_makes_the_simulators_decisions(policy: str, cost: str) -> None:
    reqs = _poisson(80, 4.0, 1)
    if cost == "profile_mixed":
        make = lambda: COST_MODELS.build("profile_mixed", None, model=MIXTRAL, gpu=H200)  # noqa: E731
    elif cost == "constant":
        make = lambda: ConstantCost(ConstantCostConfig(prefill_s=0.05, decode_step_s=0.01), MIXTRAL, H200)  # noqa: E731
    else:
        make = lambda: COST_MODELS.build("roofline", None, model=MIXTRAL, gpu=H200)  # noqa: E731
    name = policy.partition("@")[0]
    sim = simulate(MIXTRAL, H200, POLICIES.build(name, PARAMS[policy]), make(), reqs, n_tenants=3)
    run = serve(MIXTRAL, H200, POLICIES.build(name, PARAMS[policy]), CostBackend(make()), reqs, n_tenants=3,
                clock="virtual")
    if "@host" in policy:
        assert run.instances[0]["host_expert_bytes"] > 0
        assert run.segments["expert_fetches"].sum() > 0 or cost == "constant"
    # exact: same arithmetic, same order (the runtime's table may carry the fleet's extra ``gpu`` column)
    pd.testing.assert_frame_equal(sim.requests, run.requests[list(sim.requests.columns)])
    pd.testing.assert_frame_equal(sim.segments, run.segments[list(sim.segments.columns)])
    assert run.swap_count == sim.swap_count
    assert run.horizon_s == sim.horizon_s
    _conserved(reqs, run.requests, run.segments)
    if name in ("reconfig", "reconfig_fast", "swap"):
        assert run.swap_count > 0  # the trace mixes tenants: swaps happened and matched
    if name in ("multiplex", "reconfig_fast"):  # decode runs were cut by arrivals joining
        assert (run.segments["kind"] == "decode").sum() > (run.segments["kind"] == "prefill").sum() // 2


def test_runtime_implements_the_instance_view() -> None:
    members = [m for m in dir(InstanceView) if not m.startswith("_")]
    members += list(InstanceView.__annotations__)
    for m in set(members):
        assert hasattr(ServeInstance, m) or m in ("plan", "queue", "resident", "kv_free_bytes",
                                                  "kv_bytes_per_token"), m
    reqs = _poisson(5, 1.0, 0)
    run = serve(MIXTRAL, H200, POLICIES.build("multiplex"), CostBackend(
        COST_MODELS.build("roofline", None, model=MIXTRAL, gpu=H200)), reqs, n_tenants=3, clock="virtual")
    assert len(run.requests) == 5


def test_bad_instance_layouts_and_unserved_tenants_are_refused() -> None:
    cost = CostBackend(COST_MODELS.build("roofline", None, model=MIXTRAL, gpu=H200))
    with pytest.raises(UserError, match="one per instance"):
        serve(MIXTRAL, H200, POLICIES.build("mig"), cost, _poisson(4, 1.0, 0), n_tenants=3, clock="virtual")
    with pytest.raises(UserError, match="whole-GPU instances"):
        serve(MIXTRAL, H200, POLICIES.build("dedicated"), [cost] * 3, _poisson(4, 1.0, 0), n_tenants=3,
              clock="virtual")
    with pytest.raises(UserError, match="tenant 5"):
        serve(MIXTRAL, H200, POLICIES.build("multiplex"), cost,
              [Request(0, 5, 0.0, 10, 3)], n_tenants=3, clock="virtual")


def test_wall_clock_sleeping_cost_backend_serves_in_real_time() -> None:
    from moesim.serve.runtime import SleepingCostBackend

    reqs = [Request(i, i % 2, 0.05 * i, 20, 4) for i in range(8)]
    cost = ConstantCost(ConstantCostConfig(prefill_s=0.02, decode_step_s=0.005), MIXTRAL, H200)
    run = serve(MIXTRAL, H200, POLICIES.build("multiplex", {"max_batch": 4}), SleepingCostBackend(cost), reqs,
                n_tenants=2, clock="wall")
    _conserved(reqs, run.requests, run.segments)
    ttft = (run.requests["first_token_s"] - run.requests["arrival_s"]).to_numpy()
    assert (ttft >= 0.02 - 1e-3).all()  # a prefill of 20 ms really elapsed
    assert run.horizon_s >= 0.05 * 7 + 0.02 + 3 * 0.005 - 1e-3  # the last arrival, then its own work


# ---- torch on CPU, real time ----------------------------------------------------------------------
def test_tiny_model_served_in_real_time_on_cpu(tmp_path) -> None:
    pytest.importorskip("torch")
    from moesim.serve.config import ServeConfig
    from moesim.serve.run import run

    cfg = ServeConfig(model="tiny", device="cpu", policy="reconfig_fast", max_batch=4, tenants=3, rate=6.0,
                      max_requests=14, max_prompt=96, max_output=12, budget_bytes=6e5, out=str(tmp_path),
                      compare=True, sim_cost="roofline")
    run(cfg, [], log=lambda *a, **k: None)
    req = pd.read_parquet(tmp_path / "requests.parquet")
    seg = pd.read_parquet(tmp_path / "segments.parquet")
    sim = pd.read_parquet(tmp_path / "simulated_requests.parquet")
    assert set(sim.columns) <= set(req.columns)  # the simulator's table
    assert len(req) == 14
    from moesim.serve.config import make_requests

    reqs = make_requests(cfg)
    _conserved(reqs, req, seg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_requests"] == 14
    assert summary["status"] == "ok"
    be = summary["backend"]
    # 7 of 16 positions shared on the "GPU", 9 per tenant on the host: host experts were really fetched
    assert summary["instances"][0]["resident_expert_copies"] == 7
    assert be["expert_fetches"] > 0
    assert be["fetch_bytes"] == be["expert_fetches"] * TINY.expert_bytes
    assert int(seg["expert_fetches"].sum()) == be["expert_fetches"]
    # every swap copied the whole non-expert set, for real
    swaps = seg[seg["kind"] == "swap"]
    assert summary["swap_count"] == len(swaps) == be["swaps"] > 0
    set_bytes = sum(t.numel() * t.element_size() for t in _tiny_set())
    assert be["swap_bytes"] == be["swaps"] * set_bytes
    assert (swaps["copy_s"] > 0).all()
    # real time: nothing starts before it arrives; the run lasted at least the trace
    assert summary["horizon_s"] >= max(r.arrival_s for r in reqs)
    assert summary["validation"]["n_requests"] == 14
    assert (tmp_path / "replay_requests.parquet").exists()
    # the offline validation (what the GPU machine, without simpy, leaves for later) gives the same figures
    from moesim.serve.validate import validate_run

    row = validate_run(tmp_path, "roofline")
    for k in ("mean_turnaround_s_error_pct", "mean_ttft_s_error_pct", "turnaround_ape_median_pct"):
        assert row[k] == pytest.approx(summary["validation"][k], rel=1e-12)
    assert row["sim_swap_count"] == summary["validation"]["sim_swap_count"]


def _tiny_set():
    import torch

    from moesim.calibrate.engine import MoEEngine

    return MoEEngine(TINY, torch.device("cpu"), n_tenants=1).tenants[0].tensors()


def test_cli_help_and_bad_input() -> None:
    env_args = {"capture_output": True, "text": True, "timeout": 120}
    p = subprocess.run([sys.executable, "-m", "moesim.serve", "--help"], **env_args)
    assert p.returncode == 0
    assert p.stdout.startswith("usage: python -m moesim.serve")
    for key in ("policy=", "clock=", "backend=", "warmup=", "budget_bytes="):
        assert f"\n  {key}" in p.stdout
    p = subprocess.run([sys.executable, "-m", "moesim.serve", "policy=dedicated"], **env_args)
    assert p.returncode != 0
    assert "policy=dedicated with tenants=4, gpus=1" in p.stderr  # a whole GPU per tenant
    assert "Traceback" not in p.stderr
    with pytest.raises(UserError, match="clock"):
        parse_args(["clock=fast"])
    assert set(SERVED_POLICIES) <= set(POLICIES.names())


def test_profile_mixed_times_fetching_steps_eagerly() -> None:
    from moesim.cost.base import Residency, SeqWork
    from moesim.policies.base import consolidated_groups

    mixed = COST_MODELS.build("profile_mixed", None, model=MIXTRAL, gpu=H200)
    graphs = COST_MODELS.build("profile", {"execution": "graphs"}, model=MIXTRAL, gpu=H200)
    eager = COST_MODELS.build("profile", {"execution": "eager"}, model=MIXTRAL, gpu=H200)
    host = Residency(consolidated_groups(MIXTRAL, (0, 1), 223))  # 33 positions per tenant on the host
    resident = Residency(consolidated_groups(MIXTRAL, (0, 1), MIXTRAL.n_expert_positions))
    batch = (SeqWork(0, 256, 0), SeqWork(1, 1, 300))
    assert mixed.step(batch, host) == eager.step(batch, host)
    assert mixed.step(batch, resident) == graphs.step(batch, resident)
    assert mixed.step(batch, host).total_s > graphs.step(batch, host).total_s  # launch gaps of eager steps
    d_m, d_e = mixed.decode_run((0, 1), (300, 400), 5, host), eager.decode_run((0, 1), (300, 400), 5, host)
    np.testing.assert_array_equal(d_m.end_s, d_e.end_s)
    d_g = graphs.decode_run((0, 1), (300, 400), 5, resident)
    np.testing.assert_array_equal(mixed.decode_run((0, 1), (300, 400), 5, resident).end_s, d_g.end_s)
    assert mixed.swap_s(3e9, host, 0.5) == graphs.swap_s(3e9, host, 0.5)


def test_swaps_move_the_plans_bytes_for_real() -> None:
    """``swap`` moves the whole resident model: the set's tensors plus the rest through a scratch buffer."""
    pytest.importorskip("torch")
    from moesim.serve.backend import TorchBackend

    reqs = [Request(i, i % 3, 0.01 * i, 16, 3) for i in range(9)]  # tenants alternate: a swap per request
    for name in ("swap", "reconfig"):
        pol = POLICIES.build(name)
        plan = pol.layout(TINY, H200, 3)[0]
        be = TorchBackend(TINY, H200, device="cpu", n_tenants=3)
        run = serve(TINY, H200, pol, be, reqs, n_tenants=3, clock="virtual")  # measured steps, no idle waits
        _conserved(reqs, run.requests, run.segments)
        assert run.swap_count == be.stats["swaps"] == 8  # tenant 0 starts resident
        assert be.stats["swap_bytes"] == 8 * int(plan.swap_bytes)


def test_host_scheduling_time_is_measured_on_the_wall_clock() -> None:
    """A policy that takes 20 ms to decide delays every step by that much, and the timeline says so."""
    import time

    from moesim.policies.multiplex import Multiplex, MultiplexConfig
    from moesim.serve.runtime import SleepingCostBackend

    class SlowMultiplex(Multiplex):
        def select(self, inst):
            time.sleep(0.02)
            return super().select(inst)

    reqs = [Request(i, i % 2, 0.1 * i, 20, 2) for i in range(4)]  # spaced: each served alone
    cost = ConstantCost(ConstantCostConfig(prefill_s=0.01, decode_step_s=0.005), MIXTRAL, H200)
    run = serve(MIXTRAL, H200, SlowMultiplex(MultiplexConfig(max_batch=4)), SleepingCostBackend(cost), reqs,
                n_tenants=2, clock="wall")
    pre = run.segments[run.segments["kind"] == "prefill"]
    assert (pre["sched_s"] >= 0.02).all()  # the policy's time before each prefill
    ttft = (run.requests["first_token_s"] - run.requests["arrival_s"]).to_numpy()
    assert (ttft >= 0.02 + 0.01).all()
    virtual = serve(MIXTRAL, H200, SlowMultiplex(MultiplexConfig(max_batch=4)), CostBackend(cost), reqs,
                    n_tenants=2, clock="virtual")
    np.testing.assert_allclose((virtual.requests["first_token_s"] - virtual.requests["arrival_s"]), 0.01)


def test_profile_mixed_bounds_hidden_fetch_time_by_expert_compute() -> None:
    """With overlapped fetches, the hidden part is min(overlap × fetch, the expert compute of the layers that
    fetch), not overlap × fetch."""
    import dataclasses

    from moesim.cost.base import Residency, SeqWork
    from moesim.policies.base import consolidated_groups

    eager = COST_MODELS.build("profile", {"execution": "eager"}, model=MIXTRAL, gpu=H200)
    bound = COST_MODELS.build("profile_mixed", None, model=MIXTRAL, gpu=H200)
    free = COST_MODELS.build("profile_mixed", {"overlap_bound": False}, model=MIXTRAL, gpu=H200)
    sync = Residency(consolidated_groups(MIXTRAL, (0, 1), 223))
    over = dataclasses.replace(sync, fetch_overlap=0.5)
    for batch in ((SeqWork(0, 256, 0),), (SeqWork(0, 1, 300), SeqWork(1, 1, 200))):
        raw = eager.step(batch, sync)
        got = bound.step(batch, over)
        layers = 32 * (1 - (31 / 32) ** raw.expert_fetches)  # distinct MoE layers hit by the fetches
        hidden = min(0.5 * raw.fetch_s, raw.experts_s * layers / 32)
        assert 0 < hidden < raw.experts_s
        assert got.fetch_s == pytest.approx(raw.fetch_s - hidden, rel=1e-12)
        assert got.experts_s == raw.experts_s
        assert free.step(batch, over) == eager.step(batch, over)  # unbounded: the profile's overlap × fetch
        assert got.total_s >= free.step(batch, over).total_s
    run, raw = bound.decode_run((0, 1), (300, 200), 6, over), eager.decode_run((0, 1), (300, 200), 6, sync)
    hidden = min(0.5 * raw.cost.fetch_s, raw.cost.experts_s * (1 - (31 / 32) ** (raw.cost.expert_fetches / 6)))
    assert run.end_s[-1] == pytest.approx(raw.end_s[-1] - hidden, rel=1e-12)
    assert (np.diff(run.end_s) > 0).all()
    # no overlap: unchanged
    assert bound.step((SeqWork(0, 256, 0),), sync) == eager.step((SeqWork(0, 256, 0),), sync)
