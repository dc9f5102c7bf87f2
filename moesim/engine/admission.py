"""Admission: whether a request can ever be served, and the reason it is refused when not.

A real server refuses a request it can never hold and serves the rest. The engine asks ``refusal`` once
per request, against the instance the policy routes it to, before the simulation starts; a refused
request is logged with ``Recorder.reject`` and never enters an instance.
"""

from __future__ import annotations

from moesim.policies.base import InstancePlan
from moesim.specs import ModelSpec
from moesim.workloads.request import Request


def refusal(request: Request, plan: InstancePlan, model: ModelSpec) -> str | None:
    """Why ``request`` can never be served on ``plan``'s instance, or None when it can.

    Two reasons, checked in this order:

    - its context (prompt + output tokens) exceeds the model's ``max_context_tokens``
      (``"context 130000 > model max 32768"``);
    - its whole KV cache (prompt + output tokens × the model's KV bytes per token) exceeds the instance's
      KV capacity, i.e. what is left after weights even with nothing else running
      (``"kv 12.3 GB > instance capacity 9.1 GB"``).
    """
    tokens = request.prompt_tokens + request.output_tokens
    limit = model.max_context_tokens
    if limit and tokens > limit:
        return f"context {tokens} > model max {limit}"
    need = tokens * model.kv_bytes_per_token
    if need > plan.kv_capacity_bytes:
        return f"kv {need / 1e9:.3g} GB > instance capacity {plan.kv_capacity_bytes / 1e9:.3g} GB"
    return None
