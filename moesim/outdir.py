"""Output locations checked before anything runs: a path that is a file, a read-only or full disk.

``check_writable`` writes (and removes) a small probe file in the nearest existing folder of the path, so
a read-only or full file system is one clear line up front instead of a half-written output folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from moesim.errors import UserError

PROBE_BYTES = 64 * 1024


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def probe(folder: Path) -> None:
    """Write ``PROBE_BYTES`` into a temporary file in ``folder``, flush it to disk and remove it."""
    fd, tmp = tempfile.mkstemp(prefix=".moesim-probe.", dir=folder)
    try:
        os.write(fd, b"\0" * PROBE_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(tmp)


def check_writable(path: str | os.PathLike[str], what: str, *, is_file: bool = False) -> Path:
    """Refuse (one ``UserError`` line naming ``what=path``) an output folder (or, with ``is_file``, an
    output file) that cannot be written: it is a file (a folder), a parent is a file, or the file system is
    read-only, not permitted or full. Creates nothing."""
    text = os.fspath(path)
    if not text.strip():
        raise UserError(f"{what}=: empty; give an output {'file' if is_file else 'folder'}")
    p = Path(text)
    if is_file:
        if p.is_dir():
            raise UserError(f"{what}={text}: is a folder; give a file path")
        folder = p.parent
    else:
        if p.exists() and not p.is_dir():
            raise UserError(f"{what}={text}: is a file, not a folder")
        folder = p
    base = nearest_existing(folder)
    if not base.is_dir():
        raise UserError(f"{what}={text}: {base} is a file, so the folder cannot be created")
    try:
        probe(base)
    except OSError as exc:
        raise UserError(f"{what}={text}: cannot write in {base} ({exc.strerror or exc})") from None
    return p
