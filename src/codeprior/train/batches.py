"""The trainer's batches: the seeded, resumable order of the training stream (:class:`SampleStream`), the codes,
labels and stored encoder outputs of a batch with each sample's augmentation drawn for its own epoch
(:func:`gather`, :func:`gather_embeddings`), and the token-weighted loss over the held-out split's batches
(:func:`validation_loss`). Split from :mod:`codeprior.train.trainer`, which re-exports these names."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from codeprior.errors import CodepriorError
from codeprior.train import distributed as D
from codeprior.train.config import TrainConfig
from codeprior.train.objectives import Objective

__all__ = ["SampleStream", "gather", "gather_embeddings", "validation_loss"]


class SampleStream:
    """Positions in the infinite training stream -> (sample index, epoch): concatenated per-epoch permutations."""

    def __init__(self, n: int, seed: int) -> None:
        if n <= 0:
            raise CodepriorError("train: the train split is empty")
        self.n, self.seed = n, seed
        self._cache: dict[int, torch.Tensor] = {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = {epoch: torch.randperm(self.n, generator=g)}
        return self._cache[epoch]

    def take(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx, ep = [], []
        pos = start
        while pos < start + count:
            e, off = divmod(pos, self.n)
            m = min(self.n - off, start + count - pos)
            idx.append(self.perm(e)[off : off + m])
            ep.append(torch.full((m,), e, dtype=torch.long))
            pos += m
        return torch.cat(idx), torch.cat(ep)


def gather(ds: Any, idx: torch.Tensor, epochs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and labels of ``idx`` with each sample's augmentation drawn for its own epoch."""
    if epochs.numel() and bool((epochs == epochs[0]).all()):
        ds.set_epoch(int(epochs[0]))
        return ds.batch(idx)
    codes, labels = torch.empty(len(idx), ds.seq_len, dtype=torch.long), torch.empty(len(idx), dtype=torch.long)
    for e in epochs.unique().tolist():
        sel = (epochs == e).nonzero().squeeze(1)
        ds.set_epoch(int(e))
        c, lab = ds.batch(idx[sel])
        codes[sel], labels[sel] = c, lab
    return codes, labels


def gather_embeddings(ds: Any, idx: torch.Tensor, epochs: torch.Tensor) -> torch.Tensor:
    """The stored encoder outputs ``[B, L, D]`` (float16) of the samples and augmentations :func:`gather` reads."""
    out = torch.empty(len(idx), ds.seq_len, ds.embed_dim, dtype=torch.float16)
    for e in epochs.unique().tolist():
        sel = (epochs == e).nonzero().squeeze(1)
        ds.set_epoch(int(e))
        out[sel] = ds.batch_embeddings(idx[sel])
    return out


# ------------------------------------------------------------------------------------------------ validation
@torch.no_grad()
def validation_loss(
    model: nn.Module,
    val: Any,
    cfg: TrainConfig,
    obj: Objective,
    info: D.DistInfo,
    ttc: torch.Tensor | None,
    k: int | None,
    autocast: Any,
) -> dict[str, float]:
    """Token-weighted validation loss and accuracies over the held-out split, sharded over ranks."""
    was = model.training
    model.eval()
    b = max(1, cfg.global_batch // (info.world_size * cfg.grad_accum))
    n = len(val)
    chunk = b * info.world_size
    n_chunks = math.ceil(n / chunk)
    if cfg.val_batches:
        n_chunks = min(n_chunks, cfg.val_batches)
    sums = torch.zeros(5, dtype=torch.float64, device=info.device)  # loss, token_loss, tok_correct, cl_correct, n
    for c in range(n_chunks):
        lo = c * chunk + info.rank * b
        idx = torch.arange(lo, min(lo + b, n, (c + 1) * chunk))
        weight = 1.0
        if idx.numel() == 0:  # keep every rank's forward count equal (FSDP collectives); weight 0
            idx, weight = torch.zeros(1, dtype=torch.long), 0.0
        codes, labels = val.batch(idx)
        codes, labels = codes.to(info.device), labels.to(info.device)
        emb = val.batch_embeddings(idx).to(info.device) if obj.needs_embeddings else None
        with autocast():
            loss, parts, logits = obj.forward(
                model,
                codes,
                labels,
                ttc,
                k,
                cfg.lam,
                want_cluster_logits=True,
                loss_chunk=cfg.loss_chunk,
                embeddings=emb,
            )
        ntok = codes.numel() * weight
        mets = obj.metrics(logits, codes, ttc, k, parts.get("cluster_logits"), parts.get("token_pred"))
        sums += torch.tensor(
            [
                float(loss) * ntok,
                float(parts.get("token_loss", torch.tensor(float("nan")))) * ntok,
                mets.get("token_acc", float("nan")) * ntok,
                mets.get("cluster_acc", float("nan")) * ntok,
                ntok,
            ],
            dtype=torch.float64,
            device=info.device,
        )
    D.all_reduce_sum(sums, info)
    model.train(was)
    tot = max(float(sums[4]), 1.0)
    out = {"val_loss": float(sums[0]) / tot}
    for i, name in ((1, "val_token_loss"), (2, "val_token_acc"), (3, "val_cluster_acc")):
        if not math.isnan(float(sums[i])):
            out[name] = float(sums[i]) / tot
    return out
