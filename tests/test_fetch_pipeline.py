"""The fetching decode step as a pipeline of host launches and device copies (moesim.cost.fetch_pipeline)."""

from __future__ import annotations

import math

import pytest

from moesim.cost import COST_MODELS
from moesim.cost.base import ExpertGroup, Residency, SeqWork
from moesim.cost.fetch_pipeline import (
    FetchTable,
    HostTimes,
    LayerFetch,
    host_slots_by_layer,
    layer_fetches,
    pipeline_step,
    tokens_by_tenant,
)
from moesim.errors import UserError
from moesim.policies import POLICIES
from moesim.specs import get_gpu, get_model

MIXTRAL, H200 = get_model("mixtral-8x7b"), get_gpu("h200")
T = HostTimes(e=0.001, e_sync=0.0015, g=0.0004)


def test_layout_matches_the_runtimes_slot_assignment() -> None:
    torch = pytest.importorskip("torch")  # noqa: F841 - moesim.executor.layout imports torch
    from moesim.executor.layout import assign_slots

    for policy, params, n in (("reconfig", {"budget_bytes": 85e9}, 2), ("naive", {"budget_bytes": 85e9}, 2),
                              ("multiplex", {"budget_bytes": 85e9}, 3), ("mig", {"budget_bytes": 50e9}, 2)):
        res = POLICIES.build(policy, params).layout(MIXTRAL, H200, n)[0].residency
        slots = host_slots_by_layer(res, MIXTRAL.n_moe_layers, MIXTRAL.n_experts)
        _, n_host, assign = assign_slots(res, MIXTRAL.n_moe_layers, MIXTRAL.n_experts)
        assert [len(x) for x in slots] == n_host, policy
        assert sum(n_host) > 0, policy
        # the packed layout: host copies in the last layers only
        first = next(i for i, x in enumerate(n_host) if x)
        assert all(n_host[first + 1:]), policy
        for t, layers in assign.items():  # each tenant reaches exactly its host slots of every layer
            for layer, row in enumerate(layers):
                mine = sum(1 for on, _ in row if not on)
                assert mine == sum(1 for ts in slots[layer] if t in ts), (policy, t, layer)


def test_layer_fetches_closed_forms() -> None:
    a, b, ab = frozenset({0}), frozenset({1}), frozenset({0, 1})
    slots = ((), (a, b), (ab, ab, ab))
    lf = layer_fetches(slots, {0: 3, 1: 1}, 8, 2)
    assert lf[0] == LayerFetch(False, 0.0, 1.0)
    p3, p1, p4 = 1 - 0.75 ** 3, 1 - 0.75, 1 - 0.75 ** 4
    assert lf[1].fetches == pytest.approx(p3 + p1, rel=1e-12)
    assert lf[1].p_none == pytest.approx((1 - p3) * (1 - p1), rel=1e-12)
    assert lf[2].fetches == pytest.approx(3 * p4, rel=1e-12)  # a shared copy is reached by both tenants' tokens
    assert lf[2].p_none == pytest.approx((1 - p4) ** 3, rel=1e-12)
    # a tenant absent from the batch fetches nothing, but its host layer still syncs (host=True)
    only_b = layer_fetches(((a,),), {1: 5}, 8, 2)[0]
    assert only_b == LayerFetch(True, 0.0, 1.0)
    # tokens per fetched expert: the tokens routed to the layer's host slots (n·k/E each) over its expected fetches
    assert lf[1].tokens == pytest.approx((3 + 1) * 2 / 8 / (p3 + p1), rel=1e-12)
    assert lf[2].tokens == pytest.approx(4 * 2 / 8 / p4, rel=1e-12)
    assert layer_fetches(((a,),), {0: 256}, 8, 2)[0].tokens == pytest.approx(64.0, rel=1e-12)  # a prefill's 64
    assert tokens_by_tenant((0, 1, 0, 0)) == {0: 3, 1: 1}



