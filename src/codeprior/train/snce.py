"""SNCE (Li et al., arXiv 2603.15150): cross-entropy against a soft target over the target code's neighbours.

Instead of the one-hot target, each position is supervised by a distribution over the ``K`` codes nearest to its
target code (the target itself included), each weighted by how close its code embedding is to the ground-truth
embedding ``z``: ``q_j ∝ exp(-||e_j - z||^2 / tau)`` (a fixed temperature where t-SNE fits a bandwidth per
point). The loss is ``-sum_j q_j log p_j``. Two sources for ``z``:

* ``code`` (the default): the target code's own embedding, so the weights are a static ``[V, K]`` table computed
  once from the codebook (:func:`neighbour_table`); works from the codes alone.
* ``encoder``: the continuous encoder output at that position (the paper's), when the code shards carry it
  (``codeprior tokenize --store-embeddings``); the neighbour set is still the target code's K nearest codes, the
  weights are recomputed per position from ``z`` (a ``[tokens, K, D]`` gather, no ``[tokens, V]`` tensor).

Distances are between L2-normalised vectors (what the quantizer compares, LlamaGen's ``codebook_l2_norm``).
Defaults: the paper's text available to us states neither K nor tau, so they come from the prior study's 1-seed
sweep (docs/study.md: K in 8 / 32 / 128, tau at 0.25 / 1 / 4 times the codebook's scale, the median over codes of
the squared distance from a code to its nearest other code): ``K = 32`` and ``tau`` = :data:`AUTO_TAU_SCALE` x
that scale (``snce_tau = 0``), where the static target keeps about 80% of its mass on the target code. With ``K = 1`` the target is one-hot and
the loss is token CE exactly.

The loss is fused (:class:`_FusedSNCE`): one ``exp(x - rowmax)`` pass for the log-sum-exp, a gather of the K
logits, and a closed-form backward ``softmax(x) - q`` (``q`` scattered into the K columns): since ``sum q = 1``,
``-sum_j q_j log p_j = logsumexp(x) - sum_j q_j x_j``. No ``[tokens, V]`` target is ever built.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from codeprior.errors import CodepriorError
from codeprior.train.losses import IGNORE_INDEX, _check_reduction, _flat, _row_max
from codeprior.train.objective_traits import TRAITS
from codeprior.train.objectives import REGISTRY, Objective

__all__ = [
    "AUTO_TAU_SCALE",
    "NeighbourTable",
    "neighbour_table",
    "snce_loss",
    "snce_dense_loss",
    "SNCEObjective",
    "DEFAULT_K",
]

#: ``tau = 0`` picks this multiple of the codebook's scale (median squared distance to the nearest other code): the
#: best of the prior study's sweep (0.25 / 1 / 4 at K = 32: final FID 14.79 / 17.73 / 17.46, one seed)
AUTO_TAU_SCALE = 0.25

#: soft-target size when the setting is not given (the paper's available text states none)
DEFAULT_K = 32


@dataclass
class NeighbourTable:
    """The K nearest codes of every code and their static weights (``code`` source).

    ``index [V, K]`` int64 (column 0 is the code itself), ``weight [V, K]`` float32 (rows sum to 1),
    ``codes [V, D]`` the L2-normalised codebook the distances were taken on (the ``encoder`` source recomputes the
    weights from it), ``tau`` the temperature used.
    """

    index: torch.Tensor
    weight: torch.Tensor
    codes: torch.Tensor
    tau: float

    @property
    def k(self) -> int:
        return int(self.index.shape[1])

    def to(self, device: torch.device | str) -> NeighbourTable:
        return NeighbourTable(self.index.to(device), self.weight.to(device), self.codes.to(device), self.tau)

    def target_mass(self) -> float:
        """Mean weight the soft target leaves on the target code itself (1.0 = token CE)."""
        return float(self.weight[:, 0].mean())

    def rows(self, t: torch.Tensor, z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Neighbour ids ``[M, K]`` and weights ``[M, K]`` of targets ``t [M]``; with ``z [M, D]`` (the encoder's
        output at each position) the weights are ``softmax(-||e_j - z/|z| ||^2 / tau)`` over the K neighbours."""
        idx = self.index[t]
        if z is None:
            return idx, self.weight[t]
        zn = F.normalize(z.float(), dim=-1)
        d2 = (self.codes[idx] - zn[:, None, :]).pow(2).sum(-1)
        return idx, torch.softmax(-d2 / self.tau, dim=1)


