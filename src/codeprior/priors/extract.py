"""One entry point for all prior extractors: :func:`extract` (``dcpe`` | ``kmeans`` | ``balanced-kmeans``)."""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from codeprior import __version__
from codeprior.codebook import count_distinct_rows, validate_codebook, validate_codebook_array, validate_k
from codeprior.errors import CodepriorError
from codeprior.utils.io import sha256_array

if TYPE_CHECKING:
    import torch

    from codeprior.priors.prior import Prior

from codeprior.priors.methods import METHODS


def geometry(codebook: torch.Tensor | np.ndarray, normalize: bool) -> np.ndarray:
    """The float64 vectors a prior clusters: L2-normalised rows (``normalize=True``) or the stored rows.

    Zero rows stay zero when normalised (no division by zero).
    """
    if not isinstance(codebook, np.ndarray):  # a tensor
        codebook = codebook.detach().cpu().numpy()
    X = np.asarray(codebook, dtype=np.float64)
    if normalize:
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        X = X / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(X)


def extract(
    codebook: torch.Tensor,
    method: str,
    k: int,
    normalize: bool = True,
    seed: int = 0,
    progress: bool = True,
    *,
    source: str | os.PathLike | None = None,
    dcpe_backend: str = "auto",
) -> Prior:
    """Partition a codebook [N, D] into k clusters with ``method``; returns a :class:`Prior` with metadata.

    ``normalize=True`` clusters L2-normalised rows (what LlamaGen's quantizer compares); ``False`` the stored
    rows (the official DCPE setting). Metadata: method, k, normalize, seed, codebook_sha256 (of the stored
    codebook), source, codeprior version, seconds, and backend details. Identical rows always share a cluster
    for ``dcpe`` and ``kmeans`` (k larger than the number of distinct rows is refused for them).
    """
    import torch

    from codeprior.priors.prior import Prior

    name = str(source) if source is not None else "codebook"
    cb = validate_codebook(torch.as_tensor(codebook), name).numpy()
    labels, metadata = extract_labels(
        cb, method, k, normalize, seed, progress, source=source, dcpe_backend=dcpe_backend
    )
    return Prior(torch.from_numpy(labels), metadata)


def extract_labels(
    codebook: np.ndarray,
    method: str,
    k: int,
    normalize: bool = True,
    seed: int = 0,
    progress: bool = True,
    *,
    source: str | os.PathLike | None = None,
    dcpe_backend: str = "auto",
) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`extract` on a NumPy codebook, without torch: int64 labels [N] (0..k-1) and the prior's metadata.

    The ``prior`` command takes this path and writes the file with :func:`codeprior.priors.prior.write_prior_file`.
    """
    name = str(source) if source is not None else "codebook"
    if method not in METHODS:
        raise CodepriorError(f"{name}: unknown prior method {method!r} (choose from {', '.join(METHODS)})")
    cb = validate_codebook_array(codebook, name)
    n = cb.shape[0]
    k = validate_k(k, n, method, name)
    if METHODS[method].distinct_codes:
        distinct = count_distinct_rows(cb)
        if k > distinct:
            raise CodepriorError(
                f"{name}: k={k} exceeds the number of distinct codes ({distinct} of {n} rows are unique); "
                "identical codes cannot be told apart"
            )
    X = geometry(cb, normalize)
    t0 = time.perf_counter()
    details: dict[str, Any]
    module, function = METHODS[method].labels.split(":")
    labels_fn = getattr(importlib.import_module(module), function)
    labels, details = labels_fn(X, k, seed=seed, progress=progress, backend=dcpe_backend)
    seconds = time.perf_counter() - t0
    labels = np.asarray(labels, dtype=np.int64)
    got = int(np.unique(labels).size)
    if got != k or labels.shape != (n,):  # an internal invariant: every method yields exactly k clusters
        raise RuntimeError(f"{method} produced {got} clusters for k={k}")
    metadata: dict[str, Any] = {
        "method": method,
        "k": k,
        "num_codes": n,
        "dim": int(cb.shape[1]),
        "normalize": bool(normalize),
        "seed": int(seed),
        "codebook_sha256": sha256_array(cb),
        "codeprior_version": __version__,
        "seconds": round(seconds, 4),
        "backend": details,
    }
    if source is not None:
        metadata["source"] = str(Path(source))
    return labels, metadata


def coarser_levels(
    codebook: np.ndarray,
    method: str,
    labels: np.ndarray,
    ks: list[int],
    normalize: bool = True,
    seed: int = 0,
    progress: bool = True,
    *,
    source: str | os.PathLike | None = None,
    dcpe_backend: str = "auto",
) -> list[np.ndarray]:
    """Coarser levels of the partition ``labels`` (from :func:`extract_labels`) with ``ks`` clusters (decreasing),
    for a multi-level prior: ``dcpe`` cuts the same average-linkage dendrogram at each k (every backend is exact,
    so the cuts nest; a tie at a cut height that breaks the nesting is a one-line error), ``kmeans`` clusters the
    previous level's centroids weighted by their sizes. Each level is checked to coarsen the one before."""
    from codeprior.priors.prior import nesting_error

    name = str(source) if source is not None else "codebook"
    if method not in ("dcpe", "kmeans"):
        raise CodepriorError(f"{name}: nested levels (--rates) are built for dcpe and kmeans, not {method}")
    X = geometry(validate_codebook_array(codebook, name), normalize)
    out: list[np.ndarray] = []
    prev = np.asarray(labels, dtype=np.int64)
    for i, k in enumerate(ks, start=1):
        if method == "dcpe":
            from codeprior.priors.dcpe import dcpe_labels

            lab, _ = dcpe_labels(X, int(k), backend=dcpe_backend, progress=progress)
        else:
            lab = _centroid_kmeans(X, prev, int(k), seed)
        err = nesting_error(prev, lab, i)
        if err:
            raise CodepriorError(f"{name}: {method} level {i} (k={k}): {err} (tied merge heights at the cut)")
        out.append(np.asarray(lab, dtype=np.int64))
        prev = out[-1]
    return out


def _centroid_kmeans(X: np.ndarray, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster the centroids of ``labels`` into k groups (k-means++ + Lloyd weighted by cluster size); every code
    takes its centroid's group, so the result coarsens ``labels``."""
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    from codeprior.priors.dcpe import relabel_first_occurrence
    from codeprior.priors.kmeans import _fix_empty_clusters

    kp = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=kp).astype(np.float64)
    C = np.zeros((kp, X.shape[1]))
    np.add.at(C, labels, X)
    C /= sizes[:, None]
    km = KMeans(n_clusters=k, init="k-means++", n_init=1, tol=0.0, random_state=int(seed) % (2**32), algorithm="lloyd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        km.fit(C, sample_weight=sizes)
    lab, _ = _fix_empty_clusters(C, km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float64).copy(), k)
    return relabel_first_occurrence(lab[labels])
