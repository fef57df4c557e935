"""DCPE's prior: exact average-linkage (UPGMA) agglomerative clustering, Euclidean, cut at exactly k clusters.

Three exact backends, all giving the partition of ``scipy.cluster.hierarchy.linkage(X, "average")``:

* ``full`` (default when it fits): the condensed distance matrix (``N*(N-1)/2`` float64, 1 GiB at N = 16384)
  from :func:`scipy.spatial.distance.pdist`, clustered *in place* by fastcluster's NN-chain average linkage
  (``fastcluster.linkage_wrap``; the public ``fastcluster.linkage`` copies its input under NumPy 2, which
  doubles the peak memory). Same distances as ``scipy.cluster.hierarchy.linkage(X, "average")``.
* ``split`` (``codeprior.priors.dcpe_split``, what ``auto`` takes beyond SMALL_N codes): the codebook split
  into the connected components of the graph of pairs closer than a certified height above the cut; each
  component clustered like ``full``, in a process pool. Falls back when a component is too large.
* ``sparse`` (``codeprior.priors.dcpe_sparse``): an exact algorithm in ``O(N)`` memory for codebooks whose
  components are too large (no cluster structure); imported lazily.

The cut: the dendrogram is cut after exactly ``N - k`` merges (union-find over the first ``N - k`` rows of
the height-sorted linkage matrix), which always yields exactly k clusters. ``scipy``'s
``fcluster(Z, k, "maxclust")`` cuts at a *height* instead, so when several merges share the height at the
cut it returns fewer than k clusters; whenever the cut height is not tied both give the same partition.
Cluster ids are numbered in order of first appearance (code 0 is in cluster 0).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from codeprior.errors import CodepriorError

#: Extra working memory of the full backend, on top of the condensed matrix (fraction of the matrix).
_FULL_OVERHEAD = 0.10
#: Default share of the available RAM the full backend may use (override: CODEPRIOR_DCPE_MAX_BYTES).
_DEFAULT_RAM_FRACTION = 0.6


def full_backend_bytes(n: int, d: int = 8) -> int:
    """Estimated peak bytes of the full backend: condensed float64 matrix + working arrays + the data."""
    condensed = n * (n - 1) // 2 * 8
    return int(condensed * (1 + _FULL_OVERHEAD)) + n * d * 8 + n * 64


def available_memory_bytes() -> int:
    """``MemAvailable`` from /proc/meminfo (cgroup limit respected when lower); a safe guess elsewhere."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    for cg in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(cg) as f:
                raw = f.read().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < (1 << 60):
            avail = min(avail, int(raw)) if avail else int(raw)
    return avail if avail else 4 << 30


def memory_budget_bytes() -> tuple[int, str]:
    """The byte budget for the full backend and where it came from."""
    env = os.environ.get("CODEPRIOR_DCPE_MAX_BYTES")
    if env:
        try:
            return int(float(env)), "CODEPRIOR_DCPE_MAX_BYTES"
        except ValueError:
            raise CodepriorError(f"CODEPRIOR_DCPE_MAX_BYTES: not a number: {env!r}") from None
    avail = available_memory_bytes()
    return int(avail * _DEFAULT_RAM_FRACTION), f"{int(_DEFAULT_RAM_FRACTION * 100)}% of available RAM"


#: Up to this many codes ``auto`` takes the full matrix (at most 32 MiB; measured 0.1 s at 2048 x 8).
SMALL_N = 2048


def choose_backend(n: int, d: int, backend: str = "auto") -> tuple[str, str]:
    """Pick ``full``, ``split`` or ``sparse``; return ``(backend, human-readable reason)``.

    ``auto`` (measured in benchmarks/prior_extraction.py and docs/benchmarks.md): the full matrix for small
    codebooks (N <= SMALL_N) when it fits the budget, else ``split`` (exact components below the cut height;
    at 16384 x 8 it is ~10x faster than the full matrix and ~3x faster than ``sparse``). ``split`` falls back
    at run time when its components are too large (see :func:`dcpe_labels`).
    """
    need = full_backend_bytes(n, d)
    if backend == "full":
        return "full", f"requested (needs ~{need / 2**30:.2f} GiB)"
    if backend in ("sparse", "split"):
        return backend, "requested"
    if backend != "auto":
        raise CodepriorError(f"dcpe: unknown backend {backend!r} (use auto, full, split or sparse)")
    budget, source = memory_budget_bytes()
    if n <= SMALL_N and need <= budget:
        return "full", f"{n} codes: the condensed distance matrix (~{need / 2**20:.0f} MiB) is quickest"
    return (
        "split",
        f"{n} codes: exact components below the cut height (budget {budget / 2**30:.2f} GiB, {source}); "
        "falls back to the sparse algorithm (or the full matrix in high dimension when it fits) if a component "
        "is too large",
    )


def _split_fallback(n: int, d: int) -> str:
    """The backend ``split`` hands over to when its components are too large."""
    from codeprior.priors.dcpe_split import HIGH_DIM

    budget, _ = memory_budget_bytes()
    return "full" if d >= HIGH_DIM and full_backend_bytes(n, d) <= budget else "sparse"


