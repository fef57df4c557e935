"""Training objectives: functions of (logits, targets, prior).

* ``token``: LlamaGen's cross-entropy over all N codes (the baseline).
* ``cluster-ce``: IAR's cluster-oriented loss generalised to any partition: token CE plus ``lam`` times the CE of
  the *cluster logits*, the log-sum-exp of the token logits within each cluster (softmax of the cluster logits is
  the summed token probability of each cluster). Works for unequal clusters, singletons and non-contiguous clusters
  through a ``token_to_cluster`` map: no codebook permutation, unlike IAR's reshape.
* ``coarse``: the AR model's vocabulary is the k clusters (codes mapped through the prior); CE over k.

The loss functions themselves (fused cluster CE, ``ignore_index`` / ``reduction`` as in
``F.cross_entropy``) live in :mod:`codeprior.train.losses` and are re-exported here.
"""

from __future__ import annotations

from typing import Any, cast

import torch

from codeprior.errors import CodepriorError
from codeprior.train.losses import (
    IGNORE_INDEX,
    REDUCTIONS,
    _accuracy,
    accuracy,
    cluster_ce_loss,
    cluster_logits,
    coarse_loss,
    to_coarse,
    token_loss,
)
from codeprior.train.objective_traits import (
    ALL_OBJECTIVES,
    OBJECTIVES,
    TRAITS,
    ObjectiveTraits,
    register_traits,
    unregister_traits,
)

__all__ = [
    "OBJECTIVES",
    "ALL_OBJECTIVES",
    "REGISTRY",
    "Objective",
    "get_objective",
    "register_objective",
    "unregister_objective",
    "token_loss",
    "cluster_logits",
    "cluster_ce_loss",
    "coarse_loss",
    "to_coarse",
    "accuracy",
    "objective_metrics",
    "IGNORE_INDEX",
    "REDUCTIONS",
]


def objective_metrics(
    objective: str,
    logits: torch.Tensor,
    targets: torch.Tensor,
    token_to_cluster: torch.Tensor | None = None,
    k: int | None = None,
    cl_logits: torch.Tensor | None = None,
) -> dict[str, float]:
    """Metrics comparable across objectives (:meth:`Objective.metrics` of ``objective``).

    ``targets`` are always the *fine* codes. ``token_acc``: argmax token == target (not defined for ``coarse``).
    ``cluster_acc``: argmax cluster == cluster(target): for ``token``/``cluster-ce`` the argmax of
    :func:`cluster_logits` (the most probable cluster, not the cluster of the most probable token), for ``coarse``
    the argmax over the model's k outputs. Needs ``token_to_cluster`` except for ``token``.
    """
    return get_objective(objective).metrics(logits, targets, token_to_cluster, k, cl_logits)


# ------------------------------------------------------------------------------------------------ registry
#: (loss, parts, logits) of one micro-batch; logits None on the chunked path
Step = tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]