def neighbour_table(codebook: torch.Tensor, k: int = DEFAULT_K, tau: float = 0.0, chunk: int = 0) -> NeighbourTable:
    """The K nearest codes (L2 on normalised rows, the code itself first) of every code of ``codebook [V, D]`` and
    the weights ``softmax(-d^2 / tau)`` over them; ``tau <= 0``: :data:`AUTO_TAU_SCALE` x the median squared distance
    from a code to its nearest other code (the codebook's own neighbour scale; 1.0 if every code is duplicated). Rows ``chunk`` at a
    time (a ``[chunk, V]`` float64 distance block; 0: up to 1024 rows, at most 128 MiB)."""
    V = int(codebook.shape[0])
    chunk = chunk or max(1, min(1024, (1 << 24) // max(V, 1)))
    if not 1 <= k <= V:
        raise CodepriorError(f"snce: --snce-k must be in 1..{V} (the codebook size), got {k}")
    x = F.normalize(codebook.detach().double(), dim=-1)
    sq = x.pow(2).sum(1)
    idx_parts, d2_parts = [], []
    for s in range(0, V, chunk):
        xs = x[s : s + chunk]
        d2 = (sq[s : s + chunk, None] + sq[None, :] - 2.0 * xs @ x.T).clamp_(min=0.0)
        rows = torch.arange(s, s + xs.shape[0])
        d2[rows - s, rows] = -1.0  # the code itself comes first, even among duplicates
        val, ind = torch.topk(d2, k, dim=1, largest=False)
        val[:, 0] = 0.0
        idx_parts.append(ind)
        d2_parts.append(val)
    index, d2 = torch.cat(idx_parts), torch.cat(d2_parts)
    if tau <= 0:
        nearest = d2[:, 1] if k > 1 else _nearest_other(x, sq, chunk)
        pos = nearest[nearest > 0]
        tau = AUTO_TAU_SCALE * (float(pos.median()) if pos.numel() else 1.0)
    weight = torch.softmax(-d2 / tau, dim=1).float()
    return NeighbourTable(index, weight, x.float(), float(tau))


def _nearest_other(x: torch.Tensor, sq: torch.Tensor, chunk: int) -> torch.Tensor:
    """Squared distance from each row to its nearest other row (for the default tau when K = 1)."""
    out = []
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk]
        d2 = (sq[s : s + chunk, None] + sq[None, :] - 2.0 * xs @ x.T).clamp_(min=0.0)
        rows = torch.arange(s, s + xs.shape[0])
        d2[rows - s, rows] = float("inf")
        out.append(d2.min(1).values)
    return torch.cat(out)


class _FusedSNCE(torch.autograd.Function):
    """``logsumexp(x) - sum_j q_j x[idx_j]`` per row (the soft CE, as ``sum q = 1``) and the hard token CE for
    logging, reduced as ``F.cross_entropy``; backward ``e / S - scatter(q)`` from the saved ``e = exp(x - max)``.

    Rows with ``keep`` False (``ignore_index``) get weight 0: neither loss nor gradient; ``mean`` divides by the
    kept rows (NaN when none, as ``F.cross_entropy``).
    """

    @staticmethod
    def forward(ctx: Any, x, t, keep, idx, q, reduction: str):
        m = _row_max(x)
        e = (x - m).exp_()
        S = e.sum(dim=1)
        lse = S.log() + m.squeeze(1)
        zero = x.new_zeros(())
        soft = torch.where(keep, lse - (q.to(x.dtype) * x.gather(1, idx)).sum(1), zero)
        tok = torch.where(keep, lse - x.gather(1, t[:, None]).squeeze(1), zero)
        if reduction == "none":
            loss, tok_r = soft, tok
        else:
            loss, tok_r = soft.sum(), tok.sum()
            if reduction == "mean":
                n = keep.sum()
                loss, tok_r = loss / n, tok_r / n
        ctx.save_for_backward(e, S, idx, q, keep)
        ctx.reduction = reduction
        ctx.mark_non_differentiable(tok_r)
        return loss, tok_r

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: torch.Tensor, _unused: Any):
        e, S, idx, q, keep = ctx.saved_tensors
        if ctx.reduction == "mean":
            g = g / keep.sum()
        scale = torch.where(keep, g, torch.zeros_like(S))
        grad = e * (scale / S)[:, None]
        grad.scatter_add_(1, idx, -(q.to(grad.dtype) * scale[:, None]))
        return grad, None, None, None, None, None


