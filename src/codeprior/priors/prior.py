"""The prior artefact: a partition of the codebook (``token_to_cluster``) plus metadata.

Stored as ``.safetensors``: one int64 tensor ``token_to_cluster`` [N] and the metadata as string
entries of the safetensors header (method, k, normalize, seed, codebook_sha256, source, version,
seconds). Written atomically. Loading validates the partition and, when given the codebook it will be
used with, refuses a hash mismatch unless ``allow_mismatch=True``.

A multi-level prior (``codeprior prior --rates 2 4 8``, for hier-cluster-ce) also holds ``level_1``,
``level_2``, ... (int64 [N] each): coarser partitions, each a coarsening of the one before (every cluster of
level ``l - 1`` inside one cluster of level ``l``; checked on load), ``token_to_cluster`` being level 0, the
finest; metadata ``level_ks`` lists the clusters per level. Files without them (every older file) are one level.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from codeprior.errors import CodepriorError
from codeprior.utils.io import atomic_path, sha256_tensor

if TYPE_CHECKING:  # imported where used: write_prior_file (the `prior` command's path) runs without torch
    import torch

TENSOR_KEY = "token_to_cluster"
#: coarser levels of a multi-level prior: ``level_1``, ``level_2``, ... (level 0 is :data:`TENSOR_KEY`)
LEVEL_KEY = "level_{}"


def nesting_error(fine: Any, coarse: Any, level: int) -> str | None:
    """Why partition ``coarse`` is not a strict coarsening of ``fine`` (both int labels [N]), or None when it is."""
    fine, coarse = np.asarray(fine, dtype=np.int64), np.asarray(coarse, dtype=np.int64)
    if fine.shape != coarse.shape:
        return f"level {level} covers {coarse.size} codes, level {level - 1} {fine.size}"
    owner = np.zeros(int(fine.max()) + 1, dtype=np.int64)
    owner[fine] = coarse
    bad = owner[fine] != coarse
    if bad.any():
        c = int(fine[bad][0])
        split = sorted({int(v) for v in coarse[fine == c]})[:4]
        return f"level {level} is not a coarsening of level {level - 1} (its cluster {c} spans level-{level} clusters {split})"
    kf, kc = int(fine.max()) + 1, int(coarse.max()) + 1
    if kc >= kf:
        return f"level {level} has {kc} clusters, not fewer than level {level - 1}'s {kf}"
    return None


def _labels(t: Any, name: str) -> torch.Tensor:
    """``t`` as a contiguous int64 [N] tensor of cluster ids 0..k-1, every id used (one-line errors otherwise)."""
    import torch

    t = torch.as_tensor(t)
    if t.dim() != 1 or t.numel() == 0:
        raise CodepriorError(f"prior: {name} must be a non-empty 1-D tensor, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise CodepriorError(f"prior: {name} must be an integer tensor, got {t.dtype}")
    t = t.to(torch.int64).contiguous()
    if int(t.min().item()) < 0:
        raise CodepriorError(f"prior: {name} has negative cluster ids")
    used = torch.bincount(t, minlength=int(t.max().item()) + 1)
    if (used == 0).any():
        raise CodepriorError(
            f"prior: cluster ids must be 0..k-1 with every value used; {int((used == 0).sum())} unused"
        )
    return t


@dataclass
class Prior:
    """A codebook partition. ``token_to_cluster[i]`` is the cluster (0..k-1) of code ``i``; every cluster is used."""

    token_to_cluster: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)
    #: coarser levels (multi-level priors, finest first after ``token_to_cluster``); empty for a one-level prior
    coarser: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.token_to_cluster = _labels(self.token_to_cluster, "token_to_cluster")
        k = int(self.token_to_cluster.max().item()) + 1
        if "k" in self.metadata and int(self.metadata["k"]) != k:
            raise CodepriorError(f"prior: metadata says k={self.metadata['k']} but token_to_cluster has {k} clusters")
        self.metadata["k"] = k
        self.coarser = [_labels(t, f"level {i + 1}") for i, t in enumerate(self.coarser)]
        for i, t in enumerate(self.coarser):
            err = nesting_error(self.levels[i].numpy(), t.numpy(), i + 1)
            if err:
                raise CodepriorError(f"prior: {err}")
        if self.coarser:
            self.metadata["level_ks"] = self.level_ks

    @property
    def levels(self) -> list[torch.Tensor]:
        """Every level's token-to-cluster map, finest (``token_to_cluster``) first."""
        return [self.token_to_cluster, *self.coarser]

    @property
    def level_ks(self) -> list[int]:
        """Clusters per level, finest first."""
        return [int(t.max().item()) + 1 for t in self.levels]

    @property
    def num_codes(self) -> int:
        return int(self.token_to_cluster.numel())

    @property
    def k(self) -> int:
        return int(self.metadata["k"])

    def cluster_sizes(self) -> torch.Tensor:
        import torch

        return torch.bincount(self.token_to_cluster, minlength=self.k)

    def members(self) -> list[torch.Tensor]:
        """Code ids of each cluster, in cluster order."""
        import torch

        order = torch.argsort(self.token_to_cluster, stable=True)
        return list(torch.split(order, self.cluster_sizes().tolist()))

    def sha256(self) -> str:
        """Hash of the partition itself (used to tie checkpoints to the prior they were trained with)."""
        import hashlib

        h = hashlib.sha256(self.token_to_cluster.numpy().tobytes())
        for t in self.coarser:  # one-level priors keep the hash they always had
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def check_codebook(self, codebook: torch.Tensor, *, allow_mismatch: bool = False, name: str = "prior") -> None:
        """Refuse to use this prior with a codebook of another size, or (unless allowed) another hash."""
        if codebook.shape[0] != self.num_codes:
            raise CodepriorError(
                f"{name}: prior covers {self.num_codes} codes but the codebook has {codebook.shape[0]}"
            )
        want = self.metadata.get("codebook_sha256")
        if want and not allow_mismatch:
            got = sha256_tensor(codebook)
            if got != want:
                raise CodepriorError(
                    f"{name}: prior was extracted from a different codebook (sha256 {want[:12]}… vs {got[:12]}…); "
                    "pass --allow-codebook-mismatch to use it anyway"
                )

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        write_prior_file(path, self.token_to_cluster.numpy(), self.metadata, [t.numpy() for t in self.coarser])


