"""Write a prior in the file formats of the public IAR and DCPE code, so their users can use our priors.

* IAR: ``mapping[old_id] = new_id`` (LongTensor [N], a permutation) under which every cluster is a
  contiguous block of ``N/k`` new ids (cluster c holds new ids ``c*N/k .. (c+1)*N/k - 1``, members in
  ascending old id). IAR reshapes its logits to ``[.., k, N/k]``, so it requires equal cluster sizes.
* DCPE: ``idx_to_cluster`` (LongTensor [N]): the cluster id of every code, i.e. our ``token_to_cluster``.

Both are written with ``torch.save`` (atomically) and load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os

import torch

from codeprior.errors import CodepriorError
from codeprior.priors.prior import Prior
from codeprior.utils.io import torch_save_atomic


def iar_mapping(prior: Prior) -> torch.Tensor:
    """IAR's ``mapping[old_id] = new_id`` permutation; raises unless all clusters have the same size."""
    sizes = prior.cluster_sizes()
    if not bool((sizes == sizes[0]).all()):
        raise CodepriorError(
            f"IAR export needs equal cluster sizes (IAR reshapes to [k, N/k]); this {prior.metadata.get('method', '')} "
            f"prior has sizes {int(sizes.min())}..{int(sizes.max())}; use --method balanced-kmeans"
        )
    order = torch.argsort(prior.token_to_cluster, stable=True)  # new_id -> old_id, clusters contiguous
    mapping = torch.empty_like(order)
    mapping[order] = torch.arange(order.numel(), dtype=order.dtype)
    return mapping


def dcpe_idx_to_cluster(prior: Prior) -> torch.Tensor:
    """DCPE's ``idx_to_cluster`` tensor: cluster id (int64) of every code."""
    return prior.token_to_cluster.clone()


def export_iar(prior: Prior, path: str | os.PathLike) -> torch.Tensor:
    """Save IAR's mapping with ``torch.save``; returns it."""
    mapping = iar_mapping(prior)
    torch_save_atomic(mapping, path)
    return mapping


def export_dcpe(prior: Prior, path: str | os.PathLike) -> torch.Tensor:
    """Save DCPE's ``idx_to_cluster`` LongTensor with ``torch.save``; returns it."""
    t = dcpe_idx_to_cluster(prior)
    torch_save_atomic(t, path)
    return t