def _rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    table: NeighbourTable,
    embeddings: torch.Tensor | None,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat logits, targets (ignored rows read code 0), the keep mask and each row's neighbours and weights."""
    V = logits.shape[-1]
    if table.index.shape[0] != V:
        raise CodepriorError(f"snce: the neighbour table covers {table.index.shape[0]} codes but the logits {V}")
    x, t = _flat(logits, targets, ignore_index)
    keep = t != ignore_index
    t = torch.where(keep, t, torch.zeros_like(t))
    z = None
    if embeddings is not None:
        if embeddings.shape[:-1] != targets.shape or embeddings.shape[-1] != table.codes.shape[1]:
            raise CodepriorError(
                f"snce: embeddings {tuple(embeddings.shape)} do not match targets {tuple(targets.shape)} and "
                f"codebook dimension {table.codes.shape[1]}"
            )
        z = embeddings.reshape(-1, embeddings.shape[-1])
    idx, q = table.rows(t, z)
    return x, t, keep, idx, q


def snce_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    table: NeighbourTable,
    *,
    embeddings: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SNCE of ``logits [..., V]`` against ``targets [...]`` (fine codes) with the soft targets of ``table``
    (:func:`neighbour_table`); ``embeddings [..., D]``: the encoder's output per position (``encoder`` source).

    ``ignore_index`` / ``reduction`` as ``F.cross_entropy``. Returns ``(loss, parts)``; ``parts["token_loss"]`` is
    the detached hard-target CE (comparable with the token objective's loss). Fused: see :class:`_FusedSNCE`.
    """
    _check_reduction(reduction)
    table = table.to(logits.device) if table.index.device != logits.device else table
    x, t, keep, idx, q = _rows(logits, targets, table, embeddings, ignore_index)
    loss, tok = _FusedSNCE.apply(x.contiguous(), t, keep, idx, q, reduction)
    if reduction == "none":
        loss, tok = loss.reshape(targets.shape), tok.reshape(targets.shape)
    return loss, {"token_loss": tok}


def snce_dense_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    table: NeighbourTable,
    *,
    embeddings: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """The reference formula, mean over kept positions: build the dense soft target ``q [M, V]`` and take
    ``-sum q log_softmax(x)``. For tests and small inputs only (it holds an ``[M, V]`` target)."""
    x, t, keep, idx, q = _rows(logits, targets, table, embeddings, ignore_index)
    dense = x.new_zeros(x.shape).scatter_add_(1, idx, q.to(x.dtype))
    per_row = -(dense * F.log_softmax(x, dim=1)).sum(1)
    return per_row[keep].mean()


class SNCEObjective(Objective):
    """Soft-neighbour CE (:func:`snce_loss`); :meth:`prepare` builds the run's neighbour table."""

    traits = TRAITS["snce"]
    table: NeighbourTable | None = None
    source: str = "code"

    def prepare(self, cfg: Any, manifest: dict[str, Any], prior: Any, device: torch.device) -> SNCEObjective:
        """A copy bound to this run: the neighbour table of the shards' codebook (``cfg.codebook`` or the tokenizer
        the manifest names, checked against the manifest's codebook hash), on ``device``."""
        from codeprior.train.codebook_source import run_codebook

        if cfg.loss_chunk:
            raise CodepriorError("train: --loss-chunk is not supported with --objective snce; use 0")
        if cfg.snce_source == "encoder" and not isinstance(manifest.get("embeddings"), dict):
            raise CodepriorError(
                f"{cfg.codes}: no stored embeddings, which --snce-source encoder reads; tokenise with "
                "`codeprior tokenize --store-embeddings`"
            )
        cb = run_codebook(cfg, manifest)
        return self.with_table(neighbour_table(cb, cfg.snce_k, cfg.snce_tau).to(device), cfg.snce_source)

    def with_table(self, table: NeighbourTable, source: str = "code") -> SNCEObjective:
        """A copy using ``table`` (:func:`neighbour_table`) and the embedding ``source`` (``code`` or ``encoder``)."""
        bound = copy.copy(self)
        bound.table, bound.source = table, source
        return bound

    @property
    def needs_embeddings(self) -> bool:
        return self.source == "encoder"

    def describe(self) -> str:
        t = self.table
        assert t is not None
        return (
            f"snce: K={t.k}, tau={t.tau:.4g}, source {self.source}; the static target keeps {t.target_mass():.1%} "
            "of its mass on the target code"
        )

    def loss(self, logits, codes, inputs, ttc, k, lam, want_cluster_logits, embeddings=None):
        if self.table is None:
            raise CodepriorError("snce: the objective has no neighbour table (call prepare() with the run's settings)")
        if self.source == "encoder" and embeddings is None:
            raise CodepriorError("snce: --snce-source encoder needs code shards with stored embeddings")
        return snce_loss(logits, codes, self.table, embeddings=embeddings if self.source == "encoder" else None)

    def chunked_loss(self, h, weight, codes, inputs, ttc, k, lam, want, chunk):
        raise CodepriorError("train: --loss-chunk is not supported with --objective snce; use --loss-chunk 0")


REGISTRY["snce"] = SNCEObjective()
