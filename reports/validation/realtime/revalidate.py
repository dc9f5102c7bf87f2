"""Re-simulate every committed runtime validation call with the simulator as it is, and print the counts.

``python reports/validation/realtime/revalidate.py [call ...] [--variants]`` (CPU, needs simpy; about 40 s for all).

For each call folder under ``reports/validation/realtime`` that holds ``tables/decode_table.csv`` (or the ones named),
runs ``python -m moesim.serve.validate <call> sim_cost=profile_bucketed table=<call>/tables/decode_table.csv``, which
rewrites the call's ``validation_profile_bucketed.{csv,md}`` and per-run parquets, and prints one line per call: the
runs within 5 % on all four figures. ``--variants`` also writes the ``link=run`` (each single-instance run at its own
measured copy rate) and ``fetch_model=host_bound`` (the rule before the pipeline model) files.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pandas as pd

from moesim.serve.validate import main as validate
from moesim.serve.validate import within_target

HERE = Path(__file__).resolve().parent
VARIANTS = {"": (), "_link_run": ("link=run",), "_host_bound": ("fetch_model=host_bound",)}


def calls(names: list[str]) -> list[Path]:
    """The call folders: those named, else every folder here with a decode table."""
    if names:
        return [HERE / n for n in names]
    return sorted(p.parent.parent for p in HERE.glob("*/tables/decode_table.csv"))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return
    variants = "--variants" in args
    names = [a for a in args if a != "--variants"]
    for call in calls(names):
        table = call / "tables" / "decode_table.csv"
        if not table.is_file():
            print(f"{call.name}: no tables/decode_table.csv (not a call folder)")
            continue
        counts = []
        for suffix, extra in VARIANTS.items():
            if suffix and not variants:
                continue
            with contextlib.redirect_stdout(io.StringIO()):
                validate([str(call), "sim_cost=profile_bucketed", f"table={table}", *extra])
            t = pd.read_csv(call / f"validation_profile_bucketed{suffix}.csv")
            ok = sum(within_target(r) for _, r in t.iterrows())
            counts.append(f"{suffix.lstrip('_') or 'link=table'}: {ok} of {len(t)}")
        print(f"{call.name}: " + ", ".join(counts), flush=True)


if __name__ == "__main__":
    main()