def test_pipeline_step_runs_each_fetched_experts_ffn_after_its_copy() -> None:
    """Synchronous fetches: copy, FFN, copy, FFN on one stream (f·(t + u)); overlapped: the FFNs hide under the
    next copies but the last (f·t + u); the copies count whole either way."""
    layers = (LayerFetch(False, 0.0, 1.0), LayerFetch(True, 2.0, 0.0, 3.0))
    ffn = lambda tokens: 1e-4 * tokens  # noqa: E731 - 0.3 ms for the layer's 3 tokens per expert
    base, copies = pipeline_step(layers, T, 0.0064)
    assert base == pytest.approx(0.001 + 2 * 0.0064 + 0.0004 + 0.0005, rel=1e-12)
    sync, c_sync = pipeline_step(layers, T, 0.0064, ffn_s=ffn)
    over, c_over = pipeline_step(layers, T, 0.0064, ffn_s=ffn, overlap=True)
    assert sync == pytest.approx(base + 2 * 3e-4, rel=1e-12)
    assert over == pytest.approx(base + 3e-4, rel=1e-12)
    assert copies == c_sync == c_over == pytest.approx(2 * 0.0064, rel=1e-12)
    # a layer that may fetch nothing: the FFNs weigh only where it fetches
    maybe = (LayerFetch(True, 0.5, 0.6, 1.0),)
    got, _ = pipeline_step(maybe, T, 0.0064, ffn_s=ffn)
    n = 0.5 / 0.4
    assert got == pytest.approx(0.6 * 0.0015 + 0.4 * (n * (0.0064 + 1e-4) + 0.0004 + 0.0005), rel=1e-12)

def test_pipeline_step_closed_forms() -> None:
    t = 0.0064  # one expert over the link
    res = (LayerFetch(False, 0.0, 1.0),) * 4
    none = res + (LayerFetch(True, 0.0, 1.0),) * 3
    total, copies = pipeline_step(none, T, t)
    assert total == pytest.approx(4 * T.e + 3 * T.e_sync, rel=1e-12)  # CPU-bound: launches and syncs
    assert copies == 0.0
    sure = res + (LayerFetch(True, 2.0, 0.0),) * 3  # every host layer fetches two experts for sure
    total, copies = pipeline_step(sure, T, t)
    s = T.e_sync - T.e
    assert copies == pytest.approx(6 * t, rel=1e-12)
    assert total - copies == pytest.approx(4 * T.e + 3 * (T.g + s), rel=1e-12)  # the launches hide under copies
    # a layer that fetches with probability ½ (one expert when it does)
    half = (*res, LayerFetch(True, 0.5, 0.5))
    total, copies = pipeline_step(half, T, t)
    assert total == pytest.approx(4 * T.e + 0.5 * T.e_sync + 0.5 * (t + T.g + s), rel=1e-12)
    assert copies == pytest.approx(0.5 * t, rel=1e-12)
    # copies shorter than the host's launches: the layer stays host-bound
    total, _ = pipeline_step(sure, T, 1e-5)
    assert total == pytest.approx(4 * T.e + 3 * T.e_sync, rel=1e-12)
    # the layers before the first host layer from a graph; the fetch count scaled
    g = HostTimes(e=T.e, e_sync=T.e_sync, g=T.g, prefix_s=0.002)
    total, copies = pipeline_step(sure, g, t, fetch_scale=0.5)
    assert total == pytest.approx(0.002 + 3 * (t + T.g + s), rel=1e-12)
    assert copies == pytest.approx(3 * t, rel=1e-12)
    # the eager head after the last layer
    total, _ = pipeline_step(none, HostTimes(T.e, T.e_sync, T.g, head_s=0.0003), t)
    assert total == pytest.approx(4 * T.e + 3 * T.e_sync + 0.0003, rel=1e-12)
    # fetching steps get cheaper outside their copies as they fetch more (naive vs reconfig on the H200)
    outs = [pipeline_step(res + (LayerFetch(True, f, math.exp(-f)),) * 3, T, t) for f in (0.2, 1.0, 3.0)]
    gaps = [tot - c for tot, c in outs]
    assert gaps[0] > gaps[1] > gaps[2]


