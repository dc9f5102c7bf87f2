"""Every parameter tensor of a model, by Hugging Face name and shape, written out per architecture.

This is the second, independent count: ``ModelSpec``'s closed forms must equal the sum of these shapes
(tests/test_models_hf.py checks it exactly for every shipped model), and on a machine with transformers
the same list is compared with the real model class's ``named_parameters()`` built on the meta device
(calibration/hf_check.py). Routed experts are listed per expert even where transformers fuses them
(gpt-oss's ``gate_up_proj``): the kind column says what each tensor is.

Kinds: ``embed``, ``lm_head``, ``norm``, ``attn``, ``router``, ``expert`` (routed), ``shared``
(shared expert and its gate), ``dense`` (dense FFN layers).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from moesim.specs.models import ModelSpec


@dataclass(frozen=True, slots=True)
class Tensor:
    """One parameter tensor: Hugging Face name, shape and kind."""

    name: str
    shape: tuple[int, ...]
    kind: str

    @property
    def numel(self) -> int:
        """Elements of the tensor."""
        return math.prod(self.shape)


def _attention(m: ModelSpec, p: str) -> Iterator[Tensor]:
    d, H = m.d_model, m.n_heads
    a = f"{p}.self_attn"
    if m.attention == "mla":
        qk = m.qk_nope_dim + m.qk_rope_dim
        if m.q_lora_rank:
            yield Tensor(f"{a}.q_a_proj.weight", (m.q_lora_rank, d), "attn")
            yield Tensor(f"{a}.q_a_layernorm.weight", (m.q_lora_rank,), "attn")
            yield Tensor(f"{a}.q_b_proj.weight", (H * qk, m.q_lora_rank), "attn")
        else:
            yield Tensor(f"{a}.q_proj.weight", (H * qk, d), "attn")
        yield Tensor(f"{a}.kv_a_proj_with_mqa.weight", (m.kv_lora_rank + m.qk_rope_dim, d), "attn")
        yield Tensor(f"{a}.kv_a_layernorm.weight", (m.kv_lora_rank,), "attn")
        yield Tensor(f"{a}.kv_b_proj.weight", (H * (m.qk_nope_dim + m.v_head_dim), m.kv_lora_rank), "attn")
        yield Tensor(f"{a}.o_proj.weight", (d, H * m.v_head_dim), "attn")
        return
    qd, kvd = H * m.head_dim, m.n_kv_heads * m.head_dim
    for proj, out in (("q_proj", qd), ("k_proj", kvd), ("v_proj", kvd)):
        yield Tensor(f"{a}.{proj}.weight", (out, d), "attn")
        if m.qkv_bias:
            yield Tensor(f"{a}.{proj}.bias", (out,), "attn")
    yield Tensor(f"{a}.o_proj.weight", (d, qd), "attn")
    if m.o_bias:
        yield Tensor(f"{a}.o_proj.bias", (d,), "attn")
    if m.qk_norm == "head":
        yield Tensor(f"{a}.q_norm.weight", (m.head_dim,), "attn")
        yield Tensor(f"{a}.k_norm.weight", (m.head_dim,), "attn")
    elif m.qk_norm == "full":
        yield Tensor(f"{a}.q_norm.weight", (qd,), "attn")
        yield Tensor(f"{a}.k_norm.weight", (kvd,), "attn")
    if m.attn_sinks:
        yield Tensor(f"{a}.sinks", (H,), "attn")


def _norm(m: ModelSpec, name: str) -> Iterator[Tensor]:
    yield Tensor(f"{name}.weight", (m.d_model,), "norm")
    if m.norm_bias:
        yield Tensor(f"{name}.bias", (m.d_model,), "norm")


def _ffn(prefix: str, d: int, f: int, kind: str) -> Iterator[Tensor]:
    yield Tensor(f"{prefix}.gate_proj.weight", (f, d), kind)
    yield Tensor(f"{prefix}.up_proj.weight", (f, d), kind)
    yield Tensor(f"{prefix}.down_proj.weight", (d, f), kind)


def _moe(m: ModelSpec, p: str) -> Iterator[Tensor]:
    d, f, E = m.d_model, m.d_ff, m.n_experts
    fam = m.arch
    if fam == "gpt_oss":
        yield Tensor(f"{p}.mlp.router.weight", (E, d), "router")
        yield Tensor(f"{p}.mlp.router.bias", (E,), "router")
        for e in range(E):  # transformers stores these fused as (E, d, 2f) / (E, f, d)
            yield Tensor(f"{p}.mlp.experts.gate_up_proj[{e}]", (d, 2 * f), "expert")
            yield Tensor(f"{p}.mlp.experts.gate_up_proj_bias[{e}]", (2 * f,), "expert")
            yield Tensor(f"{p}.mlp.experts.down_proj[{e}]", (f, d), "expert")
            yield Tensor(f"{p}.mlp.experts.down_proj_bias[{e}]", (d,), "expert")
        return
    block = "block_sparse_moe" if fam in ("mixtral", "phimoe") else "mlp"
    yield Tensor(f"{p}.{block}.gate.weight", (E, d), "router")
    for e in range(E):
        if fam in ("mixtral", "phimoe"):
            ex = f"{p}.{block}.experts.{e}"
            yield Tensor(f"{ex}.w1.weight", (f, d), "expert")
            yield Tensor(f"{ex}.w2.weight", (d, f), "expert")
            yield Tensor(f"{ex}.w3.weight", (f, d), "expert")
        else:
            yield from _ffn(f"{p}.mlp.experts.{e}", d, f, "expert")
    if m.shared_d_ff:
        name = "shared_expert" if fam == "qwen2_moe" else "shared_experts"
        yield from _ffn(f"{p}.mlp.{name}", d, m.shared_d_ff, "shared")
        if m.shared_gate:
            yield Tensor(f"{p}.mlp.shared_expert_gate.weight", (1, d), "shared")


def tensor_shapes(m: ModelSpec) -> list[Tensor]:
    """Every parameter tensor of a decoder-only model (transformers' names; MoE experts listed singly)."""
    if m.n_encoder_layers or m.cross_attention:
        raise ValueError(f"{m.name}: tensor_shapes covers decoder-only models")
    out = [Tensor("model.embed_tokens.weight", (m.vocab, m.d_model), "embed")]
    for i in range(m.n_layers):
        p = f"model.layers.{i}"
        out += _norm(m, f"{p}.input_layernorm")
        out += _attention(m, p)
        out += _norm(m, f"{p}.post_attention_layernorm")
        if m.is_moe_layer(i):
            out += _moe(m, p)
        else:
            out += _ffn(f"{p}.mlp", m.d_model, m.dense_d_ff or m.d_ff, "dense")
    out += _norm(m, "model.norm")
    if not m.tied_embeddings:
        out.append(Tensor("lm_head.weight", (m.vocab, m.d_model), "lm_head"))
    if m.lm_head_bias:
        out.append(Tensor("lm_head.bias", (m.vocab,), "lm_head"))
    return out


def count_by_kind(m: ModelSpec) -> dict[str, int]:
    """Parameters per kind from the tensor list."""
    out: dict[str, int] = {}
    for t in tensor_shapes(m):
        out[t.kind] = out.get(t.kind, 0) + t.numel
    return out
