"""The pipeline's config schema (pydantic v2 models) and its loading, with one-line errors naming file and key.

Every section is a pydantic model with ``extra="forbid"`` and strict types; each setting is defined once, with its
default and help text (the ``Field`` description, which ``codeprior pipeline --help-config`` prints). Pydantic's
:class:`~pydantic.ValidationError` is translated into codeprior's one-line messages
(``cfg.yaml: train.stepz: unknown key (allowed: ...)``, ``cfg.yaml: train.steps: expected an integer, got 'ten'``),
raised as :class:`~codeprior.errors.CodepriorError` (exit code 2). Checks across fields (variant names, prior
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
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    model_serializer,
)
from pydantic_core import PydanticCustomError, PydanticUndefined

from codeprior.errors import CodepriorError
from codeprior.pipeline.validation import IDX_DATASETS, PRIOR_METHODS, first_error, validate_config
from codeprior.train.config import config_fields

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
    "config_schema_markdown",
    "DEMO_PRESETS",
    "demo_config_text",
    "demo_config",
]


def _existing(kind: str) -> AfterValidator:
    """A validator resolving a path against the config's folder (``context["base"]``) and checking it exists."""

    def check(value: str, info: ValidationInfo) -> str:
        p = Path(os.path.expanduser(value))
        if not p.is_absolute():
            p = Path((info.context or {}).get("base") or Path.cwd()) / p
        if kind == "file" and not p.is_file():
            raise PydanticCustomError("no_such_path", "no such file: {value}", {"value": value})
        if kind == "dir" and not p.is_dir():
            raise PydanticCustomError("no_such_path", "no such directory: {value}", {"value": value})
        return str(p.resolve())

    return AfterValidator(check)


FilePath = Annotated[str, _existing("file")]
DirPath = Annotated[str, _existing("dir")]


class _Section(BaseModel):
    """Strict types (no "10" for 10, no 1 for true), finite numbers, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Optional(_Section):
    """A section with settings added after runs existed: while unset (None) they stay out of the dump, so the
    stage hashes of configs that do not use them are what they were."""

    _LATER: typing.ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _drop_unset_later(self, handler: SerializerFunctionWrapHandler) -> Any:
        d = handler(self)
        return {k: v for k, v in d.items() if not (k in self._LATER and v is None)}


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
    eval_images: int = Field(
        default=10000, description="test images for the tokenizer evaluation (rFID, PSNR, classifier accuracy)"
    )


class TokenizeConfig(_Optional):
    """Pre-tokenisation of the dataset into code shards."""

    batch_size: int = Field(default=512, description="images per encoder batch")
    flip: bool = Field(
        default=True, description="also store the horizontally flipped view of every image (training augmentation)"
    )
    store_embeddings: bool | None = Field(
        default=None,
        description="also store the encoder's output per position (float16, 8x the codes at D = 8) for snce "
        "variants with snce_source: encoder; null: off",
    )

    _LATER = ("store_embeddings",)


class ClassifierConfig(_Section):
    """The in-project classifier whose features define FID/KID/IS/PRDC here (no Inception weights offline)."""

    checkpoint: FilePath | None = Field(
        default=None, description="existing classifier checkpoint to use instead of training one"
    )
    epochs: int = Field(default=8, description="training epochs")
    batch_size: int = Field(default=128, description="training batch size")
    use_cache: bool = Field(
        default=True,
        description="reuse the classifier cached by `codeprior classifier train` when "
        "its config and data hashes match (read only)",
    )
    inception_weights: FilePath | None = Field(
        default=None, description="pt_inception-2015-12-05 weights: standard Inception FID/IS instead"
    )


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

    Each field below that the trainer also has is the trainer's setting (its help, and its default unless the
    field names another): ``steps`` is the trainer's ``max_steps``, ``batch_size`` its ``global_batch``.
    """

    model: str = _trainer("model")
    variants: list[VariantConfig] = Field(default_factory=_default_variants, description="the runs to train")
    steps: int = _trainer("max_steps", 1000)
    batch_size: int = _trainer("global_batch")
    lr: float = _trainer("lr", 1e-3)  # small models on small data take a larger rate than LlamaGen's 1e-4
    warmup_steps: int = _trainer("warmup_steps", 50, "linear warm-up steps (then cosine decay)")
    weight_decay: float = _trainer("weight_decay")
    grad_accum: int = _trainer("grad_accum")
    ckpt_every: int = _trainer("ckpt_every", 250)
    keep_ckpts: int = _trainer(
        "keep_ckpts", 2, "keep the newest N step checkpoints of each run besides its final model.pt (0: all)"
    )
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

    model: str = _trainer("model", "Refine-tiny", "refine config name from codeprior.models.refine.REFINE_CONFIGS")
    steps: int = _trainer("max_steps", 1000)
    batch_size: int = _trainer("global_batch")
    lr: float = _trainer("lr", 1e-3)
    causal: bool = Field(default=False, description="causal instead of bidirectional (DCPE's released variant)")
    restrict: bool = Field(default=True, description="restrict logits to the members of each position's cluster")


class SampleConfig(_Section):
    """Sampling of every variant: per-class grids and an .npz for evaluation."""

    num_samples: int = Field(default=1000, description="samples per variant for the metrics (balanced over classes)")
    grid_per_class: int = Field(default=8, description="samples per class in the report grid")
    batch_size: int = Field(default=250, description="samples per generation batch")
    cfg_scale: float = Field(default=2.0, description="classifier-free guidance scale")
    temperature: float = Field(
        default=1.0, description="sampling temperature (token / cluster-ce; stage 1 of coarse uses tau1)"
    )
    top_k: int = Field(default=0, description="top-k (0: all)")
    top_p: float = Field(default=1.0, description="nucleus top-p")
    tau1: float = Field(default=1.1, description="coarse stage temperature (CTF default)")
    tau2: float = Field(default=1.1, description="refine stage temperature (CTF default)")
    refine_mode: str = Field(
        default="sample", description="how the refine stage picks fine codes (sample, argmax, random-member)"
    )
    decoder: dict[str, Any] = Field(
        default_factory=dict,
        description="speculative decoding "
        "(codeprior.decoding.DecoderSettings keys: decoder ar|sjd, accept "
        "exact|gsd|latent|prior, window (auto: cost-aware, the default, or a number), init random|repeat, gsd_*, latent_k, "
        "latent_delta, compile; prior: a priors.methods name); {}: plain AR",
    )


class EvaluateConfig(_Section):
    """Metrics of every variant's samples against the held-out split."""

    reference: str = Field(default="test-split", description="test-split, or an .npz of reference images")
    prdc_k: int = Field(default=5, description="k of precision/recall/density/coverage")


class PipelineConfig(_Section):
    """A whole run. Unknown keys, wrong types and missing files are rejected before anything runs."""

    name: str = Field(default="run", description="a label for the report")
    seed: int = Field(default=0, description="seed of every stage")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    num_workers: int = Field(default=0, description="data-loader workers")
    threads: int | None = Field(
        default=None,
        description="torch CPU threads per stage (null: torch's default, or cores / "
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
    try:
        cfg = PipelineConfig.model_validate(data, context={"base": str(base_p)})
    except ValidationError as e:
        raise first_error(e, src, PipelineConfig) from None
    if cfg.data.dataset not in IDX_DATASETS:
        p = Path(os.path.expanduser(cfg.data.dataset))
        cfg.data.dataset = str((p if p.is_absolute() else base_p / p).resolve())
    return validate_config(cfg, src, base_p)


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
    """Plain-data view of a config (for manifests and hashing)."""
    return cfg.model_dump()


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
