"""Build consolidation plans from pairwise expert distances (torch-free).

Input everywhere: ``pair[u, v, l, i]``, the distance between variant u's and variant v's expert in slot i of
MoE layer l, shape (N, N, L, E), symmetric with a zero diagonal; optionally ``perm[v, l, i]``, the variant-v
expert placed in slot i by permutation-aware matching (identity when omitted).

GPU capacity in copies: ``K = (budget_bytes − nonexpert_sets_reserved × nonexpert_bytes) // expert_bytes``.

Methods:
  * ``paper`` — the paper's initial expert loader generalised to N variants: positions sorted by the summed
    pairwise distance ``Σ_{u<v} pair[u, v, l, i]`` (most similar first, ties by layer then slot); the first
    ``min(K, L·E)`` positions get one GPU copy shared by all variants, the k-th of them (0-based rank) copied
    from variant ``k mod N``; every other position keeps each variant's own copy on the host.
  * ``medoid`` — the same positions shared, but the shared copy is the medoid: the variant whose expert has
    the smallest summed distance to the others (ties: lowest index).
  * ``cluster`` — share only among close variants: start from every variant's own copy; while more copies
    than fit (K), merge the two clusters at one position with the smallest complete-linkage distance
    (largest pairwise distance across them; ties by layer, slot, members). Each cluster's copy is its medoid;
    everything is GPU-resident when ``K ≥ L·E``. When ``K < L·E`` it falls back to ``medoid``'s structure
    (K fully shared positions on the GPU, the rest per variant on the host).
  * ``cluster-mean`` — ``cluster``, but a cluster of several variants holds the element-wise mean of its
    members' experts (``mean_of``), which is nearer to all of them than any member.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from moesim.consolidation.plan import METHODS, ExpertCopy, Plan
from moesim.errors import UserError


def gpu_capacity(
    budget_bytes: int, expert_bytes: int, nonexpert_bytes: int, nonexpert_sets_reserved: int
) -> int:
    """Expert copies that fit on the GPU next to the reserved non-expert sets."""
    free = budget_bytes - nonexpert_sets_reserved * nonexpert_bytes
    if free < 0:
        raise UserError(
            f"budget_bytes {budget_bytes} is smaller than {nonexpert_sets_reserved} non-expert set(s) of "
            f"{nonexpert_bytes} bytes; give at least {nonexpert_sets_reserved * nonexpert_bytes}"
        )
    return free // expert_bytes


def summed_distance(pair: np.ndarray) -> np.ndarray:
    """``Σ_{u<v} pair[u, v]``, shape (L, E)."""
    n = pair.shape[0]
    out = np.zeros(pair.shape[2:])
    for u in range(n):
        for v in range(u + 1, n):
            out = out + pair[u, v]
    return out


def similarity_order(pair: np.ndarray) -> np.ndarray:
    """Flat position indices (l·E + i), most similar first; ties keep layer-major order."""
    return np.argsort(summed_distance(pair).ravel(), kind="stable")


def medoid(pair_pos: np.ndarray, members: Sequence[int]) -> int:
    """Member with the smallest summed distance to the other members (ties: lowest index)."""
    ms = sorted(members)
    costs = [sum(float(pair_pos[a, b]) for b in ms) for a in ms]
    return ms[int(np.argmin(costs))]


def _check(pair: np.ndarray, perm: np.ndarray | None) -> np.ndarray:
    if pair.ndim != 4 or pair.shape[0] != pair.shape[1]:
        raise UserError(f"pairwise distances must have shape (N, N, L, E), got {pair.shape}")
    n, _, n_layers, n_exp = pair.shape
    if n < 2:
        raise UserError(f"consolidation needs at least 2 variants, got {n}")
    if perm is None:
        return np.broadcast_to(np.arange(n_exp), (n, n_layers, n_exp)).copy()
    perm = np.asarray(perm, dtype=int)
    if perm.shape != (n, n_layers, n_exp):
        raise UserError(f"perm must have shape {(n, n_layers, n_exp)}, got {perm.shape}")
    return perm


def build_plan(
    pair: np.ndarray,
    *,
    method: str,
    budget_bytes: int,
    expert_bytes: int,
    nonexpert_bytes: int,
    nonexpert_sets_reserved: int = 2,
    model: str = "model",
    variants: Sequence[str] | None = None,
    perm: np.ndarray | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Plan:
    """Build a plan by ``method`` (see the module docstring) from pairwise distances ``pair``."""
    if method not in METHODS:
        raise UserError(f"unknown consolidation method {method!r}; valid: {', '.join(METHODS)}")
    pair = np.asarray(pair, dtype=float)
    perm = _check(pair, perm)
    n, _, n_layers, n_exp = pair.shape
    n_pos = n_layers * n_exp
    names = tuple(variants) if variants is not None else tuple(f"variant{v}" for v in range(n))
    if len(names) != n:
        raise UserError(f"{len(names)} variant names for {n} variants")
    cap = gpu_capacity(budget_bytes, expert_bytes, nonexpert_bytes, nonexpert_sets_reserved)

    # clusters[l][i]: list of (members, on_gpu); member lists partition range(n).
    clusters: list[list[list[tuple[tuple[int, ...], bool]]]]
    if method in ("cluster", "cluster-mean") and cap >= n_pos:
        clusters = _greedy_clusters(pair, cap)
    else:
        k_shared = min(cap, n_pos)
        shared = set(similarity_order(pair)[:k_shared].tolist())
        clusters = [
            [
                [(tuple(range(n)), True)]
                if (layer * n_exp + i) in shared
                else [((v,), False) for v in range(n)]
                for i in range(n_exp)
            ]
            for layer in range(n_layers)
        ]
    rank = {int(p): k for k, p in enumerate(similarity_order(pair))}

    copies: list[ExpertCopy] = []
    assign = np.full((n, n_layers, n_exp), -1, dtype=int)
    for layer in range(n_layers):
        for i in range(n_exp):
            for members, on_gpu in clusters[layer][i]:
                if len(members) == 1:
                    src, mean_of = members[0], ()
                elif method == "paper":
                    # Round robin over the shared positions in similarity order.
                    src, mean_of = rank[layer * n_exp + i] % n, ()
                else:
                    src = medoid(pair[:, :, layer, i], members)
                    mean_of = tuple(members) if method == "cluster-mean" else ()
                cid = len(copies)
                copies.append(
                    ExpertCopy(
                        id=cid,
                        layer=layer,
                        expert=i,
                        source_variant=int(src),
                        source_expert=int(perm[src, layer, i]),
                        on_gpu=on_gpu,
                        bytes=expert_bytes,
                        mean_of=mean_of,
                    )
                )
                for v in members:
                    assign[v, layer, perm[v, layer, i]] = cid
    label = method if perm_is_identity(perm) else method + "+perm"
    return Plan(
        model=model,
        method=label,
        variants=names,
        budget_bytes=int(budget_bytes),
        n_layers=n_layers,
        n_experts=n_exp,
        expert_bytes=int(expert_bytes),
        nonexpert_bytes=int(nonexpert_bytes),
        nonexpert_sets_reserved=int(nonexpert_sets_reserved),
        copies=tuple(copies),
        assign=tuple(tuple(tuple(int(x) for x in row) for row in layers) for layers in assign.tolist()),
        meta=dict(meta or {}),
    )


def perm_is_identity(perm: np.ndarray) -> bool:
    return bool((perm == np.arange(perm.shape[-1])).all())


def _best_merge(
    d: np.ndarray, cl: list[tuple[int, ...]]
) -> tuple[float, tuple[int, ...], tuple[int, ...]] | None:
    """Cheapest complete-linkage merge among the clusters ``cl`` of one position (None if one cluster)."""
    best = None
    for a in range(len(cl)):
        for b in range(a + 1, len(cl)):
            link = max(float(d[x, y]) for x in cl[a] for y in cl[b])
            key = (link, cl[a], cl[b])
            if best is None or key < best:
                best = key
    return best


def _greedy_clusters(pair: np.ndarray, cap: int) -> list[list[list[tuple[tuple[int, ...], bool]]]]:
    """Agglomerative complete-linkage merging across all positions until at most ``cap`` copies remain.

    Each step merges the globally cheapest pair (ties: layer, slot, members); only the merged position's
    candidate changes, so it alone is recomputed.
    """
    n, _, n_layers, n_exp = pair.shape
    parts = [[[(v,) for v in range(n)] for _ in range(n_exp)] for _ in range(n_layers)]
    # a heap of each position's cheapest merge, ordered as (link, position, members); a popped entry whose
    # position changed since it was pushed is stale and skipped (same result as a full scan, in
    # O(merges · log positions): 128 experts × 48 layers × 8 variants in about a second)
    version = {(layer, i): 0 for layer in range(n_layers) for i in range(n_exp)}
    heap: list[tuple[float, tuple[int, int], tuple[int, ...], tuple[int, ...], int]] = []
    for layer in range(n_layers):
        for i in range(n_exp):
            c = _best_merge(pair[:, :, layer, i], parts[layer][i])
            if c is not None:
                heap.append((c[0], (layer, i), c[1], c[2], 0))
    heapq.heapify(heap)
    total = n * n_layers * n_exp
    while total > cap and heap:
        _, (layer, i), ca, cb, ver = heapq.heappop(heap)
        if ver != version[(layer, i)]:
            continue
        cl = parts[layer][i]
        cl.remove(ca)
        cl.remove(cb)
        cl.append(tuple(sorted(ca + cb)))
        cl.sort()
        version[(layer, i)] = ver + 1
        c = _best_merge(pair[:, :, layer, i], cl)
        if c is not None:
            heapq.heappush(heap, (c[0], (layer, i), c[1], c[2], ver + 1))
        total -= 1
    return [[[(m, True) for m in parts[layer][i]] for i in range(n_exp)] for layer in range(n_layers)]
