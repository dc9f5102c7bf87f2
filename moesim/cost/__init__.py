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
from moesim.registry import Registry

COST_MODELS: Registry[CostModel] = Registry("cost model")

# Implementations register themselves on import (each module: one config dataclass, one class).
from moesim.cost import (  # noqa: E402, F401
    constant,
    profile,
    profile_mixed,
    roofline,
)

__all__ = [
    "COST_MODELS",
    "CostModel",
    "DecodeRun",
    "ExpertGroup",
    "Residency",
    "SeqWork",
    "Slice",
    "StepCost",
    "expected_active_fraction",
]
