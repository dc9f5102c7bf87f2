"""Decode steps per batch-size bucket with the tenant mix as data (``moesim.serve.graphs``), on CPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from moesim.calibrate.engine import KVCache, MoEEngine  # noqa: E402
from moesim.serve.graphs import (  # noqa: E402
    bucket_for,
    bucket_sizes,
    kv_round,
    make_buffers,
    mixed_step,
    plan_decode,
    stack_tenants,
)
from moesim.specs import get_model  # noqa: E402


def test_bucket_sizes_and_lookup():
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(16) == (1, 2, 4, 8, 16)
    assert bucket_sizes(12) == (1, 2, 4, 8, 12)
    s = bucket_sizes(12)
    assert [bucket_for(n, s) for n in (1, 2, 3, 5, 8, 9, 12)] == [1, 2, 4, 8, 8, 12, 12]
    with pytest.raises(ValueError, match="largest bucket"):
        bucket_for(13, s)
    assert kv_round(1, 256) == 256
    assert kv_round(256, 256) == 256
    assert kv_round(257, 256) == 512


def test_plan_decode_pads_and_sorts():
    p = plan_decode((2, 0, 1, 0, 2), (5, 9, 3, 7, 11), bucket_sizes(8), 16)
    assert p.bucket == 8
    assert p.n_real == 5
    assert p.order == (1, 3, 2, 0, 4)  # by tenant, stable
    assert p.tenant == (0, 0, 1, 2, 2, 2, 2, 2)  # pads take the last real row's tenant
    assert p.pos == (9, 7, 3, 5, 11, 0, 0, 0)
    # each real row has context+1 keys; pads one key each, in scratch rows after the real ones
    assert p.cu_k == (0, 10, 18, 22, 28, 40, 41, 42, 43)
    assert p.slots == (9, 17, 21, 27, 39, 40, 41, 42)
    assert p.pad == (False,) * 5 + (True,) * 3
    assert p.max_k == 16
    assert p.kv_rows == 43
    # the same bucket and key bound whatever the tenant mix: one graph serves them all
    q = plan_decode((1, 1, 1, 1, 1), (5, 9, 3, 7, 11), bucket_sizes(8), 16)
    assert (q.bucket, q.max_k) == (p.bucket, p.max_k)


def _engine(tenants: int = 3):
    m = get_model("tiny")
    eng = MoEEngine(m, torch.device("cpu"), n_tenants=tenants, seed=0, moe_engine="loop", dtype=torch.float32)
    return m, eng


def test_stack_keeps_views_and_values():
    _, eng = _engine()
    before = eng.tenants[1].wqkv[1].clone()
    st = stack_tenants(eng)
    assert torch.equal(st.layers["wqkv"][1][1], before)
    eng.tenants[1].wqkv[1].copy_(torch.zeros_like(before))  # a swap writes the tenant's tensor: the stack sees it
    assert float(st.layers["wqkv"][1][1].abs().sum()) == 0.0


@pytest.mark.parametrize(("tenants", "ctx", "max_batch"), [((2, 0, 1, 0, 2), (5, 9, 3, 7, 11), 8),
                                                   ((1,), (30,), 4), ((0, 0, 0), (1, 2, 3), 3)])
def test_mixed_step_equals_engine_step(tenants, ctx, max_batch):
    """The bucketed, padded step gives the engine's next tokens for every real sequence."""
    m, eng = _engine()
    st = stack_tenants(eng)
    cache = KVCache(m, 512, eng.device, eng.dtype, eng.gen)
    p = plan_decode(tenants, ctx, bucket_sizes(max_batch), 16)
    buf = make_buffers(p, eng.device, m.vocab)
    got = mixed_step(eng, st, buf, cache)[: p.n_real]
    si = eng.make_inputs([(t, 1, c) for t, c in zip(tenants, ctx, strict=True)])
    si.ids.copy_(buf.ids[: p.n_real])  # same packed order (by tenant, stable)
    ref = eng.step(si, cache)
    assert torch.equal(got, ref)


def test_backend_decode_runs_bucketed_on_cpu():
    """The backend's decode steps go through the bucketed step; counters and pad rows add up."""
    from moesim.cost.base import SeqWork
    from moesim.serve.backend import TorchBackend
    from moesim.specs import get_gpu

    b = TorchBackend(get_model("tiny"), get_gpu("h200"), device="cpu", n_tenants=3, max_batch=8)
    b.reserve_kv(64)
    b.begin_decode((0, 2, 1), (4, 6, 8), 3, None)
    for k in range(3):
        b.decode_step(k)
    s = b.stats
    assert s["steps"] == 3
    assert s["eager_steps"] == 3
    assert s["graph_steps"] == 0
    assert s["pad_rows"] == 3 * (4 - 3)  # 3 sequences padded to the bucket of 4
    b._execute((SeqWork(1, 5, 0),))  # a prefill takes the engine's path
    assert s["steps"] == 4
    assert s["pad_rows"] == 3


def test_served_run_records_eager_steps_per_segment():
    """Each segment says how many of its steps ran eagerly; on CPU every step does, and the sum is the count."""
    import numpy as np

    from moesim.policies import POLICIES
    from moesim.serve.backend import TorchBackend
    from moesim.serve.runtime import serve
    from moesim.specs import get_gpu
    from moesim.workloads.request import Request

    rng = np.random.default_rng(1)
    reqs = [Request(i, int(rng.integers(0, 3)), 0.01 * i, int(rng.integers(4, 20)), int(rng.integers(2, 6)))
            for i in range(6)]
    b = TorchBackend(get_model("tiny"), get_gpu("h200"), device="cpu", n_tenants=3)
    b.reserve_kv(8 * 30)
    res = serve(get_model("tiny"), get_gpu("h200"), POLICIES.build("multiplex", {"max_batch": 8}), b, reqs,
                n_tenants=3, clock="virtual")
    seg = res.segments
    steps = seg[seg["kind"] != "swap"]
    assert (steps["eager_steps"] == steps["steps"]).all()
    assert int(steps["eager_steps"].sum()) == b.stats["eager_steps"] == b.stats["steps"]
    dec = steps[steps["kind"] == "decode"]
    assert int(dec["steps"].sum()) > 0
