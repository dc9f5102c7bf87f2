"""MIG executed by the runtime: one instance per slice, concurrently (threads), sharing one clock. CPU."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moesim.cost import COST_MODELS
from moesim.engine import simulate
from moesim.executor.compare import check_tables
from moesim.policies import POLICIES
from moesim.serve.runtime import CostBackend, serve
from moesim.specs import get_gpu, get_model
from moesim.workloads.request import Request

TINY = get_model("tiny")
H200 = get_gpu("h200")


def _trace(n: int, rate: float, seed: int, tenants: int) -> list[Request]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, n))
    return [Request(i, int(rng.integers(0, tenants)), float(t[i]), int(rng.integers(5, 60)),
                    int(rng.integers(1, 12))) for i in range(n)]


@pytest.mark.parametrize("tenants", [2, 3])
def test_mig_virtual_clock_equals_the_simulator(tenants: int) -> None:
    """Same requests table and same timeline as the simulator (instances share no host link: tiny fits)."""
    reqs = _trace(40, 40.0, tenants, tenants)
    policy = POLICIES.build("mig")
    plans = policy.layout(TINY, H200, tenants)
    assert len(plans) == tenants
    assert all(p.host_expert_bytes == 0 for p in plans)

    def cost():
        return COST_MODELS.build("roofline", None, model=TINY, gpu=H200)

    sim = simulate(TINY, H200, POLICIES.build("mig"), cost(), reqs, n_tenants=tenants)
    run = serve(TINY, H200, POLICIES.build("mig"), [CostBackend(cost()) for _ in plans], reqs,
                n_tenants=tenants, clock="virtual")
    cols = [c for c in sim.requests.columns if c in run.requests.columns]
    pd.testing.assert_frame_equal(sim.requests[cols], run.requests[cols])
    assert sorted(run.requests["instance"].unique()) == list(range(tenants))
    key = ["instance", "start_s", "kind"]
    a = sim.segments.sort_values(key).reset_index(drop=True)
    b = run.segments[list(sim.segments.columns)].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_mig_wall_clock_runs_instances_concurrently_on_cpu() -> None:
    """Two slices, each a torch backend in its own thread: requests and tokens conserved, both busy at once."""
    torch = pytest.importorskip("torch")
    from moesim.serve.backend import TorchBackend

    reqs = [Request(i, i % 2, 0.02 * (i // 2), 12 + i, 6) for i in range(12)]
    plans = POLICIES.build("mig").layout(TINY, H200, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        backends = [TorchBackend(TINY, H200, device="cpu", n_tenants=1, max_batch=p.max_batch) for p in plans]
        for b in backends:
            b.reserve_kv(64)
        run = serve(TINY, H200, POLICIES.build("mig"), backends, reqs, n_tenants=2, clock="wall")
    finally:
        torch.set_num_threads(threads)
    check_tables(run.requests)
    assert (run.requests["instance"] == run.requests["tenant"]).all()  # tenant i on slice i
    seg = run.segments
    pre, dec = seg[seg["kind"] == "prefill"], seg[seg["kind"] == "decode"]
    assert int(pre["tokens"].sum()) == sum(r.prompt_tokens for r in reqs)
    assert int(pre["n_seqs"].sum()) == len(reqs)
    assert int(dec["tokens"].sum()) == sum(r.output_tokens - 1 for r in reqs)
    assert set(seg["instance"]) == {p.name for p in plans}
    for i, b in enumerate(backends):  # each backend executed only its own slice's steps
        mine = seg[(seg["instance"] == plans[i].name) & (seg["kind"] != "swap")]
        assert b.stats["steps"] == int(mine["steps"].sum())
    # concurrency: some step of slice 0 overlaps in time with some step of slice 1
    s0 = seg[seg["instance"] == plans[0].name][["start_s", "end_s"]].to_numpy()
    s1 = seg[seg["instance"] == plans[1].name][["start_s", "end_s"]].to_numpy()
    assert any(a0 < b1 and a1 < b0 for a0, b0 in s0 for a1, b1 in s1)
