"""A Mixtral-style byte-level Mixture-of-Experts language model in one file.

RMSNorm → RoPE attention with grouped key/value heads → RMSNorm → top-k-of-E SwiGLU experts with a linear
router, repeated ``n_layers`` times; untied embedding and lm_head; no biases. Parameter names follow
Hugging Face's Mixtral (``model.layers.{l}.block_sparse_moe.experts.{e}.w1.weight`` ...), so consolidation
code reads this model's state dicts and real Mixtral checkpoints alike.

Shapes: B batch, T tokens, C = d_model, H query heads, G key/value heads, D head_dim, E experts,
F = d_ff, N = B·T flattened tokens. Tokens are bytes (vocab 256).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from moesim.specs.models import ModelSpec


@dataclass(frozen=True)
class TinyMoEConfig:
    """Architecture of a TinyMoE model.

    Attributes:
        vocab: tokens (256 bytes); d_model: hidden size; d_ff: expert inner size.
        n_layers: decoder layers, each with a MoE FFN; n_heads / n_kv_heads / head_dim: attention shape.
        n_experts / top_k: experts per layer and experts chosen per token.
        shared_d_ff: inner size of one shared SwiGLU expert every token passes through (added to the routed
            output, as DeepSeek's; 0 = none). Its keys (``…block_sparse_moe.shared_expert.w{1,2,3}.weight``)
            do not match the routed-expert pattern, so consolidation treats it as non-expert (kept per variant).
        max_seq: longest sequence RoPE tables are built for (tokens).
        rope_theta: RoPE base; norm_eps: RMSNorm epsilon.
    """

    vocab: int = 256
    d_model: int = 64
    d_ff: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 16
    n_experts: int = 8
    top_k: int = 2
    max_seq: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    shared_d_ff: int = 0

    def spec(self, name: str = "tinymoe", dtype_bytes: int = 2) -> ModelSpec:
        """The ``ModelSpec`` of this architecture (for byte counts)."""
        if self.shared_d_ff:
            raise ValueError("ModelSpec has no shared expert; use count_params for this config")
        return ModelSpec(
            name=name,
            vocab=self.vocab,
            d_model=self.d_model,
            d_ff=self.d_ff,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            n_experts=self.n_experts,
            top_k=self.top_k,
            dtype_bytes=dtype_bytes,
        )


#: The CPU config: the ``tiny`` ModelSpec's shape (vocab 256, d 64, d_ff 128, 2 layers, 4/2 heads of 16).
CPU_CONFIG = TinyMoEConfig()
#: The GPU config of the first quality study: d_ff = 3 × d_model as in Mixtral (3.5×), ~4 % non-expert weights.
GPU_CONFIG = replace(CPU_CONFIG, d_model=256, d_ff=768, n_layers=4, n_heads=8, n_kv_heads=2, head_dim=32, max_seq=256)
#: The ≥ 100M-parameter base of the 8-domain study: 8 layers of 8 experts top-2 (Mixtral's routing).
LARGE_CONFIG = replace(CPU_CONFIG, d_model=512, d_ff=1536, n_layers=8, n_heads=8, n_kv_heads=2, head_dim=64,
                       max_seq=512)
#: The fine-grained member: 32 small experts top-4 plus one shared expert (DeepSeek/Qwen-MoE style).
FINE_CONFIG = replace(CPU_CONFIG, d_model=384, d_ff=256, n_layers=6, n_heads=6, n_kv_heads=2, head_dim=64,
                      n_experts=32, top_k=4, shared_d_ff=512, max_seq=512)


#: Ways tokens reach their experts (``SparseMoE.dispatch``); rows each expert's group is padded to in ``grouped``.
DISPATCH_MODES = ("loop", "sorted", "grouped")
GROUP_ALIGN = 16


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(cfg: TinyMoEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (max_seq, D/2)."""
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
    ang = torch.outer(torch.arange(cfg.max_seq, dtype=torch.float32), inv)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the head dimension; x: (B, heads, T, D)."""
    t = x.shape[-2]
    c, s = cos[:t].to(x.dtype), sin[:t].to(x.dtype)  # (T, D/2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: TinyMoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape  # (B, T, C)
        h, g, d = self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim
        q = self.q_proj(x).view(b, t, h, d).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(b, t, g, d).transpose(1, 2)  # (B, G, T, D)
        v = self.v_proj(x).view(b, t, g, d).transpose(1, 2)  # (B, G, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k = k.repeat_interleave(h // g, dim=1)  # (B, H, T, D): each KV head serves H/G query heads
        v = v.repeat_interleave(h // g, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, h * d))


class Expert(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: TinyMoEConfig, d_ff: int | None = None) -> None:
        super().__init__()
        f = cfg.d_ff if d_ff is None else d_ff
        self.w1 = nn.Linear(cfg.d_model, f, bias=False)  # gate projection (F, C)
        self.w2 = nn.Linear(f, cfg.d_model, bias=False)  # down projection (C, F)
        self.w3 = nn.Linear(cfg.d_model, f, bias=False)  # up projection (F, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoE(nn.Module):
    """Router + experts; each token goes to its top-k experts, weighted by the softmax of their logits.

    ``dispatch`` (``DISPATCH_MODES``; set with :func:`set_dispatch`) picks how tokens reach their experts:
    ``loop`` (one ``nonzero`` per expert: E host syncs per layer; the reference), ``sorted`` (one sort, one
    sync per layer) or ``grouped`` (``torch._grouped_mm``, no sync; bf16). All compute the same function.
    """

    dispatch = "loop"

    def __init__(self, cfg: TinyMoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)  # router (E, C)
        self.experts = nn.ModuleList(Expert(cfg) for _ in range(cfg.n_experts))
        if cfg.shared_d_ff:
            self.shared_expert = Expert(cfg, cfg.shared_d_ff)

    def _sorted_dispatch(self, flat: torch.Tensor, top_w: torch.Tensor, top_i: torch.Tensor) -> torch.Tensor:
        """The routed experts' output (N, C) with the N·k (token, expert) pairs sorted by expert (stable).

        ``sorted``: one host sync per layer (the E group sizes), then one SwiGLU per expert on a contiguous
        slice. ``grouped``: no host sync; each expert's group padded to a multiple of ``GROUP_ALIGN`` rows (at
        least one multiple, so no group is empty) inside a buffer of fixed size N·k + E·GROUP_ALIGN (zero rows), three ``torch._grouped_mm`` calls over all experts (bf16
        operands: the autocast dtype, or bf16). Same function as ``loop`` up to rounding."""
        n, c = flat.shape
        k, n_exp = self.cfg.top_k, self.cfg.n_experts
        e_flat = top_i.reshape(-1)  # (N·k,): pair j = token j // k, rank j % k
        order = torch.sort(e_flat, stable=True).indices  # pairs grouped by expert, token order kept inside
        tok = order // k
        w_sorted = top_w.reshape(-1)[order]
        xs = flat.index_select(0, tok)  # (N·k, C)
        counts = torch.zeros(n_exp, dtype=torch.long, device=flat.device).scatter_add_(
            0, e_flat, torch.ones_like(e_flat))
        if self.dispatch == "sorted":
            parts = xs.split(counts.tolist())
            ys = torch.cat([expert(p) for expert, p in zip(self.experts, parts, strict=True)])
        else:
            a = GROUP_ALIGN
            e_sorted = e_flat[order]
            padded = ((counts + a - 1) // a * a).clamp(min=a)  # no empty group: ≤ count + a rows each
            ends = torch.cumsum(padded, 0)
            rank = torch.arange(e_flat.numel(), device=flat.device) - (torch.cumsum(counts, 0) - counts)[e_sorted]
            pos = (ends - padded)[e_sorted] + rank  # row of each sorted pair in the padded buffer
            m = -(-(e_flat.numel() + n_exp * a) // a) * a
            offs = torch.cat([ends[:-1], ends.new_full((1,), m)]).to(torch.int32)  # last group absorbs the tail
            dt = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
            xp = xs.new_zeros(m, c, dtype=dt).index_copy(0, pos, xs.to(dt))
            w1, w2, w3 = (torch.stack([getattr(e, w).weight for e in self.experts]).to(dt) for w in ("w1", "w2", "w3"))
            h = F.silu(torch._grouped_mm(xp, w1.transpose(1, 2), offs=offs)) * torch._grouped_mm(
                xp, w3.transpose(1, 2), offs=offs)  # (M, F)
            ys = torch._grouped_mm(h, w2.transpose(1, 2), offs=offs).index_select(0, pos)  # (N·k, C)
        out = torch.zeros(n, c, dtype=flat.dtype, device=flat.device)  # accumulated as ``loop`` does (fp32)
        return out.index_add(0, tok, (ys * w_sorted[:, None]).to(flat.dtype))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the output (B, T, C) and the load-balancing loss (Switch Transformer's, scalar)."""
        b, t, c = x.shape
        flat = x.reshape(-1, c)  # (N, C)
        logits = self.gate(flat).float()  # (N, E)
        top_w, top_i = logits.topk(self.cfg.top_k, dim=-1)  # (N, k)
        top_w = top_w.softmax(dim=-1).to(x.dtype)
        if self.dispatch == "loop":
            out = torch.zeros_like(flat)
            for e, expert in enumerate(self.experts):
                tok, slot = (top_i == e).nonzero(as_tuple=True)  # tokens routed to e, and at which rank
                if tok.numel():
                    out.index_add_(0, tok, expert(flat[tok]) * top_w[tok, slot, None])
        else:
            out = self._sorted_dispatch(flat, top_w, top_i)
        if self.cfg.shared_d_ff:
            out = out + self.shared_expert(flat)
        probs = logits.softmax(dim=-1)  # (N, E)
        frac = F.one_hot(top_i, self.cfg.n_experts).float().sum(1).mean(0) / self.cfg.top_k  # (E,)
        aux = self.cfg.n_experts * (frac * probs.mean(0)).sum()
        return out.view(b, t, c), aux


