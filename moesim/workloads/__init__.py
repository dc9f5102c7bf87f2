"""Workloads: generators and trace replays producing ``Request`` records.

Registered by name in ``WORKLOADS`` (``poisson``, ``gamma``, ``azure_conv``, ``azure_code``, ``trace``); each
is built as ``cls(cfg)`` from its frozen config dataclass and offers ``generate(seed) -> list[Request]`` and
``horizon_s``::

    wl = WORKLOADS.build("poisson", {"rate": 0.05, "tenants": 2, "duration_s": 3600})
    requests = wl.generate(seed=1)
"""

from moesim.registry import Registry
from moesim.workloads.base import Workload
from moesim.workloads.request import Request

WORKLOADS: Registry[Workload] = Registry("workload")

# Implementations register themselves on import (each module: config dataclass(es) and class(es)).
from moesim.workloads import azure, gamma, poisson, trace  # noqa: E402, F401
from moesim.workloads.loader import read_trace  # noqa: E402

__all__ = ["WORKLOADS", "Request", "Workload", "read_trace"]
