"""The search on a real local Ray (2 CPUs, not mocked) gives the same trials and answer as the local backend.

One Ray start for the module (a few seconds); the whole file stays well under a minute on 2 cores.
"""

from __future__ import annotations

from typing import Any

import pytest

from moesim.search.backends import LocalBackend, RayBackend, make_backend
from moesim.search.config import SearchConfig
from moesim.search.driver import Search
from moesim.search.prices import load_prices

ray = pytest.importorskip("ray")

BASE = {"model": "mixtral-8x7b",
        "workload": {"name": "poisson", "rate": 2.0, "tenants": 4, "duration_s": 20.0, "prompt_tokens": 20,
                     "output_tokens": 25, "popularity": "zipf", "zipf_s": 1.0, "tokens_from": ""},
        "cost": {"name": "best"}, "slo_ttft_s": 2.0, "slo_tpot_s": 0.2}
CFG = SearchConfig(gpus=("h200", "a100-80gb"), strategies=("greedy_slo", "per_variant"), policies=("multiplex", "swap"), max_batch=(8,), max_gpus=8,
                   seeds=(0,), verify_seeds=(1000,), loads=(1.0, 2.0))


@pytest.fixture(scope="module")
def ray_backend() -> Any:
    be = RayBackend(workers=2)
    yield be
    be.close()


def _comparable(res: Any) -> tuple[Any, Any, Any]:
    trials = res.trials.drop(columns=["wall_s", "cpu_s"])
    return trials, res.needed, res.answer


def test_ray_and_local_give_identical_searches(ray_backend: RayBackend) -> None:
    assert ray.is_initialized()
    assert ray_backend.workers == 2  # ray.init(num_cpus=2): the cluster has 2 CPUs
    on_ray = Search(CFG, BASE, load_prices(), ray_backend).run()
    local = Search(CFG, BASE, load_prices(), LocalBackend(2)).run()
    t_ray, n_ray, a_ray = _comparable(on_ray)
    t_loc, n_loc, a_loc = _comparable(local)
    assert a_ray is not None
    assert a_ray == a_loc
    assert n_ray.equals(n_loc)
    assert t_ray.equals(t_loc)
    assert len(t_ray) >= 10  # rounds of several trials each ran as Ray tasks


def test_ray_tasks_ran_in_worker_processes(ray_backend: RayBackend) -> None:
    import os

    @ray.remote(num_cpus=1)
    def pid() -> int:
        return os.getpid()

    pids = set(ray.get([pid.remote() for _ in range(8)]))
    assert os.getpid() not in pids


def test_unreachable_cluster_is_one_line() -> None:
    from moesim.errors import UserError

    with pytest.raises(UserError, match=r"search.ray_address=127.0.0.1:1: cannot start or join") as ei:
        make_backend("ray", 1, "127.0.0.1:1")
    assert "\n" not in str(ei.value)
