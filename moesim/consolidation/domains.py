"""Eight byte-level domains cut from the four committed corpora (torch-free).

The study of ``moesim.consolidation.quality_study`` needs 8 fine-tuning domains; ``corpora/data`` holds 4
(``corpora/build.py``, sources and licenses in ``corpora/NOTICE.md``). They are split further, by source
and by text type, deterministically and without new sources:

* ``wikitext2``, ``milton``: as committed (train / test files).
* ``shakespeare-comedy``, ``shakespeare-tragedy``: the committed train file's plays of that genre; test =
  the committed held-out plays of that genre (Tempest + Twelfth Night; Hamlet + Julius Caesar).
* ``shakespeare-history``, ``shakespeare-poems``: the train file's history plays / non-dramatic poems; no
  held-out play of these kinds exists, so the last ``TAIL`` of each work (cut at a line break) is test.
* ``python-code``, ``python-prose``: each line of the committed Python files is *prose* when it holds only
  a comment or lies in a triple-quoted string (docstrings), by Python's tokenizer; else *code*.

Works of the Shakespeare files start at their title: the last non-empty line of the three above
``by William Shakespeare``.
"""

from __future__ import annotations

import functools
import io
import itertools
import tokenize
from pathlib import Path

import numpy as np

from moesim.consolidation.corpus import load_split

DOMAINS8 = (
    "wikitext2", "milton", "python-code", "python-prose",
    "shakespeare-comedy", "shakespeare-tragedy", "shakespeare-history", "shakespeare-poems",
)
TAIL = 0.12
HISTORY_WORDS = ("HENRY", "KING JOHN", "RICHARD")
TRAGEDY_WORDS = ("TRAGEDY", "ANTONY", "LEAR", "MACBETH", "OTHELLO", "ROMEO", "TIMON", "HAMLET", "JULIUS",
                 "TITUS", "CORIOLANUS", "TROILUS")
POEM_WORDS = ("COMPLAINT", "PILGRIM", "PHOENIX", "LUCRECE", "SONNETS", "VENUS")
MARKER = "by William Shakespeare"
TRIPLE = ('"""', "'''")


def genre(title: str) -> str:
    """``history``, ``tragedy``, ``poems`` or ``comedy`` of a Shakespeare title (upper case), in that order
    of precedence (``THE TRAGEDY OF KING RICHARD THE SECOND`` is a history)."""
    t = title.upper()
    if any(w in t for w in HISTORY_WORDS):
        return "history"
    if any(w in t for w in TRAGEDY_WORDS):
        return "tragedy"
    if any(w in t for w in POEM_WORDS):
        return "poems"
    return "comedy"


def split_works(text: str) -> list[tuple[str, str]]:
    """(title, text) of each work; a work starts at its title, the last non-empty line of the 3 above ``MARKER``."""
    lines = text.splitlines(keepends=True)
    starts = []
    for i, ln in enumerate(lines):
        if ln.strip() == MARKER:
            above = [j for j in range(max(0, i - 3), i) if lines[j].strip()]
            starts.append(above[-1] if above else i)
    if not starts:
        return [("", text)]
    starts[0] = 0
    bounds = [*starts, len(lines)]
    return [(lines[a].strip(), "".join(lines[a:b])) for a, b in itertools.pairwise(bounds)]


def tail_split(text: str, frac: float = TAIL) -> tuple[str, str]:
    """(head, tail): the tail is the last ``frac`` of the characters, cut back to a line start."""
    cut = int(len(text) * (1 - frac))
    nl = text.rfind("\n", 0, cut)
    cut = nl + 1 if nl >= 0 else cut
    return text[:cut], text[cut:]


def python_prose_code(text: str) -> tuple[str, str]:
    """(prose, code) lines of Python source, by Python's tokenizer: a line is prose when it holds only a
    comment or is covered by a triple-quoted string (docstrings, long text; f-strings too, on Python 3.11 and
    3.12 alike); every other line is code.
    Where the tokenizer stops (a file cut by the size cap), the remaining lines are code."""
    lines = text.splitlines(keepends=True)
    prose = set()
    fstring_start = getattr(tokenize, "FSTRING_START", None)  # Python ≥ 3.12 splits f-strings into tokens
    fstring_end = getattr(tokenize, "FSTRING_END", None)
    open_f: list[tuple[int, bool]] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT and tok.line.strip().startswith("#"):
                prose.add(tok.start[0])
            elif tok.type == tokenize.STRING and tok.string.lstrip("rRbBuUfF")[:3] in TRIPLE:
                prose.update(range(tok.start[0], tok.end[0] + 1))
            elif fstring_start is not None and tok.type == fstring_start:
                open_f.append((tok.start[0], tok.string.lstrip("rRbBuUfF")[:3] in TRIPLE))
            elif fstring_end is not None and tok.type == fstring_end and open_f:
                start, triple = open_f.pop()
                if triple:
                    prose.update(range(start, tok.end[0] + 1))
    except (tokenize.TokenError, SyntaxError):
        pass
    p = "".join(ln for i, ln in enumerate(lines, 1) if i in prose)
    c = "".join(ln for i, ln in enumerate(lines, 1) if i not in prose)
    return p, c


def _bytes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8)


def build_domains(root: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``{domain: {"train": uint8 array, "test": uint8 array}}`` for ``DOMAINS8`` from ``root`` (corpora/data);
    built once per folder and process (the arrays are read-only views)."""
    from moesim.consolidation.corpus import corpora_root

    return _build_domains(str(corpora_root(root).resolve()))


@functools.lru_cache(maxsize=2)
def _build_domains(root: str) -> dict[str, dict[str, np.ndarray]]:
    def text(d: str, split: str) -> str:
        return load_split(root, d, split).tobytes().decode()

    out: dict[str, dict[str, np.ndarray]] = {}
    for d in ("wikitext2", "milton"):
        out[d] = {"train": load_split(root, d, "train"), "test": load_split(root, d, "test")}
    tr_prose, tr_code = python_prose_code(text("python", "train"))
    te_prose, te_code = python_prose_code(text("python", "test"))
    out["python-code"] = {"train": _bytes(tr_code), "test": _bytes(te_code)}
    out["python-prose"] = {"train": _bytes(tr_prose), "test": _bytes(te_prose)}
    train_works = split_works(text("shakespeare", "train"))
    test_works = split_works(text("shakespeare", "test"))
    for g in ("comedy", "tragedy"):
        out[f"shakespeare-{g}"] = {
            "train": _bytes("\n".join(t for title, t in train_works if genre(title) == g)),
            "test": _bytes("\n".join(t for title, t in test_works if genre(title) == g)),
        }
    for g, name in (("history", "shakespeare-history"), ("poems", "shakespeare-poems")):
        parts = [tail_split(t) for title, t in train_works if genre(title) == g]
        out[name] = {"train": _bytes("\n".join(h for h, _ in parts)), "test": _bytes("\n".join(t for _, t in parts))}
    return out
