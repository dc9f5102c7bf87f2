"""``search.ray_address``: the same command joins an existing Ray cluster (a real ``ray start --head`` on this
machine, 2 CPUs) and gives the answer the local backend gives. Its own file: a process joins one Ray only.

The head runs with ``--block`` as a child of the test and is stopped by its process id (SIGTERM makes it
stop the processes it started). Token authentication is off for this private, loopback-only cluster.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

ARGS = ["workload.tenants=4", "workload.rate=2.0", "workload.duration_s=20", "search.gpus=h200",
        "search.strategies=greedy_slo", "search.policies=multiplex,swap", "search.max_batch=8",
        "search.max_gpus=8", "search.seeds=0", "search.verify_seeds=1000", "search.progress=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_search_joins_an_existing_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moesim.search.__main__ import main

    ray_cli = shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the ray command is not on PATH")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    port = _free_port()
    head = subprocess.Popen([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--block", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:  # the head answers on its port once the GCS is up
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, "ray start --head exited"
                assert time.monotonic() < deadline, "the Ray head did not come up within 60 s"
                time.sleep(0.5)
        assert main([*ARGS, f"search.ray_address=127.0.0.1:{port}", f"search.out={tmp_path / 'c'}"]) == 0
    finally:
        head.terminate()
        head.wait(timeout=60)
        marker = Path("/tmp/ray/ray_current_cluster")  # ray start's pointer to "the" local cluster: ours
        if marker.is_file() and marker.read_text().strip().endswith(f":{port}"):
            marker.unlink()
    assert main([*ARGS, "search.backend=local", "search.workers=1", f"search.out={tmp_path / 'l'}"]) == 0
    on_cluster = json.loads((tmp_path / "c" / "search.json").read_text())
    local = json.loads((tmp_path / "l" / "search.json").read_text())
    assert on_cluster["backend"] == "ray"
    assert on_cluster["workers"] == 2  # the cluster's CPUs
    assert on_cluster["answer"] == local["answer"]
    assert on_cluster["trials"] == local["trials"]
