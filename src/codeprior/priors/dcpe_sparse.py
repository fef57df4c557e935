"""Exact average linkage (UPGMA, Euclidean) cut at ``k`` clusters, without the full distance matrix.

DCPE clusters a codebook with average linkage and keeps the partition after ``N - k`` merges. The textbook
method stores all ``N (N - 1) / 2`` distances: 275 GB in float64 (137 GB in float32) for ``N = 2**18``. This module computes the *same*
partition from a sparse candidate graph whose memory grows with ``N`` times the neighbourhood size.

Algorithm
---------
Rows that are exactly equal are collapsed first into weighted points (a point of weight ``w`` stands for
``w`` identical codes). State, for every live cluster ``A`` (a set of points with total weight ``W_A``):

* ``adj[A]``: the *candidate* clusters ``C``, each with either the exact average distance
  ``d(A, C) = sum_{a in A, c in C} w_a w_c |x_a - x_c| / (W_A W_C)`` or a certified lower bound on it;
* ``nn[A]``: the candidate with the smallest value, kept in a heap keyed by that value (one entry per
  cluster, stale entries skipped). The key ``nnv[A]`` is always a *lower bound* of every value in
  ``adj[A]``; it equals the smallest one except for *lazy* entries: when ``A``'s nearest candidate merges
  away, ``A`` keeps its key and is marked for a rescan, done only if its entry reaches the top of the heap;
* for every point ``a``, a *certified radius* ``r_a``: every point closer than ``r_a`` to ``a`` lies in
  ``a``'s own cluster or in one of its candidate clusters. Initially the candidates are the exact
  ``n_neighbors`` nearest neighbours (a float64 k-d tree, :class:`scipy.spatial.cKDTree`) with exact
  distances, and ``r_a`` is the distance to the last of them (``inf`` when the list holds every point);
* ``Rbar_A = sum_{a in A} w_a r_a / W_A``, kept in a second heap.

Each step takes the cluster ``A`` with the smallest heap value ``d`` and its nearest candidate ``B``:

0. if ``A`` is lazy, its candidates are rescanned, its entry re-pushed with the true minimum, and the step
   restarts;
1. if ``d > min over live clusters of Rbar``, every cluster with ``Rbar < 1.25 d`` is *widened*: the radii
   of its points are raised to at least ``t = 1.6 d`` by exact fixed-radius searches on the k-d tree
   (``query_ball_point`` returns every point within the radius). A *compact* cluster (every member within
   ``s <= t`` of its centroid ``mu``) is searched with one ball of radius ``s + t`` around ``mu``, which
   certifies ``r_a = s + t - |x_a - mu| >= t`` for each member ``a`` (every point within that distance of
   ``x_a`` is inside the ball); other clusters are searched point by point with radius ``t``. (Per-point
   balls in a dense region return every member of a big cluster for every member: quadratic output.) Each
   newly reached cluster ``C`` becomes a candidate with the lower bound
   ``max(Rbar_A, Rbar_C, |mu_A - mu_C|)`` (radii from before the widening); two single points get their
   exact distance. Then the step restarts;
2. else if ``d(A, B)`` is only a bound, the bounds at the top of the heap are computed exactly from the
   members (one vectorised numpy batch) and the step restarts;
3. else ``A`` and ``B`` merge into ``M`` (which keeps the id and the dictionary of the one with more
   candidates). Its candidates are the union of theirs, with
   ``d(M, C) = (W_A d(A, C) + W_B d(B, C)) / W_M`` (Lance-Williams for UPGMA). This is exact when both terms
   are exact; otherwise every unknown or bounded term is replaced by its lower bound (for a non-candidate
   pair ``(B, C)``: ``max(Rbar_B, Rbar_C)``), the result is raised to ``|mu_M - mu_C|`` when that is larger,
   and this lower bound is made exact only if it ever reaches the top of the heap (most never do before the
   cut).

Exactness
---------
*Invariant.* If ``a`` in ``A`` and ``c`` in ``C`` with ``C`` not a candidate of ``A`` then
``|x_a - x_c| >= r_a`` and, symmetrically, ``>= r_c``. It holds at the start (``c`` is not among
``a``'s nearest neighbours, or ``a`` among ``c``'s), survives merges (the candidates of ``M`` are the
union of those of ``A`` and ``B``, so a point near ``a`` stays in ``M`` or one of its candidates) and
survives widening (a radius is raised only to a value up to which the search found every point, and every
found point's cluster is made a candidate).

*Bounds.* Summing the invariant over the members, ``d(A, C) >= sum_a w_a r_a / W_A = Rbar_A`` (and
``>= Rbar_C``) for every non-candidate pair; Rbar only grows, so a bound taken earlier stays valid. For
every pair, ``d(A, C) >= |mu_A - mu_C|`` (Jensen: the average of ``|x_a - x_c|`` is at least the norm of the
average of ``x_a - x_c``, the norm being convex), with equality for two single points.
Lance-Williams has positive coefficients, so combining lower bounds gives a lower bound.

*Heap keys are lower bounds.* A lazy key stays valid: a merge replaces ``C``'s entries for ``A`` and
``B`` by the Lance-Williams value for ``M``; if that value is below the key, ``M`` becomes ``C``'s
(exact) nearest candidate and the key drops to it, otherwise every entry is still >= the key (and ``C`` is
marked lazy if its nearest candidate was ``A`` or ``B``); resolving a bound or raising it to a centroid
distance only raises a value; widening adds values and lowers the key when one is below it.

*Each merge is the globally closest pair.* When step 3 runs, ``A`` is not lazy, ``d(A, B)`` is exact and
is the smallest key in the heap, and every key is a lower bound of its cluster's candidate values, so no
candidate pair has an exact distance or a bound below ``d``; and
``d <= min Rbar`` means no non-candidate pair is closer than ``d``. So ``(A, B)`` is the pair that the
textbook greedy UPGMA merges (up to exact ties). Average linkage has no inversions, so the greedy sequence
is the dendrogram in order of height and the state after ``N - k`` merges is the dendrogram cut at ``k``
clusters, as in ``scipy.cluster.hierarchy.linkage(X, "average")`` followed by its first ``N - k`` rows.

*Progress.* Widening raises every radius in the widened clusters to at least ``1.6 d > d``, so after it no
live cluster has ``Rbar < 1.25 d``; resolving a bound replaces it by a larger exact value; a lazy rescan
turns a lazy entry into an exact one. If the heap runs empty (the candidate graph is disconnected) the clusters with the smallest ``Rbar`` are widened.

*Duplicates and ties.* Identical rows are at distance 0, so greedy UPGMA merges each group of duplicates
before any positive-height merge (scipy does too, in some order among the zero-height merges); merging a
group into one weighted point leaves every average distance unchanged. When ``N - k`` is smaller than the
number of zero-height merges, groups are merged partially, which is one of the tie orders scipy could take.
Exactly equal positive heights are broken by the heap order (by cluster id), possibly differently from
scipy: the only place where the partitions can differ, and real-valued data essentially never has such
ties. Distances are computed in float64 (k-d tree and numpy), never in float32, and a certified radius is
set ``1e-12`` (relative) below the searched one, so rounding in the search or the centroid distances cannot
certify a point that was not found.

Cost
----
Memory is ``O(N * degree)`` (candidate dictionaries, heaps, member lists), never ``O(N^2)``. Time is one
exact kNN search, the widening range searches, ``O(degree)`` Python work per merge (nearest-candidate
rescans are lazy: a cluster whose nearest candidate merged away is rescanned only when it reaches the top
of the heap), and vectorised exact average distances only for the pairs that reach the top of the heap.
No approximate mode exists.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from typing import Any

import numpy as np

from codeprior.errors import CodepriorError
from codeprior.priors.dcpe import relabel_first_occurrence
from codeprior.utils.progress import progress as _progress

__all__ = ["sparse_average_linkage", "sparse_merges_below"]

_LOOKAHEAD = 1.25  # widen every cluster whose Rbar is below LOOKAHEAD * d ...
_TARGET = 1.6  # ... raising its points' radii to TARGET * d
_MAX_PAIR_BLOCK = 1_000_000  # member pairs per vectorised exact-distance block
_BALL_SPREAD = 1.0  # widen a cluster with one centroid ball when its spread is at most this times the target radius
_BALL_CHUNK_POINTS = 1 << 18  # members per chunk of ball searches (bounds the size of the result lists)
_DIRTY = -2  # nn[A] marker: nnv[A] is only a lower bound of A's candidate values; rescan when on top


def _validate(X: Any, k: Any) -> tuple[np.ndarray, int]:
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise CodepriorError(f"dcpe_sparse: codebook is not numeric ({e})") from None
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise CodepriorError(f"dcpe_sparse: codebook must be a non-empty 2-D array [N, D], got shape {X.shape}")
    if not np.isfinite(X).all():
        raise CodepriorError("dcpe_sparse: codebook contains NaN or infinite values")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise CodepriorError(f"dcpe_sparse: k must be an integer, got {k!r}")
    k = int(k)
    if not 1 <= k <= X.shape[0]:
        raise CodepriorError(f"dcpe_sparse: k must be in 1..{X.shape[0]} (number of codes), got {k}")
    return X, k


def _partial_duplicate_merge(inv: np.ndarray, counts: np.ndarray, merges: int) -> np.ndarray:
    """``merges`` zero-height merges among duplicate rows (fewer than all of them): a valid tie order."""
    n = inv.shape[0]
    roots = np.arange(n)
    order = np.argsort(inv, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for g in np.nonzero(counts > 1)[0]:
        if merges == 0:
            break
        rows = order[starts[g] : starts[g] + counts[g]]
        take = min(merges, len(rows) - 1)
        roots[rows[1 : 1 + take]] = rows[0]
        merges -= take
    return relabel_first_occurrence(roots)


class _SparseUPGMA:
    """State of the sparse exact UPGMA; see the module docstring for the invariant.

    ``adj[A][C]`` holds ``d(A, C)`` when known exactly (a value >= 0) or ``-lb`` for a certified lower bound
    ``lb > 0`` (exact distances between distinct points are > 0, so the sign is unambiguous). ``nn[A]`` is the
    candidate of ``A`` with the smallest value magnitude ``nnv[A]``; the heap holds ``(nnv[A], A)`` entries, an
    entry being current when ``A`` is alive and ``nnv[A]`` still equals it (stale ones are skipped).
    Hot per-cluster scalars are Python lists (faster than numpy scalars in the merge loop).
    """

    def __init__(self, U: np.ndarray, w: np.ndarray, n_neighbors: int, workers: int) -> None:
        from scipy.spatial import cKDTree

        self.U = U
        self.w = w
        self.n = n = U.shape[0]
        self.workers = workers
        self.tree = cKDTree(U)
        cap = n  # cluster ids are point ids: a merged cluster keeps the id of one of its two parts
        self.W: list[float] = w.tolist()
        self.Wnp = w.copy()  # the same weights as an array, for vectorised bounds
        self.S = np.zeros((cap, U.shape[1]))  # sum_{a in A} w_a x_a: centroids for the Jensen bound
        self.S[:n] = U * w[:, None]
        # Per cluster id: its points as a list of arrays (joined on demand by _mem); empty once the id is dead.
        self.members: list[list[np.ndarray]] = [[m] for m in np.arange(n, dtype=np.int64).reshape(n, 1)]
        self.npts = [1] * n  # number of points per cluster
        self.alive = bytearray(cap)
        self.alive[:n] = b"\x01" * n
        self.n_alive = n
        self.cl_of = np.arange(n, dtype=np.int64)  # point -> live cluster id
        self.stats: dict[str, Any] = {
            "n_neighbors": n_neighbors,
            "widen_rounds": 0,
            "widened_points": 0,
            "widen_searches": 0,
            "bound_pairs_resolved": 0,
            "member_distance_evals": 0,
            "max_degree": 0,
            "lazy_rescans": 0,
            "ball_widened_clusters": 0,
            "centroid_bound_raises": 0,
        }

        # Exact kNN graph (float64 k-d tree).
        t0 = time.perf_counter()
        kq = min(n_neighbors + 1, n)
        dist, idx = self.tree.query(U, k=kq, workers=workers)
        dist = dist.reshape(n, kq)
        idx = idx.reshape(n, kq)
        self.rad = dist[:, -1].copy() if kq < n else np.full(n, np.inf)
        rows = np.repeat(np.arange(n), kq)
        cols = idx.reshape(-1)
        keep = cols != rows
        a, b = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
        key = np.unique(a * n + b)
        a, b = key // n, key % n
        d = np.sqrt(((U[a] - U[b]) ** 2).sum(1))
        self.stats["knn_s"] = time.perf_counter() - t0
        self.stats["initial_pairs"] = int(len(key))

        t0 = time.perf_counter()
        # Per cluster id: candidate id -> exact distance (>= 0) or negated lower bound; empty once the id is dead.
        adj: list[dict[int, float]] = [{} for _ in range(n)]
        for i, j, dd in zip(a.tolist(), b.tolist(), d.tolist()):
            adj[i][j] = dd
            adj[j][i] = dd
        self.adj = adj
        nn = [-1] * n
        nnv = [math.inf] * n
        for i in range(n):
            ai = adj[i]
            if ai:
                j = min(ai, key=ai.__getitem__)
                nn[i], nnv[i] = j, ai[j]
        self.nn, self.nnv = nn, nnv
        self.heap: list[tuple[float, int]] = sorted((nnv[i], i) for i in range(n) if nn[i] >= 0)
        self.n_pairs = len(key)  # live candidate pairs
        self.wr: list[float] = (w * self.rad).tolist()  # sum_{a in A} w_a r_a
        r_order = np.argsort(self.rad, kind="stable")
        self.rheap: list[tuple[float, int]] = list(zip(self.rad[r_order].tolist(), r_order.tolist()))
        self.stats["graph_build_s"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ exact distances from members
    def _pair_distances(self, P: list[int], Q: list[int]) -> np.ndarray:
        """Exact average distances d(P_i, Q_i) from the members, vectorised over all pairs."""
        mp = [self._mem(p) for p in P]
        mq = [self._mem(q) for q in Q]
        sp = np.fromiter((len(m) for m in mp), dtype=np.int64, count=len(P))
        sq = np.fromiter((len(m) for m in mq), dtype=np.int64, count=len(Q))
        npair = sp * sq
        self.stats["member_distance_evals"] += int(npair.sum())
        out = np.empty(len(P))
        # Blocks of at most _MAX_PAIR_BLOCK member pairs (a single huge pair is its own block).
        cum = np.cumsum(npair)
        lo = 0
        while lo < len(P):
            base = cum[lo - 1] if lo else 0
            hi = max(int(np.searchsorted(cum, base + _MAX_PAIR_BLOCK, side="right")), lo + 1)
            out[lo:hi] = self._pair_block(mp[lo:hi], mq[lo:hi], sp[lo:hi], sq[lo:hi], npair[lo:hi])
            lo = hi
        W = self.W
        return out / np.array([W[p] * W[q] for p, q in zip(P, Q)])

    def _pair_block(
        self, mp: list[Any], mq: list[Any], sp: np.ndarray, sq: np.ndarray, npair: np.ndarray
    ) -> np.ndarray:
        """Sum over member pairs of w_a w_c |x_a - x_c| for each cluster pair (cartesian products, flat)."""
        cp = np.concatenate(mp)
        cq = np.concatenate(mq)
        p_start = np.cumsum(sp) - sp
        q_start = np.cumsum(sq) - sq
        starts = np.cumsum(npair) - npair
        blk = np.repeat(np.arange(len(sp)), npair)
        off = np.arange(int(npair.sum())) - starts[blk]
        sqb = sq[blk]
        left = cp[p_start[blk] + off // sqb]
        right = cq[q_start[blk] + off % sqb]
        diff = self.U[left] - self.U[right]
        dist = np.sqrt(np.einsum("ij,ij->i", diff, diff)) * (self.w[left] * self.w[right])
        return np.add.reduceat(dist, starts)

    def _centroid_dist(self, P: Any, Q: Any) -> np.ndarray:
        """|mu_P - mu_Q| for cluster id arrays: a lower bound of d(P, Q) by Jensen (the norm is convex)."""
        P = np.asarray(P, dtype=np.int64)
        Q = np.asarray(Q, dtype=np.int64)
        diff = self.S[P] / self.Wnp[P, None] - self.S[Q] / self.Wnp[Q, None]
        return np.sqrt(np.einsum("ij,ij->i", diff, diff))

    def _set_nn(self, c: int) -> None:
        """Recompute the nearest candidate of ``c`` and push its heap entry."""
        ac = self.adj[c]
        if ac:
            vals = list(ac.values())  # C-level scans only, no Python call or tuple per item
            v = min(map(abs, vals))
            try:
                i = vals.index(v)  # prefer an exact value over an equal bound
            except ValueError:
                i = vals.index(-v)
            j = next(itertools.islice(ac, i, None)) if i < 8 else list(ac)[i]
            self.nn[c], self.nnv[c] = j, v
            heapq.heappush(self.heap, (v, c))
        else:
            self.nn[c], self.nnv[c] = -1, math.inf

    def _resolve_bounds(self, max_bounds: int = 128, max_live: int = 512) -> None:
        """Replace lower bounds at the top of the heap by exact distances, in one vectorised batch.

        Pops current entries from the top (at most ``max_live``, stopping after ``max_bounds`` whose nearest
        candidate is only a bound), computes those pairs exactly, updates the nearest candidates of both ends
        and pushes the other entries back unchanged.
        """
        heap, alive, adj, nn, nnv = self.heap, self.alive, self.adj, self.nn, self.nnv
        pop, push = heapq.heappop, heapq.heappush
        P: list[int] = []
        Q: list[int] = []
        seen: set[tuple[int, int]] = set()
        keep: list[tuple[float, int]] = []
        while heap and len(P) < max_bounds and len(keep) < max_live:
            e = pop(heap)
            a = e[1]
            if not alive[a] or nnv[a] != e[0]:
                continue
            c = nn[a]
            if c == _DIRTY:  # lazy entry: find the real nearest candidate, push it, look again later
                self.stats["lazy_rescans"] += 1
                self._set_nn(a)
                continue
            if adj[a][c] >= 0:
                keep.append(e)
            else:
                key = (a, c) if a < c else (c, a)
                if key not in seen:
                    seen.add(key)
                    P.append(a)
                    Q.append(c)
        for e in keep:
            push(heap, e)
        if not P:
            return
        self.stats["bound_pairs_resolved"] += len(P)
        for a, c, dd in zip(P, Q, self._pair_distances(P, Q).tolist()):
            adj[a][c] = dd
            adj[c][a] = dd
        for a, c in zip(P, Q):
            self._set_nn(a)  # its entry was popped: always re-push
            if nn[c] == a:  # c's entry may have been popped above: rescan and re-push
                self._set_nn(c)

    # ------------------------------------------------------------------ widening
    def _add_candidates(self, pa: np.ndarray, pb: np.ndarray) -> None:
        """Make the clusters of point pairs (pa[i], pb[i]) candidates of each other.

        The pairs were not candidates before this widening began, so ``max(Rbar_A, Rbar_C)`` with the radii
        from before the widening (``wr`` is only updated when it ends) is a certified lower bound.
        """
        ca, cb = self.cl_of[pa], self.cl_of[pb]
        keep = ca != cb
        ca, cb = ca[keep], cb[keep]
        if len(ca) == 0:
            return
        m = self.n
        key = np.unique(np.minimum(ca, cb) * m + np.maximum(ca, cb))
        ci, cj = key // m, key % m
        adj, heap, nn, nnv = self.adj, self.heap, self.nn, self.nnv
        rbar = np.array(self.wr) / self.Wnp  # dead ids never occur in ci, cj
        lbs = np.maximum(np.maximum(rbar[ci], rbar[cj]), self._centroid_dist(ci, cj))
        added = 0
        npts = self.npts
        for i, j, lb in zip(ci.tolist(), cj.tolist(), lbs.tolist()):
            ai = adj[i]
            if j in ai:
                continue
            # two single points: the centroid distance is the exact distance
            v = lb if npts[i] == 1 and npts[j] == 1 else -lb
            ai[j] = v
            adj[j][i] = v
            if lb < nnv[i]:
                nn[i], nnv[i] = j, lb
                heapq.heappush(heap, (lb, i))
            if lb < nnv[j]:
                nn[j], nnv[j] = i, lb
                heapq.heappush(heap, (lb, j))
            added += 1
        self.n_pairs += added

    def _widen(self, clusters: list[int], target: float) -> None:
        """Raise the radius of every point of ``clusters`` to at least ``target`` (exact range searches).

        A compact cluster (every member within ``s <= target`` of its centroid ``mu``) is searched with one ball of
        radius ``s + target`` around ``mu``: every point within ``s + target - |x_a - mu|`` of a member ``a`` lies
        in that ball, so that is ``a``'s new certified radius (>= target). Other clusters' points are searched one
        by one. One ball per cluster instead of one per point keeps the result size linear in dense regions, where
        per-point balls would return every member of the cluster for every member.
        """
        self.stats["widen_rounds"] += 1
        U, rad, members = self.U, self.rad, self._mem
        ball_c: list[int] = []
        ball_mu: list[np.ndarray] = []
        ball_r: list[float] = []
        single: list[np.ndarray] = []
        for c in clusters:
            mem = members(c)
            if len(mem) == 1:
                if rad[mem[0]] < target:
                    single.append(mem)
                continue
            mu = self.S[c] / self.W[c]
            spread = float(np.sqrt(((U[mem] - mu) ** 2).sum(1)).max())
            if spread <= _BALL_SPREAD * target:
                ball_c.append(c)
                ball_mu.append(mu)
                ball_r.append(spread + target)
            else:
                pts = mem[rad[mem] < target]
                if len(pts):
                    single.append(pts)
        chunk = 4096
        if ball_c:
            self.stats["ball_widened_clusters"] += len(ball_c)
            centres, radii = np.array(ball_mu), np.array(ball_r)
            # chunks of at most `chunk` balls and about _BALL_CHUNK_POINTS members (a ball returns at least its
            # cluster's own points), so the Python result lists stay small
            sizes = np.cumsum([self.npts[c] for c in ball_c])
            s = 0
            while s < len(ball_c):
                base = sizes[s - 1] if s else 0
                e = min(max(int(np.searchsorted(sizes, base + _BALL_CHUNK_POINTS, side="right")), s + 1), s + chunk)
                cs = ball_c[s:e]
                self.stats["widen_searches"] += 1
                found = self.tree.query_ball_point(
                    centres[s:e], r=radii[s:e], workers=self.workers, return_sorted=False
                )
                lens = np.fromiter(map(len, found), dtype=np.int64, count=len(cs))
                idx = np.fromiter(itertools.chain.from_iterable(found), dtype=np.int64, count=int(lens.sum()))
                rep = np.array(cs, dtype=np.int64)  # a cluster id is the id of one of its points
                self._add_candidates(np.repeat(rep, lens), idx)
                for c, mu, R in zip(cs, centres[s:e], radii[s:e]):
                    mem = members(c)
                    # the search found every point within R of mu; slack 1e-12 R for float rounding
                    cert = R * (1 - 1e-12) - np.sqrt(((U[mem] - mu) ** 2).sum(1))
                    rad[mem] = np.maximum(rad[mem], cert)
                    self.stats["widened_points"] += len(mem)
                s = e
        if single:
            pts = np.concatenate(single)
            self.stats["widened_points"] += int(len(pts))
            # Exact fixed-radius search: every point within ``target`` of a widened point is returned, so its
            # radius becomes ``target``. Chunks keep the result lists small.
            for s in range(0, len(pts), chunk):
                q = pts[s : s + chunk]
                self.stats["widen_searches"] += 1
                found = self.tree.query_ball_point(U[q], r=target, workers=self.workers, return_sorted=False)
                lens = np.fromiter(map(len, found), dtype=np.int64, count=len(q))
                idx = np.fromiter(itertools.chain.from_iterable(found), dtype=np.int64, count=int(lens.sum()))
                rad[q] = np.maximum(rad[q], target * (1 - 1e-12))  # slack for float rounding in the search
                self._add_candidates(np.repeat(q, lens), idx)
        for c in clusters:
            mem = members(c)
            self.wr[c] = float(np.dot(self.w[mem], rad[mem]))
            heapq.heappush(self.rheap, (self.wr[c] / self.W[c], c))

    def _min_rbar(self) -> float:
        rheap, alive, wr, W = self.rheap, self.alive, self.wr, self.W
        while rheap:
            v, c = rheap[0]
            if alive[c] and v == wr[c] / W[c]:
                return v
            heapq.heappop(rheap)
        return math.inf

    def _pop_rbar_below(self, level: float) -> list[int]:
        out = []
        while self._min_rbar() < level:
            out.append(heapq.heappop(self.rheap)[1])
        return out

    # ------------------------------------------------------------------ merging
    def _merge(self, A: int, B: int) -> None:
        """Merge ``A`` and ``B``; the merged cluster keeps the id (and the updated dictionary) of the one with
        more candidates, so the work per merge is one pass over the candidates and no dictionary is rebuilt."""
        adj, W, wr = self.adj, self.W, self.wr
        if len(adj[A]) < len(adj[B]):
            A, B = B, A
        adjA, adjB = adj[A], adj[B]
        adj[B] = {}
        del adjA[B]
        del adjB[A]
        self.n_pairs -= len(adjB) + 1
        wA, wB = W[A], W[B]
        wM = wA + wB
        fa, fb = wA / wM, wB / wM
        rA, rB = wr[A] / wA, wr[B] / wB
        bounded: list[int] = []
        get_b = adjB.get
        for C, vA in adjA.items():  # values change, keys do not
            vB = get_b(C)
            if vB is None:  # B and C are not candidates: d(B, C) >= max(Rbar_B, Rbar_C)
                rC = wr[C] / W[C]
                adjA[C] = -(fa * (vA if vA >= 0 else -vA) + fb * (rB if rB > rC else rC))
                bounded.append(C)
            elif vA >= 0 and vB >= 0:  # Lance-Williams, exact
                adjA[C] = fa * vA + fb * vB
            else:
                adjA[C] = -(fa * (vA if vA >= 0 else -vA) + fb * (vB if vB >= 0 else -vB))
                bounded.append(C)
        for C, vB in adjB.items():
            del adj[C][B]
            if C not in adjA:
                rC = wr[C] / W[C]
                adjA[C] = -(fa * (rA if rA > rC else rC) + fb * (vB if vB >= 0 else -vB))
                bounded.append(C)
                self.n_pairs += 1
        S = self.S
        S[A] += S[B]
        self.Wnp[A] = wM
        W[A] = wM
        if bounded:  # raise each bound to the centroid distance where that is larger (Jensen)
            cd = self._centroid_dist(bounded, [A] * len(bounded)).tolist()
            raised = 0
            for C, c in zip(bounded, cd):
                if c > -adjA[C]:
                    adjA[C] = -c
                    raised += 1
            self.stats["centroid_bound_raises"] += raised
        heap, nn, nnv = self.heap, self.nn, self.nnv
        push = heapq.heappush
        best, best_v = -1, math.inf
        for C, v in adjA.items():
            adj[C][A] = v
            av = v if v >= 0 else -v
            if av < best_v:
                best, best_v = C, av
            if av < nnv[C]:  # below every other value of C (nnv[C] is a lower bound of them)
                nn[C], nnv[C] = A, av
                push(heap, (av, C))
            elif nn[C] == A or nn[C] == B:  # its nearest candidate changed or died: rescan lazily, when on top
                nn[C] = _DIRTY
        nn[A], nnv[A] = best, best_v
        nn[B], nnv[B] = -1, math.inf
        if best >= 0:
            push(heap, (best_v, A))
        if len(adjA) > self.stats["max_degree"]:
            self.stats["max_degree"] = len(adjA)
        memB = self._mem(B)
        self.members[A].append(memB)
        self.members[B] = []
        self.npts[A] += self.npts[B]
        self.cl_of[memB] = A
        wr[A] += wr[B]
        self.alive[B] = 0
        self.n_alive -= 1
        heapq.heappush(self.rheap, (wr[A] / wM, A))

    def _mem(self, c: int) -> np.ndarray:
        """The points of cluster ``c`` (stored as a list of arrays, joined on demand)."""
        parts = self.members[c]
        if len(parts) > 1:
            parts[:] = [np.concatenate(parts)]
        return parts[0]

    def _compact_heap(self) -> None:
        alive, nnv = self.alive, self.nnv
        self.heap = [e for e in self.heap if alive[e[1]] and nnv[e[1]] == e[0]]
        heapq.heapify(self.heap)

    def run(
        self, k: int, show: bool, stop_height: float = math.inf, record: list[tuple[int, int, float]] | None = None
    ) -> np.ndarray:
        """Merge down to ``k`` clusters, or until the next (certified) merge is higher than ``stop_height``;
        ``record`` receives ``(point of A, point of B, height)`` per merge, in order."""
        bar = _progress(
            total=self.n - k, desc="dcpe sparse average linkage", disable=None if show else True, unit="merge"
        )
        done = 0
        alive = self.alive
        while self.n_alive > k:
            heap = self.heap
            if not heap:  # disconnected candidate graph: widen the least-certified clusters
                low = self._min_rbar()
                self._widen(self._pop_rbar_below(low * _LOOKAHEAD), 2.0 * low)
                continue
            d, A = heap[0]
            if not alive[A] or self.nnv[A] != d:  # stale entry
                heapq.heappop(heap)
                continue
            B = self.nn[A]
            if B == _DIRTY:  # lazy entry on top: rescan its candidates now
                self.stats["lazy_rescans"] += 1
                heapq.heappop(heap)
                self._set_nn(A)
                continue
            if d > self._min_rbar():  # some non-candidate pair might be closer than d: widen
                self._widen(self._pop_rbar_below(_LOOKAHEAD * d), _TARGET * d)
                continue
            if self.adj[A][B] < 0:  # a lower bound on top: make exact, retry
                self._resolve_bounds()
                continue
            if d > stop_height:  # the next merge of the greedy sequence is above the height asked for
                break
            heapq.heappop(heap)
            if record is not None:
                record.append((A, B, d))  # a cluster id is the id of one of its points
            self._merge(A, B)
            done += 1
            if done == 4096:
                bar.update(done)
                done = 0
                if len(self.heap) > 4 * self.n_alive + 1_000_000:
                    self._compact_heap()
        bar.update(done)
        bar.close()
        self.stats["final_pairs"] = int(self.n_pairs)
        self.stats["heap_entries"] = len(self.heap)
        return self.cl_of


def sparse_average_linkage(
    X: np.ndarray,
    k: int,
    progress: bool = True,
    *,
    n_neighbors: int = 16,
    workers: int = -1,
    stats: dict[str, Any] | None = None,
) -> np.ndarray:
    """Exact average-linkage (UPGMA, Euclidean) labels [N] in 0..k-1 after N - k merges, in O(N) memory.

    The partition equals ``scipy.cluster.hierarchy.linkage(X, "average")`` cut after its first ``N - k``
    merges (see the module docstring for the argument); identical rows always end in one cluster unless
    ``k`` exceeds the number of distinct rows. Labels are numbered by first occurrence in ``X``.

    ``n_neighbors`` is the initial exact-kNN graph degree (only speed depends on it); ``workers`` is passed to
    the k-d tree searches (-1: all cores). If ``stats`` is a dict, it is filled with counters and timings
    (``"exact": True`` always: there is no approximate mode).
    """
    t_start = time.perf_counter()
    X, k = _validate(X, k)
    if n_neighbors < 1:
        raise CodepriorError(f"dcpe_sparse: n_neighbors must be >= 1, got {n_neighbors}")
    N = X.shape[0]
    info: dict[str, Any] = {"exact": True, "n": N, "k": k}
    U, inv, counts = np.unique(X, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    n_u = U.shape[0]
    info["distinct_rows"] = int(n_u)
    if N - k <= N - n_u:  # the cut falls among the zero-height (duplicate) merges
        labels = _partial_duplicate_merge(inv, counts, N - k)
    else:
        state = _SparseUPGMA(U, counts.astype(np.float64), n_neighbors, workers)
        roots = state.run(k, progress)
        info.update(state.stats)
        labels = relabel_first_occurrence(roots[inv])
    info["seconds"] = time.perf_counter() - t_start
    if stats is not None:
        stats.update(info)
    return labels


def sparse_merges_below(
    X: np.ndarray, height: float, *, n_neighbors: int = 16, workers: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The average-linkage merges of ``X`` up to ``height``, in order: ``(heights, point of one side, point of
    the other)`` (row ids of ``X``), the first merges of ``scipy``'s dendrogram (up to the order of equal heights).

    Used by :mod:`codeprior.priors.dcpe_split` for a component too large for its full matrix. Duplicate rows
    are merged first, at height 0 (one merge per extra copy), as greedy UPGMA does.
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    U, first, inv, counts = np.unique(X, axis=0, return_index=True, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    dup = np.nonzero(counts[inv] > 1)[0]  # rows with a copy: each joins the group's first row at height 0
    dup = dup[dup != first[inv[dup]]]
    H: list[float] = [0.0] * len(dup)
    RA: list[int] = first[inv[dup]].tolist()
    RB: list[int] = dup.tolist()
    if U.shape[0] > 1:
        record: list[tuple[int, int, float]] = []
        state = _SparseUPGMA(U, counts.astype(np.float64), n_neighbors, workers)
        state.run(1, False, stop_height=height, record=record)
        for a, b, d in record:
            RA.append(int(first[a]))
            RB.append(int(first[b]))
            H.append(d)
    return np.asarray(H, dtype=np.float64), np.asarray(RA, dtype=np.int64), np.asarray(RB, dtype=np.int64)
