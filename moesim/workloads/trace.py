"""``trace``: replay of a user's trace file (CSV, JSONL or parquet; columns in ``moesim.workloads.loader``)."""

from __future__ import annotations

from dataclasses import dataclass

from moesim.workloads import WORKLOADS
from moesim.workloads.base import invalid
from moesim.workloads.loader import read_trace
from moesim.workloads.replay import Replay, ReplayConfig, TraceArrays


@dataclass(frozen=True)
class TraceConfig(ReplayConfig):
    """A user trace file at ``path``; the other fields as in ``ReplayConfig``. A ``tenant`` column in the
    file takes precedence over ``assignment`` and must lie in 0..tenants-1."""

    name: str = "trace"
    path: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.path, str) or not self.path.strip():
            raise invalid(self.name, "path", self.path, "the path of a .csv, .jsonl or .parquet trace file")


@WORKLOADS.register("trace", TraceConfig)
class Trace(Replay):
    """Replays a user trace; the file is read and validated when the workload is built."""

    cfg: TraceConfig

    def _load(self) -> TraceArrays:
        return read_trace(self.cfg.path, tenants=self.cfg.tenants)
