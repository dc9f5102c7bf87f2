"""The runtime's experts' kernel: ``moe_kernel=auto`` (the default) is the fused Triton kernel on CUDA where Triton is
installed, else the grouped GEMM; the simulated side of a comparison follows the engine's shipped profile."""

from __future__ import annotations

import importlib.util

import pytest

from moesim.errors import UserError
from moesim.serve.config import MOE_KERNELS, ServeConfig, parse_args, resolve_moe_kernel
from moesim.serve.run import build_cost
from moesim.specs import get_gpu, get_model


def test_auto_is_triton_on_cuda_with_triton(monkeypatch) -> None:
    assert ServeConfig().moe_kernel == "auto"
    assert MOE_KERNELS == ("auto", "grouped", "triton")
    assert resolve_moe_kernel("auto", "cpu") == "grouped"
    assert resolve_moe_kernel("grouped", "cuda") == "grouped"
    assert resolve_moe_kernel("triton", "cpu") == "triton"  # asked for: kept (the backend then says why it fails)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "triton" else real(name, *a))
    assert resolve_moe_kernel("auto", "cuda") == "triton"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    assert resolve_moe_kernel("auto", "cuda") == "grouped"


def test_bad_kernel_one_line() -> None:
    with pytest.raises(UserError, match=r"moe_kernel='fused': valid: auto, grouped, triton"):
        parse_args(["moe_kernel=fused"])


def test_comparison_uses_the_engines_profile(monkeypatch) -> None:
    model, gpu = get_model("mixtral-8x7b"), get_gpu("h200")
    monkeypatch.setattr("moesim.serve.run.resolve_moe_kernel",
                        lambda k, d: k if k != "auto" else ("triton" if d == "cuda" else "grouped"))
    _, desc = build_cost(ServeConfig(device="cuda", model="mixtral-8x7b", gpu="h200"), model, gpu)
    assert desc.startswith("profile calibration/profiles/h200__mixtral-8x7b.triton.parquet")
    _, grouped = build_cost(ServeConfig(device="cuda", model="mixtral-8x7b", gpu="h200", moe_kernel="grouped"),
                            model, gpu)
    assert "h200__mixtral-8x7b.parquet" in grouped
    assert "triton" not in grouped
    # the eager execution has no Triton profile: the shipped eager one
    _, eager = build_cost(ServeConfig(device="cuda", model="mixtral-8x7b", gpu="h200"), model, gpu, "eager")
    assert "eager" in eager
