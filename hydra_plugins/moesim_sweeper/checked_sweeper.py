"""``hydra/sweeper=moesim``: hydra's basic sweeper without its serial re-composition of every job.

``python -m moesim.simulate`` composes and validates every job of a command line before hydra starts
(``moesim.config.check_command_line``). The basic sweeper would compose each job again in the launching
process, one after the other (about 0.2 s a job on a small machine), before the launcher composes it once
more in the worker that runs it. Kept free of moesim imports: hydra imports every plugin at start-up.
No ``from __future__ import annotations``: hydra execs plugin modules outside ``sys.modules``, where
dataclasses cannot resolve string annotations.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore


@dataclass
class CheckedSweeperConf:
    """Same fields as hydra's basic sweeper."""

    _target_: str = "hydra_plugins.moesim_sweeper.checked_sweeper.CheckedSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045 (OmegaConf needs typing.Optional)
    params: Optional[dict[str, str]] = None  # noqa: UP045


class CheckedSweeper(BasicSweeper):
    """The basic sweeper; jobs were validated before hydra started."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Nothing to do: ``moesim.simulate`` validated every job already."""


ConfigStore.instance().store(group="hydra/sweeper", name="moesim", node=CheckedSweeperConf, provider="moesim")
