"""Head + loss a chunk of tokens at a time: training without the [tokens, V] logits (fused linear cross-entropy).

:func:`chunked_head_loss` takes the final hidden states ``h [..., d]`` and the head's weight ``W [V, d]`` and
returns the loss of ``logits = h @ W.T`` for the token objective (CE over V; also the coarse objective, whose V is
the k clusters) or cluster-ce (token CE + ``lam`` x cluster CE, as :func:`codeprior.train.objectives.cluster_ce_loss`)
without ever holding the logits of more than ``chunk`` tokens. Same loss and gradients as the full path
(``tests/test_chunked_loss.py`` checks them against it in float64).

How: for each chunk of rows, ``x = h_c @ W.T``, one ``exp(x - rowmax)`` pass gives the row's log-sum-exp and
(cluster-ce) the target cluster's, and the gradient with respect to ``x`` is closed-form
(``(1 + lam) softmax - onehot(t) - lam * within-cluster softmax on the target cluster``). With a scalar loss
(``mean`` / ``sum``) the chunk's gradients ``dx @ W`` and ``dx.T @ h_c`` are taken right away, in the forward
(Liger's fused-linear-CE pattern: the same three matmuls as the full path, none recomputed), and the backward only
scales them by the incoming gradient. With ``reduction="none"`` the per-row gradient is only known in the
backward, which recomputes each chunk's logits from the saved per-row log-sum-exps (one extra head matmul).

Under autocast the head's matmuls run in the autocast dtype (as ``nn.Linear`` does there) and the loss in float32.
"""

from __future__ import annotations

from typing import Any

import torch

from codeprior.errors import CodepriorError
from codeprior.train.losses import (
    IGNORE_INDEX,
    _check_map,
    _check_reduction,
    _member_table,
    _row_max,
    _targets,
)

__all__ = ["chunked_head_loss", "DEFAULT_CHUNK"]

