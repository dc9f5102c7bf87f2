"""Roofline costs carried over from a measured profile of another model on the same GPU (``derived``).

Where no profile ships for a GPU × model pair but one measured on that GPU for another model does, the
roofline model takes that profile's measured efficiencies instead of its defaults:

  * ``bw_efficiency``: one expert at one token (memory-bound) read its bytes at this share of the GPU's
    HBM bandwidth;
  * ``flops_efficiency``: one expert at the largest measured token count ran at this share of bf16 peak;
  * ``link_efficiency``: experts copied host→device (pinned) at this share of the GPU's pinned link;
  * ``layer_overhead_s``: per decoder layer and tenant, what the measured attention projections and router
    at one token take beyond their bytes at that bandwidth (fixed kernel costs).

The profile chosen is the measured (not itself derived) CUDA-graph profile on the GPU whose model's expert
size is closest (in log) to this model's. The result is marked derived: ``cost_provenance`` is
``derived`` and ``cost_source`` names the profile.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from moesim.specs import GPUSpec, ModelSpec


def measured_efficiencies(path: Path, gpu: GPUSpec) -> dict[str, float]:
    """Roofline efficiencies and per-layer overhead measured in one profile (see the module doc)."""
    from moesim.calibrate.work import op_work
    from moesim.formats.profile import read_profile
    from moesim.specs import get_model

    df, meta = read_profile(path)
    m = get_model(str(meta["model"]))
    ok = df[(df["status"] == "ok") & (df["sms"] == df["sms"].max())]

    def t(op: str, tokens: int | None = None) -> tuple[int, float]:
        rows = ok[ok["op"] == op].sort_values("tokens")
        row = rows.iloc[0] if tokens == 1 else rows.iloc[-1]
        return int(row["tokens"]), float(row["time_s_median"])

    _, t1 = t("expert_one", 1)
    bw = min(1.0, m.expert_bytes / t1 / gpu.hbm_Bps)
    T, tT = t("expert_one")
    fl = min(1.0, 2.0 * T * m.expert_params / tT / gpu.bf16_flops)
    link = dict(meta.get("host_link") or {})
    le = min(1.0, float(link.get("expert_pinned_Bps") or 0.95 * gpu.h2d_pinned_Bps) / gpu.h2d_pinned_Bps)
    over = 0.0
    for op in ("attn_proj", "router"):
        _, top = t(op, 1)
        over += max(0.0, top - op_work(m, op, 1, 1).bytes_ / (gpu.hbm_Bps * bw))
    return {"flops_efficiency": round(fl, 4), "bw_efficiency": round(bw, 4), "link_efficiency": round(le, 4),
            "layer_overhead_s": over}


def source_profile(model: ModelSpec, gpu: GPUSpec) -> Path | None:
    """The measured graphs profile on ``gpu`` of the model whose expert size is closest, or None."""
    import json

    from moesim.resources import profile_search_path
    from moesim.specs import MODEL_SPECS

    best: tuple[float, Path] | None = None
    for folder in profile_search_path():
        for p in sorted(Path(folder).glob(f"{gpu.name}__*.parquet")):
            stem = p.stem
            if stem.endswith(".eager") or ".validation" in stem:
                continue
            other = stem.split("__", 1)[1]
            if other == model.name or other not in MODEL_SPECS:
                continue
            meta_path = p.with_suffix(".json")
            try:
                if json.loads(meta_path.read_text()).get("derived", False):
                    continue
            except (OSError, ValueError):
                continue
            d = abs(math.log(MODEL_SPECS[other].expert_params / model.expert_params))
            if best is None or d < best[0]:
                best = (d, p)
    return best[1] if best else None


def derived_roofline_config(model: ModelSpec, gpu: GPUSpec) -> Any | None:
    """A ``RooflineCostConfig`` with the efficiencies of the closest measured profile on ``gpu`` (or None)."""
    from moesim.cost.roofline import RooflineCostConfig

    src = source_profile(model, gpu)
    if src is None:
        return None
    eff = measured_efficiencies(src, gpu)
    return RooflineCostConfig(derived_from=str(src), **eff)
