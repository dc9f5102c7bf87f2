"""The calibration engine on the new architectures' features, at tiny shapes on the CPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from moesim.calibrate.engine import KVCache, MoEEngine  # noqa: E402
from moesim.specs import get_model  # noqa: E402
from moesim.specs.hf import load_config  # noqa: E402

TINY_QWEN2MOE = {"architectures": ["Qwen2MoeForCausalLM"], "vocab_size": 256, "hidden_size": 64,
                 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                 "intermediate_size": 128, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 96,
                 "num_experts": 12, "num_experts_per_tok": 4}


def test_shared_expert_is_in_each_tenants_nonexpert_set(tmp_path: Path) -> None:
    p = tmp_path / "tiny-qwen2moe.json"
    p.write_text(json.dumps(TINY_QWEN2MOE))
    spec = load_config(p)
    assert spec.shared_expert_params_per_layer == 3 * 64 * 96 + 64
    eng = MoEEngine(spec, torch.device("cpu"), n_tenants=2, seed=0, dtype=torch.float32)
    ne = eng.tenants[0]
    # everything that is not a routed expert, per tenant: the engine fuses q/k/v and omits the q/k/v biases
    biases = spec.n_layers * (spec.n_heads + 2 * spec.n_kv_heads) * spec.head_dim
    assert sum(t.numel() for t in ne.tensors()) == spec.nonexpert_params - biases
    x = eng.random_hidden(5)
    y = eng.shared(x, 1, 0)
    assert y is not None
    assert y.shape == (5, 64)
    assert not torch.equal(y, eng.shared(x, 0, 0))  # each tenant its own shared expert


def test_balanced_routing_spreads_tokens_over_experts() -> None:
    s = dataclasses.replace(get_model("qwen3-30b-a3b"), n_layers=6, d_ff=16, vocab=500, d_model=256, n_heads=4,
                            n_kv_heads=2, head_dim=64)
    E, k, n = s.n_experts, s.top_k, 64
    uniform = E * (1 - (1 - k / E) ** n)
    seen: dict[bool, list[int]] = {}
    for balanced in (False, True):
        eng = MoEEngine(s, torch.device("cpu"), n_tenants=1, seed=0, dtype=torch.float32,
                        balanced_routing=balanced)
        counts: list[int] = []
        router = eng.router

        def spy(x, t, layer, row0=0, router=router, counts=counts):
            h, i, w = router(x, t, layer, row0)
            counts.append(len(torch.unique(i)))
            return h, i, w

        eng.router = spy  # type: ignore[method-assign]
        eng.step(eng.make_inputs([(0, n, 0)]), KVCache(s, n, torch.device("cpu"), torch.float32, eng.gen))
        seen[balanced] = counts
    assert min(seen[True]) >= 0.95 * uniform  # every layer near the uniform expectation (≈ 126.6)
    assert min(seen[False][2:]) < 0.6 * uniform  # random weights alone collapse routing in deeper layers
