"""The pipeline's config schema (pydantic v2 models) and its loading, with one-line errors naming file and key.

Every section is a pydantic model with ``extra="forbid"`` and strict types; each setting is defined once, with its
default and help text (the ``Field`` description, which ``codeprior pipeline --help-config`` prints). Pydantic's
:class:`~pydantic.ValidationError` is translated into codeprior's one-line messages
(``cfg.yaml: train.stepz: unknown key (allowed: ...)``, ``cfg.yaml: train.steps: expected an integer, got 'ten'``),
raised as :class:`~codeprior.errors.CodepriorError` (exit code 2). How a section is made (strict base, renamed
keys, embedded settings records) is :mod:`codeprior.pipeline.sections`. Checks across fields (variant names, prior
references, value ranges, dataset-dependent requirements) run after the types, in
:func:`codeprior.pipeline.validation.validate_config`; the translation of pydantic's errors lives there too.
"""

from __future__ import annotations

import json
import os
import types
import typing
from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic_core import PydanticUndefined

from codeprior.classifier_settings import ClassifierConfig as ClassifierSettings
from codeprior.decoding.settings import DecoderSettings, SampleSettings
from codeprior.errors import CodepriorError
from codeprior.evaluate_settings import EvaluateSettings
from codeprior.pipeline.sections import (
    DirPath,
    FilePath,
    _Embedding,
    _Optional,
    _record_values,
    _RecordSection,
    _Section,
    embeds,
    record_section,
)
from codeprior.pipeline.validation import IDX_DATASETS, PRIOR_METHODS, first_error, validate_config
from codeprior.tokenize_settings import TokenizeSettings, default_batch_size
from codeprior.train.config import config_fields
from codeprior.utils.settings import rename_old_keys

__all__ = [
    "DataConfig",
    "TokenizerConfig",
    "TokenizeConfig",
    "ClassifierConfig",
    "PriorsConfig",
    "SubstitutionConfig",
    "TorchrunConfig",
    "VariantConfig",
    "TrainConfig",
    "RefineTrainConfig",
    "SampleConfig",
    "EvaluateConfig",
    "PipelineConfig",
    "IDX_DATASETS",
    "PRIOR_METHODS",
    "config_from_dict",
    "load_config",
    "parse_yaml",
    "validate_config",
    "config_to_dict",
    "fingerprint_dict",
    "embeds",
    "config_schema_markdown",
    "DEMO_PRESETS",
    "demo_config_text",
    "demo_config",
]


class DataConfig(_Section):
    """The image dataset: Fashion-MNIST / MNIST from their IDX files, or an image folder (one subfolder per class)."""

    dataset: str = Field(
        default="fashion-mnist",
        description="fashion-mnist, mnist, or an image folder with train/ and "
        "val/ subfolders (one subfolder per class in each)",
    )
    data_dir: DirPath | None = Field(
        default=None, description="folder holding the IDX files (default: /usr/share/datasets/<name>)"
    )
    image_size: int | None = Field(
        default=None, description="resize/center-crop size for image folders (default 256, as LlamaGen)"
    )


class TokenizerConfig(_Section):
    """The VQ tokenizer: trained here (``checkpoint: null``) or reused from a checkpoint (LlamaGen layout)."""

    old_keys: ClassVar[dict[str, str]] = {"eval_images": "num_images"}

    checkpoint: FilePath | None = Field(
        default=None, description="existing VQ checkpoint to use instead of training one"
    )
    model: str = Field(
        default="VQ-fmnist",
        description="VQ config name from codeprior.models.vq.VQ_CONFIGS (for a given "
        "LlamaGen checkpoint: the config it was trained with, e.g. VQ-16)",
    )
    schedule: str = Field(
        default="full", description="codeprior.tokenizer_train schedule: full (quality target) or demo (fast)"
    )
    steps: int | None = Field(default=None, description="training steps (null: the schedule's)")
    batch_size: int | None = Field(default=None, description="training batch size (null: the schedule's)")
    lr: float | None = Field(default=None, description="learning rate (null: the schedule's)")
    num_recon: int = Field(default=16, description="test images shown as reconstructions in the report")
    num_images: int = Field(
        default=10000,
        description="test images for the tokenizer evaluation (rFID, PSNR, classifier accuracy; "
        "tokenizer eval --num-images)",
    )


