"""MIG-sized compute slices emulated with CUDA green contexts (the card's MIG layout is never touched).

A green context limits the SMs a kernel may use; it does not partition memory bandwidth or L2 (a 16-SM
context still pulls far more than a 1g slice's eighth of HBM). The profile therefore records compute
scaling only; the ``profile`` cost model bounds memory-bound time by the slice's memory-slice fraction.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from moesim.specs import GPU_SPECS

if TYPE_CHECKING:
    from moesim.calibrate.suite import Calibration


#: SMs a green context gets are a multiple of this on compute capability 9.x (seen on the H200: 26 and 60
#: requested SMs timed exactly as 32 and 64).
SM_GRANULARITY = {9: 8}


def effective_sms(requested: int, total: int, major: int) -> int:
    """SMs a green context of ``requested`` SMs really gets (rounded up to the granularity, at most all)."""
    g = SM_GRANULARITY.get(major, 1)
    return min(total, -(-requested // g) * g)


def slice_sm_counts(cal: Calibration) -> dict[int, int]:
    """Requested → effective SM counts to emulate: the config's, else the GPU's MIG profiles' (below all)."""
    asked = cal.cfg.sm_counts()
    if not asked:
        spec = GPU_SPECS.get(cal.gpu)
        asked = tuple(sorted({p.sms for p in spec.mig_profiles})) if spec else (cal.sms // 8, cal.sms // 4,
                                                                               cal.sms // 2)
    major = int(str(cal.system.get("compute_capability", "0.0")).split(".")[0])
    return {s: effective_sms(s, cal.sms, major) for s in asked if s < cal.sms}


def measure_slices(cal: Calibration) -> None:
    """Time ``grids.slice_points`` inside a green context of each SM count."""
    from torch.cuda.green_contexts import GreenContext

    wanted = slice_sm_counts(cal)
    counts = sorted({e for e in wanted.values() if e < cal.sms})
    cal.meta["emulated"]["green_context_effective_sms"] = {str(k): v for k, v in wanted.items()}
    cal.meta["emulated"]["slices"] = (
        f"CUDA green contexts at SM counts {counts} (requested → effective: {wanted}; MIG mode left as found: "
        f"{cal.system.get('nvml', {}).get('mig_mode', '?') if isinstance(cal.system.get('nvml'), dict) else '?'}); "
        "green contexts partition SMs, not memory bandwidth or L2: the cost model scales memory-bound time "
        "by the slice's memory-slice fraction (bw_fraction)")
    idx = cal.device.index or 0
    g = cal.grids
    moe_layers = cal._layers(g.slice_layers)
    all_layers = list(range(min(g.slice_layers, cal.spec.n_layers)))
    eng = cal.eng
    assert eng is not None
    for sms in tqdm(counts, desc="slices", file=sys.stdout):
        try:
            try:
                ctx = GreenContext.create(num_sms=sms, device_id=idx)
            except TypeError:
                ctx = GreenContext.create(sms, idx)
        except Exception as exc:  # not supported by driver/torch: record and go on
            cal.rec.errors.append(f"green context {sms} SMs: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        ctx.set_context()
        cal.in_slice = True
        try:
            stream = ctx.Stream() if hasattr(ctx, "Stream") else None
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                for op, b, n, c in g.slice_points:
                    if op in ("attn_prefill", "attn_decode"):
                        setup = cal._attn_setup([(n, c)] * b, n_bufs_max=4)
                    elif op == "lm_head":
                        def setup(n: int = n):
                            x = eng.random_hidden(n)
                            return (lambda: eng.lm_head(x, 0)), 1
                    else:
                        setup = cal._dense_setup(op, n, all_layers if op == "attn_proj" else moe_layers)
                    cal.point(op, setup, sms=sms, batch=b, tokens=n, context=c,
                              per_layer=0 if op == "lm_head" else 1, reps=(3, 8))
                torch.cuda.synchronize()
        finally:
            cal.in_slice = False
            ctx.pop_context()
