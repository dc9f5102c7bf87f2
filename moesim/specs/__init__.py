"""Model and GPU specifications (frozen records) and MIG layouts."""

from moesim.specs.gpus import GPU_SPECS, GPUSpec, MIGProfile, get_gpu
from moesim.specs.mig import MIGInstance, MIGLayout, mig_layouts, parse_layout
from moesim.specs.models import MODEL_SPECS, ModelSpec, get_model

__all__ = [
    "GPU_SPECS",
    "MODEL_SPECS",
    "GPUSpec",
    "MIGInstance",
    "MIGLayout",
    "MIGProfile",
    "ModelSpec",
    "get_gpu",
    "get_model",
    "mig_layouts",
    "parse_layout",
]
