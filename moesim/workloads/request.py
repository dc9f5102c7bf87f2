"""The request record every workload produces and the engine consumes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request.

    Attributes:
        id: unique, dense 0..n-1 in arrival order.
        tenant: index of the fine-tuned variant it targets (0..n_tenants-1).
        arrival_s: arrival time (seconds from the start of the run).
        prompt_tokens: tokens prefilled (≥ 1).
        output_tokens: tokens generated (≥ 1); the first comes out of prefill.
    """

    id: int
    tenant: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
