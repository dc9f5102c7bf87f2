"""``python -m moesim.calibrate key=value …``: measure a profile (see ``moesim.calibrate.config``)."""

from __future__ import annotations

import sys

from moesim.errors import UserError, exit_on_user_error


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Parse ``key=value`` arguments, run the calibration, print where the profile went."""
    from moesim.calibrate.config import parse_args

    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    from moesim.outdir import check_writable

    check_writable(cfg.out_dir(), "out")  # before torch is imported or anything measured
    if cfg.plan:
        from pathlib import Path

        if not Path(cfg.plan).is_file():
            raise UserError(f"plan={cfg.plan}: no such file; give a consolidation plan JSON (moesim.plan/1)")
    from moesim.calibrate.suite import Calibration  # imports torch

    path = Calibration(cfg).run()
    print(f"profile written: {path} (+ {path.with_suffix('.json').name})")


if __name__ == "__main__":
    main()
