"""Cost models: the only contract between the calibrator's measurements and the simulator.

Registered by name in ``COST_MODELS``; each implementation is one module holding its config dataclass.
"""

from moesim.cost.base import (
    CostModel,
    DecodeRun,
    ExpertGroup,
    Residency,
    SeqWork,
    Slice,
    StepCost,
    expected_active_fraction,
)
from moesim.errors import UserError
from moesim.registry import Registry
from moesim.specs import GPUSpec, ModelSpec

COST_MODELS: Registry[CostModel] = Registry("cost model")

# Implementations register themselves on import (each module: one config dataclass, one class).
from moesim.cost import (  # noqa: E402, F401
    constant,
    profile,
    profile_bucketed,
    profile_mixed,
    roofline,
)


def build_or_auto(kind: str, model: ModelSpec, gpu: GPUSpec, execution: str) -> tuple[CostModel, str]:
    """The cost model ``kind`` (a ``COST_MODELS`` name, default config) and the name actually built.

    ``profile`` and ``auto`` build the shipped profile of ``gpu`` × ``model`` for ``execution`` (``graphs``
    or ``eager``); ``auto`` falls back to ``roofline`` when there is none (``profile`` then fails).
    """
    if kind in ("auto", "profile"):
        try:
            return COST_MODELS.build("profile", {"execution": execution}, model=model, gpu=gpu), "profile"
        except UserError:
            if kind == "profile":
                raise
        kind = "roofline"
    return COST_MODELS.build(kind, None, model=model, gpu=gpu), kind


__all__ = [
    "COST_MODELS",
    "CostModel",
    "DecodeRun",
    "ExpertGroup",
    "Residency",
    "SeqWork",
    "Slice",
    "StepCost",
    "build_or_auto",
    "expected_active_fraction",
]
