"""The short, capped trace the executor's validation and the real-time runtime both replay."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from moesim.workloads.request import Request


class CappedTraceKnobs(Protocol):
    """The config fields the trace is built from (``ExecutorConfig`` and ``ServeConfig`` both have them)."""

    workload: str  # ``azure_conv`` (arrivals and tokens) or ``poisson`` (arrivals; tokens from azure_conv)
    tenants: int
    rate: float  # requests/s per tenant
    max_requests: int
    max_prompt: int  # tokens
    max_output: int  # tokens
    seed: int


def capped_requests(cfg: CappedTraceKnobs) -> list[Request]:
    """The trace: ``max_requests`` requests, uniform over tenants, token counts capped at ``max_prompt`` and
    ``max_output``."""
    from moesim.workloads import WORKLOADS

    if cfg.workload == "azure_conv":
        w = WORKLOADS.build("azure_conv", {"tenants": cfg.tenants, "assignment": "uniform", "rate": cfg.rate,
                                           "max_requests": cfg.max_requests})
    else:
        duration_s = 2.0 * cfg.max_requests / (cfg.rate * cfg.tenants) + 1.0
        w = WORKLOADS.build("poisson", {"tenants": cfg.tenants, "rate": cfg.rate, "duration_s": duration_s,
                                        "tokens_from": "azure_conv"})
    reqs = w.generate(cfg.seed)[: cfg.max_requests]
    return [dataclasses.replace(r, prompt_tokens=min(r.prompt_tokens, cfg.max_prompt),
                                output_tokens=min(r.output_tokens, cfg.max_output)) for r in reqs]
