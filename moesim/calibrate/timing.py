"""Timing: CUDA events after warm-up (wall clock on CPU), median and p10/p90 of repeats."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, slots=True)
class Timing:
    """Seconds: median, 10th and 90th percentile of ``n`` repeats."""

    median_s: float
    p10_s: float
    p90_s: float
    n: int


def summarize(samples_s: list[float]) -> Timing:
    """Median and p10/p90 of samples (seconds)."""
    a = np.asarray(samples_s, dtype=float)
    return Timing(float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90)), len(a))


class Timer:
    """Times a callable on one device.

    ``measure(fn)`` runs ``warmup`` calls, then repeats until about ``target_s`` seconds of samples (between
    ``min_reps`` and ``max_reps``), each timed on its own (CUDA events on the current stream, or
    ``perf_counter`` around a call on CPU).
    """

    def __init__(self, device: torch.device, min_reps: int = 3, max_reps: int = 25, target_s: float = 0.12,
                 warmup: int = 2) -> None:
        self.device = device
        self.min_reps = min_reps
        self.max_reps = max_reps
        self.target_s = target_s
        self.warmup = warmup

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def once(self, fn: Callable[[], object]) -> float:
        """Seconds of one call of ``fn``."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def measure(self, fn: Callable[[], object], min_reps: int | None = None, max_reps: int | None = None,
                warmup: int | None = None) -> Timing:
        """Warm up, then time repeats of ``fn``; the first timed sample sizes the repeat count."""
        for _ in range(self.warmup if warmup is None else warmup):
            fn()
        self.sync()
        lo = self.min_reps if min_reps is None else min_reps
        hi = self.max_reps if max_reps is None else max_reps
        samples = [self.once(fn)]
        reps = int(np.clip(self.target_s / max(samples[0], 1e-7), lo, hi))
        samples += [self.once(fn) for _ in range(reps - 1)]
        return summarize(samples)
