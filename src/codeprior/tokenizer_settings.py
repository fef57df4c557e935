"""Settings of ``codeprior tokenizer train``: :class:`TrainSettings` and the named ``SCHEDULES``, without torch
(``codeprior tokenizer train --help`` lists the schedules; the training loop is :mod:`codeprior.tokenizer_train`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from codeprior.errors import CodepriorError

__all__ = ["SCHEDULES", "TrainSettings", "make_settings"]


@dataclass
class TrainSettings:
    """Optimisation settings of ``codeprior tokenizer train`` (recorded in checkpoints as ``args``)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    l1_weight: float = 0.0
    codebook_weight: float = 1.0
    restart_every: int = 50
    restart_until: float = 0.9  # fraction of the schedule after which no code is restarted (lets codes settle)
    restart_noise: float = 0.01
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50
    eval_batch_size: int = 500
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise CodepriorError("tokenizer train: --steps and --batch-size must be positive")
        if not self.lr > 0:
            raise CodepriorError(f"tokenizer train: --lr must be positive, got {self.lr}")
        if self.ckpt_every < 1 or self.restart_every < 1 or self.log_every < 1:
            raise CodepriorError("tokenizer train: checkpoint/restart/log intervals must be positive")


# Named schedules: "full" is the quality target (<= 20 min on 2 cores), "demo" fits the end-to-end demo budget.
SCHEDULES: dict[str, dict[str, Any]] = {
    "full": dict(steps=1500, batch_size=64, lr=1e-3, warmup_steps=100, restart_every=50),
    "demo": dict(steps=400, batch_size=64, lr=2e-3, warmup_steps=40, restart_every=20),
}


def make_settings(schedule: str = "full", **overrides: Any) -> TrainSettings:
    """:class:`TrainSettings` of a named schedule (``full`` | ``demo``) with ``None``-skipping overrides."""
    if schedule not in SCHEDULES:
        raise CodepriorError(f"tokenizer train: unknown --schedule {schedule!r} (known: {', '.join(SCHEDULES)})")
    known = {f.name for f in dataclasses.fields(TrainSettings)}
    bad = sorted(k for k, v in overrides.items() if v is not None and k not in known)
    if bad:
        raise CodepriorError(f"tokenizer train: unknown setting(s) {', '.join(bad)}")
    values = {**SCHEDULES[schedule], **{k: v for k, v in overrides.items() if v is not None}}
    s = TrainSettings(**values)
    s.validate()
    return s
