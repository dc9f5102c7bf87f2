"""``python -m moesim.specs [--csv] [models|gpus]``: every shipped model and GPU as a table (or CSV).

Model columns: layers (decoder), MoE layers, dense layers, routed experts, top-k, shared experts,
total and active parameters (billions; active counts every non-expert parameter and top-k experts per MoE
layer, both embedding matrices included), the experts' weight format, bytes of one expert (MB, scales
included), of one non-expert set (GB) and of KV cache per token of context (KB).
"""

from __future__ import annotations

import argparse
import csv
import sys
from typing import Any

from moesim.errors import exit_on_user_error
from moesim.specs.gpus import GPU_SPECS, GPUSpec
from moesim.specs.models import MODEL_SPECS, ModelSpec


def model_row(m: ModelSpec) -> dict[str, Any]:
    """One model's table row (units in the column names)."""
    return {
        "model": m.name, "arch": m.arch, "layers": m.n_layers, "moe_layers": m.n_decoder_moe_layers,
        "dense_layers": m.n_layers - m.n_decoder_moe_layers, "experts": m.n_experts, "top_k": m.top_k,
        "shared_experts": m.n_shared_experts, "total_params_B": round(m.total_params / 1e9, 3),
        "active_params_B": round(m.active_params_per_token / 1e9, 3), "expert_format": m.expert_format,
        "expert_MB": round(m.expert_bytes / 1e6, 2), "nonexpert_GB": round(m.nonexpert_bytes / 1e9, 3),
        "kv_KB_per_token": round(m.kv_bytes_per_token / 1e3, 2), "attention": m.attention,
    }


def gpu_row(g: GPUSpec) -> dict[str, Any]:
    """One GPU's table row (units in the column names)."""
    return {
        "gpu": g.name, "status": g.status, "sms": g.sms, "memory_GiB": round(g.memory_bytes / 2**30, 1),
        "hbm_TBps": g.hbm_Bps / 1e12, "bf16_TFLOPs": g.bf16_flops / 1e12, "fp8_TFLOPs": g.fp8_flops / 1e12,
        "host_link": g.pcie, "h2d_pinned_GBps": g.h2d_pinned_Bps / 1e9,
        "mig_profiles": " ".join(p.name for p in g.mig_profiles) or "none",
    }


def _print_table(rows: list[dict[str, Any]], out: Any) -> None:
    cols = list(rows[0])
    cells = [[str(r[c]) for c in cols] for r in rows]
    w = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    out.write("  ".join(c.ljust(w[i]) for i, c in enumerate(cols)).rstrip() + "\n")
    for x in cells:
        out.write("  ".join(v.ljust(w[i]) for i, v in enumerate(x)).rstrip() + "\n")


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    """Print the tables."""
    ap = argparse.ArgumentParser(prog="python -m moesim.specs", description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", choices=("all", "models", "gpus"), default="all")
    ap.add_argument("--csv", action="store_true", help="CSV instead of aligned tables")
    a = ap.parse_args(argv)
    tables = []
    if a.what in ("all", "models"):
        tables.append([model_row(m) for m in MODEL_SPECS.values()])
    if a.what in ("all", "gpus"):
        tables.append([gpu_row(g) for g in GPU_SPECS.values()])
    for k, rows in enumerate(tables):
        if k:
            sys.stdout.write("\n")
        if a.csv:
            w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        else:
            _print_table(rows, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
