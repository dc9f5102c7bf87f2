"""The two-H200 fleet run with live routing (reports/validation/realtime/h200x2/fleet): the committed validation
row is what the simulator gives today from the committed measured tables, and it is within the 5 % target."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1] / "reports" / "validation" / "realtime" / "h200x2"


def test_fleet_run_on_two_gpus_reads_back_within_five_percent(tmp_path: Path) -> None:
    pytest.importorskip("simpy")
    from moesim.serve.validate import validate_run

    committed = pd.read_csv(ROOT / "validation_profile_bucketed.csv").set_index("run").loc["fleet"]
    run = tmp_path / "fleet"
    shutil.copytree(ROOT / "fleet", run)
    row = validate_run(run, sim_cost="profile_bucketed", suffix="_profile_bucketed",
                       table=str(ROOT / "tables" / "decode_table.csv"))
    measured = pd.read_parquet(ROOT / "fleet" / "requests.parquet")
    assert len(measured) == 24
    assert set(measured["gpu"]) == {0, 1}
    # placement 0,1,2;1,2,3: variants 0 and 3 live on one GPU each; the replicated 1 and 2 were routed to both
    gpus_of = measured.groupby("tenant")["gpu"].agg(lambda g: set(g.tolist()))
    assert (gpus_of[0], gpus_of[3], gpus_of[1]) == ({0}, {1}, {0, 1})
    turnaround = (measured["finish_s"] - measured["arrival_s"]).mean()
    assert row["mean_turnaround_s_measured"] == pytest.approx(turnaround, rel=1e-9)
    for key in ("mean_turnaround_s_error_pct", "mean_ttft_s_error_pct", "turnaround_ape_median_pct",
                "ttft_ape_median_pct"):
        assert row[key] == pytest.approx(committed[key], abs=1e-3), key
        assert abs(row[key]) <= 5.0, key
