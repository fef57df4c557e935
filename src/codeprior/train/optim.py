"""Optimiser pieces shared by the three training loops (GPT/refine trainer, VQ tokenizer, classifier).

* :func:`decay_param_groups`: AdamW parameter groups, weight decay on matrices/embeddings (>= 2 dims) only;
* :func:`warmup_cosine`: linear warmup then cosine decay to a floor (the trainer's ``--schedule cosine`` and the
  VQ tokenizer's schedule);
* :func:`lr_factor`: the trainer's multiplier of ``--lr`` per step (warmup, then constant or cosine).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

__all__ = ["decay_param_groups", "warmup_cosine", "lr_factor", "param_groups"]


def decay_param_groups(
    named: Iterable[tuple[str, torch.nn.Parameter]],
    weight_decay: float,
    decays: Callable[[str, torch.nn.Parameter], bool] | None = None,
) -> list[dict[str, Any]]:
    """Two AdamW groups ``[decay, no decay]``; ``decays(name, p)`` (default ``p.dim() >= 2``) picks the first.

    Parameters without ``requires_grad`` are left out. Group order and parameter order follow ``named``, so the
    optimizer state of a run is the same whichever loop builds it.
    """
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for n, p in named:
        if not p.requires_grad:
            continue
        (decay if (decays(n, p) if decays is not None else p.dim() >= 2) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


_WRAPPERS = re.compile(r"(_orig_mod\.|_fsdp_wrapped_module\.|_checkpoint_wrapped_module\.|^module\.)")


def param_groups(model: nn.Module, wrapped: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """LlamaGen: weight decay on parameters with >= 2 dims (matrices, embeddings), none on norms/biases.

    Dimensions are read from the bare model (FSDP flattens/shards them) and matched by cleaned names.
    """
    dims = {n: p.dim() for n, p in model.named_parameters()}
    return decay_param_groups(
        wrapped.named_parameters(), weight_decay, lambda n, p: dims.get(_WRAPPERS.sub("", n), p.dim()) >= 2
    )


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float, peak: float = 1.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based): ``peak * (step + 1) / warmup_steps`` during warmup, then
    cosine from ``peak`` to ``peak * min_ratio`` at ``total_steps`` (and flat after it)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0))))


def lr_factor(step: int, cfg: Any, total: int) -> float:
    """Multiplier of ``cfg.lr`` for optimizer step ``step`` (0-based): linear warmup, then constant or cosine."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    return warmup_cosine(step, cfg.warmup_steps, total, cfg.min_lr_ratio)
