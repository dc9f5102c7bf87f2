"""Exact parameter counts (../facts/models.md) and MIG layouts (hardware.md)."""

from __future__ import annotations

import pytest

from moesim.errors import UserError
from moesim.specs import get_gpu, get_model, mig_layouts, parse_layout
from moesim.specs.mig import equal_layout


def test_mixtral_exact_counts() -> None:
    m = get_model("mixtral-8x7b")
    assert m.expert_params == 176_160_768
    assert m.all_expert_params == 45_097_156_608
    assert m.attention_params_per_block == 41_943_040
    assert m.nonexpert_params == 1_605_636_096
    assert m.total_params == 46_702_792_704
    assert m.active_params_per_token == 12_879_925_248
    assert m.kv_bytes_per_token == 131_072
    assert m.expert_bytes == 352_321_536
    assert round(m.total_bytes / 2**30, 1) == 87.0


def test_switch_base_8_exact_counts() -> None:
    s = get_model("switch-base-8")
    assert s.expert_params == 4_718_592
    assert s.all_expert_params == 452_984_832
    assert s.nonexpert_params == 166_354_176
    assert s.total_params == 619_339_008
    assert s.n_moe_layers == 12


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(UserError, match=r"valid: deepseek-v2, .*mixtral-8x7b, .*switch-base-8, tiny"):
        get_model("llama")
    with pytest.raises(UserError, match="a100-40gb, a100-80gb, b200, h100-80gb, h100-pcie, h200, l40s"):
        get_gpu("v100")


@pytest.mark.parametrize("text", ["4g+3g", "3g+3g", "4g+2g+1g", "3g+2g+1g+1g", "+".join(["1g"] * 7)])
def test_a100_required_layouts_are_valid(text: str) -> None:
    lay = parse_layout("a100-80gb", text)
    assert lay.short_name.split("+") == sorted(text.split("+"), key=lambda p: -int(p[:-1]))
    assert lay.compute_slices <= 7
    # memory slots do not overlap
    used = [0] * 8
    for inst in lay.instances:
        for k in range(inst.start, inst.start + inst.profile.span):
            used[k] += 1
    assert max(used) == 1


def test_layout_listing_contains_required_and_excludes_impossible() -> None:
    names = {lay.name for lay in mig_layouts("a100-80gb")}
    for need in ("4g.40gb+3g.40gb", "3g.40gb+3g.40gb", "4g.40gb+2g.20gb+1g.10gb",
                 "3g.40gb+2g.20gb+1g.10gb+1g.10gb", "+".join(["1g.10gb"] * 7), "7g.80gb"):
        assert need in names
    assert "4g.40gb+4g.40gb" not in names
    assert "7g.80gb+1g.10gb" not in names
    assert all(lay.compute_slices <= 7 for lay in mig_layouts("a100-80gb"))


def test_invalid_layout_refused_naming_valid_ones() -> None:
    with pytest.raises(UserError) as e:
        parse_layout("a100-80gb", "4g+4g")
    msg = str(e.value)
    assert "invalid MIG layout '4g+4g'" in msg
    assert "4g.40gb+3g.40gb" in msg
    assert "3g.40gb+3g.40gb" in msg
    assert "\n" not in msg


def test_equal_layouts() -> None:
    a100, h200 = get_gpu("a100-80gb"), get_gpu("h200")
    assert equal_layout(a100, 2).name == "3g.40gb+3g.40gb"
    assert equal_layout(h200, 2).name == "3g.71gb+3g.71gb"
    assert equal_layout(a100, 7).name == "+".join(["1g.10gb"] * 7)
    assert equal_layout(h200, 1).instances[0].profile.sms == 132
