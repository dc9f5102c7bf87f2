"""Property tests over random workload configs and seeds: every workload yields a well-formed request list."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.workloads import WORKLOADS
from moesim.workloads.request import Request

synthetic = st.fixed_dictionaries(
    {
        "rate": st.floats(0.01, 5.0),
        "tenants": st.integers(1, 6),
        "duration_s": st.floats(0.5, 200.0),
        "prompt_tokens": st.integers(1, 4096),
        "output_tokens": st.integers(1, 1024),
        "popularity": st.sampled_from(["equal", "zipf"]),
        "zipf_s": st.floats(0.0, 3.0),
        "tokens_from": st.sampled_from(["", "azure_conv", "azure_code"]),
    }
)
replay = st.fixed_dictionaries(
    {
        "tenants": st.integers(1, 6),
        "assignment": st.sampled_from(["round_robin", "uniform", "zipf"]),
        "zipf_s": st.floats(0.0, 3.0),
        "time_scale": st.floats(0.01, 100.0),
        "rate": st.sampled_from([0.0, 0.01, 0.5, 3.0]),
        "duration_s": st.sampled_from([0.0, 10.0, 500.0]),
        "max_requests": st.integers(1, 400),
    }
)
workload = st.one_of(
    st.tuples(st.just("poisson"), synthetic),
    st.tuples(st.just("gamma"), st.builds(lambda d, cv: {**d, "cv": cv}, synthetic, st.floats(0.1, 5.0))),
    st.tuples(st.sampled_from(["azure_conv", "azure_code"]), replay),
)


def _check(reqs: list[Request], tenants: int, horizon_s: float) -> None:
    assert [r.id for r in reqs] == list(range(len(reqs)))
    arrivals = [r.arrival_s for r in reqs]
    assert arrivals == sorted(arrivals)
    assert all(type(v) is int for r in reqs for v in (r.tenant, r.prompt_tokens, r.output_tokens))
    assert all(type(r.arrival_s) is float for r in reqs)
    assert all(0 <= r.tenant < tenants for r in reqs)
    assert all(r.prompt_tokens >= 1 for r in reqs)
    assert all(r.output_tokens >= 1 for r in reqs)
    assert all(0.0 <= r.arrival_s <= horizon_s for r in reqs)


@settings(max_examples=60, deadline=None)
@given(spec=workload, seed=st.integers(0, 2**32 - 1))
def test_every_workload_is_well_formed_and_deterministic(spec: tuple[str, dict[str, Any]], seed: int) -> None:
    name, params = spec
    wl = WORKLOADS.build(name, params)
    reqs = wl.generate(seed)
    _check(reqs, params["tenants"], wl.horizon_s)
    assert WORKLOADS.build(name, params).generate(seed) == reqs
