"""Measurement grids: log-spaced sizes wide enough for the Azure traces (``full``) or small (``quick``).

Torch-free, so tests and the cost model can read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def log_grid(lo: int, hi: int, per_octave: int = 2) -> tuple[int, ...]:
    """Integers from ``lo`` to ``hi`` spaced ``per_octave`` per doubling (rounded, deduplicated, sorted)."""
    out: set[int] = {lo, hi}
    k = 0
    while True:
        v = round(lo * 2 ** (k / per_octave))
        if v > hi:
            break
        out.add(v)
        k += 1
    return tuple(sorted(out))


@dataclass(frozen=True)
class Grids:
    """Shapes to measure.

    Attributes:
        tokens: token counts for the dense per-layer ops (attn_proj, router, moe_grouped, expert_one).
        moe_loop_tokens: token counts for the loop-engine comparison.
        prefill_batch, prefill_len: attention prefill grid; points with batch·len > prefill_cap skipped.
        decode_batch, decode_ctx: attention decode grid; points with batch·(ctx+1) > decode_cap skipped.
        lm_rows: lm_head rows; embed_tokens: embedding tokens.
        copy_bytes: device→device copy ceiling size; gemm_n: GEMM ceiling size (n³).
        plain_pinned_bytes, plain_pageable_bytes: plain host→device copies.
        overlap_tokens: prefill sizes for the copy/compute overlap measurement.
        step_points: (batch, tokens, context) of whole-model steps of one tenant on the grid.
        slice_points: (op, batch, tokens, context) measured on each green-context slice.
        slice_layers: decoder layers per timed repeat on slices (fewer than the model's, for time).
        concat_tenants, concat_tokens: the multi-tenant glue ops (``concat_qkv``, ``concat_route``): tenants
            in the step × tokens in the step (split evenly over the tenants).
        mixed_prefill, mixed_decode, mixed_ctx: mixed attention calls (``attn_mixed`` and
            ``attn_mixed_parts``): one prompt of ``mixed_prefill`` tokens packed with ``mixed_decode``
            decoding sequences whose contexts spread around a mean of ``mixed_ctx`` (``spread_contexts``).
        mixed_step_points: (prefill tokens, decode sequences, mean context) of whole-model steps over
            ``mixed_step_tenants`` tenants (``step_mixed``: the prompt on tenant 0, decodes round robin).
    """

    tokens: tuple[int, ...]
    moe_loop_tokens: tuple[int, ...]
    prefill_batch: tuple[int, ...]
    prefill_len: tuple[int, ...]
    prefill_cap: int
    decode_batch: tuple[int, ...]
    decode_ctx: tuple[int, ...]
    decode_cap: int
    lm_rows: tuple[int, ...]
    embed_tokens: tuple[int, ...]
    copy_bytes: int
    gemm_n: int
    plain_pinned_bytes: int
    plain_pageable_bytes: int
    overlap_tokens: tuple[int, ...]
    step_points: tuple[tuple[int, int, int], ...]
    slice_points: tuple[tuple[str, int, int, int], ...]
    slice_layers: int
    concat_tenants: tuple[int, ...] = ()
    concat_tokens: tuple[int, ...] = ()
    mixed_prefill: tuple[int, ...] = ()
    mixed_decode: tuple[int, ...] = ()
    mixed_ctx: tuple[int, ...] = ()
    mixed_step_points: tuple[tuple[int, int, int], ...] = ()
    mixed_step_tenants: int = 3

    def concat_points(self) -> list[tuple[int, int]]:
        """(tenants, tokens) pairs with at least one token per tenant."""
        return [(n, T) for n in self.concat_tenants for T in self.concat_tokens if n <= T]

    def mixed_points(self) -> list[tuple[int, int, int]]:
        """(decode sequences, prefill tokens, mean decode context) of the mixed attention grid."""
        return [(b, n, c) for c in self.mixed_ctx for n in self.mixed_prefill for b in self.mixed_decode]

    def prefill_points(self) -> list[tuple[int, int]]:
        """(batch, len) pairs within the cap."""
        return [(b, n) for n in self.prefill_len for b in self.prefill_batch if b * n <= self.prefill_cap]

    def decode_points(self) -> list[tuple[int, int]]:
        """(batch, context) pairs within the cap."""
        return [(b, c) for c in self.decode_ctx for b in self.decode_batch if b * (c + 1) <= self.decode_cap]


GIB = 1024**3

#: Half-width in log(context) of the decode contexts packed in a mixed grid point: contexts span e^±1.5
#: around their geometric middle (a factor 20 from shortest to longest, as the held-out batches' 100–3,000).
SPREAD_LOG = 1.5


def spread_contexts(n: int, mean: int) -> list[int]:
    """``n`` decode contexts log-uniformly spread (a factor e^(2·SPREAD_LOG) end to end), scaled so their mean
    is ``mean`` (to rounding), each ≥ 1."""
    if n <= 1:
        return [max(1, mean)] * n
    w = [math.exp(SPREAD_LOG * (2 * i / (n - 1) - 1)) for i in range(n)]
    scale = mean * n / sum(w)
    return [max(1, round(x * scale)) for x in w]


def make_grids(kind: str) -> Grids:
    """The ``full`` grid (a real GPU) or the ``quick`` one (CPU, CI)."""
    if kind == "full":
        return Grids(
            tokens=log_grid(1, 8192, 2),
            moe_loop_tokens=(1, 16, 256, 2048),
            prefill_batch=(1, 2, 4, 8, 16, 32, 64),
            prefill_len=log_grid(16, 16384, 1),
            prefill_cap=65536,
            decode_batch=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            decode_ctx=log_grid(16, 16384, 1),
            decode_cap=1 << 22,
            lm_rows=log_grid(1, 1024, 2),
            embed_tokens=log_grid(1, 8192, 1),
            copy_bytes=2 * GIB,
            gemm_n=8192,
            plain_pinned_bytes=2 * GIB,
            plain_pageable_bytes=1 * GIB,
            overlap_tokens=(512, 2048),
            step_points=((1, 1, 512), (4, 1, 512), (16, 1, 512), (64, 1, 512), (256, 1, 256), (1, 1, 4096),
                         (16, 1, 4096), (1, 16, 0), (1, 128, 0), (1, 1024, 0), (1, 4096, 0)),
            slice_points=(
                ("attn_proj", 1, 1, 0), ("attn_proj", 1, 64, 0), ("attn_proj", 1, 512, 0),
                ("attn_proj", 1, 4096, 0),
                ("router", 1, 64, 0), ("router", 1, 4096, 0),
                ("moe_grouped", 1, 1, 0), ("moe_grouped", 1, 64, 0), ("moe_grouped", 1, 512, 0),
                ("moe_grouped", 1, 4096, 0),
                ("expert_one", 1, 1, 0), ("expert_one", 1, 64, 0), ("expert_one", 1, 512, 0),
                ("expert_one", 1, 4096, 0),
                ("lm_head", 1, 1, 0), ("lm_head", 1, 64, 0), ("lm_head", 1, 512, 0),
                ("attn_prefill", 1, 512, 0), ("attn_prefill", 1, 4096, 0), ("attn_prefill", 4, 2048, 0),
                ("attn_decode", 1, 1, 1024), ("attn_decode", 32, 1, 1024), ("attn_decode", 128, 1, 4096),
            ),
            slice_layers=4,
            concat_tenants=(2, 3, 8),
            concat_tokens=(8, 64, 512, 4096),
            mixed_prefill=(16, 128, 1024, 4096),
            mixed_decode=(1, 4, 16, 64, 256),
            mixed_ctx=(256, 2048),
            mixed_step_points=((0, 3, 512), (0, 12, 512), (0, 48, 512), (0, 192, 256),
                               (64, 6, 512), (512, 24, 1024), (2048, 96, 256)),
        )
    return Grids(
        tokens=log_grid(1, 64, 1),
        moe_loop_tokens=(1, 16),
        prefill_batch=(1, 2, 4),
        prefill_len=(4, 16, 64),
        prefill_cap=128,
        decode_batch=(1, 2, 4, 8),
        decode_ctx=(4, 16, 64, 256),
        decode_cap=1024,
        lm_rows=(1, 2, 4, 8, 16),
        embed_tokens=(1, 16, 64),
        copy_bytes=8 * 1024**2,
        gemm_n=128,
        plain_pinned_bytes=8 * 1024**2,
        plain_pageable_bytes=8 * 1024**2,
        overlap_tokens=(16,),
        step_points=((1, 1, 16), (4, 1, 16), (1, 16, 0), (1, 64, 0)),
        slice_points=(("attn_proj", 1, 16, 0), ("moe_grouped", 1, 16, 0), ("attn_decode", 2, 1, 16)),
        slice_layers=2,
        concat_tenants=(2, 3),
        concat_tokens=(4, 32),
        mixed_prefill=(4, 32),
        mixed_decode=(1, 4),
        mixed_ctx=(16,),
        mixed_step_points=((0, 3, 16), (8, 3, 16)),
    )
