"""Expert consolidation: distances between variants' experts, plans, and applying plans to weights.

Torch-free here (``plan``, ``builders``, ``matching``, ``distance_model``); ``weights`` and ``apply``
import torch when used.
"""

from moesim.consolidation.plan import METHODS, SCHEMA, ExpertCopy, Plan, load_plan, plan_from_distance_model

__all__ = ["METHODS", "SCHEMA", "ExpertCopy", "Plan", "load_plan", "plan_from_distance_model"]
