"""Byte corpora of the study as numpy arrays, and the windows trained and evaluated on (torch-free)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moesim.errors import UserError

DOMAINS = ("wikitext2", "shakespeare", "python", "milton")


def corpora_root(root: str | Path) -> Path:
    """The corpora folder: ``root`` as given, or, when it is relative (the default ``corpora/data``) and not
    in the current folder, the same path in the source checkout moesim runs from (so the study's commands
    work from any folder of an editable install, not only from the repository's root)."""
    from moesim.resources import _REPO

    p = Path(root)
    if p.exists() or p.is_absolute() or not (_REPO / p).is_dir():
        return p
    return _REPO / p


def load_split(root: str | Path, domain: str, split: str) -> np.ndarray:
    """Bytes of ``root/domain/split.txt`` as uint8, shape (n,) (``root`` found by :func:`corpora_root`)."""
    p = corpora_root(root) / domain / f"{split}.txt"
    if not p.is_file():
        raise UserError(f"corpus file {str(p)!r} not found; the corpora come with a source checkout: build them "
                        "there with `python corpora/build.py`, and pass corpora=<checkout>/corpora/data from "
                        "another folder")
    return np.frombuffer(p.read_bytes(), dtype=np.uint8)


def eval_windows(data: np.ndarray, seq: int, n_windows: int) -> np.ndarray:
    """The first ``n_windows`` non-overlapping windows of ``seq + 1`` bytes, shape (n, seq + 1)."""
    n = min(n_windows, len(data) // (seq + 1))
    if n < 1:
        raise UserError(f"held-out text of {len(data)} bytes is shorter than one window of {seq + 1}")
    return data[: n * (seq + 1)].reshape(n, seq + 1).astype(np.int64)


def sample_windows(data: np.ndarray, seq: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    """``batch`` random windows of ``seq + 1`` bytes, shape (batch, seq + 1)."""
    starts = rng.integers(0, len(data) - seq - 1, size=batch)
    return np.stack([data[s : s + seq + 1] for s in starts]).astype(np.int64)
