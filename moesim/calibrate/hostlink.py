"""Host-link measurements: plain copies, a tenant's whole non-expert set, per layer, one expert, overlap.

The consolidated layout keeps every tenant's non-expert set in pinned host memory as one arena whose
per-layer chunks lie in layer order (attention, norms, router of layer 0, 1, …; then embeddings, lm_head,
final norm), so a swap is either one large copy or one copy per layer on a side stream that a prefill can
hide behind. Pageable copies are measured for comparison (what a plain ``torch.load`` would give).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from moesim.calibrate.suite import Calibration


def _chunks(cal: Calibration) -> list[tuple[int, int]]:
    """Element ranges of the per-layer chunks and of the rest, in arena order."""
    eng = cal.eng
    assert eng is not None
    w = eng.tenants[0]
    bounds, at = [], 0
    for layer in range(eng.spec.n_layers):
        n = sum(t.numel() for t in (w.attn_norm[layer], w.wqkv[layer], w.wo[layer], w.ffn_norm[layer],
                                    w.router[layer], w.dense_in[layer], w.dense_out[layer]) if t is not None)
        bounds.append((at, at + n))
        at += n
    rest = sum(t.numel() for t in (w.embed, w.final_norm)) + (0 if w.lm_head is w.embed else w.lm_head.numel())
    bounds.append((at, at + rest))
    return bounds


def measure_host_link(cal: Calibration) -> None:
    """Adds h2d_* and overlap_* rows and a ``host_link`` summary to the metadata."""
    eng, dev, g = cal.eng, cal.device, cal.grids
    assert eng is not None
    pin = cal.cuda
    dt = torch.bfloat16
    chunks = _chunks(cal)
    n_el = chunks[-1][1]
    set_bytes = n_el * 2
    d_arena = torch.empty(n_el, dtype=dt, device=dev).normal_()
    hosts = {1: torch.empty(n_el, dtype=dt, pin_memory=True)} if pin else {}
    hosts[0] = torch.empty(n_el, dtype=dt)
    for h in hosts.values():
        h.copy_(d_arena)
    summary: dict[str, Any] = {"nonexpert_set_bytes": set_bytes, "layer_chunks": len(chunks)}

    def copy_whole(h: torch.Tensor) -> Callable[[], object]:
        return lambda: d_arena.copy_(h, non_blocking=True)

    def copy_layers(h: torch.Tensor) -> Callable[[], object]:
        def fn() -> None:
            for a, b in chunks:
                d_arena[a:b].copy_(h[a:b], non_blocking=True)
        return fn

    for pinned, plain in ((1, g.plain_pinned_bytes), (0, g.plain_pageable_bytes)):
        if pinned and not pin:
            continue

        def plain_setup(pinned: int = pinned, plain: int = plain) -> tuple[Callable[[], object], int]:
            src = torch.empty(plain // 2, dtype=dt, pin_memory=bool(pinned))
            src.copy_(d_arena[: plain // 2] if plain // 2 <= n_el else torch.ones(plain // 2, dtype=dt))
            dst = torch.empty(plain // 2, dtype=dt, device=dev)
            return (lambda: dst.copy_(src, non_blocking=True)), 1

        t = cal.point("h2d_plain", plain_setup, pinned=pinned, nbytes=plain, reps=(3, 8))
        if t:
            summary[f"plain_{'pinned' if pinned else 'pageable'}_Bps"] = plain / t.median_s
    ex_el = min(eng.spec.expert_bytes // 2, n_el)
    placeholder = torch.empty(ex_el, dtype=dt, device=dev)
    for pinned, h in sorted(hosts.items(), reverse=True):
        name = "pinned" if pinned else "pageable"
        t = cal.point("h2d_nonexpert_set", lambda h=h: (copy_whole(h), 1), pinned=pinned, nbytes=set_bytes,
                      reps=(3, 6))
        if t:
            summary[f"set_{name}_Bps"] = set_bytes / t.median_s
        t = cal.point("h2d_nonexpert_layers", lambda h=h: (copy_layers(h), 1), pinned=pinned, nbytes=set_bytes,
                      reps=(3, 6))
        if t:
            summary[f"set_by_layer_{name}_Bps"] = set_bytes / t.median_s
        src = h[:ex_el]
        t = cal.point("h2d_expert", lambda s=src: ((lambda: placeholder.copy_(s, non_blocking=True)), 1),
                      pinned=pinned, nbytes=ex_el * 2, reps=(3, 10))
        if t:
            summary[f"expert_{name}_Bps"] = ex_el * 2 / t.median_s
    if "set_pinned_Bps" in summary and "plain_pinned_Bps" in summary:
        summary["set_over_plain_pinned"] = summary["set_pinned_Bps"] / summary["plain_pinned_Bps"]
    if cal.cuda:
        _overlap(cal, hosts[1], d_arena, chunks, set_bytes, summary)
    cal.meta["host_link"] = {**cal.meta.get("host_link", {}), **summary}  # resumed points keep their figures
    print("host link: " + ", ".join(f"{k} {v / 1e9:.2f} GB/s" if k.endswith("Bps") else f"{k} {v:.3g}"
                                    for k, v in summary.items()), file=sys.stdout, flush=True)


def _overlap(cal: Calibration, host: torch.Tensor, d_arena: torch.Tensor, chunks: list[tuple[int, int]],
             set_bytes: int, summary: dict[str, Any]) -> None:
    """Prefill on the main stream while the set streams in layer by layer on a side copy stream."""
    from moesim.calibrate.engine import KVCache

    eng = cal.eng
    assert eng is not None
    side = torch.cuda.Stream()

    def copy_on_side() -> None:
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for a, b in chunks:
                d_arena[a:b].copy_(host[a:b], non_blocking=True)
        torch.cuda.current_stream().wait_stream(side)

    tc = cal.point("overlap_copy", lambda: (copy_on_side, 1), pinned=1, nbytes=set_bytes, reps=(3, 6))
    for n in cal.grids.overlap_tokens:
        si = eng.make_inputs([(0, n, 0)])
        cache = KVCache(eng.spec, si.meta.kv_tokens, cal.device, eng.dtype, eng.gen)

        step = lambda si=si, cache=cache: eng.step(si, cache)  # noqa: E731
        if cal.graphs:
            step = cal.capture(step, f"overlap step {n}")

        def compute(step: Callable[[], object] = step) -> None:
            step()

        def both(step: Callable[[], object] = step) -> None:
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for a, b in chunks:
                    d_arena[a:b].copy_(host[a:b], non_blocking=True)
            step()
            torch.cuda.current_stream().wait_stream(side)

        tp = cal.point("overlap_compute", lambda f=compute: (f, 1), tokens=n, reps=(3, 6))
        tb = cal.point("overlap_both", lambda f=both: (f, 1), tokens=n, pinned=1, nbytes=set_bytes, reps=(3, 6))
        if tc and tp and tb:
            summary[f"overlap_hidden_fraction_prefill_{n}"] = (tc.median_s + tp.median_s - tb.median_s) / tc.median_s
