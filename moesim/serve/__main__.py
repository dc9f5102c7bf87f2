"""``python -m moesim.serve key=value ...``: serve a trace in real time with a policy deciding live.

Example (CPU, seconds): ``python -m moesim.serve device=cpu model=tiny rate=4 max_requests=16 out=/tmp/s``.
Keys and defaults: ``moesim.serve.config.ServeConfig`` (``--help``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from moesim.errors import UserError, exit_on_user_error
from moesim.serve.config import parse_args


def _check_not_another_run(out: Path) -> None:
    """Refuse an ``out=`` folder holding another tool's run, whose summary.json and requests.parquet serve would
    overwrite (a simulate run's were replaced); an earlier served run there is rerun over, as before."""
    import json

    if (out / "multirun.yaml").exists():
        raise UserError(f"out={out}: holds a simulate sweep (multirun.yaml); give an empty or new folder")
    summary = out / "summary.json"
    if summary.is_file():
        try:
            doc = json.loads(summary.read_text())
        except (OSError, ValueError):
            doc = None
        if not (isinstance(doc, dict) and isinstance(doc.get("config"), dict) and "policy" in doc["config"]):
            raise UserError(f"out={out}: its summary.json is not a served run's (a simulate run's?), and serve would "
                            "overwrite it; give an empty or new folder")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Parse ``key=value`` arguments and serve."""
    args = sys.argv[1:] if argv is None else argv
    cfg = parse_args(args)
    from moesim.outdir import check_writable

    check_writable(cfg.out, "out")
    _check_not_another_run(Path(cfg.out))
    from moesim.serve.run import run

    run(cfg, args)
    if cfg.policy == "mig" and cfg.device == "cuda" and cfg.backend == "torch":
        # every output is written: skip interpreter teardown, where destroying green contexts before the
        # tensors used on their streams aborts the process (``CUDA error: context is destroyed``)
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
