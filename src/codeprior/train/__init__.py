"""codeprior.train: the objective registry (token, cluster-ce, coarse, refine), the one training config
(:mod:`codeprior.train.config`) and one training loop for GPT and refine models.

Every name loads on first use (``from codeprior.train import train, TrainConfig`` imports the trainer then), so
the torch-free modules (:mod:`codeprior.train.config`, :mod:`codeprior.train.objective_traits`) import without
torch: ``codeprior train --help`` is built from them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from codeprior.utils.lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports("codeprior.train", _HOME, globals(), __all__)
