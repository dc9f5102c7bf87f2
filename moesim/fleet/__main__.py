"""``python -m moesim.fleet``: the commands that simulate, search and benchmark fleets (moesim.commands)."""

from __future__ import annotations

import sys

from moesim.commands import main

if __name__ == "__main__":
    raise SystemExit(main("moesim.fleet", sys.argv[1:]))
