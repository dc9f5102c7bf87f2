"""The calibrator's configuration and its hydra-style ``key=value`` command line.

A plain parser (the GPU machine has no hydra): ``python -m moesim.calibrate device=cpu model=tiny``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from moesim.cli import parse_key_values
from moesim.errors import UserError
from moesim.resources import user_profiles_dir
from moesim.specs import MODEL_SPECS
from moesim.specs.models import is_path

GRIDS = ("auto", "full", "quick")
MOE_KERNELS = ("grouped", "triton")


@dataclass(frozen=True)
class CalibrateConfig:
    """What to measure and where to write it.

    Attributes:
        device: ``cuda`` (timings with CUDA events) or ``cpu`` (wall clock; for CI and the tiny model).
        model: a model registry name (``mixtral-8x7b``, ``qwen3-30b-a3b``, ``tiny``...) or a config.json path.
        out: folder for ``<gpu>__<model>.parquet`` and ``.json``; empty: the user profile folder
            (``$MOESIM_PROFILES_DIR`` or ``~/.local/share/moesim/profiles``), where ``cost=profile`` finds it.
        plan: a consolidation plan JSON (``moesim.plan/1``); empty: one variant's whole model.
        tenants: non-expert sets built on the GPU for the held-out validation (≥ 1).
        grid: ``full`` (tokens 1…8192, context ≤ 16384, decode batch ≤ 256), ``quick`` (small, for CI) or
            ``auto``: full on CUDA, quick on CPU.
        validate: run held-out full-model steps after the tables.
        host: measure the host link (pinned and pageable copies, overlap with compute).
        slices: measure CUDA green-context slices at ``sms`` (CUDA only).
        graphs: time device ops and whole steps as CUDA-graph replays (CUDA only), as a serving engine runs
            them: no host launch gaps. ``false`` times eager PyTorch (written as ``<gpu>__<model>.eager``).
        sms: comma-separated SM counts for slices; empty: the GPU's MIG profiles' SM counts.
        budget_s: wall seconds after which remaining table points are recorded as ``budget`` (0: none).
        resume: keep ok/oom points of an existing profile of the same gpu × model and measure the rest.
        min_reps, max_reps: repeats per point (adaptive between them: about ``target_s`` of timing each).
        target_s: timing seconds aimed at per point.
        seed: random seed for weights, routing inputs and validation batches.
        balanced_routing: route whole steps near-uniformly at random (``MoEEngine``'s balanced_routing):
            random-weight models otherwise send every token to a few experts, which matters with many
            fine-grained experts. Used for Qwen3-MoE, Qwen1.5-MoE and OLMoE (calibration/NOTES.md).
        moe_kernel: the engine's experts: ``grouped`` (``torch._grouped_mm``) or ``triton`` (the fused MoE
            kernel with the fused router and RoPE/KV-write ops of ``moesim.kernels``; the profile is written as
            ``<gpu>__<model>.triton`` and its metadata says ``moe_engine: triton``).
        heldout_seed: ≥ 0 also times a second held-out set drawn afresh from this seed (sizes, tenants and
            contexts; the same kinds of batches as the first), written to ``<stem>.validation.seed<N>.parquet``;
            -1: none.
        validate_base: with ``validate``, time the first held-out set (``<stem>.validation.parquet``); false
            times only the drawn one (``heldout_seed``), e.g. where the first set's earlier measurement stands.
        moe_tuning: with ``moe_kernel=triton``, an ``engine_tuning.json`` written by ``python -m
            moesim.kernels.bench`` (tiles per token regime, fused/grouped crossover, prompt attention): the engine
            runs with those (recorded in the metadata); empty: the defaults of ``moesim.kernels.fused_moe``.
    """

    device: str = "cuda"
    model: str = "mixtral-8x7b"
    out: str = ""
    plan: str = ""
    tenants: int = 3
    grid: str = "auto"
    validate: bool = True
    host: bool = True
    slices: bool = True
    graphs: bool = True
    sms: str = ""
    budget_s: float = 0.0
    resume: bool = True
    min_reps: int = 3
    max_reps: int = 25
    target_s: float = 0.12
    seed: int = 0
    balanced_routing: bool = False
    moe_kernel: str = "grouped"
    heldout_seed: int = -1
    validate_base: bool = True
    moe_tuning: str = ""

    def __post_init__(self) -> None:
        if self.device not in ("cuda", "cpu"):
            raise UserError(f"device={self.device!r}: valid: cuda, cpu")
        if not is_path(self.model) and self.model not in MODEL_SPECS:
            raise UserError(f"model={self.model!r}: valid: {', '.join(sorted(MODEL_SPECS))}")
        if self.moe_kernel not in MOE_KERNELS:
            raise UserError(f"moe_kernel={self.moe_kernel!r}: valid: {', '.join(MOE_KERNELS)}")
        if self.grid not in GRIDS:
            raise UserError(f"grid={self.grid!r}: valid: {', '.join(GRIDS)}")
        if self.tenants < 1:
            raise UserError(f"tenants={self.tenants}: must be ≥ 1")
        if not 1 <= self.min_reps <= self.max_reps:
            raise UserError(f"min_reps={self.min_reps}, max_reps={self.max_reps}: need 1 ≤ min_reps ≤ max_reps")
        if not (self.budget_s >= 0 and math.isfinite(self.budget_s) and self.target_s > 0
                and math.isfinite(self.target_s)):
            raise UserError(f"budget_s={self.budget_s}, target_s={self.target_s}: need budget_s ≥ 0, target_s > 0")
        if self.moe_tuning:
            if self.moe_kernel != "triton":
                raise UserError(f"moe_tuning={self.moe_tuning!r} tunes the fused engine: set moe_kernel=triton too")
            from moesim.kernels.regimes import load_tuning

            load_tuning(self.moe_tuning)
        for part in filter(None, self.sms.split(",")):
            if not part.strip().isdigit() or int(part) < 1:
                raise UserError(f"sms={self.sms!r}: comma-separated positive SM counts, e.g. 16,32,132")

    def out_dir(self) -> Path:
        """The folder profiles are written to (``out``, or the user profile folder when empty)."""
        return Path(self.out).expanduser() if self.out else user_profiles_dir()

    def sm_counts(self) -> tuple[int, ...]:
        """The ``sms`` field as integers (empty when unset)."""
        return tuple(int(p) for p in self.sms.split(",") if p.strip())


SUMMARY = ("Measure a cost profile (per-op step times) of a model on this machine's GPU (or CPU) and write "
           "<gpu>__<model>.parquet + .json. The output folder and every value are checked before anything "
           "is measured.")
EXAMPLES = ("python -m moesim.calibrate device=cpu model=tiny out=/tmp/prof",
            "python -m moesim.calibrate model=mixtral-8x7b budget_s=900")


def parse_args(argv: list[str]) -> CalibrateConfig:
    """``["device=cpu", "model=tiny"]`` → config; an unknown key or a bad value is one clear line."""
    return parse_key_values(argv, CalibrateConfig, prog="python -m moesim.calibrate", summary=SUMMARY,
                            choices={"device": ("cuda", "cpu"), "model": sorted(MODEL_SPECS), "grid": GRIDS,
                                     "moe_kernel": MOE_KERNELS},
                            examples=EXAMPLES)
