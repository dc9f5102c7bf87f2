"""Fetching decode steps run piecewise (``DecodeGraphs.run_split``, ``TorchBackend`` ``fetch_graphs``), on CPU.

On the CPU there are no graphs: the prefix runs eagerly through the same code, so these tests check the split
(the pieces compose to ``mixed_step``; the split step gives the engine's tokens and fetches the same experts)
and the backend's accounting; the graph replay itself is checked on the H200 (``piecewise_check.py``).
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest

torch = pytest.importorskip("torch")

from moesim.calibrate.engine import KVCache, MoEEngine  # noqa: E402
from moesim.cost.base import ExpertGroup, Residency, SeqWork  # noqa: E402
from moesim.errors import UserError  # noqa: E402
from moesim.executor.layout import apply_residency  # noqa: E402
from moesim.serve.backend import SYNC_DECODE, Fetcher, TorchBackend  # noqa: E402
from moesim.serve.graphs import (  # noqa: E402
    bucket_sizes,
    first_host_layer,
    make_buffers,
    mixed_context,
    mixed_embed,
    mixed_head,
    mixed_layers,
    mixed_step,
    plan_decode,
    stack_tenants,
)
from moesim.specs import get_gpu, get_model  # noqa: E402

TINY4 = dataclasses.replace(get_model("tiny"), n_layers=4)  # 4 MoE layers × 8 experts: 32 positions per tenant
H200 = get_gpu("h200")


def _host_last(host: int = 10) -> Residency:
    """Tenants 0 and 1: 16 shared positions and 6 private ones on the GPU, their last ``host`` positions on the
    host (a packed layout: host slots only in the last layers; host = 10: layers 2 and 3)."""
    shared = min(16, 26 - host)
    gpu = 32 - shared - host
    return Residency((ExpertGroup(frozenset({0, 1}), shared, True), ExpertGroup(frozenset({0}), gpu, True),
                      ExpertGroup(frozenset({1}), gpu, True), ExpertGroup(frozenset({0}), host, False),
                      ExpertGroup(frozenset({1}), host, False)))


def _engine(residency: Residency | None = None) -> MoEEngine:
    eng = MoEEngine(TINY4, torch.device("cpu"), n_tenants=2, seed=3, moe_engine="grouped", dtype=torch.float32)
    if residency is not None:
        apply_residency(eng, residency, 2)
    return eng


def test_pieces_compose_to_mixed_step():
    eng = _engine(_host_last())
    eng.fetcher = Fetcher(eng.device, overlap=False)
    st = stack_tenants(eng)
    cache = KVCache(TINY4, 512, eng.device, eng.dtype, eng.gen)
    p = plan_decode((1, 0, 1), (7, 30, 12), bucket_sizes(4), 16)
    buf = make_buffers(p, eng.device, TINY4.vocab)
    ref = mixed_step(eng, st, buf, cache)
    for cuts in ((0, 4), (0, 2, 4), (0, 1, 3, 4), (0, 1, 2, 3, 4)):
        ctx = mixed_context(eng, st, buf)
        x = mixed_embed(eng, st, buf)
        for lo, hi in itertools.pairwise(cuts):
            x = mixed_layers(eng, st, buf, cache, x, lo, hi, ctx)
        assert torch.equal(mixed_head(eng, st, buf, x, ctx), ref)


@pytest.mark.parametrize(("tenants", "ctx", "host"), [((1, 0, 1), (7, 30, 12), 10), ((0,), (40,), 10),
                                                      ((1, 1, 0, 0, 1), (3, 4, 5, 6, 7), 3)])
def test_split_step_equals_engine_step_and_fetches_the_same(tenants, ctx, host):
    """The piecewise step (prefix, then the host layers with the fetcher) gives the eager engine's next tokens for
    every real sequence and fetches the same number of host experts (pads fetch nothing more)."""
    eng = _engine(_host_last(host))
    j = first_host_layer(eng)
    assert j == (2 if host == 10 else 3)  # the packed layout: host copies in the last layers only
    assert all(eng.host_in[i] for i in range(j, 4))
    eng.fetcher = f = Fetcher(eng.device, overlap=False)
    from moesim.serve.graphs import DecodeGraphs

    dg = DecodeGraphs(eng, 8, 16)
    # the graphs captured ahead (decode and prefix): every batch bucket up to the run's, every key bound
    assert dg._shapes(3, 20) == [(b, k) for b in (1, 2, 4) for k in (16, 32)]
    assert dg._shapes(100, 15) == [(b, 16) for b in dg.sizes]
    cache = KVCache(TINY4, 512, eng.device, eng.dtype, eng.gen)
    f.reset()
    assert dg.run_split(tenants, ctx, cache) is False  # CPU: no graph, the prefix ran eagerly
    got, n_split = dg.last_out, f.count
    p = plan_decode(tenants, ctx, dg.sizes, 16)
    si = eng.make_inputs([(t, 1, c) for t, c in zip(tenants, ctx, strict=True)])
    si.ids.copy_(make_buffers(p, eng.device, TINY4.vocab).ids[: p.n_real])  # same packed order and ids
    f.reset()
    ref = eng.step(si, cache)
    assert n_split == f.count > 0
    assert torch.equal(got[: p.n_real], ref)
    assert dg.stats["split_eager"] == 1
    assert dg.stats["prefix_replays"] == 0
    # the check can fail: the tail skipped (prefix only) gives no tokens, fetches nothing
    f.reset()
    dg.run_split(tenants, ctx, cache, tail=False)
    assert dg.last_out is None
    assert f.count == 0


def _plan(residency: Residency):
    from moesim.policies import POLICIES

    plan = POLICIES.build("multiplex", {"max_batch": 8}).layout(TINY4, H200, 2)[0]
    return dataclasses.replace(plan, residency=residency)


def _decode(b: TorchBackend, steps: int = 4) -> list:
    b.reserve_kv(8 * 64)
    b.begin_decode((0, 1, 1), (5, 9, 20), steps, None)
    costs = []
    for k in range(steps):
        before = b.stats["steps"]
        b.decode_step(k)
        assert b.stats["steps"] == before + 1
        costs.append(b._acc)
    return costs


def test_backend_runs_fetching_decode_steps_piecewise():
    b = TorchBackend(TINY4, H200, device="cpu", n_tenants=2, max_batch=8, fetch_graphs="on")
    assert b.split_fetch
    b.setup(_plan(_host_last()), 2)
    assert b.fetcher is not None
    assert b._split_layer() == 2
    assert b.prepare(8, 64) == 0  # CPU: no graphs to capture
    _decode(b, 4)
    s = b.stats
    assert s["steps"] == s["split_steps"] == 4
    assert s["eager_steps"] == 4  # CPU: the prefix ran eagerly
    assert s["prefix_graph_steps"] == 0
    assert s["pad_rows"] == 4 * (4 - 3)  # 3 sequences padded to the bucket of 4
    assert s["expert_fetches"] == b._acc.expert_fetches > 0  # every step's fetches recorded, none lost
    assert b.dg.stats["split_eager"] == 4
    assert b.describe()["split_fetch"] is True
    pre = b._execute((SeqWork(1, 5, 0),))  # a prefill that fetches: piecewise too (its token bucket)
    assert s["split_steps"] == 4
    assert s["prefill_split_steps"] == 1
    assert s["prefill_prefix_graph_steps"] == 0
    assert s["prefill_pad_tokens"] == 16 - 5  # the CPU's smallest token bucket
    assert b.pg.stats["split_eager"] == 1
    assert b.describe()["prefill_prefix_graphs"] == []  # CPU: no graph captured
    assert s["eager_steps"] == 5
    assert pre.expert_fetches > 0
    assert s["expert_fetches"] == b._acc.expert_fetches + pre.expert_fetches
    b._execute((SeqWork(1, 5, 3),))  # a cached context: the engine's eager path
    assert s["prefill_split_steps"] == 1
    assert s["steps"] == s["eager_steps"] == 6


def test_fetch_graphs_off_keeps_the_eager_engine_path():
    b = TorchBackend(TINY4, H200, device="cpu", n_tenants=2, max_batch=8, fetch_graphs="off")
    assert not b.split_fetch
    b.setup(_plan(_host_last()), 2)
    _decode(b, 3)
    s = b.stats
    assert s["split_steps"] == s["prefix_graph_steps"] == s["pad_rows"] == 0  # no bucket: the engine's step
    assert s["steps"] == s["eager_steps"] == 3
    assert s["expert_fetches"] == b._acc.expert_fetches > 0
    pre = b._execute((SeqWork(1, 5, 0), SeqWork(0, 9, 0)))  # a fetching prefill: the engine's step too
    assert s["prefill_split_steps"] == s["prefill_pad_tokens"] == 0
    assert s["steps"] == s["eager_steps"] == 4
    assert pre.expert_fetches > 0
    # auto on the CPU: no graphs, so off; host slots in layer 0: no split even when on
    assert not TorchBackend(TINY4, H200, device="cpu", n_tenants=2, max_batch=8).split_fetch
    on = TorchBackend(TINY4, H200, device="cpu", n_tenants=2, max_batch=8, fetch_graphs="on")
    on.setup(_plan(_host_last(20)), 2)  # 20 host positions: from layer 1 on (position 12 is layer 1)
    assert on._split_layer() == 1
    every = Residency((ExpertGroup(frozenset({0, 1}), 30, True), ExpertGroup(frozenset({0}), 2, True),
                       ExpertGroup(frozenset({1}), 2, False)))
    on.setup(_plan(every), 2)
    assert on._split_layer() == 3


def test_host_slots_in_layer_0_run_the_whole_step_eagerly():
    b = TorchBackend(TINY4, H200, device="cpu", n_tenants=2, max_batch=8, fetch_graphs="on")
    b.setup(_plan(Residency((ExpertGroup(frozenset({0, 1}), 28, False), ExpertGroup(frozenset({0}), 4, True),
                             ExpertGroup(frozenset({1}), 4, True)))), 2)
    assert b._split_layer() == 0
    _decode(b, 2)
    assert b.stats["split_steps"] == 0
    assert b.stats["eager_steps"] == 2
    assert b.stats["expert_fetches"] > 0


def test_bad_fetch_graphs_is_one_line():
    from moesim.serve.config import parse_args

    with pytest.raises(UserError) as e:
        TorchBackend(TINY4, H200, device="cpu", n_tenants=2, fetch_graphs="yes")
    assert str(e.value) == "fetch_graphs='yes': valid: auto, on, off"
    with pytest.raises(UserError, match="fetch_graphs='sometimes'"):
        parse_args(["fetch_graphs=sometimes"])
    assert parse_args(["fetch_graphs=off"]).fetch_graphs == "off"


def test_fetch_table_on_cpu(tmp_path):
    import pandas as pd

    from moesim.cost.fetch_pipeline import FetchTable
    from moesim.policies import POLICIES

    b = TorchBackend(TINY4, H200, device="cpu", n_tenants=3, max_batch=16)
    b.setup(POLICIES.build("multiplex", {"max_batch": 16}).layout(TINY4, H200, 3)[0], 3)
    df = pd.DataFrame(b.fetch_table(reps=2, prefixes=(1, 3, 8)))
    assert list(df.columns) == ["n_seqs", "n_tenants", "bucket", "context", "n_layers", "eager_layer_s",
                                "eager_nosync_layer_s", "eager_head_s", "graph_step_s", "graph", "prefix_graph",
                                "prefix_1_s", "prefix_3_s"]  # 8 ≥ 4 layers: not timed
    assert [tuple(r) for r in df[["n_seqs", "n_tenants"]].to_numpy()] == [(n, min(k, n, 3)) for n, k in SYNC_DECODE]
    assert (df["bucket"] >= df["n_seqs"]).all()
    for c in ("eager_layer_s", "eager_nosync_layer_s", "eager_head_s", "graph_step_s", "prefix_1_s", "prefix_3_s"):
        assert (df[c] > 0).all(), c
    assert not df["graph"].any()
    assert not df["prefix_graph"].any()
    assert (df["n_layers"] == 4).all()
    assert b.dg.prefix == {}
    # the simulator's reader takes it as written
    df.to_csv(tmp_path / "fetch_table.csv", index=False)
    t = FetchTable(tmp_path, 4)
    one = df[(df["n_seqs"] == 1) & (df["n_tenants"] == 1)].iloc[0]
    assert t.layer_s(1, 1) == pytest.approx((one["eager_nosync_layer_s"],
                                             max(one["eager_layer_s"], one["eager_nosync_layer_s"])))
    assert t.prefix_s(1, 1, 3) == pytest.approx(one["prefix_3_s"])
    assert t.prefix_s(1, 1, 2) == pytest.approx((one["prefix_1_s"] + one["prefix_3_s"]) / 2)


def test_served_run_with_host_experts_runs_its_decode_steps_piecewise():
    """A served run (virtual clock, measured steps) whose layout holds host copies in the last layers: every decode
    step goes piecewise, prefills eagerly, and the timeline's fetches add up to the backend's."""
    import numpy as np

    from moesim.policies import POLICIES
    from moesim.serve.runtime import serve
    from moesim.workloads.request import Request

    rng = np.random.default_rng(2)
    reqs = [Request(i, i % 2, 0.01 * i, int(rng.integers(4, 20)), int(rng.integers(2, 6))) for i in range(6)]
    pol = POLICIES.build("reconfig", {"budget_bytes": 1.2e6})  # host slots in layers 2 and 3 of 4
    b = TorchBackend(TINY4, H200, device="cpu", n_tenants=2, fetch_graphs="on")
    b.reserve_kv(8 * 30)
    res = serve(TINY4, H200, pol, b, reqs, n_tenants=2, clock="virtual")
    seg = res.segments
    steps = seg[seg["kind"] != "swap"]
    dec, pre = steps[steps["kind"] == "decode"], steps[steps["kind"] == "prefill"]
    s = b.stats
    assert b._split_layer() == 2
    assert s["split_steps"] == int(dec["steps"].sum()) > 0  # every decode step piecewise
    assert s["prefill_split_steps"] == len(pre) > 0  # every prefill (from context 0) piecewise
    assert s["steps"] == int(steps["steps"].sum()) == s["split_steps"] + s["prefill_split_steps"]
    assert int(steps["eager_steps"].sum()) == s["eager_steps"] == s["steps"]  # CPU: no graph replayed
    assert float(steps["expert_fetches"].sum()) == pytest.approx(s["expert_fetches"], rel=1e-9)
    assert float(dec["expert_fetches"].sum()) > 0


# ---- fetching prefills, piecewise (``PrefillGraphs.run_split``) ------------------------------------------------
def _prefill_inputs(eng: MoEEngine, tenants: tuple[int, ...], toks: tuple[int, ...], bucket: int, slots: int):
    from moesim.serve.graphs import plan_prefill

    p = plan_prefill(tenants, toks, bucket, slots)
    si = eng.make_inputs([(t, n, 0) for t, n in zip(tenants, toks, strict=True)])
    pad = torch.randint(0, TINY4.vocab, (bucket - sum(toks),), generator=torch.Generator().manual_seed(5))
    return p, si, torch.cat([si.ids, pad])


def test_prefill_pieces_compose_to_mixed_step():
    from moesim.serve.graphs import make_prefill_buffers

    eng = _engine(_host_last())
    eng.fetcher = Fetcher(eng.device, overlap=False)
    st = stack_tenants(eng)
    cache = KVCache(TINY4, 512, eng.device, eng.dtype, eng.gen)
    p, _, ids = _prefill_inputs(eng, (1, 0, 1), (7, 3, 12), 24, 5)
    buf = make_prefill_buffers(p, eng.device, ids)
    ref = mixed_step(eng, st, buf, cache)
    assert ref.shape == (5,)
    for cuts in ((0, 4), (0, 2, 4), (0, 1, 3, 4), (0, 1, 2, 3, 4)):
        ctx = mixed_context(eng, st, buf)
        x = mixed_embed(eng, st, buf)
        for lo, hi in itertools.pairwise(cuts):
            x = mixed_layers(eng, st, buf, cache, x, lo, hi, ctx)
        assert torch.equal(mixed_head(eng, st, buf, x, ctx), ref)


@pytest.mark.parametrize(("tenants", "toks", "bucket", "host"), [((1, 0, 1), (7, 3, 12), 24, 10),
                                                                 ((0,), (16,), 16, 10), ((1, 0), (5, 4), 16, 3)])
def test_split_prefill_equals_engine_step_and_fetches_the_same(tenants, toks, bucket, host):
    """A fetching prefill run piecewise (prefix, then the host layers with the fetcher, padded to its token
    bucket) gives the eager engine's next token of every sequence and fetches as many host experts (pads take the
    first real token's experts: nothing more)."""
    from moesim.serve.graphs import PrefillGraphs

    eng = _engine(_host_last(host))
    assert first_host_layer(eng) == (2 if host == 10 else 3)
    eng.fetcher = f = Fetcher(eng.device, overlap=False)
    pg = PrefillGraphs(eng, stack_tenants(eng), 4, 16)
    cache = KVCache(TINY4, 512, eng.device, eng.dtype, eng.gen)
    p, si, ids = _prefill_inputs(eng, tenants, toks, bucket, pg.n_slots)
    assert pg.plan(tenants, toks) == p
    f.reset()
    assert pg.run_split(p, cache, ids=ids) is False  # CPU: no graph, the prefix ran eagerly
    got, n_split = pg.last_out, f.count
    f.reset()
    ref = eng.step(si, cache)
    assert n_split == f.count > 0
    assert torch.equal(got[: p.n_real], ref)
    assert pg.stats["split_eager"] == 1
    assert pg.stats["prefix_replays"] == pg.stats["prefix_captures"] == 0
    assert pg.stats["pad_tokens"] == bucket - sum(toks)
    # the check can fail: the tail skipped (prefix only) gives no tokens, fetches nothing
    f.reset()
    pg.run_split(p, cache, ids=ids, tail=False)
    assert pg.last_out is None
    assert f.count == 0


