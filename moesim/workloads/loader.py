"""Reading and validating a user's trace file (CSV, JSONL or parquet), in moesim's columns, a named public
format (``format=``) or the user's own column names (``columns=``).

Fields and the columns that supply them (names are matched case-insensitively; the aliases in brackets are
recognised without a mapping):

- ``arrival_s`` — arrival time in seconds (a number ≥ 0), or else
- ``timestamp`` [``TIMESTAMP``] — a date-time (ISO 8601 such as ``2023-11-16 18:15:46.680`` or
  ``2024-05-10 00:00:00.0092750+00:00``, or any format pandas recognises) or a number: epoch or relative
  time in ``time_unit`` (``auto``: see ``epoch_unit``); arrival_s is the time since the earliest one.
- ``prompt_tokens`` [``ContextTokens``] — integer ≥ 1.
- ``output_tokens`` [``GeneratedTokens``] — integer ≥ 1.
- ``tenant`` [``model``] (optional) — integers in 0..tenants-1, or names (any non-integer text): names become
  tenant ids 0, 1, … in order of first appearance in the file and are kept (``TraceArrays.tenant_names``).

``columns`` maps a field to the file's column (``{"prompt_tokens": "input_length"}``; ``"-"``: ignore that
field); a mapped field never falls back to an alias. Two columns that could supply one field (``ContextTokens``
and ``prompt_tokens``, or a column name that appears twice) are refused, never silently chosen.

Every problem ends in one ``UserError`` line naming the file, the 1-based data row and the problem; rows out
of time order are sorted (stably) with a warning naming the file.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.errors import UserError, did_you_mean
from moesim.workloads.base import MAX_TOKENS
from moesim.workloads.replay import TraceArrays

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
FIELDS = ("arrival_s", "timestamp", "prompt_tokens", "output_tokens", "tenant")
ALIASES = {
    "arrival_s": ("arrival_s",),
    "timestamp": ("timestamp",),
    "prompt_tokens": ("prompt_tokens", "contexttokens"),
    "output_tokens": ("output_tokens", "generatedtokens"),
    "tenant": ("tenant", "model"),
}
NEEDED = "arrival_s or timestamp, prompt_tokens, output_tokens (tenant optional)"
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}  # seconds per unit
# ``time_unit=auto`` on numbers: the unit that puts the largest value in the range of an epoch time
# (1973..5138 in seconds): ≥ 1e17 ns, ≥ 1e14 µs, ≥ 1e11 ms, else seconds (relative times included).
EPOCH_THRESHOLDS = ((1e17, "ns"), (1e14, "us"), (1e11, "ms"))


@dataclass(frozen=True)
class TraceFormat:
    """A public trace format: which of its columns supply which field, its time unit, and its quirks.

    Attributes:
        name: the ``workload.format`` value.
        columns: field → the format's column name.
        time_unit: unit of a numeric ``timestamp`` (``auto`` or a key of ``TIME_UNITS``).
        skip_zero_output: leave out rows whose output is 0 tokens (requests that failed) and say so.
        source: where the schema is documented.
    """

    name: str
    columns: Mapping[str, str]
    time_unit: str = "auto"
    skip_zero_output: bool = False
    source: str = ""


_AZURE = {"timestamp": "TIMESTAMP", "prompt_tokens": "ContextTokens", "output_tokens": "GeneratedTokens"}
PRESETS: dict[str, TraceFormat] = {
    f.name: f
    for f in (
        # naive date-times with 7 fractional digits: 2023-11-16 18:15:46.6805900
        TraceFormat("azure2023", _AZURE, source="github.com/Azure/AzurePublicDataset AzureLLMInferenceDataset2023"),
        # the same columns; date-times with a UTC offset: 2024-05-10 00:00:00.0092750+00:00
        TraceFormat("azure2024", _AZURE, source="github.com/Azure/AzurePublicDataset AzureLLMInferenceDataset2024"),
        # JSONL: {"timestamp": ms since the first request, "input_length", "output_length", "hash_ids": [...]}
        TraceFormat("mooncake", {"timestamp": "timestamp", "prompt_tokens": "input_length",
                                 "output_tokens": "output_length"}, time_unit="ms",
                    source="github.com/kvcache-ai/Mooncake FAST25-release/traces"),
        # CSV: Timestamp (s, relative), Model, Request tokens, Response tokens, Total tokens, Log Type;
        # failed requests have Response tokens 0
        TraceFormat("burstgpt", {"timestamp": "Timestamp", "prompt_tokens": "Request tokens",
                                 "output_tokens": "Response tokens", "tenant": "Model"}, time_unit="s",
                    skip_zero_output=True, source="github.com/HPMLL/BurstGPT"),
    )
}


class UnsortedTraceWarning(UserWarning):
    """A trace file's arrival times were out of order and have been sorted."""


