"""The stage pipeline behind ``codeprior pipeline CONFIG.yaml`` and ``codeprior demo``.

A run is a folder ``RUN/`` with one sub-folder per stage (``RUN/<stage>/``), each holding that stage's outputs and a
``manifest.json`` (status, the stage's config, the hashes of its external inputs, the run ids of the upstream stages
it read, its metrics, seconds taken and the codeprior version). Data flows one way: a stage reads only its own
config, its external inputs and the outputs of the stages it declares as dependencies.

Re-running the same command:

- skips a stage whose manifest says ``done`` and whose *fingerprint* (hash of its config, its external inputs and the
  run ids of its upstream stages) is unchanged;
- resumes a stage whose manifest says ``running`` / ``failed`` / ``interrupted`` with the same fingerprint (the stage
  is told ``ctx.resume=True`` and passes it on, e.g. to the trainer's ``resume``);
- redoes a stage from scratch (its folder is cleared) when its fingerprint changed; since every completed run of a
  stage gets a fresh ``run_id``, everything downstream of a redone stage is redone too;
- ``force=[STAGE, ...]`` redoes the named stages and everything downstream of them.

The module has three parts: the config schema and its validation (:func:`load_config`), the generic engine
(:class:`Stage`, :func:`run_stages`), and the codeprior stages (:func:`build_stages`) which call the other modules
(tokenizer training, tokenisation, classifier, priors, substitution test, trainer, sampling, evaluation, report).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from codeprior import __version__
from codeprior.errors import CodepriorError
from codeprior.engine import (  # noqa: F401  (re-exported: the engine's public names)
    MANIFEST,
    Stage,
    StageContext,
    StageResult,
    canonical,
    check_stages,
    downstream_closure,
    fingerprint,
    plan_stages,
    read_manifest,
    run_stages,
)
from codeprior.utils.io import sha256_file, write_json_atomic
from codeprior.verdict import summarize


# ==================================================================================================
# Config schema
# ==================================================================================================
# Every section is a dataclass; field metadata carries the help text and, for paths, what must exist
# ("file", "dir" or "file-or-dir"). Validation is generic (see _build), so the schema is the only
# place that lists keys, types and defaults.


def _f(default: Any, help: str, *, path: str | None = None, factory: Callable[[], Any] | None = None) -> Any:
    md = {"help": help, "path": path}
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


@dataclass
class DataConfig:
    """The image dataset: Fashion-MNIST / MNIST from their IDX files, or an image folder (one subfolder per class)."""

    dataset: str = _f("fashion-mnist", "fashion-mnist, mnist, or an image folder with train/ and val/ subfolders "
                      "(one subfolder per class in each)")
    data_dir: str | None = _f(None, "folder holding the IDX files (default: /usr/share/datasets/<name>)", path="dir")
    image_size: int | None = _f(None, "resize/center-crop size for image folders (default 256, as LlamaGen)")


@dataclass
class TokenizerConfig:
    """The VQ tokenizer: trained here (``checkpoint: null``) or reused from a checkpoint (LlamaGen layout)."""

    checkpoint: str | None = _f(None, "existing VQ checkpoint to use instead of training one", path="file")
    model: str = _f("VQ-fmnist", "VQ config name from codeprior.models.vq.VQ_CONFIGS (for a given LlamaGen "
                    "checkpoint: the config it was trained with, e.g. VQ-16)")
    schedule: str = _f("full", "codeprior.tokenizer_train schedule: full (quality target) or demo (fast)")
    steps: int | None = _f(None, "training steps (null: the schedule's)")
    batch_size: int | None = _f(None, "training batch size (null: the schedule's)")
    lr: float | None = _f(None, "learning rate (null: the schedule's)")
    num_recon: int = _f(16, "test images shown as reconstructions in the report")
    eval_images: int = _f(10000, "test images for the tokenizer evaluation (rFID, PSNR, classifier accuracy)")


@dataclass
class TokenizeConfig:
    """Pre-tokenisation of the dataset into code shards."""

    batch_size: int = _f(512, "images per encoder batch")
    flip: bool = _f(True, "also store the horizontally flipped view of every image (training augmentation)")


@dataclass
class ClassifierConfig:
    """The in-project classifier whose features define FID/KID/IS/PRDC here (no Inception weights offline)."""

    checkpoint: str | None = _f(None, "existing classifier checkpoint to use instead of training one", path="file")
    epochs: int = _f(8, "training epochs")
    batch_size: int = _f(128, "training batch size")
    use_cache: bool = _f(True, "reuse the classifier cached by `codeprior classifier train` when its config and "
                         "data hashes match (read only)")
    inception_weights: str | None = _f(None, "pt_inception-2015-12-05 weights: standard Inception FID/IS instead",
                                       path="file")


@dataclass
class PriorsConfig:
    """Codebook priors extracted from the tokenizer's codebook (same k for every method)."""

    methods: list[str] = _f(None, "methods to extract (dcpe, kmeans, balanced-kmeans)",
                            factory=lambda: ["kmeans", "dcpe"])
    k: int | None = _f(None, "clusters per prior (give k or compression_rate)")
    compression_rate: float | None = _f(None, "k = codebook size / compression_rate (DCPE's released setting: 2; "
                                        "null: 2 unless k is given)")
    normalize: bool = _f(True, "cluster L2-normalised codes (what the quantizer compares); false = raw vectors")


@dataclass
class SubstitutionConfig:
    """The prior substitution test: replace every code by a random member of its cluster and measure the damage."""

    enabled: bool = _f(True, "run the substitution test")
    num_images: int = _f(1000, "test images used")
    draws: int = _f(3, "random substitutions averaged")


@dataclass
class TorchrunConfig:
    """Launch the training stages with ``torchrun`` (DDP/FSDP) instead of in-process."""

    nproc_per_node: int = _f(1, "processes (GPUs) per node")
    nnodes: int = _f(1, "number of nodes")
    node_rank: int = _f(0, "this node's rank")
    master_addr: str = _f("127.0.0.1", "rendezvous address (multi-node)")
    master_port: int = _f(29500, "rendezvous port")


@dataclass
class VariantConfig:
    """One AR training run: an objective, and for cluster-ce / coarse the prior it uses."""

    name: str = _f(None, "variant name (stage folders train-<name>, sample-<name>)")
    objective: Literal["token", "cluster-ce", "coarse"] = _f("token", "training objective")
    prior: str | None = _f(None, "prior method (one of priors.methods) for cluster-ce / coarse")
    lam: float = _f(1.0, "weight of the cluster CE term (cluster-ce)")


@dataclass
class TrainConfig:
    """AR training, shared by all variants (same model, data, steps and seed, so runs compare)."""

    model: str = _f("GPT-tiny", "GPT config name from codeprior.models.gpt.GPT_CONFIGS")
    variants: list[VariantConfig] = _f(None, "the runs to train", factory=lambda: [
        VariantConfig("token", "token"),
        VariantConfig("cluster-ce-dcpe", "cluster-ce", "dcpe"),
        VariantConfig("coarse-dcpe", "coarse", "dcpe"),
    ])
    steps: int = _f(1000, "optimizer steps")
    batch_size: int = _f(64, "global batch size")
    lr: float = _f(1e-3, "peak learning rate")
    warmup_steps: int = _f(50, "linear warm-up steps (then cosine decay)")
    weight_decay: float = _f(0.05, "AdamW weight decay on 2-D parameters")
    grad_accum: int = _f(1, "gradient accumulation steps")
    ckpt_every: int = _f(250, "checkpoint every N steps (resume granularity)")
    keep_ckpts: int = _f(2, "keep the newest N step checkpoints of each run besides its final model.pt (0: all)")
    eval_every: int = _f(250, "FID every N steps (0: only at the end)")
    eval_samples: int = _f(500, "samples per FID evaluation during training")
    val_batches: int = _f(0, "batches of the held-out split in the validation loss at the end (0: all of it)")
    seeds: int = _f(1, "training seeds per variant (seed, seed + 1, ...; stages train-<name>, "
                    "train-<name>-seed1, ...): the metrics show mean and spread over them")
    ema: float = _f(0.0, "EMA decay of the weights (0: off); evaluation uses the EMA when on")
    dropout: float | None = _f(None, "token/residual/FFN dropout (null: the model config's, LlamaGen 0.1)")
    compile: bool = _f(False, "torch.compile the model")
    precision: Literal["auto", "fp32", "bf16"] = _f("auto", "auto = bf16 autocast on CUDA, fp32 on CPU")
    fsdp: bool = _f(False, "FSDP instead of DDP under torchrun (no FID during training then)")
    torchrun: TorchrunConfig | None = _f(None, "launch training with torchrun (null: in-process)")


