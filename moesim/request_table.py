"""The per-request table that a simulation and a served run both write (``requests.parquet``).

One function builds it so the simulator (:mod:`moesim.engine.simulation`) and the real-time runtime
(:mod:`moesim.serve`) cannot drift apart in columns, order or dtypes. Torch- and simpy-free.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from moesim.workloads.request import Request


def request_table(by_id: Sequence[Request], *, instance: np.ndarray, gpu: np.ndarray, start: np.ndarray,
                  first: np.ndarray, finish: np.ndarray, swap_wait: np.ndarray,
                  rejected: dict[int, str] | None = None) -> pd.DataFrame:
    """One row per request, in request-id order (``by_id[i]`` has id ``i``).

    Times are seconds from the run's start: ``start`` (first step that served it), ``first`` (first output token),
    ``finish``, ``swap_wait`` (time it waited on a swap). ``instance``/``gpu``: where it ran (indices).
    ``rejected``: request id → the reason it was refused (empty string for served requests).
    """
    n = len(by_id)
    why = np.full(n, "", dtype=object)
    for rid, reason in (rejected or {}).items():
        why[rid] = reason
    return pd.DataFrame({
        "request_id": np.arange(n, dtype=np.int64),
        "tenant": np.array([r.tenant for r in by_id], dtype=np.int64),
        "instance": instance,
        "arrival_s": np.array([r.arrival_s for r in by_id], dtype=float),
        "start_s": start,
        "first_token_s": first,
        "finish_s": finish,
        "prompt_tokens": np.array([r.prompt_tokens for r in by_id], dtype=np.int64),
        "output_tokens": np.array([r.output_tokens for r in by_id], dtype=np.int64),
        "swap_wait_s": swap_wait,
        "gpu": gpu,
        "rejected": why,
    })
