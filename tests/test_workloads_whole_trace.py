"""Replays take the whole trace unless the user cuts it, synthetic workloads keep their 300 s, and every run
states how many of the file's requests it replays and why; nonsense sizes are refused before allocation."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from moesim.config import CONF_DIR, job_spec, register_configs
from moesim.errors import UserError
from moesim.workloads import WORKLOADS
from moesim.workloads.azure import load_shipped


@pytest.fixture(scope="module")
def spec_of():
    register_configs()

    def build(*overrides: str):
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            return job_spec(compose("config", overrides=list(overrides)))

    return build


@pytest.mark.parametrize(("name", "n"), [("azure_conv", 19_366), ("azure_code", 8_819)])
def test_cli_replays_the_whole_shipped_trace(spec_of, name: str, n: int) -> None:
    spec = spec_of(f"workload={name}")
    assert (spec.workload.duration_s, spec.workload.max_requests) == (0.0, 0)
    wl = WORKLOADS.build(name, spec.workload)
    reqs = wl.generate(seed=0)
    assert len(reqs) == len(load_shipped(name)) == n
    src = load_shipped(name).source
    assert wl.selection(len(reqs)) == (
        f"replaying {n:,} of {n:,} requests of {src} (whole trace; {wl.horizon_s:,.1f} s)")


def test_cli_replays_a_whole_user_trace(spec_of, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{i * 2},10,5\n" for i in range(300)))
    spec = spec_of("workload=trace", f"workload.path={path}")
    wl = WORKLOADS.build("trace", spec.workload)
    assert len(wl.generate(0)) == 300  # 279 before: cut at 300 s by conf/config.yaml
    assert wl.horizon_s == 598.0


def test_cuts_are_stated(spec_of) -> None:
    spec = spec_of("workload=azure_conv", "workload.duration_s=300")
    wl = WORKLOADS.build("azure_conv", spec.workload)
    n = len(wl.generate(0))
    assert n == int((load_shipped("azure_conv").arrival_s < 300).sum()) == 1_445
    assert wl.selection(n).startswith("replaying 1,445 of 19,366 requests of ")
    assert wl.selection(n).endswith(" (cut at workload.duration_s=300; 300.0 s)")
    wl = WORKLOADS.build("azure_code", {"max_requests": 100})
    assert "replaying 100 of 8,819 requests" in wl.selection(100)
    assert "(cut at workload.max_requests=100;" in wl.selection(100)


def test_synthetic_default_duration_is_300s(spec_of) -> None:
    assert spec_of("workload=poisson").workload.duration_s == 300.0
    assert spec_of("workload=gamma").workload.duration_s == 300.0
    assert WORKLOADS.config("poisson").duration_s == 300.0
    wl = WORKLOADS.build("poisson", {"rate": 0.1})
    assert wl.selection(57) == "workload=poisson: generated 57 requests over 300 s (2 tenants)"


# ---- nonsense refused up front ----------------------------------------------------------------------


def test_too_many_expected_requests_is_refused_before_allocating() -> None:
    with pytest.raises(UserError, match=r"600,000,000 requests expected, more than max_requests=5,000,000"):
        WORKLOADS.build("poisson", {"rate": 1e6})  # a MemoryError before
    wl = WORKLOADS.build("poisson", {"rate": 50.0, "max_requests": 40_000})  # 30,000 expected: allowed
    assert len(wl.generate(0)) == pytest.approx(30_000, rel=0.03)


def test_bursty_gamma_is_bounded_by_max_requests() -> None:
    t0 = time.perf_counter()
    with pytest.raises(UserError) as err:  # hung at 2.4 GB before
        WORKLOADS.build("gamma", {"rate": 1.0, "cv": 1e6, "max_requests": 100_000}).generate(0)
    assert time.perf_counter() - t0 < 5.0
    assert str(err.value) == (
        "workload=gamma: seed 0 draws more than max_requests=100,000 requests (expected 600; cv=1e+06 makes "
        "the arrivals bursty); raise workload.max_requests or shorten duration_s")


def test_absurd_time_scaling_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"rate=1e-300 stretches .*azure_llm_2023_conv.csv's 3,502 s to 9.68e\+303 s"):
        WORKLOADS.build("azure_conv", {"rate": 1e-300})
    with pytest.raises(UserError, match=r"time_scale=1e\+08 stretches"):
        WORKLOADS.build("azure_code", {"time_scale": 1e8})
    late = tmp_path / "late.csv"
    late.write_text("arrival_s,prompt_tokens,output_tokens\n5,10,5\n")
    with pytest.raises(UserError, match=r"duration_s=1e-06 keeps no request of .*late.csv"):
        WORKLOADS.build("trace", {"path": str(late), "duration_s": 1e-6})


def test_context_beyond_the_model_is_refused_at_the_command_line(spec_of) -> None:
    with pytest.raises(UserError) as err:
        spec_of("workload.prompt_tokens=40000")
    assert str(err.value) == (
        "workload.prompt_tokens=40000 + workload.output_tokens=25 = 40025 tokens, more than "
        "model=mixtral-8x7b's context of 32768 tokens; valid: a sum ≤ 32768")
