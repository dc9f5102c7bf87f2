"""``python -m moesim``: the list of moesim's commands (moesim.commands)."""

from __future__ import annotations

import sys

from moesim.commands import main

if __name__ == "__main__":
    raise SystemExit(main("moesim", sys.argv[1:]))
