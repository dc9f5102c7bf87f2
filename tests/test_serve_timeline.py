"""``timeline=true``: the runtime's per-step timeline (``timeline.parquet``), CPU, tiny model, mig slices fetching."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

from moesim.serve.config import parse_args
from moesim.serve.run import run

KEYS = ["device=cpu", "model=tiny", "policy=mig", "budget_bytes=3e5", "tenants=2", "rate=4", "max_requests=6",
        "compare=false", "warmup=false"]


@pytest.fixture(scope="module")
def traced(tmp_path_factory) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    out = tmp_path_factory.mktemp("tl")
    args = [*KEYS, "timeline=true", f"out={out}"]
    run(parse_args(args), args, log=lambda *a, **k: None)
    doc = json.loads((out / "summary.json").read_text())
    return pd.read_parquet(out / "timeline.parquet"), doc, pd.read_parquet(out / "segments.parquet")


def test_timeline_conserves_steps_and_fetches(traced) -> None:
    """One step row per executed step and one copy row per fetched expert, instance by instance, as the backend
    counted them; each step's fetches are the copies inside it."""
    tl, doc, _ = traced
    names = [i["name"] for i in doc["instances"]]
    assert set(tl["instance"]) == set(names)
    total = 0
    for name, be in zip(names, doc["backend"], strict=True):
        mine = tl[tl["instance"] == name]
        steps = mine[mine["kind"] == "step"]
        copies = mine[mine["kind"] == "copy"]
        assert len(steps) == be["steps"]
        assert len(copies) == be["expert_fetches"] > 0
        assert int(steps["fetches"].sum()) == be["expert_fetches"]
        # the routing is read once per host layer of a fetching step, before its copies
        assert len(mine[mine["kind"] == "sync"]) >= int((steps["fetches"] > 0).sum())
        total += len(copies)
    assert total == doc["expert_fetches"]


def test_timeline_spans_nest_in_their_steps(traced) -> None:
    """Steps of one instance never overlap; every copy and routing read lies inside a step of its instance; all
    on the run's clock (within the run's horizon)."""
    tl, doc, seg = traced
    assert (tl["end_s"] >= tl["start_s"]).all()
    assert tl["start_s"].min() >= 0.0
    assert tl["end_s"].max() <= doc["horizon_s"] + 1e-3
    for name, mine in tl.groupby("instance"):
        steps = mine[mine["kind"] == "step"].sort_values("start_s")
        assert (steps["start_s"].to_numpy()[1:] >= steps["end_s"].to_numpy()[:-1]).all()
        parts = mine[mine["kind"] != "step"]
        i = np.searchsorted(steps["start_s"].to_numpy(), parts["start_s"].to_numpy(), side="right") - 1
        assert (i >= 0).all()
        assert (parts["end_s"].to_numpy() <= steps["end_s"].to_numpy()[i] + 1e-9).all()
        # the runtime's segments hold the same steps: each segment's span covers its steps
        s = seg[seg["instance"] == name]
        assert abs(steps["end_s"].max() - s["end_s"].max()) < 0.05


def test_no_timeline_unless_asked(tmp_path) -> None:
    args = [*KEYS, "max_requests=2", f"out={tmp_path}"]
    run(parse_args(args), args, log=lambda *a, **k: None)
    assert not (tmp_path / "timeline.parquet").exists()
    assert "wall_t0" not in json.loads((tmp_path / "summary.json").read_text())


def test_host_reader_reads_what_tolist_reads() -> None:
    """``HostReader`` (the routing read of a fetching step): on CPU plain ``tolist``; the same lists on CUDA."""
    import torch

    from moesim.serve.backend import HostReader

    r = HostReader(torch.device("cpu"))
    t = torch.tensor([0, 3, 3, 7, 12], dtype=torch.int32)
    assert r.read(t) == [0, 3, 3, 7, 12]
    assert r.read(torch.arange(6, dtype=torch.int64).reshape(2, 3)) == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.gpu
def test_host_reader_on_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from moesim.serve.backend import HostReader

    r = HostReader(torch.device("cuda"))
    for dtype in (torch.int32, torch.int64):
        for n in (5, 200):  # the pinned buffer grows past its first 64 elements
            t = torch.randint(0, 1000, (n,), dtype=dtype, device="cuda")
            assert r.read(t) == t.tolist()
    t = torch.randint(0, 9, (3, 4), device="cuda")
    assert r.read(t) == t.tolist()
