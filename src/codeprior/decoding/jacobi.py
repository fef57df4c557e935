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
With ``--window auto`` the unfinished samples may be handed over to plain AR decoding mid-way
(:meth:`_Jacobi.finish_ar`), whose draws then come from the same generators.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from typing import Any

import torch

from codeprior.decoding.accept import Rule, exact_rule
from codeprior.decoding.ar import ar_generate, guided_logits
from codeprior.decoding.window import (
    WINDOWS,
    AutoWindow,
    PassCosts,
    batch_bucket,
    device_name,
    load_costs,
    store_costs,
)
from codeprior.errors import CodepriorError
from codeprior.models.gpt import GPT, KVCache
from codeprior.models.sampling import NonFiniteLogits, cfg_scale_at, check_sampling_inputs, filter_logits, uniforms

__all__ = ["auto_window", "draw", "jacobi_generate", "measure_pass_costs"]

#: the automatic window hands unfinished samples over to plain AR decoding when they sit at no more than this many
#: distinct positions (one AR call each); otherwise it keeps decoding speculatively at window 1
HANDOFF_GROUPS = 1


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


def _active_uniforms(
    generator: Any, active: torch.Tensor, n: int, device: torch.device, rows: list[int] | None = None
) -> torch.Tensor:
    """[B, n] uniforms; with a list of generators only the active rows draw (the others are zero). ``rows``: the
    active rows' indices when the caller already holds them on the host."""
    B = active.shape[0]
    if generator is None or isinstance(generator, torch.Generator):
        return uniforms((B, n), generator, device)
    gens = list(generator)
    if len(gens) != B:
        raise CodepriorError(f"sampling: got {len(gens)} generators for a batch of {B}")
    out = torch.zeros(B, n)
    for b in torch.nonzero(active).flatten().tolist() if rows is None else rows:
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
    window: int | str | AutoWindow = 16,
    rule: Rule | None = None,
    init: str = "random",
    compile: bool = False,
    on_pass: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes [B, seq_len] and the number of model passes each sample needed [B] (AR needs ``seq_len``).

    Same sampling arguments as :meth:`codeprior.models.gpt.GPT.generate` (CFG as a doubled batch, temperature,
    top-k/top-p, per-sample generators, cfg_schedule); ``rule`` defaults to exact SJD acceptance. ``window``: a
    number of tokens per pass, ``"auto"`` (:mod:`codeprior.decoding.window`: measured pass costs, running
    acceptance; plain AR when no window pays), or an :class:`AutoWindow` (which then records the windows used).
    ``on_pass`` (tests, tracing) receives each pass's rows (the samples' indices in ``labels``: finished samples
    leave the batch), positions, inputs and guided logits.
    """
    c = model.config
    device = model.tok_embeddings.weight.device
    labels, L = check_sampling_inputs(labels, seq_len, c.block_size, c.num_classes, device)
    if init not in ("random", "repeat"):
        raise CodepriorError(f"sampling: draft init must be random or repeat, got {init!r}")
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise CodepriorError("sampling: temperature must be >= 0 and top_p in (0, 1]")
    rule = exact_rule if rule is None else rule
    sampling = dict(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p, cfg_schedule=cfg_schedule)
    policy: AutoWindow | None = None
    if isinstance(window, AutoWindow):
        policy = window
    elif window == "auto":
        policy = auto_window(model, L, rule=rule, init=init, generator=generator, compile=compile, **sampling)
    elif isinstance(window, str) or int(window) < 1:
        raise CodepriorError(f"sampling: window must be a number >= 1 or 'auto', got {window!r}")
    B = labels.shape[0]
    if policy is not None:
        W = policy.start(B, L)
        if W == 0:  # no window pays: plain AR decoding (= window 1, draw for draw)
            policy.ar_samples += B
            policy.record(1, B * L)
            codes = model.generate(labels, L, generator=generator, **sampling)
            return codes, torch.full((B,), L, dtype=torch.long, device=device)
        wmax = max(policy.candidates(L)) if not policy.fixed else W
    else:
        W = wmax = int(typing.cast("int", window))
    was_training = model.training
    model.eval()
    try:
        dec = _Jacobi(model, labels, L, wmax, rule=rule, init=init, generator=generator, compile=compile, **sampling)
        dec.on_pass = on_pass
        while dec.running():
            if policy is not None:
                W = policy.choose(dec.B, L)
                if W == 0:  # plain AR is now cheaper than any window: hand the accepted prefixes over
                    handed = dec.finish_ar()
                    if handed:
                        policy.record(1, handed)
                        continue
                    W = 1  # too many distinct positions to hand over: window 1 (AR draw for draw)
                policy.record(W, dec.n_active())
            tested, accepted = dec.step(W)
            if policy is not None and W > 1:
                policy.stats.update(tested, accepted)
            dec.compact()
        return dec.result()
    finally:
        model.train(was_training)


class _Jacobi:
    """The state of one speculative decoding: static KV buffers for windows up to ``wmax``, accepted codes, each
    sample's position, its drafts and their draft distributions; :meth:`step` runs one pass at any window."""

    def __init__(
        self,
        model: GPT,
        labels: torch.Tensor,
        seq_len: int,
        wmax: int,
        *,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        cfg_schedule: Any = None,
        rule: Rule,
        init: str,
        generator: Any,
        compile: bool,
    ) -> None:
        c = model.config
        self.model, self.L, self.wmax, self.rule, self.init = model, seq_len, wmax, rule, init
        self.temperature, self.top_k, self.top_p, self.cfg_scale = temperature, top_k, top_p, cfg_scale
        self.V = V = c.vocab_size
        self.labels, self.cfg_schedule = labels, cfg_schedule
        self.device = device = model.tok_embeddings.weight.device
        self.B = B = labels.shape[0]
        self.use_cfg = cfg_scale != 1.0 or cfg_schedule is not None
        cond = torch.cat([labels, torch.full_like(labels, c.num_classes)]) if self.use_cfg else labels
        self.scales: torch.Tensor | None = None
        if cfg_schedule is not None and cfg_schedule != "constant":  # per-position scale, padded past the end
            s = [cfg_scale_at(i, seq_len, cfg_scale, cfg_schedule) for i in range(seq_len)]
            self.scales = torch.tensor(s + [s[-1]] * wmax, dtype=torch.float32, device=device)
        dtype = model.tok_embeddings.weight.dtype
        self.caches = [
            KVCache(cond.shape[0], c.kv_heads, c.cls_token_num + seq_len + wmax, c.head_dim) for _ in model.layers
        ]
        for cache in self.caches:  # allocated up front: fixed buffers (and no allocation inside a compiled step)
            cache.k = torch.zeros(cache.shape, dtype=dtype, device=device)
            cache.v = torch.zeros(cache.shape, dtype=dtype, device=device)

        def step(h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            return model.output(model.forward_hidden(h, caches=self.caches, pos=pos)).float()

        self.compiled = compile
        self.run = torch.compile(step, dynamic=False) if compile else step
        self.out = torch.zeros(B, seq_len + wmax, dtype=torch.long, device=device)
        self.n = torch.zeros(B, dtype=torch.long, device=device)
        self.passes = torch.zeros(B, dtype=torch.long, device=device)
        self.drafts = torch.zeros(B, 0, dtype=torch.long, device=device)
        self.q = torch.zeros(B, 0, V, device=device)
        self.active = self.n < seq_len
        self.n_host = [0] * B  # host copies of n and active (one transfer per pass, no sync for each question)
        self.cls = model.cls_embedding(cond, train=False).to(dtype)
        self.first = True
        # finished samples leave the batch once a quarter of it is done (per-sample generators only: a shared
        # generator's stream depends on the batch shape; the compiled step keeps fixed shapes)
        self.per_sample = generator is not None and not isinstance(generator, torch.Generator)
        self.gens: Any = list(generator) if self.per_sample else generator
        self.compact_ok = self.per_sample and not compile
        self.rows = torch.arange(B, device=device)  # original index of each row still in the batch
        self.out_all, self.passes_all = self.out.clone(), self.passes.clone()
        self.on_pass: Callable[[dict[str, torch.Tensor]], None] | None = None

    def running(self) -> bool:
        return any(x < self.L for x in self.n_host)

    def n_active(self) -> int:
        return sum(x < self.L for x in self.n_host)

    def active_rows(self) -> list[int]:
        return [b for b, x in enumerate(self.n_host) if x < self.L]

    def restart(self) -> None:
        """Every sample back at position 0 (pass-cost measurements: each timed pass runs the full window)."""
        self.n = torch.zeros_like(self.n)
        self.active = torch.ones_like(self.active)
        self.n_host = [0] * self.B

    def resize(self, J: int) -> None:
        """Drafts for ``J`` slots: dropped ones are not verified; added positions are initialised as new positions
        always are (uniform random, or the token to the left), one uniform each from the sample's generator."""
        J0 = self.drafts.shape[1]
        if J < J0:
            self.drafts, self.q = self.drafts[:, :J], self.q[:, :J]
            return
        k = J - J0
        if k == 0:
            return
        u = _active_uniforms(self.gens, self.active, k, self.device, self.active_rows())
        B, V = self.B, self.V
        if self.init == "random":
            tok = (u * V).long().clamp_(max=V - 1)
            qn = torch.full((B, k, V), 1.0 / V, device=self.device)
        else:  # repeat: the token to the left (a uniform draw when there is none)
            if J0:
                left = self.drafts[:, -1]
            else:
                last = self.out.gather(1, (self.n - 1).clamp(min=0)[:, None]).squeeze(1)
                left = torch.where(self.n > 0, last, (u[:, 0] * V).long().clamp(max=V - 1))
            tok = left[:, None].expand(B, k)
            qn = torch.nn.functional.one_hot(tok, V).to(self.q.dtype)
        self.drafts = torch.cat([self.drafts, tok], 1)
        self.q = torch.cat([self.q, qn], 1)

    def step(self, W: int) -> tuple[list[int], list[int]]:
        """One pass at window ``W``; returns the drafts verified and accepted per slot [W - 1] (summed over the
        active samples, slots inside the sequence only)."""
        J, V, B, L = W - 1, self.V, self.B, self.L
        if self.drafts.shape[1] != J:
            self.resize(J)
        n, out, active, drafts, q = self.n, self.out, self.active, self.drafts, self.q
        slots = torch.arange(W, device=self.device)
        last = out.gather(1, (n - 1).clamp(min=0)[:, None])
        inp = torch.cat([last, drafts], 1)  # [B, W]
        # the model runs on the slots that still lie inside some sample's sequence; the outputs past the end
        # (never kept) are padded as uniform, so every draw and every kept token is the full window's
        rows = self.active_rows()
        weff = W if self.compiled else min(W, max(L - self.n_host[b] for b in rows))
        x = inp[:, :weff].repeat(2, 1) if self.use_cfg else inp[:, :weff]
        h = self.model.tok_embeddings(x)
        if self.first:  # every sample starts at n = 0: slot 0 is the class token
            h = torch.cat([self.cls, h[:, 1:]], 1)
            self.first = False
        pos = n[:, None] + slots
        pm = pos[:, :weff]
        logits = self.run(h, pm.repeat(2, 1) if self.use_cfg else pm)  # [B2, weff, V]
        if weff < W:
            logits = torch.nn.functional.pad(logits, (0, 0, 0, W - weff))
        if self.use_cfg:
            scale = self.cfg_scale if self.scales is None else self.scales[pos].unsqueeze(-1)
            logits = guided_logits(logits, B, scale)  # the one CFG mixing, shared with plain AR
        if not bool(torch.isfinite(logits.sum())):  # one check per pass
            at = min(self.n_host[b] for b in rows)
            raise NonFiniteLogits(f"speculative sampling: non-finite logits (nan/inf) at token {at}")
        if self.on_pass is not None:
            self.on_pass(
                {
                    "rows": self.rows.clone(),
                    "n": n.clone(),
                    "inputs": inp.clone(),
                    "logits": logits.clone(),
                    "active": active.clone(),
                    "window": torch.tensor(W),
                }
            )
        p = _probs(logits, self.temperature, self.top_k, self.top_p)  # [B, W, V]
        u = _active_uniforms(self.gens, active, 2 * J + 1, self.device, rows)
        if J:
            acc = u[:, :J] < self.rule(p[:, :J], q, drafts)
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
        n_new = torch.where(active, (n + jstar + 1).clamp(max=L), n)
        self.passes += active.long()
        if J:
            self.drafts, self.q = _new_drafts(drafts, q, p, n, n_new, out, u[:, J + 1 :], self.init, V, active)
        js, n_host = torch.stack([jstar, n_new]).tolist()  # the pass's one transfer to the host
        tested, accepted = [0] * J, [0] * J
        for b in rows:  # slots verified (up to the first rejection) and accepted, inside the sequence only
            inside = min(J, L - self.n_host[b])
            for j in range(min(js[b] + 1, inside)):
                tested[j] += 1
            for j in range(min(js[b], inside)):
                accepted[j] += 1
        self.n, self.n_host = n_new, n_host
        self.active = n_new < L
        return tested, accepted

    def compact(self) -> None:
        """Finished samples leave the batch (their KV rows dropped) once at most 3/4 of it is still running."""
        if not self.compact_ok or not 0 < self.n_active() <= 0.75 * self.B:
            return
        self.n_host = [self.n_host[b] for b in self.active_rows()]
        keep, done = torch.nonzero(self.active).flatten(), torch.nonzero(~self.active).flatten()
        self.out_all[self.rows[done]], self.passes_all[self.rows[done]] = self.out[done], self.passes[done]
        kk = torch.cat([keep, keep + self.B]) if self.use_cfg else keep
        for cache in self.caches:
            assert cache.k is not None and cache.v is not None
            cache.k, cache.v = cache.k[kk], cache.v[kk]
        self.cls = self.cls[kk]
        self.rows, self.out, self.n, self.passes, self.drafts, self.q, self.active, self.labels = (
            t[keep] for t in (self.rows, self.out, self.n, self.passes, self.drafts, self.q, self.active, self.labels)
        )
        self.gens = [self.gens[i] for i in keep.tolist()]
        self.B = keep.numel()

    def finish_ar(self) -> int:
        """Decode every unfinished sample to the end by plain AR from its accepted prefix (one prefill pass over
        the prefix, then one pass per token: :func:`~codeprior.decoding.ar.ar_generate`), one call per distinct
        position, at most :data:`HANDOFF_GROUPS` of them; the same conditionals, so the exact rule's distribution
        is unchanged. Returns the sample-passes this took (0: not handed over: too many distinct positions, or
        the compiled fixed-shape step)."""
        rows = self.active_rows()
        groups: dict[int, list[int]] = {}
        for b in rows:
            groups.setdefault(self.n_host[b], []).append(b)
        if self.compiled or not rows or len(groups) > HANDOFF_GROUPS:
            return 0
        sampling = dict(cfg_scale=self.cfg_scale, cfg_schedule=self.cfg_schedule, temperature=self.temperature)
        passes = 0
        for t, bs in sorted(groups.items()):
            idx = torch.tensor(bs, device=self.device)
            gen = [self.gens[b] for b in bs] if self.per_sample else self.gens
            codes = ar_generate(self.model, self.labels[idx], self.L, top_k=self.top_k, top_p=self.top_p,
                                generator=gen, prefix=self.out[idx, :t], **sampling)  # fmt: skip
            self.out[idx, t : self.L] = codes
            self.passes[idx] += self.L - t
            passes += len(bs) * (self.L - t)
        self.n = torch.where(self.active, torch.full_like(self.n, self.L), self.n)
        self.n_host = [self.L] * len(self.n_host)
        self.active = self.n < self.L
        return passes

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.out_all[self.rows], self.passes_all[self.rows] = self.out, self.passes
        return self.out_all[:, : self.L], self.passes_all


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


# ------------------------------------------------------------------------------------------------------------
# pass costs for the automatic window
# ------------------------------------------------------------------------------------------------------------

_MEASURED: dict[str, PassCosts] = {}  # this process's measurements and cache reads, by cache key


def _generators(kind: str, batch: int) -> Any:
    if kind == "per-sample":
        return [torch.Generator().manual_seed(i) for i in range(batch)]
    return torch.Generator().manual_seed(0) if kind == "shared" else None


def _rule_name(rule: Rule) -> str:
    name = getattr(rule, "__name__", type(rule).__name__)
    n = getattr(rule, "neighbors", None)
    return f"{name}{n}" if n is not None else name


def _timed(fn: Callable[[], Any], device: torch.device, min_seconds: float = 0.0) -> float:
    """Seconds per call of ``fn``: calls repeated until ``min_seconds`` have passed (short passes are noisy)."""
    import time

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, calls = time.perf_counter(), 0
    while True:
        fn()
        calls += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter() - t0
        if t >= min_seconds:
            return t / calls


@torch.no_grad()
def measure_pass_costs(
    model: GPT,
    batch: int,
    seq_len: int,
    windows: Sequence[int] = WINDOWS,
    *,
    rule: Rule | None = None,
    init: str = "random",
    generators: str = "per-sample",
    rounds: int = 3,
    **sampling: Any,
) -> PassCosts:
    """Seconds per speculative pass at each window and per AR token (``GPT.generate``) for ``batch`` samples of
    this model with these sampling arguments, on the model's device: a warm-up round, then ``rounds`` interleaved
    rounds, the minimum kept (the least disturbed by other load). Windows from the first that cannot pay even when
    every draft is accepted (a pass dearer than ``W`` AR tokens, with 20% to spare) upward are not measured."""
    rule = exact_rule if rule is None else rule
    device = model.tok_embeddings.weight.device
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    windows = sorted(w for w in windows if w <= seq_len)
    was_training = model.training
    model.eval()
    try:
        s2 = min(seq_len, 10)
        s1 = min(2, s2 - 1)

        def ar(s: int) -> float:
            return _timed(
                lambda: model.generate(labels, s, generator=_generators(generators, batch), **sampling), device
            )

        dec = _Jacobi(
            model,
            labels,
            seq_len,
            max(windows),
            rule=rule,
            init=init,
            generator=_generators(generators, batch),
            compile=False,
            **sampling,
        )
        dec.step(1)  # the class-token pass

        def one(w: int) -> float:
            dec.resize(w - 1)

            def full_pass() -> None:
                dec.restart()  # every timed pass runs the full window
                dec.step(w)

            return _timed(full_pass, device, min_seconds=0.01)

        t_ar: dict[int, float] = {}
        times: dict[int, float] = {}
        for r in range(rounds + 1):
            for s in (s1, s2) if s1 > 0 else (s2,):
                t = ar(s)
                t_ar[s] = min(t, t_ar.get(s, t)) if r else t
            per_token = (t_ar[s2] - t_ar[s1]) / (s2 - s1) if s1 > 0 else t_ar[s2] / s2
            per_token = max(per_token, 0.5 * t_ar[s2] / s2)
            for w in windows:
                if r == 0:
                    t = one(w)
                    if w > 1 and t > 1.2 * w * per_token:  # hopeless, and so are larger windows
                        break
                    times[w] = t
                elif w in times:
                    times[w] = min(times[w], one(w))
        return PassCosts(dict(times), per_token)
    finally:
        model.train(was_training)


def auto_window(
    model: GPT,
    seq_len: int,
    *,
    rule: Rule | None = None,
    init: str = "random",
    generator: Any = None,
    compile: bool = False,
    **sampling: Any,
) -> AutoWindow:
    """An :class:`AutoWindow` for this model, sequence length and sampling arguments, its pass costs measured per
    batch bucket on first use and kept in the cost cache (:func:`codeprior.decoding.window.cost_cache_path`).
    ``compile`` (fixed shapes): the first choice is kept for the whole decoding (one compiled graph)."""
    rule = exact_rule if rule is None else rule
    c = model.config
    device = model.tok_embeddings.weight.device
    kind = "none" if generator is None else "shared" if isinstance(generator, torch.Generator) else "per-sample"
    cfg = sampling.get("cfg_scale", 1.0) != 1.0 or sampling.get("cfg_schedule") is not None
    key = "|".join(
        [
            device_name(device),
            f"torch {torch.__version__}",
            str(model.tok_embeddings.weight.dtype),
            f"dim {c.dim} layers {c.n_layer} heads {c.n_head}/{c.kv_heads} ffn {c.ffn_dim} vocab {c.vocab_size}",
            f"len {seq_len}/{c.block_size}",
            f"rule {_rule_name(rule)} init {init} generators {kind}",
            f"cfg {cfg} greedy {sampling.get('temperature', 1.0) == 0} top-k {bool(sampling.get('top_k'))} "
            f"top-p {sampling.get('top_p', 1.0) < 1.0}",
        ]
    )

    def costs(batch: int) -> PassCosts:
        b = batch_bucket(batch)
        k = f"{key}|batch {b}"
        if k not in _MEASURED:
            _MEASURED[k] = load_costs(k) or measure_pass_costs(
                model, b, seq_len, rule=rule, init=init, generators=kind, **sampling
            )
            store_costs(k, _MEASURED[k])
        return _MEASURED[k]

    return AutoWindow(costs, fixed=compile)
