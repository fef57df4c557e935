"""Hierarchical cluster-CE: token CE plus cluster CE at several nested levels of one prior.

``loss = CE(z, t) + sum_l w_l * CE(cluster_logits_l(z), cluster_l(t))`` over the levels of a multi-level prior
file (finest first, each a coarsening of the one before; ``codeprior prior --rates 2 4 8`` writes DCPE's dendrogram
cut at those rates, or k-means nested by clustering the centroids). With one level it is cluster-ce.

Each level runs the existing fused cluster-CE (:func:`codeprior.train.objectives.cluster_ce_loss`, one
``exp(x - rowmax)`` pass and a closed-form backward) with ``lam = L * w_l`` and is divided by ``L``: the L token
terms add up to one token CE, exactly, and each level's cluster term keeps its weight ``w_l``. The cost is L
fused passes (about L token CEs).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from codeprior.errors import CodepriorError
from codeprior.train.objective_traits import TRAITS
from codeprior.train.objectives import IGNORE_INDEX, REGISTRY, Objective, cluster_ce_loss

__all__ = ["hier_cluster_ce_loss", "HierClusterCEObjective"]


def hier_cluster_ce_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    levels: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    ks: Sequence[int] | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    return_cluster_logits: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``CE(z, t) + sum_l weights[l] * clusterCE_l`` of ``logits [..., V]`` for the token-to-cluster maps ``levels``
    (each ``[V]``, finest first). ``ks``: clusters per level (avoids a device sync). ``ignore_index`` / ``reduction``
    as ``F.cross_entropy``. ``parts``: detached ``token_loss`` and ``cluster_loss`` (the weighted sum of the levels'
    cluster CEs, so ``loss = token_loss + cluster_loss``) and, on request, the finest level's ``cluster_logits``.
    """
    if not levels or len(levels) != len(weights):
        raise CodepriorError(f"hier-cluster-ce: {len(weights)} weight(s) for {len(levels)} level(s)")
    L = len(levels)
    total: torch.Tensor | None = None
    cluster: torch.Tensor | None = None
    parts: dict[str, torch.Tensor] = {}
    for i, (ttc, w) in enumerate(zip(levels, weights)):
        loss_l, p = cluster_ce_loss(
            logits,
            targets,
            ttc,
            lam=L * float(w),
            k=None if ks is None else int(ks[i]),
            ignore_index=ignore_index,
            reduction=reduction,
            return_cluster_logits=return_cluster_logits and i == 0,
        )
        total = loss_l / L if total is None else total + loss_l / L
        cluster = float(w) * p["cluster_loss"] if cluster is None else cluster + float(w) * p["cluster_loss"]
        if i == 0:
            parts = {"token_loss": p["token_loss"]}
            if return_cluster_logits:
                parts["cluster_logits"] = p["cluster_logits"]
    assert total is not None and cluster is not None
    parts["cluster_loss"] = cluster
    return total, parts


class HierClusterCEObjective(Objective):
    """Token CE + weighted cluster CE at every level of the prior (:func:`hier_cluster_ce_loss`)."""

    traits = TRAITS["hier-cluster-ce"]
    levels: tuple[torch.Tensor, ...] = ()
    ks: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()

    def prepare(self, cfg: Any, manifest: dict[str, Any], prior: Any, device: torch.device) -> HierClusterCEObjective:
        """A copy holding the prior's levels on ``device`` and their weights (``--level-weights``, else ``--lam``
        for every level); one-line error when the count of weights differs from the prior's levels."""
        if cfg.loss_chunk:
            raise CodepriorError("train: --loss-chunk is not supported with --objective hier-cluster-ce; use 0")
        levels = prior.levels
        weights = list(cfg.level_weights) or [float(cfg.lam)] * len(levels)
        if len(weights) != len(levels):
            ks = ", ".join(str(k) for k in prior.level_ks)
            raise CodepriorError(
                f"{cfg.prior}: --level-weights gives {len(weights)} weight(s) but the prior has {len(levels)} "
                f"level(s) (k = {ks})"
            )
        return self.with_levels([t.to(device) for t in levels], weights)

    def with_levels(self, levels: Sequence[torch.Tensor], weights: Sequence[float]) -> HierClusterCEObjective:
        """A copy using the token-to-cluster maps ``levels`` (finest first) with their cluster-CE ``weights``."""
        bound = copy.copy(self)
        bound.levels = tuple(levels)
        bound.ks = tuple(int(t.max()) + 1 for t in levels)
        bound.weights = tuple(float(w) for w in weights)
        return bound

    def describe(self) -> str:
        return "hier-cluster-ce: levels k = " + ", ".join(f"{k} (weight {w:g})" for k, w in zip(self.ks, self.weights))

    def loss(self, logits, codes, inputs, ttc, k, lam, want_cluster_logits, embeddings=None):
        if not self.levels:
            raise CodepriorError("hier-cluster-ce: the objective has no levels (call prepare() with the run's prior)")
        return hier_cluster_ce_loss(
            logits, codes, self.levels, self.weights, ks=self.ks, return_cluster_logits=want_cluster_logits
        )

    def chunked_loss(self, h, weight, codes, inputs, ttc, k, lam, want, chunk):
        raise CodepriorError(
            "train: --loss-chunk is not supported with --objective hier-cluster-ce; use --loss-chunk 0"
        )


REGISTRY["hier-cluster-ce"] = HierClusterCEObjective()
