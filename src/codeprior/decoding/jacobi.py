"""Speculative Jacobi decoding (SJD) for the class-conditional GPT, over the static KV buffers.

Each pass feeds W tokens per sample: the last accepted token (the class token at the start) and W - 1 drafts for
the next positions, at per-sample tensor positions (:meth:`codeprior.models.gpt.KVCache.write`). The W outputs are
the current distributions ``p`` of positions ``n .. n + W - 1``. Drafts are verified left to right with the
acceptance rule (:mod:`codeprior.decoding.accept`); at the first rejection a replacement is drawn from
``norm(max(0, p - q))``; when every draft is accepted the last output gives one more token drawn from ``p``
(so a pass yields 1..W tokens and W = 1 is plain AR decoding, draw for draw). Positions already predicted in
this pass get their next drafts from ``p`` (which becomes their ``q``); new positions are initialised uniformly at
random or by repeating the token to the left. Rolling back is a position reset: cache entries past the accepted
prefix are masked out and overwritten by the next pass.

Randomness: each pass draws ``2 W - 1`` uniforms from each unfinished sample's own generator (acceptance, the
replacement / extra token, the new drafts), so a sample's codes depend only on its generator, not on the batch
it is decoded in; finished samples draw nothing (a refine stage sharing the generators sees the same state).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from codeprior.decoding.accept import Rule, exact_rule
from codeprior.errors import CodepriorError
from codeprior.models.gpt import GPT, KVCache
from codeprior.models.sampling import NonFiniteLogits, cfg_scale_at, filter_logits, uniforms

__all__ = ["draw", "jacobi_generate"]


def _probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The sampling distribution of :func:`codeprior.models.gpt.sample_logits` (one-hot argmax when greedy)."""
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    return filter_logits(logits / temperature, top_k, top_p).softmax(-1)


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from ``probs`` [..., V] with uniforms ``u`` [...] (the arithmetic of ``sample_logits``)."""
    cdf = probs.cumsum(-1)
    target = (u * cdf[..., -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf.contiguous(), target.contiguous(), right=True).squeeze(-1)
    idx = idx.clamp_(max=probs.shape[-1] - 1)
    ok = probs.gather(-1, idx.unsqueeze(-1)).squeeze(-1) > 0
    return torch.where(ok, idx, probs.argmax(-1))


def _active_uniforms(generator: Any, active: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """[B, n] uniforms; with a list of generators only the active rows draw (the others are zero)."""
    B = active.shape[0]
    if generator is None or isinstance(generator, torch.Generator):
        return uniforms((B, n), generator, device)
    gens = list(generator)
    if len(gens) != B:
        raise CodepriorError(f"sampling: got {len(gens)} generators for a batch of {B}")
    out = torch.zeros(B, n)
    for b in torch.nonzero(active).flatten().tolist():
        out[b] = torch.rand(n, generator=gens[b], device=gens[b].device).cpu()
    return out.to(device)  # one transfer per pass


@torch.no_grad()
def jacobi_generate(
    model: GPT,
    labels: torch.Tensor,
    seq_len: int | None = None,
    *,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    cfg_schedule: Any = None,
    window: int = 16,
    rule: Rule | None = None,
    init: str = "random",
    compile: bool = False,
    on_pass: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes [B, seq_len] and the number of model passes each sample needed [B] (AR needs ``seq_len``).

    Same sampling arguments as :meth:`codeprior.models.gpt.GPT.generate` (CFG as a doubled batch, temperature,
    top-k/top-p, per-sample generators, cfg_schedule); ``rule`` defaults to exact SJD acceptance. ``on_pass``
    (tests, tracing) receives each pass's rows (the samples' indices in ``labels``: finished samples leave the
    batch), positions, inputs and guided logits.
    """
    c = model.config
    L = c.block_size if seq_len is None else int(seq_len)
    if not 1 <= L <= c.block_size:
        raise CodepriorError(f"sampling: seq_len must be in 1..{c.block_size}, got {L}")
    seq_len = L
    if init not in ("random", "repeat"):
        raise CodepriorError(f"sampling: draft init must be random or repeat, got {init!r}")
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise CodepriorError("sampling: temperature must be >= 0 and top_p in (0, 1]")
    rule = exact_rule if rule is None else rule
    device = model.tok_embeddings.weight.device
    labels = torch.as_tensor(labels).to(device=device, dtype=torch.long)
    if labels.dim() != 1 or (labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > c.num_classes)):
        raise CodepriorError(f"sampling: labels must be a 1-D tensor of classes in 0..{c.num_classes}")
    B, W, V = labels.shape[0], int(window), c.vocab_size
    J = W - 1
    use_cfg = cfg_scale != 1.0 or cfg_schedule is not None
    cond = torch.cat([labels, torch.full_like(labels, c.num_classes)]) if use_cfg else labels
    B2 = cond.shape[0]
    if cfg_schedule is None or cfg_schedule == "constant":
        scales: torch.Tensor | None = None
    else:  # per-position scale, padded past the end
        s = [cfg_scale_at(i, seq_len, cfg_scale, cfg_schedule) for i in range(seq_len)]
        scales = torch.tensor(s + [s[-1]] * W, dtype=torch.float32, device=device)

    was_training = model.training
    model.eval()
    try:
        dtype = model.tok_embeddings.weight.dtype
        caches = [KVCache(B2, c.kv_heads, c.cls_token_num + seq_len + W, c.head_dim) for _ in model.layers]
        for cache in caches:  # allocated up front: fixed buffers (and no allocation inside a compiled step)
            cache.k = torch.zeros(cache.shape, dtype=dtype, device=device)
            cache.v = torch.zeros(cache.shape, dtype=dtype, device=device)

        def step(h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            return model.output(model.forward_hidden(h, caches=caches, pos=pos)).float()

        run = torch.compile(step, dynamic=False) if compile else step
        out = torch.zeros(B, seq_len + W, dtype=torch.long, device=device)
        n = torch.zeros(B, dtype=torch.long, device=device)
        passes = torch.zeros(B, dtype=torch.long, device=device)
        slots = torch.arange(W, device=device)
        drafts = torch.zeros(B, J, dtype=torch.long, device=device)
        q = torch.zeros(B, J, V, device=device)
        active = n < seq_len
        drafts, q = _new_drafts(
            drafts, q, None, n, n, out, _active_uniforms(generator, active, J, device) if J else None, init, V
        )
        cls = model.cls_embedding(cond, train=False).to(dtype)
        first = True
        # finished samples leave the batch once a quarter of it is done (per-sample generators only: a shared
        # generator's stream depends on the batch shape; the compiled step keeps fixed shapes)
        per_sample = generator is not None and not isinstance(generator, torch.Generator)
        gens: Any = generator
        if per_sample:
            gens = list(gens)
        compact = per_sample and not compile
        rows = torch.arange(B, device=device)  # original index of each row still in the batch
        out_all, passes_all = out.clone(), passes.clone()
        while bool(active.any()):
            last = out.gather(1, (n - 1).clamp(min=0)[:, None])
            inp = torch.cat([last, drafts], 1)  # [B, W]
            # the model runs on the slots that still lie inside some sample's sequence; the outputs past the end
            # (never kept) are padded as uniform, so every draw and every kept token is the full window's
            weff = W if compile else int((seq_len - n[active]).clamp(max=W).max())
            x = inp[:, :weff].repeat(2, 1) if use_cfg else inp[:, :weff]
            h = model.tok_embeddings(x)
            if first:  # every sample starts at n = 0: slot 0 is the class token
                h = torch.cat([cls, h[:, 1:]], 1)
                first = False
            pos = n[:, None] + slots
            pm = pos[:, :weff]
            logits = run(h, pm.repeat(2, 1) if use_cfg else pm)  # [B2, weff, V]
            if weff < W:
                logits = torch.nn.functional.pad(logits, (0, 0, 0, W - weff))
            if use_cfg:
                cond_l, uncond_l = logits.split(B, dim=0)
                if scales is None:
                    logits = uncond_l + cfg_scale * (cond_l - uncond_l)
                else:
                    logits = uncond_l + scales[pos].unsqueeze(-1) * (cond_l - uncond_l)
            if not bool(torch.isfinite(logits.sum())):  # one check per pass (each pass syncs on `active` anyway)
                at = int(n[active].min()) if bool(active.any()) else int(n.min())
                raise NonFiniteLogits(f"speculative sampling: non-finite logits (nan/inf) at token {at}")
            if on_pass is not None:
                on_pass(
                    {
                        "rows": rows.clone(),
                        "n": n.clone(),
                        "inputs": inp.clone(),
                        "logits": logits.clone(),
                        "active": active.clone(),
                    }
                )
            p = _probs(logits, temperature, top_k, top_p)  # [B, W, V]
            u = _active_uniforms(gens, active, 2 * J + 1, device)
            if J:
                acc = u[:, :J] < rule(p[:, :J], q, drafts)
                rejected = ~acc
                jstar = torch.where(rejected.any(1), rejected.to(torch.uint8).argmax(1), torch.full_like(n, J))
            else:
                jstar = torch.zeros_like(n)
            pj = p.gather(1, jstar[:, None, None].expand(B, 1, V)).squeeze(1)
            dist = pj
            if J:
                qj = q.gather(1, jstar.clamp(max=J - 1)[:, None, None].expand(B, 1, V)).squeeze(1)
                resid = (pj - qj).clamp(min=0)
                resid = torch.where(resid.sum(-1, keepdim=True) > 0, resid, pj)
                dist = torch.where((jstar < J)[:, None], resid, pj)
            tok = draw(dist, u[:, J])
            new = torch.cat([drafts, torch.zeros_like(tok)[:, None]], 1).scatter(1, jstar[:, None], tok[:, None])
            keep = (slots[None, :] <= jstar[:, None]) & active[:, None]
            wpos = pos.clamp(max=out.shape[1] - 1)
            out.scatter_(1, wpos, torch.where(keep, new, out.gather(1, wpos)))
            n_new = torch.where(active, (n + jstar + 1).clamp(max=seq_len), n)
            passes += active.long()
            if J:
                drafts, q = _new_drafts(drafts, q, p, n, n_new, out, u[:, J + 1 :], init, V, active)
            n = n_new
            active = n < seq_len
            if compact and 0 < int(active.sum()) <= 0.75 * B:
                keep, done = torch.nonzero(active).flatten(), torch.nonzero(~active).flatten()
                out_all[rows[done]], passes_all[rows[done]] = out[done], passes[done]
                kk = torch.cat([keep, keep + B]) if use_cfg else keep
                for cache in caches:
                    assert cache.k is not None and cache.v is not None
                    cache.k, cache.v = cache.k[kk], cache.v[kk]
                rows, out, n, passes, drafts, q, active = (t[keep] for t in (rows, out, n, passes, drafts, q, active))
                gens = [gens[i] for i in keep.tolist()]
                B = keep.numel()
        out_all[rows], passes_all[rows] = out, passes
        return out_all[:, :seq_len], passes_all
    finally:
        model.train(was_training)


def _new_drafts(
    drafts: torch.Tensor,
    q: torch.Tensor,
    p: torch.Tensor | None,
    n: torch.Tensor,
    n_new: torch.Tensor,
    out: torch.Tensor,
    u: torch.Tensor | None,
    init: str,
    V: int,
    active: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drafts and their distributions for positions ``n_new .. n_new + J - 1``: drawn from this pass's ``p`` where
    it predicted the position (slot ``< W``), else initialised (uniform random, or the token to the left)."""
    B, J = drafts.shape
    if J == 0 or u is None:
        return drafts, q
    j = torch.arange(J, device=drafts.device)
    if p is None:
        predicted = torch.zeros(B, J, dtype=torch.bool, device=drafts.device)
        q_new = torch.zeros_like(q)
    else:
        slot = n_new[:, None] - n[:, None] + j  # slot of this pass's output for each new draft position
        predicted = slot < p.shape[1]
        q_new = p.gather(1, slot.clamp(max=p.shape[1] - 1)[..., None].expand(B, J, V))
    from_p = draw(q_new, u)
    if init == "random":
        fresh_tok = (u * V).long().clamp_(max=V - 1)
        d = torch.where(predicted, from_p, fresh_tok)
        q_new = torch.where(predicted[..., None], q_new, torch.full_like(q_new, 1.0 / V))
    else:  # repeat: a new position copies the token to its left (a uniform draw when there is none)
        left = torch.where(
            n_new > 0,
            out.gather(1, (n_new - 1).clamp(min=0)[:, None]).squeeze(1),
            (u[:, 0] * V).long().clamp(max=V - 1),
        )
        cols = []
        for i in range(J):
            t = torch.where(predicted[:, i], from_p[:, i], left)
            cols.append(t)
            left = t
        d = torch.stack(cols, 1)
        onehot = torch.nn.functional.one_hot(d, V).to(q_new.dtype)
        q_new = torch.where(predicted[..., None], q_new, onehot)
    if active is not None:  # finished samples keep their (unused) drafts
        d = torch.where(active[:, None], d, drafts)
        q_new = torch.where(active[:, None, None], q_new, q)
    return d, q_new
