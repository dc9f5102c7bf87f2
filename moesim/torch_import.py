"""``from moesim.torch_import import torch``: torch for a module that is also a command.

A module that imports torch at its top and is run as ``python -m moesim.X`` without torch installed ended in a
ModuleNotFoundError traceback before its command line was parsed (``--help`` included). Run as a moesim
command, a missing torch is one ``moesim: error:`` line naming the extra to install (exit 2); imported as a
library it raises ModuleNotFoundError as ``import torch`` would.
"""

from __future__ import annotations

import sys

from moesim.errors import OPTIONAL_PACKAGES

try:
    import torch
except ModuleNotFoundError as exc:
    _spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    _command = getattr(_spec, "name", "") or ""
    if exc.name == "torch" and _command.startswith("moesim."):
        print(f"moesim: error: python -m {_command} needs torch, which is not installed; install it with "
              f"pip install 'moesim[{OPTIONAL_PACKAGES['torch']}]' (the simulator and reports need none of it)",
              file=sys.stderr)
        raise SystemExit(2) from None
    raise

__all__ = ["torch"]