SYNC = ("batch,n_seqs,tokens,eager_s,eager_sync_s,per_layer_s,n_tenants\n"
        "decode_1,1,1,0.032,0.0384,0.0002,1\ndecode_4_t1,4,4,0.048,0.0544,0.0002,1\n"
        "decode_4,4,4,0.064,0.0736,0.0003,2\nprefill_256,1,256,0.1,0.2,0.01,1\n")


def test_fetch_table_from_sync_or_fetch_table(tmp_path) -> None:
    (tmp_path / "sync_table.csv").write_text(SYNC)
    ft = FetchTable(tmp_path, 32)
    assert ft.source.endswith("sync_table.csv")
    assert ft.layer_s(1, 1) == pytest.approx((0.001, 0.0012), rel=1e-12)
    assert ft.layer_s(2, 1) == pytest.approx(((0.032 + 0.016 / 3) / 32, (0.0384 + 0.016 / 3) / 32), rel=1e-12)
    assert ft.layer_s(4, 2) == pytest.approx((0.002, 0.0023), rel=1e-12)
    assert ft.layer_s(4, 3) == pytest.approx((0.002, 0.0023), rel=1e-12)  # nearest tenant count
    assert ft.prefix_s(1, 1, 8) is None
    assert ft.head_s(1, 1) == 0.0  # the sync table's per-layer times hold the head
    (tmp_path / "fetch_table.csv").write_text(
        "n_seqs,n_tenants,eager_layer_s,eager_nosync_layer_s,eager_head_s,graph_step_s,prefix_8_s,prefix_24_s\n"
        "1,1,0.0014,0.0011,0.0002,0.016,0.004,0.012\n4,1,0.0016,0.0013,0.0005,0.02,0.005,0.015\n")
    ft = FetchTable(tmp_path, 32)
    assert ft.source.endswith("fetch_table.csv")
    assert ft.layer_s(1, 1) == pytest.approx((0.0011, 0.0014), rel=1e-12)
    assert ft.head_s(2, 1) == pytest.approx(0.0003, rel=1e-12)
    assert ft.prefix_s(1, 1, 8) == pytest.approx(0.004, rel=1e-12)
    assert ft.prefix_s(1, 1, 16) == pytest.approx(0.008, rel=1e-12)  # linear between measured prefixes
    assert ft.prefix_s(1, 1, 4) == pytest.approx(0.002, rel=1e-12)  # through 0 below the first
    assert ft.prefix_s(1, 1, 30) == pytest.approx(0.012 * 30 / 24, rel=1e-12)  # proportional past the last
    assert ft.prefix_s(4, 1, 24) == pytest.approx(0.015, rel=1e-12)
    (tmp_path / "fetch_table.csv").write_text("n_seqs,eager_layer_s\n1,0.001\n")
    with pytest.raises(UserError, match=r"fetch_table\.csv: needs columns"):
        FetchTable(tmp_path, 32)


@pytest.fixture
def tables(tmp_path):
    (tmp_path / "decode_table.csv").write_text(
        "n_seqs,bucket,n_tenants,context,step_s\n1,1,1,200,0.016\n4,4,1,200,0.02\n4,4,2,200,0.024\n")
    (tmp_path / "sync_table.csv").write_text(SYNC)
    return tmp_path