@embeds(TokenizeSettings, added=("limit", "store_embeddings"))
class TokenizeConfig(_RecordSection):
    """Pre-tokenisation of the dataset into code shards: the settings of ``codeprior tokenize``
    (:class:`codeprior.tokenize_settings.TokenizeSettings`)."""


#: the classifier record's fields the pipeline sets itself (from the data, the run's seed) or leaves to tests
CLASSIFIER_FIXED = (
    "channels",
    "image_size",
    "num_classes",
    "widths",
    "feature_dim",
    "dropout",
    "max_train",
    "max_steps",
    "seed",
)


@embeds(ClassifierSettings, exclude=CLASSIFIER_FIXED, added=("lr", "weight_decay", "label_smoothing", "flip"))
class ClassifierConfig(_Embedding):
    """The in-project classifier whose features define FID/KID/IS/PRDC here (no Inception weights offline), with
    the training settings of ``codeprior classifier train`` (:class:`codeprior.classifier_settings.ClassifierConfig`;
    the seed is the run's)."""

    checkpoint: FilePath | None = Field(
        default=None, description="existing classifier checkpoint to use instead of training one"
    )
    use_cache: bool = Field(
        default=True,
        description="reuse the classifier cached by `codeprior classifier train` when "
        "its config and data hashes match (read only)",
    )
    inception_weights: FilePath | None = Field(
        default=None, description="pt_inception-2015-12-05 weights: standard Inception FID/IS instead"
    )

    def settings(self, seed: int) -> ClassifierSettings:
        """The classifier record of this section and the run's ``seed``."""
        return ClassifierSettings(**_record_values(self), seed=seed)


class PriorsConfig(_Optional):
    """Codebook priors extracted from the tokenizer's codebook (same k for every method)."""

    methods: list[str] = Field(
        default_factory=lambda: ["kmeans", "dcpe"], description="methods to extract (dcpe, kmeans, balanced-kmeans)"
    )
    k: int | None = Field(default=None, description="clusters per prior (give k or compression_rate)")
    compression_rate: float | None = Field(
        default=None,
        description="k = codebook size / compression_rate (DCPE's released setting: 2; null: 2 unless k is given)",
    )
    normalize: bool = Field(
        default=True, description="cluster L2-normalised codes (what the quantizer compares); false = raw vectors"
    )
    levels: list[float] | None = Field(
        default=None,
        description="compression rates of coarser levels (e.g. [4, 8]) that the dcpe and kmeans prior files also "
        "carry, nested under the first (for hier-cluster-ce variants); null: one level",
    )

    _LATER = ("levels",)


class SubstitutionConfig(_Section):
    """The prior substitution test: replace every code by a random member of its cluster and measure the damage."""

    enabled: bool = Field(default=True, description="run the substitution test")
    num_images: int = Field(default=1000, description="test images used")
    draws: int = Field(default=3, description="random substitutions averaged")


class TorchrunConfig(_Section):
    """Launch the training stages with ``torchrun`` (DDP/FSDP) instead of in-process."""

    nproc_per_node: int = Field(default=1, description="processes (GPUs) per node")
    nnodes: int = Field(default=1, description="number of nodes")
    node_rank: int = Field(default=0, description="this node's rank")
    master_addr: str = Field(default="127.0.0.1", description="rendezvous address (multi-node)")
    master_port: int = Field(default=29500, description="rendezvous port")


_TRAINER = {f["name"]: f for f in config_fields()}
_SAME: Any = object()