def write_prior_file(
    path: str | os.PathLike, labels: np.ndarray, metadata: dict[str, Any], coarser: list[np.ndarray] | None = None
) -> None:
    """Write a prior file (atomically) from int64 labels 0..k-1 and metadata, without torch; ``coarser``: the
    coarser levels of a multi-level prior (each checked to coarsen the one before).

    :meth:`Prior.save` writes through here; the ``prior`` command calls it directly on its NumPy labels.
    """
    from safetensors.numpy import save_file

    # every value JSON-encoded (strings too), so a path such as "1e5" or "true" reads back as a string
    meta = {key: json.dumps(v, default=str) for key, v in metadata.items()}
    meta["format"] = "codeprior.prior/1"
    tensors = {TENSOR_KEY: np.ascontiguousarray(labels, dtype=np.int64)}
    prev = tensors[TENSOR_KEY]
    for i, lab in enumerate(coarser or [], start=1):
        cur = np.ascontiguousarray(lab, dtype=np.int64)
        err = nesting_error(prev, cur, i)
        if err:
            raise CodepriorError(f"{path}: {err}")
        tensors[LEVEL_KEY.format(i)] = prev = cur
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _decode_meta(meta: dict[str, str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in (meta or {}).items():
        if key == "format":
            continue
        try:
            out[key] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[key] = v
    return out


def load_prior(path: str | os.PathLike, codebook: torch.Tensor | None = None, *, allow_mismatch: bool = False) -> Prior:
    """Load and validate a prior file; with ``codebook``, also check it was made from that codebook."""
    path = Path(path)
    if not path.is_file():
        raise CodepriorError(f"{path}: no such prior file")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
    except Exception as e:  # safetensors raises its own error type for corrupt headers
        raise CodepriorError(f"{path}: not a readable safetensors prior ({str(e).splitlines()[0][:160]})") from None
    if TENSOR_KEY not in tensors:
        raise CodepriorError(f"{path}: no '{TENSOR_KEY}' tensor (found: {', '.join(sorted(tensors)) or 'none'})")
    coarser: list[Any] = []
    while LEVEL_KEY.format(len(coarser) + 1) in tensors:
        coarser.append(tensors[LEVEL_KEY.format(len(coarser) + 1)])
    try:
        prior = Prior(tensors[TENSOR_KEY], _decode_meta(meta), coarser)
    except CodepriorError as e:
        raise CodepriorError(f"{path}: {e}") from None
    if codebook is not None:
        prior.check_codebook(codebook, allow_mismatch=allow_mismatch, name=str(path))
    return prior