def set_dispatch(model: nn.Module, mode: str) -> None:
    """Set the expert dispatch of every :class:`SparseMoE` in ``model`` (one of ``DISPATCH_MODES``)."""
    if mode not in DISPATCH_MODES:
        raise ValueError(f"dispatch {mode!r}: valid are {', '.join(DISPATCH_MODES)}")
    for m in model.modules():
        if isinstance(m, SparseMoE):
            m.dispatch = mode


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TinyMoEConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.block_sparse_moe = SparseMoE(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        y, aux = self.block_sparse_moe(self.post_attention_layernorm(x))
        return x + y, aux


class Backbone(nn.Module):
    def __init__(self, cfg: TinyMoEConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class TinyMoE(nn.Module):
    """The whole model; ``forward(idx)`` returns logits (B, T, vocab) and the summed load-balancing loss."""

    def __init__(self, cfg: TinyMoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # scale residual outputs by depth (GPT-2)
            if name.endswith(("o_proj.weight", "w2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.model.embed_tokens(idx)  # (B, T, C)
        aux = x.new_zeros((), dtype=torch.float32)
        for layer in self.model.layers:
            x, a = layer(x, self.rope_cos, self.rope_sin)
            aux = aux + a
        return self.lm_head(self.model.norm(x)), aux  # (B, T, vocab)

    def loss(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean next-byte cross-entropy (nats) over idx[:, 1:] and the load-balancing loss."""
        logits, aux = self(idx[:, :-1])
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))
        return ce, aux


def expert_key(layer: int, expert: int, matrix: str) -> str:
    """State-dict key of one expert matrix (``w1``, ``w2`` or ``w3``)."""
    return f"model.layers.{layer}.block_sparse_moe.experts.{expert}.{matrix}.weight"


def count_params(model: nn.Module) -> int:
    """Parameters of ``model`` (the RoPE tables are buffers, not parameters)."""
    return sum(p.numel() for p in model.parameters())