@dataclass
class RefineTrainConfig:
    """The refine model of coarse-to-fine (fine codes from the coarse sequence)."""

    model: str = _f("Refine-tiny", "refine config name from codeprior.models.refine.REFINE_CONFIGS")
    steps: int = _f(1000, "optimizer steps")
    batch_size: int = _f(64, "batch size")
    lr: float = _f(1e-3, "peak learning rate")
    causal: bool = _f(False, "causal instead of bidirectional (DCPE's released variant)")
    restrict: bool = _f(True, "restrict logits to the members of each position's cluster")


@dataclass
class SampleConfig:
    """Sampling of every variant: per-class grids and an .npz for evaluation."""

    num_samples: int = _f(1000, "samples per variant for the metrics (balanced over classes)")
    grid_per_class: int = _f(8, "samples per class in the report grid")
    batch_size: int = _f(250, "samples per generation batch")
    cfg_scale: float = _f(2.0, "classifier-free guidance scale")
    temperature: float = _f(1.0, "sampling temperature (token / cluster-ce; stage 1 of coarse uses tau1)")
    top_k: int = _f(0, "top-k (0: all)")
    top_p: float = _f(1.0, "nucleus top-p")
    tau1: float = _f(1.1, "coarse stage temperature (CTF default)")
    tau2: float = _f(1.1, "refine stage temperature (CTF default)")
    refine_mode: Literal["sample", "argmax", "random-member"] = _f("sample", "how the refine stage picks fine codes")


@dataclass
class EvaluateConfig:
    """Metrics of every variant's samples against the held-out split."""

    reference: str = _f("test-split", "test-split, or an .npz of reference images")
    prdc_k: int = _f(5, "k of precision/recall/density/coverage")


@dataclass
class PipelineConfig:
    """A whole run. Unknown keys, wrong types and missing files are rejected before anything runs."""

    name: str = _f("run", "a label for the report")
    seed: int = _f(0, "seed of every stage")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    num_workers: int = _f(0, "data-loader workers")
    threads: int | None = _f(None, "torch CPU threads per stage (null: torch's default, or cores / jobs; 1 is much "
                             "faster on a busy machine). Results depend on this, not on jobs")
    jobs: int = _f(1, "stages run at the same time, each in its own process (independent stages only: e.g. the "
                   "trainings of different variants); CPU only")
    stage_threads: dict[str, int] = _f(None, "torch threads of named stages instead of threads (e.g. {tokenizer: 2} "
                                       "for a stage nothing can run beside); such a stage takes that many of the "
                                       "jobs x threads cores", factory=dict)
    data: DataConfig = _f(None, "dataset", factory=DataConfig)
    tokenizer: TokenizerConfig = _f(None, "VQ tokenizer", factory=TokenizerConfig)
    tokenize: TokenizeConfig = _f(None, "pre-tokenisation", factory=TokenizeConfig)
    classifier: ClassifierConfig = _f(None, "feature extractor for the metrics", factory=ClassifierConfig)
    priors: PriorsConfig = _f(None, "codebook priors", factory=PriorsConfig)
    substitution: SubstitutionConfig = _f(None, "prior substitution test", factory=SubstitutionConfig)
    train: TrainConfig = _f(None, "AR training", factory=TrainConfig)
    refine: RefineTrainConfig = _f(None, "refine model of coarse-to-fine", factory=RefineTrainConfig)
    sample: SampleConfig = _f(None, "sampling", factory=SampleConfig)
    evaluate: EvaluateConfig = _f(None, "metrics", factory=EvaluateConfig)


