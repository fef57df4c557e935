"""Plain autoregressive decoding in small steps (gpt-fast's ``prefill`` / ``decode_one_token`` / ``decode_n_tokens``).

:meth:`codeprior.models.gpt.GPT.generate` checks its arguments and calls :func:`ar_generate`. Two ways to run the
model pass, with the same sampling loop around them:

* eager (the default): the class token is prefilled, then each token is one pass over the prefix views of the
  :class:`~codeprior.models.gpt.KVCache` (``start=`` positions). These are the codes of every earlier version, bit
  for bit (tests/test_ar_decoding.py keeps the earlier loop as its reference).
* compiled (``compile=True``): :class:`StaticDecodeStep`, one fixed-shape pass ``(embedded token, position) ->
  logits`` over static buffers at tensor positions (``forward_hidden(..., pos=)``, the path speculative decoding
  uses), wrapped in ``torch.compile(dynamic=False)``; on CUDA ``mode="reduce-overhead"`` (CUDA graphs), as
  gpt-fast does. One graph serves every position, so it compiles once per (model, batch, length, device); the
  compiled step is kept on the model and reused by later calls. Same codes as eager in fp32 (tested on CPU; the
  attention over the whole masked buffer may round differently from the prefix view in the last bit, which a
  sample flips only when a uniform lands on a CDF boundary).

Classifier-free guidance runs as one doubled batch ``[cond; null]``; :func:`guided_logits` mixes the halves.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from codeprior.models.sampling import CfgSchedule, NonFiniteLogits, cfg_scale_at, sample_logits

if TYPE_CHECKING:
    from codeprior.models.gpt import GPT, KVCache

LogitsProcessor = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]

#: compiled decode steps per model, keyed by (batch, positions, dtype, device): compiled once, reused
_COMPILED: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], Callable[..., torch.Tensor]]] = (
    weakref.WeakKeyDictionary()
)
#: seconds each compiled step took on its first call (compilation included), for the benchmarks and the log
COMPILE_SECONDS: dict[tuple[Any, ...], float] = {}


def guided_logits(logits: torch.Tensor, batch: int, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance on a doubled batch: rows ``[:batch]`` conditional, ``[batch:]`` null-class;
    ``uncond + scale * (cond - uncond)``. ``scale`` is a float or a tensor broadcasting against one half."""
    cond, uncond = logits.split(batch, dim=0)
    return uncond + scale * (cond - uncond)


def make_caches(model: GPT, batch: int, n_pos: int, allocate: bool = False) -> list[KVCache]:
    """One :class:`KVCache` per layer for ``batch`` rows and ``n_pos`` positions; ``allocate`` fills the buffers
    now (zeros, the model's dtype and device) instead of at the first write."""
    from codeprior.models.gpt import KVCache

    c = model.config
    caches = [KVCache(batch, c.kv_heads, n_pos, c.head_dim) for _ in model.layers]
    if allocate:
        w = model.tok_embeddings.weight
        for cache in caches:
            cache.k = torch.zeros(cache.shape, dtype=w.dtype, device=w.device)
            cache.v = torch.zeros(cache.shape, dtype=w.dtype, device=w.device)
    return caches


def prefill(
    model: GPT, cond: torch.Tensor, caches: Sequence[KVCache], given: torch.Tensor | None = None
) -> torch.Tensor:
    """The class-token pass (position 0) for labels ``cond`` [B2], followed in the same pass by the ``given``
    tokens [B2, t] when there are some: the logits [B2, V] (float32) of the next token."""
    h = model.cls_embedding(cond, train=False).to(model.tok_embeddings.weight.dtype)
    if given is not None:
        h = torch.cat([h, model.tok_embeddings(given)], 1)
    hidden = model.forward_hidden(h, causal=True, caches=caches, start=0)
    return model.output(hidden[:, -1]).float()


def decode_one_token(model: GPT, x: torch.Tensor, caches: Sequence[KVCache], start: int) -> torch.Tensor:
    """One pass for tokens ``x`` [B2] at position ``start`` over the prefix views of ``caches``: logits [B2, V]."""
    hidden = model.forward_hidden(model.tok_embeddings(x[:, None]), causal=True, caches=caches, start=start)
    return model.output(hidden[:, -1]).float()


