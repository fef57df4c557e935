"""Balanced k-means (IAR's prior): k clusters of exactly N/k codes.

Procedure (IAR's, with our tie-breaking made explicit): random initial centres (k distinct rows chosen with
the seed); each iteration computes squared distances to the centres, visits the points in order of the
distance to their nearest centre (ties: lower index first) and gives each point its nearest centre that
still has room (capacity N/k; ties: lower centre index); centres become the means of their members
(not re-normalised); stop when the assignment no longer changes, or after ``max_iter`` (100) iterations.

The assignment is the sequential greedy rule, computed without a Python loop over points
(:func:`balanced_assign`): between two "a centre becomes full" events every point simply takes its nearest
open centre, so each round finds the first point whose choice would overflow a centre (one stable argsort),
commits every point before it, closes the full centres and re-chooses only for the points that had picked
a closed centre. At most k rounds per iteration, each O(N log N): 16384 codes / 128 clusters runs at
tens of milliseconds per iteration instead of IAR's O(N*k) Python loop.

Identical rows are visited one after another and take the same centre unless it fills up between them
(capacity is a hard constraint, so a group of duplicates larger than N/k must be split).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from codeprior.utils.progress import progress as progress_bar


def balanced_assign(D: np.ndarray, capacity: int | np.ndarray) -> np.ndarray:
    """Capacity-constrained greedy assignment, identical to the sequential rule.

    ``D`` [N, k]: (squared) distances of points to centres. Points are visited in order of
    ``D.min(1)`` (stable: ties by index); each takes the centre with the smallest ``D`` among those with
    room left (ties: lowest centre index). ``capacity``: per-centre room (an int for all, or [k]); the total
    must be at least N. Returns int64 labels [N].
    """
    D = np.asarray(D)
    n, k = D.shape
    cap = np.broadcast_to(np.asarray(capacity, dtype=np.int64), (k,)).copy()
    if cap.sum() < n:
        raise ValueError(f"total capacity {int(cap.sum())} < number of points {n}")
    labels = np.full(n, -1, dtype=np.int64)
    is_open = cap > 0
    nearest = np.argmin(D if is_open.all() else np.where(is_open, D, np.inf), axis=1)
    rem = np.argsort(D.min(axis=1), kind="stable")  # visiting order
    ch = nearest[rem]
    key_dtype = np.int16 if k <= np.iinfo(np.int16).max else np.int64
    inf = np.array(np.inf, dtype=D.dtype if D.dtype.kind == "f" else np.float64)
    while rem.size:
        counts = np.bincount(ch, minlength=k)
        over = np.flatnonzero(counts > cap)
        if over.size == 0:
            labels[rem] = ch
            break
        # positions grouped by centre, in visiting order (int16 keys -> numpy's O(n) radix sort)
        by_centre = np.argsort(ch.astype(key_dtype, copy=False), kind="stable")
        starts = np.cumsum(counts) - counts
        # position (within rem) of the first chooser that finds each overflowing centre full
        t = int(by_centre[starts[over] + cap[over]].min())
        head = ch[:t]
        labels[rem[:t]] = head
        cap -= np.bincount(head, minlength=k)
        is_open = cap > 0
        rem, ch = rem[t:], ch[t:]
        stale = ~is_open[ch]
        if stale.any():
            sub = D[rem[stale]]
            ch[stale] = np.argmin(np.where(is_open, sub, inf), axis=1)
    return labels


def _sq_dists(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    d = X @ C.T
    d *= -2.0
    d += (X * X).sum(1)[:, None]
    d += (C * C).sum(1)[None, :]
    np.maximum(d, 0.0, out=d)
    return d


def balanced_kmeans_labels(
    X: np.ndarray, k: int, seed: int = 0, max_iter: int = 100, progress: bool = True
) -> tuple[np.ndarray, dict[str, Any]]:
    """Balanced k-means labels (int64 [N], every cluster exactly N/k codes) and run info."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    n = X.shape[0]
    if n % k:
        raise ValueError(f"balanced k-means needs k | N (N={n}, k={k})")
    capacity = n // k
    rng = np.random.default_rng(int(seed))
    C = X[rng.choice(n, size=k, replace=False)].copy()
    Xf = X.astype(np.float32)  # distances in float32: half the memory traffic of the O(N*k) step
    prev = None
    iterations, converged = 0, False
    bar = progress_bar(range(max_iter), desc="balanced k-means", unit="it", disable=None if progress else True)
    for it in bar:
        labels = balanced_assign(_sq_dists(Xf, C.astype(np.float32)), capacity)
        iterations = it + 1
        if prev is not None and np.array_equal(labels, prev):
            converged = True
            break
        counts = np.bincount(labels, minlength=k).astype(np.float64)
        sums = np.stack([np.bincount(labels, weights=X[:, j], minlength=k) for j in range(X.shape[1])], 1)
        C = sums / counts[:, None]
        if prev is not None:
            bar.set_postfix(changed=int((labels != prev).sum()))
        prev = labels
    bar.close()
    return labels, {
        "iterations": iterations,
        "converged": converged,
        "capacity": capacity,
        "library": "numpy (vectorised sequential greedy)",
    }


def labels_for_registry(
    X: np.ndarray, k: int, *, seed: int = 0, progress: bool = True, backend: str = "auto"
) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`balanced_kmeans_labels` in the prior registry's calling convention (one backend)."""
    return balanced_kmeans_labels(X, k, seed=seed, progress=progress)