#: rows per chunk when a caller does not say (32 MB of float32 logits per chunk at V = 16384)
DEFAULT_CHUNK = 512


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype ``nn.Linear`` would compute the head in here (the autocast dtype inside an autocast region)."""
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return h.dtype


class _Cluster:
    """The target clusters' member tables (built once per call) for the cluster-ce term of each chunk."""

    def __init__(self, ttc: torch.Tensor, k: int) -> None:
        self.ttc = ttc
        self.table, self.valid = _member_table(ttc, k)

    def members(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ct = self.ttc[t]
        return self.table[ct], self.valid[ct]


def _chunk(
    x: torch.Tensor,
    t: torch.Tensor,
    cl: _Cluster | None,
    lam: float | None,
    w_row: torch.Tensor | None,
    k: int,
    want: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict[str, torch.Tensor]]:
    """Per-row token CE and (``lam`` not None: cluster-ce) cluster CE of logits ``x [c, V]`` (float32/64,
    overwritten), and, with row weights ``w_row`` (``dloss/drow``; 0 for ignored rows), the gradient of
    ``token CE + lam * cluster CE`` with respect to ``x`` (in ``x``'s storage). ``want``: also the argmax and
    (with ``cl``) the k cluster logits of each row, for metrics."""
    extra: dict[str, torch.Tensor] = {}
    if want:
        extra["pred"] = x.argmax(dim=1)
    x_t = x.gather(1, t[:, None]).squeeze(1)
    lse_ct = xg = idx = ok = None
    if cl is not None and lam is not None:
        # the target cluster's log-sum-exp from its members' own max: exact, no underflow
        idx, ok = cl.members(t)
        xg = x.gather(1, idx).masked_fill_(~ok, float("-inf"))
        lse_ct = torch.logsumexp(xg, dim=1)
    m = _row_max(x)
    e = x.sub_(m).exp_()  # the logits are not needed any more
    S = e.sum(dim=1)
    lse = S.log() + m.squeeze(1)
    if want and cl is not None:
        extra["cluster_logits"] = e.new_zeros(e.shape[0], k).index_add_(1, cl.ttc, e).log_().add_(m)
    tok = lse - x_t
    clu = lse - lse_ct if lse_ct is not None else None
    if w_row is None:
        return tok, clu, None, extra
    w_row = w_row.to(e.dtype)
    g = e.mul_(((1.0 + (lam or 0.0)) * w_row / S)[:, None])
    if lam is not None and xg is not None and lse_ct is not None and idx is not None:
        # minus lam x the within-cluster softmax exp(x_j - lse_ct) on the target cluster's members (pads give 0)
        g.scatter_add_(1, idx, (xg - lse_ct[:, None]).exp_().mul_(-lam * w_row[:, None]))
    g.scatter_add_(1, t[:, None], -w_row[:, None])
    return tok, clu, g, extra


def _head(h_c: torch.Tensor, w: torch.Tensor, cd: torch.dtype, loss_dtype: torch.dtype) -> torch.Tensor:
    """``h_c @ W.T`` in the compute dtype, as float32 (float64 for float64 inputs): one chunk's logits."""
    return (h_c.to(cd) @ w.to(cd).t()).to(loss_dtype)


def _grads(gx: torch.Tensor, h_c: torch.Tensor, wc: torch.Tensor, gh_c: torch.Tensor, gw: torch.Tensor) -> None:
    """One chunk's share of the head's gradients: ``gh_c = gx @ W`` (written in place), ``gw += gx.T @ h_c``."""
    torch.mm(gx, wc, out=gh_c)
    if gw.dtype == gx.dtype:
        gw.addmm_(gx.t(), h_c)
    else:  # bf16 / fp16 compute, float32 accumulator
        gw.add_(gx.t() @ h_c)


class _ChunkedHeadLoss(torch.autograd.Function):
    """Loss of ``h @ W.T`` chunk by chunk (see the module docstring); outputs ``(loss, token part, cluster part,
    argmax, cluster logits)``, only the first differentiable."""

    @staticmethod
    def forward(
        ctx: Any,
        h: torch.Tensor,
        w: torch.Tensor,
        t: torch.Tensor,
        cl: _Cluster | None,
        k: int,
        lam: float | None,
        ignore_index: int,
        reduction: str,
        chunk: int,
        want: bool,
        need_grad: bool,
    ):
        M = h.shape[0]
        cd = _compute_dtype(h)
        ld = torch.float64 if cd == torch.float64 else torch.float32
        keep = t != ignore_index
        t = torch.where(keep, t, torch.zeros_like(t))  # ignored rows read code 0; their weight is 0
        n = keep.sum()
        scalar = reduction != "none"
        w_row = None
        if need_grad and scalar:
            w_row = keep.to(ld) / n if reduction == "mean" else keep.to(ld)
            w_row = torch.where(keep, w_row, torch.zeros_like(w_row))  # all ignored: zero gradient, as F.cross_entropy
            gh = torch.empty(M, h.shape[1], dtype=cd, device=h.device)
            gw = torch.zeros(w.shape, dtype=torch.float32 if cd != torch.float64 else cd, device=w.device)
            wc = w.to(cd)
        tok = torch.empty(M, dtype=ld, device=h.device)
        clu = torch.empty(M if lam is not None else 0, dtype=ld, device=h.device)
        pred = torch.empty(M if want else 0, dtype=torch.long, device=h.device)
        cl_logits = torch.empty((M, k) if want and cl is not None else (0,), dtype=ld, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            for a in range(0, M, chunk):
                b = min(a + chunk, M)
                x = _head(h[a:b], w, cd, ld)
                tk, cu, g, extra = _chunk(x, t[a:b], cl, lam, None if w_row is None else w_row[a:b], k, want)
                tok[a:b] = tk
                if cu is not None:
                    clu[a:b] = cu
                if want:
                    pred[a:b] = extra["pred"]
                    if cl is not None:
                        cl_logits[a:b] = extra["cluster_logits"]
                if g is not None:
                    _grads(g.to(cd), h[a:b].to(cd), wc, gh[a:b], gw)
        zero = tok.new_zeros(())
        tok = torch.where(keep, tok, zero)
        if lam is not None:
            clu = torch.where(keep, clu, zero)
        if scalar:
            tok_r, clu_r = tok.sum(), clu.sum()
            if reduction == "mean":  # NaN when every row is ignored, as F.cross_entropy
                tok_r, clu_r = tok_r / n, clu_r / n
        else:
            tok_r, clu_r = tok, clu
        loss = tok_r + lam * clu_r if lam is not None else tok_r.clone()
        ctx.scalar, ctx.lam, ctx.k, ctx.chunk, ctx.cd = scalar, lam, k, chunk, cd
        ctx.cl, ctx.hdtype, ctx.wdtype = cl, h.dtype, w.dtype
        if need_grad and scalar:
            ctx.grads = (gh, gw)
        elif need_grad:
            ctx.save_for_backward(h, w, t, keep)
        ctx.mark_non_differentiable(tok_r, clu_r, pred, cl_logits)
        return loss, tok_r, clu_r, pred, cl_logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: torch.Tensor, *_unused: Any):
        none = (None,) * 9
        if ctx.scalar:
            if ctx.grads is None:
                raise CodepriorError(
                    "chunked_head_loss: backward twice through one loss (retain_graph) is not supported"
                )
            gh, gw = ctx.grads
            ctx.grads = None  # the precomputed gradients are handed over, scaled in place
            return gh.mul_(g.to(gh.dtype)).to(ctx.hdtype), gw.mul_(g.to(gw.dtype)).to(ctx.wdtype), *none
        # reduction "none": recompute each chunk's logits, with the incoming per-row gradient as the row weight
        h, w, t, keep = ctx.saved_tensors
        cd = ctx.cd
        ld = torch.float64 if cd == torch.float64 else torch.float32
        gh = torch.empty(h.shape, dtype=cd, device=h.device)
        gw = torch.zeros(w.shape, dtype=torch.float32 if cd != torch.float64 else cd, device=w.device)
        wc = w.to(cd)
        w_all = torch.where(keep, g.to(ld), torch.zeros((), dtype=ld, device=g.device))
        with torch.autocast(h.device.type, enabled=False):
            for a in range(0, h.shape[0], ctx.chunk):
                b = min(a + ctx.chunk, h.shape[0])
                x = _head(h[a:b], w, cd, ld)
                _, _, gx, _ = _chunk(x, t[a:b], ctx.cl, ctx.lam, w_all[a:b], ctx.k, False)
                assert gx is not None
                _grads(gx.to(cd), h[a:b].to(cd), wc, gh[a:b], gw)
        return gh.to(ctx.hdtype), gw.to(ctx.wdtype), *none


def chunked_head_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    token_to_cluster: torch.Tensor | None = None,
    k: int | None = None,
    lam: float | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    chunk: int = DEFAULT_CHUNK,
    want_metrics: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of the head ``logits = hidden @ weight.T`` without the [tokens, V] logits: ``chunk`` tokens at a time.

    ``hidden [..., d]`` (the final norm's output), ``weight [V, d]`` (the bias-free head), ``targets [...]``.
    ``lam=None``: token CE (:func:`~codeprior.train.objectives.token_loss`; a coarse model's head has V = k);
    a float: cluster-ce (:func:`~codeprior.train.objectives.cluster_ce_loss` with that ``lam``; needs
    ``token_to_cluster``). ``ignore_index`` / ``reduction`` as ``F.cross_entropy``. Returns ``(loss, parts)``:
    ``token_loss`` (and ``cluster_loss`` for cluster-ce), detached and reduced like the loss; with
    ``want_metrics`` also ``token_pred`` (the argmax over V, [...]) and, when ``token_to_cluster`` is given,
    ``cluster_logits`` [..., k] (as ``cluster_ce_loss(return_cluster_logits=True)``).
    """
    _check_reduction(reduction)
    if int(chunk) <= 0:
        raise CodepriorError(f"chunked_head_loss: chunk must be a positive number of tokens, got {chunk}")
    d = hidden.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != d:
        raise CodepriorError(f"chunked_head_loss: weight {tuple(weight.shape)} is not [V, {d}] for hidden [..., {d}]")
    if hidden.shape[:-1] != targets.shape:
        raise CodepriorError(
            f"chunked_head_loss: hidden {tuple(hidden.shape)} does not match targets {tuple(targets.shape)}"
        )
    V = weight.shape[0]
    t = _targets(targets.reshape(-1), V, ignore_index)
    cl = None
    if lam is not None and token_to_cluster is None:
        raise CodepriorError("chunked_head_loss: cluster-ce (lam given) needs token_to_cluster")
    if token_to_cluster is not None:
        ttc = _check_map(token_to_cluster, V, hidden.device)
        if k is None:
            k = int(ttc.max().item()) + 1
        cl = _Cluster(ttc, int(k))
    if lam is None and not want_metrics:
        cl = None  # the token loss needs no clusters; only the metrics' cluster logits do
    h = hidden.reshape(-1, d)
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    loss, tl, cu, pred, cl_logits = _ChunkedHeadLoss.apply(
        h,
        weight,
        t,
        cl,
        int(k or 0),
        None if lam is None else float(lam),
        int(ignore_index),
        reduction,
        int(chunk),
        bool(want_metrics),
        need_grad,
    )
    shape = targets.shape
    if reduction == "none":
        loss, tl = loss.reshape(shape), tl.reshape(shape)
        if lam is not None:
            cu = cu.reshape(shape)
    parts = {"token_loss": tl.detach() if lam is not None else loss.detach()}
    if lam is not None:
        parts["cluster_loss"] = cu
    if want_metrics:
        parts["token_pred"] = pred.reshape(shape)
        if cl is not None:
            parts["cluster_logits"] = cl_logits.reshape(*shape, int(k or 0))
    return loss, parts