def test_prefill_fetch_table_on_cpu(tmp_path):
    import pandas as pd

    from moesim.policies import POLICIES

    b = TorchBackend(TINY4, H200, device="cpu", n_tenants=3, max_batch=16)
    b.setup(POLICIES.build("multiplex", {"max_batch": 16}).layout(TINY4, H200, 3)[0], 3)
    assert b.fetcher is None
    df = pd.DataFrame(b.prefill_fetch_table(reps=2, tokens=(16, 20, 32), n_tenants=(1, 2), prefixes=(1, 3, 8)))
    assert list(df.columns) == ["tokens", "n_tenants", "n_seqs", "n_layers", "prefill_eager_layer_s",
                                "prefill_eager_nosync_layer_s", "prefill_eager_head_s", "prefill_graph_s", "graph",
                                "prefix_graph", "prefix_1_s", "prefix_3_s"]  # 8 ≥ 4 layers: not timed
    # 20 tokens → the bucket of 24 (16 × 1.5), filled exactly
    assert [tuple(r) for r in df[["tokens", "n_tenants"]].to_numpy()] == [
        (16, 1), (16, 2), (24, 1), (24, 2), (32, 1), (32, 2)]
    for c in ("prefill_eager_layer_s", "prefill_eager_nosync_layer_s", "prefill_eager_head_s", "prefill_graph_s",
              "prefix_1_s", "prefix_3_s"):
        assert (df[c] > 0).all(), c
    assert not df["graph"].any()
    assert not df["prefix_graph"].any()
    assert (df["n_layers"] == 4).all()
    assert b.pg.prefix == {}
    assert b.pg.stats["eager"] == 6 * 3  # prefill_graph_s: one untimed + 2 timed per row, eager on the CPU
    assert b.pg.stats["split_eager"] == 6 * 2 * 3
    assert b.pg.stats["pad_tokens"] == 0  # every row fills its bucket