def average_linkage(X: np.ndarray) -> np.ndarray:
    """Exact average-linkage linkage matrix Z [N-1, 4] (scipy format, sorted by height) of the rows of X."""
    import fastcluster
    from scipy.spatial.distance import pdist

    X = np.ascontiguousarray(X, dtype=np.float64)
    n = X.shape[0]
    Z = np.empty((max(n - 1, 0), 4), dtype=np.float64)
    if n < 2:
        return Z
    y = pdist(X, metric="euclidean")  # float64, C-contiguous, owned: safe to overwrite
    if hasattr(fastcluster, "linkage_wrap") and "average" in getattr(fastcluster, "mthidx", {}):
        fastcluster.linkage_wrap(n, y, Z, fastcluster.mthidx["average"])  # in place: no second copy
    else:  # pragma: no cover - other fastcluster versions
        Z = fastcluster.linkage(y, method="average", preserve_input=False)
    del y
    return Z


def cut_exact(Z: np.ndarray, n: int, k: int) -> np.ndarray:
    """Labels after exactly ``n - k`` merges of a height-sorted linkage matrix: always k clusters.

    Labels are renumbered in order of first appearance (code 0 -> cluster 0).
    """
    if not 1 <= k <= n:
        raise CodepriorError(f"dcpe: k={k} must be in 1..{n}")
    parent = np.arange(2 * n - 1, dtype=np.int64)
    merges = n - k
    if merges:
        a = Z[:merges, 0].astype(np.int64)
        b = Z[:merges, 1].astype(np.int64)
        new = np.arange(n, n + merges, dtype=np.int64)
        parent[a] = new
        parent[b] = new
    # pointer jumping: every node reaches its root in O(log depth) vectorised rounds
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            break
        parent = nxt
    return relabel_first_occurrence(parent[:n])


def relabel_first_occurrence(roots: np.ndarray) -> np.ndarray:
    """Map arbitrary cluster ids to 0..k-1 numbered by first occurrence (element 0 -> cluster 0)."""
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.reshape(-1)]


def dcpe_labels(
    X: np.ndarray, k: int, backend: str = "auto", progress: bool = True, workers: int | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Average-linkage labels (int64 [N], exactly k clusters) and backend info ``{"backend", "reason"}``.

    ``workers``: processes for the ``split`` backend's components and threads for the sparse backend's range
    searches (default: every usable core).
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    n, d = X.shape
    chosen, reason = choose_backend(n, d, backend)
    info: dict[str, Any] = {"backend": chosen, "reason": reason}
    if chosen == "split":
        from codeprior.priors.dcpe_split import TooLarge, default_max_pairs, split_average_linkage, usable_workers

        nworkers = usable_workers(workers)
        budget, _ = memory_budget_bytes()
        # every worker may hold one component's matrix: the budget is shared
        max_pairs = min(default_max_pairs(n), int(budget / (8 * (1 + _FULL_OVERHEAD) * nworkers)))
        stats: dict[str, Any] = {}
        try:
            labels = split_average_linkage(X, k, workers=nworkers, max_pairs=max_pairs, stats=stats)
        except TooLarge as e:
            chosen = _split_fallback(n, d)
            info["split_fallback"] = str(e)
            info["backend"] = chosen
            info["reason"] = f"{reason}; split: {e}: {chosen}"
        else:
            info["library"] = "codeprior.priors.dcpe_split (scipy.pdist + fastcluster per component)"
            info["split"] = {key: stats[key] for key in ("rounds", "largest_component", "cut_height", "workers")}
            return relabel_first_occurrence(labels), info
    if chosen == "full":
        from codeprior.utils.progress import progress as progress_bar

        bar = progress_bar(total=2, desc="dcpe: average linkage", unit="step", disable=None if progress else True)
        Z = average_linkage(X)
        bar.update(1)
        bar.set_description("dcpe: cut at k")
        labels = cut_exact(Z, n, k)
        bar.update(1)
        bar.close()
        info["library"] = "scipy.pdist + fastcluster (NN-chain, in place)"
        return labels, info
    try:
        from codeprior.priors.dcpe_sparse import sparse_average_linkage
    except ImportError as e:
        raise CodepriorError(
            f"dcpe: the full distance matrix does not fit ({reason}) and the sparse backend is unavailable ({e}); "
            "raise CODEPRIOR_DCPE_MAX_BYTES or free memory"
        ) from None
    if workers:
        labels = sparse_average_linkage(X, k, progress=progress, workers=workers)
    else:  # its default: every core for the k-d tree searches
        labels = sparse_average_linkage(X, k, progress=progress)
    info["library"] = "codeprior.priors.dcpe_sparse"
    return relabel_first_occurrence(labels), info  # the same canonical numbering, whatever the backend returns


def labels_for_registry(
    X: np.ndarray, k: int, *, seed: int = 0, progress: bool = True, backend: str = "auto"
) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`dcpe_labels` in the prior registry's calling convention (deterministic: ``seed`` is unused)."""
    return dcpe_labels(X, k, backend=backend, progress=progress)
