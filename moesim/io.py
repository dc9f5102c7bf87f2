"""Atomic file writes: a crash leaves either the old file or the new one, never half a file.

Each writer writes a temporary file in the target's directory, flushes it to disk, then ``os.replace``s it
onto the target (atomic on POSIX within one file system).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pandas as pd


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make results unreadable to others
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_with(path: str | os.PathLike[str], mode: str, write: Callable[[IO[Any]], None]) -> Path:
    with atomic_path(path) as tmp:
        kwargs = {"encoding": "utf-8"} if "b" not in mode else {}
        with open(tmp, mode, **kwargs) as fh:
            write(fh)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return _write_with(path, "w", lambda fh: fh.write(text))


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf → null, numpy scalars → Python, tuples/sets → lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (NaN and infinities become null)."""
    return write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def write_parquet(path: str | os.PathLike[str], df: pd.DataFrame) -> Path:
    """Write ``df`` to parquet atomically (index dropped)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def write_csv(path: str | os.PathLike[str], df: pd.DataFrame) -> Path:
    """Write ``df`` to CSV atomically (index dropped)."""
    return _write_with(path, "w", lambda fh: df.to_csv(fh, index=False))