def test_profile_bucketed_times_fetching_decode_steps_as_the_pipeline(tables) -> None:
    table = str(tables / "decode_table.csv")
    cost = COST_MODELS.build("profile_bucketed", {"table": table}, model=MIXTRAL, gpu=H200)
    bound = COST_MODELS.build("profile_bucketed", {"table": table, "fetch_model": "host_bound"}, model=MIXTRAL,
                              gpu=H200)
    graphs = COST_MODELS.build("profile_bucketed", {"table": table, "fetch_prefix": "graphs"}, model=MIXTRAL,
                               gpu=H200)
    no_ffn = COST_MODELS.build("profile_bucketed", {"table": table, "fetch_ffn": False}, model=MIXTRAL, gpu=H200)
    L = MIXTRAL.n_layers
    for policy, n in (("reconfig", 2), ("naive", 2)):
        res = POLICIES.build(policy, {"budget_bytes": 85e9}).layout(MIXTRAL, H200, n)[0].residency
        d = (SeqWork(0, 1, 200),)
        got, ref = cost.step(d, res), bound.step(d, res)
        mixed = cost.mixed.step(d, res)
        assert got.fetch_s == mixed.fetch_s > 0
        assert got.expert_fetches == mixed.expert_fetches
        # by hand: the layout's layers, the table's per-layer times (sync table / 32), scaled fetches
        layers = layer_fetches(host_slots_by_layer(res, L, MIXTRAL.n_experts), {0: 1}, 8, 2)
        scale = mixed.expert_fetches / sum(lf.fetches for lf in layers)
        u = cost.mixed.graphs.expert_one_s(1, res)  # the profile's one-expert FFN over one token
        assert u == pytest.approx(9.3e-5, rel=0.02)
        total, copies = pipeline_step(layers, HostTimes(0.001, 0.0012, 0.016 / L), mixed.fetch_s / mixed.expert_fetches,
                                      scale, ffn_s=lambda tokens, r=res: cost.mixed.graphs.expert_one_s(tokens, r))
        assert copies == pytest.approx(got.fetch_s, rel=1e-9)
        assert got.total_s == pytest.approx(total, rel=1e-9)
        # synchronous fetches (fetch_overlap 0): each fetched expert's FFN after its copy, one token each here
        off = no_ffn.step(d, res)
        assert got.total_s - off.total_s == pytest.approx(mixed.expert_fetches * u, rel=1e-6)
        assert got.total_s - got.fetch_s < ref.total_s - ref.fetch_s  # below the host-bound rule's synced step
        first = next(i for i, lf in enumerate(layers) if lf.host)
        gr = graphs.step(d, res)  # the resident prefix from a graph: the decode table's step × its share
        assert gr.total_s == pytest.approx(got.total_s - first * 0.001 + 0.016 * first / L, rel=1e-9)
        run = cost.decode_run((0,), (200,), 3, res)
        assert run.cost.total_s == pytest.approx(3 * got.total_s, rel=1e-9)
        assert run.end_s[-1] == pytest.approx(run.cost.total_s, rel=1e-9)
    # more fetches hide more launches: naive's step spends less outside its copies than reconfig's
    out = {}
    for policy in ("reconfig", "naive"):
        res = POLICIES.build(policy, {"budget_bytes": 85e9}).layout(MIXTRAL, H200, 2)[0].residency
        c = cost.step((SeqWork(0, 1, 200),), res)
        out[policy] = c.total_s - c.fetch_s
    assert out["naive"] < out["reconfig"]
    # an eager fetching prefill: the sync table's difference (synced at every layer) × the share of layers that
    # hold host slots, where the runtime syncs (reconfig at 85e9: the last 5 of 32 layers)
    res = POLICIES.build("reconfig", {"budget_bytes": 85e9}).layout(MIXTRAL, H200, 2)[0].residency
    p = (SeqWork(0, 256, 0),)
    mixed = cost.mixed.step(p, res)
    extra = cost.sync.extra_s(False, 1, 1)
    assert cost.step(p, res).total_s == pytest.approx(mixed.total_s + extra * 5 / 32, rel=1e-9)
    assert bound.step(p, res).total_s == pytest.approx(mixed.total_s + extra, rel=1e-9)
    # resident steps are not touched
    full = Residency((ExpertGroup(frozenset({0, 1}), 256, True),))
    assert cost.step((SeqWork(0, 1, 200),), full) == bound.step((SeqWork(0, 1, 200),), full)
    with pytest.raises(UserError, match="fetch_model='pipe'"):
        COST_MODELS.build("profile_bucketed", {"table": table, "fetch_model": "pipe"}, model=MIXTRAL, gpu=H200)
    with pytest.raises(UserError, match="fetch_prefix='graph'"):
        COST_MODELS.build("profile_bucketed", {"table": table, "fetch_prefix": "graph"}, model=MIXTRAL, gpu=H200)