def _trainer(name: str, default: Any = _SAME, help: str | None = None) -> Any:
    """A pipeline field that is the trainer's setting ``name`` (:class:`codeprior.train.config.TrainConfig`).

    Its help text is the trainer's (``help`` only where the pipeline gives the setting a different meaning); its
    default is the trainer's unless ``default`` says otherwise: the pipeline's deviations stand at the field.
    """
    f = _TRAINER[name]
    value = f.get("default") if default is _SAME else default
    return Field(default=value, description=help or f["help"])


class VariantConfig(_Optional):
    """One AR training run: an objective, and for cluster-ce / coarse the prior it uses."""

    name: str = Field(description="variant name (stage folders train-<name>, sample-<name>)")
    objective: str = Field(default="token", description="training objective (codeprior.train.objective_traits)")
    prior: str | None = Field(default=None, description="prior method (one of priors.methods) for cluster-ce / coarse")
    lam: float = Field(default=1.0, description="weight of the cluster CE term (cluster-ce)")
    level_weights: list[float] | None = _trainer("level_weights", None)
    snce_k: int | None = _trainer("snce_k", None)
    snce_tau: float | None = _trainer("snce_tau", None)
    snce_source: Literal["code", "encoder"] | None = _trainer("snce_source", None)

    _LATER = ("level_weights", "snce_k", "snce_tau", "snce_source")

    def trainer_settings(self) -> dict[str, Any]:
        """The objective's own trainer settings this variant sets (the rest keep the trainer's defaults)."""
        return {k: getattr(self, k) for k in self._LATER if getattr(self, k) is not None}


def _default_variants() -> list[VariantConfig]:
    return [
        VariantConfig(name="token", objective="token"),
        VariantConfig(name="cluster-ce-dcpe", objective="cluster-ce", prior="dcpe"),
        VariantConfig(name="coarse-dcpe", objective="coarse", prior="dcpe"),
    ]


class TrainConfig(_Section):
    """AR training, shared by all variants (same model, data, steps and seed, so runs compare).

    Each field below that the trainer also has is the trainer's setting (:class:`codeprior.train.config.TrainConfig`:
    the same name, its help, and its default unless the field names another). ``steps`` and ``batch_size`` are the
    old spellings of ``max_steps`` and ``global_batch``.
    """

    old_keys: ClassVar[dict[str, str]] = {"steps": "max_steps", "batch_size": "global_batch"}

    model: str = _trainer("model")
    variants: list[VariantConfig] = Field(default_factory=_default_variants, description="the runs to train")
    max_steps: int = _trainer("max_steps", 1000)  # the trainer's is unset (give --max-steps or --epochs)
    global_batch: int = _trainer("global_batch")
    lr: float = _trainer("lr")
    warmup_steps: int = _trainer("warmup_steps", 50, "linear warm-up steps (then cosine decay)")
    weight_decay: float = _trainer("weight_decay")
    grad_accum: int = _trainer("grad_accum")
    ckpt_every: int = _trainer("ckpt_every")
    keep_ckpts: int = _trainer("keep_ckpts")
    eval_every: int = _trainer("eval_every", 250, "FID every N steps (0: only at the end)")
    eval_samples: int = Field(default=500, description="samples per FID evaluation during training")
    val_batches: int = _trainer("val_batches")
    seeds: int = Field(
        default=1,
        description="training seeds per variant (seed, seed + 1, ...; stages train-<name>, "
        "train-<name>-seed1, ...): the metrics show mean and spread over them",
    )
    ema: float = _trainer("ema")
    dropout: float | None = _trainer("dropout")
    compile: bool = _trainer("compile")
    loss_chunk: int = _trainer("loss_chunk")
    precision: Literal["auto", "fp32", "bf16"] = _trainer("precision")
    fsdp: bool = _trainer("fsdp", help="FSDP instead of DDP under torchrun (no FID during training then)")
    torchrun: TorchrunConfig | None = Field(
        default=None, description="launch training with torchrun (null: in-process)"
    )


