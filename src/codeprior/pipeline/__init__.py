"""The stage pipeline behind ``codeprior pipeline CONFIG.yaml`` and ``codeprior demo``.

A run is a folder ``RUN/`` with one sub-folder per stage (``RUN/<stage>/``), each holding that stage's outputs and a
``manifest.json`` (status, the stage's config, the hashes of its external inputs, the run ids of the upstream stages
it read, its metrics, seconds taken and the codeprior version). Data flows one way: a stage reads only its own
config, its external inputs and the outputs of the stages it declares as dependencies.

Re-running the same command skips a stage whose manifest says ``done`` with an unchanged *fingerprint* (its config,
external inputs and upstream run ids), resumes one left ``running`` / ``failed`` / ``interrupted``, and redoes one
whose fingerprint changed (and so everything downstream); ``force=[STAGE, ...]`` redoes the named stages and
everything downstream of them.

Modules:

- :mod:`~codeprior.pipeline.config`: the config schema (pydantic) and its validation (:func:`load_config`);
- :mod:`~codeprior.pipeline.engine`: the generic engine (:class:`Stage`, :func:`run_stages`, manifests, jobs);
- :mod:`~codeprior.pipeline.run_folder`: each stage's record of what it owns, and the checks that a run deletes or
  overwrites nothing else (foreign files, inputs inside the run folder);
- :mod:`~codeprior.pipeline.registry`: :class:`~codeprior.pipeline.registry.StageDef`, a stage's declaration (name,
  dependencies, config slice, report sections), and the registry of them in pipeline order;
- :mod:`~codeprior.pipeline.stages`: one module per stage, each with its ``run``, its typed outputs record (stored
  as the manifest's ``metrics``, :mod:`~codeprior.pipeline.outputs`), the ``FILES`` it writes, its report sections
  and its ``STAGE`` declaration (the package registers them);
- :mod:`~codeprior.pipeline.run`: :func:`build_stages` (the registered stages of a config) and :func:`run_pipeline`.
"""

from codeprior.pipeline.config import (
    DEMO_PRESETS,
    IDX_DATASETS,
    PRIOR_METHODS,
    ClassifierConfig,
    DataConfig,
    EvaluateConfig,
    PipelineConfig,
    PriorsConfig,
    RefineTrainConfig,
    SampleConfig,
    SubstitutionConfig,
    TokenizeConfig,
    TokenizerConfig,
    TorchrunConfig,
    TrainConfig,
    VariantConfig,
    config_from_dict,
    config_schema_markdown,
    config_to_dict,
    demo_config,
    demo_config_text,
    load_config,
    validate_config,
)
from codeprior.pipeline.engine import (
    MANIFEST,
    Stage,
    StageContext,
    StageResult,
    canonical,
    check_stages,
    downstream_closure,
    fingerprint,
    plan_stages,
    read_stage_manifest,
    run_stages,
)
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.registry import StageDef, register_stage, unregister_stage
from codeprior.pipeline.run import build_stages, environment, run_pipeline
from codeprior.pipeline.stages.classifier import ClassifierOutputs
from codeprior.pipeline.stages.common import describe_features
from codeprior.pipeline.stages.data import DataOutputs
from codeprior.pipeline.stages.evaluate import EvaluateOutputs
from codeprior.pipeline.stages.priors import PriorsOutputs
from codeprior.pipeline.stages.report import ReportOutputs
from codeprior.pipeline.stages.sample import SampleOutputs
from codeprior.pipeline.stages.substitution import SubstitutionOutputs
from codeprior.pipeline.stages.tokenize import TokenizeOutputs
from codeprior.pipeline.stages.tokenizer import TokenizerOutputs
from codeprior.pipeline.stages.tokenizer_eval import TokenizerEvalOutputs
from codeprior.pipeline.stages.train import TrainOutputs, refine_stage_name, torchrun_command, variant_runs

__all__ = [
    "DEMO_PRESETS",
    "IDX_DATASETS",
    "PRIOR_METHODS",
    "ClassifierConfig",
    "DataConfig",
    "EvaluateConfig",
    "PipelineConfig",
    "PriorsConfig",
    "RefineTrainConfig",
    "SampleConfig",
    "SubstitutionConfig",
    "TokenizeConfig",
    "TokenizerConfig",
    "TorchrunConfig",
    "TrainConfig",
    "VariantConfig",
    "config_from_dict",
    "config_schema_markdown",
    "config_to_dict",
    "demo_config",
    "demo_config_text",
    "load_config",
    "validate_config",
    "MANIFEST",
    "Stage",
    "StageContext",
    "StageResult",
    "canonical",
    "check_stages",
    "downstream_closure",
    "fingerprint",
    "plan_stages",
    "read_stage_manifest",
    "run_stages",
    "StageOutputs",
    "StageDef",
    "register_stage",
    "unregister_stage",
    "DataOutputs",
    "TokenizerOutputs",
    "TokenizeOutputs",
    "PriorsOutputs",
    "ClassifierOutputs",
    "TokenizerEvalOutputs",
    "SubstitutionOutputs",
    "TrainOutputs",
    "SampleOutputs",
    "EvaluateOutputs",
    "ReportOutputs",
    "build_stages",
    "environment",
    "run_pipeline",
    "describe_features",
    "refine_stage_name",
    "torchrun_command",
    "variant_runs",
]
