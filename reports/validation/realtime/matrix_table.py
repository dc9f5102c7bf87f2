"""Markdown table of a validation CSV written by ``python -m moesim.serve.validate`` (one row per run).

    python reports/validation/realtime/matrix_table.py DIR/validation_profile_mixed.csv [more.csv ...]

Prints, per run (``<policy>_<workload>``): measured / simulated mean turnaround and mean TTFT with their signed
errors ((sim − meas) / meas), the per-request median absolute errors, and whether each of the four is within 5%.
Several CSVs (e.g. two cost models) give one table each.
"""

from __future__ import annotations

import sys

import pandas as pd

ORDER = ("naive", "swap", "reconfig", "reconfig_fast", "multiplex", "mig", "dedicated", "fleet")
WORKLOADS = ("light", "saturated", "host")


def _key(run: str) -> tuple[int, int, str]:
    pol, _, wl = run.split("-")[0].rpartition("_")
    if run == "fleet":
        pol, wl = "fleet", ""
    return (ORDER.index(pol) if pol in ORDER else 99, WORKLOADS.index(wl) if wl in WORKLOADS else 9, run)


def table(path: str) -> str:
    """The markdown table of one validation CSV."""
    df = pd.read_csv(path)
    rows = ["| run | mean turnaround meas. / sim. | error | mean TTFT meas. / sim. | error | per-request median "
            "abs. error turnaround / TTFT | within 5% |", "|---|---|---:|---|---:|---|---|"]
    n_ok = 0
    for _, r in sorted(df.iterrows(), key=lambda kv: _key(kv[1]["run"])):
        errs = (r["mean_turnaround_s_error_pct"], r["mean_ttft_s_error_pct"], r["turnaround_ape_median_pct"],
                r["ttft_ape_median_pct"])
        ok = all(abs(e) <= 5.0 for e in errs)
        n_ok += ok
        rows.append(f"| {r['run']} | {r['mean_turnaround_s_measured']:.3f} / {r['mean_turnaround_s_simulated']:.3f} s "
                    f"| {errs[0]:+.1f}% | {r['mean_ttft_s_measured']:.3f} / {r['mean_ttft_s_simulated']:.3f} s "
                    f"| {errs[1]:+.1f}% | {errs[2]:.1f}% / {errs[3]:.1f}% | {'yes' if ok else 'no'} |")
    rows.append(f"\n{n_ok} of {len(df)} runs within 5% on all four figures (sim_cost: {df['sim_cost'].iloc[0]}).")
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    """Print one table per CSV."""
    if not argv:
        print(__doc__)
        return
    for p in argv:
        print(f"### {p}\n")
        print(table(p))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