class RefineTrainConfig(_Section):
    """The refine model of coarse-to-fine (fine codes from the coarse sequence); the trainer's settings."""

    old_keys: ClassVar[dict[str, str]] = {"steps": "max_steps", "batch_size": "global_batch"}

    model: str = _trainer("model", "Refine-tiny", "refine config name from codeprior.models.refine.REFINE_CONFIGS")
    max_steps: int = _trainer("max_steps", 1000)
    global_batch: int = _trainer("global_batch")
    lr: float = _trainer("lr")
    causal: bool = Field(default=False, description="causal instead of bidirectional (DCPE's released variant)")
    restrict: bool = Field(default=True, description="restrict logits to the members of each position's cluster")


DecoderConfig = record_section(DecoderSettings, "DecoderConfig")
DecoderConfig.hash_given = True  # plain AR ({}) and speculative configs made before it was typed keep their hashes


@embeds(SampleSettings, exclude=("seed",), nested={"decoder": DecoderConfig}, added=("refine_top_k",))
class SampleConfig(_Embedding):
    """Sampling of every variant: per-class grids and an .npz for evaluation, with the settings of ``codeprior
    sample`` (:class:`codeprior.decoding.settings.SampleSettings`; the seed is the run's)."""

    num_samples: int = Field(default=1000, description="samples per variant for the metrics (balanced over classes)")
    grid_per_class: int = Field(default=8, description="samples per class in the report grid")
    batch_size: int = Field(default=250, description="samples per generation batch")

    def settings(self, seed: int) -> SampleSettings:
        """The :class:`SampleSettings` of this section and the run's ``seed``."""
        return SampleSettings(**_record_values(self), seed=seed)


@embeds(EvaluateSettings, exclude=("seed",), added=("kid_subsets", "kid_subset_size", "prdc_max", "batch_size"))
class EvaluateConfig(_Embedding):
    """Metrics of every variant's samples against the held-out split: the settings of ``codeprior evaluate``
    (:class:`codeprior.evaluate_settings.EvaluateSettings`; the seed is the run's)."""

    def settings(self, seed: int) -> EvaluateSettings:
        """The :class:`EvaluateSettings` of this section and the run's ``seed``."""
        return EvaluateSettings(**_record_values(self), seed=seed)


class PipelineConfig(_Section):
    """A whole run. Unknown keys, wrong types and missing files are rejected before anything runs."""

    name: str = Field(default="run", description="a label for the report")
    seed: int = Field(default=0, description="seed of every stage")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    num_workers: int = Field(default=0, description="data-loader workers")
    threads: int | None = Field(
        default=None,
        description="torch CPU threads per stage (null or 0: torch's default, or cores / "
        "jobs; 1 is much faster on a busy machine). Results depend on this, not on jobs",
    )
    jobs: int = Field(
        default=1,
        description="stages run at the same time, each in its own process (independent stages "
        "only: e.g. the trainings of different variants); CPU only",
    )
    stage_threads: dict[str, int] = Field(
        default_factory=dict,
        description="torch threads of named stages instead "
        "of threads (e.g. {tokenizer: 2} for a stage nothing can run beside); such "
        "a stage takes that many of the jobs x threads cores",
    )
    data: DataConfig = Field(default_factory=DataConfig, description="dataset")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="VQ tokenizer")
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig, description="pre-tokenisation")
    classifier: ClassifierConfig = Field(
        default_factory=ClassifierConfig, description="feature extractor for the metrics"
    )
    priors: PriorsConfig = Field(default_factory=PriorsConfig, description="codebook priors")
    substitution: SubstitutionConfig = Field(default_factory=SubstitutionConfig, description="prior substitution test")
    train: TrainConfig = Field(default_factory=TrainConfig, description="AR training")
    refine: RefineTrainConfig = Field(default_factory=RefineTrainConfig, description="refine model of coarse-to-fine")
    sample: SampleConfig = Field(default_factory=SampleConfig, description="sampling")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="metrics")


