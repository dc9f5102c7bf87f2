"""``profile_bucketed``: decode steps from the runtime's measured bucket table, the rest ``profile_mixed``."""

from __future__ import annotations

import pytest

from moesim.cost import COST_MODELS
from moesim.cost.base import SeqWork
from moesim.errors import UserError
from moesim.policies import POLICIES
from moesim.specs import get_gpu, get_model

MIXTRAL = get_model("mixtral-8x7b")
H200 = get_gpu("h200")

ROWS = [  # n_seqs, bucket, n_tenants, context, step_s
    (1, 1, 1, 200, 0.016), (1, 1, 1, 456, 0.018),
    (2, 2, 1, 200, 0.020), (2, 2, 2, 200, 0.024), (2, 2, 2, 456, 0.028),
    (3, 4, 1, 200, 0.026), (3, 4, 2, 200, 0.030), (3, 4, 3, 200, 0.034),
    (4, 4, 1, 200, 0.027), (4, 4, 2, 200, 0.031),
]


@pytest.fixture
def cost(tmp_path):
    p = tmp_path / "decode_table.csv"
    p.write_text("n_seqs,bucket,n_tenants,context,step_s,step_s_min,graph\n"
                 + "".join(f"{a},{b},{c},{d},{e},{e},True\n" for a, b, c, d, e in ROWS))
    return COST_MODELS.build("profile_bucketed", {"table": str(p)}, model=MIXTRAL, gpu=H200)


def test_decode_steps_are_looked_up_in_the_table(cost) -> None:
    t = cost.table
    assert t.step_s(1, 1, 100) == 0.016  # key bucket 256 = that of context 200
    assert t.step_s(1, 1, 300) == 0.018  # key bucket 512 = that of context 456
    assert t.step_s(1, 1, 600) == pytest.approx(0.020)  # key bucket 768: linear beyond
    assert t.step_s(2, 3, 200) == 0.024  # 3 tenants in 2 sequences: the largest measured tenant count
    assert t.step_s(2, 2, 300) == 0.028
    assert t.step_s(4, 3, 10) == 0.031  # 4 sequences measured with ≤ 2 tenants
    assert t.step_s(16, 1, 10) == 0.027  # past the measured sizes: the nearest
    res = POLICIES.build("multiplex").layout(MIXTRAL, H200, 3)[0].residency
    c = cost.step((SeqWork(0, 1, 200), SeqWork(1, 1, 40), SeqWork(1, 1, 7)), res)
    assert c.total_s == 0.030
    run = cost.decode_run((0, 1, 1), (254, 40, 7), 3, res)  # key buckets 256, 512, 512
    assert list(run.end_s) == pytest.approx([0.030, 0.030 + 0.030, 0.090])
    assert run.cost.total_s == pytest.approx(0.090)


def test_prefills_and_host_fetching_steps_are_profile_mixeds(cost) -> None:
    mixed = COST_MODELS.build("profile_mixed", None, model=MIXTRAL, gpu=H200)
    res = POLICIES.build("multiplex").layout(MIXTRAL, H200, 3)[0].residency
    assert cost.step((SeqWork(0, 200, 0),), res) == mixed.step((SeqWork(0, 200, 0),), res)
    host = POLICIES.build("reconfig", {"budget_bytes": 80e9}).layout(MIXTRAL, H200, 2)[0].residency
    b = (SeqWork(0, 1, 200),)
    assert cost.step(b, host) == mixed.step(b, host)
    assert cost.decode_run((0,), (200,), 4, host).cost == mixed.decode_run((0,), (200,), 4, host).cost
    assert cost.swap_s(3e9, res) == mixed.swap_s(3e9, res)


def test_bad_tables_are_one_line(tmp_path) -> None:
    with pytest.raises(UserError, match="needs table="):
        COST_MODELS.build("profile_bucketed", None, model=MIXTRAL, gpu=H200)
    with pytest.raises(UserError, match="no such file"):
        COST_MODELS.build("profile_bucketed", {"table": str(tmp_path / "x.csv")}, model=MIXTRAL, gpu=H200)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="needs columns"):
        COST_MODELS.build("profile_bucketed", {"table": str(bad)}, model=MIXTRAL, gpu=H200)


