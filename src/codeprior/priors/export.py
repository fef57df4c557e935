"""Write a prior in the file formats of the public IAR and DCPE code, so their users can use our priors.

* IAR (sjtuplayer/IAR, commit a46074a): ``mapping[old_id] = new_id`` (LongTensor [N], a permutation) under which
  every cluster is a contiguous block of ``N/k`` new ids (cluster c holds new ids ``c*N/k .. (c+1)*N/k - 1``,
  members in ascending old id), and the VQ checkpoint with its codebook rows moved to the new ids
  (``new_codebook[mapping[i]] = codebook[i]``), which is what IAR's sampler decodes with. IAR's training maps the
  codes extracted with the original VQ through ``mapping`` and reshapes the logits to ``[.., k, N/k]``, so its
  ``--cluster-size`` is ``N/k`` and it requires k clusters of exactly ``N/k`` codes (``--method balanced-kmeans``).
* DCPE (ali-vilab/DCPE, commit c5e4485): ``idx_to_cluster`` (LongTensor [N]): the cluster id of every code, i.e.
  our ``token_to_cluster``.

All are written with ``torch.save`` (atomically) and load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from codeprior.codebook import LLAMAGEN_KEY, validate_codebook
from codeprior.errors import CodepriorError
from codeprior.priors.prior import Prior
from codeprior.utils.io import load_checkpoint, torch_save_atomic

#: Suffixes of files that can only hold a bare codebook (no VQ model around it).
_BARE_CODEBOOK_SUFFIXES = (".npy", ".safetensors")


def iar_cluster_size(prior: Prior) -> int:
    """IAR's ``--cluster-size`` (``N / k``, the width of its ``[.., k, N/k]`` reshape); raises unless all clusters
    have the same size: IAR's reshape cannot express unequal clusters, and no other value would be right."""
    sizes = prior.cluster_sizes()
    if not bool((sizes == sizes[0]).all()):
        method = prior.metadata.get("method", "")
        raise CodepriorError(
            f"IAR export needs equal cluster sizes (IAR reshapes its logits to [k, N/k] with --cluster-size N/k); "
            f"this {method + ' ' if method else ''}prior has sizes {int(sizes.min())}..{int(sizes.max())}; "
            f"--method balanced-kmeans gives k clusters of exactly N/k codes"
        )
    return int(sizes[0])


def iar_mapping(prior: Prior) -> torch.Tensor:
    """IAR's ``mapping[old_id] = new_id`` permutation; raises unless all clusters have the same size."""
    iar_cluster_size(prior)
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


# ------------------------------------------------------------------------------------- IAR's reordered VQ file
def _codebook_keys(sd: Mapping[str, Any]) -> list[str]:
    """Keys of ``sd`` holding LlamaGen's codebook (``quantize.embedding.weight``, also under a wrapper prefix)."""
    return [
        k
        for k, v in sd.items()
        if isinstance(k, str) and isinstance(v, torch.Tensor) and (k == LLAMAGEN_KEY or k.endswith("." + LLAMAGEN_KEY))
    ]


def _vq_state_dicts(ckpt: Any, src: str) -> list[str | None]:
    """Where the VQ model's state dicts sit in a loaded checkpoint: ``"model"`` (and ``"ema"`` when it holds a
    codebook too) or ``None`` for a bare state dict. One-line error for anything that is not a whole VQ model."""
    bare = f"{src}: holds a bare codebook, not a VQ checkpoint"
    hint = "IAR's sampler needs the whole tokenizer (LlamaGen's vq_ds16_c2i.pt layout); give that file to `prior`"
    if isinstance(ckpt, torch.Tensor):
        raise CodepriorError(f"{bare} (a tensor); {hint}")
    if not isinstance(ckpt, Mapping):
        raise CodepriorError(f"{src}: not a VQ checkpoint (a {type(ckpt).__name__}); {hint}")
    if isinstance(ckpt.get("model"), Mapping):
        where: list[str | None] = ["model"]
        if isinstance(ckpt.get("ema"), Mapping) and _codebook_keys(ckpt["ema"]):
            where.append("ema")
        sd = ckpt["model"]
    else:
        where, sd = [None], ckpt
    keys = _codebook_keys(sd)
    if not keys:
        raise CodepriorError(f"{src}: no '{LLAMAGEN_KEY}' in the model state dict; {hint}")
    if len(keys) > 1:
        raise CodepriorError(f"{src}: more than one codebook in the model state dict ({', '.join(keys)})")
    if not any(isinstance(k, str) and ("post_quant_conv." in k or "decoder." in k) for k in sd):
        raise CodepriorError(f"{bare} (no decoder weights beside '{keys[0]}'); {hint}")
    return where


