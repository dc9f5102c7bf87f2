"""A constant cost model for tests and queueing-theory checks.

Every sequence prefilling in a step costs ``prefill_s`` (once, whatever its length) and every step that
decodes costs ``decode_step_s`` (whatever the batch). Nothing depends on residency, so closed forms
(M/D/1, M/M/1) apply exactly. Swaps cost ``swap_s`` when set, else bytes over the host link. ``service_dist="exponential"`` draws each prefill from an exponential law
with mean ``prefill_s`` (seeded), for M/M/1 checks with one-token outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.cost import COST_MODELS
from moesim.cost.base import CostModel, DecodeRun, Residency, SeqWork, StepCost
from moesim.errors import UserError
from moesim.specs import GPUSpec, ModelSpec


@dataclass(frozen=True)
class ConstantCostConfig:
    """Fixed costs (seconds)."""

    name: str = "constant"
    prefill_s: float = 0.5
    decode_step_s: float = 0.02
    service_dist: str = "deterministic"  # or "exponential" (prefill only)
    seed: int = 0
    swap_s: float = -1.0  # fixed seconds per swap; < 0: bytes over the host link, as every cost model

    def __post_init__(self) -> None:
        if self.prefill_s < 0 or self.decode_step_s < 0:
            raise UserError(f"cost=constant: prefill_s={self.prefill_s}, decode_step_s={self.decode_step_s}: "
                            "must be ≥ 0 seconds")
        if self.service_dist not in ("deterministic", "exponential"):
            raise UserError(f"cost.service_dist={self.service_dist!r}: valid: deterministic, exponential")


@COST_MODELS.register("constant", ConstantCostConfig)
class ConstantCost(CostModel):
    """Fixed prefill and decode-step times."""

    provenance = "constant"

    name = "constant"

    def __init__(self, cfg: ConstantCostConfig, model: ModelSpec, gpu: GPUSpec) -> None:
        super().__init__(model, gpu)
        self.cfg = cfg
        self._rng = np.random.default_rng(cfg.seed)

    def _prefill_s(self) -> float:
        if self.cfg.service_dist == "exponential":
            return float(self._rng.exponential(self.cfg.prefill_s))
        return self.cfg.prefill_s

    def step(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost:
        """``prefill_s`` per prefilling sequence, plus ``decode_step_s`` if any sequence decodes."""
        n_prefill = sum(1 for s in batch if s.new_tokens > 1 or s.context == 0)
        prefill = sum(self._prefill_s() for _ in range(n_prefill))
        decode = self.cfg.decode_step_s if n_prefill < len(batch) else 0.0
        return StepCost(attention_s=prefill + decode)

    def decode_run(self, decode_tenants: tuple[int, ...], context0: tuple[int, ...], n_steps: int,
                   residency: Residency) -> DecodeRun:
        """``n_steps`` steps of ``decode_step_s`` each."""
        ends = self.cfg.decode_step_s * np.arange(1, n_steps + 1, dtype=float)
        return DecodeRun(ends, StepCost(attention_s=float(ends[-1]) if n_steps else 0.0))

    def swap_s(self, nbytes: float, residency: Residency, bandwidth_fraction: float = 1.0) -> float:
        """``cfg.swap_s`` when set (≥ 0), else bytes over the host link (seconds)."""
        if self.cfg.swap_s >= 0:
            return self.cfg.swap_s
        return super().swap_s(nbytes, residency, bandwidth_fraction)
