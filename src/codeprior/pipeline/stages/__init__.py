"""One module per stage, each declaring its ``STAGE`` (:class:`codeprior.pipeline.registry.StageDef`: name,
dependencies, config slice, report sections), registered here in pipeline order: a new stage is one module plus one
entry in :data:`BUILTIN` (or a :func:`~codeprior.pipeline.registry.register_stage` call of its own)."""

from codeprior.pipeline.registry import StageDef, register_stage
from codeprior.pipeline.stages import (
    classifier,
    data,
    evaluate,
    priors,
    report,
    sample,
    substitution,
    tokenize,
    tokenizer,
    tokenizer_eval,
    train,
)

#: the built-in stages in pipeline order, which is also the scheduling priority under ``jobs > 1`` (ready stages start
#: in this order): the AR trainings need only the codes and the prior, so they come before the classifier, and the
#: refine models train beside it; the report comes last and reads every stage before it
BUILTIN: tuple[StageDef, ...] = (
    data.STAGE,
    tokenizer.STAGE,
    priors.STAGE,
    tokenize.STAGE,
    train.STAGE,
    classifier.STAGE,
    train.REFINE_STAGE,
    tokenizer_eval.STAGE,
    substitution.STAGE,
    sample.STAGE,
    evaluate.STAGE,
    report.STAGE,
)
for _decl in BUILTIN:
    register_stage(_decl)
