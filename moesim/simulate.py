"""``python -m moesim.simulate``: hydra entry point (see conf/config.yaml and docs/report.md).

Without flags: the default policy comparison sweep and its report. One job:
``python -m moesim.simulate hydra.mode=RUN hydra.run.dir=D policy=reconfig workload.rate=0.05 seed=1``.

Before hydra starts, every job is composed and validated, the output location is checked (writable, not
full), a non-empty sweep dir is refused unless ``sweep.resume=true`` or ``sweep.overwrite=true``, and the
cost model each job uses is announced in one line. Exit status: 0, 1 when a sweep job failed, 2 for bad
input, 130 after Ctrl-C, 143 after SIGTERM (summary.csv and report.html are written in every case).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from moesim.cli import help_requested, print_help
from moesim.config import (
    CONF_DIR,
    CONFIG_NAME,
    plan_command_line,
    register_configs,
    rewrite_file_overrides,
    simulate_help,
)
from moesim.errors import exit_on_user_error, one_line_warnings
from moesim.outdir import check_writable
from moesim.sweep import (
    LAUNCHER_PID_ENV,
    NOT_STARTED,
    check_run_dir,
    finish_sweep,
    last_counts,
    prepare_sweep_dir,
    run_hydra_job,
)


@hydra.main(config_path=str(CONF_DIR), config_name=CONFIG_NAME, version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    one_line_warnings()  # also in a sweep's worker processes
    run_hydra_job(cfg)


class Terminated(BaseException):
    """SIGTERM received by the launcher (raised in its main thread, so the launcher stops its workers)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


@exit_on_user_error
def main() -> None:
    """Validate every job of the command line (one-line errors), then hand over to hydra."""
    register_configs()
    sys.argv[1:] = rewrite_file_overrides(sys.argv[1:])
    if help_requested():
        print_help(simulate_help(sys.argv[1:]))
    plan = plan_command_line(sys.argv[1:])
    if plan is not None:
        what = "hydra.sweep.dir" if plan.multirun else "hydra.run.dir"
        check_writable(plan.out_dir, what)
        if plan.multirun:
            prepare_sweep_dir(plan)
        else:
            check_run_dir(plan)
        for line in plan.cost_lines:
            print(f"moesim: {line}", file=sys.stderr)
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())  # workers exit when this process is gone
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    stopped = ""
    try:
        _hydra_main()
    except KeyboardInterrupt:
        stopped, code = "interrupted (Ctrl-C)", 130
    except Terminated:
        stopped, code = "terminated (SIGTERM)", 143
    except BrokenPipeError:  # e.g. --hydra-help | head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        finish_sweep()  # a no-op unless a sweep aborted before hydra's end-of-sweep callback
    counts = last_counts()
    if stopped:
        left = counts.get(NOT_STARTED, 0) + counts.get("incomplete", 0)
        print(f"moesim: {stopped}; {counts.get('ok', 0)} jobs finished, {left} not finished "
              "(listed in summary.csv)" if counts else f"moesim: {stopped}", file=sys.stderr)
        raise SystemExit(code)
    if counts.get("failed", 0):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
