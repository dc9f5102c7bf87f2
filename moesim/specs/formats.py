"""Expert weight formats: bytes of one routed expert, quantisation scales included.

Each expert is a set of matrices (out × in): SwiGLU experts have gate and up (d_ff × d_model) and down
(d_model × d_ff). Scales are counted as stored in the checkpoints that use each format:

  * ``bf16``: 2 bytes per weight;
  * ``fp8`` (DeepSeek-V3): 1 byte per weight plus one fp32 scale per 128 × 128 block
    (``ceil(out/128) · ceil(in/128) · 4`` bytes per matrix);
  * ``mxfp4`` (gpt-oss, OCP microscaling): 4 bits per weight plus one E8M0 byte per 32 weights along the
    input dimension (``out · ceil(in/32)`` bytes per matrix);
  * ``int4`` (GPTQ/AWQ-style, symmetric): 4 bits per weight plus one bf16 scale per group of 128 along the
    input dimension (``out · ceil(in/128) · 2`` bytes per matrix);
  * ``auto``: the model's ``dtype_bytes`` per weight (the built-in models).

Expert biases (gpt-oss) stay bf16, 2 bytes each.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from moesim.errors import UserError

if TYPE_CHECKING:
    from moesim.specs.models import ModelSpec

FORMATS: tuple[str, ...] = ("auto", "bf16", "fp8", "mxfp4", "int4")


def check_format(fmt: str, where: str) -> None:
    """Refuse an unknown format in one line naming ``where`` and the valid ones."""
    if fmt not in FORMATS:
        raise UserError(f"{where}={fmt!r}: unknown expert weight format; valid: {', '.join(FORMATS)}")


def matrix_bytes(fmt: str, out: int, inp: int, dtype_bytes: int = 2) -> int:
    """Bytes of one (out × in) weight matrix stored in ``fmt``, scales included."""
    n = out * inp
    if fmt == "auto":
        return n * dtype_bytes
    if fmt == "bf16":
        return 2 * n
    if fmt == "fp8":
        return n + math.ceil(out / 128) * math.ceil(inp / 128) * 4
    if fmt == "mxfp4":
        return n // 2 + out * math.ceil(inp / 32)
    if fmt == "int4":
        return n // 2 + out * math.ceil(inp / 128) * 2
    check_format(fmt, where="expert format")
    raise AssertionError  # unreachable


def expert_matrices(spec: ModelSpec) -> list[tuple[int, int]]:
    """(out, in) of each weight matrix of one routed expert."""
    d, f = spec.d_model, spec.d_ff
    if spec.expert_matrices == 3:
        return [(f, d), (f, d), (d, f)]
    return [(f, d), (d, f)]


def expert_bytes(spec: ModelSpec) -> int:
    """Bytes of one routed expert of ``spec`` in its ``expert_format``."""
    w = sum(matrix_bytes(spec.expert_format, o, i, spec.dtype_bytes) for o, i in expert_matrices(spec))
    bias = (spec.d_ff * (spec.expert_matrices - 1) + spec.d_model) if spec.expert_bias else 0
    return w + 2 * bias
