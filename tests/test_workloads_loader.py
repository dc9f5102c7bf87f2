"""User trace files: good files in every format read back; every bad input is one line naming file and row;
bad config values are one line naming field, value and what is valid."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from moesim.errors import UserError, exit_on_user_error
from moesim.workloads import WORKLOADS, read_trace
from moesim.workloads.loader import UnsortedTraceWarning

ROWS = [  # arrival_s, prompt, output, tenant
    (0.0, 20, 25, 0),
    (1.5, 7, 1, 1),
    (4.25, 300, 12, 0),
]


def _write(path: Path, frame: pd.DataFrame) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    else:
        frame.to_parquet(path)
    return path


def _frame(rows: list[tuple] = ROWS) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["arrival_s", "prompt_tokens", "output_tokens", "tenant"])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_good_file_reads_back_in_every_format(tmp_path: Path, suffix: str) -> None:
    path = _write(tmp_path / f"t{suffix}", _frame())
    wl = WORKLOADS.build("trace", {"path": str(path), "tenants": 2})
    reqs = wl.generate(seed=0)
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens, r.tenant) for r in reqs] == ROWS
    assert [r.id for r in reqs] == [0, 1, 2]
    assert wl.horizon_s == 4.25


def test_timestamps_and_azure_column_names(tmp_path: Path) -> None:
    path = tmp_path / "azure_like.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.5000000,374,44\n"
        "2023-11-16 18:15:50.7500000,396,109\n"
        "2023-11-16 18:16:46.5,10,3\n"
    )
    wl = WORKLOADS.build("trace", {"path": str(path), "tenants": 3, "time_scale": 2.0})
    reqs = wl.generate(seed=0)
    assert [r.arrival_s for r in reqs] == [0.0, 8.5, 120.0]
    assert [r.tenant for r in reqs] == [0, 1, 2]  # no tenant column: round-robin
    assert [r.prompt_tokens for r in reqs] == [374, 396, 10]


def test_unsorted_times_are_sorted_with_a_warning_naming_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "unsorted.csv", _frame([ROWS[2], ROWS[0], ROWS[1]]))
    with pytest.warns(UnsortedTraceWarning, match=r"unsorted\.csv.*row 2 is earlier than row 1"):
        trace = read_trace(path, tenants=2)
    assert trace.arrival_s.tolist() == [0.0, 1.5, 4.25]
    assert trace.prompt_tokens.tolist() == [20, 7, 300]  # tokens travel with their rows
    assert trace.tenant.tolist() == [0, 1, 0]


CSV_HEAD = "arrival_s,prompt_tokens,output_tokens,tenant\n"
BAD_CSV = {
    "missing column": ("arrival_s,prompt_tokens\n0,1\n", None, "missing column 'output_tokens'"),
    "negative tokens": (CSV_HEAD + "0,5,5,0\n1,-3,5,0\n", 2, "prompt_tokens='-3' is negative"),
    "non-integer tokens": (
        CSV_HEAD + "0,5,5,0\n1,5,5,0\n2,5,2.5,1\n",
        3,
        "output_tokens='2.5' is not an integer",
    ),
    "not a number": (CSV_HEAD + "0,many,5,0\n", 1, "prompt_tokens='many' is not a number"),
    "empty cell": (CSV_HEAD + "0,5,5,0\n1,,5,0\n", 2, "prompt_tokens is missing (empty)"),
    "zero output": (CSV_HEAD + "0,5,0,0\n", 1, "output_tokens='0' is below 1"),
    "tenant out of range": (
        CSV_HEAD + "0,5,5,0\n1,5,5,2\n",
        2,
        "tenant='2' is out of range; must be an integer in 0..1",
    ),
    "negative arrival": (CSV_HEAD + "-1,5,5,0\n", 1, "arrival_s='-1' is not a number ≥ 0"),
    "unparsable timestamp": (
        "timestamp,prompt_tokens,output_tokens\n2023-11-16 18:15:46,5,5\nyesterday,5,5\n",
        2,
        "timestamp='yesterday' is not a parsable date-time",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CSV))
def test_bad_csv_gives_one_line_with_file_and_row(tmp_path: Path, case: str) -> None:
    text, row, problem = BAD_CSV[case]
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        WORKLOADS.build("trace", {"path": str(path), "tenants": 2})
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert problem in msg
    if row is not None:
        assert f": row {row}: " in msg


def test_first_bad_row_is_named_and_the_rest_counted(tmp_path: Path) -> None:
    path = tmp_path / "many.csv"
    path.write_text(CSV_HEAD + "0,5,5,0\n1,5,1.5,0\n2,5,-1,0\n3,5,x,0\n")
    with pytest.raises(UserError, match=r"row 2: output_tokens='1.5' is not an integer.*\(2 more bad rows"):
        read_trace(path)


def test_bad_jsonl_and_parquet_name_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"arrival_s": 0, "prompt_tokens": 3, "output_tokens": 4}\n{"arrival_s": 1, oops}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl'?: row 2: not valid JSON"):
        read_trace(path)
    path = _write(tmp_path / "bad.parquet", _frame([(0.0, 5, 5, 0), (1.0, 5, -7, 0)]))
    with pytest.raises(UserError, match=r"bad\.parquet'?: row 2: output_tokens=-7 is negative"):
        read_trace(path)
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match=r"corrupt\.parquet'?: cannot read it as parquet"):
        read_trace(path)


def test_file_level_problems(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.csv'?: no such file"):
        read_trace(tmp_path / "nope.csv")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(UserError, match=r"unknown format '\.xlsx'; valid: \.csv, \.jsonl"):
        read_trace(tmp_path / "t.xlsx")
    (tmp_path / "empty.csv").write_text(CSV_HEAD)
    with pytest.raises(UserError, match="no data rows"):
        read_trace(tmp_path / "empty.csv")
    (tmp_path / "blank.jsonl").write_text("")
    with pytest.raises(UserError, match=r"blank\.jsonl'?: the file is empty"):
        read_trace(tmp_path / "blank.jsonl")


def test_cli_prints_exactly_one_line_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(CSV_HEAD + "0,5,5,0\n1,-3,5,0\n")

    @exit_on_user_error
    def main() -> None:
        WORKLOADS.build("trace", {"path": str(path)})

    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "bad.csv" in err
    assert "row 2" in err
    assert "Traceback" not in err


BAD_CONFIG = [
    ("poisson", "rate", -0.1, "a finite number > 0.0"),
    ("poisson", "rate", 0.0, "a finite number > 0.0"),
    ("poisson", "tenants", 0, "an integer in 1..100,000"),
    ("poisson", "duration_s", float("inf"), "a finite number > 0.0"),
    ("poisson", "prompt_tokens", 2.5, "an integer in 1..2,147,483,647"),
    ("poisson", "prompt_tokens", 10**23, "an integer in 1..2,147,483,647"),  # overflowed int64 before
    ("poisson", "output_tokens", 2**63, "an integer in 1..2,147,483,647"),
    ("poisson", "duration_s", 1e12, "a finite number > 0.0 and ≤ 1e+09"),
    ("poisson", "rate", float("nan"), "a finite number > 0.0"),
    ("poisson", "max_requests", 0, "an integer ≥ 1"),
    ("poisson", "popularity", "pareto", "'equal', 'zipf'"),
    ("poisson", "tokens_from", "sharegpt", "'', 'azure_conv', 'azure_code'"),
    ("gamma", "cv", 0.0, "a finite number > 0.0"),
    ("gamma", "cv", -1.0, "a finite number > 0.0"),
    ("azure_conv", "assignment", "random", "'round_robin', 'uniform', 'zipf'"),
    ("azure_conv", "time_scale", 0.0, "a finite number ≥ 1e-09"),
    ("azure_conv", "time_scale", float("inf"), "a finite number ≥ 1e-09"),
    ("azure_conv", "time_scale", float("nan"), "a finite number ≥ 1e-09"),
    ("azure_conv", "rate", float("inf"), "a finite number ≥ 0.0 and ≤ 1e+06"),
    ("azure_conv", "rate", 1e7, "a finite number ≥ 0.0 and ≤ 1e+06"),
    ("azure_conv", "duration_s", 1e300, "a finite number ≥ 0.0 and ≤ 1e+09"),
    ("azure_code", "rate", -1.0, "a finite number ≥ 0.0"),
    ("azure_code", "zipf_s", -0.5, "a finite number ≥ 0.0"),
    ("azure_code", "max_requests", -1, "an integer ≥ 0"),
    ("trace", "path", "", "the path of a .csv, .jsonl or .parquet"),
]


@pytest.mark.parametrize(("name", "field", "value", "valid"), BAD_CONFIG)
def test_bad_config_value_is_one_line_naming_field_value_and_valid(
    name: str, field: str, value: object, valid: str
) -> None:
    with pytest.raises(UserError) as err:
        WORKLOADS.config(name, {field: value})
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"workload={name}: {field}={value!r} is invalid; valid: ")
    assert valid in msg


def test_unknown_workload_and_field_list_the_valid_ones() -> None:
    with pytest.raises(
        UserError, match=r"unknown workload 'possion' \(did you mean 'poisson'\?\); valid: azure_code, azure_conv, "
                         "gamma, poisson, trace"
    ):
        WORKLOADS.get("possion")
    with pytest.raises(UserError, match=r"unknown field 'lambda'; valid: duration_s, max_requests, "):
        WORKLOADS.config("poisson", {"lambda": 1.0})


def test_configs_are_frozen_and_named_first() -> None:
    import dataclasses

    for name in WORKLOADS.names():
        cfg = WORKLOADS.config(name, {"path": "x.csv"} if name == "trace" else {})
        first = dataclasses.fields(cfg)[0]
        assert (first.name, cfg.name) == ("name", name)
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.name = "other"  # type: ignore[misc]