# ---------------------------------------------------------------------------------------------- loading
class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader refusing a key given twice in one mapping (plain YAML keeps the last one silently: a
    second ``train:`` would reset the variants to their defaults)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
                seen.setdefault(key, line)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicated key {key!r} (line {line}, first given on line {first})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """YAML text as plain data (safe types only), refusing duplicated keys (:class:`_UniqueKeyLoader`)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def config_from_dict(data: Any, src: str = "<config>", base: str | os.PathLike | None = None) -> PipelineConfig:
    """Build and validate a :class:`PipelineConfig`; relative paths resolve against ``base`` (the config's folder)."""
    if data is None:
        data = {}
    base_p = Path(base) if base is not None else Path.cwd()
    spelled: dict[str, str] = {}  # renamed key -> the old spelling the config gave (errors name what was written)
    data = _rename_old_keys(PipelineConfig, data, src, "", spelled)
    try:
        cfg = PipelineConfig.model_validate(data, context={"base": str(base_p)})
    except ValidationError as e:
        raise first_error(e, src, PipelineConfig, spelled) from None
    if cfg.data.dataset not in IDX_DATASETS:
        p = Path(os.path.expanduser(cfg.data.dataset))
        cfg.data.dataset = str((p if p.is_absolute() else base_p / p).resolve())
    return validate_config(cfg, src, base_p, spelled)


def load_config(path: str | os.PathLike) -> PipelineConfig:
    """Read, type-check and validate a pipeline YAML file; every problem is one line naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise CodepriorError(f"{path}: no such config file")
    try:
        data = parse_yaml(path.read_text())
        if data is None:
            raise CodepriorError(
                f"{path}: empty config file (an empty run is not a default run; start from "
                "`codeprior demo --print-config`)"
            )
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise CodepriorError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except UnicodeDecodeError:
        raise CodepriorError(f"{path}: not a text file") from None
    return config_from_dict(data, str(path), path.resolve().parent)


def config_to_dict(cfg: BaseModel) -> Any:
    """Plain-data view of a config (for manifests)."""
    return cfg.model_dump()


def _rename_old_keys(model: type[BaseModel], data: Any, src: str, prefix: str, spelled: dict[str, str]) -> Any:
    """``data`` (a config's plain data, before validation) with the renamed keys of every section under their new
    names, one deprecation line each (``cfg.yaml: train.steps is deprecated, use train.max_steps ...``);
    ``spelled`` collects ``{new dotted key: old dotted key}``."""
    if not isinstance(data, dict):
        return data
    if issubclass(model, _Section) and model.old_keys:
        given = [o for o in model.old_keys if o in data]
        data = rename_old_keys(data, model.old_keys, f"{src}: {prefix}")
        spelled.update({f"{prefix}{model.old_keys[o]}": f"{prefix}{o}" for o in given})
    hints = typing.get_type_hints(model)
    out = dict(data)
    for name in model.model_fields:
        if name not in out:
            continue
        tp = _unwrap(hints[name])
        if _is_section(tp):
            out[name] = _rename_old_keys(tp, out[name], src, f"{prefix}{name}.", spelled)
        elif typing.get_origin(tp) is list and _is_section(typing.get_args(tp)[0]) and isinstance(out[name], list):
            sec = typing.get_args(tp)[0]
            out[name] = [
                _rename_old_keys(sec, x, src, f"{prefix}{name}[{i}].", spelled) for i, x in enumerate(out[name])
            ]
    return out


def _fingerprint_value(value: Any) -> Any:
    if isinstance(value, _Section):
        return _fingerprint_section(value)
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, list):
        return [_fingerprint_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _fingerprint_value(v) for k, v in value.items()}
    return value


def _fingerprint_section(section: _Section) -> dict[str, Any]:
    """A section as its stages' fingerprints hash it: renamed keys under their old names, keys added later left out
    at their default, and for ``hash_given`` sections only the keys the config gave."""
    cls = type(section)
    hashed_as = {new: old for old, new in cls.old_keys.items()}
    given = section.model_fields_set if cls.hash_given else set(cls.model_fields)
    out: dict[str, Any] = {}
    for name, f in cls.model_fields.items():
        value = getattr(section, name)
        if name not in given or (name in cls._LATER and value == f.get_default(call_default_factory=True)):
            continue
        out[hashed_as.get(name, name)] = _fingerprint_value(value)
    return out


def fingerprint_dict(cfg: PipelineConfig) -> dict[str, Any]:
    """The plain-data view of a config the stage fingerprints hash (:func:`codeprior.pipeline.run.build_stages`):
    :func:`config_to_dict` in the spelling the keys had when runs were first hashed, so renaming a key or adding one
    at its default redoes no finished stage. A section set to a plain dict in Python (``cfg.sample.decoder = {...}``)
    is hashed as given; ``tokenize.batch_size`` unset is hashed as the size it means for the dataset."""
    out = _fingerprint_section(cfg)
    tok = out["tokenize"]
    if tok.get("batch_size") is None:
        tok["batch_size"] = default_batch_size(cfg.data.dataset)
    dec = out["sample"].get("decoder")
    if isinstance(dec, dict) and "draft_init" in dec:  # a plain dict assigned in Python, in the new spelling
        dec["init"] = dec.pop("draft_init")
    return out


# ---------------------------------------------------------------------------------------------- reference
def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping of " + " to ".join(_type_name(a) for a in typing.get_args(tp))
    if _is_section(tp):
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def config_schema_markdown() -> str:
    """The config reference (every key, type, default and help), for docs and ``--help-config``."""
    lines: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        hints = typing.get_type_hints(model)  # Annotated path checks stripped: the plain types
        for name, f in model.model_fields.items():
            key, t, help_ = f"{prefix}{name}", hints[name], f.description
            inner = _unwrap(t)
            if typing.get_origin(t) is list and _is_section(typing.get_args(t)[0]):
                lines.append(f"| `{key}` | list of mappings | | {help_} |")
                walk(typing.get_args(t)[0], f"{key}[].")
            elif _is_section(inner):
                lines.append(f"| `{key}` | mapping{' or null' if inner is not t else ''} | | {help_} |")
                walk(inner, f"{key}.")
            else:
                default = f.get_default(call_default_factory=True)
                default = None if default is PydanticUndefined else default  # a required key: shown as null
                lines.append(f"| `{key}` | {_type_name(t)} | `{json.dumps(default)}` | {help_} |")

    walk(PipelineConfig, "")
    return "| key | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(lines) + "\n"


# The demo configs ship as package data (codeprior/configs/*.yaml), so `codeprior demo` works from an installed
# wheel too; configs/demo.yaml and configs/demo-full.yaml in the repository are the same text (a test checks it).
DEMO_PRESETS = {"quick": "demo.yaml", "full": "demo-full.yaml"}


def demo_config_text(preset: str = "quick") -> str:
    """The YAML text of a demo preset (``quick``: ``make demo``; ``full``: more steps, seeds and variants)."""
    if preset not in DEMO_PRESETS:
        raise CodepriorError(f"demo: unknown --preset {preset!r} (known: {', '.join(DEMO_PRESETS)})")
    return files("codeprior").joinpath("configs", DEMO_PRESETS[preset]).read_text()


def demo_config(preset: str = "quick") -> PipelineConfig:
    """A demo preset's config, validated."""
    return config_from_dict(parse_yaml(demo_config_text(preset)), f"codeprior:{DEMO_PRESETS[preset]}")
