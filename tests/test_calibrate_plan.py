"""The calibrator's consolidated layout: a plan's GPU copies, host copies fetched per use, per-tenant maps."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from moesim.calibrate.engine import MoEEngine
from moesim.calibrate.validate import report, residency_from
from moesim.consolidation.plan import ExpertCopy, Plan
from moesim.errors import UserError
from moesim.specs import get_model

TINY = get_model("tiny")
REPO = Path(__file__).resolve().parents[1]


def tiny_plan() -> Plan:
    """Two variants; layer 0 all shared on the GPU; layer 1 experts 0–5 shared, 6–7 each variant's own on the host."""
    copies, assign = [], [[[0] * 8 for _ in range(2)] for _ in range(2)]
    for e in range(8):
        copies.append(ExpertCopy(len(copies), 0, e, 0, e, True, TINY.expert_bytes))
        for v in range(2):
            assign[v][0][e] = copies[-1].id
    for e in range(6):
        copies.append(ExpertCopy(len(copies), 1, e, 0, e, True, TINY.expert_bytes))
        for v in range(2):
            assign[v][1][e] = copies[-1].id
    for v in range(2):
        for e in (6, 7):
            copies.append(ExpertCopy(len(copies), 1, e, v, e, False, TINY.expert_bytes))
            assign[v][1][e] = copies[-1].id
    return Plan(model="tiny", method="paper", variants=("a", "b"), budget_bytes=10**9, n_layers=2, n_experts=8,
                expert_bytes=TINY.expert_bytes, nonexpert_bytes=TINY.nonexpert_bytes, nonexpert_sets_reserved=1,
                copies=tuple(copies), assign=tuple(tuple(tuple(r) for r in lay) for lay in assign))


def test_plan_layout_routes_each_tenant_to_its_copy() -> None:
    eng = MoEEngine(TINY, torch.device("cpu"), n_tenants=2, seed=5, dtype=torch.float32)
    eng.apply_plan(tiny_plan())
    assert eng.n_gpu_slots == [8, 6]
    assert [len(h) for h in eng.host_in] == [0, 4]
    # layer 1: six GPU slots, then host slots in copy order (a's 6, a's 7, b's 6, b's 7)
    assert eng.remap[0][1].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert eng.remap[1][1].tolist() == [0, 1, 2, 3, 4, 5, 8, 9]
    h = eng.random_hidden(40)
    for tenant in (0, 1):
        hh, slots, w = eng.router(h, tenant, 1)
        got = eng.moe(hh, slots, w, 1, "grouped")
        ref = eng.moe(hh, slots, w, 1, "loop")
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        for tok in range(40):  # by hand, with the weights the plan says this tenant uses
            manual = torch.zeros(TINY.d_model)
            for j in range(2):
                sl = int(slots[tok, j])
                if sl < 6:
                    wi, wo = eng.w_in[1][sl], eng.w_out[1][sl]
                else:
                    wi, wo = eng.host_in[1][sl - 6], eng.host_out[1][sl - 6]
                manual += w[tok, j] * eng.ffn(hh[tok : tok + 1], wi, wo)[0]
            torch.testing.assert_close(got[tok], manual, rtol=1e-4, atol=1e-5)
    assert eng.plan_groups == [
        {"tenants": [0, 1], "positions": 14, "on_gpu": True},
        {"tenants": [0], "positions": 2, "on_gpu": False},
        {"tenants": [1], "positions": 2, "on_gpu": False},
    ]


def test_plan_that_does_not_fit_the_model_is_refused() -> None:
    half_moe = dataclasses.replace(TINY, name="tiny-half-moe", moe_every=2)  # one MoE layer, the plan has two
    eng = MoEEngine(half_moe, torch.device("cpu"), n_tenants=2, dtype=torch.float32)
    with pytest.raises(UserError, match="does not fit tiny-half-moe") as e:
        eng.apply_plan(tiny_plan())
    assert "\n" not in str(e.value)


def test_calibrator_with_a_plan_validates_the_consolidated_layout(tmp_path: Path) -> None:
    plan_path = tiny_plan().save(tmp_path / "plan.json")
    proc = subprocess.run(
        [sys.executable, "-m", "moesim.calibrate", "device=cpu", "model=tiny", "grid=quick", f"out={tmp_path}",
         f"plan={plan_path}", "tenants=1"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    prof = tmp_path / "cpu__tiny.eager.parquet"
    meta = json.loads(prof.with_suffix(".json").read_text())
    assert meta["plan"]["variants"] == 2
    assert meta["plan"]["host_copies"] == 4
    assert meta["validation_residency"] == meta["plan"]["groups"]
    v = pd.read_parquet(prof.with_name("cpu__tiny.eager.validation.parquet"))
    assert (v["status"] == "ok").all()
    assert {t for s in v["seqs"] for t, _, _ in json.loads(s)} == {0, 1}
    r = report(prof)
    assert (r["predicted_s"] > 0).all()
    res = residency_from(meta["validation_residency"])
    assert [g.on_gpu for g in res.groups] == [True, False, False]
