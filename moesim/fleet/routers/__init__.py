"""Live routers, registered by name (``router=<name>``): one file each.

``round_robin``, ``least_work`` (outstanding tokens), ``affinity`` (prefer a GPU where the tenant's
non-expert set is resident), ``power_of_two`` (two random replicas, the less loaded).
"""

from moesim.fleet.routers.base import Router, RouterConfig
from moesim.registry import Registry

ROUTERS: Registry[Router] = Registry("router")

from moesim.fleet.routers import affinity, least_work, power_of_two, round_robin  # noqa: E402, F401

__all__ = ["ROUTERS", "Router", "RouterConfig"]