def test_validation_link_rate_from_the_call_or_the_run(tmp_path) -> None:
    import json

    import pandas as pd

    from moesim.serve.validate import fetch_prefix_of, main, measured_link_Bps, measured_swap_Bps

    eb = MIXTRAL.expert_bytes
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"expert_fetches": [10.0, 0.0, 30.0], "fetch_s": [0.066, 0.0, 0.198]}).to_parquet(
        run / "segments.parquet")
    one, two = {"instances": [{}]}, {"instances": [{}, {}]}
    tables = tmp_path / "tables"
    tables.mkdir()
    table = str(tables / "decode_table.csv")
    assert measured_link_Bps(run, table, "table", one, eb) == 0.0  # no probe: the profile's
    (tables / "link_share.json").write_text(json.dumps({"fetch_GBps": 54.7}))
    assert measured_link_Bps(run, table, "table", one, eb) == pytest.approx(54.7e9, rel=1e-12)
    assert measured_link_Bps(run, table, "profile", one, eb) == 0.0
    assert measured_link_Bps(run, table, "run", one, eb) == pytest.approx(eb * 40 / 0.264, rel=1e-12)  # 6.6 ms each
    assert measured_link_Bps(run, table, "run", two, eb) == pytest.approx(54.7e9, rel=1e-12)  # shared link: the probe
    # swaps: the run's own copies with link=run (h200_split/swap_host-s2: 4 swaps of 69.8 GB in 5.2765 s, 52.9 GB/s
    # against the profile's 55.3), else the profile's
    doc = {"instances": [{}], "backend": {"swap_bytes": 279200169984, "swap_copy_s": 5.2765}}
    assert measured_swap_Bps("run", doc) == pytest.approx(279200169984 / 5.2765, rel=1e-12)
    assert measured_swap_Bps("table", doc) == 0.0
    assert measured_swap_Bps("run", {**doc, "instances": [{}, {}]}) == 0.0
    assert measured_swap_Bps("run", {"instances": [{}], "backend": {"swap_bytes": 0, "swap_copy_s": 0.0}}) == 0.0
    (tables / "decode_table.csv").write_text("n_seqs,bucket,n_tenants,context,step_s\n1,1,1,200,0.016\n")
    swap = COST_MODELS.build("profile_bucketed", {"table": table, "swap_link_Bps": 52.9e9}, model=MIXTRAL, gpu=H200)
    res = POLICIES.build("reconfig", {"budget_bytes": 85e9}).layout(MIXTRAL, H200, 2)[0].residency
    assert swap.swap_s(3.2e9, res, 0.5) == pytest.approx(3.2e9 / 52.9e9 / 0.5, rel=1e-12)
    with pytest.raises(UserError, match="swap_link_Bps=-1"):
        COST_MODELS.build("profile_bucketed", {"table": table, "swap_link_Bps": -1.0}, model=MIXTRAL, gpu=H200)
    assert fetch_prefix_of({"backend": {"prefix_graph_steps": 3}}) == "graphs"
    assert fetch_prefix_of({"backend": [{"prefix_graph_steps": 0}, {"prefix_graph_steps": 2}]}) == "graphs"
    assert fetch_prefix_of({"backend": {"split_steps": 4}}) == "eager"
    with pytest.raises(SystemExit):
        main([str(tmp_path), "link=runs"])
    with pytest.raises(SystemExit):
        main([str(tmp_path), "fetch_model=hostbound"])