def test_host_sync_per_layer_is_added_to_fetching_steps_only(tmp_path) -> None:
    import numpy as np

    plain = COST_MODELS.build("profile_mixed", None, model=MIXTRAL, gpu=H200)
    synced = COST_MODELS.build("profile_mixed", {"host_sync_s": 2e-4}, model=MIXTRAL, gpu=H200)
    host = POLICIES.build("reconfig", {"budget_bytes": 80e9}).layout(MIXTRAL, H200, 2)[0].residency
    res = POLICIES.build("multiplex").layout(MIXTRAL, H200, 3)[0].residency
    b = (SeqWork(0, 1, 200),)
    assert synced.step(b, host).total_s == pytest.approx(plain.step(b, host).total_s + 32 * 2e-4, rel=1e-12)
    assert synced.step(b, res) == plain.step(b, res)  # no host experts: a graph, no host sync
    run, ref = synced.decode_run((0,), (200,), 5, host), plain.decode_run((0,), (200,), 5, host)
    assert run.end_s == pytest.approx(ref.end_s + 32 * 2e-4 * np.arange(1, 6), rel=1e-12)
    assert run.cost.total_s == pytest.approx(ref.cost.total_s + 5 * 32 * 2e-4, rel=1e-12)
    with pytest.raises(UserError, match="host_sync_s"):
        COST_MODELS.build("profile_mixed", {"host_sync_s": -1.0}, model=MIXTRAL, gpu=H200)
    # profile_bucketed reads the median decode per_layer_s of sync_table.csv beside its table
    (tmp_path / "decode_table.csv").write_text("n_seqs,bucket,n_tenants,context,step_s\n1,1,1,200,0.016\n")
    (tmp_path / "sync_table.csv").write_text(
        "batch,n_seqs,tokens,eager_s,eager_sync_s,per_layer_s\ndecode_1,1,1,0.05,0.056,0.0002\n"
        "decode_4,4,4,0.06,0.0665,0.0003\ndecode_16,16,16,0.07,0.0732,0.0001\nprefill_256,1,256,0.1,0.2,0.01\n")
    table = str(tmp_path / "decode_table.csv")
    c = COST_MODELS.build("profile_bucketed", {"table": table, "fetch_model": "host_bound", "host_sync_s": -1, "sync_scale": False},
                          model=MIXTRAL, gpu=H200)
    assert c.host_sync_s == pytest.approx(2e-4)
    assert c.step(b, host).total_s == pytest.approx(synced.step(b, host).total_s, rel=1e-12)
    # sync_scale: fetching steps + measured (eager + host sync per layer) − eager profile, same shape (the
    # default for prefills; decode steps are host-bound by default, tests/test_cost_mechanisms.py)
    from moesim.cost.base import ExpertGroup, Residency

    c = COST_MODELS.build("profile_bucketed", {"table": table, "fetch_model": "host_bound", "decode_host_bound": False}, model=MIXTRAL, gpu=H200)
    assert c.host_sync_s == 0.0
    whole = Residency((ExpertGroup(frozenset({0, 1, 2}), 256, True),))
    d1 = 0.056 - plain.eager.step((SeqWork(0, 1, 200),), whole).total_s
    d4 = 0.0665 - plain.eager.step(tuple(SeqWork(i % 2, 1, 200) for i in range(4)), whole).total_s
    d16 = 0.0732 - plain.eager.step(tuple(SeqWork(i % 2, 1, 200) for i in range(16)), whole).total_s
    # keyed by distinct tenants (this table was measured with tenants i % min(2, n): decode_1 has one tenant,
    # decode_4 and decode_16 two), linear in sequences between the rows of that tenant count, clamped
    assert c.sync.extra_s(True, 1) == pytest.approx(d1, rel=1e-12)
    assert c.sync.extra_s(True, 4, 1) == pytest.approx(d1, rel=1e-12)  # one tenant: its one row at any size
    assert c.sync.extra_s(True, 2, 2) == pytest.approx(d4, rel=1e-12)  # below the two-tenant rows: clamped
    assert c.sync.extra_s(True, 8, 2) == pytest.approx(d4 + (d16 - d4) * 4 / 12, rel=1e-12)
    assert c.sync.extra_s(True, 8, 3) == pytest.approx(d4 + (d16 - d4) * 4 / 12, rel=1e-12)  # nearest count
    assert c.sync.prefill == pytest.approx(0.2 - plain.eager.step((SeqWork(0, 256, 0),), whole).total_s)
    ref = plain.step(b, host)
    got = c.step(b, host)
    assert got.fetch_s == ref.fetch_s
    assert got.total_s == pytest.approx(ref.total_s + d1, rel=1e-12)
    assert c.step(b, res).total_s == 0.016  # resident decode: the bucket table, unchanged
    run, ref_run = c.decode_run((0,), (200,), 4, host), plain.decode_run((0,), (200,), 4, host)
    assert run.end_s == pytest.approx(ref_run.end_s + d1 * np.arange(1, 5), rel=1e-12)
