"""GPUs from YAML files, MIG layouts of the new GPUs, and every policy × shipped model × shipped GPU."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from moesim.consolidation.plan import plan_from_distance_model
from moesim.cost import COST_MODELS
from moesim.engine import simulate
from moesim.errors import UserError
from moesim.policies import POLICIES
from moesim.specs import GPU_SPECS, MODEL_SPECS, get_gpu, get_model, mig_layouts, parse_layout
from moesim.specs.gpus import DATA_DIR, load_gpu_file
from moesim.workloads.request import Request


def test_shipped_gpus_load_and_say_measured_or_derived() -> None:
    assert sorted(GPU_SPECS) == ["a100-40gb", "a100-80gb", "b200", "h100-80gb", "h100-pcie", "h200", "l40s"]
    assert {g: s.status for g, s in GPU_SPECS.items()} == {
        "a100-40gb": "derived", "a100-80gb": "derived", "b200": "derived", "h100-80gb": "derived",
        "h100-pcie": "derived", "h200": "measured", "l40s": "derived"}
    for g in GPU_SPECS.values():
        assert g.status == "measured" or g.derived, g.name  # a derived file says what is derived
    h = get_gpu("h200")
    assert (h.sms, h.memory_bytes, h.hbm_Bps, h.bf16_flops, h.fp8_flops) == (132, 143_771 * 2**20, 4.8e12,
                                                                            989e12, 1979e12)
    assert get_gpu("h100-sxm") is get_gpu("h100-80gb")  # alias
    assert get_gpu("l40s").mig_profiles == ()


def test_gpu_from_any_path_equals_shipped(tmp_path: Path) -> None:
    d = yaml.safe_load((DATA_DIR / "b200.yaml").read_text())
    d["name"] = "my-b200"
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(d))
    g = get_gpu(str(p))
    assert g.name == "my-b200"
    assert g.mig_profiles == get_gpu("b200").mig_profiles


@pytest.mark.parametrize("gpu", ["a100-40gb", "h100-pcie", "b200"])
def test_mig_layouts_of_new_gpus(gpu: str) -> None:
    lays = mig_layouts(gpu)
    assert any(len(lay.instances) == 7 for lay in lays)
    assert all(lay.compute_slices <= 7 for lay in lays)
    full = [p.name for p in get_gpu(gpu).mig_profiles]
    assert parse_layout(gpu, f"{full[3]}+{full[3]}").compute_slices == 6  # two 3g instances


def test_no_mig_gpu_refuses_layouts_in_one_line() -> None:
    with pytest.raises(UserError, match="l40s has no MIG profiles"):
        parse_layout("l40s", "3g+3g")


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("hbm_GBps"), "field 'hbm_GBps' missing (memory bandwidth in GB/s)"),
    (lambda d: d.update(hbm_GBps=-5), "field 'hbm_GBps'=-5 is impossible: must be a number > 0"),
    (lambda d: d.update(sms=13.5), "field 'sms'=13.5 is impossible: must be an integer > 0"),
    (lambda d: d.update(status="guessed"), "field 'status'='guessed': valid: measured, derived"),
    (lambda d: d["host_link"].update(kind="usb"), "field 'host_link.kind'='usb': valid: pcie, nvlink-c2c"),
    (lambda d: d["mig"]["profiles"][0].update(memory_mib=10**7), "mig profile '1g.18gb': memory_mib=10000000: "
                                                                  "more than the GPU's 143771"),
    (lambda d: d["mig"]["profiles"][0].update(starts=[7], span=2), "mig profile '1g.18gb': starts=[7]"),
])
def test_bad_gpu_file_one_line(tmp_path: Path, change: object, message: str) -> None:
    d = yaml.safe_load((DATA_DIR / "h200.yaml").read_text())
    change(d)  # type: ignore[operator]
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(UserError) as e:
        load_gpu_file(p)
    assert str(e.value).startswith(f"{p}: ")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_gpu_file() -> None:
    with pytest.raises(UserError, match="no such GPU file"):
        get_gpu("nowhere/gpu.yaml")


def test_fine_grained_plan_builds_fast() -> None:
    m = get_model("qwen3-30b-a3b")  # 128 experts × 48 layers
    t0 = time.perf_counter()
    plan = plan_from_distance_model(m, 8, int(100e9), method="cluster")
    assert time.perf_counter() - t0 < 10.0
    assert plan.n_positions == 48 * 128
    assert plan.gpu_total_bytes <= 100e9
    per_variant = {len({plan.assign[v][lay][e] for lay in range(48) for e in range(128)}) for v in range(8)}
    assert per_variant == {48 * 128}  # every variant resolves every position to a copy of its own slot


# Every policy × shipped model × shipped GPU on a short two-tenant workload: it simulates, or it refuses in
# one line that says how much memory it needs (or that the GPU has no MIG).
REQS = [Request(i, i % 2, i * 0.5, 64, 16) for i in range(6)]
CASES = [(p, m, g) for p in POLICIES.names() for m in MODEL_SPECS for g in GPU_SPECS]


@pytest.mark.parametrize(("policy", "model", "gpu"), CASES)
def test_every_policy_model_gpu(policy: str, model: str, gpu: str) -> None:
    m, g = MODEL_SPECS[model], GPU_SPECS[gpu]
    cost = COST_MODELS.build("roofline", {}, model=m, gpu=g)
    try:
        res = simulate(m, g, POLICIES.build(policy, {}), cost, REQS, n_tenants=2)
    except UserError as exc:
        msg = str(exc)
        assert "\n" not in msg
        assert (" need " in msg and " GB " in msg) or "has no MIG" in msg, msg
        if "has no MIG" in msg:
            assert not g.mig_profiles
        return
    assert len(res.requests) == len(REQS)
    assert (res.requests["finish_s"] >= res.requests["arrival_s"]).all()
