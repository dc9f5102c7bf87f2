"""Traces in their own formats: the named presets on hand-written files in each format's exact schema, column
mappings, epoch timestamps in s/ms/µs, ISO date-times with offsets, tenant names, and ambiguous columns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.errors import UserError
from moesim.workloads import WORKLOADS, read_trace
from moesim.workloads.loader import epoch_unit

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[1]


def _replay(path: Path, **cfg):
    wl = WORKLOADS.build("trace", {"path": str(path), **cfg})
    return wl, wl.generate(seed=0)


def test_azure2023_preset() -> None:
    wl, reqs = _replay(DATA / "azure2023.csv", format="azure2023")
    np.testing.assert_allclose([r.arrival_s for r in reqs], [0.0, 4.314579, 4.653447, 60.0], atol=1e-9)
    assert [(r.prompt_tokens, r.output_tokens) for r in reqs] == [(374, 44), (396, 109), (879, 55), (91, 16)]
    assert [r.tenant for r in reqs] == [0, 1, 0, 1]  # no tenant column: round-robin
    assert wl.tenant_names is None


def test_azure2024_preset_with_utc_offsets() -> None:
    _, reqs = _replay(DATA / "azure2024.csv", format="azure2024")
    np.testing.assert_allclose([r.arrival_s for r in reqs], [0.0, 0.0153670, 1.5, 60.0], atol=1e-6)
    assert [(r.prompt_tokens, r.output_tokens) for r in reqs] == [(2162, 5), (1079, 7), (7514, 10), (33, 1)]


def test_mooncake_preset_ms_timestamps() -> None:
    wl, reqs = _replay(DATA / "mooncake.jsonl", format="mooncake")
    assert [r.arrival_s for r in reqs] == [0.0, 0.0, 3.052, 10.535]
    assert [(r.prompt_tokens, r.output_tokens) for r in reqs] == [(6755, 500), (7319, 490), (7234, 794),
                                                                    (2287, 316)]
    assert wl.horizon_s == 10.535


def test_burstgpt_preset_skips_failed_requests_and_keeps_model_names() -> None:
    wl, reqs = _replay(DATA / "burstgpt.csv", format="burstgpt")
    assert [r.arrival_s for r in reqs] == [0.0, 113.0, 126.0]  # the failed row at 45 s is left out
    assert [(r.prompt_tokens, r.output_tokens) for r in reqs] == [(472, 18), (417, 217), (1360, 224)]
    assert [r.tenant for r in reqs] == [0, 1, 0]
    assert wl.tenant_names == ("ChatGPT", "GPT-4")
    assert wl.selection(3) == (
        f"replaying 3 of 4 requests of {DATA / 'burstgpt.csv'} (whole trace; skipped 1 failed requests "
        "(Response tokens 0); 126.0 s)")
    # the Model column ignored: tenants assigned instead
    _, reqs = _replay(DATA / "burstgpt.csv", format="burstgpt", columns={"tenant": "-"}, tenants=3)
    assert [r.tenant for r in reqs] == [0, 1, 2]


def test_preset_on_the_wrong_file_names_the_missing_column() -> None:
    with pytest.raises(UserError, match=r"\(format=mooncake\): no column 'input_length' for prompt_tokens "
                                        r"\(has: TIMESTAMP, ContextTokens, GeneratedTokens\)"):
        read_trace(DATA / "azure2023.csv", format="mooncake")


def test_column_mapping_replaces_preprocessing(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("t,input_length,output_length,who\n0.5,10,3,alice\n2.0,20,4,bob\n3.5,30,5,alice\n")
    cols = {"arrival_s": "t", "prompt_tokens": "input_length", "output_tokens": "output_length", "tenant": "who"}
    wl, reqs = _replay(path, columns=cols)
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens, r.tenant) for r in reqs] == [
        (0.5, 10, 3, 0), (2.0, 20, 4, 1), (3.5, 30, 5, 0)]
    assert wl.tenant_names == ("alice", "bob")
    with pytest.raises(UserError, match=r"who names 2 tenants \(alice, bob\) but workload.tenants=1; "
                                        r"set workload.tenants=2"):
        _replay(path, columns=cols, tenants=1)


@pytest.mark.parametrize(("scale", "unit"), [(1, "s"), (1_000, "ms"), (1_000_000, "us"), (10**9, "ns")])
def test_epoch_timestamps_in_any_unit(tmp_path: Path, scale: int, unit: str) -> None:
    epoch = [1_700_000_000, 1_700_000_002, 1_700_000_007]
    path = tmp_path / "epoch.csv"
    path.write_text("timestamp,prompt_tokens,output_tokens\n" + "".join(f"{t * scale},5,5\n" for t in epoch))
    assert epoch_unit(np.array(epoch, dtype=float) * scale) == unit
    _, reqs = _replay(path)
    np.testing.assert_allclose([r.arrival_s for r in reqs], [0.0, 2.0, 7.0], rtol=1e-12)


def test_relative_numeric_times_need_their_unit(tmp_path: Path) -> None:
    path = tmp_path / "rel.csv"
    path.write_text("timestamp,prompt_tokens,output_tokens\n0,5,5\n1500,5,5\n")
    assert [r.arrival_s for r in _replay(path)[1]] == [0.0, 1500.0]  # auto: small numbers are seconds
    assert [r.arrival_s for r in _replay(path, time_unit="ms")[1]] == [0.0, 1.5]


def test_iso_datetimes_with_offsets_are_compared_in_utc(tmp_path: Path) -> None:
    path = tmp_path / "iso.csv"
    path.write_text("timestamp,prompt_tokens,output_tokens\n"
                    "2024-05-10T01:00:00+01:00,5,5\n2024-05-10T00:00:30Z,6,6\n")
    _, reqs = _replay(path)
    assert [(r.arrival_s, r.prompt_tokens) for r in reqs] == [(0.0, 5), (30.0, 6)]


@pytest.mark.parametrize(("header", "message"), [
    ("arrival_s,ContextTokens,prompt_tokens,output_tokens",
     "columns 'ContextTokens' and 'prompt_tokens' both give prompt_tokens; "
     "choose one with workload.columns.prompt_tokens=<column>"),
    ("arrival_s,prompt_tokens,output_tokens,prompt_tokens",
     "column 'prompt_tokens' appears twice (columns 2 and 4); choose one with workload.columns.prompt_tokens"),
    ("arrival_s,Output_Tokens,output_tokens,prompt_tokens",
     "columns 'Output_Tokens' and 'output_tokens' both give output_tokens"),
])
def test_ambiguous_columns_are_refused(tmp_path: Path, header: str, message: str) -> None:
    path = tmp_path / "amb.csv"
    path.write_text(header + "\n0,5,6,7\n")
    with pytest.raises(UserError) as err:
        read_trace(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_mapping_resolves_an_ambiguity(tmp_path: Path) -> None:
    path = tmp_path / "amb.csv"
    path.write_text("arrival_s,ContextTokens,prompt_tokens,output_tokens\n0,5,6,7\n")
    assert read_trace(path, columns={"prompt_tokens": "ContextTokens"}).prompt_tokens.tolist() == [5]


def test_duplicate_json_key_and_mapped_duplicate_column(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text('{"arrival_s": 0, "prompt_tokens": 3, "prompt_tokens": 4, "output_tokens": 1}\n')
    with pytest.raises(UserError, match=r"dup\.jsonl'?: row 1: key 'prompt_tokens' appears twice"):
        read_trace(path)
    path = tmp_path / "dup.csv"
    path.write_text("arrival_s,len,len,output_tokens\n0,1,2,3\n")
    with pytest.raises(UserError, match=r"column 'len' for prompt_tokens appears 2 times \(columns 2, 3\)"):
        read_trace(path, columns={"prompt_tokens": "len"})


def test_token_counts_beyond_int64_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n0,5,5\n1,1e23,5\n")
    with pytest.raises(UserError, match=r"row 2: prompt_tokens='1e23' is too large; must be an integer in "
                                        r"1\.\.2,147,483,647"):
        read_trace(path)


def test_bad_format_and_mapping_config_are_one_line() -> None:
    with pytest.raises(UserError, match=r"workload=trace: format='sharegpt' is invalid; valid: '', 'azure2023'"):
        WORKLOADS.config("trace", {"path": "x.csv", "format": "sharegpt"})
    with pytest.raises(UserError, match=r"workload=trace: columns.prompt='x' is invalid; valid: fields arrival_s"):
        WORKLOADS.config("trace", {"path": "x.csv", "columns": {"prompt": "x"}})
    with pytest.raises(UserError, match=r"time_unit='hours' is invalid; valid: 'auto', 's', 'ms', 'us', 'ns'"):
        WORKLOADS.config("trace", {"path": "x.csv", "time_unit": "hours"})


def test_cli_burstgpt_keeps_tenant_names_in_outputs(tmp_path: Path) -> None:
    d = tmp_path / "D"
    p = subprocess.run([sys.executable, "-m", "moesim.simulate", "hydra.mode=RUN", f"hydra.run.dir={d}",
                        "workload=trace", f"workload.path={DATA / 'burstgpt.csv'}", "workload.format=burstgpt",
                        "progress=false"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "replaying 3 of 4 requests of" in p.stderr
    req = pd.read_parquet(d / "requests.parquet").sort_values("request_id")
    assert req["tenant_name"].tolist() == ["ChatGPT", "GPT-4", "ChatGPT"]
    assert req["tenant"].tolist() == [0, 1, 0]
    s = json.loads((d / "summary.json").read_text())
    assert s["n_requests"] == 3
    assert s["workload_selection"].startswith("replaying 3 of 4 requests of ")


def test_cli_column_mapping_keys(tmp_path: Path) -> None:
    d = tmp_path / "D"
    p = subprocess.run([sys.executable, "-m", "moesim.simulate", "hydra.mode=RUN", f"hydra.run.dir={d}",
                        "workload=trace", f"workload.path={DATA / 'mooncake.jsonl'}",
                        "workload.columns.prompt_tokens=input_length", "workload.columns.output_tokens=output_length",
                        "workload.time_unit=ms", "progress=false"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    req = pd.read_parquet(d / "requests.parquet").sort_values("request_id")
    assert req["arrival_s"].tolist() == [0.0, 0.0, 3.052, 10.535]
    assert req["prompt_tokens"].tolist() == [6755, 7319, 7234, 2287]


def test_model_column_gives_tenants_and_conflicts_with_tenant(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens,model\n0,5,5,llama-ft-b\n1,5,5,llama-ft-a\n"
                    "2,5,5,llama-ft-b\n")
    trace = read_trace(path, tenants=2)
    assert trace.tenant.tolist() == [0, 1, 0]
    assert trace.tenant_names == ("llama-ft-b", "llama-ft-a")
    path.write_text("arrival_s,prompt_tokens,output_tokens,model,tenant\n0,5,5,x,0\n")
    with pytest.raises(UserError, match="columns 'model' and 'tenant' both give tenant"):
        read_trace(path, tenants=2)


def test_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes((DATA / "azure2023.csv").read_text().encode("utf-8-sig"))
    assert read_trace(path, format="azure2023").prompt_tokens.tolist() == [374, 396, 879, 91]
