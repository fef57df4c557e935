"""The objective registry's names and traits, without torch: what each objective reads, predicts, needs and logs.

The one list of objectives. CLI ``choices`` (``codeprior train --help`` must not import torch) and config checks
read it here; :mod:`codeprior.train.objectives` gives each name its implementation (loss, forward, metrics), each
:class:`~codeprior.train.objectives.Objective` subclass taking its traits from :data:`TRAITS` by name.
Adding an objective: :func:`register_traits` here (or from your own module), then its class there.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ObjectiveTraits",
    "TRAITS",
    "OBJECTIVES",
    "ALL_OBJECTIVES",
    "OBJECTIVE_SETTINGS",
    "register_traits",
    "unregister_traits",
    "traits_of",
    "gpt_objectives",
    "all_objectives",
    "loss_parts",
]


@dataclass(frozen=True)
class ObjectiveTraits:
    """One objective's declarative side.

    ``model_kind``: ``gpt`` or ``refine`` (which model family it trains). ``needs_prior``: it cannot run without a
    prior. ``coarse_inputs``: the model reads cluster ids (the prior's k), not fine codes. ``coarse_outputs``: it
    predicts cluster ids (its vocabulary is k), so its samples need a refine model to become codes.
    ``loss_parts``: the extra loss terms it logs (metrics.csv columns). ``ema`` / ``loss_chunk`` / ``eval_samples``:
    the trainer's EMA weights, chunked loss and periodic sample evaluation apply to it (the pipeline turns them off
    otherwise).
    """

    name: str
    model_kind: str = "gpt"
    needs_prior: bool = True
    coarse_inputs: bool = False
    coarse_outputs: bool = False
    loss_parts: tuple[str, ...] = ()
    ema: bool = True
    loss_chunk: bool = True
    eval_samples: bool = True

    @property
    def needs_refine(self) -> bool:
        """Its samples are cluster ids: sampling (and the pipeline) pair it with a refine model."""
        return self.model_kind == "gpt" and self.coarse_outputs

    @property
    def samples_codes(self) -> bool:
        """A GPT objective whose samples are the tokenizer's codes (no refine model; ``--refine`` is refused)."""
        return self.model_kind == "gpt" and not self.coarse_outputs


#: every objective by name, in the order the CLI lists them
TRAITS: dict[str, ObjectiveTraits] = {}


def register_traits(traits: ObjectiveTraits) -> ObjectiveTraits:
    """Add ``traits`` to :data:`TRAITS` (its implementation subclasses ``Objective`` with ``traits = ...``)."""
    TRAITS[traits.name] = traits
    return traits


def unregister_traits(name: str) -> None:
    """Remove ``name`` from :data:`TRAITS` (tests that register a toy objective undo it with this)."""
    TRAITS.pop(name, None)


def traits_of(name: str | None) -> ObjectiveTraits | None:
    """The traits of objective ``name``, or None for None or an unknown name (an old or foreign checkpoint's)."""
    return TRAITS.get(name) if name is not None else None


def gpt_objectives() -> tuple[str, ...]:
    """The objectives of ``codeprior train`` and of pipeline variants (GPT models), as registered now."""
    return tuple(n for n, t in TRAITS.items() if t.model_kind == "gpt")


def all_objectives() -> tuple[str, ...]:
    """Every registered objective, as registered now."""
    return tuple(TRAITS)


def loss_parts() -> tuple[str, ...]:
    """Every loss term some registered objective logs, in registration order (the trainer's metrics columns)."""
    return tuple(dict.fromkeys(p for t in TRAITS.values() for p in t.loss_parts))


register_traits(ObjectiveTraits("token", needs_prior=False, loss_parts=("token_loss",)))
register_traits(ObjectiveTraits("cluster-ce", loss_parts=("token_loss", "cluster_loss")))
register_traits(ObjectiveTraits("coarse", coarse_inputs=True, coarse_outputs=True))
register_traits(
    ObjectiveTraits(
        "refine",
        model_kind="refine",
        coarse_inputs=True,
        loss_parts=("token_loss",),
        ema=False,
        loss_chunk=False,
        eval_samples=False,
    )
)
# issue 27: cluster-CE over nested levels (codeprior.train.hierarchical), soft-neighbour CE (codeprior.train.snce)
# (no chunked head + loss for them yet: --loss-chunk is refused, and the pipeline turns it off for their variants)
register_traits(ObjectiveTraits("hier-cluster-ce", loss_parts=("token_loss", "cluster_loss"), loss_chunk=False))
register_traits(ObjectiveTraits("snce", needs_prior=False, loss_parts=("token_loss",), loss_chunk=False))

#: training settings that belong to one objective (a pipeline variant may set them only for it); an objective
#: with ``level_weights`` trains on every level of a multi-level prior
OBJECTIVE_SETTINGS: dict[str, tuple[str, ...]] = {
    "hier-cluster-ce": ("level_weights",),
    "snce": ("snce_k", "snce_tau", "snce_source", "codebook"),
}

#: the built-in objectives of ``codeprior train`` (GPT models; ``refine`` is ``codeprior train-refine``) and all of
#: them, fixed at import; CLI choices and config checks call :func:`gpt_objectives` / :func:`all_objectives`, which
#: also see objectives registered later
OBJECTIVES = gpt_objectives()
ALL_OBJECTIVES = all_objectives()
