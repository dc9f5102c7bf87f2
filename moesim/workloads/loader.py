"""Reading and validating a user's trace file (CSV, JSONL or parquet).

Columns (names are matched case-insensitively; the Azure trace's own names are accepted as aliases):

- ``arrival_s`` — arrival time in seconds (a number ≥ 0), or else
- ``timestamp`` — a parsable date-time (ISO 8601 such as ``2023-11-16 18:15:46.680``, or any format
  pandas recognises); arrival_s is then the time since the earliest timestamp. Alias: ``TIMESTAMP``.
- ``prompt_tokens`` — integer ≥ 1. Alias: ``ContextTokens``.
- ``output_tokens`` — integer ≥ 1. Alias: ``GeneratedTokens``.
- ``tenant`` (optional) — integer in 0..tenants-1.

Every problem ends in one ``UserError`` line naming the file, the 1-based data row and the problem; rows out
of time order are sorted (stably) with a warning naming the file.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.errors import UserError
from moesim.workloads.replay import TraceArrays

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
ALIASES = {
    "arrival_s": ("arrival_s",),
    "timestamp": ("timestamp",),
    "prompt_tokens": ("prompt_tokens", "contexttokens"),
    "output_tokens": ("output_tokens", "generatedtokens"),
    "tenant": ("tenant",),
}
NEEDED = "arrival_s or timestamp, prompt_tokens, output_tokens (tenant optional)"


class UnsortedTraceWarning(UserWarning):
    """A trace file's arrival times were out of order and have been sorted."""


def read_trace(path: str | Path, tenants: int | None = None) -> TraceArrays:
    """Read, validate and time-sort a trace file; ``tenants`` bounds the optional tenant column."""
    path = Path(path)
    where = f"trace file {str(path)!r}"
    if not path.is_file():
        raise UserError(f"{where}: no such file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{where}: unknown format {path.suffix!r}; valid: {', '.join(FORMATS)}")
    if path.stat().st_size == 0:
        raise UserError(f"{where}: the file is empty (need columns {NEEDED})")
    df = _read_frame(path, fmt, where)
    if len(df) == 0:
        raise UserError(f"{where}: no data rows (need columns {NEEDED})")
    cols = _match_columns(df, where)

    if "arrival_s" in cols:
        arrival_s = _arrival_column(df[cols["arrival_s"]], where)
    else:
        arrival_s = _timestamp_column(df[cols["timestamp"]], where)
    prompt = _int_column(df[cols["prompt_tokens"]], "prompt_tokens", 1, None, where)
    output = _int_column(df[cols["output_tokens"]], "output_tokens", 1, None, where)
    tenant = _int_column(df[cols["tenant"]], "tenant", 0, tenants, where) if "tenant" in cols else None

    back = np.flatnonzero(np.diff(arrival_s) < 0)
    if back.size:
        i = int(back[0]) + 1  # 0-based index of the first row earlier than its predecessor
        warnings.warn(
            f"{where}: arrival times are not sorted (row {i + 1} is earlier than row {i}, "
            f"{back.size} such rows); sorted them by time",
            UnsortedTraceWarning,
            stacklevel=2,
        )
        order = np.argsort(arrival_s, kind="stable")
        arrival_s, prompt, output = arrival_s[order], prompt[order], output[order]
        tenant = tenant[order] if tenant is not None else None
    return TraceArrays(str(path), arrival_s, prompt, output, tenant)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_frame(path: Path, fmt: str, where: str) -> pd.DataFrame:
    try:
        if fmt == "csv":
            # Strings throughout, so each cell is validated (and quoted back) exactly as written.
            return pd.read_csv(path, dtype=str)
        if fmt == "parquet":
            return pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise UserError(f"{where}: cannot read it as {fmt}: {_one_line(exc)}") from None
    except Exception as exc:  # pyarrow's own errors on a corrupt parquet file
        raise UserError(f"{where}: cannot read it as {fmt}: {_one_line(exc)}") from None
    return _read_jsonl(path, where)


def _read_jsonl(path: Path, where: str) -> pd.DataFrame:
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: cannot read it: {_one_line(exc)}") from None
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: row {row}: not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise UserError(f"{where}: row {row}: not a JSON object")
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _match_columns(df: pd.DataFrame, where: str) -> dict[str, str]:
    by_key = {str(c).strip().lower(): c for c in df.columns}
    cols = {want: by_key[a] for want, aliases in ALIASES.items() for a in aliases if a in by_key}
    have = ", ".join(map(str, df.columns))
    if "arrival_s" not in cols and "timestamp" not in cols:
        raise UserError(f"{where}: missing column 'arrival_s' or 'timestamp' (has: {have}); need {NEEDED}")
    for need in ("prompt_tokens", "output_tokens"):
        if need not in cols:
            raise UserError(f"{where}: missing column {need!r} (has: {have}); need {NEEDED}")
    return cols


def _bad_row(where: str, bad: np.ndarray, problem: Callable[[int], str]) -> UserError:
    """The error for the first row flagged in ``bad``; ``problem(i)`` describes row index i."""
    i = int(np.argmax(bad))
    more = int(bad.sum()) - 1
    tail = f" ({more} more bad row{'s' if more > 1 else ''} in this column)" if more else ""
    return UserError(f"{where}: row {i + 1}: {problem(i)}{tail}")


def _numbers(col: pd.Series) -> np.ndarray:
    if col.dtype == bool:
        return np.full(len(col), np.nan)
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _int_column(col: pd.Series, name: str, minimum: int, below: int | None, where: str) -> np.ndarray:
    """Integers ≥ minimum (and < below if given); integral floats such as 3.0 are accepted."""
    x = _numbers(col)
    missing = pd.isna(col).to_numpy()
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(x) | (x != np.floor(x)) | (x < minimum)
        if below is not None:
            bad |= x >= below
    if not bad.any():
        return x.astype(np.int64)
    raw = col.to_numpy(dtype=object)
    valid = f"an integer ≥ {minimum}" if below is None else f"an integer in 0..{below - 1} (tenants={below})"

    def problem(i: int) -> str:
        v = x[i]
        if missing[i]:
            return f"{name} is missing (empty); must be {valid}"
        if np.isnan(v):
            what = "is not a number"
        elif v < 0:
            what = "is negative"
        elif not np.isfinite(v) or v != np.floor(v):
            what = "is not an integer"
        elif v < minimum:
            what = f"is below {minimum}"
        else:
            what = "is out of range"
        return f"{name}={raw[i]!r} {what}; must be {valid}"

    raise _bad_row(where, bad, problem)


def _arrival_column(col: pd.Series, where: str) -> np.ndarray:
    x = _numbers(col)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(x) | (x < 0)
    if bad.any():
        raw = col.to_numpy(dtype=object)
        raise _bad_row(where, bad, lambda i: f"arrival_s={raw[i]!r} is not a number ≥ 0 (seconds)")
    return x


def _timestamp_column(col: pd.Series, where: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' format-inference chatter
        ts = pd.to_datetime(col, format="ISO8601", errors="coerce", utc=True)
        if ts.isna().any():
            retry = ts.isna() & col.notna()
            ts[retry] = pd.to_datetime(col[retry], format="mixed", errors="coerce", utc=True)
    bad = ts.isna().to_numpy()
    if bad.any():
        raw = col.to_numpy(dtype=object)
        raise _bad_row(
            where,
            bad,
            lambda i: f"timestamp={raw[i]!r} is not a parsable date-time (e.g. 2023-11-16 18:15:46.680)",
        )
    return (ts - ts.min()).dt.total_seconds().to_numpy(dtype=np.float64)
