"""Distances from real weights, applying plans, merging baselines and the consolidate CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from moesim.consolidate import main as consolidate_main
from moesim.consolidate import parse_bytes
from moesim.consolidation import load_plan
from moesim.consolidation.apply import materialize
from moesim.consolidation.builders import build_plan
from moesim.consolidation.merging import _trim, task_arithmetic, ties_merge, uniform_average
from moesim.consolidation.weights import check_same_architecture, expert_distances, layout_of, load_state
from moesim.errors import UserError
from moesim.tinymoe import CPU_CONFIG, TinyMoE


def hand_state(shift: float = 0.0, expert1_w1: float = 0.0) -> dict[str, torch.Tensor]:
    """1 MoE layer, 2 experts, d_model 4, d_ff 2; every weight 1 + shift, expert 1's w1 + expert1_w1."""
    st = {"model.embed_tokens.weight": torch.ones(3, 4), "lm_head.weight": torch.ones(3, 4)}
    for e in range(2):
        pre = f"model.layers.0.block_sparse_moe.experts.{e}."
        st[pre + "w1.weight"] = torch.full((2, 4), 1.0 + shift + (expert1_w1 if e == 1 else 0.0))
        st[pre + "w2.weight"] = torch.full((4, 2), 1.0 + shift)
        st[pre + "w3.weight"] = torch.full((2, 4), 1.0 + shift)
    st["model.layers.0.block_sparse_moe.gate.weight"] = torch.ones(2, 4)
    return st


def test_layout_and_hand_distances() -> None:
    a, b = hand_state(), hand_state(expert1_w1=0.5)
    layout = check_same_architecture([a, b], ["a", "b"])
    assert (layout.n_layers, layout.n_experts, layout.expert_params) == (1, 2, 24)
    assert layout.nonexpert_params == 12 + 12 + 8
    d = expert_distances([a, b], layout)
    # Expert 0 identical; expert 1 differs by 0.5 in its 8 w1 entries: L2 = 0.5·√8 = √2.
    np.testing.assert_allclose(d.l2[0, 1, 0], [0.0, math.sqrt(2)], rtol=1e-12)
    # cos between the all-ones 24-vector and one with 8 entries 1.5: (16 + 8·1.5) / (√24 · √(16 + 8·2.25)).
    cos = 28 / (math.sqrt(24) * math.sqrt(16 + 8 * 2.25))
    np.testing.assert_allclose(d.cosine[0, 1, 0], [0.0, 1 - cos], atol=1e-12)
    np.testing.assert_array_equal(d.l2[1, 0], d.l2[0, 1])


def test_permutation_matching_on_weights() -> None:
    torch.manual_seed(0)
    a = TinyMoE(CPU_CONFIG).state_dict()
    b = {k: v.clone() for k, v in a.items()}
    layout = layout_of(a)
    swap = {0: 3, 3: 0, 1: 5, 5: 1}  # b's experts are a's, permuted in layer 1
    for e, f in swap.items():
        for m in ("w1", "w2", "w3"):
            b[layout.key(1, e, m)] = a[layout.key(1, f, m)].clone()
    plain = expert_distances([a, b], layout)
    matched = expert_distances([a, b], layout, permute=True)
    assert plain.l2[0, 1, 1, [0, 1, 3, 5]].min() > 0
    np.testing.assert_array_equal(matched.l2[0, 1], 0.0)
    assert [int(x) for x in matched.perm[1, 1]] == [3, 5, 2, 0, 4, 1, 6, 7]
    # A plan built on the matched distances shares everything at zero distance, and every variant's
    # materialized layer computes exactly what it computed before (the copies sit in the matched slots).
    plan = build_plan(matched.l2, method="cluster", perm=matched.perm, budget_bytes=16, expert_bytes=1,
                      nonexpert_bytes=0)
    assert plan.shared_positions() == 16
    assert plan.method == "cluster+perm"
    st = materialize(plan, [a, b], layout, 1)
    for e in range(8):
        for m in ("w1", "w2", "w3"):
            assert torch.equal(st[layout.key(1, e, m)], b[layout.key(1, e, m)])


def test_own_copies_reproduce_outputs_bit_for_bit() -> None:
    torch.manual_seed(0)
    va, vb = TinyMoE(CPU_CONFIG).eval(), TinyMoE(CPU_CONFIG).eval()
    states = [va.state_dict(), vb.state_dict()]
    layout = check_same_architecture(states, ["a", "b"])
    d = expert_distances(states, layout)
    x = torch.randint(0, 256, (2, 16))
    for method, budget in (("paper", 0), ("cluster", 32), ("cluster-mean", 32)):
        plan = build_plan(d.l2, method=method, budget_bytes=budget, expert_bytes=1, nonexpert_bytes=0)
        assert plan.shared_positions() == 0
        for v, model in enumerate((va, vb)):
            m = TinyMoE(CPU_CONFIG).eval()
            m.load_state_dict(materialize(plan, states, layout, v))
            assert torch.equal(m(x)[0], model(x)[0])


