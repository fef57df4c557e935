"""The prior artefact: a partition of the codebook (``token_to_cluster``) plus metadata.

Stored as ``.safetensors``: one int64 tensor ``token_to_cluster`` [N] and the metadata as string
entries of the safetensors header (method, k, normalize, seed, codebook_sha256, source, version,
seconds). Written atomically. Loading validates the partition and, when given the codebook it will be
used with, refuses a hash mismatch unless ``allow_mismatch=True``.
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


@dataclass
class Prior:
    """A codebook partition. ``token_to_cluster[i]`` is the cluster (0..k-1) of code ``i``; every cluster is used."""

    token_to_cluster: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import torch

        t = torch.as_tensor(self.token_to_cluster)
        if t.dim() != 1 or t.numel() == 0:
            raise CodepriorError(f"prior: token_to_cluster must be a non-empty 1-D tensor, got shape {tuple(t.shape)}")
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise CodepriorError(f"prior: token_to_cluster must be an integer tensor, got {t.dtype}")
        self.token_to_cluster = t.to(torch.int64).contiguous()
        k = int(self.token_to_cluster.max().item()) + 1
        if int(self.token_to_cluster.min().item()) < 0:
            raise CodepriorError("prior: token_to_cluster has negative cluster ids")
        used = torch.bincount(self.token_to_cluster, minlength=k)
        if (used == 0).any():
            raise CodepriorError(
                f"prior: cluster ids must be 0..k-1 with every value used; {int((used == 0).sum())} unused"
            )
        if "k" in self.metadata and int(self.metadata["k"]) != k:
            raise CodepriorError(f"prior: metadata says k={self.metadata['k']} but token_to_cluster has {k} clusters")
        self.metadata["k"] = k

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

        return hashlib.sha256(self.token_to_cluster.numpy().tobytes()).hexdigest()

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
        write_prior_file(path, self.token_to_cluster.numpy(), self.metadata)


def write_prior_file(path: str | os.PathLike, labels: np.ndarray, metadata: dict[str, Any]) -> None:
    """Write a prior file (atomically) from int64 labels 0..k-1 and metadata, without torch.

    :meth:`Prior.save` writes through here; the ``prior`` command calls it directly on its NumPy labels.
    """
    from safetensors.numpy import save_file

    # every value JSON-encoded (strings too), so a path such as "1e5" or "true" reads back as a string
    meta = {key: json.dumps(v, default=str) for key, v in metadata.items()}
    meta["format"] = "codeprior.prior/1"
    with atomic_path(path) as tmp:
        save_file({TENSOR_KEY: np.ascontiguousarray(labels, dtype=np.int64)}, str(tmp), metadata=meta)


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
    try:
        prior = Prior(tensors[TENSOR_KEY], _decode_meta(meta))
    except CodepriorError as e:
        raise CodepriorError(f"{path}: {e}") from None
    if codebook is not None:
        prior.check_codebook(codebook, allow_mismatch=allow_mismatch, name=str(path))
    return prior
