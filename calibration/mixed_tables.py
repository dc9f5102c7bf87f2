"""The tables of calibration/NOTES.md's section on mixed steps (2026-11-30), from the committed files.

    python calibration/mixed_tables.py qwen3-30b-a3b olmoe-1b-7b qwen1.5-moe-a2.7b mixtral-8x7b

For each model: the profile's new terms (concatenations, the mixed attention call's excess, the fixed costs
fitted on the grid's multi-tenant steps), the grid's multi-tenant steps against the composition, and the
held-out errors, old composition (``tenant_terms=off``) against new, for each held-out file present:
``call3`` (the first held-out set as measured before, routing aliased across tenants), the first set re-timed
and the set drawn with ``heldout_seed=1``. Median and max absolute error, overall and per batch kind.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from moesim.calibrate.grids import spread_contexts
from moesim.calibrate.validate import gpu_spec_for, heldout_path, report
from moesim.cost.base import ExpertGroup, Residency, SeqWork
from moesim.cost.profile import ProfileCost, ProfileCostConfig
from moesim.formats.profile import profile_model, read_profile

PROFILES = Path(__file__).resolve().parent / "profiles"
SETS = (("call3", "first set, measured 2026-11-30 call 3 (routing aliased across tenants)"),
        ("", "first set (`.validation.parquet`)"),
        ("seed1", "new set drawn with heldout_seed=1"))


def _err(e: np.ndarray) -> str:
    a = np.abs(e)
    return f"{np.median(a):.2f} % / {a.max():.2f} %" if len(a) else "—"


def terms(m: str) -> None:
    p = PROFILES / f"h200__{m}.parquet"
    df, meta = read_profile(p)
    model = profile_model(meta)
    cost = ProfileCost(ProfileCostConfig(path=str(p)), model, gpu_spec_for(meta))  # type: ignore[arg-type]
    L = model.n_layers
    print(f"\n### {m}: the new terms (per layer unless said)\n")
    if cost.concat:
        cq, cr = cost.concat.get("concat_qkv"), cost.concat.get("concat_route")
        print("| tenants × tokens | concat_qkv µs | concat_route µs |\n|---|---:|---:|")
        for n, T in ((2, 64), (3, 64), (3, 512), (3, 4096), (8, 512)):
            print(f"| {n} × {T} | {1e6 * cq.scalar(n, T):.1f} | {1e6 * cr.scalar(n, T):.1f} |" if cq and cr else "")
    ex = cost.mixed_excess
    if ex is not None:
        full = df[(df["status"] == "ok") & (df["op"] == "attn_mixed_parts")]
        print("\n| decodes | prompt | mean ctx | one call µs | prefill + decode calls µs | excess µs |\n"
              "|---:|---:|---:|---:|---:|---:|")
        one = df[(df["status"] == "ok") & (df["op"] == "attn_mixed")].set_index(["batch", "tokens", "context"])
        for r in full.itertuples():
            if (r.batch, r.tokens) in ((1, 16), (1, 4096), (16, 128), (16, 1024), (64, 1024), (256, 128),
                                       (256, 1024), (256, 4096), (64, 4096)):
                t1 = float(one.loc[(r.batch, r.tokens, r.context), "time_s_median"])
                print(f"| {r.batch} | {r.tokens} | {r.context} | {1e6 * t1:,.1f} | {1e6 * r.time_s_median:,.1f} | "
                      f"{1e6 * (t1 - r.time_s_median):+,.1f} |")
    print(f"\nfixed: {1e6 * cost.tenant_fixed_s:+.1f} µs per extra tenant per layer "
          f"({1e3 * L * cost.tenant_fixed_s:+.2f} ms per step), {1e6 * cost.mixed_fixed_s:+.1f} µs per mixed step per "
          f"layer ({1e3 * L * cost.mixed_fixed_s:+.2f} ms per step)")
    steps = df[(df["status"] == "ok") & (df["op"] == "step_mixed")]
    if not steps.empty:
        nt = int(meta.get("mixed_step_tenants", 3))
        res = Residency(groups=(ExpertGroup(frozenset(range(nt)), model.n_expert_positions, True),))
        off = ProfileCost(ProfileCostConfig(path=str(p), tenant_terms="off"), model, gpu_spec_for(meta))  # type: ignore[arg-type]
        print(f"\nGrid steps over {nt} tenants (training rows; the fixed costs are fitted on them):\n\n"
              "| prompt | decodes | mean ctx | measured ms | old composition | new composition |\n"
              "|---:|---:|---:|---:|---:|---:|")
        for r in steps.itertuples():
            b = tuple(([SeqWork(0, r.tokens, 0)] if r.tokens else []) +
                      [SeqWork(i % nt, 1, c) for i, c in enumerate(spread_contexts(r.batch, r.context))])
            t_old, t_new = off.step(b, res).total_s, cost.step(b, res).total_s
            print(f"| {r.tokens} | {r.batch} | {r.context} | {1e3 * r.time_s_median:.2f} | "
                  f"{100 * (t_old / r.time_s_median - 1):+.1f} % | {100 * (t_new / r.time_s_median - 1):+.1f} % |")


def heldout(models: list[str]) -> None:
    print("\n### Held-out whole-step error, |error| median / max (old composition → new)\n")
    print("| model | held-out set | all 18 | decode | prefill | mixed |\n|---|---|---|---|---|---|")
    for m in models:
        p = PROFILES / f"h200__{m}.parquet"
        for tag, what in SETS:
            if not heldout_path(p, tag).is_file():
                continue
            cells = []
            old, new = (report(p, tag, tenant_terms=t) for t in ("off", "auto"))
            old, new = old[old["status"] == "ok"], new[new["status"] == "ok"]
            for kind in (None, "decode", "prefill", "mixed"):
                o = old if kind is None else old[old["kind"] == kind]
                n = new if kind is None else new[new["kind"] == kind]
                cells.append(f"{_err(o['error_pct'].to_numpy())} → **{_err(n['error_pct'].to_numpy())}**")
            print(f"| {m} | {what} ({len(new)}) | " + " | ".join(cells) + " |")


def per_batch(m: str, tag: str) -> None:
    p = PROFILES / f"h200__{m}.parquet"
    if not heldout_path(p, tag).is_file():
        return
    old, new = (report(p, tag, tenant_terms=t) for t in ("off", "auto"))
    print(f"\n{m}, held-out {tag or 'first set'}:\n\n| batch | measured ms | old | new |\n|---|---:|---:|---:|")
    for o, n in zip(old.itertuples(), new.itertuples(), strict=True):
        print(f"| {o.description} | {1e3 * o.time_s_median:.2f} | {o.error_pct:+.1f} % | {n.error_pct:+.1f} % |")


if __name__ == "__main__":
    ms = sys.argv[1:] or ["qwen3-30b-a3b", "olmoe-1b-7b", "qwen1.5-moe-a2.7b"]
    for m in ms:
        terms(m)
    heldout(ms)
    for m in ms:
        for tag, _ in SETS:
            per_batch(m, tag)
