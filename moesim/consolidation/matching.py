"""Exact minimum-cost matching of experts within a layer (permutation-aware consolidation).

A MoE layer's experts can be permuted (with the router's rows) without changing the function, so a
variant's expert ``e`` need not correspond to another variant's expert ``e``. For a layer of E experts the
exact assignment is found by dynamic programming over subsets: O(E² 2^E), 2 048 states for E = 8 —
no scipy needed.
"""

from __future__ import annotations

import numpy as np

from moesim.errors import UserError

MAX_EXACT_EXPERTS = 16


def min_cost_assignment(cost: np.ndarray) -> tuple[int, ...]:
    """The permutation ``p`` minimising ``Σ_i cost[i, p[i]]`` (exact; ties: lexicographically smallest p).

    ``cost`` is a square (E, E) array. Returns ``p`` as a tuple (row i is matched to column p[i]).
    """
    c = np.asarray(cost, dtype=float)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise UserError(f"matching needs a square cost matrix, got shape {c.shape}")
    n = c.shape[0]
    if n > MAX_EXACT_EXPERTS:
        raise UserError(f"exact matching supports at most {MAX_EXACT_EXPERTS} experts per layer, got {n}")
    full = (1 << n) - 1
    # best[mask]: min cost of matching rows popcount(mask)..n-1 given columns in mask are taken.
    best = np.full(1 << n, np.inf)
    choice = np.full(1 << n, -1, dtype=int)
    best[full] = 0.0
    popcount = [bin(m).count("1") for m in range(1 << n)]
    for mask in sorted(range(full), key=lambda m: -popcount[m]):
        i = popcount[mask]
        for j in range(n):
            if mask & (1 << j):
                continue
            val = c[i, j] + best[mask | (1 << j)]
            if val < best[mask] - 1e-12:
                best[mask] = val
                choice[mask] = j
    perm = []
    mask = 0
    for _ in range(n):
        j = int(choice[mask])
        perm.append(j)
        mask |= 1 << j
    return tuple(perm)


def align_to_reference(pair_cost: np.ndarray) -> np.ndarray:
    """Per-layer permutations aligning every variant's experts to variant 0's.

    ``pair_cost[v, l, i, j]`` is the distance between variant 0's expert i and variant v's expert j at
    layer l, shape (N, L, E, E). Returns ``perm`` of shape (N, L, E): ``perm[v, l, i]`` is variant v's expert
    placed in slot i (slot i = variant 0's expert i); ``perm[0]`` is the identity.
    """
    n_var, n_layers, n_exp, _ = pair_cost.shape
    perm = np.empty((n_var, n_layers, n_exp), dtype=int)
    perm[0] = np.arange(n_exp)
    for v in range(1, n_var):
        for layer in range(n_layers):
            perm[v, layer] = min_cost_assignment(pair_cost[v, layer])
    return perm
