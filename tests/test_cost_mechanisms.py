"""Mechanisms the real-time runtime showed on the H200, in the cost models (closed forms and table look-ups).

Where the host copies lie (``host_layers``), what overlapped fetches can hide under, when a streamed swap's copies
let a prefill's fetches start (``swap_link_delay``, ``fetch_start_s``), prefills in token-bucket graphs
(``PrefillTable``), the host-sync tables per tenant count and per slice, and the validation table.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from moesim.cost import COST_MODELS
from moesim.cost.base import ExpertGroup, Residency, SeqWork, StepCost, swap_link_delay
from moesim.cost.profile_bucketed import PrefillTable
from moesim.cost.profile_mixed import host_layers
from moesim.errors import UserError
from moesim.policies import POLICIES
from moesim.policies.base import consolidated_groups, private_groups
from moesim.specs import get_gpu, get_model

MIXTRAL = get_model("mixtral-8x7b")
H200 = get_gpu("h200")
L, E = MIXTRAL.n_moe_layers, MIXTRAL.n_experts  # 32, 8

DECODE = "n_seqs,bucket,n_tenants,context,step_s\n1,1,1,200,0.016\n"
SYNC = ("batch,n_seqs,tokens,eager_s,eager_sync_s,per_layer_s\ndecode_1,1,1,0.05,0.056,0.0002\n"
        "decode_4,4,4,0.06,0.0665,0.0003\nprefill_256,1,256,0.1,0.2,0.01\n")


def test_host_layers_follow_the_runtimes_layout() -> None:
    # multiplex's consolidated plan: 223 shared GPU positions, then 33 per tenant on the host → layers 27–31
    res = Residency(consolidated_groups(MIXTRAL, (0, 1), 223))
    assert host_layers(res, L, E, (0,)) == 5
    assert host_layers(res, L, E, (0, 1)) == 5  # both tenants' host copies at the same positions
    # naive / reconfig: 161 own positions on the GPU, 95 on the host → layers 20 (7 of 8 on the host) … 31
    res = Residency(private_groups(MIXTRAL, (0, 1), 161))
    assert host_layers(res, L, E, (1,)) == 12
    assert host_layers(res, L, E, (2,)) == 0  # a tenant the residency does not hold
    assert host_layers(Residency(private_groups(MIXTRAL, (0,), 111)), L, E, (0,)) == 19  # 145 on the host
    assert host_layers(Residency((ExpertGroup(frozenset({0}), 256, True),)), L, E, (0,)) == 0


def test_packed_layout_bounds_the_hidden_fetch_by_the_layers_that_hold_host_copies() -> None:
    spread = COST_MODELS.build("profile_mixed", None, model=MIXTRAL, gpu=H200)
    packed = COST_MODELS.build("profile_mixed", {"host_layout": "packed"}, model=MIXTRAL, gpu=H200)
    c = StepCost(experts_s=0.02, fetch_s=0.1, expert_fetches=10.0)
    # spread: the 10 fetches hit L (1 − (1 − 1/L)^10) distinct layers of 32, each with its expert compute
    assert spread._hidden(c, 0.5) == pytest.approx(0.02 * (1 - (31 / 32) ** 10), rel=1e-12)
    # packed over H = 5 layers: at most (H/L)(1 − (1 − 1/H)^f) of the step's expert compute
    assert packed._hidden(c, 0.5, 1, 5) == pytest.approx(0.02 * 5 / 32 * (1 - 0.8 ** 10), rel=1e-12)
    assert packed._hidden(c, 0.5, 1, 1) == pytest.approx(0.02 / 32, rel=1e-12)
    assert packed._hidden(c, 0.01, 1, 5) == pytest.approx(0.001)  # the overlap share binds first
    # a multiplex step fetching host experts hides less with the packed layout, never more
    res = POLICIES.build("multiplex", {"budget_bytes": 85e9}).layout(MIXTRAL, H200, 2)[0].residency
    b = tuple(SeqWork(i % 2, 1, 200) for i in range(4))
    assert packed.step(b, res).fetch_s > spread.step(b, res).fetch_s
    assert packed.step(b, res).total_s - packed.step(b, res).fetch_s == pytest.approx(
        spread.step(b, res).total_s - spread.step(b, res).fetch_s, rel=1e-12)
    with pytest.raises(UserError, match="host_layout"):
        COST_MODELS.build("profile_mixed", {"host_layout": "diagonal"}, model=MIXTRAL, gpu=H200)


def test_the_first_fetch_of_a_prefill_under_a_swap_and_the_serialised_link() -> None:
    packed = COST_MODELS.build("profile_mixed", {"host_layout": "packed"}, model=MIXTRAL, gpu=H200)
    res = POLICIES.build("reconfig_fast", {"budget_bytes": 85e9}).layout(MIXTRAL, H200, 2)[0].residency
    b = (SeqWork(0, 256, 0),)
    c = packed.step_streamed(b, res)
    H = host_layers(res, L, E, (0,))
    assert H == 5
    assert c.fetch_start_s == pytest.approx((c.total_s - c.fetch_s) * (L - H) / L, rel=1e-12)
    # the fetches wait for what is left of the swap then: S − fetch_start (0 once the swap is done)
    S = c.fetch_start_s + 0.01
    assert swap_link_delay(c, S).fetch_s == pytest.approx(c.fetch_s + 0.01, rel=1e-12)
    assert swap_link_delay(c, 0.5 * c.fetch_start_s) is c
    # sums: the first copy of steps run one after the other
    a, f = StepCost(attention_s=0.3), StepCost(attention_s=0.1, fetch_s=0.2, expert_fetches=2, fetch_start_s=0.05)
    assert (a + f).fetch_start_s == pytest.approx(0.35)
    assert (f + a).fetch_start_s == 0.05
    assert (a + a).fetch_start_s == 0.0


def test_link_disciplines_and_which_one_a_measurement_fits() -> None:
    from moesim.cost.base import link_delays, link_discipline

    assert link_delays(0.058, 0.051, 0.0) == {"serial": (0.0, 0.058), "shared": (0.051, 0.051)}
    assert link_delays(0.058, 0.051, 0.029) == {"serial": (0.0, pytest.approx(0.029)),
                                                "shared": (pytest.approx(0.029), pytest.approx(0.029))}
    assert link_delays(0.058, 0.051, 0.07) == {"serial": (0.0, 0.0), "shared": (0.0, 0.0)}
    serial = {"swap_alone_s": 0.058, "fetch_alone_s": 0.051,
              "together": [{"delay_s": 0.0, "swap_delay_s": 0.001, "fetch_delay_s": 0.057},
                           {"delay_s": 0.029, "swap_delay_s": 0.0, "fetch_delay_s": 0.030}]}
    best, err = link_discipline(serial)
    assert best == "serial"
    assert err["serial"] == pytest.approx((0.001 + 0.001 + 0.0 + 0.001) / 4)
    shared = {**serial, "together": [{"delay_s": 0.0, "swap_delay_s": 0.05, "fetch_delay_s": 0.052}]}
    assert link_discipline(shared)[0] == "shared"
    with pytest.raises(ValueError, match="together"):
        link_discipline({"swap_alone_s": 0.058})


@pytest.fixture
def tables(tmp_path):
    (tmp_path / "decode_table.csv").write_text(DECODE)
    (tmp_path / "sync_table.csv").write_text(SYNC)
    (tmp_path / "prefill_table.csv").write_text(
        "n_seqs,tokens,eager_s,graph_s,bucket,bucket_s,n_tenants\n"
        "1,256,0.05,0.040,256,0.040,1\n1,32,0.05,0.038,256,0.049,1\n2,256,0.06,0.050,512,0.050,2\n2,256,0.06,0.050,512,0.054,1\n"
        "4,256,0.08,0.070,1024,0.070,3\n")
    return tmp_path


def test_prefill_table_times_the_token_bucket(tables) -> None:
    t = PrefillTable(tables / "prefill_table.csv")
    assert t.buckets == [256, 512, 1024]
    assert t.step_s(256) == 0.040  # the bucket full
    assert t.step_s(100) == 0.049  # mostly pads: the row nearest in real tokens (32 of 256)
    assert t.step_s(200) == 0.040
    assert t.step_s(512, 2) == 0.050
    assert t.step_s(512, 1) == 0.054
    assert t.step_s(512, 3) == 0.050
    assert t._at(768, 1) == pytest.approx(0.054 + (0.070 - 0.054) * 256 / 512, rel=1e-12)  # between buckets
    assert t._at(2048, 1) == pytest.approx(0.054 + (0.070 - 0.054) * 1536 / 512, rel=1e-12)  # past: linear
    b = t.bucket(700)
    assert b in (768, 1024)
    assert t.step_s(700) == pytest.approx(t._at(b, 1))
    cost = COST_MODELS.build("profile_bucketed", {"table": str(tables / "decode_table.csv")}, model=MIXTRAL,
                             gpu=H200)
    res = POLICIES.build("multiplex").layout(MIXTRAL, H200, 3)[0].residency  # every expert resident
    assert cost.step((SeqWork(0, 256, 0),), res).total_s == 0.040
    assert cost.step((SeqWork(0, 256, 0), SeqWork(1, 200, 0)), res).total_s == pytest.approx(t.step_s(456, 2))
    assert cost.step((SeqWork(0, 256, 40),), res) == cost.mixed.step((SeqWork(0, 256, 40),), res)  # a context
    host = POLICIES.build("reconfig", {"budget_bytes": 80e9}).layout(MIXTRAL, H200, 2)[0].residency
    assert cost.step((SeqWork(0, 256, 0),), host).fetch_s > 0  # fetching prefills stay eager
    off = COST_MODELS.build("profile_bucketed", {"table": str(tables / "decode_table.csv"), "prefill_table": "off"},
                            model=MIXTRAL, gpu=H200)
    assert off.prefills is None
    assert off.step((SeqWork(0, 256, 0),), res) == off.mixed.step((SeqWork(0, 256, 0),), res)
    # a table without bucket columns (the h200x2 call) leaves prefills to the graph profile
    (tables / "prefill_table.csv").write_text("n_seqs,tokens,eager_s,graph_s\n1,256,0.05,0.04\n")
    old = COST_MODELS.build("profile_bucketed", {"table": str(tables / "decode_table.csv")}, model=MIXTRAL, gpu=H200)
    assert old.prefills is None
    with pytest.raises(UserError, match="no row with bucket"):
        COST_MODELS.build("profile_bucketed", {"table": str(tables / "decode_table.csv"),
                                               "prefill_table": str(tables / "prefill_table.csv")},
                          model=MIXTRAL, gpu=H200)


def test_slices_host_bound_or_gpu_bound_and_slice_sync_tables(tables) -> None:
    table = str(tables / "decode_table.csv")
    cost = COST_MODELS.build("profile_bucketed", {"table": table, "fetch_model": "host_bound"}, model=MIXTRAL, gpu=H200)
    plan = POLICIES.build("mig", {"budget_bytes": 50e9}).layout(MIXTRAL, H200, 2)[0]
    res = plan.residency
    assert res.slice.sm_fraction < 1.0
    assert res.host_positions(0) > 0
    b = (SeqWork(0, 256, 0),)
    whole = cost._whole(res)
    assert whole.slice.sm_fraction == 1.0
    assert whole.slice.link_fraction == res.slice.link_fraction
    host = cost._scaled(cost.mixed.step(b, whole), False, 1, (0,), res)
    gpu = cost.mixed.graphs.step(b, res)
    got = cost.step(b, res)
    assert got.total_s - got.fetch_s == pytest.approx(max(host.total_s - host.fetch_s, gpu.total_s - gpu.fetch_s),
                                                      rel=1e-12)
    assert got.fetch_s == cost.mixed.step(b, res).fetch_s
    d = (SeqWork(0, 1, 200),)  # decode: the eager profile on the slice op by op, plus the syncs
    assert cost.step(d, res) == cost._scaled(cost.mixed.step(d, res), True, 1, (0,), res)
    free = COST_MODELS.build("profile_bucketed", {"table": table, "fetch_model": "host_bound", "slice_bound": False}, model=MIXTRAL, gpu=H200)
    assert free.step(b, res) == free._scaled(free.mixed.step(b, res), False, 1, (0,), res)
    # a sync table measured on 64 SMs beside the table: slice steps = whole-GPU step + that table's difference
    (tables / "sm64").mkdir()
    (tables / "sm64" / "sync_table.csv").write_text(SYNC.replace("0.056", "0.070").replace("0.2,0.01", "0.25,0.01"))
    sl = COST_MODELS.build("profile_bucketed", {"table": table, "fetch_model": "host_bound"}, model=MIXTRAL, gpu=H200)
    assert sorted(sl.slice_sync) == [64]
    assert sl._slice_table(res) is sl.slice_sync[64]
    whole_res = Residency(res.groups)
    full = Residency((ExpertGroup(frozenset(range(8)), 256, True),))
    # a fetching decode step on the slice: host-bound on that table's synced step (decode_1: 70 ms)
    got, gpu = sl.step(d, res), sl.mixed.graphs.step(d, res)
    assert got.total_s - got.fetch_s == pytest.approx(max(0.070, gpu.total_s - gpu.fetch_s), rel=1e-12)
    assert got.fetch_s == sl.mixed.step(d, whole).fetch_s
    # a fetching prefill on the slice: the whole-GPU composition + (that table's synced prefill − eager profile)
    extra = 0.25 - sl.mixed.eager.step((SeqWork(0, 256, 0),), full).total_s
    assert sl.step(b, res).total_s == pytest.approx(sl.mixed.step(b, whole).total_s + extra, rel=1e-12)
    got = sl.step(d, whole_res)  # the whole GPU: host-bound, the measured synced step (decode_1: 56 ms)
    gpu = sl.mixed.graphs.step(d, whole_res)
    assert got.total_s - got.fetch_s == pytest.approx(max(0.056, gpu.total_s - gpu.fetch_s), rel=1e-12)
    assert got.fetch_s == sl.mixed.step(d, whole_res).fetch_s
    run = sl.decode_run((0,), (200,), 3, res)
    assert run.cost.total_s == pytest.approx(3 * sl.step(d, res).total_s, rel=1e-3)
    far = dataclasses.replace(res, slice=dataclasses.replace(res.slice, sm_fraction=16 / 132))
    assert sl._slice_table(far) is None  # no table within 16 SMs of 16


def test_fetching_decode_steps_are_host_bound(tables) -> None:
    table = str(tables / "decode_table.csv")
    cost = COST_MODELS.build("profile_bucketed", {"table": table, "fetch_model": "host_bound"}, model=MIXTRAL, gpu=H200)
    off = COST_MODELS.build("profile_bucketed", {"table": table, "fetch_model": "host_bound", "decode_host_bound": False}, model=MIXTRAL, gpu=H200)
    res = POLICIES.build("reconfig", {"budget_bytes": 85e9}).layout(MIXTRAL, H200, 2)[0].residency
    # one tenant: the decode_1 row (56 ms synced) at any number of sequences; two: decode_4 (66.5 ms), clamped
    for batch, synced in (((SeqWork(0, 1, 200),), 0.056), (tuple(SeqWork(0, 1, 200) for _ in range(3)), 0.056),
                          ((SeqWork(0, 1, 200), SeqWork(1, 1, 90)), 0.0665)):
        got, ref = cost.step(batch, res), off.step(batch, res)
        gpu = cost.mixed.graphs.step(batch, res)
        assert got.fetch_s == ref.fetch_s > 0
        assert got.total_s - got.fetch_s == pytest.approx(max(synced, gpu.total_s - gpu.fetch_s), rel=1e-12)
    run = cost.decode_run((0,), (200,), 4, res)
    ref = off.decode_run((0,), (200,), 4, res)
    assert run.cost.total_s == pytest.approx(ref.cost.fetch_s + 4 * 0.056, rel=1e-12)
    assert run.end_s[-1] == pytest.approx(run.cost.total_s, rel=1e-12)
    assert cost.step((SeqWork(0, 256, 0),), res) == off.step((SeqWork(0, 256, 0),), res)  # prefills: unchanged


def test_validation_table_counts_runs_within_five_percent() -> None:
    from moesim.serve.validate import markdown_table

    def row(run, e):
        return {"run": run, "sim_cost": "x", "mean_turnaround_s_measured": 1.0, "mean_turnaround_s_simulated": 1 + e,
                "mean_turnaround_s_error_pct": 100 * e, "mean_ttft_s_measured": 0.5, "mean_ttft_s_simulated": 0.5,
                "mean_ttft_s_error_pct": 0.0, "turnaround_ape_median_pct": abs(100 * e), "ttft_ape_median_pct": 1.0}

    md = markdown_table(pd.DataFrame([row("swap_host", -0.051), row("naive_light", 0.05), row("fleet", 0.0)]))
    lines = md.splitlines()
    assert lines[2] == "| naive_light | 1.000 / 1.050 s | +5.0% | 0.500 / 0.500 s | +0.0% | 5.0% / 1.0% | yes |"
    assert lines[3].startswith("| swap_host | 1.000 / 0.949 s | -5.1% |")
    assert lines[3].endswith("| no |")
    assert lines[4].startswith("| fleet |")
    assert lines[-1] == "2 of 3 runs within 5% on all four figures (sim_cost: x)."