def test_piecewise_prefills_from_the_prefill_fetch_table(tables) -> None:
    from moesim.cost.fetch_pipeline import PrefillFetchTable

    (tables / "prefill_fetch_table.csv").write_text(
        "tokens,n_tenants,prefill_eager_layer_s,prefill_graph_s,prefix_8_s,prefix_24_s,prefix_27_s\n"
        "256,1,0.0016,0.040,0.011,0.031,0.035\n512,1,0.0018,0.070,0.019,0.054,0.060\n")
    pt = PrefillFetchTable(tables / "prefill_fetch_table.csv")
    assert pt.times(256, 1, 27, 32) == pytest.approx((0.0016, 0.040, 0.035), rel=1e-12)
    assert pt.times(300, 1, 16, 32) == pytest.approx((0.0018, 0.070, 0.019 + (0.054 - 0.019) / 2), rel=1e-12)
    assert pt.times(1024, 2, 24, 32) == pytest.approx((0.0036, 0.140, 0.108), rel=1e-12)  # past the last: scaled
    table = str(tables / "decode_table.csv")
    split = COST_MODELS.build("profile_bucketed", {"table": table, "prefill_prefix": "graphs"}, model=MIXTRAL,
                              gpu=H200)
    eager = COST_MODELS.build("profile_bucketed", {"table": table}, model=MIXTRAL, gpu=H200)
    res = POLICIES.build("reconfig", {"budget_bytes": 85e9}).layout(MIXTRAL, H200, 2)[0].residency
    b = (SeqWork(0, 256, 0),)
    got, mixed = split.step(b, res), split.mixed.step(b, res)
    assert got.fetch_s == mixed.fetch_s > 0
    L = MIXTRAL.n_layers
    layers = layer_fetches(host_slots_by_layer(res, L, MIXTRAL.n_experts), {0: 256}, 8, 2)
    first = next(i for i, lf in enumerate(layers) if lf.host)
    assert first == 27
    head = split.fetch_times.head_s(1, 1)
    u64 = split.mixed.graphs.expert_one_s(64, res)  # 64 tokens per expert (256 × top-2 of 8)
    assert u64 == pytest.approx(1.12e-4, rel=0.02)
    total, _copies = pipeline_step(layers, HostTimes(0.0016, 0.0016, 0.040 / L, prefix_s=0.035, head_s=head),
                                  mixed.fetch_s / mixed.expert_fetches,
                                  mixed.expert_fetches / sum(lf.fetches for lf in layers),
                                  ffn_s=lambda tokens: split.mixed.graphs.expert_one_s(tokens, res))
    assert got.total_s == pytest.approx(total, rel=1e-9)
    # copy-bound host layers: outside the copies only the prefix graph, the layers' device work, each fetched
    # expert's FFN after its copy (reconfig fetches synchronously) and the head
    assert got.total_s - got.fetch_s == pytest.approx(0.035 + 5 * 0.040 / L + mixed.expert_fetches * u64 + head,
                                                      rel=1e-4)
    # overlapped fetches (multiplex): the copies count whole (nothing hidden under compute), and only each host
    # layer's last FFN is exposed
    mres = POLICIES.build("multiplex", {"budget_bytes": 85e9}).layout(MIXTRAL, H200, 2)[0].residency
    assert mres.fetch_overlap > 0
    mgot, mhid = split.step(b, mres), split.mixed.step(b, mres)
    whole = split.mixed.step(b, split.mixed._unhidden(mres))
    assert mgot.fetch_s == pytest.approx(whole.fetch_s, rel=1e-12)
    assert whole.fetch_s > mhid.fetch_s  # profile_mixed hides part of them under the eager profile's expert compute
    mlayers = layer_fetches(host_slots_by_layer(mres, L, MIXTRAL.n_experts), {0: 256}, 8, 2)
    n_host = sum(1 for lf in mlayers if lf.host)
    mfirst = next(i for i, lf in enumerate(mlayers) if lf.host)
    _, _, mprefix = split.prefill_fetch.times(256, 1, mfirst, L)
    assert mgot.total_s - mgot.fetch_s == pytest.approx(mprefix + n_host * (0.040 / L + u64) + head, rel=1e-4)
    old = COST_MODELS.build("profile_bucketed", {"table": table, "prefill_prefix": "graphs", "fetch_ffn": False},
                            model=MIXTRAL, gpu=H200)
    assert old.step(b, mres).fetch_s == pytest.approx(mhid.fetch_s, rel=1e-12)  # off: hidden as profile_mixed
    assert eager.step(b, res) != got  # an eagerly run prefill keeps the composed model
    assert split.step((SeqWork(0, 1, 200),), res) == eager.step((SeqWork(0, 1, 200),), res)  # decode: unchanged
    with pytest.raises(UserError, match="prefill_prefix='graph'"):
        COST_MODELS.build("profile_bucketed", {"table": table, "prefill_prefix": "graph"}, model=MIXTRAL, gpu=H200)
