"""The profile format: a tidy long table (one row per op × shape × slice) plus a metadata JSON.

Torch-free: the ``profile`` cost model reads it with pandas at load time.

Columns (units in names):
  gpu, model       registry names (``h200``, ``mixtral-8x7b``); the cost model refuses a mismatch.
  op               one of ``OPS`` below.
  sms              SMs the op ran on (the whole GPU, or a green-context slice).
  batch            sequences (attention ops), else 1.
  tokens           tokens per sequence (prefill), tokens in total (dense ops), rows (lm_head), 1 (decode).
  context          KV-cache tokens per sequence before the step (decode), else 0.
  pinned           1 pinned host memory, 0 pageable, -1 not a copy.
  nbytes           bytes copied (host-link and copy ops), else 0.
  time_s_median, time_s_p10, time_s_p90   seconds; per decoder layer where ``per_layer`` is 1.
  n                timed repeats.
  status           ``ok``, ``oom`` (out of memory at this size: skipped), ``error`` or ``budget``.
  per_layer        1 when the time is for one decoder layer, 0 for a whole-step or whole-copy time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.errors import UserError

SCHEMA_VERSION = "moesim.profile/1"

#: Operation names and what one row's time covers.
OPS: dict[str, str] = {
    "attn_proj": "one tenant's attention projections of one layer: RMSNorm, x@Wqkv, RoPE, o@Wo, residual add",
    "router": "one tenant's router of one layer: RMSNorm, x@Wr, softmax, top-k, renormalise",
    "attn_prefill": "attention core of one layer, `batch` sequences of `tokens` new tokens (causal, flash varlen)"
    ", KV-cache write included",
    "attn_decode": "attention core of one layer, `batch` sequences decoding one token over `context` cached",
    "moe_grouped": "experts of one MoE layer for `tokens` tokens (top-k routing): permute, grouped GEMMs, "
    "combine",
    "moe_loop": "the same with one GEMM per active expert (needs a host sync per layer): engine comparison",
    "expert_one": "one expert's FFN on `tokens` tokens routed to it (plain GEMMs)",
    "lm_head": "final RMSNorm, lm_head GEMM and greedy pick for `tokens` rows (one per sequence)",
    "embed": "embedding lookup of `tokens` tokens",
    "step": "whole-model step of tenant 0: `batch` sequences of `tokens` new tokens over `context` cached "
    "(calibrates what composing the per-op tables misses: launches between ops, concatenations)",
    "step_mixed": "whole-model step over several tenants (meta `mixed_step_tenants`): `batch` decoding sequences "
    "round robin over the tenants at contexts spread around a mean of `context`, plus a prompt of `tokens` "
    "new tokens on tenant 0 (0: none)",
    "concat_qkv": "multi-tenant glue of one layer: the `batch` tenants' q, k, v joined (one cat each), `tokens` "
    "tokens in all",
    "concat_route": "multi-tenant glue of one MoE layer: the `batch` tenants' normed h, expert ids and weights "
    "joined, `tokens` tokens in all",
    "attn_mixed": "one varlen attention call of one layer over a prompt of `tokens` new tokens packed with `batch` "
    "decoding sequences at contexts spread around a mean of `context` (KV-cache write included)",
    "attn_mixed_parts": "the same sequences as `attn_mixed` run as two calls: the prompt alone, then the decodes",
    "h2d_plain": "one large plain host→device copy (`pinned`)",
    "h2d_nonexpert_set": "one tenant's whole non-expert set host→device in one copy (`pinned`)",
    "h2d_nonexpert_layers": "the same set copied layer by layer (one copy per decoder layer plus the rest)",
    "h2d_expert": "one expert host→device (`pinned`)",
    "overlap_compute": "a prefill step of `tokens` tokens alone (whole model)",
    "overlap_copy": "the non-expert set copied layer by layer on a side stream, alone",
    "overlap_both": "both at once: prefill on the main stream, the set on a side copy stream",
    "ceil_d2d_copy": "device→device copy of `nbytes` (bandwidth ceiling; read + write = 2×nbytes)",
    "ceil_gemm": "bf16 GEMM `tokens`³ (compute ceiling)",
}

STATUSES = ("ok", "oom", "error", "budget")

KEY_COLUMNS = ["op", "sms", "batch", "tokens", "context", "pinned", "nbytes"]
COLUMNS = ["gpu", "model", *KEY_COLUMNS, "time_s_median", "time_s_p10", "time_s_p90", "n", "status",
           "per_layer"]
_INT_COLUMNS = ["sms", "batch", "tokens", "context", "pinned", "nbytes", "n", "per_layer"]


@dataclass(frozen=True, slots=True)
class Row:
    """One measured (or skipped) point; see the module docstring for units."""

    gpu: str
    model: str
    op: str
    sms: int
    batch: int = 1
    tokens: int = 0
    context: int = 0
    pinned: int = -1
    nbytes: int = 0
    time_s_median: float = float("nan")
    time_s_p10: float = float("nan")
    time_s_p90: float = float("nan")
    n: int = 0
    status: str = "ok"
    per_layer: int = 0

    def key(self) -> tuple[Any, ...]:
        """Identity of the point (resume skips keys already present)."""
        return (self.op, self.sms, self.batch, self.tokens, self.context, self.pinned, self.nbytes)


#: How a profile's device ops were timed: CUDA-graph replays (an efficient engine) or eager PyTorch.
EXECUTIONS = ("graphs", "eager")
#: What a user may ask for: one of ``EXECUTIONS``, or ``auto`` (graphs on CUDA, eager on CPU).
EXECUTION_CHOICES = ("auto", *EXECUTIONS)


def profile_stem(gpu: str, model: str, execution: str = "graphs") -> str:
    """File stem of a profile: ``h200__mixtral-8x7b`` (CUDA graphs) or ``h200__mixtral-8x7b.eager``."""
    return f"{gpu}__{model}" + ("" if execution == "graphs" else f".{execution}")


def rows_to_frame(rows: list[Row]) -> pd.DataFrame:
    """Rows → tidy DataFrame with the schema's columns and dtypes."""
    df = pd.DataFrame([{c: getattr(r, c) for c in COLUMNS} for r in rows], columns=COLUMNS)
    for c in _INT_COLUMNS:
        df[c] = df[c].astype("int64")
    return df


