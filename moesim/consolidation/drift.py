"""Expert drift by depth, against the paper's Mixtral finding (torch-free).

The paper (../shared/facts/paper.md, method step 2) consolidated two Mixtral-8x7B variants at an 82.9e9-byte
budget: 217 of 256 positions shared, and the 39 least similar (by the L2 of the concatenated w1/w2/w3, summed
over variant pairs) stayed per variant — "mostly layers 18–31" of 32. :func:`depth_profile` asks the same of
our variants: rank positions by the paper's measure, take the same least-similar share (39/256), and count how
many lie in the same relative depth (layers ≥ 18/32 of the stack); also the per-layer mean and its rank
correlation with depth.
"""

from __future__ import annotations

import numpy as np

#: The paper's least-similar share and the relative depth of "layers 18–31" of Mixtral's 32.
PAPER_LEAST_SIMILAR = 39 / 256
PAPER_DEEP_FROM = 18 / 32


def summed_l2(l2: np.ndarray) -> np.ndarray:
    """``Σ_{u<v} l2[u, v]`` of an (N, N, L, E) distance array, shape (L, E) (the paper's N-variant measure)."""
    n = l2.shape[0]
    iu = np.triu_indices(n, 1)
    return l2[iu[0], iu[1]].sum(0)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant."""
    def ranks(a: np.ndarray) -> np.ndarray:
        order = np.argsort(a, kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=float)
        for v in np.unique(a):  # ties share their mean rank
            m = a == v
            r[m] = r[m].mean()
        return r
    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def depth_profile(l2: np.ndarray, base_norm: np.ndarray | None = None,
                  share: float = PAPER_LEAST_SIMILAR, deep_from: float = PAPER_DEEP_FROM) -> dict[str, object]:
    """Where the least similar expert positions are.

    ``l2``: (N, N, L, E) pairwise weight distances; ``base_norm``: (L, E) norms of the base's experts (when
    given, ``relative_by_layer`` is the mean of summed distance / norm per layer). Returns: ``by_layer`` (mean
    summed L2 per layer), ``spearman_depth`` (rank correlation of the per-layer mean with the layer index;
    +1 = drift grows with every layer), ``least_similar`` (how many positions: round(share · L·E), at least 1),
    ``deep_layers`` (layer indices ≥ deep_from · L), ``deep_share`` (fraction of the least similar positions
    in them), ``deep_share_if_uniform`` (the fraction of all positions in them: what no depth trend gives).
    """
    s = summed_l2(l2)
    n_layers, n_exp = s.shape
    k = max(1, round(share * s.size))
    flat = np.argsort(-s.reshape(-1), kind="stable")[:k]
    layers = flat // n_exp
    first_deep = int(np.ceil(deep_from * n_layers - 1e-9))
    deep = list(range(first_deep, n_layers))
    by_layer = s.mean(1)
    out: dict[str, object] = {
        "by_layer": np.round(by_layer, 5).tolist(),
        "spearman_depth": round(spearman(np.arange(n_layers), by_layer), 4),
        "least_similar": int(k),
        "deep_layers": deep,
        "deep_share": round(float(np.isin(layers, deep).mean()), 4),
        "deep_share_if_uniform": round(len(deep) / n_layers, 4),
        "least_similar_per_layer": np.bincount(layers, minlength=n_layers).tolist(),
    }
    if base_norm is not None:
        out["relative_by_layer"] = np.round((s / base_norm).mean(1), 5).tolist()
    return out
