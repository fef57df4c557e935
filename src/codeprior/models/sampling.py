"""Sampling helpers shared by AR decoding, speculative decoding and the refine sampler.

Top-k / top-p filtering, per-sample uniforms (each sample draws from its own generator, so results do not depend on
batch composition), inverse-CDF sampling from logits, and the CFG-scale schedules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from codeprior.errors import CodepriorError

__all__ = [
    "check_sampling_inputs",
    "filter_logits",
    "uniforms",
    "sample_logits",
    "CfgSchedule",
    "cfg_scale_at",
    "NonFiniteLogits",
]


class NonFiniteLogits(CodepriorError):
    """The model produced NaN / inf logits while sampling (diverged weights, or an overflow): the draw would be
    garbage (identical grey images), so sampling stops. ``stage`` is ``"gpt"`` or ``"refine"`` (which checkpoint
    the caller names); the message names the token index."""

    def __init__(self, message: str, stage: str = "gpt") -> None:
        super().__init__(message)
        self.stage = stage


# --------------------------------------------------------------------------------------------------
# Sampling helpers
# --------------------------------------------------------------------------------------------------


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering over the last axis; removed entries become ``-inf``.

    Top-p keeps the smallest prefix of the sorted distribution whose mass exceeds ``top_p`` (the first token
    always kept), as in HF/LlamaGen's ``top_k_top_p_filtering``.
    """
    V = logits.shape[-1]
    if top_k and 0 < top_k < V:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove_sorted = cum > top_p
        remove_sorted[..., 1:] = remove_sorted[..., :-1].clone()
        remove_sorted[..., 0] = False
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def uniforms(shape: tuple[int, ...], generator: Any, device: torch.device) -> torch.Tensor:
    """U[0, 1) draws of ``shape``; a list of generators draws row ``i`` (first axis) from generator ``i`` only."""
    if generator is None:
        return torch.rand(shape, device=device)
    if isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, device=generator.device).to(device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise CodepriorError(f"sampling: got {len(gens)} generators for a batch of {shape[0]}")
    rows = [torch.rand(shape[1:], generator=g, device=g.device).to(device) for g in gens]
    return torch.stack(rows, 0)


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Draw one index per row of ``logits`` [..., V] -> LongTensor [...].

    ``temperature == 0`` is greedy argmax. Otherwise logits / temperature, top-k/top-p filtering, softmax, and
    an inverse-CDF draw with one uniform per row: ``generator`` is a ``torch.Generator`` (shared), or a list with
    one generator per entry of the first axis, so that row ``i``'s draw depends only on generator ``i`` (sample
    results do not depend on how a batch is split). Generators may live on the CPU for a CUDA model.
    """
    if temperature < 0:
        raise CodepriorError(f"sampling: temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise CodepriorError(f"sampling: top_p must be in (0, 1], got {top_p}")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = logits.softmax(-1)
    cdf = probs.cumsum(-1)
    u = uniforms(tuple(logits.shape[:-1]), generator, logits.device)
    target = (u * cdf[..., -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf.contiguous(), target.contiguous(), right=True).squeeze(-1)
    idx = idx.clamp_(max=logits.shape[-1] - 1)
    # Float rounding at the very top of the CDF could land on a zero-probability tail entry: fall back to argmax.
    ok = probs.gather(-1, idx.unsqueeze(-1)).squeeze(-1) > 0
    return torch.where(ok, idx, probs.argmax(-1))


CfgSchedule = Callable[[int, int], float]


def cfg_scale_at(i: int, seq_len: int, cfg_scale: float, schedule: str | CfgSchedule | None) -> float:
    if schedule is None or schedule == "constant":
        return cfg_scale
    if schedule == "linear":  # 1 at the first token, cfg_scale at the last
        return 1.0 + (cfg_scale - 1.0) * (i / max(seq_len - 1, 1))
    if callable(schedule):
        return float(schedule(i, seq_len))
    raise CodepriorError(f"sampling: unknown cfg_schedule {schedule!r} (constant, linear, or a callable)")


# --------------------------------------------------------------------------------------------------
# GPT
# --------------------------------------------------------------------------------------------------


def check_sampling_inputs(
    labels: Any, seq_len: int | None, block_size: int, num_classes: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """The checks every decoder (AR and speculative) makes before any work: ``seq_len`` (None = ``block_size``) in
    1..block_size and ``labels`` a 1-D integer tensor of classes in 0..num_classes (``num_classes`` = null class).
    Returns the labels as int64 on ``device`` and the sequence length."""
    n = block_size if seq_len is None else int(seq_len)
    if not 1 <= n <= block_size:
        raise CodepriorError(f"sampling: seq_len must be in 1..{block_size}, got {n}")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype.is_floating_point:
        raise CodepriorError(f"sampling: labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > num_classes):
        raise CodepriorError(f"sampling: labels must be in 0..{num_classes} ({num_classes} = null class)")
    return labels.to(device=device, dtype=torch.long), n
