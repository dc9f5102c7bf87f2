"""``trace``: replay of a user's trace file (CSV, JSONL or parquet; columns, presets and column mappings in
``moesim.workloads.loader``)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from moesim.workloads import WORKLOADS
from moesim.workloads.base import check_choice, invalid
from moesim.workloads.loader import FIELDS, PRESETS, TIME_UNITS, read_trace
from moesim.workloads.replay import Replay, ReplayConfig, TraceArrays


@dataclass(frozen=True)
class TraceConfig(ReplayConfig):
    """A user trace file; the other fields as in ``ReplayConfig``.

    Attributes:
        path: the .csv, .jsonl or .parquet file.
        format: a public trace format (``azure2023``, ``azure2024``, ``mooncake``, ``burstgpt``) or ``""``
            (moesim's column names and their aliases).
        columns: field → the file's column, e.g. ``{"prompt_tokens": "input_length"}``; fields are
            ``arrival_s``, ``timestamp``, ``prompt_tokens``, ``output_tokens``, ``tenant``. A mapped field
            overrides the format's column; ``""`` (the default) leaves the field to the format or the
            aliases; ``"-"`` ignores that field (e.g. ``tenant`` of ``burstgpt``, to assign tenants instead).
        time_unit: unit of a numeric ``timestamp`` column: ``auto`` (the format's, else by magnitude:
            ≥ 1e17 ns, ≥ 1e14 µs, ≥ 1e11 ms, else seconds), ``s``, ``ms``, ``us`` or ``ns``.

    A tenant column takes precedence over ``assignment``: integer ids must lie in 0..tenants-1; names
    become ids in order of first appearance (at most ``tenants`` of them) and are kept in the outputs.
    """

    name: str = "trace"
    path: str = ""
    format: str = ""
    columns: dict[str, str] = field(default_factory=lambda: dict.fromkeys(FIELDS, ""))
    time_unit: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.path, str) or not self.path.strip():
            raise invalid(self.name, "path", self.path, "the path of a .csv, .jsonl or .parquet trace file")
        check_choice(self.name, "format", self.format, ("", *PRESETS))
        check_choice(self.name, "time_unit", self.time_unit, ("auto", *TIME_UNITS))
        if not isinstance(self.columns, Mapping):
            raise invalid(self.name, "columns", self.columns, "a mapping of field to column name")
        for fld, col in self.columns.items():
            if fld not in FIELDS:
                raise invalid(self.name, f"columns.{fld}", col, f"fields {', '.join(FIELDS)}")
            if not isinstance(col, str):
                raise invalid(self.name, f"columns.{fld}", col, "a column name ('-' ignores the field)")


@WORKLOADS.register("trace", TraceConfig)
class Trace(Replay):
    """Replays a user trace; the file is read and validated when the workload is built."""

    cfg: TraceConfig

    def _load(self) -> TraceArrays:
        c = self.cfg
        try:
            st = Path(c.path).stat()
        except OSError:  # read_trace says what is wrong with the path
            return read_trace(c.path, tenants=c.tenants, format=c.format, columns=c.columns,
                              time_unit=c.time_unit)
        return _read_cached(str(c.path), st.st_mtime_ns, st.st_size, c.tenants, c.format,
                            tuple(sorted(c.columns.items())), c.time_unit)


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, mtime_ns: int, size: int, tenants: int, format: str,
                 columns: tuple[tuple[str, str], ...], time_unit: str) -> TraceArrays:
    """``read_trace`` once per file version and reading options in a process (its arrays are read-only):
    the command line's check before any job and a single run's job then read the file once."""
    return read_trace(path, tenants=tenants, format=format, columns=dict(columns), time_unit=time_unit)
