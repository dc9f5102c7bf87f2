"""A Mixture-of-Experts decoder in plain PyTorch at real shapes, built with random weights for timing.

One engine holds one copy of the experts (shared by every tenant, as after consolidation) and one
non-expert set per tenant (embeddings, lm_head, final norm; per layer the attention projections, both
norms and the router; the dense FFN of non-MoE layers). Weights are drawn from a normal law (never zeros:
zeros run faster than real data) directly on the device in the model's dtype.

Execution is what an efficient eager engine does:
  * tokens of a step are packed (no padding), ordered by tenant; each tenant's projections run on its
    own slice of the packed activations;
  * attention is one FlashAttention varlen call per layer over every sequence (bottom-right causal: a
    decode token sees its whole context, a prefill chunk is causal over context + chunk), after writing
    the new keys/values into a packed KV cache; where FlashAttention is missing (CPU) each sequence runs
    ``scaled_dot_product_attention`` on its own;
  * experts run grouped: assignments sorted by expert, each expert's rows padded to 16, one grouped GEMM
    for the up projections and one for the down projection (``torch._grouped_mm``), no host sync; the
    ``loop`` engine (one GEMM per active expert, a host sync per layer) is kept for comparison.

Shapes are noted as comments: N tokens in the step, d model width, H/Hkv heads, hd head dim, E experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from moesim.errors import UserError
from moesim.specs import ModelSpec

if TYPE_CHECKING:
    from moesim.consolidation.plan import Plan

INIT_STD = 0.02
ALIGN_ROWS = 16  # rows per expert group are padded to this for the grouped GEMM
ROUTE_NOISE_STD = 8.0  # balanced routing: random logits dominate the router's (std ≈ 0.02·√d ≈ 1)
ROUTE_NOISE_ROWS = 16384  # token slots of the routing-noise table (longer calls wrap around)
#: ``MoEEngine.route_layer_stride`` the calibrator sets with balanced routing: layer i reads the noise table from
#: row i·stride on (a prime, so layers' rows never line up), so every MoE layer routes the step's tokens
#: independently, as a trained model's layers do. With stride 0 (the engine's default, and the runtime's graphs)
#: every layer routes the same way: a step's 32 layers are one routing draw timed 32 times, and the fused kernel's
#: per-expert padding to BLOCK_M rows makes one draw's time differ from the mean by several percent.
ROUTE_LAYER_STRIDE = 1031
MOE_ENGINES = ("grouped", "loop", "triton")
# MoEEngine._triton_ok: above this many token × top-k assignments the triton engine runs the grouped GEMM (None:
# never). The H200 benchmark of 2026-11-30 06:45 measured the grouped GEMM faster from 4,096 tokens (cap 8,191);
# the one of 08:41, with the re-tuned tiles and TMA loads, measured the fused kernel faster at every size up to
# 4,096 tokens (4,658 vs 5,851 µs per Mixtral layer there; reports/kernels/kernels.json, moe_op) and its
# profile ran it up to 8,192 (10.2 ms against 11.3 for the grouped GEMM of the first run): no crossover.
TRITON_MAX_ASSIGN: int | None = None
#: The fused engine's prompt attention (``MoEEngine.prefill_attn``, ``cudnn_min_tokens``): the 08:41 benchmark
#: measured SDPA's cuDNN backend faster than the varlen FlashAttention call for one causal prompt (128 vs 199 µs
#: per layer at 2,048 tokens, 337 vs 510 at 4,096; same output within 2e-3). The grouped engine keeps
#: FlashAttention: its profile and the runtime's validation matrix were measured with it.
TRITON_PREFILL_ATTN: tuple[str, int] = ("cudnn", 2048)


def available_memory_bytes() -> int | None:
    """Memory the kernel can give this process now (``MemAvailable`` of /proc/meminfo), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_host_memory(spec: ModelSpec, n_tenants: int, bytes_per_weight: int, experts: bool = True,
                      available: int | None = None) -> None:
    """Refuse, in one line, an engine on the CPU whose weights cannot fit the memory available (``python -m
    moesim.serve device=cpu`` with the default Mixtral-8x7B allocated until a traceback, or the OOM killer)."""
    avail = available_memory_bytes() if available is None else available
    need = (spec.all_expert_params * bool(experts) + n_tenants * spec.nonexpert_params) * bytes_per_weight
    if avail is not None and need > 0.8 * avail:
        raise UserError(f"model={spec.name} on device=cpu needs about {need / 1e9:.1f} GB for its weights "
                        f"({n_tenants} tenant(s)), more than the {avail / 1e9:.1f} GB of memory available; valid "
                        "on the CPU: model=tiny (the CPU path), else device=cuda")


def _normal(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, gen: torch.Generator,
            std: float = INIT_STD) -> torch.Tensor:
    t = torch.empty(shape, device=device, dtype=dtype)
    t.normal_(0.0, std, generator=gen)
    return t


