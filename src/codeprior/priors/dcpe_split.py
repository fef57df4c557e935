"""Exact average linkage cut at ``k`` clusters, split at a certified height into independent components.

Why it is exact
---------------
Let ``G_h`` be the graph joining two codes closer than or at distance ``h``, and ``C_1 .. C_m`` its connected
components. Every cluster formed by average linkage (UPGMA) at a height ``<= h`` lies inside one component:
an average-linkage merge at height ``t`` needs some pair of members at distance ``<= t``, and two clusters in
different components are at an average distance ``> h`` (every member pair is farther than ``h``). So while
the globally closest pair is at most ``h`` apart it is the closest pair of one component, and each component's
own merge sequence is exactly what it would be alone. UPGMA has no inversions (heights grow along each
component's sequence), hence the global greedy sequence up to height ``h`` is the union of the components'
sequences up to ``h``, interleaved by height. When they hold at least ``N - k`` merges, the ``N - k`` lowest of
them are the first ``N - k`` merges of ``scipy.cluster.hierarchy.linkage(X, "average")`` (up to the order of
exactly equal heights) and the cut follows.

Each component is clustered with the same exact full-matrix code as the ``full`` backend (``scipy.pdist`` +
fastcluster's NN-chain average linkage), so ``sum m_c^2 / 2`` distances are stored and computed one component
at a time instead of ``N^2 / 2``; components run in a process pool (``workers``; fastcluster and pdist hold
the GIL, so threads would not overlap).

The height ``h`` is found from a sample: about 1.15x the ``(N-k)/N`` quantile of the distance to the 2nd
nearest neighbour (measured: the cut height is 1.05-1.7x it on mixed-density and Gaussian codebooks, d = 8
and 64); while too few merges lie below ``h`` it grows (1.2x per round, more when the components' own
dendrograms say so) and components whose membership did not change keep their dendrogram.

Range search (the edges of ``G_h``): a k-d tree in low dimension (``scipy.spatial.cKDTree.query_pairs``),
a blocked float32 matrix multiply in high dimension (``|x|^2 + |y|^2 - 2 x.y`` per block of rows, BLAS on
every core) whose rounding error is bounded and added to the threshold, so the pairs found are a superset of
the true ones; a superset only merges components (never wrong: the argument above needs only that pairs in
different components are farther than ``h``). Exact float64 distances are then computed for the pairs found
and compared against ``h`` with a relative slack of ``1e-9`` on the side of including more.

A component whose full matrix would exceed ``max_pairs`` distances (dense regions of large codebooks, or
codebooks without cluster structure) is clustered up to ``h`` by the sparse exact algorithm
(:func:`codeprior.priors.dcpe_sparse.sparse_merges_below`, ``O(m)`` memory) in its pool worker while the other
workers take the other components. In high dimension, where the sparse algorithm's k-d tree degrades,
:class:`TooLarge` is raised instead and the caller uses another backend.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from codeprior.errors import CodepriorError

__all__ = ["HIGH_DIM", "TooLarge", "default_max_pairs", "split_average_linkage", "usable_workers"]

#: Dimension from which the range search is a blocked matrix multiply instead of a k-d tree.
HIGH_DIM = 24
_REL_SLACK = 1e-9  # relative slack on the side of including pairs (float64 rounding is ~1e-16)
_START = 1.15  # first height: this times the (N-k)/N quantile of the 2nd-neighbour distance
_GROW = 1.05  # least growth of the height per round when too few merges lie below it
_SEARCH_AHEAD = 1.12  # the range search radius, as a multiple of the height (pairs are reused while h <= R)
_SEARCH_AHEAD_HIGH = 1.08  # the same in high dimension, where distances concentrate (pairs grow fast with R)
_SAMPLE = 2048  # rows sampled to estimate the first height
_POOL_MIN_PAIRS = 20_000_000  # below this many stored distances in all, components run in this process
_BLOCK_BYTES = 64 << 20  # float32 block of the matrix-multiply range search


def default_max_pairs(n: int) -> int:
    """The most distances one component may store by default: 1/8 of the full matrix (at least 4096 codes')."""
    return max(n * (n - 1) // 16, 4096 * 4095 // 2)


class TooLarge(Exception):
    """The components at the height needed are too large for their full matrices (use another backend)."""


def usable_workers(workers: int | None = None) -> int:
    """``workers`` when positive, else the cores this process may run on."""
    if workers is None or workers < 1:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return workers


# ---------------------------------------------------------------------------------------------- range search
def _sq_norms(X: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", X, X)


def _matmul_pairs(X: np.ndarray, R: float, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``i < j`` whose float32 matrix-multiply squared distance is within ``R^2`` plus its error bound.

    ``|x-y|^2 = |x|^2 + |y|^2 - 2 x.y`` per block of rows (BLAS, every core). The float32 error of each
    computed value is at most ``gamma_{d+4} (|x|^2 + |y|^2)`` times a small constant (input rounding, the dot
    product, the sums), so ``slack_i = (3 gamma + 16 u)(|x_i|^2 + max |y|^2)`` bounds it: a pair is returned
    when its computed value is at most ``R^2 + slack_i`` (a superset of the true pairs, as the caller needs).
    Returns ``(i, j, computed squared distance, slack_i)``.
    """
    n, d = X.shape
    X32 = X.astype(np.float32)
    sq = _sq_norms(X)
    sq32 = sq.astype(np.float32)
    u = 2.0**-24
    gamma = (d + 4) * u / (1 - (d + 4) * u)
    slack = (3 * gamma + 16 * u) * (sq + sq.max()) + 1e-30
    # |x-y|^2 <= thr_i  <=>  x.y - |y|^2 / 2 >= (|x|^2 - thr_i) / 2: one pass over each block after the product
    rhs32 = ((sq - (R * R + slack) * (1 + 1e-5)) / 2 - 1e-30).astype(np.float32)
    half32 = (sq / 2).astype(np.float32)
    rows = max(1, min(n, _BLOCK_BYTES // (4 * n)))
    A: list[np.ndarray] = []
    B: list[np.ndarray] = []
    V: list[np.ndarray] = []
    found = 0
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        G = X32[lo:hi] @ X32[lo:].T  # upper triangle only: columns from lo on
        G -= half32[None, lo:]
        i, j = np.nonzero(rhs32[lo:hi, None] <= G)
        keep = j > i  # j counts from lo too
        i, j = i[keep], j[keep]
        V.append(sq32[i + lo] - 2 * G[i, j])  # the computed squared distance |x|^2 + |y|^2 - 2 x.y
        A.append((i + lo).astype(np.int32))
        B.append((j + lo).astype(np.int32))
        found += len(i)
        if found > limit:
            raise TooLarge(f"more than {limit} pairs within {R:.4g}")
    a = np.concatenate(A)
    return a, np.concatenate(B), np.concatenate(V).astype(np.float64), slack[a]


def _pairs_within(X: np.ndarray, R: float, tree: Any, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``i < j`` that may lie within ``R`` (a superset of those that do) and, for each, a value ``v`` such
    that ``|x_i - x_j| <= r`` implies ``v <= r`` for every ``r <= R`` (an edge test that never misses a pair).

    k-d tree: ``v`` is the exact float64 distance times ``1 - 1e-9``. Matrix multiply: ``v`` is
    ``sqrt(max(computed squared distance - slack_i, 0))``. More than ``limit`` pairs raise :class:`TooLarge`.
    """
    if tree is not None:
        P = tree.query_pairs(R * (1 + _REL_SLACK), output_type="ndarray")
        if len(P) > limit:
            raise TooLarge(f"more than {limit} pairs within {R:.4g}")
        a, b = P[:, 0].astype(np.int32), P[:, 1].astype(np.int32)
        del P
        dist = np.empty(len(a))
        step = 1 << 20  # chunks: the differences of every pair at once would be 8 D bytes per pair
        for s in range(0, len(a), step):
            diff = X[a[s : s + step]] - X[b[s : s + step]]
            dist[s : s + step] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        return a, b, dist * (1 - _REL_SLACK)
    a, b, v2, slack = _matmul_pairs(X, R * (1 + _REL_SLACK), limit)
    return a, b, np.sqrt(np.maximum(v2 - slack, 0.0)) * (1 - _REL_SLACK)


def _first_height(X: np.ndarray, k: int, tree: Any, seed: int = 0) -> float:
    """The (N-k)/N quantile of the distance to the 2nd nearest neighbour (a sample), times _START."""
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    s = rng.choice(n, size=min(n, _SAMPLE), replace=False)
    if tree is not None:
        dist, _ = tree.query(X[s], k=min(3, n))
        d2 = dist[:, -1]
    else:
        sq = _sq_norms(X)
        X32 = X.astype(np.float32)  # a heuristic: float32 is enough
        D = sq[s, None] + sq[None, :] - 2 * (X32[s] @ X32.T)
        d2 = np.sqrt(np.maximum(np.partition(D, min(2, n - 1), axis=1)[:, min(2, n - 1)], 0))
    q = float(np.quantile(d2, (n - k) / n))
    if q <= 0:  # many duplicates: start from the smallest positive distance seen
        pos = d2[d2 > 0]
        q = float(pos.min()) if pos.size else 1.0
    return _START * q


# ---------------------------------------------------------------------------------------------- components
def _component_linkage(job: tuple[np.ndarray, float, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average linkage of one component's points: heights and, per merge, one point of each side (local ids).

    ``job = (points, height, max_pairs)``: a component whose full matrix would exceed ``max_pairs`` distances
    is clustered by the sparse exact algorithm (``O(m)`` memory) up to ``height`` instead.
    """
    from codeprior.priors.dcpe import average_linkage

    P, height, max_pairs = job
    m = P.shape[0]
    if m * (m - 1) // 2 > max_pairs:
        from codeprior.priors.dcpe_sparse import sparse_merges_below

        return sparse_merges_below(P, height)
    Z = average_linkage(P)
    # rep[node]: one point of the node (the leftmost leaf); pointer jumping over "first child" links
    first = np.concatenate([np.arange(m), Z[:, 0].astype(np.int64)])
    while True:
        nxt = first[first]
        if np.array_equal(nxt, first):
            break
        first = nxt
    return Z[:, 2].copy(), first[Z[:, 0].astype(np.int64)], first[Z[:, 1].astype(np.int64)]


def _run_components(
    jobs: list[np.ndarray], X: np.ndarray, workers: int, height: float, max_pairs: int
) -> list[tuple[np.ndarray, ...]]:
    pairs = sum(len(j) * (len(j) - 1) // 2 for j in jobs)
    if workers <= 1 or len(jobs) < 2 or pairs < _POOL_MIN_PAIRS:
        return [_component_linkage((X[j], height, max_pairs)) for j in jobs]
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i]))  # largest first: balances the pool
    out: list[tuple[np.ndarray, ...]] = [()] * len(jobs)
    with ctx.Pool(min(workers, len(jobs))) as pool:
        res = pool.imap(_component_linkage, ((X[jobs[i]], height, max_pairs) for i in order), chunksize=1)
        for i, r in zip(order, res):
            out[i] = r
    return out


def split_average_linkage(
    X: np.ndarray,
    k: int,
    *,
    workers: int | None = None,
    max_pairs: int | None = None,
    stats: dict[str, Any] | None = None,
) -> np.ndarray:
    """Exact average-linkage labels [N] (roots, not renumbered) after N - k merges; see the module docstring.

    ``max_pairs``: the most distances the largest component may store (default: 1/8 of ``N^2/2``, at least
    ``4096^2/2``); beyond it :class:`TooLarge` is raised. ``workers``: processes for the components (default:
    the usable cores).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    t_start = time.perf_counter()
    X = np.ascontiguousarray(X, dtype=np.float64)
    n, d = X.shape
    if not 1 <= k <= n:
        raise CodepriorError(f"dcpe: k={k} must be in 1..{n}")
    need = n - k
    info: dict[str, Any] = {"exact": True, "n": n, "k": k, "rounds": 0}
    if need == 0:
        if stats is not None:
            stats.update(info)
        return np.arange(n)
    if max_pairs is None:
        max_pairs = default_max_pairs(n)
    workers = usable_workers(workers)
    tree = None
    if d < HIGH_DIM:
        from scipy.spatial import cKDTree

        tree = cKDTree(X)
    info["range_search"] = "k-d tree" if tree is not None else "blocked float32 matmul"
    h = _first_height(X, k, tree)
    R = -1.0
    cache: dict[tuple[int, int], tuple[tuple[np.ndarray, ...], float]] = {}  # key -> (result, valid up to)
    t0 = time.perf_counter()
    info["search_s"] = info["components_s"] = 0.0
    while True:
        info["rounds"] += 1
        if h > R:  # search again, a bit ahead so that the next rounds reuse the pairs
            t1 = time.perf_counter()
            R = h * (_SEARCH_AHEAD if tree is not None else _SEARCH_AHEAD_HIGH)
            # high dimension: too many pairs means giant components anyway (stop early, before memory runs out)
            a, b, dist = _pairs_within(X, R, tree, max(max_pairs, 64 * n) if tree is None else 1 << 62)
            info["search_s"] += time.perf_counter() - t1
            info["pairs"] = int(len(a))
        t1 = time.perf_counter()
        sel = dist <= h
        g = coo_matrix((np.ones(int(sel.sum()), np.int8), (a[sel], b[sel])), shape=(n, n))
        ncomp, comp = connected_components(g, directed=False)
        sizes = np.bincount(comp, minlength=ncomp)
        big = int(sizes.max())
        if big * (big - 1) // 2 > max_pairs and tree is None:  # the sparse algorithm is slow in high dimension
            raise TooLarge(f"a component of {big} codes at height {h:.4g} (limit {max_pairs} distances)")
        order = np.argsort(comp, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)])
        multi = np.nonzero(sizes >= 2)[0]
        keys = [(int(order[starts[c]]), int(sizes[c])) for c in multi]  # (smallest member, size): see below
        # a component at a larger height is a union of those at a smaller one: same smallest member and same
        # size means the same members, so its dendrogram is reused (a sparse one only holds merges up to the
        # height it was run to: it is redone above it)
        todo = [i for i, key in enumerate(keys) if sizes[multi[i]] > 2 and cache.get(key, (None, -1.0))[1] < h]
        jobs = [order[starts[multi[i]] : starts[multi[i] + 1]] for i in todo]
        results = _run_components(jobs, X, workers, h, max_pairs)
        for i, r in zip(todo, results):
            m = int(sizes[multi[i]])
            cache[keys[i]] = (r, math.inf if m * (m - 1) // 2 <= max_pairs else h)
        info["sparse_components"] = sum(1 for i in todo if sizes[multi[i]] * (sizes[multi[i]] - 1) // 2 > max_pairs)
        H: list[np.ndarray] = []
        RA: list[np.ndarray] = []
        RB: list[np.ndarray] = []
        pair_comps = multi[sizes[multi] == 2]
        if len(pair_comps):  # two codes: one merge at their distance, vectorised
            p = order[starts[pair_comps]]
            q = order[starts[pair_comps] + 1]
            diff = X[p] - X[q]
            H.append(np.sqrt(np.einsum("ij,ij->i", diff, diff)))
            RA.append(p)
            RB.append(q)
        for i, key in enumerate(keys):
            if key[1] == 2:
                continue
            hh, ra, rb = cache[key][0]
            members = order[starts[multi[i]] : starts[multi[i] + 1]]
            H.append(hh)
            RA.append(members[ra])
            RB.append(members[rb])
        heights = np.concatenate(H) if H else np.zeros(0)
        below = int((heights <= h).sum())
        info["components_s"] += time.perf_counter() - t1
        info["largest_component"] = big
        info["height"] = h
        if below >= need:
            break
        # too few merges below h: grow it, at least by _GROW, up to where the components' own dendrograms
        # would hold the merges needed (an estimate: components may still join above h)
        est = float(np.partition(heights, need - 1)[need - 1]) if len(heights) >= need else h * 2
        h = min(max(h * _GROW, est * 1.03), h * 2)
    # the need lowest merges (stable: equal heights keep each component's own order)
    take = np.argsort(heights, kind="stable")[:need]
    ra = np.concatenate(RA)[take]
    rb = np.concatenate(RB)[take]
    g = coo_matrix((np.ones(need, np.int8), (ra, rb)), shape=(n, n))
    _, labels = connected_components(g, directed=False)
    info["cut_height"] = float(heights[take[-1]])
    info["linkage_s"] = time.perf_counter() - t0
    info["seconds"] = time.perf_counter() - t_start
    info["workers"] = workers
    if stats is not None:
        stats.update(info)
    return labels
