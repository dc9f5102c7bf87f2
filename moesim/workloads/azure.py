"""The shipped Azure LLM inference traces (2023; CC-BY 4.0, see workloads/NOTICE.md) and their replay.

``azure_conv``: 19,366 conversation requests over 3,502 s; ``azure_code``: 8,819 code requests over 3,436 s.
Each file is parsed once per process and cached (a few tens of milliseconds).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from moesim.errors import UserError
from moesim.resources import traces_dir
from moesim.workloads import WORKLOADS
from moesim.workloads.replay import Replay, ReplayConfig, TraceArrays

# The repository's workloads/ folder, or moesim/_traces in a wheel (never ../shared).
TRACES_DIR = traces_dir()
SHIPPED_TRACES = {"azure_conv": "azure_llm_2023_conv.csv", "azure_code": "azure_llm_2023_code.csv"}
AZURE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # e.g. 2023-11-16 18:15:46.6805900


@functools.cache
def load_shipped(name: str) -> TraceArrays:
    """The shipped trace ``name`` (``azure_conv`` | ``azure_code``), arrival_s from its first timestamp."""
    if name not in SHIPPED_TRACES:
        raise UserError(f"unknown shipped trace {name!r}; valid: {', '.join(SHIPPED_TRACES)}")
    path = TRACES_DIR / SHIPPED_TRACES[name]
    if not path.is_file():
        raise UserError(
            f"shipped trace {str(path)!r} is missing: the installation is incomplete (reinstall moesim)"
        )
    df = pd.read_csv(path, dtype={"TIMESTAMP": str, "ContextTokens": np.int64, "GeneratedTokens": np.int64})
    ts = pd.to_datetime(df["TIMESTAMP"], format=AZURE_TIME_FORMAT)
    arrival_s = (ts - ts.iloc[0]).dt.total_seconds().to_numpy(dtype=np.float64)
    prompt = df["ContextTokens"].to_numpy(dtype=np.int64)
    output = df["GeneratedTokens"].to_numpy(dtype=np.int64)
    if (np.diff(arrival_s) < 0).any() or prompt.min() < 1 or output.min() < 1:
        raise UserError(
            f"shipped trace {str(path)!r} is corrupt (unsorted times or token counts < 1); "
            "restore it from git"
        )
    return TraceArrays(str(path), arrival_s, prompt, output)


@dataclass(frozen=True)
class AzureConvConfig(ReplayConfig):
    """Replay of the Azure 2023 conversation trace; fields as in ``ReplayConfig``."""

    name: str = "azure_conv"


@dataclass(frozen=True)
class AzureCodeConfig(ReplayConfig):
    """Replay of the Azure 2023 code trace; fields as in ``ReplayConfig``."""

    name: str = "azure_code"


@WORKLOADS.register("azure_conv", AzureConvConfig)
class AzureConv(Replay):
    """The conversation trace: long outputs (mean 211 tokens), prompts of mean 1,155 tokens."""

    def _load(self) -> TraceArrays:
        return load_shipped("azure_conv")


@WORKLOADS.register("azure_code", AzureCodeConfig)
class AzureCode(Replay):
    """The code trace: long prompts (mean 2,048 tokens), short outputs (mean 27.9 tokens)."""

    def _load(self) -> TraceArrays:
        return load_shipped("azure_code")
