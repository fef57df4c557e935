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
