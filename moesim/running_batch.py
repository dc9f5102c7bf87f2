"""The running batch's bookkeeping shared by the simulator's instance and the real-time runtime.

Both keep, per running sequence, the request, its context base and the decode step count at which it
finishes, plus a count of running sequences per tenant; both retire finished sequences the same way after
a decode run, so that the simulator and the runtime take the same decisions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def retire_finished(running: list[Any], ctx_base: list[int], finish_at: list[int], tenant_count: dict[int, int],
                    done: int, finish: Callable[[Any], None]) -> tuple[list[Any], list[int], list[int], list[int]]:
    """Retire every sequence whose last step is ``≤ done`` (decode steps since the batch's clock origin).

    Calls ``finish(request)`` for each, in batch order, and decrements ``tenant_count`` in place (dropping
    tenants with none left). Returns the kept ``running``, ``ctx_base`` and ``finish_at`` lists and the kept
    indices (into the old batch).
    """
    keep = [i for i in range(len(running)) if finish_at[i] > done]
    for i in range(len(running)):
        if finish_at[i] <= done:
            r = running[i]
            finish(r)
            c_t = tenant_count[r.tenant] - 1
            if c_t:
                tenant_count[r.tenant] = c_t
            else:
                del tenant_count[r.tenant]
    return [running[i] for i in keep], [ctx_base[i] for i in keep], [finish_at[i] for i in keep], keep
