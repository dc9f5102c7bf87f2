"""Surprises a new user met on day 3 (a fresh venv, the README's commands, their own odd traces, fleet files,
the capacity search, the runtime, the tools' reports opened in Chromium), each pinned by a test that failed
before its fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from moesim.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _simulate(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    d = tmp_path / name
    return subprocess.run([sys.executable, "-m", "moesim.simulate", "hydra.mode=RUN", f"hydra.run.dir={d}",
                           "progress=false", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_every_missing_trace_column_is_named_with_its_mapping_in_one_line(tmp_path: Path) -> None:
    # "ts_ms,input_length,output_length": the error named only the timestamp, so the user ran three times,
    # learning one missing column per run
    from moesim.workloads import read_trace

    f = tmp_path / "t.csv"
    f.write_text("ts_ms,input_length,output_length,user\n3000,100,20,alice\n")
    with pytest.raises(UserError) as e:
        read_trace(f)
    assert str(e.value) == (
        f"trace file '{f}': missing columns 'arrival_s' or 'timestamp', 'prompt_tokens', 'output_tokens' "
        "(has: ts_ms, input_length, output_length, user); need arrival_s or timestamp, prompt_tokens, "
        "output_tokens (tenant optional); map yours with workload.columns.timestamp=ts_ms workload.time_unit=ms "
        "workload.columns.prompt_tokens=input_length workload.columns.output_tokens=output_length")
    # the mapping it prints is the one that works, in one run
    t = read_trace(f, columns={"timestamp": "ts_ms", "prompt_tokens": "input_length",
                               "output_tokens": "output_length"}, time_unit="ms")
    assert t.prompt_tokens.tolist() == [100]


def test_a_timestamp_column_named_in_ms_is_read_in_ms(tmp_path: Path) -> None:
    # workload.columns.timestamp=ts_ms without time_unit=ms: 1000/2000/3000 were read as seconds, and a 2 s
    # trace became 2,000 s long (0.09 req/min instead of 77)
    from moesim.workloads import read_trace

    f = tmp_path / "t.csv"
    f.write_text("ts_ms,p,o\n3000,100,20\n1000,50,10\n2000,80,15\n")
    cols = {"timestamp": "ts_ms", "prompt_tokens": "p", "output_tokens": "o"}
    with pytest.warns(UserWarning, match="not sorted"):
        assert read_trace(f, columns=cols).arrival_s.tolist() == [0.0, 1.0, 2.0]
    g = tmp_path / "u.csv"
    g.write_text("Time (us),p,o\n0,1,1\n1500000,1,1\n")
    assert read_trace(g, columns={**cols, "timestamp": "Time (us)"}).arrival_s.tolist() == [0.0, 1.5]
    # an explicit unit wins; a name without a unit keeps the epoch rule
    with pytest.warns(UserWarning, match="not sorted"):
        assert read_trace(f, columns=cols, time_unit="s").arrival_s.tolist() == [0.0, 1000.0, 2000.0]
    h = tmp_path / "v.csv"
    h.write_text("timestamp,p,o\n0,1,1\n1500,1,1\n")
    assert read_trace(h, columns={"prompt_tokens": "p", "output_tokens": "o"}).arrival_s.tolist() == [0.0, 1500.0]