class MixedTenantWarning(UserWarning):
    """A trace's tenant column holds integer ids and names: all are read as names."""


class LongTraceWarning(UserWarning):
    """A trace file's times, read as seconds, span more than ``LONG_TRACE_S`` (milliseconds, probably)."""


def epoch_unit(values: np.ndarray) -> str:
    """The unit ``time_unit=auto`` gives numeric timestamps (see ``EPOCH_THRESHOLDS``)."""
    top = float(np.max(np.abs(values))) if len(values) else 0.0
    return next((unit for bound, unit in EPOCH_THRESHOLDS if top >= bound), "s")


def read_trace(path: str | Path, tenants: int | None = None, *, format: str = "",
               columns: Mapping[str, str] | None = None, time_unit: str = "auto") -> TraceArrays:
    """Read, validate and time-sort a trace file.

    Args:
        tenants: bounds the optional tenant column (ids in 0..tenants-1, at most ``tenants`` names).
        format: a key of ``PRESETS`` or ``""`` (moesim's columns and their aliases).
        columns: field → column of the file, over the preset's (``""``: not mapped; ``"-"``: ignore the
            field).
        time_unit: unit of a numeric ``timestamp`` column; ``auto`` (the preset's, else ``epoch_unit``).
    """
    path = Path(path).expanduser()  # serve trace=~/t.csv: the shell expands ~ only at the start of a word
    where = f"trace file {str(path)!r}"
    preset = PRESETS.get(format) if format else None
    if format and preset is None:
        raise UserError(f"{where}: unknown format {format!r}; valid: {', '.join(PRESETS)} (or none)")
    given = {k: v for k, v in (columns or {}).items() if v != ""}
    mapping = {**(preset.columns if preset else {}), **given}
    unit = time_unit if time_unit != "auto" or preset is None else preset.time_unit
    if path.is_dir():
        raise UserError(f"{where}: is a folder; give the trace file itself (.csv, .jsonl or .parquet)")
    if not path.is_file():
        raise UserError(f"{where}: no such file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{where}: unknown format {path.suffix!r}; valid: {', '.join(FORMATS)}")
    if path.stat().st_size == 0:
        raise UserError(f"{where}: the file is empty (need columns {NEEDED})")
    if preset is not None:
        where += f" (format={preset.name})"
    df, header = _read_frame(path, fmt, where)
    if len(df) == 0:
        raise UserError(f"{where}: no data rows (need columns {NEEDED})")
    cols = _match_columns(header, mapping, where)

    skip_zero = preset is not None and preset.skip_zero_output
    prompt = _int_column(df[cols["prompt_tokens"]], header[cols["prompt_tokens"]], 1, None, where)
    output = _int_column(df[cols["output_tokens"]], header[cols["output_tokens"]], 0 if skip_zero else 1, None,
                         where)
    keep = output > 0 if skip_zero else np.ones(len(df), dtype=bool)
    if not keep.any():
        raise UserError(f"{where}: every row has {header[cols['output_tokens']]!r} = 0 (failed requests); "
                        "nothing to replay")
    if "arrival_s" in cols:
        arrival_s = _arrival_column(df[cols["arrival_s"]], where, header[cols["arrival_s"]])
        named = _name_unit(header[cols["arrival_s"]])
        if named is not None:  # arrival_s is seconds; a column whose name states another unit is probably not
            warnings.warn(f"{where}: column {header[cols['arrival_s']]!r} is read as arrival_s in seconds, but its "
                          f"name says {named}; to read it in {named}, map it as the timestamp instead "
                          f"(workload.columns.timestamp={header[cols['arrival_s']]}, or columns=timestamp:"
                          f"{header[cols['arrival_s']]} for serve)", LongTraceWarning, stacklevel=2)
        _warn_long(where, header[cols["arrival_s"]], float(arrival_s.max() - arrival_s.min()) if len(arrival_s) else 0.0,
                   f"workload.columns.timestamp={header[cols['arrival_s']]} workload.time_unit=ms (arrival_s is "
                   "seconds)")
    else:
        arrival_s = _timestamp_column(df[cols["timestamp"]], where, unit, header[cols["timestamp"]])
    tenant, names = (None, None)
    if "tenant" in cols:
        tenant, names = _tenant_column(df[cols["tenant"]], tenants, where, header[cols["tenant"]], keep)

    skipped = int((~keep).sum())
    if skipped:
        arrival_s, prompt, output = arrival_s[keep], prompt[keep], output[keep]
        tenant = tenant[keep] if tenant is not None else None
    if "arrival_s" not in cols:
        arrival_s = arrival_s - arrival_s.min()  # timestamps: the earliest replayed request arrives at 0
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
    reason = f"failed requests ({header[cols['output_tokens']]} 0)" if skipped else ""
    return TraceArrays(str(path), arrival_s, prompt, output, tenant, names, skipped, reason)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_frame(path: Path, fmt: str, where: str) -> tuple[pd.DataFrame, list[str]]:
    """The file's rows with columns numbered 0..k-1, and its column names (duplicates kept)."""
    try:
        if fmt == "csv":
            with path.open(newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f), [])
            # Strings throughout, so each cell is validated (and quoted back) exactly as written. index_col=False:
            # rows with one value more than the header made pandas take the first as an index and shift the
            # rest left (arrival_s read the prompt tokens) without a word
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", pd.errors.ParserWarning)
                try:
                    df = pd.read_csv(path, dtype=str, header=None, skiprows=1, names=list(range(len(header))),
                                     index_col=False)
                except pd.errors.ParserError:  # "Expected 3 fields in line 3, saw 4": name the data row
                    _too_many_values(path, header, where)
                    raise
            if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
                _too_many_values(path, header, where)
            return df, [str(h) for h in header]
        if fmt == "parquet":
            df = pd.read_parquet(path)
            header = [str(c) for c in df.columns]
            df.columns = list(range(len(header)))
            return df, header
    except UserError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise UserError(f"{where}: cannot read it as {fmt}: {_one_line(exc)}") from None
    except Exception as exc:  # pyarrow's own errors on a corrupt parquet file
        raise UserError(f"{where}: cannot read it as {fmt}: {_one_line(exc)}") from None
    df = _read_jsonl(path, where)
    header = [str(c) for c in df.columns]
    df.columns = list(range(len(header)))
    return df, header