@dataclass
class NonExpert:
    """One tenant's non-expert set (device tensors)."""

    embed: torch.Tensor  # (V, d)
    lm_head: torch.Tensor  # (V, d); the embedding itself when tied
    final_norm: torch.Tensor  # (d,)
    attn_norm: list[torch.Tensor]  # L × (d,)
    wqkv: list[torch.Tensor]  # L × (H·hd + 2·Hkv·hd, d)
    wo: list[torch.Tensor]  # L × (d, H·hd)
    ffn_norm: list[torch.Tensor]  # L × (d,)
    router: list[torch.Tensor | None]  # L × (E, d) on MoE layers, None on dense ones
    dense_in: list[torch.Tensor | None]  # L × (g·F, d) on dense layers
    dense_out: list[torch.Tensor | None]  # L × (d, F) on dense layers
    shared_in: list[torch.Tensor | None] = field(default_factory=list)  # L × (2·Fs, d) on MoE layers
    shared_out: list[torch.Tensor | None] = field(default_factory=list)  # L × (d, Fs) on MoE layers
    shared_gate: list[torch.Tensor | None] = field(default_factory=list)  # L × (1, d) (Qwen-MoE)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor once (the tied lm_head is not repeated)."""
        out = [self.embed, self.final_norm]
        if self.lm_head is not self.embed:
            out.append(self.lm_head)
        for group in (self.attn_norm, self.wqkv, self.wo, self.ffn_norm, self.router, self.dense_in,
                      self.dense_out, self.shared_in, self.shared_out, self.shared_gate):
            out += [t for t in group if t is not None]
        return out

    def nbytes(self) -> int:
        """Bytes of the set."""
        return sum(t.numel() * t.element_size() for t in self.tensors())


@dataclass
class AttnMeta:
    """Packed-batch metadata for one step's attention (built on the host, copied once)."""

    cu_q: torch.Tensor  # (S+1,) int32: cumulative new tokens per sequence
    cu_k: torch.Tensor  # (S+1,) int32: cumulative context + new tokens per sequence
    max_q: int
    max_k: int
    slots: torch.Tensor  # (N,) int64: row of each new token in the packed KV cache
    seqs: list[tuple[int, int]] = field(default_factory=list)  # (new, context) per sequence (fallback path)

    @property
    def kv_tokens(self) -> int:
        """Rows of the packed KV cache."""
        return sum(n + c for n, c in self.seqs)


@dataclass
class StepInputs:
    """One step's inputs: packed tokens ordered by tenant, positions, tenant slices, lm_head rows."""

    ids: torch.Tensor  # (N,) token ids
    pos: torch.Tensor  # (N,) positions (context + i)
    segments: list[tuple[int, int, int]]  # (tenant, start, end) into the packed tokens
    rows: list[tuple[int, torch.Tensor]]  # (tenant, indices of each sequence's last token)
    meta: AttnMeta


class KVCache:
    """Packed KV cache of one step for every layer: (rows, Hkv, hd) keys and values, random contents."""

    def __init__(self, spec: ModelSpec, rows: int, device: torch.device, dtype: torch.dtype,
                 gen: torch.Generator, n_layers: int | None = None) -> None:
        L = spec.n_layers if n_layers is None else n_layers
        shape = (max(rows, 1), spec.n_kv_heads, spec.head_dim)
        self.k = [_normal(shape, device, dtype, gen, 1.0) for _ in range(L)]
        self.v = [_normal(shape, device, dtype, gen, 1.0) for _ in range(L)]


