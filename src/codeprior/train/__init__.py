"""codeprior.train: the objective registry (token, cluster-ce, coarse, refine), the one training config
(:mod:`codeprior.train.config`) and one training loop for GPT and refine models.

Heavy modules load lazily: ``from codeprior.train import train, TrainConfig`` imports the trainer on first use.
"""

from __future__ import annotations

from typing import Any

from codeprior.train.objectives import (
    ALL_OBJECTIVES,
    OBJECTIVES,
    REGISTRY,
    Objective,
    accuracy,
    cluster_ce_loss,
    cluster_logits,
    coarse_loss,
    get_objective,
    objective_metrics,
    to_coarse,
    token_loss,
)

__all__ = [
    "ALL_OBJECTIVES",
    "OBJECTIVES",
    "REGISTRY",
    "Objective",
    "TrainConfig",
    "get_objective",
    "accuracy",
    "cluster_ce_loss",
    "cluster_logits",
    "coarse_loss",
    "objective_metrics",
    "to_coarse",
    "token_loss",
    "train",
]


def __getattr__(name: str) -> Any:
    if name == "TrainConfig":
        from codeprior.train.config import TrainConfig

        return TrainConfig
    if name in ("train", "find_latest_checkpoint"):
        from codeprior.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'codeprior.train' has no attribute {name!r}")