class Objective:
    """One training objective: what the model reads and predicts, its loss, and the metrics it logs.

    A subclass sets ``traits`` (an entry of :data:`~codeprior.train.objective_traits.TRAITS`, the torch-free list
    of objectives); its fields become class attributes: ``name``, ``model_kind`` (``gpt`` or ``refine``),
    ``needs_prior``, ``coarse_inputs`` (the model reads cluster ids, not fine codes), ``coarse_outputs`` (it
    predicts cluster ids: its vocabulary is k), ``loss_parts`` (the extra loss terms it logs, metrics.csv columns).
    """

    traits: ObjectiveTraits
    name: str
    model_kind: str
    needs_prior: bool
    coarse_inputs: bool
    coarse_outputs: bool
    loss_parts: tuple[str, ...]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        traits = cls.__dict__.get("traits")
        if traits is not None:
            for key, value in vars(traits).items():
                setattr(cls, key, value)

    def prepare(self, cfg: Any, manifest: dict[str, Any], prior: Any, device: torch.device) -> Objective:
        """The objective bound to one run (its settings, the shards' manifest, the loaded prior, the device): the
        instance itself, or a copy holding tables built once per run (snce's neighbours, hier-cluster-ce's levels)."""
        return self

    def describe(self) -> str | None:
        """A line for the run's log about what :meth:`prepare` built (None: nothing to say)."""
        return None

    @property
    def needs_embeddings(self) -> bool:
        """Its loss reads the encoder's stored output per position (``embeddings`` of :meth:`forward`)."""
        return False

    def vocab_size(self, num_codes: int, k: int | None) -> int:
        """Size of the model's output vocabulary for a codebook of ``num_codes`` and a prior of ``k`` clusters."""
        if self.coarse_outputs:
            assert k is not None, "a coarse-output objective needs a prior (k clusters)"
            return int(k)
        return int(num_codes)

    def loss(
        self,
        logits: torch.Tensor,
        codes: torch.Tensor,
        inputs: torch.Tensor,
        ttc: torch.Tensor | None,
        k: int | None,
        lam: float,
        want_cluster_logits: bool,
        embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, detached parts) of one micro-batch; ``codes`` are the fine codes, ``inputs`` what the model read;
        ``embeddings``: the encoder's output per position (only objectives with :attr:`needs_embeddings` get it)."""
        loss = token_loss(logits, codes)
        return loss, {"token_loss": loss.detach()}

    def forward(
        self,
        model: Any,
        codes: torch.Tensor,
        labels: torch.Tensor,
        ttc: torch.Tensor | None,
        k: int | None,
        lam: float,
        want_cluster_logits: bool = False,
        loss_chunk: int = 0,
        embeddings: torch.Tensor | None = None,
    ) -> Step:
        """(loss, parts, logits) of ``model`` on one micro-batch of fine ``codes`` and class ``labels``;
        ``parts["cluster_logits"]`` (for :meth:`metrics`) only with ``want_cluster_logits``.

        ``loss_chunk > 0`` (GPT objectives): the head and the loss run ``loss_chunk`` tokens at a time
        (:func:`codeprior.train.chunked.chunked_head_loss`, same loss and gradients) and no logits are returned
        (None); with ``want_cluster_logits`` the parts then hold ``token_pred`` (the argmax) for :meth:`metrics`.
        ``embeddings [B, L, D]``: the encoder's output per position, for objectives that read it
        (:attr:`needs_embeddings`)."""
        if self.coarse_inputs:
            assert ttc is not None, "a coarse-input objective needs a prior (token_to_cluster)"
            inputs = to_coarse(codes, ttc)
        else:
            inputs = codes
        if loss_chunk > 0 and self.model_kind == "gpt":
            from codeprior.train.distributed import unwrap_model

            h = model(inputs, labels, head=False)
            weight = cast(torch.Tensor, cast(torch.nn.Module, unwrap_model(model).output).weight)
            loss, parts = self.chunked_loss(h, weight, codes, inputs, ttc, k, lam, want_cluster_logits, loss_chunk)
            return loss, parts, None
        logits = model(inputs, labels)
        if embeddings is not None:
            loss, parts = self.loss(logits, codes, inputs, ttc, k, lam, want_cluster_logits, embeddings=embeddings)
        else:
            loss, parts = self.loss(logits, codes, inputs, ttc, k, lam, want_cluster_logits)
        return loss, parts, logits

    def chunked_loss(
        self,
        h: torch.Tensor,
        weight: torch.Tensor,
        codes: torch.Tensor,
        inputs: torch.Tensor,
        ttc: torch.Tensor | None,
        k: int | None,
        lam: float,
        want: bool,
        chunk: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`loss` from the hidden states ``h`` and the head ``weight``, ``chunk`` tokens at a time."""
        from codeprior.train.chunked import chunked_head_loss

        return chunked_head_loss(
            h, weight, codes, token_to_cluster=ttc if want else None, k=k, chunk=chunk, want_metrics=want
        )

    def metrics(
        self,
        logits: torch.Tensor | None,
        targets: torch.Tensor,
        token_to_cluster: torch.Tensor | None = None,
        k: int | None = None,
        cl_logits: torch.Tensor | None = None,
        pred: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """token_acc and (with a prior) cluster_acc of fine-code logits; see :func:`objective_metrics`.

        ``logits`` may be None when ``pred`` (their argmax) and, with a prior, ``cl_logits`` are given (the
        chunked loss's ``token_pred`` and ``cluster_logits``)."""
        out: dict[str, float] = {}
        with torch.no_grad():
            out["token_acc"] = float(_accuracy(logits, targets, pred))
            if token_to_cluster is not None:
                if cl_logits is None:
                    assert logits is not None, "metrics: cluster_acc needs the logits or the cluster logits"
                    cl_logits = cluster_logits(logits, token_to_cluster, k)
                out["cluster_acc"] = float(accuracy(cl_logits, to_coarse(targets, token_to_cluster)))
        return out


class TokenObjective(Objective):
    """LlamaGen's CE over all N codes (a prior, if given, only adds cluster accuracy)."""

    traits = TRAITS["token"]


class ClusterCEObjective(Objective):
    """Token CE + ``lam`` x cluster CE (:func:`cluster_ce_loss`)."""

    traits = TRAITS["cluster-ce"]

    def loss(self, logits, codes, inputs, ttc, k, lam, want_cluster_logits, embeddings=None):
        return cluster_ce_loss(logits, codes, ttc, lam, k=k, return_cluster_logits=want_cluster_logits)

    def chunked_loss(self, h, weight, codes, inputs, ttc, k, lam, want, chunk):
        from codeprior.train.chunked import chunked_head_loss

        return chunked_head_loss(h, weight, codes, token_to_cluster=ttc, k=k, lam=lam, chunk=chunk, want_metrics=want)


class CoarseObjective(Objective):
    """The model's vocabulary is the k clusters: it reads and predicts cluster ids."""

    traits = TRAITS["coarse"]

    def loss(self, logits, codes, inputs, ttc, k, lam, want_cluster_logits, embeddings=None):
        return coarse_loss(logits, inputs), {}

    def chunked_loss(self, h, weight, codes, inputs, ttc, k, lam, want, chunk):
        from codeprior.train.chunked import chunked_head_loss

        loss, parts = chunked_head_loss(h, weight, inputs, chunk=chunk, want_metrics=want)
        return loss, {n: v for n, v in parts.items() if n != "token_loss"}  # as loss(): no parts to log

    def metrics(self, logits, targets, token_to_cluster=None, k=None, cl_logits=None, pred=None):
        if token_to_cluster is None:
            raise CodepriorError("objectives: the coarse objective needs a prior")
        with torch.no_grad():
            return {"cluster_acc": float(_accuracy(logits, to_coarse(targets, token_to_cluster), pred))}


class RefineObjective(Objective):
    """The refine model: fine codes (CE over N) from the whole coarse sequence."""

    traits = TRAITS["refine"]


REGISTRY: dict[str, Objective] = {
    o.name: o for o in (TokenObjective(), ClusterCEObjective(), CoarseObjective(), RefineObjective())
}
# OBJECTIVES (``codeprior train``'s) and ALL_OBJECTIVES: imported above from the torch-free objective_traits


def register_objective(objective: Objective) -> Objective:
    """Register ``objective`` (an instance of an :class:`Objective` subclass): its traits in
    :data:`~codeprior.train.objective_traits.TRAITS` (CLI choices, config checks, pipeline wiring) and itself in
    :data:`REGISTRY` (the trainer). A new objective is one module with its class and this call."""
    register_traits(objective.traits)
    REGISTRY[objective.name] = objective
    return objective


def unregister_objective(name: str) -> None:
    """Undo :func:`register_objective` (tests that register a toy objective)."""
    REGISTRY.pop(name, None)
    unregister_traits(name)


def get_objective(name: str) -> Objective:
    """The registered objective called ``name`` (one-line error for an unknown name)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise CodepriorError(f"objectives: unknown objective {name!r} (known: {', '.join(REGISTRY)})") from None


# objectives in their own modules (issue 27) add themselves to REGISTRY on import; they import this module's names,
# all defined above
from codeprior.train import hierarchical, snce  # noqa: E402,F401  (in this order: TRAITS's)
