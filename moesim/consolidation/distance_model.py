"""A synthetic expert-distance model at any scale, so plans can be built without weights.

Each variant's expert at position (layer l, expert e) is summarised by a latent vector
``z[v, l, e] ∈ R^8`` and the distance between two variants' experts is ``||z[u] − z[v]||``
(dimensionless; think "L2 distance of the concatenated w1/w2/w3 relative to a typical fine-tuning drift").

    z[v, l, e] = s(l) · m[l, e] · (ρ · f[family(v), l, e] + sqrt(1 − ρ²) · g[v, l, e])

  * ``s(l) = 1 + 3 / (1 + exp(−12 (l / (L − 1) − 0.55)))``: drift grows with depth, steeply past ~55 % of
    the depth, as the paper found layers 18–31 of two Mixtral-8x7B variants the least similar;
  * ``m[l, e] = exp(0.25 · n[l, e])``, n standard normal: some positions drift more than others;
  * ``family(v) = v mod 2`` with ``ρ = 0.7``: variants of one family drift together, so subsets of variants
    are closer to each other than to the rest (what cluster sharing can exploit);
  * f, g: independent standard normal vectors scaled by 1/√8, all drawn from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import numpy as np

LATENT_DIM = 8
FAMILY_RHO = 0.7


def depth_profile(n_layers: int) -> np.ndarray:
    """``s(l)`` for l = 0..n_layers−1, shape (L,)."""
    x = np.arange(n_layers) / max(n_layers - 1, 1)
    return 1.0 + 3.0 / (1.0 + np.exp(-12.0 * (x - 0.55)))


def synthetic_distances(n_layers: int, n_experts: int, n_variants: int, seed: int = 0) -> np.ndarray:
    """Pairwise distances, shape (N, N, L, E), symmetric with a zero diagonal."""
    rng = np.random.default_rng(seed)
    s = depth_profile(n_layers)[:, None, None]  # (L, 1, 1)
    m = np.exp(0.25 * rng.standard_normal((n_layers, n_experts)))[:, :, None]  # (L, E, 1)
    fam = rng.standard_normal((2, n_layers, n_experts, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    own = rng.standard_normal((n_variants, n_layers, n_experts, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    z = np.stack(
        [s * m * (FAMILY_RHO * fam[v % 2] + np.sqrt(1 - FAMILY_RHO**2) * own[v]) for v in range(n_variants)]
    )  # (N, L, E, D)
    diff = z[:, None] - z[None, :]  # (N, N, L, E, D)
    return np.sqrt((diff**2).sum(-1))