def _refuse_bare_file(path: Path) -> None:
    if path.suffix.lower() in _BARE_CODEBOOK_SUFFIXES:
        raise CodepriorError(
            f"{path}: holds a bare codebook ({path.suffix} file), not a VQ checkpoint; IAR's sampler needs the whole "
            "tokenizer (LlamaGen's vq_ds16_c2i.pt layout); give that file to `prior`"
        )


def check_iar_vq_source(src: str | os.PathLike) -> None:
    """Refuse, before any clustering, a ``prior`` input that cannot become IAR's reordered VQ checkpoint (a bare
    codebook in ``.npy`` / ``.safetensors`` / a codebook-only ``.pt``)."""
    path = Path(src)
    _refuse_bare_file(path)
    _vq_state_dicts(load_checkpoint(path), str(path))


def export_iar_vq(
    prior: Prior, src: str | os.PathLike, dst: str | os.PathLike, *, allow_mismatch: bool = False
) -> list[str]:
    """Write IAR's reordered VQ checkpoint: ``src`` (a LlamaGen-layout VQ file) with every copy of the codebook
    (``model`` and, when present, ``ema``) permuted by :func:`iar_mapping`, ``new[mapping[i]] = old[i]``; every
    other entry (weights, ``args``, ``optimizer``, ``steps``, our ``config``) is written back as it was. So
    ``decode(mapping[codes])`` with the new file equals ``decode(codes)`` with the old one bit for bit, and encoding
    with it gives ``mapping[codes]``. Refuses a codebook other than the prior's (hash; ``allow_mismatch`` to skip),
    a bare codebook, unequal clusters and ``dst`` = ``src``; written atomically. Returns the permuted keys.

    The optimizer state, if any, is copied unchanged and does not follow the new row order: the file is for
    IAR's sampler and for encoding/decoding, not for resuming tokenizer training.
    """
    src_p, dst_p = Path(src), Path(dst)
    if dst_p.exists() and src_p.exists() and dst_p.resolve() == src_p.resolve():
        raise CodepriorError(f"{dst_p}: is the input VQ checkpoint; refusing to overwrite it")
    mapping = iar_mapping(prior)
    _refuse_bare_file(src_p)
    ckpt = load_checkpoint(src_p)
    where = _vq_state_dicts(ckpt, str(src_p))
    out: dict[Any, Any] = dict(ckpt)
    done: list[str] = []
    for entry in where:
        sd = dict(ckpt if entry is None else ckpt[entry])
        for key in _codebook_keys(sd):
            name = f"{entry}/{key}" if entry else key
            old = sd[key]
            if old.dim() != 2 or old.shape[0] != mapping.numel():
                raise CodepriorError(
                    f"{src_p}: {name} has shape {tuple(old.shape)}; the prior covers {mapping.numel()} codes"
                )
            if entry != "ema":  # the prior was extracted from the model's codebook (as load_codebook reads it)
                cb = validate_codebook(old, str(src_p))
                prior.check_codebook(cb, allow_mismatch=allow_mismatch, name=str(src_p))
            new = torch.empty_like(old)
            new[mapping.to(old.device)] = old
            sd[key] = new
            done.append(name)
        if entry is None:
            out = sd
        else:
            out[entry] = sd
    torch_save_atomic(out, dst_p)
    return done
