"""One way to drive moesim's non-hydra tools: ``key=value`` arguments and a ``--help`` generated from the
config dataclass.

Every tool without hydra (``calibrate``, ``executor``, ``consolidate``, ``bench``, and new ones) describes
its options as a dataclass whose docstring has a Google-style ``Attributes:`` section (units go there), and
parses its command line with :func:`parse_key_values`::

    cfg = parse_key_values(argv, BenchConfig, prog="python -m moesim.bench", summary="...")

That gives, for free: ``--help``/``-h`` (every key with its type, default, valid values and description,
generated from the dataclass), values converted by the field types (bool, int, float, str, tuples of
those from comma lists), one ``UserError`` line for an unknown key or a bad value, hydra's ``+key=value``
spelling, and the GNU spellings ``--some-key value`` / ``--some-key=value`` / ``--flag`` (a bool set to
true), so older command lines keep working. ``positional`` names the field that takes bare arguments
(e.g. the weight files of ``consolidate``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from moesim.errors import UserError

C = TypeVar("C")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
HELP_FLAGS = ("-h", "--help")


def convert(name: str, text: str, kind: Any) -> Any:
    """``text`` as the field type ``kind`` (a type or its name under postponed annotations).

    Floats must be finite: ``nan`` and ``inf`` are refused here, once for every tool.
    """
    if kind in (bool, "bool"):
        low = text.lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise UserError(f"{name}={text!r}: expected true or false")
    if kind in (int, "int"):
        try:
            return int(text)
        except ValueError:
            raise UserError(f"{name}={text!r}: expected an integer") from None
    if kind in (float, "float"):
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"{name}={text!r}: expected a number") from None
        if not math.isfinite(value):
            raise UserError(f"{name}={text!r}: expected a finite number")
        return value
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):  # X | None: "none"/"null" is None, else an X
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if text.strip().lower() in ("none", "null", ""):
            return None
        return convert(name, text, args[0]) if len(args) == 1 else text
    if origin in (tuple, list):
        args = [a for a in typing.get_args(kind) if a is not Ellipsis] or [str]
        items = [t for t in (p.strip() for p in text.split(",")) if t]
        return origin(convert(name, t, args[0]) for t in items)
    if typing.get_origin(kind) is typing.Literal:
        valid = [str(a) for a in typing.get_args(kind)]
        if text not in valid:
            from moesim.errors import did_you_mean

            raise UserError(f"{name}={text!r}{did_you_mean(text, valid)}: valid: {', '.join(valid)}")
    return text


# ---- help generated from the dataclass ----------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """Field name → description, from the ``Attributes:`` sections of ``cls``'s docstring and its bases'
    (a subclass's entry wins). An entry ``a, b: text`` documents both fields; continuation lines (indented
    deeper) are joined."""
    out: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if base is not object:
            out.update(_own_field_docs(base))
    return out


def _own_field_docs(cls: type) -> dict[str, str]:
    raw = (cls.__doc__ or "").splitlines()
    doc = textwrap.dedent("\n".join(raw[1:]))
    lines = doc.splitlines()
    if raw and raw[0].strip() == "Attributes:":  # a docstring that opens with the section (fleet configs)
        lines = ["Attributes:", *lines]
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "Attributes:")
    except StopIteration:
        return {}
    out: dict[str, str] = {}
    names: list[str] = []
    indent = None
    for ln in lines[start + 1:]:
        if not ln.strip():
            continue
        depth = len(ln) - len(ln.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:
            break
        m = re.match(r"\s*([\w, ]+):\s*(.*)$", ln) if depth == indent else None
        if m:
            names = [n.strip() for n in m.group(1).split(",") if n.strip()]
            for n in names:
                out[n] = m.group(2).strip()
        else:
            for n in names:
                out[n] = f"{out[n]} {ln.strip()}".strip()
    return out


def _type_name(kind: Any, brackets: bool = False) -> str:
    if isinstance(kind, str):
        return kind
    args = typing.get_args(kind)
    if type(None) in args and len(args) == 2:
        return f"{_type_name(next(a for a in args if a is not type(None)), brackets)} or null"
    if typing.get_origin(kind) is typing.Literal:
        return "str"
    if typing.get_origin(kind) in (tuple, list):
        args = [a for a in typing.get_args(kind) if a is not Ellipsis] or [str]
        if brackets:  # hydra: a,b unquoted is a sweep; a list is [a,b]
            return f"list of {_type_name(args[0])}, in brackets: [a,b]"
        return f"comma list of {_type_name(args[0])}"
    return getattr(kind, "__name__", str(kind))


def _default_text(f: dataclasses.Field[Any], values: Mapping[str, Any] | None = None,
                  brackets: bool = False) -> str:
    if values is not None and f.name in values:
        value = values[f.name]
    elif f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)) or (brackets and type(value).__name__ == "ListConfig"):
        if brackets:
            return "[" + ",".join(map(str, value)) + "]"
        return ",".join(map(str, value)) or "''"
    if value is None:
        return "null"
    return str(value) if str(value) != "" else "''"


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:
        return {f.name: f.type for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def key_lines(cls: type, *, prefix: str = "", choices: Mapping[str, Iterable[Any]] | None = None,
              positional: str | None = None, skip: Iterable[str] = (),
              values: Mapping[str, Any] | None = None, brackets: bool = False) -> list[str]:
    """One entry per field of dataclass ``cls``: ``  <prefix><key>=<default>  (<type>[; one of: ...])``
    and its description (units) from the docstring's Attributes section, wrapped and indented.
    ``values`` replace the dataclass defaults (e.g. the composed hydra config's). ``brackets``: lists are
    written ``[a,b]`` (hydra's overrides, where ``a,b`` is a sweep), else ``a,b``."""
    docs = field_docs(cls)
    hints = _hints(cls)
    valid = {k: [str(v) for v in vs] for k, vs in (choices or {}).items()}
    for name, kind in hints.items():
        if typing.get_origin(kind) is typing.Literal and name not in valid:
            valid[name] = [str(a) for a in typing.get_args(kind)]
    out: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init or f.name in set(skip):
            continue
        facts = _type_name(hints.get(f.name, f.type), brackets)
        if f.name in valid:
            facts += f"; one of: {', '.join(valid[f.name])}"
        if f.name == positional:
            facts += "; also given as bare arguments"
        out.append(f"  {prefix}{f.name}={_default_text(f, values, brackets)}  ({facts})")
        if docs.get(f.name):
            out += textwrap.wrap(docs[f.name].replace("``", ""), 100, initial_indent="      ",
                                 subsequent_indent="      ")
    return out


def help_text(cls: type, *, prog: str, summary: str = "", positional: str | None = None,
              choices: Mapping[str, Iterable[Any]] | None = None, examples: Sequence[str] = ()) -> str:
    """The ``--help`` text of a tool configured by dataclass ``cls``: usage, summary, then every key with
    its type, default, valid values and description (units) from the docstring's Attributes section."""
    pos = f" [{positional.upper()} ...]" if positional else ""
    out = [f"usage: {prog}{pos} [key=value ...]"]
    if summary:
        out += ["", *textwrap.wrap(" ".join(summary.replace("``", "").split()), 100)]
    out += ["", "keys (key=value; --key value and --key=value work too; --flag sets a bool to true):"]
    out += key_lines(cls, choices=choices, positional=positional)
    if examples:
        out += ["", "examples:"] + [f"  {e}" for e in examples]
    return "\n".join(out)


# ---- parsing ------------------------------------------------------------------------------------------


def _normalize(argv: Sequence[str], bools: set[str], fields: Sequence[str] = ()) -> list[str]:
    """GNU spellings → ``key=value``: ``--a-b v``, ``--a-b=v``, ``--flag`` (bool fields only); an unknown
    ``--key`` is passed on as ``key=`` so that it is reported as an unknown key, not as a missing value."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and len(arg) > 2:
            key, sep, value = arg[2:].partition("=")
            key = key.replace("-", "_")
            if not sep:
                nxt = argv[i + 1] if i + 1 < len(argv) else None
                if key in bools and (nxt is None or nxt.lower() not in _TRUE | _FALSE):
                    value = "true"
                elif nxt is not None and not nxt.startswith("--"):
                    value = nxt
                    i += 1
                elif fields and key not in fields:
                    value = ""
                else:
                    raise UserError(f"{arg}: expected a value ({key}=VALUE or {arg} VALUE)")
            out.append(f"{key}={value}")
        else:
            out.append(arg)
        i += 1
    return out


def parse_key_values(argv: Sequence[str], config_cls: type[C], *, prog: str | None = None, summary: str = "",
                     positional: str | None = None, choices: Mapping[str, Iterable[Any]] | None = None,
                     examples: Sequence[str] = ()) -> C:
    """``["device=cpu", "model=tiny"]`` → ``config_cls(device="cpu", model="tiny")``.

    ``-h``/``--help`` prints :func:`help_text` and exits 0. An unknown key, a value of the wrong type or a
    value outside ``choices`` is one ``UserError`` line naming the key, the value and what would be valid.
    """
    if help_requested(argv):
        print_help(help_text(config_cls, prog=prog or config_cls.__name__, summary=summary,
                             positional=positional, choices=choices, examples=examples))
    hints = _hints(config_cls)
    fields = [f.name for f in dataclasses.fields(config_cls) if f.init]  # type: ignore[arg-type]
    bools = {k for k in fields if hints.get(k) in (bool, "bool")}
    values: dict[str, Any] = {}
    bare: list[str] = []
    for arg in _normalize(argv, bools, fields):
        key, sep, text = arg.partition("=")
        key = key.lstrip("+").strip()
        if not sep and positional and not arg.startswith("-"):
            bare.append(arg)
            continue
        if not sep or not key:
            raise UserError(f"argument {arg!r}: expected key=value; keys: {', '.join(fields)} (see --help)")
        if key not in fields:
            import difflib

            near = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise UserError(f"unknown key {key!r}{hint}; valid: {', '.join(fields)}")
        values[key] = convert(key, text, hints.get(key, str))
    if bare:
        assert positional is not None
        kind = hints.get(positional, str)
        joined = ",".join(bare)
        values[positional] = convert(positional, joined, kind)
    for key, allowed in (choices or {}).items():
        if key in values:
            ok = [str(a) for a in allowed]
            if str(values[key]) not in ok:
                from moesim.errors import did_you_mean

                raise UserError(f"{key}={values[key]!r}{did_you_mean(str(values[key]), ok)}: valid: {', '.join(ok)}")
    return config_cls(**values)


def print_help(text: str) -> typing.NoReturn:
    """Print ``text`` to stdout and exit 0 (quietly when the reader, e.g. ``| head``, went away)."""
    import os

    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(0)


def help_requested(argv: Sequence[str] | None = None) -> bool:
    """Whether ``-h``/``--help`` is on the command line (``sys.argv`` by default)."""
    return any(a in HELP_FLAGS for a in (sys.argv[1:] if argv is None else argv))
