"""The device script ``reports/validation/realtime/matrix.py``: its keys parse, and its CPU path runs (tiny model)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "reports" / "validation" / "realtime" / "matrix.py"


def _matrix():
    import importlib.util

    spec = importlib.util.spec_from_file_location("matrix", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_run_is_a_valid_serve_command(monkeypatch) -> None:
    from moesim.serve.config import parse_args

    m = _matrix()
    policies = set()
    for smoke in ("", "1"):
        monkeypatch.setenv("SERVE_SMOKE", smoke)
        for name in m.RUNS:
            if name in ("tables", "contention"):  # tasks of the call, not served runs
                continue
            cfg = parse_args([*m.run_keys(name), "out=/tmp/x"])
            policies.add(cfg.policy)
            assert cfg.device == ("cpu" if smoke else "cuda")
            if name.endswith("_host") and not smoke:
                assert cfg.budget_bytes > 0  # a tight budget: experts on the host
    assert policies == {"naive", "swap", "reconfig", "reconfig_fast", "multiplex", "mig", "dedicated"}
    workloads = {n.split("-")[0].rpartition("_")[2] for n in m.RUNS
                 if n not in ("tables", "contention") and n.split("-")[0] != "fleet"}
    assert workloads == {"light", "saturated", "host"}
    assert parse_args([*m.run_keys("multiplex_host-s1"), "out=/tmp/x"]).seed == 1  # held-out repeats: seed 1
    host = sorted(n for n in m.RUNS if n.endswith("_host"))
    assert host == sorted(m.HOST_S2)
    for name in host:  # every host-expert run has a held-out repeat at seed 2, the same keys otherwise
        a, b = (dataclasses.asdict(parse_args([*m.run_keys(n), "out=/tmp/x"])) for n in (name, f"{name}-s2"))
        assert b.pop("seed") == 2
        assert a.pop("seed") == 0
        assert a == b


def test_cpu_path_writes_every_run_and_the_packs(tmp_path) -> None:
    pytest.importorskip("torch")
    # as on the GPU machine: no simpy there, so nothing of the runtime may import the simulator; a package that
    # refuses to import, first on the path of this process and of the mig process it starts
    block = tmp_path / "block" / "simpy"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text("raise ImportError('simpy is not on the GPU machine')\n")
    env = {**os.environ, "SERVE_SMOKE": "1", "PACK": str(tmp_path / "pack"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "block"), str(REPO)])}
    (tmp_path / "pack").mkdir()
    p = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out"), "fleet_host,mig_host"],
                       env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    for name in ("fleet_host", "mig_host"):
        doc = json.loads((tmp_path / "out" / name / "summary.json").read_text())
        assert doc["status"] == "ok"
    assert doc["backend"][0]["expert_fetches"] + doc["backend"][1]["expert_fetches"] > 0  # mig_host fetched
    assert (tmp_path / "pack" / "matrix.tar.gz").stat().st_size > 0
    assert (tmp_path / "pack" / "mig.tar.gz").stat().st_size > 0  # the mig runs went in a process of their own
    assert "mig: started" in p.stdout
    assert "0 failed" in p.stdout
    assert "0 failed" in (tmp_path / "out" / "mig.log").read_text()


def test_call_order_covers_every_run_once() -> None:
    m = _matrix()
    order = m.FIRST + m.TWO_GPU + m.MIG + m.REST
    assert sorted(order) == sorted(m.RUNS)
    assert len(order) == len(set(order))
    assert m.FIRST[:2] == ["multiplex_saturated", "tables"]  # the misses of the last call first, then the tables