class MoEEngine:
    """The model's weights on one device and the ops a serving step is made of.

    Args:
        spec: the architecture (real shapes).
        device: where weights live and ops run.
        n_tenants: non-expert sets to build (tenant 0 … n_tenants-1); experts are shared by all.
        seed: seed of the weights.
        moe_engine: ``grouped`` (grouped GEMM, no host sync), ``loop`` (one GEMM per active expert) or
            ``triton`` (the fused MoE kernel of ``moesim.kernels.fused_moe``: align, gate+up+SiLU·mul, down with
            the routing weight; no host sync; layers with host-resident slots run ``grouped``).
        fused_ops: route through one fused kernel per layer and do RoPE + the KV-cache write in one kernel
            (``moesim.kernels.fused_ops``), the output projection's residual add inside its GEMM; None: on
            with ``moe_engine="triton"``. On CPU the same calls run the torch reference ops.
        balanced_routing: add a fixed random logit table (std ``ROUTE_NOISE_STD``, one row per token slot)
            to the router's logits, so that tokens pick experts near-uniformly at random whatever the hidden
            states. With random weights the residual stream of a whole step collapses after a few layers and
            every token routes to the same few experts (about 25 of Qwen3's 128 per layer at 77 tokens),
            which a trained, load-balanced model does not do; the profile's uniform-routing composition
            assumes the balanced case.
        draw_experts: False leaves the experts undrawn (no expert slots) until a layout is applied
            (``moesim.executor.layout.apply_residency``): several engines on one device (MIG slices) never
            hold a full expert set each.
    """

    def __init__(self, spec: ModelSpec, device: torch.device, n_tenants: int = 1, seed: int = 0,
                 moe_engine: str = "grouped", dtype: torch.dtype = torch.bfloat16,
                 balanced_routing: bool = False, draw_experts: bool = True,
                 fused_ops: bool | None = None) -> None:
        if device.type == "cpu":
            check_host_memory(spec, n_tenants, torch.finfo(dtype).bits // 8, draw_experts)
        if moe_engine not in MOE_ENGINES:
            raise UserError(f"moe_engine={moe_engine!r}: valid: {', '.join(MOE_ENGINES)}")
        if moe_engine == "triton" and device.type == "cuda":
            from moesim.kernels.fused_moe import HAVE_TRITON

            if not HAVE_TRITON:
                raise UserError("moe_kernel=triton needs the triton package on the GPU machine; use grouped")
        self.fused_ops = (moe_engine == "triton") if fused_ops is None else fused_ops
        # triton engine: calls with more token × top-k assignments than this run the grouped GEMM (None: never)
        self.triton_max_assign: int | None = TRITON_MAX_ASSIGN
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.swiglu = spec.expert_matrices == 3
        self.moe_engine = moe_engine
        self.route_noise: torch.Tensor | None = None
        if balanced_routing:
            self.route_noise = _normal((ROUTE_NOISE_ROWS, spec.n_experts), device, torch.float32, self.gen,
                                       ROUTE_NOISE_STD)
        self.attn_backend = "flash" if device.type == "cuda" else "sdpa"
        # noise-table rows between consecutive layers (0: every layer routes alike; see ROUTE_LAYER_STRIDE)
        self.route_layer_stride = 0
        # one causal prompt with no cached context and at least ``cudnn_min_tokens`` tokens (the whole step):
        # ``flash`` (the varlen FlashAttention call; the grouped engine's) or ``cudnn`` (SDPA's cuDNN backend; the
        # fused engine's, TRITON_PREFILL_ATTN); other steps always run ``flash``. CUDA only.
        self.prefill_attn, self.cudnn_min_tokens = TRITON_PREFILL_ATTN if moe_engine == "triton" else ("flash", 2048)
        s = spec
        self.q_dim, self.kv_dim = s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim
        self.scale = 1.0 / math.sqrt(s.head_dim)
        g = 2 if self.swiglu else 1
        # experts of each MoE layer, stacked: up (E, g·F, d) and down (E, d, F)
        self.w_in: list[torch.Tensor | None] = []
        self.w_out: list[torch.Tensor | None] = []
        for layer in range(s.n_layers):
            if self.is_moe(layer) and draw_experts:
                self.w_in.append(_normal((s.n_experts, g * s.d_ff, s.d_model), device, dtype, self.gen))
                self.w_out.append(_normal((s.n_experts, s.d_model, s.d_ff), device, dtype, self.gen))
            else:
                self.w_in.append(None)
                self.w_out.append(None)
        self.tenants = [self._nonexpert() for _ in range(n_tenants)]
        # consolidated layout (``apply_plan``): per MoE layer, GPU slots then host slots; per tenant a map
        # from its expert index to the slot of the copy it resolves to
        self.n_gpu_slots: list[int] = [s.n_experts if self.is_moe(i) and draw_experts else 0
                                       for i in range(s.n_layers)]
        self.host_in: list[list[torch.Tensor]] = [[] for _ in range(s.n_layers)]
        self.host_out: list[list[torch.Tensor]] = [[] for _ in range(s.n_layers)]
        self.remap: list[list[torch.Tensor | None]] | None = None
        self.plan_groups: list[dict] | None = None
        # runtime hooks (moesim.serve): ``fetcher`` takes over host-expert fetches (issue before the resident
        # GEMM, run after it); ``layer_hook(i)`` runs before layer i (−1: before the embedding, n_layers:
        # before the lm_head), e.g. to wait for a non-expert set streamed layer by layer. None: unchanged.
        self.fetcher = None
        self.layer_hook = None
        half = s.head_dim // 2
        max_pos = 65536
        inv = 1.0 / (10000.0 ** (torch.arange(half, device=device, dtype=torch.float32) / half))
        ang = torch.arange(max_pos, device=device, dtype=torch.float32)[:, None] * inv[None, :]
        self.cos, self.sin = ang.cos().to(dtype), ang.sin().to(dtype)  # (max_pos, hd/2)

    # ---- construction ---------------------------------------------------------------------------
    def is_moe(self, layer: int) -> bool:
        """Layer ``layer`` of the decoder has experts (Switch: every other layer; DeepSeek: not the first)."""
        return self.spec.is_moe_layer(layer)

    def _nonexpert(self) -> NonExpert:
        s, dev, dt, gen = self.spec, self.device, self.dtype, self.gen
        g = 2 if self.swiglu else 1
        embed = _normal((s.vocab, s.d_model), dev, dt, gen)
        lm = embed if s.tied_embeddings else _normal((s.vocab, s.d_model), dev, dt, gen)
        ones = lambda: 1.0 + _normal((s.d_model,), dev, dt, gen, 0.01)  # noqa: E731
        L = s.n_layers
        Fd, Fs = s.dense_d_ff or s.d_ff, s.shared_d_ff
        moe = [self.is_moe(i) for i in range(L)]
        return NonExpert(
            embed=embed, lm_head=lm, final_norm=ones(),
            attn_norm=[ones() for _ in range(L)],
            wqkv=[_normal((self.q_dim + 2 * self.kv_dim, s.d_model), dev, dt, gen) for _ in range(L)],
            wo=[_normal((s.d_model, self.q_dim), dev, dt, gen) for _ in range(L)],
            ffn_norm=[ones() for _ in range(L)],
            router=[_normal((s.n_experts, s.d_model), dev, dt, gen) if self.is_moe(i) else None
                    for i in range(L)],
            dense_in=[None if moe[i] else _normal((g * Fd, s.d_model), dev, dt, gen) for i in range(L)],
            dense_out=[None if moe[i] else _normal((s.d_model, Fd), dev, dt, gen) for i in range(L)],
            shared_in=[_normal((2 * Fs, s.d_model), dev, dt, gen) if moe[i] and Fs else None for i in range(L)],
            shared_out=[_normal((s.d_model, Fs), dev, dt, gen) if moe[i] and Fs else None for i in range(L)],
            shared_gate=[_normal((1, s.d_model), dev, dt, gen) if moe[i] and s.shared_gate else None
                         for i in range(L)],
        )

    def random_hidden(self, n_tokens: int) -> torch.Tensor:
        """Random activations (N, d) with unit RMS."""
        return _normal((n_tokens, self.spec.d_model), self.device, self.dtype, self.gen, 1.0)

    # ---- ops --------------------------------------------------------------------------------------
    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # x (N, heads, hd); rotate-half RoPE at positions pos (N,)
        cos, sin = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def attn_pre(self, x: torch.Tensor, tenant: int, layer: int, pos: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RMSNorm, fused QKV projection and RoPE: x (T, d) → q (T, H, hd), k, v (T, Hkv, hd)."""
        w, s = self.tenants[tenant], self.spec
        h = F.rms_norm(x, (s.d_model,), w.attn_norm[layer], eps=1e-5)
        qkv = h @ w.wqkv[layer].T  # (T, q + 2kv)
        T = x.shape[0]
        q = qkv[:, : self.q_dim].view(T, s.n_heads, s.head_dim)
        k = qkv[:, self.q_dim : self.q_dim + self.kv_dim].view(T, s.n_kv_heads, s.head_dim)
        v = qkv[:, self.q_dim + self.kv_dim :].view(T, s.n_kv_heads, s.head_dim)
        return self._rope(q, pos), self._rope(k, pos), v

    def attn_post(self, x: torch.Tensor, o: torch.Tensor, tenant: int, layer: int) -> None:
        """Output projection and residual, in place: x (T, d) += o (T, H·hd) @ Woᵀ."""
        x += o @ self.tenants[tenant].wo[layer].T

    def router(self, x: torch.Tensor, tenant: int, layer: int, row0: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RMSNorm and top-k routing: x (T, d) → normed h (T, d), expert ids (T, k), weights (T, k).

        ``row0``: packed position of x's first token in the step; with balanced routing, token i takes row
        ``row0 + i`` of the noise table, so tokens of different tenants route independently (before
        2026-11-30 every tenant's slice started at row 0: tenants' tokens at the same slot picked the same
        experts, and multi-tenant held-out steps touched fewer experts than a load-balanced model would).
        """
        w, s = self.tenants[tenant], self.spec
        row0 = row0 + layer * self.route_layer_stride
        if self.fused_ops:
            from moesim.kernels.fused_ops import router

            h, top_i, top_w = router(x, w.ffn_norm[layer], w.router[layer], s.top_k, self.route_noise, row0=row0)
            if self.remap is not None:
                top_i = self.remap[tenant][layer][top_i]
            return h, top_i, top_w
        h = F.rms_norm(x, (s.d_model,), w.ffn_norm[layer], eps=1e-5)
        logits = (h @ w.router[layer].T).float()  # (T, E)
        if self.route_noise is not None:
            T = logits.shape[0]
            R = self.route_noise.shape[0]
            a = row0 % R
            if a + T <= R:
                noise = self.route_noise[a : a + T]
            else:  # wrap around the table
                noise = self.route_noise.roll(-a, 0).repeat(-(-T // R), 1)[:T]
            logits = logits + noise
        probs = torch.softmax(logits, dim=-1)  # (T, E)
        top_w, top_i = torch.topk(probs, s.top_k, dim=-1)
        if s.top_k > 1:
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        if self.remap is not None:  # consolidated: expert index → slot of the copy this tenant uses
            top_i = self.remap[tenant][layer][top_i]
        return h, top_i, top_w.to(self.dtype)

    def shared(self, h: torch.Tensor, tenant: int, layer: int) -> torch.Tensor | None:
        """The tenant's shared expert(s) of MoE layer ``layer`` on the normed h (T, d), with the sigmoid gate
        where the model has one; None for models without shared experts."""
        w = self.tenants[tenant]
        if not w.shared_in or w.shared_in[layer] is None:
            return None
        a = h @ w.shared_in[layer].T
        gate, up = a.chunk(2, dim=-1)
        y = (F.silu(gate) * up) @ w.shared_out[layer].T
        if w.shared_gate[layer] is not None:
            y = y * torch.sigmoid(h @ w.shared_gate[layer].T)
        return y

    def _act(self, a: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            gate, up = a.chunk(2, dim=-1)
            return F.silu(gate) * up
        return F.relu(a)

    def ffn(self, x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
        """One expert (or dense) FFN with plain GEMMs: x (T, d) → (T, d)."""
        return self._act(x @ w_in.T) @ w_out.T

    def expert_one(self, x: torch.Tensor, layer: int, expert: int = 0) -> torch.Tensor:
        """One GPU-resident expert (slot) of MoE layer ``layer`` on x (T, d)."""
        e = expert % max(1, self.n_gpu_slots[layer])
        return self.ffn(x, self.w_in[layer][e], self.w_out[layer][e])

    def moe(self, h: torch.Tensor, top_i: torch.Tensor, top_w: torch.Tensor, layer: int,
            engine: str | None = None) -> torch.Tensor:
        """Experts of one MoE layer for h (N, d) routed by top_i/top_w (N, k) → (N, d)."""
        eng = engine or self.moe_engine
        if eng == "loop":
            return self._moe_loop(h, top_i, top_w, layer)
        if eng == "triton" and self._triton_ok(layer, top_i):
            from moesim.kernels.fused_moe import fused_moe

            return fused_moe(h, self.w_in[layer], self.w_out[layer], top_i, top_w, self.swiglu)
        return self._moe_grouped(h, top_i, top_w, layer)

    def _triton_ok(self, layer: int, top_i: torch.Tensor) -> bool:
        """The fused kernel serves this layer call: experts all on the GPU, and at most ``triton_max_assign``
        token × top-k assignments (above it the grouped GEMM, where the benchmark measured it faster)."""
        cap = self.triton_max_assign
        return (not self.host_in[layer] and bool(self.n_gpu_slots[layer])
                and (cap is None or top_i.numel() <= cap))

    def _moe_grouped(self, h: torch.Tensor, top_i: torch.Tensor, top_w: torch.Tensor, layer: int
                     ) -> torch.Tensor:
        N, d = h.shape
        k = top_i.shape[1]
        n_gpu, n_host = self.n_gpu_slots[layer], len(self.host_in[layer])
        E = n_gpu + n_host  # slots: GPU copies first, then host copies (fetched per use)
        flat = top_i.reshape(-1)  # (N·k,) expert of each assignment
        order = torch.argsort(flat, stable=True)  # assignments sorted by expert
        e_sorted = flat[order]
        # per-expert bounds by binary search (bincount would sync with the host: no CUDA-graph capture)
        bounds = torch.searchsorted(e_sorted, torch.arange(E + 1, device=h.device, dtype=e_sorted.dtype))
        start, counts = bounds[:-1], bounds[1:] - bounds[:-1]  # (E,)
        padded = (counts + ALIGN_ROWS - 1) // ALIGN_ROWS * ALIGN_ROWS
        ends_p = torch.cumsum(padded, 0)
        rank = torch.arange(N * k, device=h.device) - start[e_sorted]
        dest = (ends_p - padded)[e_sorted] + rank  # (N·k,) row of each sorted assignment in the buffer
        rows = N * k + E * (ALIGN_ROWS - 1)  # static bound: no host sync
        buf = h.new_zeros((rows, d))
        src_tok = order // k
        buf[dest] = h[src_tok]
        fetcher = self.fetcher if n_host else None
        pending = fetcher.issue(self, layer, bounds[n_gpu:]) if fetcher is not None else None
        if n_gpu:
            offs = ends_p[:n_gpu].to(torch.int32)  # host slots' rows lie past the last offset: not computed
            a = torch._grouped_mm(buf, self.w_in[layer].transpose(-2, -1), offs=offs)  # (rows, g·F)
            y = torch._grouped_mm(self._act(a), self.w_out[layer].transpose(-2, -1), offs=offs)  # (rows, d)
        else:
            y = buf.new_zeros((rows, d))
        if fetcher is not None:
            fetcher.run(self, layer, buf, y, dest, pending)
        elif n_host:
            self._host_experts(layer, buf, y, dest, bounds[n_gpu:])
        contrib = y[dest] * top_w.reshape(-1)[order][:, None]
        return torch.zeros_like(h).index_add_(0, src_tok, contrib)

    def _moe_loop(self, h: torch.Tensor, top_i: torch.Tensor, top_w: torch.Tensor, layer: int
                  ) -> torch.Tensor:
        _N, _ = h.shape
        k = top_i.shape[1]
        flat = top_i.reshape(-1)
        order = torch.argsort(flat, stable=True)
        n_slots = self.n_gpu_slots[layer] + len(self.host_in[layer])
        counts = torch.bincount(flat, minlength=n_slots).tolist()  # host sync
        out = torch.zeros_like(h)
        w_flat = top_w.reshape(-1)
        s = 0
        for e, c in enumerate(counts):
            if c == 0:
                continue
            idx = order[s : s + c]
            tok = idx // k
            w_in, w_out = self._slot_weights(layer, e)
            y = self.ffn(h[tok], w_in, w_out) * w_flat[idx][:, None]
            out.index_add_(0, tok, y)
            s += c
        return out

    def _host_experts(self, layer: int, buf: torch.Tensor, y: torch.Tensor, dest: torch.Tensor,
                      bounds: torch.Tensor) -> None:
        """Host copies touched in this layer: copy each into the placeholder, run it, write its rows of y.

        Synchronous, as the paper's orchestrator: one placeholder, no cache, no prefetch (a host sync).
        """
        edges = bounds.tolist()  # sorted-assignment range of each host slot
        for j in range(len(edges) - 1):
            a, b = edges[j], edges[j + 1]
            if a == b:
                continue
            self.ph_in.copy_(self.host_in[layer][j], non_blocking=True)
            self.ph_out.copy_(self.host_out[layer][j], non_blocking=True)
            rows = dest[a:b]
            y[rows] = self.ffn(buf[rows], self.ph_in, self.ph_out)

    def _slot_weights(self, layer: int, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        n_gpu = self.n_gpu_slots[layer]
        if slot < n_gpu:
            return self.w_in[layer][slot], self.w_out[layer][slot]
        self.ph_in.copy_(self.host_in[layer][slot - n_gpu], non_blocking=True)
        self.ph_out.copy_(self.host_out[layer][slot - n_gpu], non_blocking=True)
        return self.ph_in, self.ph_out

    # ---- consolidated layout ----------------------------------------------------------------------
    def apply_plan(self, plan: Plan) -> None:
        """Replace the shared expert set by a consolidation plan's layout.

        Per MoE layer the plan's GPU copies become device slots (one grouped GEMM over them), its host
        copies live in pinned host memory and are fetched per use; each tenant (plan variant) routes its
        expert indices to the slots of the copies it resolves to. Needs ``len(tenants) ≥ plan.n_variants``.
        """
        s = self.spec
        moe_layers = [i for i in range(s.n_layers) if self.is_moe(i)]
        if plan.n_layers != len(moe_layers) or plan.n_experts != s.n_experts or plan.expert_bytes != s.expert_bytes:
            raise UserError(
                f"plan for {plan.model!r} ({plan.n_layers} MoE layers × {plan.n_experts} experts of "
                f"{plan.expert_bytes} bytes) does not fit {s.name} ({len(moe_layers)} decoder MoE layers × "
                f"{s.n_experts} experts of {s.expert_bytes} bytes); encoder-decoder plans are not run by this "
                "engine")
        if plan.n_variants > len(self.tenants):
            raise UserError(f"plan has {plan.n_variants} variants but the engine built {len(self.tenants)} "
                            "non-expert sets; set tenants ≥ the plan's variants")
        g = 2 if self.swiglu else 1
        pin = self.device.type == "cuda"
        dev, dt, gen = self.device, self.dtype, self.gen
        remap: list[list[torch.Tensor | None]] = [[None] * s.n_layers for _ in range(plan.n_variants)]
        for lm, layer in enumerate(moe_layers):
            self.w_in[layer] = self.w_out[layer] = None  # free this layer's shared set first
            gpu = [c for c in plan.copies if c.layer == lm and c.on_gpu]
            host = [c for c in plan.copies if c.layer == lm and not c.on_gpu]
            slot = {c.id: i for i, c in enumerate(gpu)} | {c.id: len(gpu) + j for j, c in enumerate(host)}
            if gpu:
                self.w_in[layer] = _normal((len(gpu), g * s.d_ff, s.d_model), dev, dt, gen)
                self.w_out[layer] = _normal((len(gpu), s.d_model, s.d_ff), dev, dt, gen)
            self.n_gpu_slots[layer] = len(gpu)
            self.host_in[layer], self.host_out[layer] = [], []
            for _ in host:  # drawn on the device (fast), kept in (pinned) host memory
                for dst, shape in ((self.host_in[layer], (g * s.d_ff, s.d_model)),
                                   (self.host_out[layer], (s.d_model, s.d_ff))):
                    w = _normal(shape, dev, dt, gen).cpu()
                    dst.append(w.pin_memory() if pin else w)
            for t in range(plan.n_variants):
                remap[t][layer] = torch.tensor([slot[plan.assign[t][lm][e]] for e in range(s.n_experts)],
                                               device=dev)
        self.ph_in = torch.empty((g * s.d_ff, s.d_model), device=dev, dtype=dt)
        self.ph_out = torch.empty((s.d_model, s.d_ff), device=dev, dtype=dt)
        self.remap = remap
        self.plan_groups = [{"tenants": sorted(gr.tenants), "positions": gr.positions, "on_gpu": gr.on_gpu}
                            for gr in plan.expert_groups()]

    def dense(self, x: torch.Tensor, tenant: int, layer: int) -> torch.Tensor:
        """Dense FFN of a non-MoE layer (tenant's own weights), with its RMSNorm: x (T, d) → (T, d)."""
        w = self.tenants[tenant]
        h = F.rms_norm(x, (self.spec.d_model,), w.ffn_norm[layer], eps=1e-5)
        return self.ffn(h, w.dense_in[layer], w.dense_out[layer])

    def lm_head(self, x_rows: torch.Tensor, tenant: int) -> torch.Tensor:
        """Final RMSNorm, logits and greedy pick: x_rows (r, d) → next token ids (r,)."""
        w = self.tenants[tenant]
        h = F.rms_norm(x_rows, (self.spec.d_model,), w.final_norm, eps=1e-5)
        return torch.argmax(h @ w.lm_head.T, dim=-1)

    def embed(self, ids: torch.Tensor, tenant: int) -> torch.Tensor:
        """Token ids (T,) → activations (T, d)."""
        return F.embedding(ids, self.tenants[tenant].embed)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttnMeta,
                  cache_k: torch.Tensor, cache_v: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """Write new k/v into the packed cache, attend: q (N, H, hd) → (N, H·hd)."""
        cache_k.index_copy_(0, meta.slots, k)
        cache_v.index_copy_(0, meta.slots, v)
        N = q.shape[0]
        if backend is None and self._cudnn_prefill(meta):
            return self._attention_cudnn(q, cache_k, cache_v)
        if (backend or self.attn_backend) == "flash":
            out = torch.ops.aten._flash_attention_forward(
                q, cache_k, cache_v, meta.cu_q, meta.cu_k, meta.max_q, meta.max_k, 0.0, True, False,
                scale=self.scale,
            )[0]
            return out.reshape(N, self.q_dim)
        return self._attention_sdpa(q, meta, cache_k, cache_v).reshape(N, self.q_dim)

    def _attention_fused(self, x: torch.Tensor, si: StepInputs, cache: KVCache, layer: int,
                         multi: bool) -> torch.Tensor:
        """RMSNorm + QKV GEMM per tenant, then one kernel for RoPE and the cache write, then attention."""
        from moesim.kernels.fused_ops import rms_norm, rope_kv

        s = self.spec
        parts = []
        for t, a, b in si.segments:
            w = self.tenants[t]
            parts.append(rms_norm(x[a:b], w.attn_norm[layer], 1e-5) @ w.wqkv[layer].T)
        qkv = torch.cat(parts) if multi else parts[0]  # (N, q + 2kv)
        ck, cv = cache.k[layer], cache.v[layer]
        q = rope_kv(qkv, si.pos, self.cos, self.sin, si.meta.slots, ck, cv, s.n_heads, s.n_kv_heads, s.head_dim)
        return self.attend(q, si.meta, ck, cv)

    def attend(self, q: torch.Tensor, meta: AttnMeta, cache_k: torch.Tensor, cache_v: torch.Tensor) -> torch.Tensor:
        """Attention over a cache that already holds the step's keys/values: q (N, H, hd) → (N, H·hd)."""
        N = q.shape[0]
        if self._cudnn_prefill(meta):
            return self._attention_cudnn(q, cache_k, cache_v)
        if self.attn_backend == "flash":
            out = torch.ops.aten._flash_attention_forward(
                q, cache_k, cache_v, meta.cu_q, meta.cu_k, meta.max_q, meta.max_k, 0.0, True, False,
                scale=self.scale)[0]
            return out.reshape(N, self.q_dim)
        return self._attention_sdpa(q, meta, cache_k, cache_v).reshape(N, self.q_dim)

    def _cudnn_prefill(self, meta: AttnMeta) -> bool:
        """This step's attention runs SDPA's cuDNN backend (``prefill_attn``; one long prompt, no context)."""
        return (self.prefill_attn == "cudnn" and self.device.type == "cuda" and len(meta.seqs) == 1
                and meta.seqs[0][1] == 0 and meta.seqs[0][0] >= self.cudnn_min_tokens)

    def _attention_cudnn(self, q: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor) -> torch.Tensor:
        """One causal prompt at rows 0…N−1 of the cache through SDPA's cuDNN backend: q (N, H, hd) → (N, H·hd).

        Keys/values are repeated to the query heads (GQA) first: 2·N·H·hd elements, a few µs at 4k tokens.
        """
        from torch.nn.attention import SDPBackend, sdpa_kernel

        N, H, _ = q.shape
        rep = H // self.spec.n_kv_heads
        k = cache_k[:N].repeat_interleave(rep, dim=1).transpose(0, 1)[None]  # (1, H, N, hd)
        v = cache_v[:N].repeat_interleave(rep, dim=1).transpose(0, 1)[None]
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k, v, is_causal=True, scale=self.scale)
        return o[0].transpose(0, 1).reshape(N, self.q_dim)

    def _attention_sdpa(self, q: torch.Tensor, meta: AttnMeta, cache_k: torch.Tensor,
                        cache_v: torch.Tensor) -> torch.Tensor:
        outs = []
        sq = sk = 0
        for n, c in meta.seqs:
            qi = q[sq : sq + n].transpose(0, 1)[None]  # (1, H, n, hd)
            ki = cache_k[sk : sk + c + n].transpose(0, 1)[None]  # (1, Hkv, c+n, hd)
            vi = cache_v[sk : sk + c + n].transpose(0, 1)[None]
            if n == 1:
                o = F.scaled_dot_product_attention(qi, ki, vi, scale=self.scale, enable_gqa=True)
            elif c == 0:
                o = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=self.scale,
                                                   enable_gqa=True)
            else:  # bottom-right causal: query i sees keys 0 … c+i
                mask = (torch.arange(c + n, device=q.device)[None, :]
                        <= (c + torch.arange(n, device=q.device))[:, None])
                o = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=self.scale,
                                                   enable_gqa=True)
            outs.append(o[0].transpose(0, 1))  # (n, H, hd)
            sq += n
            sk += c + n
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @staticmethod
    def concat_tenants(parts: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        """The multi-tenant glue of a step: each tenant's (q, k, v) or (h, top_i, top_w) joined along tokens,
        one ``torch.cat`` per tensor (timed as the profile's ``concat_qkv`` and ``concat_route`` ops)."""
        return tuple(torch.cat(p) for p in zip(*parts, strict=True))

    # ---- whole steps ------------------------------------------------------------------------------
    def make_meta(self, seqs: list[tuple[int, int]]) -> AttnMeta:
        """Attention metadata for sequences given as (new tokens, context) in packed order."""
        cu_q, cu_k, slots = [0], [0], []
        for n, c in seqs:
            base = cu_k[-1]
            slots += range(base + c, base + c + n)
            cu_q.append(cu_q[-1] + n)
            cu_k.append(base + c + n)
        dev = self.device
        return AttnMeta(
            cu_q=torch.tensor(cu_q, dtype=torch.int32, device=dev),
            cu_k=torch.tensor(cu_k, dtype=torch.int32, device=dev),
            max_q=max(n for n, _ in seqs), max_k=max(n + c for n, c in seqs),
            slots=torch.tensor(slots, dtype=torch.int64, device=dev), seqs=list(seqs),
        )

    def make_inputs(self, batch: list[tuple[int, int, int]]) -> StepInputs:
        """Inputs for sequences given as (tenant, new tokens, context); packed in tenant order (stable)."""
        order = sorted(range(len(batch)), key=lambda i: batch[i][0])
        seqs = [batch[i] for i in order]
        ids, pos, segments, rows_by_t = [], [], [], {}
        gen = torch.Generator().manual_seed(len(batch))
        s = 0
        for t, n, c in seqs:
            ids.append(torch.randint(0, self.spec.vocab, (n,), generator=gen))
            pos.append(torch.arange(c, c + n))
            if segments and segments[-1][0] == t:
                segments[-1] = (t, segments[-1][1], s + n)
            else:
                segments.append((t, s, s + n))
            rows_by_t.setdefault(t, []).append(s + n - 1)
            s += n
        dev = self.device
        return StepInputs(
            ids=torch.cat(ids).to(dev), pos=torch.cat(pos).to(dev), segments=segments,
            rows=[(t, torch.tensor(r, device=dev)) for t, r in rows_by_t.items()],
            meta=self.make_meta([(n, c) for _, n, c in seqs]),
        )

    def step(self, si: StepInputs, cache: KVCache) -> torch.Tensor:
        """One forward step of the packed batch through every layer; returns the next token ids."""
        s = self.spec
        N = si.ids.shape[0]
        hook = self.layer_hook
        if hook is not None:
            hook(-1)
        x = torch.empty((N, s.d_model), device=self.device, dtype=self.dtype)  # (N, d)
        for t, a, b in si.segments:
            x[a:b] = self.embed(si.ids[a:b], t)
        multi = len(si.segments) > 1
        for layer in range(s.n_layers):
            if hook is not None:
                hook(layer)
            if self.fused_ops:
                o = self._attention_fused(x, si, cache, layer, multi)
                for t, a, b in si.segments:  # x += o Woᵀ inside the GEMM
                    x[a:b].addmm_(o[a:b], self.tenants[t].wo[layer].T)
            else:
                parts = [self.attn_pre(x[a:b], t, layer, si.pos[a:b]) for t, a, b in si.segments]
                q, k, v = self.concat_tenants(parts) if multi else parts[0]
                o = self.attention(q, k, v, si.meta, cache.k[layer], cache.v[layer])  # (N, H·hd)
                for t, a, b in si.segments:
                    self.attn_post(x[a:b], o[a:b], t, layer)
            if self.is_moe(layer):
                routed = [self.router(x[a:b], t, layer, row0=a) for t, a, b in si.segments]
                h, top_i, top_w = self.concat_tenants(routed) if multi else routed[0]
                for t, a, b in si.segments:  # shared experts: the tenant's own, every token
                    y = self.shared(h[a:b], t, layer)
                    if y is not None:
                        x[a:b] += y
                if self.fused_ops and self.moe_engine == "triton" and self._triton_ok(layer, top_i):
                    from moesim.kernels.fused_moe import fused_moe

                    fused_moe(h, self.w_in[layer], self.w_out[layer], top_i, top_w, self.swiglu, residual=x)
                else:
                    x += self.moe(h, top_i, top_w, layer)
            else:
                for t, a, b in si.segments:
                    x[a:b] += self.dense(x[a:b], t, layer)
        if hook is not None:
            hook(s.n_layers)
        nxt = [self.lm_head(x[r], t) for t, r in si.rows]
        return torch.cat(nxt) if len(nxt) > 1 else nxt[0]
