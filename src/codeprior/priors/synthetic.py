"""Synthetic codebooks with the structure that makes average linkage hard: used by tests and benchmarks.

Anisotropic Gaussian blobs whose scales differ by up to 100x (dense and sparse regions side by side) plus
exactly duplicated rows, shuffled. Deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mixed_density_codebook"]


def mixed_density_codebook(
    n: int, d: int, seed: int, *, n_blobs: int = 24, equal_sizes: bool = False, dup_frac: float = 0.02
) -> np.ndarray:
    """float64 [n, d]: ``n_blobs`` anisotropic blobs (sizes Dirichlet(1)-distributed, or equal in expectation
    with ``equal_sizes``), each scaled by ``10**U(-2, 0)``, and ``dup_frac * n`` rows overwritten by copies of
    other rows."""
    rng = np.random.default_rng(seed)
    p = np.full(n_blobs, 1.0 / n_blobs) if equal_sizes else rng.dirichlet(np.ones(n_blobs))
    sizes = rng.multinomial(n, p)
    parts = []
    for s in sizes:
        A = rng.standard_normal((d, d)) * rng.uniform(0.05, 1.0, d)
        parts.append(rng.standard_normal((s, d)) @ A * 10 ** rng.uniform(-2, 0) + 3 * rng.standard_normal(d))
    X = np.concatenate(parts)
    nd = int(dup_frac * n)
    X[rng.integers(0, n, nd)] = X[rng.integers(0, n, nd)]
    return X[rng.permutation(n)]
