"""``python -m moesim.executor key=value ...``: simulate and execute the same trace, write the validation.

Example (CPU, seconds): ``python -m moesim.executor device=cpu model=tiny max_requests=12 out=/tmp/val``.
Keys and defaults: ``moesim.executor.config.ExecutorConfig``.
"""

from __future__ import annotations

import sys

from moesim.errors import exit_on_user_error
from moesim.executor.config import parse_args


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Parse ``key=value`` arguments and run the validation."""
    args = sys.argv[1:] if argv is None else argv
    cfg = parse_args(args)
    from moesim.outdir import check_writable

    check_writable(cfg.out, "out")
    from moesim.executor.run import run

    run(cfg, args)


if __name__ == "__main__":
    main()
