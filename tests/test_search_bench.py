"""Benchmark (kept out of the default run): a search over ≥ 500 fleet configurations for 32 variants within
30 minutes on this 2-core machine, on a local Ray with 2 workers, and the same answer with 1 worker.

Run: ``python -m pytest -q -m benchmark tests/test_search_bench.py -s`` (or ``python -m moesim.search.bench``).
"""

from __future__ import annotations

import pytest

pytest.importorskip("ray")


@pytest.mark.benchmark
def test_search_over_500_configurations_of_32_variants_within_30_minutes() -> None:
    from moesim.search.bench import run_once

    two = run_once(2)
    print(two)
    assert two["variants"] == 32
    assert two["fleet_configurations"] >= 500
    assert two["wall_s"] <= 30 * 60
    one = run_once(1)
    print(one, f"speed-up 1 → 2 workers: {one['wall_s'] / two['wall_s']:.2f}x")
    assert one["answer"] == two["answer"]
    assert one["fleet_configurations"] == two["fleet_configurations"]
