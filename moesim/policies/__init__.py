"""Sharing policies, registered by name (``policy=<name>``).

Paper baselines: ``reconfig`` (the paper's partial runtime reconfiguration), ``mig``, ``naive``, ``swap``,
``dedicated`` (ideal reference). Ours: ``reconfig_fast`` (the paper's layout with a pinned, layer-overlapped
swap and continuous batching) and ``multiplex`` (all non-expert sets resident, shared experts, batching
across variants, overlapped expert fetches).
"""

from moesim.policies.base import InstancePlan, Policy, PolicyConfig, Selection
from moesim.registry import Registry

POLICIES: Registry[Policy] = Registry("policy")

from moesim.policies import (  # noqa: E402, F401
    dedicated,
    mig,
    multiplex,
    naive,
    reconfig,
    reconfig_fast,
    swap,
)

__all__ = ["POLICIES", "InstancePlan", "Policy", "PolicyConfig", "Selection"]
