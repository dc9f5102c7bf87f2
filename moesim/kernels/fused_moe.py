"""A fused Mixture-of-Experts layer in Triton: block-aligned sort by expert, gate+up+SiLU·mul, down+weight.

The layout follows vLLM's ``fused_moe``:

1. **Align** (``align``): the N·k assignments (token n, choice j → flat index n·k + j) are sorted by expert,
   stably, and each expert's run is padded to a multiple of ``BLOCK_M`` with the sentinel N·k. Output:
   ``sorted_ids`` (padded rows, int32), ``expert_ids`` (expert of each ``BLOCK_M`` block, int32) and ``total``
   (padded rows actually used, a 1-element int32 tensor on the device). Sizes are static bounds
   (``max_blocks``), so nothing syncs with the host and the layer can be captured in a CUDA graph; blocks at
   or past ``total`` exit at once. One Triton program does it (``_align_kernel``) where the assignments × experts
   one-hot table is small, torch ops otherwise (``align_torch``; same output).
2. **Gate+up** (``_gate_up_kernel``): per (block of ``BLOCK_M`` sorted rows, tile of ``BLOCK_N`` intermediate
   columns) the program gathers its tokens' rows of h, multiplies by the expert's gate rows [n0, n0+BN) and up
   rows [F+n0, F+n0+BN) of ``w_in`` (E, 2F, d) with two accumulators, and writes SiLU(gate)·up (ReLU(x) for
   2-matrix experts) as bf16 into ``inter`` (padded rows, F): the (rows, 2F) intermediate never exists.
3. **Down** (``_down_kernel``): ``inter`` @ ``w_out[e]``ᵀ (E, d, F), each row scaled by its routing weight and
   written to its assignment's row of ``out`` (N·k, d); the top-k combine is ``out.view(N, k, d).sum(1)``.
   Every assignment appears in exactly one sorted row, so ``out`` needs no zeroing.

Programs are ordered block-inner (``pid_m = pid % blocks``): programs running at the same time read the same
weight tile, so an expert with several blocks is read from HBM about once. Tile sizes are chosen per token
count (``CONFIGS``; ``pick_config``): ``BLOCK_M`` = 16 for decode, so a few tokens stream the expert weights in
many small tiles over every SM; 64–128 for prefill (tensor-core bound).

Without CUDA (CPU tests) the same algorithm runs in torch (``fused_moe_torch``), or the Triton kernels run in
Triton's interpreter when ``TRITON_INTERPRET=1`` is set before this module is imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

try:  # Triton is optional: the GPU machine has it; on CPU the torch path (or the interpreter) is used
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_TRITON = False
try:  # host-side TMA descriptors (Triton ≥ 3.4)
    from triton.tools.tensor_descriptor import TensorDescriptor

    HAVE_TMA = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_TMA = False

INTERPRET = os.environ.get("TRITON_INTERPRET", "") == "1"


@dataclass(frozen=True)
class MoEConfig:
    """Tile sizes of the two GEMM kernels (``bm`` shared: the align pads to it)."""

    bm: int = 16
    gu_bn: int = 64
    gu_bk: int = 128
    gu_warps: int = 4
    gu_stages: int = 4
    dn_bn: int = 64
    dn_bk: int = 128
    dn_warps: int = 4
    dn_stages: int = 4
    tma: int = 0  # 1: weights (and the down kernel's sorted rows) loaded through TMA descriptors (sm_90)


#: Per regime (upper bound of N·k assignments, config), first match wins. The tiles the H200 benchmark picked at
#: Mixtral shapes on 2026-11-30 08:41 UTC (reports/kernels/engine_tuning.json, kernels.json section tiles; each
#: regime's best tiles were also timed with TMA loads, which won in regimes 1–4); the committed fused-engine
#: profile was calibrated with exactly these. ``moesim.kernels.bench`` re-picks each regime's best in its own run.
CONFIGS: list[tuple[int, MoEConfig]] = [
    # decode ≤ 32 tokens (192 µs at 1 token on 2026-11-30 06:45; not re-tuned)
    (64, MoEConfig(dn_bn=32, dn_bk=256, dn_stages=3)),
    # decode ≤ 128 tokens: 684 µs at 128 (BLOCK_M 32 had 785)
    (256, MoEConfig(bm=64, dn_bn=128, dn_bk=64, tma=1)),
    # prompts ≤ 1,024 tokens: 1,115 µs at 512
    (2048, MoEConfig(bm=64, gu_bk=64, dn_bn=128, dn_bk=64, tma=1)),
    # prompts of 1,025–2,048 tokens: 2,501 µs at 2,048 (was 2,992)
    (4096, MoEConfig(bm=128, gu_bn=128, gu_bk=64, gu_warps=8, gu_stages=3, dn_bn=256, dn_bk=64, dn_warps=8,
                     dn_stages=3, tma=1)),
    # longer prompts: 4,721 µs at 4,096 (the grouped GEMM: 5,851)
    (1 << 62, MoEConfig(bm=128, gu_bn=128, gu_bk=64, gu_warps=8, gu_stages=3, dn_bn=256, dn_bk=64, dn_warps=8,
                        dn_stages=3, tma=1)),
]


def regime_starts(top_k: int, max_assign: int | None = None) -> list[int]:
    """Token counts at which the engine's MoE call changes kernel configuration: the first token count of each
    ``CONFIGS`` regime after the first, and (``max_assign``: the triton engine's cap) the first one that runs the
    grouped GEMM instead. The MoE time jumps there (either way); the calibrator measures both sides and the
    profile cost model never interpolates across them (``moesim.cost.profile``, meta ``moe_regimes``)."""
    if top_k < 1:
        raise ValueError(f"top_k={top_k}: must be ≥ 1")
    out = {bound // top_k + 1 for bound, _ in CONFIGS[:-1]}
    if max_assign is not None:
        out = {t for t in out if t * top_k <= max_assign} | {max_assign // top_k + 1}
    return sorted(out)


def crossover_cap(rows: list[tuple[int, float, float]], top_k: int) -> int | None:
    """The hybrid engine's cap from a measured table of (tokens, fused µs, grouped µs): the fused kernel serves
    every call up to the largest measured token count below the first one from which the grouped GEMM is faster
    at that size *and every larger one measured* (a single slower point followed by faster ones is noise or a
    tile regime, not a crossover). Returns the cap in token × top-k assignments (first grouped size − 1), None if
    the grouped GEMM never stays ahead."""
    pts = sorted(rows)
    if any(t < 1 or not (a > 0 and b > 0) for t, a, b in pts):
        raise ValueError("crossover_cap: tokens ≥ 1 and positive times")
    first = None
    for i in range(len(pts)):
        if all(b < a for _, a, b in pts[i:]):
            first = pts[i][0]
            break
    return None if first is None else first * top_k - 1

@dataclass(frozen=True)
class Candidates:
    """What the benchmark tries for one regime: ``bm`` values; gate+up and down tiles (bn, bk, warps, stages)."""

    tokens: int  # the token count it is timed at (top-k assignments each)
    bms: tuple[int, ...]
    gu: tuple[tuple[int, int, int, int], ...]
    dn: tuple[tuple[int, int, int, int], ...]


CANDIDATES: list[Candidates] = [
    Candidates(1, (16,), ((64, 128, 4, 4), (32, 256, 4, 3), (32, 128, 4, 4)),
               ((32, 256, 4, 3), (64, 128, 4, 4), (16, 256, 4, 4))),
    # 65–128 tokens: the 2026-11-30 run picked BLOCK_M 32 among 16 and 32, but its profile had 181 tokens with
    # BLOCK_M 64 faster (691 µs) than 128 tokens with 32 (819 µs): try 64 here too
    Candidates(128, (32, 64), ((64, 128, 4, 4), (64, 64, 4, 4)), ((64, 128, 4, 4), (128, 64, 4, 4))),
    Candidates(512, (64, 128), ((64, 64, 4, 4), (128, 64, 8, 3)), ((128, 64, 4, 4), (64, 128, 4, 4))),
    # large per-expert M (2k tokens: ~512 rows per expert): 128-row blocks, wide N, 8 warps, 3-4 stages
    Candidates(2048, (128,), ((128, 64, 8, 3), (128, 64, 8, 4), (64, 64, 4, 4), (64, 64, 4, 5), (128, 32, 8, 4),
                              (64, 128, 4, 3)),
               ((128, 64, 8, 3), (128, 64, 8, 4), (256, 64, 8, 3), (128, 128, 8, 3), (256, 32, 8, 4), (128, 64, 4, 4))),
    Candidates(4096, (128,), ((128, 64, 8, 3), (128, 64, 8, 4), (64, 64, 4, 4), (64, 128, 4, 3)),
               ((128, 64, 8, 3), (128, 64, 8, 4), (256, 64, 8, 3), (128, 64, 4, 4))),
]

def make_config(bm: int, gu: tuple[int, int, int, int], dn: tuple[int, int, int, int]) -> MoEConfig:
    """A config from a block height and the two kernels' (bn, bk, warps, stages)."""
    return MoEConfig(bm=bm, gu_bn=gu[0], gu_bk=gu[1], gu_warps=gu[2], gu_stages=gu[3],
                     dn_bn=dn[0], dn_bk=dn[1], dn_warps=dn[2], dn_stages=dn[3])


def pick_config(n_assign: int) -> MoEConfig:
    """The tile sizes for ``n_assign`` = tokens × top-k assignments."""
    for bound, cfg in CONFIGS:
        if n_assign <= bound:
            return cfg
    return CONFIGS[-1][1]


def set_config(regime: int, cfg: MoEConfig) -> None:
    """Replace regime ``regime``'s tile sizes (the benchmark's pick)."""
    CONFIGS[regime] = (CONFIGS[regime][0], cfg)


def max_blocks(n_assign: int, n_experts: int, bm: int) -> int:
    """Static bound on the padded blocks: Σ_e ⌈c_e/bm⌉ ≤ ⌈N·k/bm⌉ + min(E, N·k)."""
    return -(-n_assign // bm) + min(n_experts, n_assign)


# ---- align --------------------------------------------------------------------------------------------
def align_naive(topk_ids: list[list[int]], n_experts: int, bm: int) -> tuple[list[int], list[int]]:
    """Pure-Python reference: (sorted ids padded per expert with N·k, expert of each block)."""
    flat = [e for row in topk_ids for e in row]
    nk = len(flat)
    ids: list[int] = []
    experts: list[int] = []
    for e in range(n_experts):
        mine = [i for i, x in enumerate(flat) if x == e]
        if not mine:
            continue
        pad = -len(mine) % bm
        ids += mine + [nk] * pad
        experts += [e] * ((len(mine) + pad) // bm)
    return ids, experts


def align_torch(topk_ids: torch.Tensor, n_experts: int, bm: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch ops, no host sync: (sorted_ids (max_blocks·bm,), expert_ids (max_blocks,), total (1,)), int32.

    Rows past ``total`` and blocks past ``total/bm`` are unspecified (never read).
    """
    flat = topk_ids.reshape(-1)
    nk = flat.numel()
    dev = flat.device
    nb = max_blocks(nk, n_experts, bm)
    order = torch.argsort(flat, stable=True)
    e_sorted = flat[order]
    bounds = torch.searchsorted(e_sorted, torch.arange(n_experts + 1, device=dev, dtype=e_sorted.dtype))
    counts = bounds[1:] - bounds[:-1]
    padded = (counts + bm - 1) // bm * bm
    ends = torch.cumsum(padded, 0)
    starts = ends - padded
    dest = starts[e_sorted] + torch.arange(nk, device=dev) - bounds[:-1][e_sorted]
    sorted_ids = torch.full((nb * bm,), nk, dtype=torch.int32, device=dev)
    sorted_ids[dest] = order.to(torch.int32)
    block_start = torch.arange(nb, device=dev, dtype=ends.dtype) * bm
    expert_ids = torch.searchsorted(ends, block_start, right=True).clamp_(max=n_experts - 1).to(torch.int32)
    return sorted_ids, expert_ids, ends[-1:].to(torch.int32)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


if HAVE_TRITON:

    @triton.jit(do_not_specialize=["NK", "NB"])
    def _align_kernel(ids_ptr, sorted_ptr, expert_ptr, total_ptr, NK, E, NB,
                      EP: tl.constexpr, BM: tl.constexpr, CHUNK: tl.constexpr):
        """One program: counts per expert, padded starts, each assignment's row, pads, block experts."""
        e_ar = tl.arange(0, EP)
        c_ar = tl.arange(0, CHUNK)
        counts = tl.zeros([EP], dtype=tl.int32)
        for c0 in range(0, NK, CHUNK):  # pass 1: assignments per expert
            m = c0 + c_ar < NK
            ids = tl.load(ids_ptr + c0 + c_ar, mask=m, other=EP).to(tl.int32)
            oh = (ids[:, None] == e_ar[None, :]).to(tl.int32)
            counts += tl.sum(oh, axis=0)
        padded = (counts + BM - 1) // BM * BM
        ends = tl.cumsum(padded, axis=0)
        starts = ends - padded
        total = tl.sum(padded, axis=0)
        tl.store(total_ptr, total)
        run = tl.zeros([EP], dtype=tl.int32)
        for c0 in range(0, NK, CHUNK):  # pass 2: row of each assignment (stable within its expert)
            m = c0 + c_ar < NK
            ids = tl.load(ids_ptr + c0 + c_ar, mask=m, other=EP).to(tl.int32)
            oh = (ids[:, None] == e_ar[None, :]).to(tl.int32)
            before = tl.cumsum(oh, axis=0) - oh + run[None, :]  # earlier assignments of the same expert
            dest = tl.sum(oh * (before + starts[None, :]), axis=1)
            tl.store(sorted_ptr + dest, (c0 + c_ar).to(tl.int32), mask=m)
            run += tl.sum(oh, axis=0)
        # pads: rows [start+count, end) of each expert (disjoint from the rows written above)
        p_ar = tl.arange(0, BM)
        prow = (starts + counts)[:, None] + p_ar[None, :]
        pmask = prow < ends[:, None]
        tl.store(sorted_ptr + prow, tl.zeros([EP, BM], dtype=tl.int32) + NK, mask=pmask)
        for b0 in range(0, NB, CHUNK):  # expert of each used block: experts whose end ≤ the block's start
            b = b0 + c_ar
            e = tl.sum((ends[None, :] <= (b * BM)[:, None]).to(tl.int32), axis=1)
            tl.store(expert_ptr + b, tl.minimum(e, E - 1), mask=b < NB)

    @triton.jit(do_not_specialize=["NK", "NUM_M"])
    def _gate_up_kernel(a_ptr, w_ptr, out_ptr, sorted_ptr, expert_ptr, total_ptr,
                        NK, K, FF, NUM_M,
                        stride_am, stride_we, stride_wn, stride_om,
                        TOPK: tl.constexpr, SWIGLU: tl.constexpr,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_F32: tl.constexpr):
        """inter[rows, n0:n0+BN] = act(h[tok] @ w_in[e, gate rows]ᵀ, h[tok] @ w_in[e, up rows]ᵀ)."""
        pid = tl.program_id(0)
        pid_m = pid % NUM_M
        pid_n = pid // NUM_M
        total = tl.load(total_ptr)
        if pid_m * BM >= total:
            return
        offs_m = pid_m * BM + tl.arange(0, BM)
        tok = tl.load(sorted_ptr + offs_m)
        valid = tok < NK
        row = tl.where(valid, tok // TOPK, 0).to(tl.int64)
        e = tl.load(expert_ptr + pid_m).to(tl.int64)
        offs_n = pid_n * BN + tl.arange(0, BN)
        nmask = offs_n < FF
        offs_k = tl.arange(0, BK)
        a_ptrs = a_ptr + row[:, None] * stride_am + offs_k[None, :]
        wg_ptrs = w_ptr + e * stride_we + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
        acc_g = tl.zeros([BM, BN], dtype=tl.float32)
        wu_ptrs = wg_ptrs + FF * stride_wn  # unused (and not loaded) without SWIGLU
        acc_u = tl.zeros([BM, BN], dtype=tl.float32)
        for k0 in range(0, K, BK):
            kmask = offs_k < K - k0
            a = tl.load(a_ptrs, mask=valid[:, None] & kmask[None, :], other=0.0)
            wg = tl.load(wg_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
            if DOT_F32:  # Triton's CPU interpreter multiplies bf16 wrongly (3.9): upcast there only
                a = a.to(tl.float32)
                wg = wg.to(tl.float32)
            acc_g = tl.dot(a, wg, acc_g)
            if SWIGLU:
                wu = tl.load(wu_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
                if DOT_F32:
                    wu = wu.to(tl.float32)
                acc_u = tl.dot(a, wu, acc_u)
                wu_ptrs += BK
            a_ptrs += BK
            wg_ptrs += BK
        if SWIGLU:
            act = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
        else:
            act = tl.maximum(acc_g, 0.0)
        o_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
        tl.store(o_ptrs, act.to(out_ptr.dtype.element_ty), mask=(offs_m < total)[:, None] & nmask[None, :])

    @triton.jit(do_not_specialize=["NK", "NUM_M"])
    def _down_kernel(a_ptr, w_ptr, out_ptr, sorted_ptr, expert_ptr, total_ptr, tw_ptr,
                     NK, K, D, NUM_M,
                     stride_am, stride_we, stride_wn, stride_om,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_F32: tl.constexpr):
        """out[tok, n0:n0+BN] = weight[tok] · inter[rows] @ w_out[e, n0:n0+BN]ᵀ for the block's valid rows."""
        pid = tl.program_id(0)
        pid_m = pid % NUM_M
        pid_n = pid // NUM_M
        total = tl.load(total_ptr)
        if pid_m * BM >= total:
            return
        offs_m = pid_m * BM + tl.arange(0, BM)
        tok = tl.load(sorted_ptr + offs_m)
        valid = tok < NK
        e = tl.load(expert_ptr + pid_m).to(tl.int64)
        offs_n = pid_n * BN + tl.arange(0, BN)
        nmask = offs_n < D
        offs_k = tl.arange(0, BK)
        a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :]
        w_ptrs = w_ptr + e * stride_we + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
        acc = tl.zeros([BM, BN], dtype=tl.float32)
        for k0 in range(0, K, BK):
            kmask = offs_k < K - k0
            a = tl.load(a_ptrs, mask=kmask[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
            if DOT_F32:
                a = a.to(tl.float32)
                w = w.to(tl.float32)
            acc = tl.dot(a, w, acc)
            a_ptrs += BK
            w_ptrs += BK
        tw = tl.load(tw_ptr + tok, mask=valid, other=0.0).to(tl.float32)
        acc = acc * tw[:, None]
        o_ptrs = out_ptr + tok[:, None].to(tl.int64) * stride_om + offs_n[None, :]
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=valid[:, None] & nmask[None, :])


    @triton.jit(do_not_specialize=["NK", "NUM_M"])
    def _gate_up_tma_kernel(a_ptr, w_desc, out_ptr, sorted_ptr, expert_ptr, total_ptr,
                            NK, K, FF, NUM_M, stride_am, stride_om,
                            TOPK: tl.constexpr, SWIGLU: tl.constexpr,
                            BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_F32: tl.constexpr):
        """``_gate_up_kernel`` with the expert's weight tiles loaded by TMA from ``w_desc`` over w_in viewed as
        (E·g·F, d) in [BN, BK] blocks (needs F % BN == 0 and d % BK == 0); the token rows stay gathered loads."""
        pid = tl.program_id(0)
        pid_m = pid % NUM_M
        pid_n = pid // NUM_M
        total = tl.load(total_ptr)
        if pid_m * BM >= total:
            return
        offs_m = pid_m * BM + tl.arange(0, BM)
        tok = tl.load(sorted_ptr + offs_m)
        valid = tok < NK
        row = tl.where(valid, tok // TOPK, 0).to(tl.int64)
        e = tl.load(expert_ptr + pid_m)
        n0 = pid_n * BN
        w_row = e * (2 * FF if SWIGLU else FF) + n0
        offs_k = tl.arange(0, BK)
        a_ptrs = a_ptr + row[:, None] * stride_am + offs_k[None, :]
        acc_g = tl.zeros([BM, BN], dtype=tl.float32)
        acc_u = tl.zeros([BM, BN], dtype=tl.float32)
        for k0 in range(0, K, BK):
            a = tl.load(a_ptrs, mask=valid[:, None], other=0.0)
            wg = w_desc.load([w_row, k0])
            if DOT_F32:
                a = a.to(tl.float32)
                wg = wg.to(tl.float32)
            acc_g = tl.dot(a, wg.T, acc_g)
            if SWIGLU:
                wu = w_desc.load([w_row + FF, k0])
                if DOT_F32:
                    wu = wu.to(tl.float32)
                acc_u = tl.dot(a, wu.T, acc_u)
            a_ptrs += BK
        if SWIGLU:
            act = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
        else:
            act = tl.maximum(acc_g, 0.0)
        offs_n = n0 + tl.arange(0, BN)
        o_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
        tl.store(o_ptrs, act.to(out_ptr.dtype.element_ty), mask=(offs_m < total)[:, None])

    @triton.jit(do_not_specialize=["NK", "NUM_M"])
    def _down_tma_kernel(a_desc, w_desc, out_ptr, sorted_ptr, expert_ptr, total_ptr, tw_ptr,
                         NK, K, D, NUM_M, stride_om,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_F32: tl.constexpr):
        """``_down_kernel`` with both operands loaded by TMA: the block's sorted rows of ``inter`` ([BM, BK]) and
        the expert's rows of w_out viewed as (E·d, F) ([BN, BK]); needs d % BN == 0 and F % BK == 0."""
        pid = tl.program_id(0)
        pid_m = pid % NUM_M
        pid_n = pid // NUM_M
        total = tl.load(total_ptr)
        if pid_m * BM >= total:
            return
        offs_m = pid_m * BM + tl.arange(0, BM)
        tok = tl.load(sorted_ptr + offs_m)
        valid = tok < NK
        e = tl.load(expert_ptr + pid_m)
        n0 = pid_n * BN
        acc = tl.zeros([BM, BN], dtype=tl.float32)
        for k0 in range(0, K, BK):
            a = a_desc.load([pid_m * BM, k0])
            w = w_desc.load([e * D + n0, k0])
            if DOT_F32:
                a = a.to(tl.float32)
                w = w.to(tl.float32)
            acc = tl.dot(a, w.T, acc)
        tw = tl.load(tw_ptr + tok, mask=valid, other=0.0).to(tl.float32)
        acc = acc * tw[:, None]
        offs_n = n0 + tl.arange(0, BN)
        o_ptrs = out_ptr + tok[:, None].to(tl.int64) * stride_om + offs_n[None, :]
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=valid[:, None])

    @triton.jit
    def _combine_kernel(out_ptr, x_ptr, D, stride_x, TOPK: tl.constexpr, BD: tl.constexpr):
        """x[n] += Σ_j out[n·k + j] (fp32 sum, one rounding)."""
        n = tl.program_id(0).to(tl.int64)
        d_ar = tl.arange(0, BD)
        for d0 in range(0, D, BD):
            dm = d0 + d_ar < D
            acc = tl.load(x_ptr + n * stride_x + d0 + d_ar, mask=dm, other=0.0).to(tl.float32)
            for j in tl.static_range(TOPK):
                acc += tl.load(out_ptr + (n * TOPK + j) * D + d0 + d_ar, mask=dm, other=0.0).to(tl.float32)
            tl.store(x_ptr + n * stride_x + d0 + d_ar, acc.to(x_ptr.dtype.element_ty), mask=dm)


def use_triton(device: torch.device) -> bool:
    """The Triton kernels run here (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``)."""
    return HAVE_TRITON and (device.type == "cuda" or INTERPRET)


#: Above this many one-hot cells (assignments × padded experts) the align runs as torch ops: one program walks
#: the assignments in tiles of ≤ 4k cells, serially, which beats ~10 torch kernels only for small calls.
ALIGN_TRITON_MAX_CELLS = 1 << 15


def align(topk_ids: torch.Tensor, n_experts: int, bm: int, how: str = "auto"
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``align_torch``'s outputs, by one Triton program where it is small enough (see the module doc); ``how``:
    ``auto`` (that rule), ``torch`` or ``triton`` (the benchmark times both)."""
    nk = topk_ids.numel()
    ep = max(16, _next_pow2(n_experts))
    if how == "torch" or not use_triton(topk_ids.device) or (how == "auto" and nk * ep > ALIGN_TRITON_MAX_CELLS):
        return align_torch(topk_ids, n_experts, bm)
    nb = max_blocks(nk, n_experts, bm)
    dev = topk_ids.device
    sorted_ids = torch.empty((nb * bm,), dtype=torch.int32, device=dev)
    expert_ids = torch.empty((nb,), dtype=torch.int32, device=dev)
    total = torch.empty((1,), dtype=torch.int32, device=dev)
    chunk = max(16, min(1024, _next_pow2(max(1, 4096 // ep))))  # one-hot tile ≤ 4k cells: no spills
    _align_kernel[(1,)](topk_ids.reshape(-1), sorted_ids, expert_ids, total, nk, n_experts, nb,
                        EP=ep, BM=bm, CHUNK=chunk, num_warps=4)
    return sorted_ids, expert_ids, total


def tma_ok(cfg: MoEConfig, d: int, FF: int, w: torch.Tensor, kernel: str) -> bool:
    """``kernel`` (``gate_up`` or ``down``) loads through TMA with ``cfg``: asked for, available, tiles that divide
    the shapes (a weight tile never straddles gate/up or two experts), contiguous weights ``w``."""
    if not (cfg.tma and HAVE_TMA and w.is_contiguous()):
        return False
    if kernel == "gate_up":
        return FF % cfg.gu_bn == 0 and d % cfg.gu_bk == 0
    return d % cfg.dn_bn == 0 and FF % cfg.dn_bk == 0


def _launch_gate_up(cfg: MoEConfig, h: torch.Tensor, w_in: torch.Tensor, inter: torch.Tensor,
                    sorted_ids: torch.Tensor, expert_ids: torch.Tensor, total: torch.Tensor, nk: int, nb: int,
                    k: int, swiglu: bool) -> None:
    d, FF = h.shape[1], inter.shape[1]
    grid = (nb * triton.cdiv(FF, cfg.gu_bn),)
    if tma_ok(cfg, d, FF, w_in, "gate_up"):
        w_desc = TensorDescriptor.from_tensor(w_in.view(-1, d), [cfg.gu_bn, cfg.gu_bk])
        _gate_up_tma_kernel[grid](h, w_desc, inter, sorted_ids, expert_ids, total, nk, d, FF, nb,
                                  h.stride(0), inter.stride(0), TOPK=k, SWIGLU=swiglu, BM=cfg.bm, BN=cfg.gu_bn,
                                  BK=cfg.gu_bk, DOT_F32=INTERPRET, num_warps=cfg.gu_warps, num_stages=cfg.gu_stages)
        return
    _gate_up_kernel[grid](h, w_in, inter, sorted_ids, expert_ids, total, nk, d, FF, nb,
                          h.stride(0), w_in.stride(0), w_in.stride(1), inter.stride(0),
                          TOPK=k, SWIGLU=swiglu, BM=cfg.bm, BN=cfg.gu_bn, BK=cfg.gu_bk, DOT_F32=INTERPRET,
                          num_warps=cfg.gu_warps, num_stages=cfg.gu_stages)


def _launch_down(cfg: MoEConfig, inter: torch.Tensor, w_out: torch.Tensor, out: torch.Tensor,
                 sorted_ids: torch.Tensor, expert_ids: torch.Tensor, total: torch.Tensor, tw: torch.Tensor,
                 nk: int, nb: int) -> None:
    d, FF = out.shape[1], inter.shape[1]
    grid = (nb * triton.cdiv(d, cfg.dn_bn),)
    if tma_ok(cfg, d, FF, w_out, "down"):
        a_desc = TensorDescriptor.from_tensor(inter, [cfg.bm, cfg.dn_bk])
        w_desc = TensorDescriptor.from_tensor(w_out.view(-1, FF), [cfg.dn_bn, cfg.dn_bk])
        _down_tma_kernel[grid](a_desc, w_desc, out, sorted_ids, expert_ids, total, tw, nk, FF, d, nb, out.stride(0),
                               BM=cfg.bm, BN=cfg.dn_bn, BK=cfg.dn_bk, DOT_F32=INTERPRET, num_warps=cfg.dn_warps,
                               num_stages=cfg.dn_stages)
        return
    _down_kernel[grid](inter, w_out, out, sorted_ids, expert_ids, total, tw, nk, FF, d, nb,
                       inter.stride(0), w_out.stride(0), w_out.stride(1), out.stride(0),
                       BM=cfg.bm, BN=cfg.dn_bn, BK=cfg.dn_bk, DOT_F32=INTERPRET, num_warps=cfg.dn_warps,
                       num_stages=cfg.dn_stages)


# ---- the layer ----------------------------------------------------------------------------------------
def fused_moe(h: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, topk_ids: torch.Tensor,
              topk_w: torch.Tensor, swiglu: bool = True, config: MoEConfig | None = None,
              residual: torch.Tensor | None = None) -> torch.Tensor:
    """Experts of one layer: h (N, d), w_in (E, g·F, d), w_out (E, d, F), topk_ids/topk_w (N, k) → (N, d).

    ``topk_ids`` index the first axis of the weights (slots 0 … E−1). Graph-capturable (no host sync).
    ``residual`` (N, d): add the layer's output into it in place (the top-k combine and the residual add in one
    kernel) and return it.
    """
    if not use_triton(h.device):
        y = fused_moe_torch(h, w_in, w_out, topk_ids, topk_w, swiglu)
        return y if residual is None else residual.add_(y)
    N, d = h.shape
    k = topk_ids.shape[1]
    E, _, FF = w_out.shape
    nk = N * k
    cfg = config or pick_config(nk)
    h = h.contiguous()
    sorted_ids, expert_ids, total = align(topk_ids, E, cfg.bm)
    nb = expert_ids.numel()
    inter = torch.empty((nb * cfg.bm, FF), dtype=h.dtype, device=h.device)
    if w_in.stride(2) != 1 or w_out.stride(2) != 1:
        raise ValueError("fused_moe: expert weights must be contiguous along their last axis (d / F)")
    out = torch.empty((nk, d), dtype=h.dtype, device=h.device)
    tw = topk_w.reshape(-1).contiguous()
    _launch_gate_up(cfg, h, w_in, inter, sorted_ids, expert_ids, total, nk, nb, k, swiglu)
    _launch_down(cfg, inter, w_out, out, sorted_ids, expert_ids, total, tw, nk, nb)
    if residual is not None:
        if residual.stride(1) != 1:
            raise ValueError("fused_moe: residual rows must be contiguous")
        _combine_kernel[(N,)](out, residual, d, residual.stride(0), TOPK=k, BD=min(1024, _next_pow2(d)),
                              num_warps=4)
        return residual
    return out.view(N, k, d).sum(dim=1) if k > 1 else out


def moe_stages(h: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, topk_ids: torch.Tensor,
               topk_w: torch.Tensor, swiglu: bool = True, config: MoEConfig | None = None,
               residual: torch.Tensor | None = None) -> dict[str, object]:
    """``fused_moe``'s four launches as separate closures over shared buffers (``align``, ``gate_up``, ``down``,
    ``combine``; the benchmark times each): run in that order they compute what ``fused_moe`` does. Triton only."""
    if not use_triton(h.device):
        raise RuntimeError("moe_stages: the Triton kernels need CUDA (or TRITON_INTERPRET=1)")
    N, d = h.shape
    k = topk_ids.shape[1]
    E, _, FF = w_out.shape
    nk = N * k
    cfg = config or pick_config(nk)
    h = h.contiguous()
    buf: dict[str, torch.Tensor] = {}
    buf["sorted"], buf["experts"], buf["total"] = align(topk_ids, E, cfg.bm)
    nb = buf["experts"].numel()
    inter = torch.empty((nb * cfg.bm, FF), dtype=h.dtype, device=h.device)
    out = torch.empty((nk, d), dtype=h.dtype, device=h.device)
    tw = topk_w.reshape(-1).contiguous()
    x = residual if residual is not None else torch.zeros((N, d), dtype=h.dtype, device=h.device)

    def do_align() -> None:  # into the same buffers: the other stages hold them (a graph replay of one stage
        # must not leave them pointing into memory freed with that graph)
        for name, t in zip(("sorted", "experts", "total"), align(topk_ids, E, cfg.bm), strict=True):
            buf[name].copy_(t)

    def gate_up() -> None:
        _launch_gate_up(cfg, h, w_in, inter, buf["sorted"], buf["experts"], buf["total"], nk, nb, k, swiglu)

    def down() -> None:
        _launch_down(cfg, inter, w_out, out, buf["sorted"], buf["experts"], buf["total"], tw, nk, nb)

    def combine() -> None:
        _combine_kernel[(N,)](out, x, d, x.stride(0), TOPK=k, BD=min(1024, _next_pow2(d)), num_warps=4)

    return {"align": do_align, "gate_up": gate_up, "down": down, "combine": combine, "x": x, "inter": inter,
            "sorted": buf["sorted"], "experts": buf["experts"], "total": buf["total"]}


def fused_moe_torch(h: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, topk_ids: torch.Tensor,
                    topk_w: torch.Tensor, swiglu: bool = True, bm: int = 16) -> torch.Tensor:
    """The same algorithm in torch ops (CPU; graph-capturable on CUDA too): align, per-block GEMMs, combine."""
    N, d = h.shape
    k = topk_ids.shape[1]
    E = w_in.shape[0]
    nk = N * k
    sorted_ids, expert_ids, _total = align_torch(topk_ids, E, bm)
    nb = expert_ids.numel()
    valid = sorted_ids < nk
    tok = torch.where(valid, sorted_ids, 0).long()
    a = (h[tok // k] * valid[:, None]).view(nb, bm, d)  # (blocks, bm, d)
    e = expert_ids.long()
    g = torch.bmm(a, w_in[e].transpose(1, 2))  # (blocks, bm, g·F): unused blocks read expert E−1 (harmless)
    if swiglu:
        gate, up = g.chunk(2, dim=-1)
        act = F.silu(gate) * up
    else:
        act = F.relu(g)
    y = torch.bmm(act, w_out[e].transpose(1, 2)).view(nb * bm, d)
    tw = topk_w.reshape(-1)[tok] * valid
    out = torch.zeros((nk + 1, d), dtype=h.dtype, device=h.device)
    out.index_copy_(0, torch.where(valid, sorted_ids.long(), nk), (y * tw[:, None]).to(h.dtype))
    return out[:nk].view(N, k, d).sum(dim=1)


def moe_reference(h: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, topk_ids: torch.Tensor,
                  topk_w: torch.Tensor, swiglu: bool = True) -> torch.Tensor:
    """One expert at a time in float64 (host sync; the check's reference): (N, d) float64."""
    h64 = h.double()
    out = torch.zeros(h.shape, dtype=torch.float64, device=h.device)
    for e in topk_ids.unique().tolist():  # one expert's weights upcast at a time
        wi, wo = w_in[e].double(), w_out[e].double()
        for j in range(topk_ids.shape[1]):
            rows = (topk_ids[:, j] == e).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            a = h64[rows] @ wi.T
            if swiglu:
                gate, up = a.chunk(2, dim=-1)
                act = F.silu(gate) * up
            else:
                act = F.relu(a)
            out[rows] += (act @ wo.T) * topk_w[rows, j].double()[:, None]
    return out


def with_bm(cfg: MoEConfig, bm: int) -> MoEConfig:
    """``cfg`` with another ``bm`` (tests)."""
    return replace(cfg, bm=bm)
