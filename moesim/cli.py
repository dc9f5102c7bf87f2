"""``key=value`` command lines for the tools that run on a GPU machine without hydra (calibrator, executor).

Values are converted by the config dataclass's field types (bool, int, float, str); an unknown key or a bad
value is one ``UserError`` line naming the key, the value and what would be valid.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from moesim.errors import UserError

C = TypeVar("C")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def convert(name: str, text: str, kind: Any) -> Any:
    """``text`` as the field type ``kind`` (a type or its name under postponed annotations)."""
    if kind in (bool, "bool"):
        low = text.lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise UserError(f"{name}={text!r}: expected true or false")
    for t, what in ((int, "an integer"), (float, "a number")):
        if kind in (t, t.__name__):
            try:
                return t(text)
            except ValueError:
                raise UserError(f"{name}={text!r}: expected {what}") from None
    return text


def parse_key_values(argv: list[str], config_cls: type[C]) -> C:
    """``["device=cpu", "model=tiny"]`` → ``config_cls(device="cpu", model="tiny")`` (hydra's ``+key`` too)."""
    fields = {f.name: f.type for f in dataclasses.fields(config_cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for arg in argv:
        key, sep, text = arg.partition("=")
        key = key.lstrip("+").strip()
        if not sep or not key:
            raise UserError(f"argument {arg!r}: expected key=value; keys: {', '.join(fields)}")
        if key not in fields:
            raise UserError(f"unknown key {key!r}; valid: {', '.join(fields)}")
        values[key] = convert(key, text, fields[key])
    return config_cls(**values)
