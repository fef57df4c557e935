"""LlamaGen-compatible class-conditional GPT, with static-KV-cache generation.

The architecture follows LlamaGen's ``autoregressive/models/gpt.py`` exactly (facts, not code, see
``docs/models.md``), so released ``c2i_*.pt`` weights load and compute the same logits:

* pre-norm Llama blocks: RMSNorm (eps 1e-5), fused bias-free ``wqkv`` (GQA through ``n_kv_head``), SwiGLU FFN
  with hidden size ``find_multiple(int(2 * 4 * dim / 3) [* ffn_dim_multiplier], multiple_of)``;
* 2-D RoPE: half of each head's rotary pairs turn with the row index, half with the column index (base 10000,
  raster order); the class position gets an all-zero cos/sin table, so its q and k are *zeroed* (LlamaGen quirk);
* class embedding with one extra row (index ``num_classes``) = the null class for classifier-free guidance;
  class dropout (label -> null) only in ``train()`` mode; token dropout is element-wise dropout of the embedded
  sequence (class embedding included);
* zero-initialised output head, every other Linear/Embedding N(0, 0.02).

Internals (:class:`TransformerBlock`, :class:`LabelEmbedder`, :func:`precompute_rope_2d`, and the shared trunk
:class:`TransformerBase` with ``forward_hidden(..., causal=...)``) are reused by :mod:`codeprior.models.refine`.
Sampling helpers (:func:`sample_logits`, :func:`filter_logits`) are public and shared with the refine sampler.
:meth:`GPT.generate` is plain AR decoding (:mod:`codeprior.decoding.ar`: eager over the prefix views of
:class:`KVCache`, or a compiled fixed-shape step); speculative decoding (:mod:`codeprior.decoding`) uses the same buffers at per-sample tensor positions (``forward_hidden(..., pos=)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from codeprior.errors import CodepriorError
from codeprior.models.gpt_config import (  # re-exported: the config and registry live in gpt_config.py
    GPT_CONFIGS,
    GPTConfig,
    ffn_hidden_dim,
    find_multiple,
    get_gpt_config,
)
from codeprior.models.sampling import (  # re-exported: the sampling helpers live in sampling.py
    CfgSchedule,
    check_sampling_inputs,
    filter_logits,
    sample_logits,
)

__all__ = [
    "GPTConfig",
    "GPT",
    "GPT_CONFIGS",
    "get_gpt_config",
    "TransformerBase",
    "TransformerBlock",
    "Attention",
    "FeedForward",
    "RMSNorm",
    "LabelEmbedder",
    "KVCache",
    "precompute_rope_2d",
    "apply_rope",
    "find_multiple",
    "ffn_hidden_dim",
    "filter_logits",
    "sample_logits",
]


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back, then scaled (LlamaGen order)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


def precompute_rope_2d(
    grid: tuple[int, int], head_dim: int, base: float = 10000.0, cls_token_num: int = 1
) -> torch.Tensor:
    """cos/sin table [cls_token_num + rows*cols, head_dim // 2, 2] for raster-ordered 2-D RoPE.

    Rotary pair ``j < head_dim // 4`` turns with the row index at frequency ``base ** (-4j / head_dim)``; pair
    ``head_dim // 4 + j`` turns with the column index at the same frequency. The first ``cls_token_num`` rows are
    all zero (LlamaGen: the class token's q and k are zeroed).
    """
    rows, cols = grid
    half = head_dim // 2
    cpu: dict[str, Any] = dict(
        dtype=torch.float32, device="cpu"
    )  # always computed on the CPU (also inside a meta-device context)
    freqs = 1.0 / (base ** (torch.arange(0, half, 2, **cpu)[: half // 2] / half))
    fr = torch.outer(torch.arange(rows, **cpu), freqs)  # [rows, hd/4]
    fc = torch.outer(torch.arange(cols, **cpu), freqs)  # [cols, hd/4]
    ang = torch.cat([fr[:, None, :].expand(rows, cols, -1), fc[None, :, :].expand(rows, cols, -1)], dim=-1)
    table = torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1).flatten(0, 1)  # [rows*cols, hd/2, 2]
    return torch.cat([torch.zeros(cls_token_num, half, 2, **cpu), table], dim=0)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of ``x`` [B, T, H, D] by ``rope`` [T, D/2, 2] or per-row [B, T, D/2, 2] (float32)."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    r = rope.view(rope.shape[0] if rope.dim() == 4 else 1, xs.size(1), 1, xs.size(3), 2)  # [B, T, ...]: per row
    out = torch.stack(
        [xs[..., 0] * r[..., 0] - xs[..., 1] * r[..., 1], xs[..., 1] * r[..., 0] + xs[..., 0] * r[..., 1]], dim=-1
    )
    return out.flatten(3).type_as(x)


class KVCache:
    """Static per-layer key/value buffers [B, H_kv, S, D], allocated on first write (dtype of the keys, so it
    follows bf16 autocast) and never resized. ``update`` writes positions ``start..start+T`` and returns views of
    the filled prefix (the plain AR path); ``write`` scatters at per-row tensor positions and returns the whole
    buffers, so every speculative step has the same shapes and rolling back is only a position reset."""

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int) -> None:
        self.shape = (batch, n_kv_head, max_len, head_dim)
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None or self.v is None:  # both are allocated together
            self.k = torch.zeros(self.shape, dtype=k.dtype, device=k.device)
            self.v = torch.zeros(self.shape, dtype=v.dtype, device=v.device)
        end = start + k.shape[2]
        if end > self.shape[2]:
            raise RuntimeError(f"KV cache overflow: position {end} > {self.shape[2]}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def write(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` [B, H, T, D] at positions ``pos`` [B, T] (one row of positions per sample)."""
        if self.k is None or self.v is None:  # both are allocated together
            self.k = torch.zeros(self.shape, dtype=k.dtype, device=k.device)
            self.v = torch.zeros(self.shape, dtype=v.dtype, device=v.device)
        idx = pos[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        self.k.scatter_(2, idx, k.to(self.k.dtype))
        self.v.scatter_(2, idx, v.to(self.v.dtype))
        return self.k, self.v


class Attention(nn.Module):
    """Multi-head attention with fused ``wqkv`` (q, k, v split; GQA when ``n_kv_head < n_head``) and 2-D RoPE."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.dim = config.dim
        kv = self.n_kv_head * self.head_dim
        self.wqkv = nn.Linear(config.dim, config.dim + 2 * kv, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.attn_dropout_p = config.attn_dropout_p
        self.resid_dropout = nn.Dropout(config.resid_dropout_p)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        *,
        causal: bool = True,
        cache: KVCache | None = None,
        start: int = 0,
        pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``pos`` [B, T] (with ``cache`` and a [B, 1, T, S] ``mask``): the static-buffer path (see KVCache.write)."""
        B, T, _ = x.shape
        kv = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.dim, kv, kv], dim=-1)
        q = apply_rope(q.view(B, T, self.n_head, self.head_dim), rope).transpose(1, 2)
        k = apply_rope(k.view(B, T, self.n_kv_head, self.head_dim), rope).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        is_causal = causal and T > 1
        if cache is not None and pos is not None:
            k, v = cache.write(pos, k, v)
            is_causal = False
        elif cache is not None:
            k, v = cache.update(start, k, v)
            if is_causal and start > 0:  # chunk after a prefix: explicit bottom-right-aligned causal mask
                qpos = torch.arange(start, start + T, device=x.device)
                mask = torch.arange(k.shape[2], device=x.device)[None, :] <= qpos[:, None]
                is_causal = False
        if cache is not None and q.dtype != k.dtype:
            q = q.to(k.dtype)
        if self.n_kv_head != self.n_head:
            rep = self.n_head // self.n_kv_head
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.attn_dropout_p if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(B, T, self.dim)
        return self.resid_dropout(self.wo(out))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)`` then dropout."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = config.ffn_dim
        self.w1 = nn.Linear(config.dim, hidden, bias=False)
        self.w3 = nn.Linear(config.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, config.dim, bias=False)
        self.ffn_dropout = nn.Dropout(config.ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample (training only), rescaled by 1/(1-p)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class TransformerBlock(nn.Module):
    """Pre-norm Llama block: ``h = x + attn(norm(x)); out = h + ffn(norm(h))`` (with optional drop-path)."""

    def __init__(self, config: GPTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        *,
        causal: bool = True,
        cache: KVCache | None = None,
        start: int = 0,
        pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = x + self.drop_path(
            self.attention(self.attention_norm(x), rope, causal=causal, cache=cache, start=start, pos=pos, mask=mask)
        )
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))


