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


# ---- prefill per token bucket ---------------------------------------------------------------------
def test_prefill_buckets():
    from moesim.serve.buckets import prefill_bound, prefill_bucket_for, prefill_bucket_sizes

    assert prefill_bucket_sizes(4096) == (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
    assert prefill_bucket_sizes(1, 16) == (16,)
    assert [prefill_bucket_for(t) for t in (1, 26, 256, 257, 459, 927, 1183, 2048, 2049)] == \
        [256, 256, 256, 384, 512, 1024, 1536, 2048, 3072]
    assert prefill_bound([10, 256, 30, 200], 2) == 456
    assert prefill_bound([10, 20], 16) == 30


def test_plan_prefill_pads_into_a_sink_and_empty_slots():
    from moesim.serve.graphs import plan_prefill

    p = plan_prefill((2, 0, 1), (3, 2, 4), 16, 6)
    assert p.order == (1, 2, 0)  # by tenant, stable
    assert (p.n_real, p.tokens, p.bucket, p.n_slots) == (3, 9, 16, 6)
    assert p.tenant == (0, 0, 1, 1, 1, 1, 2, 2, 2) + (2,) * 7  # pads: the last real row's tenant
    assert p.pos == (0, 1, 0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6)
    assert p.pad == (False,) * 9 + (True,) * 7
    # real sequences, the sink (7 pad tokens), then two empty slots
    assert p.cu_q == (0, 2, 6, 9, 16, 16, 16)
    assert p.last == (1, 5, 8, 15, 15, 15)
    assert p.seqs == ((2, 0), (4, 0), (3, 0), (7, 0))
    full = plan_prefill((0,), (16,), 16, 2)  # no pad: an empty sink
    assert full.cu_q == (0, 16, 16)
    assert full.seqs == ((16, 0),)
    with pytest.raises(ValueError, match="does not fit"):
        plan_prefill((0, 1), (10, 7), 16, 6)
    with pytest.raises(ValueError, match="does not fit"):
        plan_prefill((0, 1, 2), (1, 1, 1), 16, 3)  # 3 sequences need 4 slots (the sink)


@pytest.mark.parametrize(("tenants", "toks", "bucket", "slots"),
                         [((2, 0, 1, 0), (5, 9, 3, 7), 32, 9), ((1,), (30,), 32, 5), ((0, 0), (8, 8), 16, 3),
                          ((1, 2), (7, 4), 64, 17)])
def test_bucketed_prefill_equals_engine_step(tenants, toks, bucket, slots):
    """A prefill padded to its token bucket and slot count gives the eager engine's next tokens per sequence."""
    from moesim.serve.graphs import make_prefill_buffers, plan_prefill

    m, eng = _engine()
    st = stack_tenants(eng)
    cache = KVCache(m, 512, eng.device, eng.dtype, eng.gen)
    p = plan_prefill(tenants, toks, bucket, slots)
    si = eng.make_inputs([(t, n, 0) for t, n in zip(tenants, toks, strict=True)])
    pad_ids = torch.randint(0, m.vocab, (bucket - sum(toks),), generator=torch.Generator().manual_seed(5))
    got = mixed_step(eng, st, make_prefill_buffers(p, eng.device, torch.cat([si.ids, pad_ids])), cache)
    assert got.shape == (slots,)
    ref = eng.step(si, cache)
    assert torch.equal(got[: p.n_real], ref)
    # the check can fail: the same rows with other tenants' weights give other next tokens
    buf = make_prefill_buffers(p, eng.device, torch.cat([si.ids, pad_ids]))
    buf.tid.copy_((buf.tid + 1) % 3)
    assert not torch.equal(mixed_step(eng, st, buf, cache)[: p.n_real], ref)


def test_backend_prefill_runs_in_its_token_bucket_on_cpu():
    """The backend's prefills from context 0 take the bucketed path (16, 24, 32, … tokens on the CPU)."""
    from moesim.cost.base import SeqWork
    from moesim.serve.backend import TorchBackend
    from moesim.specs import get_gpu

    b = TorchBackend(get_model("tiny"), get_gpu("h200"), device="cpu", n_tenants=3, max_batch=4)
    b.reserve_kv(64)
    b._execute((SeqWork(1, 5, 0), SeqWork(0, 14, 0)))  # 19 tokens → bucket 24
    b._execute((SeqWork(2, 16, 0),))  # exactly a bucket
    assert b.stats["prefill_pad_tokens"] == 5
    assert b.stats["steps"] == b.stats["eager_steps"] == 2
    assert b.pg.stats["eager"] == 2
    b._execute(tuple(SeqWork(i % 3, 4, 0) for i in range(5)))  # 5 sequences > max_batch 4: the engine's path
    assert b.pg.stats["eager"] == 2
    assert b.stats["steps"] == 3
    rows = b.prefill_table(tokens=(8,), n_seqs=(1, 2), fills=((3, 8),), reps=1)
    assert [(r["n_seqs"], r["tokens"], r["bucket"], r["n_tenants"]) for r in rows] == \
        [(1, 8, 16, 1), (2, 8, 16, 2), (3, 8, 24, 3)]
    assert all(r["eager_s"] > 0 and r["bucket_s"] > 0 for r in rows)