def test_shared_and_mean_copies() -> None:
    a, b = hand_state(), hand_state(shift=1.0)
    layout = check_same_architecture([a, b], ["a", "b"])
    d = expert_distances([a, b], layout)
    paper = build_plan(d.l2, method="paper", budget_bytes=2, expert_bytes=1, nonexpert_bytes=0)
    st_b = materialize(paper, [a, b], layout, 1)
    # Equal distances: order 0, 1; position 0 from variant 0, position 1 from variant 1 (round robin).
    assert torch.equal(st_b[layout.key(0, 0, "w1")], a[layout.key(0, 0, "w1")])
    assert torch.equal(st_b[layout.key(0, 1, "w1")], b[layout.key(0, 1, "w1")])
    assert torch.equal(st_b["lm_head.weight"], b["lm_head.weight"])  # reconfiguration: own non-expert set
    st_nr = materialize(paper, [a, b], layout, 1, nonexpert_from=0)
    assert torch.equal(st_nr["lm_head.weight"], a["lm_head.weight"])
    mean = build_plan(d.l2, method="cluster-mean", budget_bytes=2, expert_bytes=1, nonexpert_bytes=0)
    st = materialize(mean, [a, b], layout, 0)
    assert torch.equal(st[layout.key(0, 0, "w2")], torch.full((4, 2), 1.5))


def test_merging_by_hand() -> None:
    base = {"w": torch.zeros(3)}
    s1, s2 = {"w": torch.tensor([1.0, -2.0, 3.0])}, {"w": torch.tensor([-1.0, -1.0, 4.0])}
    assert torch.equal(uniform_average([s1, s2])["w"], torch.tensor([0.0, -1.5, 3.5]))
    assert torch.equal(task_arithmetic(base, [s1, s2], 0.5)["w"], torch.tensor([0.0, -1.5, 3.5]))
    # TIES with density 1: elected signs (0, −, +); entry 0 has no agreeing delta → 0.
    assert torch.equal(ties_merge(base, [s1, s2], density=1.0)["w"], torch.tensor([0.0, -1.5, 3.5]))
    s3 = {"w": torch.tensor([2.0, 1.0, -4.0])}
    # Signs of the sum (2, −2, 3) → (+, −, +): entry 0 mean(1, 2), entry 1 mean(−2, −1), entry 2 mean(3, 4).
    assert torch.equal(ties_merge(base, [s1, s2, s3], density=1.0)["w"], torch.tensor([1.5, -1.5, 3.5]))
    assert torch.equal(_trim(torch.tensor([1.0, -5.0, 2.0, 0.5]), 0.5), torch.tensor([0.0, -5.0, 2.0, 0.0]))