class LabelEmbedder(nn.Module):
    """Class embedding with ``num_classes + 1`` rows; row ``num_classes`` is the null class (CFG).

    With ``train=True`` each label is replaced by the null class with probability ``dropout_prob``.
    """

    def __init__(self, num_classes: int, dim: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels).unsqueeze(1)  # [B, 1, dim]


# --------------------------------------------------------------------------------------------------
# Shared trunk
# --------------------------------------------------------------------------------------------------


class TransformerBase(nn.Module):
    """Embeddings + blocks + final norm + head, shared by :class:`GPT` and the refine model.

    ``in_vocab`` sizes ``tok_embeddings`` and ``out_vocab`` the ``output`` head (equal for the GPT; the refine
    model reads coarse ids and predicts fine codes). Key names are LlamaGen's.
    """

    def __init__(self, config: GPTConfig, in_vocab: int, out_vocab: int) -> None:
        super().__init__()
        self.config = config
        self.cls_embedding = LabelEmbedder(config.num_classes, config.dim, config.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(in_vocab, config.dim)
        self.tok_dropout = nn.Dropout(config.token_dropout_p)
        n = config.n_layer
        dpr = [config.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]  # linspace(0, rate, n)
        self.layers = nn.ModuleList(TransformerBlock(config, dpr[i]) for i in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, out_vocab, bias=False)
        # Not in the state dict (LlamaGen keeps it as a plain attribute); a buffer so .to(device) moves it.
        self.register_buffer("freqs_cis", self._rope_table(), persistent=False)
        if not self.tok_embeddings.weight.is_meta:  # built on meta by the loaders: weights come from the file
            self.initialize_weights()

    def _rope_table(self) -> torch.Tensor:
        c = self.config
        return precompute_rope_2d(c.grid_hw, c.head_dim, c.rope_base, c.cls_token_num)

    def reset_rope(self) -> None:
        """Recompute the RoPE table on the model's device (needed after building on the meta device)."""
        self.freqs_cis = self._rope_table().to(self.tok_embeddings.weight.device)

    def initialize_weights(self) -> None:
        """N(0, initializer_range) for Linear/Embedding weights, zero for the output head (LlamaGen)."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=std)
        nn.init.zeros_(self.output.weight)

    def get_fsdp_wrap_module_list(self) -> list[nn.Module]:
        """The blocks: the units for FSDP's auto-wrap policy."""
        return list(self.layers)

    def forward_hidden(
        self,
        h: torch.Tensor,
        *,
        causal: bool = True,
        caches: Sequence[KVCache] | None = None,
        start: int = 0,
        pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the blocks and the final norm on embedded inputs ``h`` [B, T, dim] at positions ``start..start+T``
        (position 0 = class token). ``causal=False`` gives bidirectional attention. With ``pos`` [B, T] (and
        ``caches``) row ``b`` sits at positions ``pos[b]`` and attends the whole static buffer up to each of them."""
        if pos is not None:
            assert caches is not None, "pos needs caches"
            S = caches[0].shape[2]
            rope = self.freqs_cis[pos.clamp(max=self.freqs_cis.shape[0] - 1)]  # past the end: never attended
            mask = (torch.arange(S, device=h.device)[None, None, :] <= pos[:, :, None])[:, None]
            for i, layer in enumerate(self.layers):
                h = layer(h, rope, cache=caches[i], pos=pos, mask=mask)
            return self.norm(h)
        T = h.shape[1]
        if start + T > self.freqs_cis.shape[0]:
            raise CodepriorError(
                f"model: sequence of {start + T} positions exceeds cls_token_num + block_size = {self.freqs_cis.shape[0]}"
            )
        rope = self.freqs_cis[start : start + T]
        for i, layer in enumerate(self.layers):
            h = layer(h, rope, causal=causal, cache=None if caches is None else caches[i], start=start)
        return self.norm(h)

    def embed(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[class embedding, tok_embeddings(tokens)]`` with token dropout: [B, 1 + T, dim]."""
        cls = self.cls_embedding(labels, train=self.training)
        return self.tok_dropout(
            torch.cat([cls.to(self.tok_embeddings.weight.dtype), self.tok_embeddings(tokens)], dim=1)
        )

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embeddings.weight.numel() + self.cls_embedding.embedding_table.weight.numel()
        return n


def _check_inputs(tokens: torch.Tensor, labels: torch.Tensor, num_classes: int, what: str) -> None:
    if tokens.dim() != 2:
        raise CodepriorError(f"model: {what} must be [B, L], got shape {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point or labels.dtype.is_floating_point:
        raise CodepriorError(f"model: {what} and labels must be integer tensors")
    if labels.dim() != 1 or labels.shape[0] != tokens.shape[0]:
        raise CodepriorError(f"model: labels must be [B] with B={tokens.shape[0]}, got shape {tuple(labels.shape)}")


class GPT(TransformerBase):
    """LlamaGen class-conditional GPT. ``model(codes, labels)`` is the training forward."""

    #: set by :func:`codeprior.models.load_gpt`: where the config and grid came from (None for a model built here)
    checkpoint_info: dict[str, Any] | None = None

    def __init__(self, config: GPTConfig) -> None:
        if not isinstance(config, GPTConfig):
            raise CodepriorError(f"GPT: expected a GPTConfig, got {type(config).__name__}")
        super().__init__(config, config.vocab_size, config.vocab_size)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor, *, head: bool = True) -> torch.Tensor:
        """Teacher-forced logits [B, L, V] (float32) for targets ``codes`` [B, L]; input = class + codes[:, :-1].

        ``head=False``: the final norm's output [B, L, dim] instead, for a loss that applies ``self.output`` itself
        chunk by chunk (:func:`codeprior.train.chunked.chunked_head_loss`); a keyword of ``forward`` so it passes
        through DDP and ``torch.compile`` wrappers."""
        _check_inputs(codes, labels, self.config.num_classes, "codes")
        if codes.shape[1] > self.config.block_size:
            raise CodepriorError(f"model: sequence length {codes.shape[1]} > block_size {self.config.block_size}")
        h = self.forward_hidden(self.embed(codes[:, :-1], labels), causal=True)
        return self.output(h).float() if head else h

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        seq_len: int | None = None,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        cfg_schedule: str | CfgSchedule | None = None,
        logits_processor: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor] | None = None,
        compile: bool = False,
    ) -> torch.Tensor:
        """Sample codes [B, seq_len] for class ``labels`` [B] with a static KV cache.

        Prefills the class token, then decodes one token at a time (:mod:`codeprior.decoding.ar`). Classifier-free
        guidance runs as one doubled batch ``[cond; null]`` mixed as ``uncond + s * (cond - uncond)`` whenever
        ``cfg_scale != 1`` or a ``cfg_schedule`` is given ("constant", "linear" = 1 -> cfg_scale over the sequence,
        or ``f(i, seq_len) -> scale``); the sampled token is fed to both halves. ``logits_processor(logits [B, V],
        i, prefix [B, i]) -> logits`` runs after guidance, before sampling. ``generator``: see
        :func:`sample_logits` (a list gives per-sample reproducibility). ``compile``: run the one-token pass as a
        ``torch.compile``d fixed-shape step over static buffers (CUDA graphs on CUDA; compiled once per shape and
        kept). Works for coarse (cluster-vocabulary) models unchanged: they simply have ``vocab_size = k``.
        """
        from codeprior.decoding.ar import ar_generate  # the decoding package imports this module

        c = self.config
        labels, seq_len = check_sampling_inputs(
            labels, seq_len, c.block_size, c.num_classes, self.tok_embeddings.weight.device
        )
        was_training = self.training
        self.eval()
        try:
            return ar_generate(
                self,
                labels,
                seq_len,
                cfg_scale=cfg_scale,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
                cfg_schedule=cfg_schedule,
                logits_processor=logits_processor,
                compile=compile,
            )
        finally:
            self.train(was_training)
