"""``python -m moesim.specs [models|gpus] [--csv]`` (or ``what=models csv=true``): every shipped model and GPU as a table (or CSV).

Model columns: layers (decoder), MoE layers, dense layers, routed experts, top-k, shared experts,
total and active parameters (billions; active counts every non-expert parameter and top-k experts per MoE
layer, both embedding matrices included), the experts' weight format, bytes of one expert (MB, scales
included), of one non-expert set (GB) and of KV cache per token of context (KB).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from typing import Any

from moesim.cli import parse_key_values
from moesim.errors import exit_on_user_error
from moesim.specs.gpus import GPU_SPECS, GPUSpec
from moesim.specs.models import MODEL_SPECS, ModelSpec


def _amount(x: float, digits: int) -> float:
    """``round(x, digits)``, or 3 significant figures where that would print 0.0 (the tiny test model:
    0.000452 B parameters, not 0.0)."""
    r = round(x, digits)
    return r if r != 0 or x == 0 else float(f"{x:.3g}")


def model_row(m: ModelSpec) -> dict[str, Any]:
    """One model's table row (units in the column names)."""
    # "auto" is the model's own dtype_bytes per weight: show what that is, as the other rows do (bf16, fp8, …)
    fmt = m.expert_format if m.expert_format != "auto" else {2: "bf16", 4: "fp32", 1: "8-bit"}.get(
        m.dtype_bytes, f"{m.dtype_bytes} B/weight")
    return {
        "model": m.name, "arch": m.arch, "layers": m.n_layers, "moe_layers": m.n_decoder_moe_layers,
        "dense_layers": m.n_layers - m.n_decoder_moe_layers, "experts": m.n_experts, "top_k": m.top_k,
        "shared_experts": m.n_shared_experts, "total_params_B": _amount(m.total_params / 1e9, 3),
        "active_params_B": _amount(m.active_params_per_token / 1e9, 3), "expert_format": fmt,
        "expert_MB": _amount(m.expert_bytes / 1e6, 2), "nonexpert_GB": _amount(m.nonexpert_bytes / 1e9, 3),
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


@dataclass(frozen=True)
class SpecsConfig:
    """What to print.

    Attributes:
        what: all, models or gpus (also given as a bare argument).
        csv: CSV instead of aligned tables.
    """

    what: str = "all"
    csv: bool = False


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    """Print the tables."""
    a = parse_key_values(sys.argv[1:] if argv is None else argv, SpecsConfig, prog="python -m moesim.specs",
                         summary=" ".join(__doc__.split("\n\n")[0].replace("``", "").split()),
                         positional="what", choices={"what": ("all", "models", "gpus")},
                         examples=("python -m moesim.specs models --csv", "python -m moesim.specs gpus"))
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