def test_bad_variants(tmp_path) -> None:
    a = hand_state()
    with pytest.raises(UserError, match="not found"):
        load_state(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable state dict"):
        load_state(tmp_path / "junk.pt")
    other = dict(a)
    other["model.layers.0.block_sparse_moe.experts.0.w1.weight"] = torch.ones(3, 4)
    with pytest.raises(UserError, match="has shape"):
        check_same_architecture([a, other], ["a", "other"])
    extra = dict(a)
    extra["model.layers.1.self_attn.q_proj.weight"] = torch.ones(4, 4)
    with pytest.raises(UserError, match="architecture differs"):
        check_same_architecture([a, extra], ["a", "extra"])
    with pytest.raises(UserError, match="no Mixtral-style expert"):
        layout_of({"x": torch.ones(2)}, "dense.pt")
    broken = {k: v for k, v in a.items() if not k.endswith("experts.1.w3.weight")}
    with pytest.raises(UserError, match="lacks some of w1/w2/w3"):
        layout_of(broken, "broken.pt")


def test_cli_end_to_end(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"v{i}.pt"
        torch.save(TinyMoE(CPU_CONFIG).state_dict(), p)
        paths.append(str(p))
    layout = layout_of(torch.load(paths[0]))
    spec_ne, spec_e = layout.nonexpert_params * 2, layout.expert_params * 2
    budget = 2 * spec_ne + 20 * spec_e + 5
    out = tmp_path / "plan.json"
    consolidate_main([*paths, "--budget-bytes", str(budget), "--method", "cluster-mean", "--permute",
                      "--dtype-bytes", "2", "--names", "a,b,c", "--out", str(out),
                      "--distances-out", str(tmp_path / "d.json")])
    plan = load_plan(out)
    assert plan.variants == ("a", "b", "c")
    assert len(plan.copies) == sum(c.on_gpu for c in plan.copies) == 20  # 20 fit: clusters merged down to 20
    assert plan.gpu_total_bytes <= budget
    assert "wrote" in capsys.readouterr().out
    d = json.loads((tmp_path / "d.json").read_text())
    assert np.array(d["l2"]).shape == (3, 3, 2, 8)
    with pytest.raises(SystemExit) as exc:
        consolidate_main([paths[0], paths[1], "--budget-bytes", "10", "--out", str(out)])
    assert exc.value.code == 2
    assert "smaller than 2 non-expert set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        consolidate_main([paths[0], str(tmp_path / "missing.pt"), "--budget-bytes", "1e9", "--out", str(out)])
    assert "not found" in capsys.readouterr().err


def test_cli_reads_safetensors(tmp_path) -> None:
    st_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    a, b = TinyMoE(CPU_CONFIG).state_dict(), TinyMoE(CPU_CONFIG).state_dict()
    torch.save(a, tmp_path / "a.pt")
    st_torch.save_file(b, str(tmp_path / "b.safetensors"))
    consolidate_main([str(tmp_path / "a.pt"), str(tmp_path / "b.safetensors"), "--budget-bytes", "1e9",
                      "--out", str(tmp_path / "p.json")])
    assert load_plan(tmp_path / "p.json").shared_positions() == 16


def test_parse_bytes() -> None:
    assert parse_bytes("82.9e9") == 82_900_000_000
    assert parse_bytes("80GiB") == 80 * 2**30
    assert parse_bytes("41.4GB") == 41_400_000_000
    with pytest.raises(UserError):
        parse_bytes("lots")


def test_hand_weights_to_plan_order_round_robin_and_memory() -> None:
    # Three variants, one layer, two experts. Variant v adds v·0.5 to expert 0's w1 (8 entries) and
    # v·0.1 to expert 1's w3 (8 entries). Pairwise L2 at expert 0: 0.5·√8·|u−v|; at expert 1: 0.1·√8·|u−v|.
    states = []
    for v in range(3):
        st = hand_state()
        st["model.layers.0.block_sparse_moe.experts.0.w1.weight"] += 0.5 * v
        st["model.layers.0.block_sparse_moe.experts.1.w3.weight"] += 0.1 * v
        states.append(st)
    layout = check_same_architecture(states, ["a", "b", "c"])
    d = expert_distances(states, layout)
    r8 = math.sqrt(8)
    np.testing.assert_allclose(d.l2[0, 2, 0], [1.0 * r8, 0.2 * r8], rtol=1e-6)
    # Summed pairwise: expert 0: 0.5·√8·(1 + 2 + 1) = 2√8; expert 1: 0.4·√8 → expert 1 first.
    # Bytes as stored (fp32): expert 24·4 = 96, non-expert 32·4 = 128; one reserved set + one expert copy.
    plan = build_plan(d.l2, method="paper", budget_bytes=128 + 96, expert_bytes=layout.expert_bytes,
                      nonexpert_bytes=layout.nonexpert_bytes, nonexpert_sets_reserved=1)
    assert (layout.expert_bytes, layout.nonexpert_bytes) == (96, 128)
    shared = [c for c in plan.copies if c.on_gpu]
    assert [(c.expert, c.source_variant) for c in shared] == [(1, 0)]  # rank 0 → variant 0
    assert plan.memory() == {"gpu_expert_bytes": 96, "gpu_nonexpert_bytes": 128, "gpu_total_bytes": 224,
                             "host_expert_bytes": 3 * 96, "all_weights_bytes": 3 * 128 + 4 * 96}
    both = build_plan(d.l2, method="paper", budget_bytes=128 + 2 * 96, expert_bytes=96, nonexpert_bytes=128,
                      nonexpert_sets_reserved=1)
    assert sorted((c.expert, c.source_variant) for c in both.copies) == [(0, 1), (1, 0)]  # rank 1 → variant 1
    st_c = materialize(both, states, layout, 2)
    assert torch.equal(st_c[layout.key(0, 0, "w1")], states[1][layout.key(0, 0, "w1")])


def test_cli_rejects_different_shapes(tmp_path, capsys) -> None:
    small = TinyMoE(CPU_CONFIG).state_dict()
    big = TinyMoE(replace(CPU_CONFIG, d_ff=256)).state_dict()
    torch.save(small, tmp_path / "small.pt")
    torch.save(big, tmp_path / "big.pt")
    with pytest.raises(SystemExit) as exc:
        consolidate_main([str(tmp_path / "small.pt"), str(tmp_path / "big.pt"), "--budget-bytes", "1e9",
                          "--out", str(tmp_path / "p.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "big: model.layers.0.block_sparse_moe.experts.0.w1.weight has shape (256, 64)" in err
