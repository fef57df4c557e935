"""codeprior.train: the objective registry (token, cluster-ce, coarse, refine), the one training config
(:mod:`codeprior.train.config`) and one training loop for GPT and refine models.

Every name loads on first use (``from codeprior.train import train, TrainConfig`` imports the trainer then), so
the torch-free modules (:mod:`codeprior.train.config`, :mod:`codeprior.train.objective_traits`) import without
torch: ``codeprior train --help`` is built from them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from codeprior.train.config import TrainConfig
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
    from codeprior.train.trainer import find_latest_checkpoint, train

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
    "find_latest_checkpoint",
]

#: public name -> the module that defines it (loaded on first access)
_HOME = {
    **dict.fromkeys(
        (
            "ALL_OBJECTIVES",
            "OBJECTIVES",
            "REGISTRY",
            "Objective",
            "get_objective",
            "accuracy",
            "cluster_ce_loss",
            "cluster_logits",
            "coarse_loss",
            "objective_metrics",
            "to_coarse",
            "token_loss",
        ),
        "objectives",
    ),
    "TrainConfig": "config",
    "train": "trainer",
    "find_latest_checkpoint": "trainer",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'codeprior.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"codeprior.train.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
