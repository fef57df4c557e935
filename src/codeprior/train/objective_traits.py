"""The objective registry's names and traits, without torch: what each objective reads, predicts, needs and logs.

The one list of objectives. CLI ``choices`` (``codeprior train --help`` must not import torch) and config checks
read it here; :mod:`codeprior.train.objectives` gives each name its implementation (loss, forward, metrics), each
:class:`~codeprior.train.objectives.Objective` subclass taking its traits from :data:`TRAITS` by name.
Adding an objective: :func:`register_traits` here (or from your own module), then its class there.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ObjectiveTraits", "TRAITS", "OBJECTIVES", "ALL_OBJECTIVES", "OBJECTIVE_SETTINGS", "register_traits"]


@dataclass(frozen=True)
class ObjectiveTraits:
    """One objective's declarative side.

    ``model_kind``: ``gpt`` or ``refine`` (which model family it trains). ``needs_prior``: it cannot run without a
    prior. ``coarse_inputs``: the model reads cluster ids (the prior's k), not fine codes. ``coarse_outputs``: it
    predicts cluster ids (its vocabulary is k). ``loss_parts``: the extra loss terms it logs (metrics.csv columns).
    """

    name: str
    model_kind: str = "gpt"
    needs_prior: bool = True
    coarse_inputs: bool = False
    coarse_outputs: bool = False
    loss_parts: tuple[str, ...] = ()


#: every objective by name, in the order the CLI lists them
TRAITS: dict[str, ObjectiveTraits] = {}


def register_traits(traits: ObjectiveTraits) -> ObjectiveTraits:
    """Add ``traits`` to :data:`TRAITS` (its implementation subclasses ``Objective`` with ``traits = ...``)."""
    TRAITS[traits.name] = traits
    return traits


register_traits(ObjectiveTraits("token", needs_prior=False, loss_parts=("token_loss",)))
register_traits(ObjectiveTraits("cluster-ce", loss_parts=("token_loss", "cluster_loss")))
register_traits(ObjectiveTraits("coarse", coarse_inputs=True, coarse_outputs=True))
register_traits(ObjectiveTraits("refine", model_kind="refine", coarse_inputs=True, loss_parts=("token_loss",)))
# issue 27: cluster-CE over nested levels (codeprior.train.hierarchical), soft-neighbour CE (codeprior.train.snce)
register_traits(ObjectiveTraits("hier-cluster-ce", loss_parts=("token_loss", "cluster_loss")))
register_traits(ObjectiveTraits("snce", needs_prior=False, loss_parts=("token_loss",)))

#: training settings that belong to one objective (a pipeline variant may set them only for it); an objective
#: with ``level_weights`` trains on every level of a multi-level prior
OBJECTIVE_SETTINGS: dict[str, tuple[str, ...]] = {
    "hier-cluster-ce": ("level_weights",),
    "snce": ("snce_k", "snce_tau", "snce_source", "codebook"),
}

#: objectives of ``codeprior train`` (GPT models); ``refine`` is ``codeprior train-refine``
OBJECTIVES = tuple(n for n, t in TRAITS.items() if t.model_kind == "gpt")
ALL_OBJECTIVES = tuple(TRAITS)
