"""What a capacity search spans and how it decides: the ``search.*`` keys of ``python -m moesim.search``."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from moesim.errors import UserError


@dataclass(frozen=True)
class SearchConfig:
    """The ``search.*`` keys (lists are comma-separated on the command line: ``search.gpus=h200,a100-80gb``).

    Attributes:
        gpus: GPU types tried (each needs a price in the price table).
        strategies: placement strategies tried (moesim.fleet.PLACEMENTS; ``optimal`` stops its MILP at a time
            limit, so its placement, and the search's answer, may then depend on the machine's speed).
        policies: sharing policies tried on every GPU of a fleet.
        max_batch: batch limits (sequences per batch) tried.
        router: the live router of every fleet (moesim.fleet.ROUTERS).
        target: SLO attainment a fleet must reach: the share of requests whose TTFT and TPOT are both within
            slo_ttft_s and slo_tpot_s (refused requests count as missed).
        margin: the search needs target + margin on EVERY search seed; the answer is then re-simulated on
            verify_seeds and must reach target on every one (else its GPU count is raised until it does).
        seeds: workload seeds every search trial simulates.
        verify_seeds: fresh seeds the answer is re-checked on (disjoint from seeds).
        max_gpus: largest fleet tried per GPU type (GPUs).
        loads: load factors on the workload's rate for the GPUs-needed-vs-rate figure; the answer is at 1.
        prices: $/GPU-hour table (YAML); empty: the shipped approximate list prices.
        backend: ray (a local Ray, or the cluster at ray_address) or local (this process / a process pool).
        workers: trials at once (CPUs of the local Ray or the pool); 0: every CPU of this machine.
        ray_address: an existing Ray cluster (HOST:PORT or auto); empty: start a local Ray.
        out: output directory; empty: outputs/search/<date>_<time> under the current directory.
        progress: show a progress bar of finished trials.
    """

    gpus: tuple[str, ...] = ("a100-80gb", "h100-80gb", "h200")
    strategies: tuple[str, ...] = ("greedy_slo", "pack", "per_variant")
    policies: tuple[str, ...] = ("multiplex", "reconfig", "swap")
    max_batch: tuple[int, ...] = (8, 32)
    router: str = "least_work"
    target: float = 0.9
    margin: float = 0.01
    seeds: tuple[int, ...] = (0, 1)
    verify_seeds: tuple[int, ...] = (1000, 1001)
    max_gpus: int = 64
    loads: tuple[float, ...] = (1.0,)
    prices: str = ""
    backend: str = "ray"
    workers: int = 0
    ray_address: str = ""
    out: str = ""
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("gpus", "strategies", "policies", "max_batch", "seeds", "verify_seeds", "loads"):
            if not getattr(self, name):
                raise UserError(f"search.{name}: empty; give at least one value")
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise UserError(f"search.{name}={','.join(map(str, getattr(self, name)))}: repeated values")
        if not 0 < self.target <= 1:
            raise UserError(f"search.target={self.target}: must be in (0, 1] (share of requests)")
        if not 0 <= self.margin < 1 or self.target + self.margin > 1:
            raise UserError(f"search.margin={self.margin}: must be ≥ 0 with target + margin ≤ 1")
        if any(s < 0 for s in self.seeds + self.verify_seeds):
            raise UserError("search.seeds / search.verify_seeds: seeds must be integers ≥ 0")
        if set(self.seeds) & set(self.verify_seeds):
            raise UserError(f"search.verify_seeds={','.join(map(str, self.verify_seeds))}: must be disjoint "
                            f"from search.seeds={','.join(map(str, self.seeds))} (fresh seeds)")
        if any(b < 1 for b in self.max_batch):
            raise UserError(f"search.max_batch={','.join(map(str, self.max_batch))}: each must be ≥ 1")
        if self.max_gpus < 1:
            raise UserError(f"search.max_gpus={self.max_gpus}: must be ≥ 1")
        if any(not (math.isfinite(x) and x > 0) for x in self.loads):
            raise UserError(f"search.loads={','.join(map(str, self.loads))}: each must be a number > 0")
        if self.workers < 0:
            raise UserError(f"search.workers={self.workers}: must be ≥ 0 (0: every CPU)")
        from moesim.search.backends import BACKENDS

        if self.backend not in BACKENDS:
            raise UserError(f"search.backend={self.backend!r}: unknown; valid: {', '.join(BACKENDS)}")

    @property
    def all_loads(self) -> tuple[float, ...]:
        """``loads`` with 1 (the user's workload) added, sorted."""
        return tuple(sorted(set(self.loads) | {1.0}))


def field_types() -> dict[str, str]:
    """``search.<key>`` → the field's type name, for parsing."""
    return {f.name: str(f.type) for f in fields(SearchConfig)}
