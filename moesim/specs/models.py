"""Model specifications: exact architectures and the byte counts the simulator needs.

Counts follow ../facts/models.md (copied facts; see README): parameters are exact, bytes are
``parameters × dtype_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from moesim.errors import unknown_name


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A Mixture-of-Experts transformer, decoder-only or encoder-decoder.

    Parameter counts are closed forms of these fields; ``moesim.specs.shapes.tensor_shapes`` lists the
    same parameters tensor by tensor (with Hugging Face's names) and a test checks that the two agree
    exactly for every shipped model.

    Attributes:
        name: registry name.
        vocab: vocabulary size (tokens).
        d_model: hidden size.
        d_ff: routed-expert FFN inner size (also the dense FFN size where a layer is dense, unless
            ``dense_d_ff`` is set).
        n_layers: decoder layers (those run once per generated token).
        n_encoder_layers: encoder layers (0 for decoder-only); run once over the prompt.
        n_heads: query heads; n_kv_heads: key/value heads; head_dim: per-head size (GQA attention).
        n_experts: routed experts per MoE layer; top_k: routed experts chosen per token.
        moe_every: every ``moe_every``-th layer is MoE (1: all layers), others have a dense FFN.
        expert_matrices: weight matrices per expert (3 for SwiGLU w1/w2/w3, 2 for wi/wo).
        cross_attention: decoder layers have a cross-attention block (encoder-decoder models).
        tied_embeddings: lm_head shares the input embedding.
        extra_nonexpert_params: parameters not covered above (e.g. T5 relative-position biases).
        dtype_bytes: bytes per parameter of everything but the routed experts (2 for bf16).
        arch: architecture family (``moesim.specs.hf.ARCHITECTURES``), e.g. ``"mixtral"``, ``"deepseek_v3"``.
        first_dense: the first ``first_dense`` decoder layers have a dense FFN (DeepSeek).
        dense_d_ff: inner size of those dense FFNs (0: ``d_ff``).
        n_shared_experts: shared experts per MoE layer (every token runs them); shared_d_ff: their total
            inner size (DeepSeek: n_shared × moe size; Qwen-MoE: shared_expert_intermediate_size).
        shared_gate: the shared expert's output is scaled by a sigmoid gate (a (1, d) weight; Qwen-MoE).
        attention: ``"gqa"`` (q/k/v/o projections) or ``"mla"`` (DeepSeek multi-head latent attention).
        q_lora_rank, kv_lora_rank, qk_nope_dim, qk_rope_dim, v_head_dim: MLA sizes (0 q_lora: no
            query compression).
        qk_norm: ``""``, ``"head"`` (RMSNorm over head_dim: Qwen3) or ``"full"`` (over all q / k
            channels: OLMoE).
        qkv_bias: q, k, v projections have biases; o_bias: the output projection has one.
        attn_sinks: one learned sink logit per query head and layer (gpt-oss).
        norm_bias: norms are LayerNorms with a bias (Phi-3.5-MoE).
        router_bias: the router has a bias; expert_bias: experts' projections have biases (gpt-oss).
        lm_head_bias: the lm_head has a bias (Phi-3.5-MoE).
        n_sliding_layers: decoder layers with sliding-window attention of ``sliding_window`` tokens:
            their KV cache stops growing at the window (gpt-oss).
        n_group, topk_group: grouped routing (DeepSeek): experts split into ``n_group`` groups, a token
            picks its experts within its best ``topk_group`` groups (1, 1: plain top-k).
        expert_format: routed experts' weight format (``moesim.specs.formats.FORMATS``): ``auto``
            (``dtype_bytes`` per parameter), bf16, fp8 (one fp32 scale per 128×128 block), mxfp4 (4-bit, one
            byte scale per 32 values) or int4 (4-bit, one bf16 scale per group of 128); bytes per expert
            include the scales (biases stay bf16).
        source: where the spec came from (a config.json path, or ``""`` for the built-in ones).
        max_context_tokens: longest sequence (prompt + output tokens) the model serves; 0 = no stated
            limit. A longer request is rejected by the engine (``moesim.engine.admission``); from
            ``max_position_embeddings`` for config.json models.
    """

    name: str
    vocab: int
    d_model: int
    d_ff: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_experts: int
    top_k: int
    n_encoder_layers: int = 0
    moe_every: int = 1
    expert_matrices: int = 3
    cross_attention: bool = False
    tied_embeddings: bool = False
    extra_nonexpert_params: int = 0
    dtype_bytes: int = 2
    arch: str = "mixtral"
    first_dense: int = 0
    dense_d_ff: int = 0
    n_shared_experts: int = 0
    shared_d_ff: int = 0
    shared_gate: bool = False
    attention: str = "gqa"
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_dim: int = 0
    qk_rope_dim: int = 0
    v_head_dim: int = 0
    qk_norm: str = ""
    qkv_bias: bool = False
    o_bias: bool = False
    attn_sinks: bool = False
    norm_bias: bool = False
    router_bias: bool = False
    expert_bias: bool = False
    lm_head_bias: bool = False
    sliding_window: int = 0
    n_sliding_layers: int = 0
    n_group: int = 1
    topk_group: int = 1
    expert_format: str = "auto"
    source: str = ""
    max_context_tokens: int = 0

    # ---- layer counts -------------------------------------------------------------------------
    def is_moe_layer(self, layer: int) -> bool:
        """Decoder layer ``layer`` (0-based) has routed experts."""
        return layer >= self.first_dense and layer % self.moe_every == self.moe_every - 1

    @property
    def total_layers(self) -> int:
        """Encoder plus decoder layers."""
        return self.n_layers + self.n_encoder_layers

    @property
    def n_decoder_moe_layers(self) -> int:
        """MoE layers run per generated token."""
        return sum(1 for i in range(self.n_layers) if self.is_moe_layer(i))

    @property
    def n_moe_layers(self) -> int:
        """MoE layers over encoder and decoder."""
        return self.n_decoder_moe_layers + (self.n_encoder_layers // self.moe_every)

    @property
    def n_dense_layers(self) -> int:
        """Layers whose FFN is dense (not MoE)."""
        return self.total_layers - self.n_moe_layers

    @property
    def n_expert_positions(self) -> int:
        """(layer, expert) positions: n_moe_layers × n_experts."""
        return self.n_moe_layers * self.n_experts

    @property
    def swiglu(self) -> bool:
        """Experts are gated (three matrices, or gpt-oss's fused gate_up)."""
        return self.expert_matrices == 3

    # ---- parameters ---------------------------------------------------------------------------
    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert (weights and, for gpt-oss, biases)."""
        bias = (self.d_ff * (self.expert_matrices - 1) + self.d_model) if self.expert_bias else 0
        return self.expert_matrices * self.d_model * self.d_ff + bias

    @property
    def all_expert_params(self) -> int:
        """Parameters of all routed experts."""
        return self.n_expert_positions * self.expert_params

    @property
    def attention_params_per_block(self) -> int:
        """One attention block: projections, their biases and norms, sinks."""
        d, H = self.d_model, self.n_heads
        if self.attention == "mla":
            qk = self.qk_nope_dim + self.qk_rope_dim
            if self.q_lora_rank:
                q = d * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * H * qk
            else:
                q = d * H * qk
            kv = d * (self.kv_lora_rank + self.qk_rope_dim) + self.kv_lora_rank
            kv += self.kv_lora_rank * H * (self.qk_nope_dim + self.v_head_dim)
            return q + kv + H * self.v_head_dim * d
        qd, kvd = H * self.head_dim, self.n_kv_heads * self.head_dim
        p = d * qd + 2 * d * kvd + qd * d
        if self.qkv_bias:
            p += qd + 2 * kvd
        if self.o_bias:
            p += d
        if self.qk_norm == "head":
            p += 2 * self.head_dim
        elif self.qk_norm == "full":
            p += qd + kvd
        if self.attn_sinks:
            p += H
        return p

    @property
    def n_attention_blocks(self) -> int:
        """Self-attention blocks plus cross-attention blocks."""
        return self.total_layers + (self.n_layers if self.cross_attention else 0)

    @property
    def _norm_size(self) -> int:
        return self.d_model * (2 if self.norm_bias else 1)

    @property
    def norm_params(self) -> int:
        """Layer norms: per-layer norms plus final norms."""
        per_dec = 3 if self.cross_attention else 2
        finals = 2 if self.n_encoder_layers else 1
        return self._norm_size * (self.n_layers * per_dec + self.n_encoder_layers * 2 + finals)

    @property
    def router_params_per_layer(self) -> int:
        """Router (gate) of one MoE layer."""
        return self.d_model * self.n_experts + (self.n_experts if self.router_bias else 0)

    @property
    def router_params(self) -> int:
        """Router (gate) weights of all MoE layers."""
        return self.n_moe_layers * self.router_params_per_layer

    @property
    def dense_ffn_params_per_layer(self) -> int:
        """One dense FFN (a non-MoE layer's)."""
        return self.expert_matrices * self.d_model * (self.dense_d_ff or self.d_ff)

    @property
    def dense_ffn_params(self) -> int:
        """Dense FFN weights of the non-MoE layers."""
        return self.n_dense_layers * self.dense_ffn_params_per_layer

    @property
    def shared_expert_params_per_layer(self) -> int:
        """Shared expert(s) of one MoE layer, with their gate."""
        if not self.shared_d_ff:
            return 0
        return 3 * self.d_model * self.shared_d_ff + (self.d_model if self.shared_gate else 0)

    @property
    def shared_expert_params(self) -> int:
        """Shared experts of all MoE layers: part of each tenant's non-expert set (see docs/models.md)."""
        return self.n_moe_layers * self.shared_expert_params_per_layer

    @property
    def embedding_params(self) -> int:
        """Input embedding plus lm_head (once when tied), with the lm_head bias."""
        return self.vocab * self.d_model * (1 if self.tied_embeddings else 2) + (
            self.vocab if self.lm_head_bias else 0)

    @property
    def nonexpert_params(self) -> int:
        """Everything that is not a routed expert: what partial reconfiguration swaps."""
        return (
            self.attention_params_per_block * self.n_attention_blocks
            + self.norm_params
            + self.router_params
            + self.dense_ffn_params
            + self.shared_expert_params
            + self.embedding_params
            + self.extra_nonexpert_params
        )

    @property
    def total_params(self) -> int:
        """All parameters."""
        return self.nonexpert_params + self.all_expert_params

    @property
    def active_params_per_token(self) -> int:
        """Parameters a decoder-only model touches per token (non-expert + top_k experts per MoE layer),
        counting the input embedding matrix and the lm_head both."""
        return self.nonexpert_params + self.n_moe_layers * self.top_k * self.expert_params

    @property
    def active_params_excl_embedding(self) -> int:
        """``active_params_per_token`` without the input embedding (a lookup, not a matmul); the lm_head
        stays. Some publishers (OpenAI, DeepSeek) count active parameters this way."""
        lookup = 0 if self.tied_embeddings else self.vocab * self.d_model
        return self.active_params_per_token - lookup

    # ---- bytes --------------------------------------------------------------------------------
    @property
    def expert_bytes(self) -> int:
        """Bytes of one routed expert in its weight format, scales included."""
        from moesim.specs.formats import expert_bytes

        return expert_bytes(self)

    @property
    def all_expert_bytes(self) -> int:
        """Bytes of all routed experts."""
        return self.n_expert_positions * self.expert_bytes

    @property
    def nonexpert_bytes(self) -> int:
        """Bytes of one tenant's non-expert set (``dtype_bytes`` per parameter)."""
        return self.nonexpert_params * self.dtype_bytes

    @property
    def total_bytes(self) -> int:
        """Bytes of one whole model."""
        return self.nonexpert_bytes + self.all_expert_bytes

    @property
    def kv_layers(self) -> int:
        """Decoder layers whose KV cache grows with the context (sliding-window layers excluded)."""
        return self.n_layers - self.n_sliding_layers

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token of context (decoder self-attention, bf16).

        MLA caches its compressed latent and the rope key (kv_lora_rank + qk_rope_dim per layer), as
        serving engines do. Sliding-window layers are left out (their cache is bounded by the window).
        """
        per = (self.kv_lora_rank + self.qk_rope_dim) if self.attention == "mla" else (
            2 * self.n_kv_heads * self.head_dim)
        return self.kv_layers * per * 2

    @property
    def attn_core_dim(self) -> int:
        """Width of the attention core per key: 4 · dim flops per (query, key) pair (QKᵀ and PV).

        GQA: n_heads × head_dim. MLA in its absorbed form scores against the latent plus the rope key and
        reads values from the latent: n_heads × (2 · kv_lora_rank + qk_rope_dim) / 2.
        """
        if self.attention == "mla":
            return self.n_heads * (2 * self.kv_lora_rank + self.qk_rope_dim) // 2
        return self.n_heads * self.head_dim

    @property
    def nonexpert_bytes_per_layer(self) -> int:
        """Bytes of one decoder layer's non-expert part (attention, norms, router, shared expert)."""
        per = (self.attention_params_per_block + 2 * self._norm_size + self.router_params_per_layer
               + self.shared_expert_params_per_layer)
        return per * self.dtype_bytes

    def with_format(self, fmt: str) -> ModelSpec:
        """The same model with its routed experts stored in ``fmt`` (``model.dtype=``)."""
        from moesim.specs.formats import check_format

        check_format(fmt, where="model.dtype")
        return replace(self, expert_format=fmt)


# The real checkpoints' shape (d_ff 3072, 6 + 6 sparse layers), not the library's default config.
SWITCH_BASE_8 = ModelSpec(
    name="switch-base-8",
    arch="switch_transformers",
    vocab=32128,
    d_model=768,
    d_ff=3072,
    n_layers=12,
    n_encoder_layers=12,
    n_heads=12,
    n_kv_heads=12,
    head_dim=64,
    n_experts=8,
    top_k=1,
    moe_every=2,
    expert_matrices=2,
    cross_attention=True,
    tied_embeddings=True,
    extra_nonexpert_params=2 * 32 * 12,  # relative-position bias: 32 buckets × 12 heads, encoder + decoder
)

# A byte-level Mixtral-style model small enough for CPU tests (same shape as moesim.tinymoe's CPU config).
TINY = ModelSpec(
    name="tiny",
    vocab=256,
    d_model=64,
    d_ff=128,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    head_dim=16,
    n_experts=8,
    top_k=2,
)

DATA_DIR = Path(__file__).resolve().parent / "data" / "models"


def _shipped() -> dict[str, ModelSpec]:
    from moesim.specs.hf import load_config

    out = {m.name: m for m in (SWITCH_BASE_8, TINY)}
    for p in sorted(DATA_DIR.glob("*.json")):
        spec = load_config(p, name=p.stem)
        out[p.stem] = replace(spec, source=f"moesim/specs/data/models/{p.name}")
    return dict(sorted(out.items()))


MODEL_SPECS: dict[str, ModelSpec] = _shipped()
MIXTRAL_8X7B = MODEL_SPECS["mixtral-8x7b"]


def is_path(name: str) -> bool:
    """``name`` names a file rather than a shipped model (it ends in .json or has a path separator)."""
    return name.endswith((".json", ".yaml", ".yml")) or "/" in name or "\\" in name


def get_model(name: str, dtype: str = "auto") -> ModelSpec:
    """A shipped model by name, or a model from a config.json path; ``dtype`` overrides the experts'
    weight format (``auto``: as the config says). An unknown name lists the valid ones."""
    if is_path(name):
        from moesim.specs.hf import load_config

        spec = load_config(name)
    else:
        try:
            spec = MODEL_SPECS[name]
        except KeyError:
            raise unknown_name("model", name, MODEL_SPECS) from None
    return spec if dtype in ("auto", "", None) else spec.with_format(dtype)
