"""Torch-free facts about the fused MoE kernel's tile regimes, and the engine-tuning file the benchmark writes.

``python -m moesim.kernels.bench`` writes ``engine_tuning.json`` (the tiles it picked per token regime, the
measured fused/grouped crossover, the faster prompt attention); ``python -m moesim.calibrate ...
moe_tuning=PATH`` runs the engine it calibrates with exactly those, so a profile describes the engine the
benchmark timed. ``load_tuning`` checks the file without torch (the calibrator's argument check).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moesim.errors import UserError

#: Number of token regimes in ``moesim.kernels.fused_moe.CONFIGS`` (and ``CANDIDATES``), kept equal by a test.
N_REGIMES = 5
#: ``MoEConfig`` fields (all positive integers).
CONFIG_FIELDS = ("bm", "gu_bn", "gu_bk", "gu_warps", "gu_stages", "dn_bn", "dn_bk", "dn_warps", "dn_stages", "tma")
PREFILL_ATTNS = ("flash", "cudnn")


def _pow2(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1 and v & (v - 1) == 0


def check_tuning(t: Any, where: str) -> dict:
    """Validate a tuning record (see the module doc); one ``UserError`` line naming the field otherwise."""
    if not isinstance(t, dict):
        raise UserError(f"{where}: expected a JSON object with 'configs', 'max_assign', 'prefill_attn'")
    cfgs = t.get("configs")
    if not isinstance(cfgs, list) or len(cfgs) != N_REGIMES:
        raise UserError(f"{where}: 'configs' must list {N_REGIMES} [bound, tiles] pairs (one per token regime)")
    prev = 0
    for i, item in enumerate(cfgs):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) and isinstance(item[1], dict)):
            raise UserError(f"{where}: configs[{i}] must be [bound, {{tiles}}]")
        bound, c = item
        if bound <= prev:
            raise UserError(f"{where}: configs[{i}] bound {bound} must exceed the previous one ({prev})")
        prev = bound
        if set(c) != set(CONFIG_FIELDS):
            raise UserError(f"{where}: configs[{i}] fields {sorted(c)}; expected {list(CONFIG_FIELDS)}")
        for k in CONFIG_FIELDS:
            if k == "tma":
                ok, want = c[k] in (0, 1) and not isinstance(c[k], bool), "0 or 1"
            elif "stages" in k:
                ok, want = isinstance(c[k], int) and 1 <= c[k] <= 8, "1 … 8 stages"
            else:
                ok, want = _pow2(c[k]), "a power of two"
            if not ok:
                raise UserError(f"{where}: configs[{i}].{k}={c[k]!r}: {want}")
    cap = t.get("max_assign")
    if cap is not None and not (isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1):
        raise UserError(f"{where}: max_assign={cap!r}: a positive integer (token × top-k assignments) or null")
    attn = t.get("prefill_attn", "flash")
    if attn not in PREFILL_ATTNS:
        raise UserError(f"{where}: prefill_attn={attn!r}: valid: {', '.join(PREFILL_ATTNS)}")
    mt = t.get("cudnn_min_tokens")
    if attn == "cudnn" and not (isinstance(mt, int) and mt >= 1):
        raise UserError(f"{where}: cudnn_min_tokens={mt!r}: a positive integer when prefill_attn is cudnn")
    return t


def load_tuning(path: str | Path) -> dict:
    """Read and check an ``engine_tuning.json``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"moe_tuning={str(path)!r}: no such file (the kernel benchmark writes engine_tuning.json)")
    try:
        t = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"moe_tuning={str(path)!r}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return check_tuning(t, f"moe_tuning={str(path)!r}")