class StaticDecodeStep(nn.Module):
    """One fixed-shape pass ``(h [B2, 1, dim], pos [B2, 1]) -> logits [B2, V]`` over static KV buffers (allocated
    here, registered as buffers so they follow the module): the step ``torch.compile`` captures once."""

    def __init__(self, model: GPT, batch: int, n_pos: int) -> None:
        super().__init__()
        self.model = model
        self.caches = make_caches(model, batch, n_pos, allocate=True)
        for i, cache in enumerate(self.caches):
            self.register_buffer(f"k{i}", cache.k, persistent=False)
            self.register_buffer(f"v{i}", cache.v, persistent=False)

    def forward(self, h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        hidden = self.model.forward_hidden(h, caches=self.caches, pos=pos)
        return self.model.output(hidden[:, -1]).float()


def compiled_step(model: GPT, batch: int, n_pos: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The compiled :class:`StaticDecodeStep` for this model and shape (built and compiled on first use; CUDA
    graphs on CUDA). Compilation happens at its first call; :data:`COMPILE_SECONDS` records how long that took."""
    w = model.tok_embeddings.weight
    key = (batch, n_pos, w.dtype, str(w.device))
    steps = _COMPILED.setdefault(model, {})
    if key not in steps:
        step = StaticDecodeStep(model, batch, n_pos)
        mode = "reduce-overhead" if w.device.type == "cuda" else None
        compiled = torch.compile(step, dynamic=False, mode=mode)
        cuda = w.device.type == "cuda"
        first = [True]

        def run(h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            if cuda:  # CUDA graphs: a new step each call; the output buffer is reused at the next replay
                torch.compiler.cudagraph_mark_step_begin()
            if first[0]:
                t0 = time.perf_counter()
                out = compiled(h, pos)
                COMPILE_SECONDS[key] = time.perf_counter() - t0
                first[0] = False
            else:
                out = compiled(h, pos)
            return out.clone() if cuda else out

        steps[key] = run
    return steps[key]


def decode_n_tokens(
    next_logits: Callable[[torch.Tensor, int], torch.Tensor],
    logits: torch.Tensor,
    seq_len: int,
    *,
    cfg_scale: float,
    cfg_schedule: str | CfgSchedule | None,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    logits_processor: LogitsProcessor | None = None,
    start: int = 0,
) -> torch.Tensor:
    """Sample tokens ``start .. seq_len - 1`` starting from the logits of token ``start`` [B2, V] (the prefill's);
    ``next_logits(x [B2], i)`` runs the pass that feeds token ``i`` back and returns the logits of token ``i + 1``.
    Returns codes [B, seq_len - start].

    Per token: guidance (when ``cfg_scale != 1`` or a schedule is given; B2 = 2B), ``logits_processor(logits, i,
    prefix)`` (only from ``start = 0``), then :func:`sample_logits`. Non-finite logits are recorded per token and
    raised at the end (one host sync per call, not per token)."""
    assert start == 0 or logits_processor is None, "a logits processor sees the whole prefix: start at 0"
    use_cfg = cfg_scale != 1.0 or cfg_schedule is not None
    B = logits.shape[0] // 2 if use_cfg else logits.shape[0]
    out = torch.empty(B, seq_len - start, dtype=torch.long, device=logits.device)
    bad = torch.zeros(seq_len, dtype=torch.bool, device=logits.device)  # non-finite logits per token
    for i in range(start, seq_len):
        if use_cfg:
            logits = guided_logits(logits, B, cfg_scale_at(i, seq_len, cfg_scale, cfg_schedule))
        bad[i] = ~torch.isfinite(logits.sum())  # a sum: NaN / inf propagate, 50x cheaper than isfinite
        if logits_processor is not None:
            logits = logits_processor(logits, i, out[:, :i])
        tok = sample_logits(logits, temperature, top_k, top_p, generator)
        out[:, i - start] = tok
        if i + 1 < seq_len:
            logits = next_logits(tok.repeat(2) if use_cfg else tok, i)
    if bool(bad.any()):
        raise NonFiniteLogits(f"sampling: non-finite logits (nan/inf) at token {int(bad.nonzero()[0])}")
    return out


def ar_generate(
    model: GPT,
    labels: torch.Tensor,
    seq_len: int,
    *,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    cfg_schedule: str | CfgSchedule | None = None,
    logits_processor: LogitsProcessor | None = None,
    compile: bool = False,
    prefix: torch.Tensor | None = None,
) -> torch.Tensor:
    """Codes [B, seq_len] for checked ``labels`` [B] (on the model's device) of an eval-mode ``model``: prefill,
    then :func:`decode_n_tokens` with the eager pass (:func:`decode_one_token`) or the compiled static one.

    ``prefix`` [B, t] (eager only): the first ``t`` codes are given (one prefill pass over the class token and
    them) and only codes ``t ..`` are sampled, from the same conditionals: speculative decoding hands its accepted
    prefix over when plain AR decoding is cheaper than any window. Returns the sampled codes [B, seq_len - t]."""
    c = model.config
    use_cfg = cfg_scale != 1.0 or cfg_schedule is not None
    cond = torch.cat([labels, torch.full_like(labels, c.num_classes)]) if use_cfg else labels
    n_pos = c.cls_token_num + seq_len - 1  # the last sampled token is never fed back
    assert prefix is None or not compile, "a prefix runs the eager pass"
    if compile:
        step = compiled_step(model, cond.shape[0], n_pos)
        pos = torch.zeros(cond.shape[0], 1, dtype=torch.long, device=cond.device)
        h = model.cls_embedding(cond, train=False).to(model.tok_embeddings.weight.dtype)
        logits = step(h, pos)

        def next_logits(x: torch.Tensor, i: int) -> torch.Tensor:
            return step(model.tok_embeddings(x[:, None]), pos + (c.cls_token_num + i))

    else:
        caches = make_caches(model, cond.shape[0], n_pos)
        given = None if prefix is None else prefix.repeat(2, 1) if use_cfg else prefix
        logits = prefill(model, cond, caches, given)

        def next_logits(x: torch.Tensor, i: int) -> torch.Tensor:
            return decode_one_token(model, x, caches, c.cls_token_num + i)

    return decode_n_tokens(
        next_logits,
        logits,
        seq_len,
        cfg_scale=cfg_scale,
        cfg_schedule=cfg_schedule,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
        logits_processor=logits_processor,
        start=0 if prefix is None else prefix.shape[1],
    )
