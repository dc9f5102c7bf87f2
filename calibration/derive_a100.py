"""Derive an A100-80GB profile from a measured H200 profile (no A100 was available: marked ``derived``).

    python calibration/derive_a100.py calibration/profiles/h200__mixtral-8x7b.parquet

Method (each row of the H200 profile):
  * ceilings: the A100's bf16 GEMM rate and HBM bandwidth are its datasheet figures (312 TFLOP/s,
    2,039 GB/s) times the efficiency the H200 run reached against its own datasheet (measured GEMM / 989
    TFLOP/s, measured copy / 4,800 GB/s);
  * device ops: each op keeps the H200's measured/floor gap. With floor = max(flops / GEMM rate, bytes /
    copy bandwidth) on each GPU and the op's fixed cost o (the smallest measured-minus-floor over its
    grid: launches, not scaled), ``t_A100 = o + (t_H200 − o) · floor_A100 / floor_H200``;
  * host link: PCIe Gen4 x16 instead of Gen5: each copy keeps its efficiency against the plain copy of its
    kind, scaled to the A100's pinned 25 GB/s and pageable 10 GB/s (moesim.specs);
  * slices: the H200's green-context slowdown at SM fraction s/132 is applied at the A100's SM count
    round(s/132 · 108);
  * whole-model ``step`` rows: the A100 composition of the derived ops plus the H200's measured residual
    over its own composition (host-side launch gaps do not scale with the GPU);
  * the metadata says ``derived: true`` with this method; the simulator, NOTES.md and the docs show it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moesim.calibrate.floors import floor_table
from moesim.calibrate.work import op_work
from moesim.cost.base import ExpertGroup, Residency, SeqWork
from moesim.cost.profile import ProfileCost, ProfileCostConfig
from moesim.formats.profile import Row, frame_to_rows, profile_stem, read_profile, write_profile
from moesim.specs import get_gpu, get_model

H200_PEAK_FLOPS, H200_PEAK_BPS = 989e12, 4800e9


def derive(src: Path, out_dir: Path) -> Path:
    """Write ``a100-80gb__<model>.parquet`` (+ json) next to ``out_dir`` from the H200 profile ``src``."""
    df, meta = read_profile(src)
    if meta.get("gpu") != "h200" or meta.get("derived"):
        raise SystemExit(f"{src}: expected a measured h200 profile, got gpu={meta.get('gpu')} derived={meta.get('derived')}")
    a100 = get_gpu("a100-80gb")
    model = get_model(meta["model"])
    sms_h, sms_a = int(meta["sms"]), a100.sms
    P_h, B_h = float(meta["ceiling_gemm_flops"]), float(meta["ceiling_copy_Bps"])
    P_a = a100.bf16_flops * P_h / H200_PEAK_FLOPS
    B_a = a100.hbm_Bps * B_h / H200_PEAK_BPS
    link = meta.get("host_link", {})
    execution = str(meta.get("execution", "eager"))
    ok = df[df["status"] == "ok"]
    full = ok[ok["sms"] == sms_h]
    fl = floor_table(df, meta)
    fixed = {op: float(max(0.0, (g["time_s_median"] - g["floor_s"]).min())) for op, g in fl.groupby("op")}

    def device_time(op: str, b: int, t: int, c: int, th: float) -> float:
        w = op_work(model, op, b, t, c)
        fh, fa = max(w.flops / P_h, w.bytes_ / B_h), max(w.flops / P_a, w.bytes_ / B_a)
        o = min(fixed.get(op, 0.0), th)
        return o + (th - o) * fa / fh

    plain = {1: link.get("plain_pinned_Bps"), 0: link.get("plain_pageable_Bps")}
    a_rate = {1: a100.h2d_pinned_Bps, 0: a100.h2d_pageable_Bps}
    rows: list[Row] = []
    for r in frame_to_rows(full):
        th = r.time_s_median
        if r.op in fixed:
            ta = device_time(r.op, r.batch, r.tokens, r.context, th)
        elif r.op == "ceil_d2d_copy":
            ta = 2 * r.nbytes / B_a
        elif r.op == "ceil_gemm":
            ta = 2 * r.tokens**3 / P_a
        elif r.op.startswith("h2d_") or r.op == "overlap_copy":
            p = 1 if r.pinned != 0 else 0
            eff = (r.nbytes / th) / plain[p] if plain[p] else 1.0
            ta = r.nbytes / (a_rate[p] * min(eff, 1.0))
        else:  # step / overlap_compute / overlap_both: redone from the composition below
            continue
        s = ta / th
        rows.append(Row(**{**{k: getattr(r, k) for k in r.__slots__}, "gpu": a100.name, "sms": sms_a,
                           "time_s_median": ta, "time_s_p10": r.time_s_p10 * s, "time_s_p90": r.time_s_p90 * s}))
    # slices: the H200 slowdown at the same SM fraction
    for r in frame_to_rows(ok[ok["sms"] < sms_h]):
        ref = full[(full["op"] == r.op) & (full["batch"] == r.batch) & (full["tokens"] == r.tokens)
                   & (full["context"] == r.context)]["time_s_median"]
        if ref.empty:
            continue
        base = device_time(r.op, r.batch, r.tokens, r.context, float(ref.iloc[0]))
        ratio = r.time_s_median / float(ref.iloc[0])
        rows.append(Row(**{**{k: getattr(r, k) for k in r.__slots__}, "gpu": a100.name,
                           "sms": round(r.sms / sms_h * sms_a), "time_s_median": base * ratio,
                           "time_s_p10": base * ratio, "time_s_p90": base * ratio}))
    ameta = {
        "gpu": a100.name, "model": model.name, "sms": sms_a, "derived": True,
        "derived_from": src.name, "derived_method": __doc__.split("Method")[1].strip(),
        "ceiling_gemm_flops": P_a, "ceiling_copy_Bps": B_a,
        "h200_efficiency": {"gemm": P_h / H200_PEAK_FLOPS, "copy": B_h / H200_PEAK_BPS},
        "host_link": {k: v * (a_rate[1] / plain[1] if "pinned" in k else a_rate[0] / plain[0])
                      for k, v in link.items() if k.endswith("_Bps") and plain[1] and plain[0]},
        "source_system": meta.get("system", {}), "emulated": meta.get("emulated", {}),
        "attention_backend": meta.get("attention_backend"), "moe_engine": meta.get("moe_engine"),
        "execution": execution,
        "command": "python calibration/derive_a100.py " + str(src),
    }
    out = out_dir / f"{profile_stem(a100.name, model.name, execution)}.parquet"
    write_profile(out, rows, ameta)
    # whole-model steps: A100 composition + the H200's measured residual over its own composition
    res = Residency(groups=(ExpertGroup(frozenset({0}), model.n_expert_positions, True),))
    h_cost = ProfileCost(ProfileCostConfig(path=str(src), step_residual="off"), model, get_gpu("h200"))
    a_cost = ProfileCost(ProfileCostConfig(path=str(out), step_residual="off"), model, a100)
    for r in frame_to_rows(full[full["op"] == "step"]):
        batch = tuple(SeqWork(0, r.tokens, r.context) for _ in range(r.batch))
        resid = r.time_s_median - h_cost.step(batch, res).total_s
        ta = a_cost.step(batch, res).total_s + resid
        rows.append(Row(**{**{k: getattr(r, k) for k in r.__slots__}, "gpu": a100.name, "sms": sms_a,
                           "time_s_median": ta, "time_s_p10": ta, "time_s_p90": ta}))
    write_profile(out, rows, ameta)
    return out


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("calibration/profiles/h200__mixtral-8x7b.parquet")
    out = derive(src, src.parent)
    d, m = read_profile(out)
    print(f"DERIVED profile written: {out} ({len(d)} rows); A100 ceilings: GEMM {m['ceiling_gemm_flops'] / 1e12:.0f} "
          f"TFLOP/s, copy {m['ceiling_copy_Bps'] / 1e12:.2f} TB/s; h200 efficiency {m['h200_efficiency']}")


if __name__ == "__main__":
    main()
