"""``python -m moesim.simulate``: hydra entry point (see conf/config.yaml and docs/report.md).

Without flags: the default policy comparison sweep and its report. One job:
``python -m moesim.simulate hydra.mode=RUN hydra.run.dir=D policy=reconfig workload.rate=0.05 seed=1``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from moesim.config import CONF_DIR, CONFIG_NAME, check_command_line, register_configs, rewrite_file_overrides
from moesim.errors import exit_on_user_error
from moesim.sweep import finish_sweep, run_hydra_job


@hydra.main(config_path=str(CONF_DIR), config_name=CONFIG_NAME, version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    run_hydra_job(cfg)


@exit_on_user_error
def main() -> None:
    """Validate every job of the command line (one-line errors), then hand over to hydra."""
    register_configs()
    sys.argv[1:] = rewrite_file_overrides(sys.argv[1:])
    check_command_line(sys.argv[1:])
    try:
        _hydra_main()
    finally:
        finish_sweep()  # a no-op unless a sweep aborted before hydra's end-of-sweep callback


if __name__ == "__main__":
    main()
