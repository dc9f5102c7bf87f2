"""Floating-point operations and fewest bytes moved through device memory, per profiled op.

Torch-free. Each op's two roofline times are ``flops / measured GEMM rate`` and
``bytes / measured copy bandwidth``; the larger is the floor no implementation beats by much. Bytes count
each weight and each input read once and each output written once (bf16 activations); the KV cache is read
once per sequence (GQA: one copy per KV head). Per-layer ops count one decoder layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.specs import ModelSpec


@dataclass(frozen=True, slots=True)
class Work:
    """Work of one op at one shape: ``flops`` (FLOP) and ``bytes_`` (bytes)."""

    flops: float
    bytes_: float


def attn_proj_params(m: ModelSpec) -> int:
    """Parameters of one layer's q, k, v, o projections and attention norm."""
    return m.attention_params_per_block + m.d_model


def op_work(m: ModelSpec, op: str, batch: int = 1, tokens: int = 0, context: int = 0,
            nbytes: int = 0) -> Work:
    """Flops and fewest bytes of ``op`` at a shape (see ``moesim.formats.profile.OPS`` for the shapes)."""
    dt = m.dtype_bytes
    d, hd = m.d_model, m.head_dim
    q_dim, kv_dim = m.n_heads * hd, m.n_kv_heads * hd
    T = tokens
    if op == "attn_proj":
        p = attn_proj_params(m)
        act = T * (d + q_dim + 2 * kv_dim) + T * (q_dim + 2 * d)  # x in, qkv out; attn in, x read+write
        return Work(2.0 * T * m.attention_params_per_block, (p + act) * dt)
    if op == "router":  # with the shared expert(s) and their gate, where the model has them
        sh = m.shared_expert_params_per_layer
        p = m.d_model * m.n_experts + d + sh
        act = T * (2 * d + m.n_experts) + (T * (2 * d + 4 * m.shared_d_ff) if sh else 0)
        return Work(2.0 * T * (d * m.n_experts + sh), (p + act) * dt)
    if op == "attn_prefill":
        n, c = T, context
        flops = 4.0 * batch * n * (c + (n + 1) / 2) * q_dim
        bytes_ = batch * (n * (2 * q_dim + 2 * kv_dim) + (c + n) * 2 * kv_dim) * dt
        return Work(flops, bytes_)
    if op == "attn_decode":
        c = context
        flops = 4.0 * batch * (c + 1) * q_dim
        bytes_ = batch * ((c + 1) * 2 * kv_dim + 2 * q_dim + 2 * kv_dim) * dt
        return Work(flops, bytes_)
    if op in ("moe_grouped", "moe_loop"):
        from moesim.cost.base import expected_active_fraction  # lazy: moesim.cost imports this module

        f = float(expected_active_fraction(T, m.n_experts, m.top_k))
        touched = m.n_experts * f
        act = T * m.top_k * (2 * d + (m.expert_matrices - 1) * m.d_ff * 2) + T * d * 2
        return Work(2.0 * T * m.top_k * m.expert_params, touched * m.expert_bytes + act * dt)
    if op == "expert_one":
        act = T * (2 * d + (m.expert_matrices - 1) * m.d_ff * 2)
        return Work(2.0 * T * m.expert_params, m.expert_bytes + act * dt)
    if op == "lm_head":
        return Work(2.0 * T * m.vocab * d, (m.vocab * d + T * (d + m.vocab)) * dt)
    if op == "embed":
        return Work(0.0, 2.0 * T * d * dt)
    if op == "ceil_d2d_copy":
        return Work(0.0, 2.0 * nbytes)
    if op == "ceil_gemm":
        return Work(2.0 * T**3, 3.0 * T * T * 2)
    if op.startswith(("h2d_", "overlap_")):
        return Work(0.0, float(nbytes))
    raise ValueError(f"no work formula for op {op!r}")