def _too_many_values(path: Path, header: list[str], where: str) -> None:
    """Raise for the first data row with more (non-empty) values than the header has columns."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f)
        next(rows, None)
        for i, row in enumerate(rows, start=1):
            if len(row) > len(header) and any(v.strip() for v in row[len(header):]):
                raise UserError(f"{where}: row {i}: {len(row)} values but the header names {len(header)} columns "
                                f"({', '.join(header)}); give each row one value per column")


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
            pairs = json.loads(line, object_pairs_hook=lambda kv: kv)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: row {row}: not valid JSON ({exc.msg})") from None
        if not isinstance(pairs, list) or (pairs and not isinstance(pairs[0], tuple)):
            raise UserError(f"{where}: row {row}: not a JSON object")
        keys = [k for k, _ in pairs]
        dup = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
        if dup is not None:
            raise UserError(f"{where}: row {row}: key {dup!r} appears twice; keep one")
        records.append(dict(pairs))
    return pd.DataFrame.from_records(records)


def _match_columns(header: list[str], mapping: Mapping[str, str], where: str) -> dict[str, int]:
    """Field → column position. A mapped field takes exactly its column; others take their one alias."""
    norm = [h.strip().lower() for h in header]
    have = ", ".join(header)
    cols: dict[str, int] = {}
    for fld, name in mapping.items():
        if fld not in FIELDS:
            raise UserError(f"{where}: columns.{fld}: unknown field; valid: {', '.join(FIELDS)}")
        if name == "-":
            continue
        hits = [i for i, h in enumerate(header) if h == name] or [
            i for i, h in enumerate(norm) if h == name.strip().lower()]
        if not hits:
            raise UserError(f"{where}: no column {name!r} for {fld}{did_you_mean(name, header)} (has: {have})")
        if len(hits) > 1:
            raise UserError(f"{where}: column {name!r} for {fld} appears {len(hits)} times "
                            f"(columns {', '.join(str(i + 1) for i in hits)}); keep one")
        cols[fld] = hits[0]
    taken = set(cols.values())
    for fld, aliases in ALIASES.items():
        if fld in mapping:
            continue
        hits = [i for i, h in enumerate(norm) if h in aliases and i not in taken]
        if len(hits) > 1:
            a, b = header[hits[0]], header[hits[1]]
            what = (f"column {a!r} appears twice (columns {hits[0] + 1} and {hits[1] + 1})" if a == b
                    else f"columns {a!r} and {b!r} both give {fld}")
            raise UserError(f"{where}: {what}; choose one with workload.columns.{fld}=<column>")
        if hits:
            cols[fld] = hits[0]
    # one column whose name holds ';' or a tab: the file is not comma-separated (a European spreadsheet's CSV)
    sep = next((c for c in (";", "\t", "|") if len(header) == 1 and c in header[0]), None)
    hint = (f"; the file seems separated by {sep!r}, moesim reads comma-separated CSV: save it with commas"
            if sep else "")
    # every missing field in one line, each with its mapping (one at a time took a run per column)
    missing = ([] if "arrival_s" in cols or "timestamp" in cols else ["timestamp"]) + [
        f for f in ("prompt_tokens", "output_tokens") if f not in cols]
    if missing:
        named = ["'arrival_s' or 'timestamp'" if f == "timestamp" else repr(f) for f in missing]
        what = f"column {named[0]}" if len(named) == 1 else f"columns {', '.join(named)}"
        fmt = next((f.name for f in PRESETS.values() if not mapping
                    and {c.strip().lower() for c in f.columns.values()} <= set(norm)), None)
        if fmt is not None and not hint:  # BurstGPT's or Mooncake's own file: the format is the one-word fix
            unit = PRESETS[fmt].time_unit
            hint = (f"; its columns are the {fmt} format's: add workload.format={fmt}"
                    + (f" (it reads the timestamps in {unit})" if unit not in ("auto", "s") else ""))
        if not hint:
            taken, maps = dict(cols), []
            for f in missing:
                m = _mapping_hint(f, header, taken)
                maps.append(m[0])
                if m[1] is not None:
                    taken[f] = m[1]
            hint = "; map yours with " + " ".join(maps)
        raise UserError(f"{where}: missing {what} (has: {have}); need {NEEDED}{hint}")
    return cols


#: words in a column name that suggest a field (for the hint of a missing column)
_FIELD_WORDS = {"timestamp": ("time", "ts", "arrival", "date"),
                "prompt_tokens": ("input", "prompt", "context", "request"),
                "output_tokens": ("output", "generated", "response", "completion")}


def _mapping_hint(field: str, header: list[str], taken: Mapping[str, int]) -> tuple[str, int | None]:
    """``workload.columns.timestamp=time_ms`` (and the column's position) when one of the file's columns not
    yet ``taken`` looks like ``field`` (a timestamp column named in ms, us or ns with its time_unit);
    else ``workload.columns.<field>=<column>`` and None."""
    used = set(taken.values())
    for i, h in enumerate(header):
        words = _name_words(h)
        if i not in used and any(w.startswith(k) for w in words for k in _FIELD_WORDS[field]):
            unit = _name_unit(h) if field == "timestamp" else None
            return f"workload.columns.{field}={h}" + (f" workload.time_unit={unit}" if unit else ""), i
    return f"workload.columns.{field}=<column>", None


def _name_words(name: str) -> list[str]:
    """``"Time (ms)"`` → ``["time", "ms"]``: a column name's words, lower case."""
    return [w for w in re.split(r"[\s_\-()\[\].,/]+", name.strip().lower()) if w]


def _name_unit(name: str) -> str | None:
    """The time unit a column's name states (``ts_ms``, ``time (us)``, ``t_ns`` …), or None."""
    words = _name_words(name)
    return next((u for u in ("ms", "us", "ns") if u in words), None)


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


def _int_column(col: pd.Series, name: str, minimum: int, below: int | None, where: str,
                maximum: int = MAX_TOKENS) -> np.ndarray:
    """Integers in minimum..maximum (and < below if given); integral floats such as 3.0 are accepted.
    ``name`` is the column's name in the file."""
    x = _numbers(col)
    missing = pd.isna(col).to_numpy()
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(x) | (x != np.floor(x)) | (x < minimum) | (x > maximum)
        if below is not None:
            bad |= x >= below
    if not bad.any():
        return x.astype(np.int64)
    raw = col.to_numpy(dtype=object)
    if below is not None:
        valid = f"an integer in 0..{below - 1} (tenants={below})"
    else:
        valid = f"an integer in {minimum}..{maximum:,}"

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
        elif v > maximum:
            what = "is too large"
        else:
            what = "is out of range"
        return f"{name}={raw[i]!r} {what}; must be {valid}"

    raise _bad_row(where, bad, problem)


def _arrival_column(col: pd.Series, where: str, name: str) -> np.ndarray:
    x = _numbers(col)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(x) | (x < 0)
    if bad.any():
        raw = col.to_numpy(dtype=object)
        missing = pd.isna(col).to_numpy()  # an empty cell read as "arrival_s=nan is not a number"

        def problem(i: int) -> str:
            if missing[i]:
                return f"{name} is missing (empty); must be a number ≥ 0 (seconds)"
            return f"{name}={raw[i]!r} is not a number ≥ 0 (seconds)"

        raise _bad_row(where, bad, problem)
    return x


#: a trace read in seconds that spans more than this (seconds: 30 days) is probably in milliseconds
LONG_TRACE_S = 30 * 86400.0


def _warn_long(where: str, name: str, span_s: float, remedy: str) -> None:
    """One warning when a column read as seconds spans more than ``LONG_TRACE_S``: relative times in ms
    (0, 1000, 86400000) were read as seconds and a two-day trace ran for 5.5 years, with nothing said."""
    if span_s > LONG_TRACE_S:
        warnings.warn(f"{where}: {name} read in seconds spans {span_s:,.0f} s ({span_s / 86400:,.0f} days); if its "
                      f"times are milliseconds, add {remedy}", LongTraceWarning, stacklevel=3)


def _timestamp_column(col: pd.Series, where: str, unit: str, name: str) -> np.ndarray:
    """Seconds since the column's earliest time: numbers in ``unit`` (``auto``: ``epoch_unit``), else
    date-times."""
    missing = np.array(pd.isna(col), dtype=bool)
    if pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col):
        missing |= np.array(col.astype(str).str.strip() == "", dtype=bool)
    if missing.any():  # an empty cell among numbers blamed row 1's '0' as "not a parsable date-time"
        raise _bad_row(where, missing, lambda i: f"{name} is missing (empty); must be a date-time or a number")
    x = _numbers(col)
    if np.isfinite(x).all():
        # auto: the unit the column's name states (ts_ms read as seconds made a 2 s trace 2,000 s long),
        # else the epoch rule
        named = _name_unit(name) if unit == "auto" else None
        u = (named or epoch_unit(x)) if unit == "auto" else unit
        if unit == "auto" and named is None and u == "s":
            _warn_long(where, name, float(x.max() - x.min()), f"workload.time_unit=ms (or name the column "
                       f"{name}_ms)")
        return (x - x.min()) * TIME_UNITS[u]
    if unit != "auto" and np.isfinite(x).any():
        bad = ~np.isfinite(x)
        raw = col.to_numpy(dtype=object)
        raise _bad_row(where, bad, lambda i: f"{name}={raw[i]!r} is not a number (time_unit={unit})")
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
            lambda i: f"{name}={raw[i]!r} is not a parsable date-time (e.g. 2023-11-16 18:15:46.680) "
            "nor a number",
        )
    return (ts - ts.min()).dt.total_seconds().to_numpy(dtype=np.float64)


