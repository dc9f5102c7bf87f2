"""What a multi-tenant or mixed prefill + decode step adds to the per-op composition, from a profile's grid rows.

The ``profile`` cost model composes a step from per-tenant op tables. A step over several tenants, or one that
packs prompts with decoding sequences, does more than those ops (``moesim.calibrate.engine.MoEEngine.step``):

  * **concatenations** (``concat_qkv``, ``concat_route`` rows: tenants × tokens in the step, per layer): the
    tenants' q, k, v are joined before the one attention call, and their normed h, expert ids and weights
    before the shared experts; costed ``L·concat_qkv(n, T) + L_moe·concat_route(n, T)`` for n ≥ 2 tenants;
  * **the mixed attention call** (``attn_mixed`` against ``attn_mixed_parts``, per layer): one varlen
    FlashAttention call serves the prompt(s) and every decoding sequence. The composition costs a prefill call
    plus a decode call; the grid measures, on the same sequences, the one call minus the two
    (``MixedExcess``), by decoding sequences ``b``, prompt length ``n`` and mean decode context ``c``. A step
    with prompts and decodes adds ``L·excess(b', n', c)`` with ``b'`` = its sequences other than the longest
    prompt and ``n'`` its longest prompt;
  * **fixed per-tenant and per-mixed-step costs** (``step_mixed`` rows: whole steps over several tenants on a
    grid, never the held-out steps): after the two terms above, the median over the decode-only grid steps
    of (measured − composed) / (L · (tenants − 1)) is a per-layer cost of each extra tenant; the median over
    the mixed grid steps of what then remains, per layer, is a per-layer cost of a mixed step.

Profiles without these rows (older ones) give exactly the earlier composition. Torch-free.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
import pandas as pd


class MixedExcess:
    """Seconds one mixed attention call takes over its prefill and decode parts run as two calls, per layer.

    Tabulated at (decode sequences ``b``, prompt tokens ``n``, mean decode context ``c``); piecewise linear
    in ``b`` and ``n`` (an excess proportional to the sequences times the prompt's query blocks, plus a constant,
    is reproduced exactly between grid points), extrapolated past the last grid point along the last
    segment's slope (never a falling one), linear in ``c`` and held constant outside the measured contexts.
    Missing cells take the mean of their measured neighbours.
    """

    def __init__(self, b: np.ndarray, n: np.ndarray, c: np.ndarray, excess_s: np.ndarray) -> None:
        gb, gn, gc = (np.unique(np.asarray(x, float)) for x in (b, n, c))
        v = np.full((len(gb), len(gn), len(gc)), np.nan)
        v[np.searchsorted(gb, b), np.searchsorted(gn, n), np.searchsorted(gc, c)] = excess_s
        for _ in range(v.size):  # fill holes from measured neighbours along any axis
            holes = np.argwhere(~np.isfinite(v))
            if len(holes) == 0:
                break
            for idx in holes:
                near = []
                for ax in range(3):
                    for d in (-1, 1):
                        j = list(idx)
                        j[ax] += d
                        if 0 <= j[ax] < v.shape[ax] and np.isfinite(v[tuple(j)]):
                            near.append(v[tuple(j)])
                if near:
                    v[tuple(idx)] = float(np.mean(near))
        if not np.isfinite(v).all():
            raise ValueError("MixedExcess: no measured cell")
        self.gb, self.gn, self.gc = gb.tolist(), gn.tolist(), gc.tolist()
        self.v = v

    @staticmethod
    def _axis(g: list[float], x: float) -> tuple[int, int, float]:
        """Bracketing indices and weight; the weight runs past 1 beyond the last point (extrapolation) and is
        clamped at 0 before the first."""
        if len(g) == 1:
            return 0, 0, 0.0
        if x <= g[0]:
            return 0, 1, 0.0
        i = min(bisect.bisect_right(g, x) - 1, len(g) - 2)
        return i, i + 1, (x - g[i]) / (g[i + 1] - g[i])

    def _plane(self, k: int, b: float, n: float) -> float:
        """Value at (b, n) on the k-th context plane: bilinear, extrapolated past the top with rising slopes."""
        v = self.v[:, :, k]
        i0, i1, wb = self._axis(self.gb, b)
        j0, j1, wn = self._axis(self.gn, n)

        def along_n(i: int) -> float:
            lo, hi = v[i, j0], v[i, j1]
            if wn > 1.0:
                return float(hi + max(hi - lo, 0.0) * (wn - 1.0))
            return float(lo + wn * (hi - lo))

        lo, hi = along_n(i0), along_n(i1)
        if wb > 1.0:
            return hi + max(hi - lo, 0.0) * (wb - 1.0)
        return lo + wb * (hi - lo)

    def __call__(self, b: float, n: float, c: float) -> float:
        """Excess seconds per layer for ``b`` other sequences, longest prompt ``n``, mean decode context ``c``."""
        gc = self.gc
        if len(gc) == 1 or c <= gc[0]:
            return self._plane(0, b, n)
        if c >= gc[-1]:
            return self._plane(len(gc) - 1, b, n)
        k = bisect.bisect_right(gc, c) - 1
        w = (c - gc[k]) / (gc[k + 1] - gc[k])
        return (1 - w) * self._plane(k, b, n) + w * self._plane(k + 1, b, n)


def mixed_excess_from(full: pd.DataFrame) -> MixedExcess | None:
    """The table from a profile's whole-GPU ``attn_mixed`` and ``attn_mixed_parts`` rows, or None without them."""
    keys = ["batch", "tokens", "context"]
    one = full[full["op"] == "attn_mixed"].groupby(keys)["time_s_median"].median()
    two = full[full["op"] == "attn_mixed_parts"].groupby(keys)["time_s_median"].median()
    both = pd.concat({"one": one, "two": two}, axis=1).dropna()
    if both.empty:
        return None
    idx = both.index.to_frame(index=False)
    return MixedExcess(idx["batch"].to_numpy(), idx["tokens"].to_numpy(), idx["context"].to_numpy(),
                       (both["one"] - both["two"]).to_numpy())


def is_mixed(new_tokens: list[int], n_decodes: int) -> bool:
    """A step packs prompts (or chunks) with decoding sequences."""
    return bool(new_tokens) and n_decodes > 0


def median_or_zero(xs: list[float]) -> float:
    """Median of ``xs`` (seconds), 0 when empty or not finite."""
    m = float(np.median(xs)) if xs else 0.0
    return m if math.isfinite(m) else 0.0