def frame_to_rows(df: pd.DataFrame) -> list[Row]:
    """DataFrame (schema columns) → rows."""
    return [Row(**{c: (int(v) if c in _INT_COLUMNS else v) for c, v in zip(COLUMNS, rec, strict=True)})
            for rec in df[COLUMNS].itertuples(index=False, name=None)]


def write_profile(path_parquet: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    """Write the profile table and its metadata JSON (``<stem>.parquet`` and ``<stem>.json``)."""
    path_parquet.parent.mkdir(parents=True, exist_ok=True)
    df = rows_to_frame(rows)
    tmp = path_parquet.with_suffix(".parquet.tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path_parquet)
    meta = {**meta, "schema_version": SCHEMA_VERSION, "rows": len(df),
            "rows_ok": int((df["status"] == "ok").sum())}
    path_parquet.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _shipped_hint(p: Path) -> str:
    """`` (here: /cwd); a profile of that name is at X`` when the user's or the shipped profiles hold one
    of that file name (the docs' ``profile=calibration/profiles/…`` is relative to a checkout)."""
    from moesim.resources import profile_search_path

    name = p.name if p.suffix == ".parquet" else p.name + ".parquet"
    for d in profile_search_path():
        if (d / name).is_file():
            where = f" (in {Path.cwd()})" if not p.is_absolute() else ""
            return f"{where}; a profile of that name is at {d / name}"
    return ""


def read_profile(path_parquet: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a profile and its metadata; refuse a missing file or a wrong schema in one line."""
    p = Path(path_parquet)
    meta_path = p.with_suffix(".json")
    if not p.is_file():
        raise UserError(f"profile {p}: no such file{_shipped_hint(p)}")
    if not meta_path.is_file():
        raise UserError(f"profile {p}: its metadata {meta_path.name} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"profile metadata {meta_path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"profile {p}: schema_version {meta.get('schema_version')!r}, this moesim reads "
                        f"{SCHEMA_VERSION!r}; re-run python -m moesim.calibrate")
    try:
        df = pd.read_parquet(p)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise UserError(f"profile {p}: cannot be read as parquet ({type(exc).__name__})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"profile {p}: missing column(s) {missing}; expected {COLUMNS}")
    bad_ops = sorted(set(df["op"]) - set(OPS))
    if bad_ops:
        raise UserError(f"profile {p}: unknown op(s) {bad_ops}; valid: {', '.join(OPS)}")
    check_times(df, p)
    return df, meta


TIME_COLUMNS = ("time_s_median", "time_s_p10", "time_s_p90")


def check_times(df: pd.DataFrame, path: str | Path) -> None:
    """Refuse (one line naming the file, the row and its key) a time that is negative or infinite, or a
    median missing (NaN) in an ``ok`` row (the cost model reads it); the percentiles may be missing, and
    rows of other statuses (oom, error, budget) carry no times."""
    import numpy as np

    ok = (df["status"] == "ok").to_numpy()
    for col in TIME_COLUMNS:
        t = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        bad = (t < 0) | np.isinf(t)
        if col == "time_s_median":
            bad |= ok & np.isnan(t)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            row = df.iloc[i]
            key = ", ".join(f"{k}={row[k]}" for k in ("op", "sms", "batch", "tokens", "context"))
            raise UserError(f"profile {path}: row {i} ({key}, status {row['status']}): {col}={t[i]}; "
                            f"times must be finite and ≥ 0 seconds ({int(bad.sum())} such row(s)); "
                            "re-measure or remove the row")


def profile_model(meta: dict[str, Any]) -> Any:
    """The ``ModelSpec`` a profile was measured for: its config.json when calibrated from a file path
    (``model_config``), else the shipped model of that name."""
    from moesim.specs import get_model

    src = str(meta.get("model_config") or "")
    return get_model(src if src.startswith("/") else str(meta["model"]))