def _tenant_column(col: pd.Series, tenants: int | None, where: str, name: str,
                   keep: np.ndarray) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Tenant ids: integers in 0..tenants-1, or names numbered in order of first appearance among the
    ``keep`` rows (the names returned too)."""
    x = _numbers(col)
    missing = pd.isna(col).to_numpy() | (col.astype(str).str.strip() == "").to_numpy()
    if np.isfinite(x[~missing]).all() and (x[~missing] == np.floor(x[~missing])).all():
        return _int_column(col, name, 0, tenants, where, maximum=np.iinfo(np.int64).max), None
    if missing.any():
        raise _bad_row(where, missing, lambda i: f"{name} is missing (empty); must be a tenant name or id")
    text = col.astype(str).str.strip()
    codes, uniques = pd.factorize(text[keep], sort=False)
    ids = np.full(len(col), -1, dtype=np.int64)
    ids[keep] = codes
    names = tuple(str(u) for u in uniques)
    integral = np.isfinite(x) & (x == np.floor(x))
    if integral[keep].any():  # 1, 0, x: tenant '1' silently became tenant 0
        shown = ", ".join(f"{n!r} → {i}" for i, n in enumerate(names[:4])) + (", …" if len(names) > 4 else "")
        first = int(np.flatnonzero(~integral & keep)[0]) + 1
        warnings.warn(f"{where}: {name} mixes integer ids and names (row {first}: {text.iloc[first - 1]!r}), so "
                      f"every value is read as a name and numbered in order of first appearance ({shown}); use "
                      "only ids 0..tenants-1 or only names", MixedTenantWarning, stacklevel=3)
    if tenants is not None and len(names) > tenants:
        shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
        raise UserError(f"{where}: {name} names {len(names)} tenants ({shown}) but workload.tenants={tenants}; "
                        f"set workload.tenants={len(names)}")
    return ids, names
