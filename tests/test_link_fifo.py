"""The host link's FIFO discipline (one copy queue, as the runtime's green-context slices share it) against
closed forms, with a cost model whose steps are a fixed compute time plus their copies at the link share."""

from __future__ import annotations

import pytest

from moesim.cost.base import CostModel, Residency, SeqWork, StepCost
from moesim.engine import simulate
from moesim.engine.simulation import HostLink, alternate_share
from moesim.errors import UserError
from moesim.policies import POLICIES
from moesim.specs import get_gpu, get_model
from moesim.workloads.request import Request

H = 0.010  # compute of every step (s)
C = 0.002  # one expert copy at the full link (s)
FP, FD = 16.0, 2.0  # expert copies of a prefill and of a decode step


class CopyCost(CostModel):
    """A step: ``H`` of compute plus its copies (``FP`` for a prefill, ``FD`` for a decode step), each ``C`` at
    the whole link, longer at a share of it."""

    name = "copy"

    def step(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost:
        fetches = FP if any(w.new_tokens > 1 for w in batch) else FD
        return StepCost(overhead_s=H, fetch_s=fetches * C / residency.slice.link_fraction, expert_fetches=fetches)


MODEL, GPU = get_model("tiny"), get_gpu("h200")


def _mig(discipline: str, emulated: bool = True):
    return POLICIES.build("mig", {"budget_bytes": 2.5e5, "emulated": emulated, "link_discipline": discipline})


def _run(discipline: str, requests: list[Request]):
    res = simulate(MODEL, GPU, _mig(discipline), CopyCost(MODEL, GPU), requests, n_tenants=2)
    return res.requests.set_index("request_id")


def test_link_shares_closed_form():
    link = HostLink(discipline="fifo")
    assert link.share(4.0) == 1.0  # alone
    link.begin(True, 0, 1.0)
    assert link.share(4.0) == pytest.approx(4.0 / 5.0)  # a burst of 4 beside a burst of 1
    link.begin(True, 1, 3.0)
    assert link.share(4.0) == pytest.approx(4.0 / 8.0)
    link.end(True, 0)
    assert link.share(1.0) == pytest.approx(1.0 / 4.0)
    fair = HostLink(discipline="share")
    fair.begin(True, 0, 1.0)
    assert fair.share(4.0) == pytest.approx(0.5)  # bursts do not matter
    with pytest.raises(UserError, match="link_discipline='lifo'"):
        HostLink(discipline="lifo")


def test_emulated_slices_share_hbm_and_queue_copies():
    real, emu = _mig("auto", emulated=False), _mig("auto")
    assert (real.link_discipline, emu.link_discipline) == ("share", "alternate")
    r = real.layout(MODEL, GPU, 2)[0].residency.slice
    e = emu.layout(MODEL, GPU, 2)[0].residency.slice
    assert r.bw_fraction == pytest.approx(0.5)
    assert e.bw_fraction == 1.0
    assert r.sm_fraction == e.sm_fraction < 1.0
    with pytest.raises(UserError, match=r"policy\.link_discipline='x'"):
        _mig("x")


def test_prefill_retimed_when_the_other_slice_starts_and_ends():
    """A prefills alone from 0; B's prefill starts at x (equal bursts: half the link each); A's rest is re-timed at
    half the link, and B's at the whole link once A ends."""
    x = 0.02
    t1, t2 = H + FP * C, H + 2 * FP * C  # a prefill alone, and beside an equal burst
    req = [Request(0, 0, 0.0, 64, 1), Request(1, 1, x, 64, 1)]
    got = _run("fifo", req)
    end_a = x + (1 - x / t1) * t2
    assert got.loc[0, "finish_s"] == pytest.approx(end_a, rel=1e-9)
    end_b = end_a + (1 - (end_a - x) / t2) * t1
    assert got.loc[1, "finish_s"] == pytest.approx(end_b, rel=1e-9)
    # share: each step keeps the share it started with (A alone: the whole link; B: half)
    fair = _run("share", req)
    assert fair.loc[0, "finish_s"] == pytest.approx(t1, rel=1e-9)
    assert fair.loc[1, "finish_s"] == pytest.approx(x + t2, rel=1e-9)


def test_prefill_beside_a_decode_run_gets_its_burst_share():
    """A decodes a long answer; B's prefill (burst FP per host layer beside A's FD) gets FP / (FP + FD) of the link,
    so its copies take (FP + FD)·C in all; with ``share`` it gets half."""
    req = [Request(0, 0, 0.0, 64, 400), Request(1, 1, 0.5, 64, 1)]
    fifo = _run("fifo", req)
    assert fifo.loc[1, "first_token_s"] - 0.5 == pytest.approx(H + (FP + FD) * C, rel=1e-9)
    fair = _run("share", req)
    assert fair.loc[1, "first_token_s"] - 0.5 == pytest.approx(H + 2 * FP * C, rel=1e-9)
    for t in (fifo, fair):  # conservation: both served, A's 400 tokens after B's prefill
        assert t["finish_s"].notna().all()
        assert t.loc[0, "finish_s"] > t.loc[1, "finish_s"]


def test_alternate_share_closed_forms():
    """One copy engine taking waiting copies in turn: max-min fair shares capped at each step's own busy fraction
    u = C / (C + O); a step takes max(C + O, C / a), returned as the link fraction its copies see."""
    c, o = 0.094, 0.015
    s = alternate_share((c, o), [(c, o)])
    assert o + c / s == pytest.approx(2 * c)  # two equal decode steps: the link busy all the time
    assert alternate_share((1.0, 0.0), [(1.0, 0.0), (1.0, 0.0)]) == pytest.approx(1 / 3)  # copy-bound: 1/k
    assert alternate_share((c, o), []) == 1.0
    assert alternate_share((0.0, 1.0), [(c, o)]) == 1.0  # a step without copies
    light, heavy = (0.02, 0.08), (0.38, 0.04)  # u = 0.2 and 0.905
    assert alternate_share(light, [heavy]) == 1.0  # below its fair half: its whole demand
    s = alternate_share(heavy, [light])
    assert heavy[1] + heavy[0] / s == pytest.approx(heavy[0] / 0.8)  # the heavy one gets the remaining 0.8
    link = HostLink(discipline="alternate")
    link.begin(True, 0, (c, o))
    assert link.share((c, o)) == pytest.approx(alternate_share((c, o), [(c, o)]))
    link.end(True, 0)
    assert link.share((c, o)) == 1.0


def test_prefill_beside_a_decode_run_alternates_copies():
    """A decodes a long answer (u_d = FD·C / (FD·C + H) of the link alone); B's prefill gets the rest, 1 − u_d, so
    its copies take FP·C / (1 − u_d), and its compute hides under A's copies; A keeps its whole demand."""
    req = [Request(0, 0, 0.0, 64, 400), Request(1, 1, 0.5, 64, 1)]
    alt = _run("alternate", req)
    u_d = FD * C / (FD * C + H)
    assert alt.loc[1, "first_token_s"] - 0.5 == pytest.approx(FP * C / (1 - u_d), rel=1e-9)
    alone = _run("alternate", req[:1])
    assert alt.loc[0, "finish_s"] == pytest.approx(alone.loc[0, "finish_s"], rel=1e-9)
