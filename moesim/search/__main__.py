"""``python -m moesim.search``: the cheapest fleet meeting an SLO target (see docs/search.md, ``--help``)."""

from __future__ import annotations

import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

from moesim.errors import UserError, exit_on_user_error


def _out_dir(text: str) -> Path:
    out = Path(text) if text else Path("outputs") / "search" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if out.exists() and not out.is_dir():  # was "cannot create it (File exists)"
        raise UserError(f"search.out={out}: is a file, not a folder; give an empty or new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"search.out={out}: cannot create it ({exc.strerror})") from None
    if any(out.glob("search.*")):
        raise UserError(f"search.out={out}: already holds a search; give an empty or new directory")
    # another tool's files the search would overwrite: a simulate sweep's report.html was replaced by the search's
    from moesim.search import outputs

    clash = [n for n in (outputs.REPORT_HTML, outputs.NEEDED_CSV, outputs.PLACEMENT) if (out / n).exists()]
    if clash:
        raise UserError(f"search.out={out}: already holds {', '.join(clash)} (another run's), which the search would "
                        "overwrite; give an empty or new directory")
    return out


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    """Parse, search, write the outputs; 0 when a fleet meets the target, 1 when none does."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        from moesim.search.cli import help_text

        print(help_text(), end="")
        return 0
    from moesim.search import outputs, report
    from moesim.search.backends import make_backend
    from moesim.search.cli import parse
    from moesim.search.driver import Search, check_space, cost_lines
    from moesim.search.prices import load_prices

    cmd = parse(argv)
    cfg = cmd.search
    prices = load_prices(cfg.prices)
    check_space(cfg, cmd.base)
    for gpu in cfg.gpus:
        prices.per_hour(gpu)
    out = _out_dir(cfg.out)
    for gpu, line in cost_lines(cfg, cmd.base).items():
        print(f"moesim: cost on {gpu}: {line}", file=sys.stderr)
    command = "python -m moesim.search " + " ".join(shlex.quote(a) for a in argv)
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        from moesim.sweep import LOG_INTERVAL_S

        # into a log file (stderr not a terminal), at most once a minute
        bar = tqdm(unit="trial", desc="search", mininterval=0.5 if sys.stderr.isatty() else LOG_INTERVAL_S,
                   file=sys.stderr)
    t0 = time.perf_counter()
    backend = make_backend(cfg.backend, cfg.workers, cfg.ray_address)
    try:
        search = Search(cfg, cmd.base, prices, backend, on_round=lambda df: outputs.write_trials(out, df),
                        progress=(lambda k: bar.update(k)) if bar is not None else None)
        result = search.run()
    finally:
        backend.close()
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    paths = outputs.write_all(out, result, prices, command=command, wall_s=wall, backend=backend.name,
                              workers=backend.workers)
    html = report.build(out, result, prices, command=command, wall_s=wall)
    ans = result.answer
    approx = " (approximate list prices)" if Path(prices.path).name == "prices.yaml" and not cfg.prices else ""
    if ans is None:
        print(f"moesim: no fleet of at most {cfg.max_gpus} GPUs meets SLO attainment {cfg.target:g}; "
              f"{len(result.trials)} trials; table: {paths['csv']}; report: {html}")
        return 1
    print(f"moesim: cheapest fleet meeting SLO attainment {cfg.target:g}: {ans.count} x {ans.arm.gpu}, "
          f"{ans.arm.strategy} placement, {ans.arm.policy} (max_batch {ans.arm.max_batch}): "
          f"{ans.usd_per_hour:.2f} {prices.currency}/hour, {ans.usd_per_mtok:.3f} {prices.currency} per million "
          f"tokens{approx}; verified on fresh seeds ({', '.join(f'{a:.3f}' for a in ans.attainment_verify)})")
    print(f"moesim: {len(result.trials)} trials in {result.rounds} rounds, {wall:.1f} s on {backend.name} "
          f"({backend.workers} worker{'s' if backend.workers != 1 else ''}); outputs in {out}/ (search.csv, {outputs.PLACEMENT}, report.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
