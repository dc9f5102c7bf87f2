"""Fleet speed and memory at scale (benchmark: ``pytest -m benchmark tests/test_fleet_bench.py``).

64 variants on 32 H200s, 1,000,000 requests shaped like the Azure conversation trace
(``python -m moesim.fleet.bench``): at least 10,000 simulated requests per CPU second on one core and at most
2 GB peak resident memory. Minutes of CPU; kept out of the default run.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.benchmark
def test_64_variants_32_gpus_one_million_requests() -> None:
    out = subprocess.run([sys.executable, "-m", "moesim.fleet.bench"], capture_output=True, text=True,
                         check=True, timeout=3600).stdout
    figures = dict(re.findall(r"^(\w+): ([\d.]+)$", out, flags=re.M))
    assert "refused 0" in out
    assert float(figures["simulated_requests_per_cpu_s"]) >= 10_000, out
    assert float(figures["peak_rss_mb"]) <= 2048, out
