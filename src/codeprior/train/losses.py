"""The loss functions behind the objectives: token CE, IAR's cluster CE over any partition, coarse CE, accuracy.

Cluster logits (:func:`cluster_logits`) are a custom autograd function: subtract the per-row maximum, ``exp``,
``index_add_`` into k bins, ``log``; rows where a whole cluster underflows (~90 below the row maximum) are
recomputed with a per-cluster maximum, so results are finite and exact; the backward pass is one gather and one
multiply from the saved ``exp`` values and bin sums.
:func:`cluster_ce_loss` is fused: both CE terms come from one ``exp(x - rowmax)`` pass with a closed-form gradient,
so cluster-ce costs about what token CE does (benchmarks/train_throughput.py measures it against plain-autograd
index_add / scatter_add / CSR sparse-matmul versions; see docs/training.md).

The loss functions are meant to be called from anyone's training loop (LlamaGen's ``train_c2i.py`` included): they
take ``ignore_index`` and ``reduction`` exactly as :func:`torch.nn.functional.cross_entropy` does (ignored positions
give neither loss nor gradient; ``mean`` divides by the number of kept positions, and is NaN with a zero gradient
when every position is ignored, as there), accept targets of any integer dtype, and raise a one-line
:class:`CodepriorError` for a target outside the vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from codeprior.errors import CodepriorError

__all__ = [
    "token_loss",
    "cluster_logits",
    "cluster_ce_loss",
    "coarse_loss",
    "to_coarse",
    "accuracy",
    "IGNORE_INDEX",
    "REDUCTIONS",
]

#: Default ``ignore_index``, as :func:`torch.nn.functional.cross_entropy`.
IGNORE_INDEX = -100
#: Accepted ``reduction`` values, as :func:`torch.nn.functional.cross_entropy`.
REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise CodepriorError(f"objectives: reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.is_complex() or t.dtype == torch.bool)


def _targets(t: torch.Tensor, n: int, ignore_index: int) -> torch.Tensor:
    """Targets as int64 (any integer dtype is accepted); a float target, or one outside ``[0, n)`` that is not
    ``ignore_index``, is a one-line error (instead of torch's IndexError or a device-side assert)."""
    if not _is_integer(t):
        raise CodepriorError(f"objectives: targets must be an integer tensor, got {t.dtype}")
    t = t.long()
    bad = ((t < 0) | (t >= n)) & (t != ignore_index)
    if bool(bad.any()):
        raise CodepriorError(
            f"objectives: {int(bad.sum())} target(s) outside [0, {n}) (first: {int(t[bad][0])}) that are not "
            f"ignore_index={ignore_index}"
        )
    return t


def _flat(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits [..., V]`` as float32 (or float64) [M, V] and the checked int64 targets [M]."""
    if logits.shape[:-1] != targets.shape:
        raise CodepriorError(
            f"objectives: logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)} (expected [..., V] vs [...])"
        )
    x = logits.reshape(-1, logits.shape[-1])
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # bf16/fp16 logits from autocast: the loss is always taken in at least float32
    return x, _targets(targets.reshape(-1), x.shape[-1], ignore_index)


def _ce(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, reduction: str) -> torch.Tensor:
    _check_reduction(reduction)
    x, t = _flat(logits, targets, ignore_index)
    out = F.cross_entropy(x, t, ignore_index=ignore_index, reduction=reduction)
    return out.reshape(targets.shape) if reduction == "none" else out


def token_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = IGNORE_INDEX, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy over all N codes: LlamaGen's training loss. ``logits [B, L, V]``, ``targets [B, L]``.

    ``F.cross_entropy`` semantics for ``ignore_index`` and ``reduction`` (``none`` returns [B, L], 0 where
    ignored); targets of any integer dtype. Computed in float32 even when the logits come from a bf16 autocast
    region. In LlamaGen's loop (its text-to-image path drops the samples whose ``valid`` flag is False)::

        logits, _ = model(cond_idx=c_indices, idx=z_indices[:, :-1], targets=None)
        targets = z_indices.masked_fill(~valid[:, None], -100)  # valid: [B] bool
        loss = token_loss(logits, targets)                # mean over the kept positions
        scaler.scale(loss).backward()
    """
    return _ce(logits, targets, ignore_index, reduction)


def _member_table(ttc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Members of every cluster as a padded index table [k, max size] (pads repeat the first member) + validity."""
    order = torch.argsort(ttc, stable=True)
    sizes = torch.bincount(ttc, minlength=k)
    starts = torch.cumsum(sizes, 0) - sizes
    smax = int(sizes.max())
    pos = torch.arange(smax, device=ttc.device)
    valid = pos[None, :] < sizes[:, None]
    flat = (starts[:, None] + torch.where(valid, pos[None, :], torch.zeros_like(pos)[None, :])).clamp_(
        max=ttc.numel() - 1
    )
    return order[flat], valid


def _row_max(x: torch.Tensor) -> torch.Tensor:
    """Per-row max [M, 1] (0 for rows that are all -inf, so they stay -inf instead of turning NaN)."""
    m = x.amax(dim=-1, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


class _ClusterLSE(torch.autograd.Function):
    """Segment log-sum-exp over the last dimension of a 2-D tensor: ``out[m, c] = logsumexp(x[m, ttc == c])``.

    Saves ``e = exp(x - shift)`` and the bin sums ``s``; the gradient is ``e * (g / s)[:, ttc]`` (the
    within-cluster softmax times the cluster's incoming gradient): one gather and one multiply.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, ttc: torch.Tensor, k: int) -> torch.Tensor:
        m = _row_max(x)
        e = (x - m).exp_()
        s = x.new_zeros(x.shape[0], k).index_add_(1, ttc, e)
        shift = m.expand(-1, k).clone()
        # Whole clusters that underflowed relative to the row max: redo those rows with a per-cluster max.
        bad_rows = (s == 0).any(dim=1)
        if bool(bad_rows.any()):
            xb = x[bad_rows]
            cm = xb.new_full((xb.shape[0], k), float("-inf"))
            cm.scatter_reduce_(1, ttc.expand_as(xb), xb, reduce="amax", include_self=True)
            cm = torch.where(torch.isfinite(cm), cm, torch.zeros_like(cm))
            eb = (xb - cm[:, ttc]).exp_()
            e[bad_rows] = eb
            s[bad_rows] = xb.new_zeros(xb.shape[0], k).index_add_(1, ttc, eb)
            shift[bad_rows] = cm
        out = s.log().add_(shift)
        ctx.save_for_backward(e, s, ttc)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        e, s, ttc = ctx.saved_tensors
        w = torch.where(s > 0, g / s, torch.zeros_like(s))  # empty (fully masked) clusters pass no gradient
        return e * w[:, ttc], None, None


def _check_map(token_to_cluster: torch.Tensor, V: int, device: torch.device) -> torch.Tensor:
    if not _is_integer(token_to_cluster):
        raise CodepriorError(f"objectives: token_to_cluster must be an integer tensor, got {token_to_cluster.dtype}")
    if token_to_cluster.dim() != 1 or token_to_cluster.numel() != V:
        raise CodepriorError(
            f"objectives: token_to_cluster has {token_to_cluster.numel()} entries but the logits cover {V} codes"
        )
    return token_to_cluster.to(device=device, dtype=torch.long)


def cluster_logits(logits: torch.Tensor, token_to_cluster: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Cluster logits ``[..., k]``: log-sum-exp of ``logits [..., N]`` within each cluster of ``token_to_cluster [N]``.

    Any partition (unequal sizes, singletons, non-contiguous members). Computed in float32; differentiable.
    ``k`` defaults to ``token_to_cluster.max() + 1`` (pass it to avoid a device sync).
    """
    V = logits.shape[-1]
    ttc = _check_map(token_to_cluster, V, logits.device)
    if k is None:
        k = int(ttc.max().item()) + 1
    x = logits.reshape(-1, V)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    out = _ClusterLSE.apply(x.contiguous(), ttc, int(k))
    return out.reshape(*logits.shape[:-1], int(k))


class _FusedClusterCE(torch.autograd.Function):
    """Token CE + lam * cluster CE from one shared ``exp(x - rowmax)`` pass, reduced as ``F.cross_entropy`` does.

    Per row, with ``S = sum_j e_j``, ``s_c = sum_{j in c} e_j`` and ``c_t`` the target's cluster:
    ``loss = (1 + lam) * logsumexp(x) - x_t - lam * lse_{c_t}`` (the cluster logsumexp over clusters equals the
    token logsumexp), and ``dloss/dx_j = (1 + lam) e_j / S - [j = t] - lam [j in c_t] e_j / s_{c_t}``. So the whole
    objective costs about what token CE alone does: no [M, V] softmax or gather is kept besides ``e``.
    ``s_{c_t}`` is gathered from the target cluster's members only (a padded member table), so the k-bin
    ``index_add_`` runs only when the cluster logits are wanted for metrics. Rows whose target cluster underflows
    (``s_{c_t} = 0``) are recomputed with that cluster's own max.

    Rows whose target is ``ignore_index`` get a per-row weight of 0 (an [M] mask; their target is read as code 0
    and their values are discarded), so they add neither loss nor gradient; ``mean`` divides by the kept rows.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        t: torch.Tensor,
        ttc: torch.Tensor,
        k: int,
        lam: float,
        want_cluster_logits: bool,
        ignore_index: int,
        reduction: str,
    ):
        M = x.shape[0]
        keep = t != ignore_index
        t = torch.where(keep, t, torch.zeros_like(t))  # ignored rows read code 0; their weight is 0
        m = _row_max(x)
        e = (x - m).exp_()
        S = e.sum(dim=1)
        ct = ttc[t]
        # the target cluster's members: a padded [M, max cluster size] index, not an [M, V] mask
        table, valid = _member_table(ttc, k)
        idx, ok = table[ct], valid[ct]
        s_ct = (e.gather(1, idx) * ok).sum(1)
        # all k cluster sums: only needed for metrics
        cl_logits = x.new_zeros(M, k).index_add_(1, ttc, e).log_().add_(m) if want_cluster_logits else x.new_zeros(0)
        m1 = m.squeeze(1)
        lse_ct = s_ct.log() + m1
        bad = (s_ct == 0) & keep
        if bool(bad.any()):
            xb = x[bad]
            member = ttc[None, :] == ct[bad][:, None]
            cmax = _row_max(xb.masked_fill(~member, float("-inf")))
            lse_ct[bad] = (xb - cmax).masked_fill_(~member, float("-inf")).exp_().sum(1).log() + cmax.squeeze(1)
        log_s_all = S.log() + m1
        zero = x.new_zeros(())
        tok = torch.where(keep, log_s_all - x.gather(1, t[:, None]).squeeze(1), zero)
        clu = torch.where(keep, log_s_all - lse_ct, zero)
        if reduction == "none":
            tok_r, clu_r = tok, clu
            loss = tok + lam * clu
        else:
            tok_r, clu_r = tok.sum(), clu.sum()
            if reduction == "mean":  # sum / kept rows: NaN when every row is ignored, as F.cross_entropy
                n = keep.sum()
                tok_r, clu_r = tok_r / n, clu_r / n
            loss = tok_r + lam * clu_r
        ctx.save_for_backward(x, e, S, t, ct, s_ct, lse_ct, ttc, idx, ok, keep)
        ctx.lam, ctx.reduction = lam, reduction
        ctx.mark_non_differentiable(tok_r, clu_r, cl_logits)
        return loss, tok_r, clu_r, cl_logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: torch.Tensor, *_unused: Any):
        x, e, S, t, ct, s_ct, lse_ct, ttc, idx, ok, keep = ctx.saved_tensors
        lam = ctx.lam
        if ctx.reduction == "mean":
            g = g / keep.sum()
        scale = torch.where(keep, g, torch.zeros_like(S))  # [M] weight of each row; 0 where ignored
        coef = (1.0 + lam) / S * scale  # [M]
        inv = torch.where(s_ct > 0, lam / s_ct, torch.zeros_like(s_ct)) * scale
        grad = e * coef[:, None]
        grad.scatter_add_(1, idx, -(e.gather(1, idx) * inv[:, None] * ok))
        bad = (s_ct == 0) & keep
        if bool(bad.any()):  # the target cluster underflowed: its within-cluster softmax from x directly
            member = ttc[None, :] == ct[bad][:, None]
            wb = torch.sub(x[bad], lse_ct[bad][:, None]).masked_fill_(~member, float("-inf")).exp_()
            wb.nan_to_num_(nan=0.0)
            grad[bad] -= lam * scale[bad][:, None] * wb
        grad.scatter_add_(1, t[:, None], (-scale)[:, None].to(grad.dtype))
        return grad, None, None, None, None, None, None, None


def cluster_ce_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    token_to_cluster: torch.Tensor,
    lam: float = 1.0,
    *,
    k: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    return_cluster_logits: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IAR's cluster-oriented CE for any partition: ``CE(z, t) + lam * CE(cluster_logits(z), cluster(t))``.

    ``logits [B, L, N]``, ``targets [B, L]`` (fine codes, any integer dtype), ``token_to_cluster [N]`` (the prior).
    ``ignore_index`` and ``reduction`` as ``F.cross_entropy`` (``none``: per-position losses [B, L], 0 where
    ignored). Returns ``(loss, parts)``; ``parts`` holds the detached ``token_loss`` and ``cluster_loss`` (reduced
    the same way) and, only with ``return_cluster_logits=True``, ``cluster_logits`` [B, L, k] for metrics: the loss
    itself needs only the target cluster's sum, and the k-bin pass for all of them costs about as much again.
    Pass ``k`` (the prior's number of clusters) to avoid a device sync. Fused (one ``exp`` pass for both terms,
    closed-form backward): see :class:`_FusedClusterCE`. In LlamaGen's ``train_c2i.py`` loop::

        ttc = load_prior("dcpe.safetensors").token_to_cluster.to(device)   # once, before the loop
        logits, _ = model(cond_idx=c_indices, idx=z_indices[:, :-1], targets=None)
        loss, parts = cluster_ce_loss(logits, z_indices, ttc, lam=1.0, k=int(ttc.max()) + 1)
        scaler.scale(loss).backward()                     # parts["token_loss"], parts["cluster_loss"] to log
    """
    _check_reduction(reduction)
    V = logits.shape[-1]
    ttc = _check_map(token_to_cluster, V, logits.device)
    if k is None:
        k = int(ttc.max().item()) + 1
    x, t = _flat(logits, targets, ignore_index)
    loss, tl, cl, cl_logits = _FusedClusterCE.apply(
        x.contiguous(), t, ttc, int(k), float(lam), bool(return_cluster_logits), int(ignore_index), reduction
    )
    if reduction == "none":
        loss, tl, cl = (v.reshape(targets.shape) for v in (loss, tl, cl))
    parts = {"token_loss": tl, "cluster_loss": cl}
    if return_cluster_logits:
        parts["cluster_logits"] = cl_logits.reshape(*logits.shape[:-1], int(k))
    return loss, parts


def to_coarse(codes: torch.Tensor, token_to_cluster: torch.Tensor, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Map fine codes (any integer dtype) to cluster ids through the prior (inputs and targets of a coarse model).

    Positions equal to ``ignore_index`` stay ``ignore_index`` (so masked targets stay masked for
    :func:`coarse_loss`); a code outside the codebook is a one-line error.
    """
    ttc = token_to_cluster.to(codes.device)
    c = _targets(codes, ttc.numel(), ignore_index)
    keep = c != ignore_index
    return torch.where(keep, ttc[torch.where(keep, c, torch.zeros_like(c))], ignore_index)


def coarse_loss(
    logits: torch.Tensor, coarse_targets: torch.Tensor, *, ignore_index: int = IGNORE_INDEX, reduction: str = "mean"
) -> torch.Tensor:
    """CE over the k clusters: ``logits [B, L, k]`` of a model whose vocabulary is the cluster ids.

    ``ignore_index`` and ``reduction`` as ``F.cross_entropy``; targets of any integer dtype. In a LlamaGen loop
    whose model was built with ``vocab_size=k`` (CTF / DCPE's coarse stage)::

        ttc = load_prior("dcpe.safetensors").token_to_cluster.to(device)   # once, before the loop
        coarse = to_coarse(z_indices, ttc)                # cluster ids: what the model reads and predicts
        logits, _ = model(cond_idx=c_indices, idx=coarse[:, :-1], targets=None)
        loss = coarse_loss(logits, coarse)
        scaler.scale(loss).backward()
    """
    return _ce(logits, coarse_targets, ignore_index, reduction)


def accuracy(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Fraction of kept positions (target != ``ignore_index``) whose argmax equals the target (0-d float tensor)."""
    keep = targets != ignore_index
    return ((logits.argmax(dim=-1) == targets) & keep).sum().float() / keep.sum()


def _accuracy(logits: torch.Tensor | None, targets: torch.Tensor, pred: torch.Tensor | None) -> torch.Tensor:
    """:func:`accuracy` of ``logits``, or of their argmax ``pred`` when the logits were never materialised."""
    if logits is not None:
        return accuracy(logits, targets)
    assert pred is not None, "metrics: give the logits or their argmax"
    keep = targets != IGNORE_INDEX
    return ((pred == targets) & keep).sum().float() / keep.sum()
