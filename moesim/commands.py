"""The command index: ``python -m moesim`` (and ``python -m moesim.fleet``) list the commands there are.

``python -m moesim`` used to answer Python's "No module named moesim.__main__; 'moesim' is a package and cannot
be directly executed", and ``python -m moesim.fleet`` the same: a new user's first guesses.
"""

from __future__ import annotations

import sys

from moesim.errors import exit_on_user_error

#: (module, what it does, needs) for every command a user runs; needs: "" (the simulator's install), "gpu"
#: (torch, ``pip install 'moesim[gpu]'``), "study" (the consolidation study's extra)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("moesim.simulate", "simulate policies on one GPU or a fleet; hydra sweeps and their report.html", ""),
    ("moesim.report", "(re)build a sweep's summary.csv and report.html; recompute SLO attainment", ""),
    ("moesim.search", "the cheapest fleet (GPU type x count x placement x policy) meeting an SLO", ""),
    ("moesim.specs", "every shipped model and GPU as a table (or CSV)", ""),
    ("moesim.serve", "serve a trace in real time with a policy deciding live (backend=cost needs no torch)", ""),
    ("moesim.serve.validate", "simulate served runs again and write the errors", ""),
    ("moesim.paper_compare", "per-rate tables of an experiment=paper_a100 sweep", ""),
    ("moesim.bench", "simulator speed benchmark", ""),
    ("moesim.fleet.bench", "fleet simulator speed benchmark", ""),
    ("moesim.search.bench", "capacity-search benchmark", ""),
    ("moesim.consolidation.report", "the consolidation quality report (CPU)", ""),
    ("moesim.consolidation.quality_report", "the 8-domain quality study's report (CPU)", ""),
    ("moesim.calibrate", "measure a cost profile of a model on this machine's GPU", "gpu"),
    ("moesim.calibrate.validate", "a profile's held-out steps: measured against predicted", ""),
    ("moesim.calibrate.floors", "a profile's measured ops against their roofline", ""),
    ("moesim.consolidate", "a consolidation plan from N variants' weights", "gpu"),
    ("moesim.executor", "simulate and execute the same trace, step by step", "gpu"),
    ("moesim.kernels.bench", "the fused kernels against floors measured in the same run", "gpu"),
    ("moesim.consolidation.study", "train a tiny MoE family, consolidate it, measure perplexity", "gpu"),
    ("moesim.consolidation.quality_study", "the 8-domain quality study", "gpu"),
)


def index(prefixes: tuple[str, ...] = ("moesim",)) -> str:
    """The commands under ``prefixes`` (packages or modules), one per line, with what they do and the extra
    they need."""
    rows = [c for c in COMMANDS if any(c[0] == p or c[0].startswith(p + ".") for p in prefixes)]
    width = max(len(f"python -m {m}") for m, _, _ in rows)
    return "\n".join(f"  {'python -m ' + m:<{width}}  {what}" + (f"  [pip install 'moesim[{need}]']" if need else "")
                     for m, what, need in rows)


@exit_on_user_error
def main(package: str, argv: list[str]) -> int:
    """Print the command index of ``package`` (``moesim`` or ``moesim.fleet``); every command answers
    ``--help``. Arguments are refused in one line naming the command to run. Returns the exit status."""
    words = [a for a in argv if a not in ("-h", "--help")]
    if words:  # python -m moesim simulate x=1: name the command that takes them
        cmd = f"{package}.{words[0]}"
        known = [m for m, _, _ in COMMANDS]
        hint = (f"run python -m {' '.join([cmd, *words[1:]])}" if cmd in known else
                "its commands: " + ", ".join(f"python -m {m}" for m in known if m.startswith(package + ".")))
        print(f"moesim: error: python -m {package} is not a command and takes no arguments; {hint}",
              file=sys.stderr)
        return 2
    if package == "moesim":
        print("moesim has no command of its own; its commands (each answers --help):")
        print(index())
    else:
        print(f"{package} is a library package, not a command. Fleets are simulated by python -m moesim.simulate "
              "fleet.gpus=N placement=NAME router=NAME (docs/fleet.md) and sized by python -m moesim.search "
              "(docs/search.md); the commands (each answers --help):")
        print(index(("moesim.simulate", "moesim.search", "moesim.fleet")))
    return 0
