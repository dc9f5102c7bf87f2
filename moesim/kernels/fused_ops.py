"""Fused small-token ops of the non-expert path in Triton: the router, and RoPE with the KV-cache write.

At decode sizes these ops are launch-bound: the router (RMSNorm, a (T, E) GEMM, float, softmax, top-k, renorm,
cast) is about 8 kernels and RoPE + the cache writes about 16 (gathers of cos/sin, halves, products, concat,
two ``index_copy_``). Each becomes one kernel here:

* ``router(x, norm_w, w_router, top_k, noise, row0=0)``: per token one program: RMSNorm (fp32 statistics), the
  normed row written as bf16 (the experts' input), E logits in fp32, the balanced-routing noise row ``(row0 + t) mod R``
  added where given, softmax, top-k by repeated arg-max (lowest index on ties, as ``torch.topk`` in practice),
  renormalised over the k picks when k > 1. Returns (h (T, d), ids (T, k) int64, weights (T, k) in h's dtype).
* ``rms_norm(x, w)``: per token one program (fp32 statistics), as ``F.rms_norm``.
* ``rope_kv(qkv, pos, cos, sin, slots, cache_k, cache_v, H, Hkv, hd)``: per token one program: rotate-half
  RoPE of q and k at ``pos`` (cos/sin tables (P, hd/2)), q written to a new (T, H, hd) tensor, k and v written
  into the cache rows ``slots``. Returns q.

Both have torch references (``router_torch``, ``rope_kv_torch``: the engine's own ops) used on CPU and by the
tests; the Triton versions run on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moesim.kernels.fused_moe import HAVE_TRITON, _next_pow2, use_triton

if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["ROW0"])
    def _router_kernel(x_ptr, nw_ptr, wr_ptr, noise_ptr, h_ptr, ids_ptr, tw_ptr,
                       D, E, R, ROW0, eps, stride_x, stride_h,
                       BD: tl.constexpr, EP: tl.constexpr, TOPK: tl.constexpr, HAS_NOISE: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        d_ar = tl.arange(0, BD)
        e_ar = tl.arange(0, EP)
        emask = e_ar < E
        ss = tl.zeros([BD], dtype=tl.float32)
        for d0 in range(0, D, BD):
            x = tl.load(x_ptr + t * stride_x + d0 + d_ar, mask=d0 + d_ar < D, other=0.0).to(tl.float32)
            ss += x * x
        rstd = 1.0 / tl.sqrt(tl.sum(ss, axis=0) / D + eps)
        logits = tl.zeros([EP], dtype=tl.float32)
        for d0 in range(0, D, BD):
            dm = d0 + d_ar < D
            x = tl.load(x_ptr + t * stride_x + d0 + d_ar, mask=dm, other=0.0).to(tl.float32)
            w = tl.load(nw_ptr + d0 + d_ar, mask=dm, other=0.0).to(tl.float32)
            h = (x * rstd * w).to(h_ptr.dtype.element_ty)
            tl.store(h_ptr + t * stride_h + d0 + d_ar, h, mask=dm)
            wr = tl.load(wr_ptr + e_ar[:, None] * D + d0 + d_ar[None, :], mask=emask[:, None] & dm[None, :],
                         other=0.0).to(tl.float32)
            logits += tl.sum(wr * h.to(tl.float32)[None, :], axis=1)
        if HAS_NOISE:
            logits += tl.load(noise_ptr + ((t + ROW0) % R) * E + e_ar, mask=emask, other=0.0)
        logits = tl.where(emask, logits, float("-inf"))
        p = tl.exp(logits - tl.max(logits, axis=0))
        p = p / tl.sum(p, axis=0)
        p = tl.where(emask, p, -1.0)
        tot = 0.0
        pk = p
        for _j in tl.static_range(TOPK):  # pass 1: the sum of the k largest (for the renormalisation)
            m = tl.max(pk, axis=0)
            i = tl.min(tl.where(pk == m, e_ar, EP), axis=0)
            tot += m
            pk = tl.where(e_ar == i, -1.0, pk)
        for j in tl.static_range(TOPK):  # pass 2: the same picks, written in order
            m = tl.max(p, axis=0)
            i = tl.min(tl.where(p == m, e_ar, EP), axis=0)
            tl.store(ids_ptr + t * TOPK + j, i.to(tl.int64))
            if TOPK > 1:
                wj = m / tot
            else:
                wj = m
            tl.store(tw_ptr + t * TOPK + j, wj.to(tw_ptr.dtype.element_ty))
            p = tl.where(e_ar == i, -1.0, p)

    @triton.jit
    def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, D, eps, stride_x, stride_y, BD: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        d_ar = tl.arange(0, BD)
        ss = tl.zeros([BD], dtype=tl.float32)
        for d0 in range(0, D, BD):
            x = tl.load(x_ptr + t * stride_x + d0 + d_ar, mask=d0 + d_ar < D, other=0.0).to(tl.float32)
            ss += x * x
        rstd = 1.0 / tl.sqrt(tl.sum(ss, axis=0) / D + eps)
        for d0 in range(0, D, BD):
            dm = d0 + d_ar < D
            x = tl.load(x_ptr + t * stride_x + d0 + d_ar, mask=dm, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + d0 + d_ar, mask=dm, other=0.0).to(tl.float32)
            tl.store(y_ptr + t * stride_y + d0 + d_ar, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=dm)

    @triton.jit
    def _rope_kv_kernel(qkv_ptr, pos_ptr, cos_ptr, sin_ptr, slot_ptr, q_ptr, ck_ptr, cv_ptr,
                        stride_qkv, H, HKV,
                        HD: tl.constexpr, HALF: tl.constexpr, HP: tl.constexpr, HKP: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        c_ar = tl.arange(0, HALF)
        pos = tl.load(pos_ptr + t).to(tl.int64)
        cos = tl.load(cos_ptr + pos * HALF + c_ar).to(tl.float32)[None, :]
        sin = tl.load(sin_ptr + pos * HALF + c_ar).to(tl.float32)[None, :]
        slot = tl.load(slot_ptr + t).to(tl.int64)
        base = qkv_ptr + t * stride_qkv
        # q: heads × hd at columns [0, H·hd)
        hq = tl.arange(0, HP)
        qm = (hq < H)[:, None]
        x1 = tl.load(base + hq[:, None] * HD + c_ar[None, :], mask=qm, other=0.0).to(tl.float32)
        x2 = tl.load(base + hq[:, None] * HD + HALF + c_ar[None, :], mask=qm, other=0.0).to(tl.float32)
        qo = q_ptr + t * H * HD + hq[:, None] * HD + c_ar[None, :]
        tl.store(qo, (x1 * cos - x2 * sin).to(q_ptr.dtype.element_ty), mask=qm)
        tl.store(qo + HALF, (x2 * cos + x1 * sin).to(q_ptr.dtype.element_ty), mask=qm)
        # k at [H·hd, (H+Hkv)·hd), v after it
        hk = tl.arange(0, HKP)
        km = (hk < HKV)[:, None]
        kb = base + H * HD + hk[:, None] * HD + c_ar[None, :]
        k1 = tl.load(kb, mask=km, other=0.0).to(tl.float32)
        k2 = tl.load(kb + HALF, mask=km, other=0.0).to(tl.float32)
        ko = ck_ptr + slot * HKV * HD + hk[:, None] * HD + c_ar[None, :]
        tl.store(ko, (k1 * cos - k2 * sin).to(ck_ptr.dtype.element_ty), mask=km)
        tl.store(ko + HALF, (k2 * cos + k1 * sin).to(ck_ptr.dtype.element_ty), mask=km)
        vb = base + (H + HKV) * HD + hk[:, None] * HD + c_ar[None, :]
        vo = cv_ptr + slot * HKV * HD + hk[:, None] * HD + c_ar[None, :]
        tl.store(vo, tl.load(vb, mask=km, other=0.0), mask=km)
        tl.store(vo + HALF, tl.load(vb + HALF, mask=km, other=0.0), mask=km)


# ---- router -------------------------------------------------------------------------------------------
def router_torch(x: torch.Tensor, norm_w: torch.Tensor, w_router: torch.Tensor, top_k: int,
                 noise: torch.Tensor | None = None, eps: float = 1e-5, row0: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The engine's router in torch ops (reference); token i adds noise row (row0 + i) mod R."""
    h = F.rms_norm(x, (x.shape[1],), norm_w, eps=eps)
    logits = (h @ w_router.T).float()
    if noise is not None:
        T, R = logits.shape[0], noise.shape[0]
        rows = (torch.arange(T, device=noise.device) + row0) % R
        logits = logits + noise[rows]
    probs = torch.softmax(logits, dim=-1)
    top_w, top_i = torch.topk(probs, top_k, dim=-1)
    if top_k > 1:
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
    return h, top_i, top_w.to(x.dtype)


