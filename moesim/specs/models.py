"""Model specifications: exact architectures and the byte counts the simulator needs.

Counts follow ../facts/models.md (copied facts; see README): parameters are exact, bytes are
``parameters × dtype_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.errors import unknown_name


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A Mixture-of-Experts transformer, decoder-only or encoder-decoder.

    Attributes:
        name: registry name.
        vocab: vocabulary size (tokens).
        d_model: hidden size.
        d_ff: expert FFN inner size (also the dense FFN size where a layer is dense).
        n_layers: decoder layers (those run once per generated token).
        n_encoder_layers: encoder layers (0 for decoder-only); run once over the prompt.
        n_heads: query heads; n_kv_heads: key/value heads; head_dim: per-head size.
        n_experts: experts per MoE layer; top_k: experts chosen per token.
        moe_every: every ``moe_every``-th layer is MoE (1: all layers), others have a dense FFN.
        expert_matrices: weight matrices per expert (3 for SwiGLU w1/w2/w3, 2 for wi/wo).
        cross_attention: decoder layers have a cross-attention block (encoder-decoder models).
        tied_embeddings: lm_head shares the input embedding.
        extra_nonexpert_params: parameters not covered above (e.g. T5 relative-position biases).
        dtype_bytes: bytes per parameter (2 for bf16).
        max_context_tokens: longest sequence (prompt + output tokens) the model serves; 0 = no stated
            limit. A longer request is rejected by the engine (``moesim.engine.admission``).
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
    max_context_tokens: int = 0

    # ---- layer counts -------------------------------------------------------------------------
    @property
    def total_layers(self) -> int:
        """Encoder plus decoder layers."""
        return self.n_layers + self.n_encoder_layers

    @property
    def n_moe_layers(self) -> int:
        """MoE layers over encoder and decoder."""
        return (self.n_layers // self.moe_every) + (self.n_encoder_layers // self.moe_every)

    @property
    def n_decoder_moe_layers(self) -> int:
        """MoE layers run per generated token."""
        return self.n_layers // self.moe_every

    @property
    def n_dense_layers(self) -> int:
        """Layers whose FFN is dense (not MoE)."""
        return self.total_layers - self.n_moe_layers

    @property
    def n_expert_positions(self) -> int:
        """(layer, expert) positions: n_moe_layers × n_experts."""
        return self.n_moe_layers * self.n_experts

    # ---- parameters ---------------------------------------------------------------------------
    @property
    def expert_params(self) -> int:
        """Parameters of one expert."""
        return self.expert_matrices * self.d_model * self.d_ff

    @property
    def all_expert_params(self) -> int:
        """Parameters of all experts."""
        return self.n_expert_positions * self.expert_params

    @property
    def attention_params_per_block(self) -> int:
        """q, k, v, o projections of one attention block."""
        q = self.d_model * self.n_heads * self.head_dim
        kv = 2 * self.d_model * self.n_kv_heads * self.head_dim
        o = self.n_heads * self.head_dim * self.d_model
        return q + kv + o

    @property
    def n_attention_blocks(self) -> int:
        """Self-attention blocks plus cross-attention blocks."""
        return self.total_layers + (self.n_layers if self.cross_attention else 0)

    @property
    def norm_params(self) -> int:
        """RMSNorm weights: per-layer norms plus final norms."""
        per_dec = 3 if self.cross_attention else 2
        finals = 2 if self.n_encoder_layers else 1
        return self.d_model * (self.n_layers * per_dec + self.n_encoder_layers * 2 + finals)

    @property
    def router_params(self) -> int:
        """Router (gate) weights of all MoE layers."""
        return self.n_moe_layers * self.d_model * self.n_experts

    @property
    def dense_ffn_params(self) -> int:
        """Dense FFN weights of the non-MoE layers."""
        return self.n_dense_layers * self.expert_params

    @property
    def embedding_params(self) -> int:
        """Input embedding plus lm_head (once when tied)."""
        return self.vocab * self.d_model * (1 if self.tied_embeddings else 2)

    @property
    def nonexpert_params(self) -> int:
        """Everything that is not an expert: what partial reconfiguration swaps."""
        return (
            self.attention_params_per_block * self.n_attention_blocks
            + self.norm_params
            + self.router_params
            + self.dense_ffn_params
            + self.embedding_params
            + self.extra_nonexpert_params
        )

    @property
    def total_params(self) -> int:
        """All parameters."""
        return self.nonexpert_params + self.all_expert_params

    @property
    def active_params_per_token(self) -> int:
        """Parameters a decoder-only model touches per token (non-expert + top_k experts per MoE layer)."""
        return self.nonexpert_params + self.n_moe_layers * self.top_k * self.expert_params

    # ---- bytes --------------------------------------------------------------------------------
    @property
    def expert_bytes(self) -> int:
        """Bytes of one expert."""
        return self.expert_params * self.dtype_bytes

    @property
    def all_expert_bytes(self) -> int:
        """Bytes of all experts."""
        return self.all_expert_params * self.dtype_bytes

    @property
    def nonexpert_bytes(self) -> int:
        """Bytes of one tenant's non-expert set."""
        return self.nonexpert_params * self.dtype_bytes

    @property
    def total_bytes(self) -> int:
        """Bytes of one whole model."""
        return self.total_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token of context (decoder self-attention)."""
        return self.n_layers * 2 * self.n_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def nonexpert_bytes_per_layer(self) -> int:
        """Bytes of one decoder layer's non-expert part (attention, norms, router): the swap unit."""
        per = self.attention_params_per_block + 2 * self.d_model + self.d_model * self.n_experts
        return per * self.dtype_bytes


MIXTRAL_8X7B = ModelSpec(
    name="mixtral-8x7b",
    vocab=32000,
    d_model=4096,
    d_ff=14336,
    n_layers=32,
    n_heads=32,
    n_kv_heads=8,
    head_dim=128,
    n_experts=8,
    top_k=2,
    max_context_tokens=32768,  # max_position_embeddings of mistralai/Mixtral-8x7B-v0.1
)

# The real checkpoints' shape (d_ff 3072, 6 + 6 sparse layers), not the library's default config.
SWITCH_BASE_8 = ModelSpec(
    name="switch-base-8",
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

MODEL_SPECS: dict[str, ModelSpec] = {m.name: m for m in (MIXTRAL_8X7B, SWITCH_BASE_8, TINY)}


def get_model(name: str) -> ModelSpec:
    """Look a model up by name; an unknown name lists the valid ones."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise unknown_name("model", name, MODEL_SPECS) from None
