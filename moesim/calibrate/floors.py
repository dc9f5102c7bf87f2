"""Roofline floors of a profile's measured ops: flops and bytes over the ceilings the same run measured.

    python -m moesim.calibrate.floors profile=calibration/profiles/h200__mixtral-8x7b.parquet

prints, per op and shape, the measured time, the compute floor (flops / measured bf16 GEMM rate), the
memory floor (fewest bytes / measured device-copy bandwidth), and measured over the larger floor. Torch-free.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd

from moesim.calibrate.work import op_work
from moesim.errors import UserError, exit_on_user_error
from moesim.formats.profile import profile_model, read_profile

_DEVICE_OPS = ("attn_proj", "router", "attn_prefill", "attn_decode", "moe_grouped", "moe_loop", "expert_one",
               "lm_head", "embed")


def floor_table(df: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """Whole-GPU device ops with their two floors (seconds) and measured/floor."""
    m = profile_model(meta)
    P = float(meta.get("ceiling_gemm_flops") or np.nan)
    B = float(meta.get("ceiling_copy_Bps") or np.nan)
    d = df[(df["status"] == "ok") & df["op"].isin(_DEVICE_OPS) & (df["sms"] == int(meta.get("sms", 0)))].copy()
    w = [op_work(m, op, b, t, c) for op, b, t, c in d[["op", "batch", "tokens", "context"]].itertuples(
        index=False, name=None)]
    d["flops"] = [x.flops for x in w]
    d["bytes"] = [x.bytes_ for x in w]
    d["flops_floor_s"] = d["flops"] / P
    d["bytes_floor_s"] = d["bytes"] / B
    d["floor_s"] = d[["flops_floor_s", "bytes_floor_s"]].max(axis=1)
    d["over_floor"] = d["time_s_median"] / d["floor_s"]
    d["bound"] = np.where(d["flops_floor_s"] >= d["bytes_floor_s"], "compute", "memory")
    return d


def markdown(d: pd.DataFrame, per_op: int = 4) -> str:
    """A markdown table: for each op, ``per_op`` shapes spread over its grid."""
    lines = ["| op | batch | tokens | context | measured µs | flops floor µs | bytes floor µs | measured/floor "
             "| bound |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for op in _DEVICE_OPS:
        g = d[d["op"] == op].sort_values(["batch", "tokens", "context"])
        if g.empty:
            continue
        idx = sorted(set(np.linspace(0, len(g) - 1, min(per_op, len(g))).round().astype(int)))
        for r in g.iloc[idx].itertuples():
            lines.append(f"| {op} | {r.batch} | {r.tokens} | {r.context} | {1e6 * r.time_s_median:,.1f} | "
                         f"{1e6 * r.flops_floor_s:,.1f} | {1e6 * r.bytes_floor_s:,.1f} | {r.over_floor:.2f} | "
                         f"{r.bound} |")
    return "\n".join(lines)


def slice_table(df: pd.DataFrame, meta: dict) -> str:
    """Markdown: each slice point's time over the whole-GPU time of the same shape, by SM count."""
    full_sms = int(meta.get("sms", 0))
    full = df[(df["status"] == "ok") & (df["sms"] == full_sms)].set_index(["op", "batch", "tokens", "context"])
    sl = df[(df["status"] == "ok") & (df["sms"] < full_sms)]
    rows = []
    for r in sl.itertuples():
        k = (r.op, r.batch, r.tokens, r.context)
        if k in full.index:
            rows.append((*k, r.sms, r.time_s_median / float(full.loc[k, "time_s_median"])))
    if not rows:
        return "(no slice rows)"
    t = pd.DataFrame(rows, columns=["op", "batch", "tokens", "context", "sms", "ratio"]).pivot_table(
        index=["op", "batch", "tokens", "context"], columns="sms", values="ratio")
    cols = list(t.columns)
    lines = ["| op | batch | tokens | context | " + " | ".join(f"{c} SMs" for c in cols) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(cols)]
    for k, r in t.iterrows():
        lines.append("| " + " | ".join(str(x) for x in k) + " | " + " | ".join(f"{v:.2f}×" for v in r) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class FloorsConfig:
    """Command line of ``python -m moesim.calibrate.floors``.

    Attributes:
        profile: a calibrated profile (.parquet, with its .json beside it).
        per_op: rows shown per op (≥ 1).
        slices: also print the slowdown on green-context slices.
    """

    profile: str = ""
    per_op: int = 4
    slices: bool = False


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """``profile=PATH [per_op=N] [slices=true]``: print the floors table (and the slice slowdowns)."""
    from moesim.cli import parse_key_values

    cfg = parse_key_values(sys.argv[1:] if argv is None else argv, FloorsConfig,
                           prog="python -m moesim.calibrate.floors",
                           summary="The floors of a profile: each op's measured time against its roofline.",
                           examples=("python -m moesim.calibrate.floors "
                                     "profile=calibration/profiles/h200__mixtral-8x7b.parquet slices=true",))
    if not cfg.profile:
        raise UserError("profile=: give a profile, e.g. profile=calibration/profiles/h200__mixtral-8x7b.parquet")
    if cfg.per_op < 1:
        raise UserError(f"per_op={cfg.per_op}: must be an integer ≥ 1")
    args = {"profile": cfg.profile}
    df, meta = read_profile(args["profile"])
    d = floor_table(df, meta)
    print(f"ceilings measured in the same run: bf16 GEMM {meta.get('ceiling_gemm_flops', float('nan')) / 1e12:.0f} "
          f"TFLOP/s, device copy {meta.get('ceiling_copy_Bps', float('nan')) / 1e12:.2f} TB/s (read + write)"
          + ("  [DERIVED profile]" if meta.get("derived") else ""))
    print(markdown(d, cfg.per_op))
    if cfg.slices:
        print(f"\nslowdown on green-context slices (whole GPU = {meta.get('sms')} SMs):")
        print(slice_table(df, meta))


if __name__ == "__main__":
    main()