IDX_DATASETS = ("fashion-mnist", "mnist")
PRIOR_METHODS = ("dcpe", "kmeans", "balanced-kmeans")


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
    if dataclasses.is_dataclass(tp):
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _build(tp: Any, value: Any, key: str, src: str, base: Path) -> Any:
    """Convert ``value`` (parsed YAML) to ``tp``; raise one-line ``CodepriorError("<src>: <key>: ...")``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _build(a, value, key, src, base)
            except CodepriorError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise CodepriorError(f"{src}: {key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise CodepriorError(f"{src}: {key}: must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise CodepriorError(f"{src}: {key}: expected a list, got {type(value).__name__} {value!r}")
        (inner,) = typing.get_args(tp)
        return [_build(inner, v, f"{key}[{i}]", src, base) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise CodepriorError(f"{src}: {key}: expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = typing.get_args(tp)
        return {_build(kt, k, key, src, base): _build(vt, v, f"{key}.{k}", src, base) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise CodepriorError(f"{src}: {key or 'top level'}: expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = [k for k in value if k not in fields]
        if unknown:
            where = f"{key}." if key else ""
            raise CodepriorError(
                f"{src}: {where}{unknown[0]}: unknown key (allowed: {', '.join(fields)})"
            )
        kwargs = {}
        for name, f in fields.items():
            sub = f"{key}.{name}" if key else name
            if name in value:
                v = _build(hints[name], value[name], sub, src, base)
                if f.metadata.get("path") and v is not None:
                    v = _check_path(v, f.metadata["path"], sub, src, base)
                kwargs[name] = v
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CodepriorError(f"{src}: {sub}: required key missing")
        obj = tp(**kwargs)
        for name, f in fields.items():  # required-by-convention fields (default None, not Optional)
            if getattr(obj, name) is None and type(None) not in typing.get_args(hints[name]):
                raise CodepriorError(f"{src}: {key + '.' if key else ''}{name}: required key missing")
        return obj
    if tp is bool:
        if not isinstance(value, bool):
            raise CodepriorError(f"{src}: {key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CodepriorError(f"{src}: {key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CodepriorError(f"{src}: {key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise CodepriorError(f"{src}: {key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise CodepriorError(f"{src}: {key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r}")  # pragma: no cover - schema bug


def _check_path(value: str, kind: str, key: str, src: str, base: Path) -> str:
    p = Path(os.path.expanduser(value))
    if not p.is_absolute():
        p = base / p
    if kind == "file" and not p.is_file():
        raise CodepriorError(f"{src}: {key}: no such file: {value}")
    if kind == "dir" and not p.is_dir():
        raise CodepriorError(f"{src}: {key}: no such directory: {value}")
    return str(p.resolve())


def _positive(cfg: PipelineConfig, src: str) -> None:
    checks = {
        "tokenizer.steps": cfg.tokenizer.steps or 1, "tokenizer.batch_size": cfg.tokenizer.batch_size or 1,
        "tokenizer.num_recon": cfg.tokenizer.num_recon, "tokenizer.eval_images": cfg.tokenizer.eval_images,
        "tokenize.batch_size": cfg.tokenize.batch_size, "classifier.epochs": cfg.classifier.epochs,
        "classifier.batch_size": cfg.classifier.batch_size, "train.steps": cfg.train.steps,
        "train.batch_size": cfg.train.batch_size, "train.grad_accum": cfg.train.grad_accum,
        "train.ckpt_every": cfg.train.ckpt_every, "train.eval_samples": cfg.train.eval_samples,
        "refine.steps": cfg.refine.steps, "refine.batch_size": cfg.refine.batch_size,
        "sample.num_samples": cfg.sample.num_samples, "sample.batch_size": cfg.sample.batch_size,
        "sample.grid_per_class": cfg.sample.grid_per_class, "substitution.num_images": cfg.substitution.num_images,
        "substitution.draws": cfg.substitution.draws, "train.lr": cfg.train.lr, "refine.lr": cfg.refine.lr,
        "tokenizer.lr": cfg.tokenizer.lr or 1, "sample.temperature": cfg.sample.temperature,
        "sample.tau1": cfg.sample.tau1, "sample.tau2": cfg.sample.tau2, "evaluate.prdc_k": cfg.evaluate.prdc_k,
    }
    for key, v in checks.items():
        if v <= 0:
            raise CodepriorError(f"{src}: {key}: must be > 0, got {v}")
    if not 0 <= cfg.train.ema < 1:
        raise CodepriorError(f"{src}: train.ema: EMA decay must be in [0, 1), got {cfg.train.ema}")
    if cfg.train.eval_every < 0 or cfg.train.warmup_steps < 0 or cfg.train.keep_ckpts < 0:
        raise CodepriorError(f"{src}: train.eval_every / train.warmup_steps / train.keep_ckpts: must be >= 0")
    if not 0 < cfg.sample.top_p <= 1:
        raise CodepriorError(f"{src}: sample.top_p: must be in (0, 1], got {cfg.sample.top_p}")


def validate_config(cfg: PipelineConfig, src: str) -> PipelineConfig:
    """Cross-field checks the type system cannot express (names, prior references, value ranges)."""
    _positive(cfg, src)
    d = cfg.data
    if d.dataset not in IDX_DATASETS:
        p = Path(os.path.expanduser(d.dataset))
        if not p.is_dir():
            raise CodepriorError(
                f"{src}: data.dataset: expected {' or '.join(IDX_DATASETS)} or an image folder, got {d.dataset!r} "
                "(no such directory)"
            )
    if d.dataset not in IDX_DATASETS:
        root = Path(d.dataset)
        if not (root / "train").is_dir() or not ((root / "val").is_dir() or (root / "test").is_dir()):
            raise CodepriorError(
                f"{src}: data.dataset: image folder {d.dataset} needs train/ and val/ (or test/) subfolders"
            )
        if not cfg.classifier.inception_weights:
            raise CodepriorError(f"{src}: classifier.inception_weights: required for image-folder datasets (the "
                                 "in-project classifier covers fashion-mnist and mnist)")
        if cfg.evaluate.reference == "test-split":
            raise CodepriorError(f"{src}: evaluate.reference: give an .npz of reference images for image-folder "
                                 "datasets (e.g. ADM's VIRTUAL_imagenet256_labeled.npz)")
        if not cfg.tokenizer.checkpoint:
            raise CodepriorError(f"{src}: tokenizer.checkpoint: required for image-folder datasets (tokenizer "
                                 "training here covers fashion-mnist and mnist)")
    elif d.image_size is not None:
        raise CodepriorError(f"{src}: data.image_size: only for image folders ({d.dataset} is 28x28)")
    if cfg.tokenizer.schedule not in ("full", "demo"):
        raise CodepriorError(f"{src}: tokenizer.schedule: must be full or demo, got {cfg.tokenizer.schedule!r}")
    if not cfg.device == "auto" and not cfg.device == "cpu" and not cfg.device.startswith("cuda"):
        raise CodepriorError(f"{src}: device: expected auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    pr = cfg.priors
    for i, m in enumerate(pr.methods):
        if m not in PRIOR_METHODS:
            raise CodepriorError(
                f"{src}: priors.methods[{i}]: unknown method {m!r} (choose from {', '.join(PRIOR_METHODS)})"
            )
    if len(set(pr.methods)) != len(pr.methods):
        raise CodepriorError(f"{src}: priors.methods: duplicate methods {pr.methods}")
    if pr.k is not None and pr.compression_rate is not None:
        raise CodepriorError(f"{src}: priors: give one of k and compression_rate, not both")
    if pr.k is None and pr.compression_rate is None:
        pr.compression_rate = 2.0
    if pr.k is not None and pr.k < 1:
        raise CodepriorError(f"{src}: priors.k: must be >= 1, got {pr.k}")
    if pr.compression_rate is not None and pr.compression_rate < 1:
        raise CodepriorError(f"{src}: priors.compression_rate: must be >= 1, got {pr.compression_rate}")
    names = set()
    if not cfg.train.variants:
        raise CodepriorError(f"{src}: train.variants: at least one variant is needed")
    for i, v in enumerate(cfg.train.variants):
        key = f"train.variants[{i}]"
        if not v.name or not all(c.isalnum() or c in "-_." for c in v.name) or v.name.startswith("."):
            raise CodepriorError(f"{src}: {key}.name: use letters, digits, '-', '_' or '.', got {v.name!r}")
        if v.name in names or v.name == "refine" or v.name.startswith("refine-"):
            raise CodepriorError(f"{src}: {key}.name: duplicate or reserved name {v.name!r}")
        names.add(v.name)
        if v.objective == "token" and v.prior is not None:
            raise CodepriorError(f"{src}: {key}.prior: the token objective uses no prior")
        if v.objective != "token":
            if v.prior is None:
                raise CodepriorError(f"{src}: {key}.prior: required for objective {v.objective}")
            if v.prior not in pr.methods:
                raise CodepriorError(
                    f"{src}: {key}.prior: {v.prior!r} is not extracted (priors.methods: {', '.join(pr.methods)})"
                )
    if cfg.train.torchrun is not None:
        t = cfg.train.torchrun
        if t.nproc_per_node < 1 or t.nnodes < 1 or not 0 <= t.node_rank < t.nnodes:
            raise CodepriorError(
                f"{src}: train.torchrun: need nproc_per_node >= 1, nnodes >= 1, 0 <= node_rank < nnodes"
            )
    if cfg.evaluate.reference != "test-split":
        ref = Path(os.path.expanduser(cfg.evaluate.reference))
        if not ref.is_absolute():
            ref = Path(cfg._base) / ref if hasattr(cfg, "_base") else ref
        if not ref.is_file():
            raise CodepriorError(f"{src}: evaluate.reference: no such file: {cfg.evaluate.reference}")
        cfg.evaluate.reference = str(ref.resolve())
    return cfg


def config_from_dict(data: Any, src: str = "<config>", base: str | os.PathLike | None = None) -> PipelineConfig:
    """Build and validate a :class:`PipelineConfig`; relative paths resolve against ``base`` (the config's folder)."""
    if data is None:
        data = {}
    base_p = Path(base) if base is not None else Path.cwd()
    cfg = _build(PipelineConfig, data, "", src, base_p)
    object.__setattr__(cfg, "_base", str(base_p))
    if cfg.data.dataset not in IDX_DATASETS:
        p = Path(os.path.expanduser(cfg.data.dataset))
        cfg.data.dataset = str((p if p.is_absolute() else base_p / p).resolve())
    return validate_config(cfg, src)


def load_config(path: str | os.PathLike) -> PipelineConfig:
    """Read, type-check and validate a pipeline YAML file; every problem is one line naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise CodepriorError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
        if data is None:
            raise CodepriorError(f"{path}: empty config file (an empty run is not a default run; start from "
                                 "`codeprior demo --print-config`)")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise CodepriorError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except UnicodeDecodeError:
        raise CodepriorError(f"{path}: not a text file") from None
    return config_from_dict(data, str(path), path.resolve().parent)


def config_to_dict(cfg: Any) -> Any:
    """Plain-data view of a config (for manifests and hashing)."""
    return dataclasses.asdict(cfg)


def config_schema_markdown() -> str:
    """The config reference (every key, type, default and help), for docs and ``--help-config``."""
    lines: list[str] = []

    def walk(tp: Any, prefix: str) -> None:
        hints = typing.get_type_hints(tp)
        for f in dataclasses.fields(tp):
            key = f"{prefix}{f.name}"
            t = hints[f.name]
            inner = [a for a in typing.get_args(t) if dataclasses.is_dataclass(a)] or (
                [t] if dataclasses.is_dataclass(t) else [])
            if typing.get_origin(t) is list and dataclasses.is_dataclass(typing.get_args(t)[0]):
                lines.append(f"| `{key}` | list of mappings | | {f.metadata['help']} |")
                walk(typing.get_args(t)[0], f"{key}[].")
                continue
            if inner:
                lines.append(f"| `{key}` | mapping{' or null' if type(None) in typing.get_args(t) else ''} | | "
                             f"{f.metadata['help']} |")
                walk(inner[0], f"{key}.")
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
            lines.append(f"| `{key}` | {_type_name(t)} | `{json.dumps(default)}` | {f.metadata['help']} |")

    walk(PipelineConfig, "")
    return "| key | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(lines) + "\n"


# The demo configs ship as package data (codeprior/configs/*.yaml), so `codeprior demo` works from an installed
# wheel too; configs/demo.yaml and configs/demo-full.yaml in the repository are the same text (a test checks it).
DEMO_PRESETS = {"quick": "demo.yaml", "full": "demo-full.yaml"}


def demo_config_text(preset: str = "quick") -> str:
    """The YAML text of a demo preset (``quick``: ``make demo``; ``full``: more steps, seeds and variants)."""
    from importlib.resources import files

    if preset not in DEMO_PRESETS:
        raise CodepriorError(f"demo: unknown --preset {preset!r} (known: {', '.join(DEMO_PRESETS)})")
    return files("codeprior").joinpath("configs", DEMO_PRESETS[preset]).read_text()


def demo_config(preset: str = "quick") -> PipelineConfig:
    """A demo preset's config, validated."""
    return config_from_dict(yaml.safe_load(demo_config_text(preset)), f"codeprior:{DEMO_PRESETS[preset]}")


# ==================================================================================================
# The codeprior stages
# ==================================================================================================
# Each stage function reads its own config slice, its declared upstream stages' folders/manifests and
# writes into ctx.dir. The file names below are what report.py reads (documented in docs/pipeline.md).


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other values are checked against the machine."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CodepriorError(f"device {device}: CUDA is not available on this machine (use device: auto or cpu)")
    return device


def environment(device: str) -> dict[str, Any]:
    """Python/torch versions, CPU cores and the device, recorded in every manifest (and shown in the report)."""
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "codeprior": __version__,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "platform": platform.platform(terse=True),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _dataset_fingerprint(cfg: DataConfig) -> dict[str, str]:
    """Hashes of the dataset: IDX files' contents, or an image folder's listing (names, sizes, mtimes)."""
    if cfg.dataset in IDX_DATASETS:
        import numpy as np

        from codeprior.data.images import load_idx

        out = {}
        for split in ("train", "test"):
            images, labels = load_idx(cfg.dataset, split, cfg.data_dir)
            h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
            h.update(np.ascontiguousarray(labels).tobytes())
            out[split] = h.hexdigest()
        return out
    root = Path(cfg.dataset)
    h = hashlib.sha256()
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            st = p.stat()
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
            n += 1
    return {"listing": h.hexdigest(), "files": str(n)}


def _test_split(dataset: str) -> str:
    if dataset in IDX_DATASETS:
        return "test"
    from codeprior.data.images import resolve_folder_split

    return resolve_folder_split(dataset, "val").name  # val/, or test/ when there is no val/


def _save_grid_per_class(images_nhwc: Any, labels: Any, path: Path, per_class: int) -> None:
    from codeprior.sample import save_class_grid

    save_class_grid(images_nhwc, labels, path, per_class=per_class)


def _run_data(cfg: PipelineConfig, ctx: StageContext) -> dict:
    import numpy as np

    from codeprior.data.images import build_image_dataset, dataset_info

    d = cfg.data
    info = dataset_info(d.dataset, d.data_dir)
    split = _test_split(d.dataset)
    train = build_image_dataset(d.dataset, "train", d.data_dir, d.image_size)
    test = build_image_dataset(d.dataset, split, d.data_dir, d.image_size)
    if len(train) == 0 or len(test) == 0:
        raise CodepriorError(f"{d.dataset}: empty split (train {len(train)}, {split} {len(test)})")
    # a few real test images per class: what the samples should look like
    targets = np.asarray(getattr(test, "targets", [test[i][1] for i in range(len(test))]))
    per = 8
    idx = np.concatenate([np.flatnonzero(targets == c)[:per] for c in range(info["num_classes"])])
    x = np.stack([test[int(i)][0].numpy() for i in idx])  # [n, C, H, W] in [-1, 1]
    imgs = ((np.clip(x, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)
    _save_grid_per_class(imgs, targets[idx], ctx.dir / "examples.png", per)
    from codeprior.utils.io import atomic_path

    with atomic_path(ctx.dir / "examples.npz") as tmp, open(tmp, "wb") as f:  # the report's real-image column
        np.savez(f, arr_0=imgs, labels=targets[idx])
    x0 = test[0][0]
    return {
        "dataset": d.dataset,
        "test_split": split,
        "num_classes": info["num_classes"],
        "class_names": info["class_names"],
        "channels": int(x0.shape[0]),
        "image_size": int(x0.shape[-1]),
        "train_size": len(train),
        "test_size": len(test),
        "class_counts_test": np.bincount(targets, minlength=info["num_classes"]).tolist(),
        "sha256": hashlib.sha256(canonical(ctx.inputs).encode()).hexdigest(),
    }


def _vq_checkpoint(ctx: StageContext) -> str:
    return ctx.upstream["tokenizer"]["metrics"]["checkpoint"]


def _load_vq(cfg: PipelineConfig, path: str, device: str) -> Any:
    """The tokenizer in eval mode: a checkpoint's own stored config (codeprior files), else for a given LlamaGen
    checkpoint the config named in tokenizer.model."""
    from codeprior.tokenize import load_tokenizer

    return load_tokenizer(path, default_config=cfg.tokenizer.model if cfg.tokenizer.checkpoint else None,
                          device=device)


def _run_tokenizer(cfg: PipelineConfig, ctx: StageContext, device: str) -> dict:
    import torch

    from codeprior.data.images import build_image_dataset, save_image_grid

    t = cfg.tokenizer
    metrics: dict[str, Any] = {}
    if t.checkpoint:
        path = t.checkpoint
        metrics["source"] = "given checkpoint"
    else:
        from codeprior.tokenizer_train import latest_checkpoint, train_tokenizer

        resume = ctx.resume and latest_checkpoint(ctx.dir / "train") is not None
        if not resume:
            shutil.rmtree(ctx.dir / "train", ignore_errors=True)
        res = train_tokenizer(cfg.data.dataset, cfg.data.data_dir, t.model, ctx.dir / "train", schedule=t.schedule,
                              steps=t.steps, batch_size=t.batch_size, lr=t.lr, seed=cfg.seed, device=device,
                              resume=resume, evaluate=False)  # the tokenizer-eval stage measures it
        path = res["checkpoint"]
        metrics["source"] = "trained here"
        test = res.get("test") or {}
        metrics.update({"steps": res.get("settings", {}).get("steps"), "train_seconds": res.get("train_seconds"),
                        **{f"test_{k}": v for k, v in test.items() if isinstance(v, (int, float))}})
    vq = _load_vq(cfg, path, device)
    test = build_image_dataset(cfg.data.dataset, _test_split(cfg.data.dataset), cfg.data.data_dir, cfg.data.image_size)
    n = min(t.num_recon, len(test))
    idx = torch.linspace(0, len(test) - 1, n).round().long().tolist()
    x = torch.stack([test[i][0] for i in idx]).to(device)
    with torch.inference_mode():
        codes = vq.encode_codes(x)
        rec = vq.decode_codes(codes).float().clamp(-1, 1)
    nrow = 8
    rows = []
    for s in range(0, n, nrow):  # originals row, reconstructions row
        rows += [x[s:s + nrow].cpu(), rec[s:s + nrow].cpu()]
    save_image_grid(torch.cat(rows), ctx.dir / "reconstructions.png", nrow=nrow)
    metrics.update({
        "checkpoint": str(Path(path).resolve()),
        "checkpoint_sha256": sha256_file(path),
        "model": t.model,
        "codebook_size": int(vq.config.codebook_size),
        "codebook_dim": int(vq.quantize.embedding.weight.shape[1]),
        "grid": list(codes.shape[1:]),
    })
    return metrics


def _run_tokenize(cfg: PipelineConfig, ctx: StageContext, device: str) -> dict:
    from codeprior.tokenize import load_tokenizer, tokenize_dataset

    ckpt = _vq_checkpoint(ctx)
    vq = _load_vq(cfg, ckpt, device)
    t0 = time.perf_counter()
    m = tokenize_dataset(vq, cfg.data.dataset, ctx.dir / "codes", data_dir=cfg.data.data_dir, flip=cfg.tokenize.flip,
                         batch_size=cfg.tokenize.batch_size, image_size=cfg.data.image_size, tokenizer_path=ckpt,
                         num_workers=cfg.num_workers, device=device, log=ctx.log)
    return {
        "codes": str((ctx.dir / "codes").resolve()),
        "grid": m.get("grid"),
        "seq_len": m.get("seq_len"),
        "codebook_size": m.get("codebook_size"),
        "n_aug": m.get("n_aug"),
        "dtype": m.get("dtype"),
        "splits": {k: (v.get("n") if isinstance(v, dict) else v) for k, v in (m.get("splits") or {}).items()},
        "images_per_s": sum((v.get("n", 0) if isinstance(v, dict) else 0) for v in (m.get("splits") or {}).values())
        / max(time.perf_counter() - t0, 1e-9),
    }


def _prior_k(cfg: PipelineConfig, num_codes: int) -> int:
    from codeprior.codebook import k_from_compression_rate

    if cfg.priors.k is not None:
        return int(cfg.priors.k)
    return int(k_from_compression_rate(num_codes, cfg.priors.compression_rate, name="priors.compression_rate"))


def _run_priors(cfg: PipelineConfig, ctx: StageContext) -> dict:
    from codeprior.codebook import load_codebook
    from codeprior.priors import extract

    cb = load_codebook(_vq_checkpoint(ctx))
    k = _prior_k(cfg, int(cb.shape[0]))
    priors = {}
    files = {}
    for method in cfg.priors.methods:
        out = ctx.dir / f"{method}.safetensors"
        p = extract(cb, method, k, normalize=cfg.priors.normalize, seed=cfg.seed, source=_vq_checkpoint(ctx))
        p.save(out)
        priors[method] = p
        files[method] = str(out.resolve())
    from codeprior.priors.quality import prior_quality, quality_row

    quality = {m: prior_quality(p, cb, normalize=cfg.priors.normalize) for m, p in priors.items()}
    rows = {m: quality_row(q, name=m) for m, q in quality.items()}
    write_json_atomic(ctx.dir / "quality.json",
                      {"k": k, "normalize": cfg.priors.normalize, "priors": quality, "rows": rows})
    write_json_atomic(ctx.dir / "sizes.json", {m: p.cluster_sizes().tolist() for m, p in priors.items()})
    summary = {m: {"singleton_cluster_share": q["sizes"]["singleton_cluster_share"], "max_size": q["sizes"]["max"],
                   "nn_same_cluster_share": q["nn_same_cluster_share"],
                   "seconds": priors[m].metadata.get("seconds")} for m, q in quality.items()}
    return {"k": k, "num_codes": int(cb.shape[0]), "files": files, "summary": summary}


# ---------------------------------------------------------------------------------------------- evaluation
# Metrics live in codeprior.evaluate; these helpers only pick the feature extractor, the reference images
# and the image subsets the stages use.


def _test_images_uint8(cfg: PipelineConfig, n: int | None = None) -> tuple[Any, Any]:
    """uint8 test images [N, H, W(, C)] and labels: the IDX test split, or the first ``n`` of an image folder's val."""
    import numpy as np
    import torch

    if cfg.data.dataset in IDX_DATASETS:
        from codeprior.evaluate.classifier import load_split

        x, y = load_split(cfg.data.dataset, "test", cfg.data.data_dir)
        return (x, y) if n is None else (x[:n], y[:n])
    from codeprior.data.images import build_image_dataset

    ds = build_image_dataset(cfg.data.dataset, _test_split(cfg.data.dataset), None, cfg.data.image_size)
    n = len(ds) if n is None else min(n, len(ds))
    xs, ys = [], []
    for i in range(n):
        x, y = ds[i]
        xs.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy())
        ys.append(y)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def _extractor(cfg: PipelineConfig, classifier_metrics: dict) -> Any:
    """The feature extractor the classifier stage chose (Inception with given weights, else the classifier)."""
    from codeprior.evaluate import make_extractor

    if cfg.classifier.inception_weights:
        return make_extractor("inception", inception_weights=cfg.classifier.inception_weights)
    return make_extractor("classifier", classifier=classifier_metrics["checkpoint"])


def describe_features(desc: dict) -> str:
    """One phrase naming a feature extractor (for tables and the report)."""
    if desc.get("name") == "classifier":
        return (f"in-project classifier trained on {desc.get('dataset')} ({desc.get('num_features')}-d penultimate "
                "features)")
    return f"{desc.get('name')} ({desc.get('path') or desc.get('weights') or ''})".strip()


def _reference(cfg: PipelineConfig) -> tuple[Any, str]:
    from codeprior.evaluate.metrics import load_reference

    return load_reference(cfg.evaluate.reference, cfg.data.dataset, cfg.data.data_dir)


def _run_classifier(cfg: PipelineConfig, ctx: StageContext, device: str) -> dict:
    import torch

    from codeprior.evaluate.classifier import (
        ClassifierConfig,
        default_classifier_path,
        get_classifier,
        load_classifier,
    )

    c = cfg.classifier
    out = ctx.dir / "classifier.pt"
    if c.inception_weights:
        ext = _extractor(cfg, {})
        desc = ext.describe()
        path = None
    else:
        if c.checkpoint:
            loaded = load_classifier(c.checkpoint)
            path = c.checkpoint
        else:
            cc = ClassifierConfig(epochs=c.epochs, batch_size=c.batch_size, seed=cfg.seed)
            loaded = None
            cached = default_classifier_path(cfg.data.dataset)
            if c.use_cache and cached.is_file():
                try:
                    loaded = get_classifier(cfg.data.dataset, cfg.data.data_dir, cached, cc, train_if_missing=False,
                                            log=ctx.log)
                    shutil.copyfile(cached, out)
                    ctx.log(f"[{ctx.name}] reusing the cached classifier {cached} (same config and data)")
                except CodepriorError:
                    loaded = None
            if loaded is None:
                loaded = get_classifier(cfg.data.dataset, cfg.data.data_dir, out, cc, force=True, log=ctx.log)
            path = str(out.resolve())
        desc = loaded.describe()
        ext = _extractor(cfg, {"checkpoint": path})
    # reference features once, for the FID-vs-step hook of the training stages
    ref, ref_name = _reference(cfg)
    feats, logits = ext.extract(ref, desc="reference features")
    from codeprior.utils.io import torch_save_atomic

    torch_save_atomic({"features": feats, "logits": logits, "reference": ref_name}, ctx.dir / "reference_features.pt")
    return {
        "checkpoint": path,
        "feature_extractor": desc,
        "features": describe_features(desc),
        "test_accuracy": desc.get("test_accuracy"),
        "reference": ref_name,
        "reference_features": str((ctx.dir / "reference_features.pt").resolve()),
        "num_reference": int(len(feats)),
    }


def _run_tokenizer_eval(cfg: PipelineConfig, ctx: StageContext, device: str) -> dict:
    from codeprior.evaluate import evaluate_tokenizer

    vq = _load_vq(cfg, _vq_checkpoint(ctx), "cpu")  # codeprior.evaluate's encode/decode helpers work on the CPU
    images, labels = _test_images_uint8(cfg, cfg.tokenizer.eval_images)
    ext = _extractor(cfg, ctx.upstream["classifier"]["metrics"])
    res = evaluate_tokenizer(vq, images, labels, ext)
    write_json_atomic(ctx.dir / "tokenizer_eval.json", res)
    return {k: v for k, v in res.items() if isinstance(v, (int, float, str)) or k == "grid"}


def _run_substitution(cfg: PipelineConfig, ctx: StageContext, device: str) -> dict:
    import torch

    from codeprior.data.images import save_image_grid
    from codeprior.evaluate.substitution import substitute_codes, substitution_reference, substitution_test
    from codeprior.evaluate.tokenizer_eval import decode_codes, encode_images, to_uint8
    from codeprior.priors import load_prior

    vq = _load_vq(cfg, _vq_checkpoint(ctx), "cpu")  # codeprior.evaluate's encode/decode helpers work on the CPU
    images, _ = _test_images_uint8(cfg, cfg.substitution.num_images)
    ext = _extractor(cfg, ctx.upstream["classifier"]["metrics"])
    files = ctx.upstream["priors"]["metrics"]["files"]
    rows, full = [], {}
    n_show = min(8, len(images))
    codes = encode_images(vq, images[:n_show])
    orig = torch.as_tensor(images[:n_show])
    orig = orig.unsqueeze(1) if orig.dim() == 3 else orig.permute(0, 3, 1, 2)
    grid_rows = [orig, to_uint8(decode_codes(vq, codes))]
    ref = substitution_reference(vq, images, ext)  # shared by every prior
    for method, f in files.items():
        prior = load_prior(f)
        res = substitution_test(vq, prior.token_to_cluster, images, ext, draws=cfg.substitution.draws, seed=cfg.seed,
                                reference=ref)
        full[method] = res
        rows.append({
            "prior": method, "k": res["k"], "singleton share": res["singleton_share"],
            "FID vs recon": res["fid_vs_recon"]["mean"], "FID std": res["fid_vs_recon"]["std"],
            "MSE vs recon": res["mse_vs_recon"]["mean"], "PSNR vs recon (dB)": res["psnr_vs_recon"]["mean"],
            "FID vs originals": res["fid_vs_originals"]["mean"], "codes changed": res["changed_share"]["mean"],
        })
        g = torch.Generator().manual_seed(cfg.seed)
        grid_rows.append(to_uint8(decode_codes(vq, substitute_codes(codes, prior.token_to_cluster, g))))
    save_image_grid(torch.cat([r.to(torch.uint8) for r in grid_rows]), ctx.dir / "examples.png", nrow=n_show)
    any_res = next(iter(full.values()))
    note = (f"{any_res['num_images']} test images, {any_res['draws']} draws; untouched reconstructions vs originals: "
            f"rFID {any_res['baseline_rfid']:.3f}. Features: {describe_features(any_res['feature_extractor'])}.")
    write_json_atomic(ctx.dir / "substitution.json", {"rows": rows, "note": note, "results": full})
    return {"rows": rows, "baseline_rfid": any_res["baseline_rfid"]}


def _eval_spec(cfg: PipelineConfig, ctx: StageContext, device: str, refine_stage: str | None) -> dict:
    """What :func:`codeprior.curves.make_fid_fn` needs (FID of a model's samples), as plain data."""
    from dataclasses import asdict

    cm = ctx.upstream["classifier"]["metrics"]
    return {
        "classifier": cm.get("checkpoint"),
        "inception_weights": cfg.classifier.inception_weights,
        "reference_features": cm["reference_features"],
        "vq": _vq_checkpoint(ctx),
        "vq_config": cfg.tokenizer.model if cfg.tokenizer.checkpoint else None,
        "refine": ctx.upstream[refine_stage]["metrics"]["checkpoint"] if refine_stage else None,
        "num": cfg.train.eval_samples,
        "batch_size": cfg.sample.batch_size,
        "settings": asdict(_sample_settings(cfg, refine_stage is not None)),
        "grid": ctx.upstream["tokenize"]["metrics"]["grid"],
        "device": device,
    }


def _run_evaluate(cfg: PipelineConfig, ctx: StageContext, device: str) -> dict:
    from codeprior.evaluate import evaluate_images, load_samples_npz

    cm = ctx.upstream["classifier"]["metrics"]
    ext = _extractor(cfg, cm)
    ref, ref_name = _reference(cfg)
    rows, full = [], {}
    for v, run, seed in variant_runs(cfg):
        images, labels = load_samples_npz(ctx.upstream[f"sample-{run}"]["metrics"]["samples"])
        res = evaluate_images(images, labels, ref, ext, data=cfg.data.dataset, data_dir=cfg.data.data_dir,
                              nearest_k=cfg.evaluate.prdc_k, seed=cfg.seed)
        full[run] = res
        rows.append({"variant": v.name, "run": run, "seed": seed, "objective": v.objective, "prior": v.prior,
                     "fid": res.get("fid"),
                     "kid": res.get("kid_mean"), "kid_std": res.get("kid_std"), "is": res.get("is_mean"),
                     "is_std": res.get("is_std"), "precision": res.get("precision"), "recall": res.get("recall"),
                     "density": res.get("density"), "coverage": res.get("coverage"),
                     "class_match": res.get("class_match"), "num_samples": res.get("num_samples")})
    desc = cm["feature_extractor"]
    out = {"feature_extractor": describe_features(desc), "feature_accuracy": desc.get("test_accuracy"),
           "feature_details": desc, "reference": ref_name, "num_reference": int(len(ref)),
           "num_samples": cfg.sample.num_samples, "seeds": cfg.train.seeds, "rows": rows,
           "summary": summarize(rows), "results": full}
    write_json_atomic(ctx.dir / "metrics.json", out)
    return {"rows": rows, "feature_extractor": out["feature_extractor"], "feature_accuracy": out["feature_accuracy"]}


# ---------------------------------------------------------------------------------------------- training
def _metric_prior(cfg: PipelineConfig) -> str:
    """The prior used to log cluster accuracy for every run (so runs compare): the first variant's prior."""
    for v in cfg.train.variants:
        if v.prior:
            return v.prior
    return cfg.priors.methods[0]


def _coarse_priors(cfg: PipelineConfig) -> list[str]:
    out: list[str] = []
    for v in cfg.train.variants:
        if v.objective == "coarse" and v.prior not in out:
            out.append(v.prior)
    return out


def variant_runs(cfg: PipelineConfig) -> list[tuple[VariantConfig, str, int]]:
    """``(variant, run name, training seed)`` of every AR run: ``<name>`` for the first seed, ``<name>-seedK`` after."""
    return [(v, v.name if k == 0 else f"{v.name}-seed{k}", cfg.seed + k)
            for v in cfg.train.variants for k in range(cfg.train.seeds)]


def refine_stage_name(cfg: PipelineConfig, prior: str) -> str:
    """``train-refine`` when one prior needs a refine model, else ``train-refine-<prior>``."""
    return "train-refine" if len(_coarse_priors(cfg)) == 1 else f"train-refine-{prior}"


def _train_config_dict(cfg: PipelineConfig, ctx: StageContext, device: str, *, objective: str, model: str,
                       prior_file: str | None, lam: float, steps: int, batch: int, lr: float,
                       seed: int | None = None) -> dict:
    t = cfg.train
    return {
        "codes": ctx.upstream["tokenize"]["metrics"]["codes"],
        "val_split": next((sp for sp in ("test", "val") if sp in (ctx.upstream["tokenize"]["metrics"].get("splits")
                                                                  or {"test": 0})), "test"),
        "out": str(ctx.dir / "run"),
        "model": model,
        "objective": objective,
        "prior": prior_file,
        "lam": lam,
        "global_batch": batch,
        "grad_accum": t.grad_accum,
        "max_steps": steps,
        "lr": lr,
        "weight_decay": t.weight_decay,
        "schedule": "cosine",
        "warmup_steps": min(t.warmup_steps, max(0, steps - 1)),
        "ema": t.ema if objective != "refine" else 0.0,
        "dropout": t.dropout,
        "device": device,
        "precision": t.precision,
        "compile": t.compile,
        "fsdp": t.fsdp,
        "seed": cfg.seed if seed is None else seed,
        "log_every": max(1, min(100, steps // 200)),
        "val_every": 0,
        "val_batches": t.val_batches,
        "eval_every": t.eval_every if objective != "refine" else 0,
        "ckpt_every": min(t.ckpt_every, steps),
        "keep_ckpts": t.keep_ckpts,
        "tensorboard": True,
        "resume": "auto" if ctx.resume else None,
        "overwrite": True,
        "progress": True,
    }


def _curves(run: Path) -> dict:
    """``metrics.csv`` + ``eval.jsonl`` of a trainer run -> ``{"train": {col: [...]}, "eval": {key: [...]}}``."""
    import csv

    train: dict[str, list] = {}
    csv_path = run / "metrics.csv"
    if csv_path.is_file():
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        cols = ["step", "loss", "token_loss", "cluster_loss", "token_acc", "cluster_acc", "lr", "tokens_per_s",
                "val_loss", "val_token_acc", "val_cluster_acc"]
        for c in cols:
            vals = [float(r[c]) if r.get(c) not in (None, "") else None for r in rows]
            if any(v is not None for v in vals):
                train[c] = vals
    ev: dict[str, list] = {}
    jl = run / "eval.jsonl"
    if jl.is_file():
        by_step: dict[int, dict] = {}  # a resumed run may evaluate a step twice: keep the latest record
        for line in jl.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                by_step[int(rec["step"])] = rec
        recs = [by_step[k] for k in sorted(by_step)]
        keys = sorted({k for r in recs for k, v in r.items() if isinstance(v, (int, float))})
        ev = {k: [r.get(k) for r in recs] for k in keys}
    return {"train": train, "eval": ev}


def _run_train(cfg: PipelineConfig, ctx: StageContext, device: str, *, objective: str, prior: str | None,
               lam: float = 1.0, seed: int | None = None) -> dict:
    """One trainer run (GPT variant or the refine model) in ``ctx.dir/run``; GPT runs keep weight snapshots every
    ``train.eval_every`` steps for the FID-vs-step curve that their sample stage measures (:mod:`codeprior.curves`).

    ``seed`` is the training seed (default: the run's).
    """
    is_refine = objective == "refine"
    r = cfg.refine
    prior_file = ctx.upstream["priors"]["metrics"]["files"][prior] if prior else None
    tc = _train_config_dict(
        cfg, ctx, device, objective=objective, model=r.model if is_refine else cfg.train.model, prior_file=prior_file,
        lam=lam, steps=r.steps if is_refine else cfg.train.steps,
        batch=r.batch_size if is_refine else cfg.train.batch_size, lr=r.lr if is_refine else cfg.train.lr,
        seed=cfg.seed if seed is None else seed,
    )
    if is_refine:
        tc["model_overrides"] = {"causal": r.causal, "restrict": r.restrict}
    spec = {"train": tc, "snapshots": not is_refine and cfg.train.eval_samples > 0}
    write_json_atomic(ctx.dir / "train_spec.json", spec)
    tr = cfg.train.torchrun
    if tr is not None and (tr.nproc_per_node > 1 or tr.nnodes > 1):
        cmd = torchrun_command(tr, ctx.dir / "train_spec.json")
        ctx.log(f"[{ctx.name}] launching: {' '.join(cmd)}")
        rc = subprocess.call(cmd)
        if rc != 0:
            raise CodepriorError(f"{ctx.name}: torchrun exited with code {rc} (see the output above)")
        summary = json.loads((ctx.dir / "run" / "summary.json").read_text())
    else:
        summary = _train_worker(spec)
    if not summary.get("finished", False):
        raise CodepriorError(
            f"{ctx.name}: training stopped at step {summary.get('step')} of {summary.get('total_steps')}"
        )
    curves = _curves(ctx.dir / "run")
    write_json_atomic(ctx.dir / "curves.json", curves)
    from codeprior.utils.io import load_checkpoint

    sd = load_checkpoint(ctx.dir / "run" / "model.pt")["model"]
    params = int(sum(v.numel() for k, v in sd.items() if hasattr(v, "numel") and "token_to_cluster" not in k))
    return {
        "objective": objective,
        "prior": prior if objective != "token" else None,
        "cluster_acc_prior": prior,
        "model": tc["model"],
        "checkpoint": str((ctx.dir / "run" / "model.pt").resolve()),
        "steps": summary.get("step"),
        "final_loss": summary.get("loss"),
        "final_token_acc": summary.get("token_acc"),
        "final_cluster_acc": summary.get("cluster_acc"),
        "val_loss": summary.get("val_loss"),
        "tokens_per_s": summary.get("tokens_per_s"),
        "params": params,
        "world_size": summary.get("world_size"),
        "seed": tc["seed"],
    }


def torchrun_command(tr: TorchrunConfig, spec_path: str | os.PathLike) -> list[str]:
    """The ``torchrun`` command running :func:`_train_worker` on ``spec_path`` (``python -m codeprior.pipeline``)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={tr.nproc_per_node}",
           f"--nnodes={tr.nnodes}"]
    if tr.nnodes > 1:
        cmd += [f"--node_rank={tr.node_rank}", f"--master_addr={tr.master_addr}", f"--master_port={tr.master_port}"]
    else:
        cmd += ["--standalone"]
    return cmd + ["-m", "codeprior.pipeline", "train-worker", str(spec_path)]


def _train_worker(spec: dict) -> dict:
    """Run the trainer from a spec (in-process, or on every rank under torchrun); rank 0 keeps the snapshots."""
    from codeprior.train.trainer import TrainConfig, train

    tc = TrainConfig.from_dict(spec["train"])
    from codeprior.curves import snapshot_fn

    eval_fn = None
    if spec.get("snapshots") and int(os.environ.get("RANK", "0")) == 0:
        eval_fn = snapshot_fn(tc.out)
    return train(tc, eval_fn=eval_fn)


# ---------------------------------------------------------------------------------------------- sampling
def _sample_settings(cfg: PipelineConfig, coarse: bool) -> Any:
    from codeprior.sample import SampleSettings

    sc = cfg.sample
    return SampleSettings(cfg_scale=sc.cfg_scale, temperature=sc.tau1 if coarse else sc.temperature, top_k=sc.top_k,
                          top_p=sc.top_p, seed=cfg.seed, refine_temperature=sc.tau2, refine_top_k=0,
                          refine_mode=sc.refine_mode)


def _load_models(cfg: PipelineConfig, ckpt: str, vq_path: str, refine_path: str | None,
                 device: str) -> tuple[Any, Any, Any]:
    from codeprior.models import load_gpt, load_refine

    gpt = load_gpt(ckpt, device=device)
    vq = _load_vq(cfg, vq_path, device)
    refine = load_refine(refine_path, device=device) if refine_path else None
    return gpt, vq, refine


def _run_sample(cfg: PipelineConfig, ctx: StageContext, device: str, variant: VariantConfig,
                refine_stage: str | None, run: str) -> dict:
    from dataclasses import asdict

    from codeprior.sample import sample_to_dir

    train_m = ctx.upstream[f"train-{run}"]["metrics"]
    refine_path = ctx.upstream[refine_stage]["metrics"]["checkpoint"] if refine_stage else None
    gpt, vq, refine = _load_models(cfg, train_m["checkpoint"], _vq_checkpoint(ctx), refine_path, device)
    settings = _sample_settings(cfg, variant.objective == "coarse")
    grid = tuple(ctx.upstream["tokenize"]["metrics"]["grid"])
    t0 = time.perf_counter()
    npz = sample_to_dir(gpt, vq, ctx.dir, cfg.sample.num_samples, settings, refine=refine, grid=grid,
                        batch_size=cfg.sample.batch_size, grid_per_class=cfg.sample.grid_per_class,
                        extra_meta={"variant": variant.name, "run": run, "checkpoint": train_m["checkpoint"],
                                    "refine": refine_path})
    dt = time.perf_counter() - t0
    curve = {"step": [], "fid": [], "class_match": []}
    if cfg.train.eval_samples > 0:
        from codeprior.curves import fid_curve

        ctx.log(f"[{ctx.name}] FID vs step over the snapshots of train-{run} ({cfg.train.eval_samples} samples each)")
        curve = fid_curve(_eval_spec(cfg, ctx, device, refine_stage), Path(train_m["checkpoint"]).parent, device,
                          log=ctx.log)
    write_json_atomic(ctx.dir / "curve.json", curve)
    return {
        "samples": str(Path(npz).resolve()),
        "curve_fid": curve["fid"][-1] if curve["fid"] else None,
        "num_samples": cfg.sample.num_samples,
        "images_per_s": cfg.sample.num_samples / dt if not ctx.resume else None,
        "coarse_to_fine": refine is not None,
        **{k: v for k, v in asdict(settings).items()},
        "tau1": settings.temperature if refine is not None else None,
        "tau2": settings.refine_temperature if refine is not None else None,
    }


# ---------------------------------------------------------------------------------------------- report
def _run_report(cfg: PipelineConfig, ctx: StageContext) -> dict:
    from codeprior.report import write_report

    html_path, md_path = write_report(ctx.run_dir, title=cfg.name)
    return {"html": str(html_path.resolve()), "markdown": str(md_path.resolve())}


# ---------------------------------------------------------------------------------------------- assembly
def build_stages(cfg: PipelineConfig, device: str) -> list[Stage]:
    """The stages of a config, in order, each with its config slice (what its fingerprint hashes) and deps."""
    c = config_to_dict(cfg)
    seed = {"seed": cfg.seed}
    stages: list[Stage] = [
        Stage("data", lambda ctx: _run_data(cfg, ctx), (), c["data"],
              inputs=lambda: _dataset_fingerprint(cfg.data), description="check the dataset, record sizes and hash"),
        Stage("tokenizer", lambda ctx: _run_tokenizer(cfg, ctx, device), ("data",), {**c["tokenizer"], **seed},
              inputs=(lambda: {"checkpoint": sha256_file(cfg.tokenizer.checkpoint)}) if cfg.tokenizer.checkpoint
              else None,
              description="reuse the given VQ checkpoint" if cfg.tokenizer.checkpoint else "train the VQ tokenizer"),
        Stage("priors", lambda ctx: _run_priors(cfg, ctx), ("tokenizer",), {**c["priors"], **seed},
              description=f"extract {', '.join(cfg.priors.methods)} priors (same k) and their quality"),
        Stage("tokenize", lambda ctx: _run_tokenize(cfg, ctx, device), ("data", "tokenizer"), c["tokenize"],
              description="pre-tokenise train and test splits into code shards"),
    ]
    # Order = scheduling priority under jobs > 1 (ready stages start in list order): the AR trainings need only the
    # codes and the prior, so they come first; the classifier and the refine models train beside them.
    for v, run, tseed in variant_runs(cfg):
        prior = v.prior if v.objective != "token" else _metric_prior(cfg)
        stages.append(Stage(
            f"train-{run}",
            lambda ctx, v=v, prior=prior, tseed=tseed: _run_train(
                cfg, ctx, device, objective=v.objective, prior=prior, lam=v.lam, seed=tseed),
            ("data", "tokenizer", "tokenize", "priors"),
            {"variant": dataclasses.asdict(v), "train": _shared_train(c), "metric_prior": prior, "seed": tseed},
            description=f"train {cfg.train.model}, objective {v.objective}" + (f" with {v.prior}" if v.prior else "")
            + (f", seed {tseed}" if cfg.train.seeds > 1 else ""),
        ))
    stages.append(Stage("classifier", lambda ctx: _run_classifier(cfg, ctx, device), ("data",),
                        {**c["classifier"], **seed},
                        inputs=lambda: {k: sha256_file(v) for k, v in (("checkpoint", cfg.classifier.checkpoint),
                                                                         ("inception", cfg.classifier.inception_weights))
                                        if v},
                        description="feature extractor for FID/KID/IS/PRDC (in-project classifier)"))
    refine_of: dict[str, str] = {}
    for prior in _coarse_priors(cfg):
        name = refine_stage_name(cfg, prior)
        refine_of[prior] = name
        stages.append(Stage(name,
                            lambda ctx, prior=prior: _run_train(cfg, ctx, device, objective="refine", prior=prior),
                            ("tokenize", "priors"), {"refine": c["refine"], "prior": prior, "train": _shared_train(c),
                                                     **seed},
                            description=f"refine model (fine codes from {prior} clusters)"))
    stages.append(Stage("tokenizer-eval", lambda ctx: _run_tokenizer_eval(cfg, ctx, device),
                        ("data", "tokenizer", "classifier"), {"eval_images": cfg.tokenizer.eval_images},
                        description="tokenizer round trip: rFID, PSNR, classifier accuracy on reconstructions"))
    if cfg.substitution.enabled:
        stages.append(Stage("substitution", lambda ctx: _run_substitution(cfg, ctx, device),
                            ("data", "tokenizer", "priors", "classifier"), {**c["substitution"], **seed},
                            description="prior substitution test (random cluster member per code)"))
    for v, run, _ in variant_runs(cfg):
        rs = refine_of.get(v.prior) if v.objective == "coarse" else None
        stages.append(Stage(
            f"sample-{run}",
            lambda ctx, v=v, rs=rs, run=run: _run_sample(cfg, ctx, device, v, rs, run),
            ("tokenizer", "tokenize", "classifier", f"train-{run}") + ((rs,) if rs else ()),
            {**c["sample"], "eval_samples": cfg.train.eval_samples, **seed},
            description="per-class grid and .npz of samples; FID vs step over the training's snapshots",
        ))
    stages.append(Stage(
        "evaluate", lambda ctx: _run_evaluate(cfg, ctx, device),
        ("data", "classifier") + tuple(f"sample-{run}" for _, run, _ in variant_runs(cfg)),
        {**c["evaluate"], "variants": [dataclasses.asdict(v) for v in cfg.train.variants], **seed}
        | ({"seeds": cfg.train.seeds} if cfg.train.seeds > 1 else {}),
        description="metrics of every variant on classifier features",
    ))
    stages.append(Stage("report", lambda ctx: _run_report(cfg, ctx), tuple(s.name for s in stages),
                        {"name": cfg.name}, description="report.html and report.md"))
    return stages


def _shared_train(c: dict) -> dict:
    """The training settings every run shares (the torchrun launch settings do not change the result)."""
    return {k: v for k, v in c["train"].items() if k not in ("variants", "torchrun", "keep_ckpts")}


def run_pipeline(cfg: PipelineConfig, out: str | os.PathLike, *, force: typing.Sequence[str] = (),
                 until: str | None = None, dry_run: bool = False,
                 log: Callable[[str], None] = print) -> list[StageResult]:
    """Run (or with ``dry_run`` only plan) every stage of ``cfg`` in ``out``; print the report path and metrics."""
    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        import torch

        if cfg.threads < 1:
            raise CodepriorError(f"threads: must be >= 1, got {cfg.threads}")
        torch.set_num_threads(cfg.threads)
    if cfg.jobs < 1:
        raise CodepriorError(f"jobs: must be >= 1, got {cfg.jobs}")
    stages = build_stages(cfg, device)
    names = [s.name for s in stages]
    for f in list(force) + ([until] if until else []):
        if f not in names:
            raise CodepriorError(f"no such stage: {f} (stages: {', '.join(names)})")
    for name, n in cfg.stage_threads.items():
        if name not in names:
            raise CodepriorError(f"stage_threads: no such stage {name!r} (stages: {', '.join(names)})")
        if n < 1:
            raise CodepriorError(f"stage_threads.{name}: must be >= 1, got {n}")
    for s in stages:
        s.threads = cfg.stage_threads.get(s.name)
    out = Path(out)
    if dry_run:
        for name, action in plan_stages(stages, out, force):
            log(f"{action:>6}  {name}")
        return []
    env = environment(device)
    log(f"codeprior pipeline '{cfg.name}' -> {out} ({len(stages)} stages; device {device}, "
        f"{env['cpu_cores']} cores, torch {env['torch']})")
    jobs = cfg.jobs if device == "cpu" else 1  # forked stage processes cannot share a CUDA context
    if jobs != cfg.jobs:
        log(f"jobs: {cfg.jobs} -> 1 on {device} (parallel stages are for the CPU)")
    results = run_stages(stages, out, force=force, until=until, config=cfg, log=log, environment=env, jobs=jobs,
                         threads=cfg.threads)
    if any(r.name == "report" for r in results):
        from codeprior.report import metrics_table_text

        log("")
        log(metrics_table_text(out))
        if (out / "results.md").is_file():  # the report stage wrote the table and the verdict
            log("")
            log((out / "results.md").read_text())
        log(f"\nreport: {(out / 'report.html').resolve()}\n        {(out / 'report.md').resolve()}")
    return results


def _main(argv: list[str]) -> int:
    """``python -m codeprior.pipeline train-worker SPEC.json``: the entry point torchrun launches on every rank."""
    if len(argv) != 2 or argv[0] != "train-worker":
        print("usage: python -m codeprior.pipeline train-worker SPEC.json", file=sys.stderr)
        return 2
    try:
        _train_worker(json.loads(Path(argv[1]).read_text()))
    except CodepriorError as e:
        print(f"codeprior: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
