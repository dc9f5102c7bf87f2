"""The executor on a CUDA GPU (tiny model): graphs replayed with new inputs equal eager; a short run."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


def test_graph_replay_with_new_inputs_equals_eager():
    from moesim.cost import COST_MODELS
    from moesim.cost.base import ExpertGroup, Residency
    from moesim.executor.gpu_cost import ExecutedCostConfig
    from moesim.specs import get_gpu, get_model

    m = get_model("tiny")
    cost = COST_MODELS.build("executed", ExecutedCostConfig(device="cuda", tenants=2), model=m, gpu=get_gpu("h200"))
    assert cost.execution == "graphs"
    cost.reserve_kv(4096)
    full = Residency((ExpertGroup(frozenset({0, 1}), m.n_expert_positions, True),))
    assert cost.check_graph_reuse(full, (0, 1), context=100) is True
    assert cost.stats["graph_captures"] == 1
    assert cost.stats["graph_replays"] == 2


def test_short_executed_run(tmp_path):
    import pandas as pd

    from moesim.executor.config import parse_args
    from moesim.executor.run import run

    cfg = parse_args(["device=cuda", "model=tiny", "max_requests=8", "max_prompt=64", "max_output=8",
                      "policies=multiplex:4", f"out={tmp_path}"])
    doc = run(cfg, [])
    assert doc["checks"]["graph_replay_equals_eager"] is True
    row = doc["policies"][0]
    assert row["status"] == "ok"
    assert row["exec_capture_failures"] == 0
    assert row["exec_eager_steps"] == 0
    assert len(pd.read_parquet(tmp_path / "multiplex" / "executed_requests.parquet")) == 8
