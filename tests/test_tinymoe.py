"""TinyMoE: exact parameter counts against ModelSpec, causality, routing against a per-token reference."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from moesim.consolidation.weights import layout_of
from moesim.specs import get_model
from moesim.tinymoe import CPU_CONFIG, GPU_CONFIG, TinyMoE, apply_rope, count_params, rope_tables


def test_cpu_config_matches_tiny_spec_exactly() -> None:
    spec = get_model("tiny")
    model = TinyMoE(CPU_CONFIG)
    assert count_params(model) == spec.total_params == 451_904
    layout = layout_of(model.state_dict())
    assert layout.expert_params == spec.expert_params == 3 * 64 * 128
    assert layout.nonexpert_params == spec.nonexpert_params
    assert layout.n_layers * layout.n_experts == spec.n_expert_positions == 16
    assert CPU_CONFIG.spec("tiny") == spec


def test_gpu_config_counts() -> None:
    spec = GPU_CONFIG.spec()
    model = TinyMoE(GPU_CONFIG)
    assert count_params(model) == spec.total_params == 19_671_296
    assert spec.expert_bytes == 3 * 256 * 768 * 2


def test_causal_and_shapes() -> None:
    torch.manual_seed(0)
    model = TinyMoE(CPU_CONFIG).eval()
    x = torch.randint(0, 256, (2, 20))
    logits, aux = model(x)
    assert logits.shape == (2, 20, 256)
    assert aux.ndim == 0
    y = x.clone()
    y[:, 12:] = (y[:, 12:] + 7) % 256  # change the future only
    logits2, _ = model(y)
    torch.testing.assert_close(logits[:, :12], logits2[:, :12], rtol=0, atol=1e-6)
    assert not torch.allclose(logits[:, 12:], logits2[:, 12:])


def test_rope_preserves_norm_and_is_relative() -> None:
    cos, sin = rope_tables(CPU_CONFIG)
    q = torch.randn(1, 1, 10, 16)
    rq = apply_rope(q, cos, sin)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    # Same vector at every position: dot products depend only on the offset.
    v = torch.randn(16).expand(1, 1, 10, 16)
    rv = apply_rope(v, cos, sin)[0, 0]
    torch.testing.assert_close(rv[2] @ rv[5], rv[4] @ rv[7], rtol=1e-5, atol=1e-5)


def test_moe_matches_per_token_reference() -> None:
    torch.manual_seed(1)
    model = TinyMoE(CPU_CONFIG).eval()
    moe = model.model.layers[0].block_sparse_moe
    x = torch.randn(1, 7, 64)
    out, _ = moe(x)
    for t in range(7):
        logits = moe.gate(x[0, t])
        w, idx = logits.topk(2)
        w = w.softmax(-1)
        ref = sum(w[j] * moe.experts[int(idx[j])](x[0, t]) for j in range(2))
        torch.testing.assert_close(out[0, t], ref, rtol=1e-5, atol=1e-6)


def test_training_reduces_loss() -> None:
    torch.manual_seed(0)
    model = TinyMoE(CPU_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.tensor([list(b"abcabcabcabcabcabcabcabcabcabcab")] * 4)
    first = None
    for _ in range(30):
        ce, aux = model.loss(x)
        first = float(ce.detach()) if first is None else first
        opt.zero_grad()
        (ce + 0.01 * aux).backward()
        opt.step()
    assert float(ce.detach()) < 0.5 * first


def test_sorted_and_grouped_dispatch_compute_the_loop_function() -> None:
    """sorted is the loop's function exactly (same per-expert matmuls, fp32); grouped runs in bf16, so its loss
    and gradients agree to bf16 rounding; the fine-grained shape (32 experts top-4, shared expert) too."""
    import copy

    from moesim.tinymoe import FINE_CONFIG, GROUP_ALIGN, SparseMoE, set_dispatch

    for cfg in (replace(CPU_CONFIG, max_seq=32), replace(FINE_CONFIG, d_model=32, d_ff=16, shared_d_ff=32,
                                                         n_layers=2, n_heads=2, head_dim=16, max_seq=32)):
        torch.manual_seed(0)
        ref_model = TinyMoE(cfg)
        x = torch.randint(0, 256, (3, 33))
        out = {}
        for mode in ("loop", "sorted", "grouped"):
            m = copy.deepcopy(ref_model)
            set_dispatch(m, mode)
            assert all(s.dispatch == mode for s in m.modules() if isinstance(s, SparseMoE))
            ce, aux = m.loss(x)
            (ce + 0.01 * aux).backward()
            g = torch.cat([p.grad.reshape(-1) for p in m.parameters() if p.grad is not None])
            out[mode] = (float(ce.detach()), float(aux.detach()), g)
        assert out["sorted"][0] == pytest.approx(out["loop"][0], abs=1e-6)
        assert out["sorted"][1] == pytest.approx(out["loop"][1], abs=1e-6)
        assert float((out["sorted"][2] - out["loop"][2]).norm() / out["loop"][2].norm()) < 1e-5
        assert out["grouped"][0] == pytest.approx(out["loop"][0], rel=2e-3)
        assert float((out["grouped"][2] - out["loop"][2]).norm() / out["loop"][2].norm()) < 3e-2
    assert GROUP_ALIGN == 16
    with pytest.raises(ValueError, match="dispatch 'fast'"):
        set_dispatch(TinyMoE(CPU_CONFIG), "fast")


def test_grouped_dispatch_with_idle_experts() -> None:
    """Experts that receive no token (an empty group) leave the others' output unchanged."""
    from moesim.tinymoe import SparseMoE

    torch.manual_seed(2)
    moe = SparseMoE(CPU_CONFIG)
    flat = torch.randn(10, CPU_CONFIG.d_model)
    top_i = torch.stack([torch.tensor([0, 3]), torch.tensor([3, 7])] * 5)  # experts 1, 2, 4, 5, 6 idle
    top_w = torch.rand(10, 2).softmax(-1)
    ref = torch.stack([sum(top_w[t, j] * moe.experts[int(top_i[t, j])](flat[t]) for j in range(2))
                       for t in range(10)])
    for mode, tol in (("sorted", 1e-5), ("grouped", 2e-2)):
        moe.dispatch = mode
        out = moe._sorted_dispatch(flat, top_w, top_i)
        assert float(((out - ref).norm() / ref.norm()).detach()) < tol, mode
