"""The calibrator on a CUDA GPU (skipped without one): the tiny model end to end with CUDA-graph timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moesim.formats.profile import read_profile

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tiny_on_cuda_with_graphs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "moesim.calibrate", "device=cuda", "model=tiny", "grid=quick",
                           f"out={tmp_path}", "slices=false"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (prof,) = list(tmp_path.glob("*__tiny.parquet"))
    df, meta = read_profile(prof)
    assert meta["execution"] == "graphs"
    assert meta["graph_fallbacks"] == []
    assert meta["checks"]["attention_flash_vs_fp32_rel_err"] < 2e-2
    assert meta["checks"]["graph_step_equals_eager"] is True
    assert meta["host_link"]["set_over_plain_pinned"] >= 0.9
    assert (df["status"] == "ok").all()
    assert json.loads(prof.with_suffix(".json").read_text())["system"]["nvml"]["mig_mode"] in (0, 1)
