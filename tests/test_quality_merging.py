"""Merging methods on hand-computed tensors: TIES (trim / elect / disjoint mean), DARE, task arithmetic, averaging,
and the TIES combine of consolidation copies."""

from __future__ import annotations

import pytest
import torch

from moesim.consolidation.merging import (
    dare,
    dare_merge,
    disjoint_mean,
    elect_sign,
    task_arithmetic,
    ties_merge,
    ties_tensor,
    trim,
    uniform_average,
)


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def test_trim_keeps_the_largest_magnitudes() -> None:
    d = t(0.1, -3.0, 2.0, -0.5, 1.0)
    assert torch.equal(trim(d, 0.4), t(0.0, -3.0, 2.0, 0.0, 0.0))  # round(0.4 · 5) = 2 kept
    assert torch.equal(trim(d, 0.2), t(0.0, -3.0, 0.0, 0.0, 0.0))
    assert torch.equal(trim(d, 1.0), d)
    assert torch.equal(trim(d, 0.01), t(0.0, -3.0, 0.0, 0.0, 0.0))  # at least one entry


def test_elect_and_disjoint_mean() -> None:
    deltas = torch.stack([t(1.0, -2.0, 0.0, 3.0), t(2.0, 1.0, 0.0, -1.0), t(-0.5, -1.0, 0.0, -1.0)])
    sign = elect_sign(deltas)
    assert torch.equal(sign, t(1.0, -1.0, 0.0, 1.0))  # sums 2.5, -2, 0, 1
    # entry 0: 1 and 2 agree → 1.5; entry 1: -2 and -1 → -1.5; entry 2: none → 0; entry 3: only 3 → 3
    assert torch.equal(disjoint_mean(deltas, sign), t(1.5, -1.5, 0.0, 3.0))


def test_ties_tensor_and_ties_merge_by_hand() -> None:
    base = t(1.0, 1.0, 1.0, 1.0)
    a = base + t(0.4, -0.2, 0.05, 0.0)
    b = base + t(0.2, 0.3, -0.6, 0.1)
    # density 0.5 keeps 2 of 4: a → (0.4, -0.2, 0, 0); b → (0, 0.3, -0.6, 0)
    # signs: (+, +, -, 0); disjoint means: (0.4, 0.3, -0.6, 0)
    assert torch.allclose(ties_tensor(base, [a, b], 0.5, 1.0), t(1.4, 1.3, 0.4, 1.0))
    assert torch.allclose(ties_tensor(base, [a, b], 0.5, 0.5), t(1.2, 1.15, 0.7, 1.0))
    merged = ties_merge({"w": base}, [{"w": a}, {"w": b}], density=0.5, scale=1.0)
    assert torch.allclose(merged["w"], t(1.4, 1.3, 0.4, 1.0))


def test_task_arithmetic_and_average_by_hand() -> None:
    base = {"w": t(1.0, 2.0)}
    s1, s2 = {"w": t(2.0, 2.0)}, {"w": t(1.0, 4.0)}
    assert torch.allclose(task_arithmetic(base, [s1, s2], 0.5)["w"], t(1.5, 3.0))
    assert torch.allclose(task_arithmetic(base, [s1, s2], 1.0)["w"], t(2.0, 4.0))
    assert torch.allclose(uniform_average([s1, s2])["w"], t(1.5, 3.0))  # = task arithmetic at 1/N


def test_dare_drops_and_rescales() -> None:
    d = torch.arange(1.0, 10001.0)
    g = torch.Generator().manual_seed(0)
    out = dare(d, 0.75, g)
    kept = out != 0
    assert torch.equal(out[kept], d[kept] * 4.0)  # kept entries rescaled by 1/(1 − 0.75)
    assert 0.23 < kept.float().mean().item() < 0.27
    assert torch.equal(dare(d, 0.0, g), d)
    # same seed, same mask
    assert torch.equal(dare(d, 0.75, torch.Generator().manual_seed(0)), out)
    with pytest.raises(ValueError, match="drop must be"):
        dare(d, 1.0)


def test_dare_merge_is_task_arithmetic_without_dropping() -> None:
    base = {"w": t(1.0, 2.0), "b": t(0.0)}
    s1, s2 = {"w": t(2.0, 2.0), "b": t(1.0)}, {"w": t(1.0, 4.0), "b": t(3.0)}
    got = dare_merge(base, [s1, s2], drop=0.0, scale=0.5)
    want = task_arithmetic(base, [s1, s2], 0.5)
    assert all(torch.allclose(got[k], want[k]) for k in base)