def router(x: torch.Tensor, norm_w: torch.Tensor, w_router: torch.Tensor, top_k: int,
           noise: torch.Tensor | None = None, eps: float = 1e-5, row0: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RMSNorm + router + softmax + top-k (+ renorm) in one kernel: x (T, d) → h (T, d), ids (T, k), w (T, k).

    With ``noise`` (R, E), token i adds row (row0 + i) mod R (balanced routing; ``row0``: x's first packed row).
    """
    if not use_triton(x.device):
        return router_torch(x, norm_w, w_router, top_k, noise, eps, row0)
    T, D = x.shape
    E = w_router.shape[0]
    ep = max(2, _next_pow2(E))
    bd = max(64, min(1024, 8192 // ep), 16)
    h = torch.empty_like(x)
    ids = torch.empty((T, top_k), dtype=torch.int64, device=x.device)
    tw = torch.empty((T, top_k), dtype=x.dtype, device=x.device)
    if T == 0:
        return h, ids, tw
    nz = noise if noise is not None else tw  # a placeholder pointer when unused
    R = noise.shape[0] if noise is not None else 1
    _router_kernel[(T,)](x, norm_w, w_router.contiguous(), nz, h, ids, tw, D, E, R, row0 % R, eps, x.stride(0),
                         h.stride(0), BD=bd, EP=ep, TOPK=top_k, HAS_NOISE=noise is not None, num_warps=4)
    return h, ids, tw


# ---- RMSNorm -------------------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm of x (T, d) with weight w (d,) in one kernel (fp32 statistics); ``F.rms_norm`` off CUDA."""
    if not use_triton(x.device) or x.stride(1) != 1:
        return F.rms_norm(x, (x.shape[1],), w, eps=eps)
    T, D = x.shape
    y = torch.empty((T, D), dtype=x.dtype, device=x.device)
    if T:
        _rms_norm_kernel[(T,)](x, w, y, D, eps, x.stride(0), y.stride(0), BD=min(1024, _next_pow2(D)), num_warps=4)
    return y


# ---- RoPE + KV write ----------------------------------------------------------------------------------
def rope_torch(x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x (T, heads, hd) at positions pos (T,) (the engine's ``_rope``)."""
    c, s = cos[pos][:, None, :], sin[pos][:, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def rope_kv_torch(qkv: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  slots: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, H: int, Hkv: int,
                  hd: int) -> torch.Tensor:
    """Reference of ``rope_kv`` in torch ops."""
    T = qkv.shape[0]
    q = qkv[:, : H * hd].view(T, H, hd)
    k = qkv[:, H * hd : (H + Hkv) * hd].view(T, Hkv, hd)
    v = qkv[:, (H + Hkv) * hd :].view(T, Hkv, hd)
    cache_k.index_copy_(0, slots, rope_torch(k, pos, cos, sin))
    cache_v.index_copy_(0, slots, v)
    return rope_torch(q, pos, cos, sin)


def rope_kv(qkv: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slots: torch.Tensor,
            cache_k: torch.Tensor, cache_v: torch.Tensor, H: int, Hkv: int, hd: int) -> torch.Tensor:
    """RoPE of q and k, k and v into the cache rows ``slots``, in one kernel: qkv (T, (H+2Hkv)·hd) → q (T, H, hd)."""
    if not use_triton(qkv.device) or hd % 2 or (hd // 2) & (hd // 2 - 1):
        return rope_kv_torch(qkv, pos, cos, sin, slots, cache_k, cache_v, H, Hkv, hd)
    T = qkv.shape[0]
    q = torch.empty((T, H, hd), dtype=qkv.dtype, device=qkv.device)
    if T == 0:
        return q
    if qkv.stride(1) != 1 or not (cache_k.is_contiguous() and cache_v.is_contiguous()):
        raise ValueError("rope_kv: qkv rows and the KV cache must be contiguous")
    _rope_kv_kernel[(T,)](qkv, pos, cos.contiguous(), sin.contiguous(), slots, q, cache_k, cache_v,
                          qkv.stride(0), H, Hkv, HD=hd, HALF=hd // 2, HP=_next_pow2(H), HKP=_next_pow2(Hkv), num_warps=4)
    return q
