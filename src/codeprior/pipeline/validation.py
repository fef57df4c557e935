"""Validation of a pipeline config beyond pydantic's types: its errors as codeprior's one-line messages, and the
checks across fields (variant names, prior references, value ranges, dataset-dependent requirements).

The error translation is generic (it walks any pydantic model along an error's location), so the messages read
like every other codeprior check: ``cfg.yaml: train.stepz: unknown key (allowed: ...)``,
``cfg.yaml: train.steps: expected an integer, got 'ten'``, ``cfg.yaml: top level: expected a mapping, got list``.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from codeprior.errors import CodepriorError

if TYPE_CHECKING:  # config.py imports this module to validate; the schema is only needed for the annotations
    from pydantic_core import ErrorDetails

    from codeprior.pipeline.config import PipelineConfig

__all__ = ["IDX_DATASETS", "PRIOR_METHODS", "first_error", "validate_config"]

IDX_DATASETS = ("fashion-mnist", "mnist")
PRIOR_METHODS = ("dcpe", "kmeans", "balanced-kmeans")


# ---------------------------------------------------------------------------------------------- type errors
def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X`` (the one non-None member), else ``tp``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _walk(root: type[BaseModel], loc: tuple) -> tuple[tuple, Any, Any]:
    """Follow an error location through the schema: ``(sort key, model holding the last key, type at loc)``."""
    tp: Any = root
    owner: Any = None
    key = []
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, str) and _is_section(tp):
            names = list(tp.model_fields)
            owner = tp
            key.append(names.index(part) if part in names else -1)  # unknown keys first, as each level checks them
            tp = typing.get_type_hints(tp)[part] if part in names else None
        elif isinstance(part, int) and typing.get_origin(tp) is list:
            key.append(part)
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:
            key.append(0)
            tp = None if part == "[key]" else typing.get_args(tp)[1]
        else:
            key.append(0)
    return tuple(key), owner, _unwrap(tp)


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(root: type[BaseModel], err: ErrorDetails, src: str) -> str:
    """One pydantic error as ``<src>: <dotted key>: <what is wrong>`` (the wording of codeprior's other checks)."""
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    _, owner, tp = _walk(root, loc)
    if len(loc) >= 2 and loc[-1] == "[key]":  # a mapping's key of the wrong type: named by the mapping's key
        loc = loc[:-2]
    key = _dotted(loc)
    if kind == "extra_forbidden":
        what = f"unknown key (allowed: {', '.join(owner.model_fields)})"
    elif kind == "missing":
        what = "required key missing"
    elif kind in ("model_type", "model_attributes_type"):
        return f"{src}: {key or 'top level'}: expected a mapping, got {type(value).__name__}"
    elif kind == "literal_error":
        what = f"must be one of {' | '.join(repr(a) for a in typing.get_args(tp))}, got {value!r}"
    else:
        plain = {
            "int_type": "expected an integer",
            "float_type": "expected a number",
            "bool_type": "expected true/false",
            "string_type": "expected a string",
            "finite_number": "expected a finite number",
        }
        if kind in plain:
            what = f"{plain[kind]}, got {value!r}"
        elif kind == "list_type":
            what = f"expected a list, got {type(value).__name__} {value!r}"
        elif kind == "dict_type":
            what = f"expected a mapping, got {type(value).__name__} {value!r}"
        else:
            what = err["msg"]
    return f"{src}: {key}: {what}"


def first_error(e: ValidationError, src: str, root: type[BaseModel]) -> CodepriorError:
    """The error of ``root.model_validate`` a reader meets first (a section's unknown keys before its fields, fields
    in schema order), as one line ``<src>: <dotted key>: <what is wrong>``."""
    errs = sorted(e.errors(), key=lambda err: _walk(root, tuple(err["loc"]))[0])
    return CodepriorError(_message(root, errs[0], src))


# ---------------------------------------------------------------------------------------------- cross-field checks
def _positive(cfg: PipelineConfig, src: str) -> None:
    checks = {
        "tokenizer.steps": cfg.tokenizer.steps or 1,
        "tokenizer.batch_size": cfg.tokenizer.batch_size or 1,
        "tokenizer.num_recon": cfg.tokenizer.num_recon,
        "tokenizer.eval_images": cfg.tokenizer.eval_images,
        "tokenize.batch_size": cfg.tokenize.batch_size,
        "classifier.epochs": cfg.classifier.epochs,
        "classifier.batch_size": cfg.classifier.batch_size,
        "train.steps": cfg.train.steps,
        "train.batch_size": cfg.train.batch_size,
        "train.grad_accum": cfg.train.grad_accum,
        "train.ckpt_every": cfg.train.ckpt_every,
        "train.eval_samples": cfg.train.eval_samples,
        "refine.steps": cfg.refine.steps,
        "refine.batch_size": cfg.refine.batch_size,
        "sample.num_samples": cfg.sample.num_samples,
        "sample.batch_size": cfg.sample.batch_size,
        "sample.grid_per_class": cfg.sample.grid_per_class,
        "substitution.num_images": cfg.substitution.num_images,
        "substitution.draws": cfg.substitution.draws,
        "train.lr": cfg.train.lr,
        "refine.lr": cfg.refine.lr,
        "tokenizer.lr": cfg.tokenizer.lr or 1,
        "sample.temperature": cfg.sample.temperature,
        "sample.tau1": cfg.sample.tau1,
        "sample.tau2": cfg.sample.tau2,
        "evaluate.prdc_k": cfg.evaluate.prdc_k,
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


def _check_dataset(cfg: PipelineConfig, src: str) -> None:
    d = cfg.data
    if d.dataset in IDX_DATASETS:
        if d.image_size is not None:
            raise CodepriorError(f"{src}: data.image_size: only for image folders ({d.dataset} is 28x28)")
        return
    root = Path(os.path.expanduser(d.dataset))
    if not root.is_dir():
        raise CodepriorError(
            f"{src}: data.dataset: expected {' or '.join(IDX_DATASETS)} or an image folder, got "
            f"{d.dataset!r} (no such directory)"
        )
    if not (root / "train").is_dir() or not ((root / "val").is_dir() or (root / "test").is_dir()):
        raise CodepriorError(
            f"{src}: data.dataset: image folder {d.dataset} needs train/ and val/ (or test/) subfolders"
        )
    if not cfg.classifier.inception_weights:
        raise CodepriorError(
            f"{src}: classifier.inception_weights: required for image-folder datasets (the "
            "in-project classifier covers fashion-mnist and mnist)"
        )
    if cfg.evaluate.reference == "test-split":
        raise CodepriorError(
            f"{src}: evaluate.reference: give an .npz of reference images for image-folder "
            "datasets (e.g. ADM's VIRTUAL_imagenet256_labeled.npz)"
        )
    if not cfg.tokenizer.checkpoint:
        raise CodepriorError(
            f"{src}: tokenizer.checkpoint: required for image-folder datasets (tokenizer "
            "training here covers fashion-mnist and mnist)"
        )


def _check_priors_and_variants(cfg: PipelineConfig, src: str) -> None:
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


def _check_decoder(cfg: PipelineConfig, src: str) -> None:
    """``sample.decoder``: valid DecoderSettings; ``accept: prior`` names an extracted prior; ``latent``/``prior``
    only where every variant samples codes (coarse models draw cluster ids)."""
    from codeprior.decoding import DecoderSettings  # imports torch, which loading a config does not need

    d = dict(cfg.sample.decoder)
    try:
        dec = DecoderSettings.coerce(d)
    except CodepriorError as e:
        msg = str(e).removeprefix("sampling: ").replace("--draft-init", "init").replace("--", "")
        raise CodepriorError(f"{src}: sample.decoder: {msg}") from None
    if not dec.speculative:
        return
    if dec.accept == "prior" and dec.prior not in cfg.priors.methods:
        raise CodepriorError(
            f"{src}: sample.decoder.prior: must be one of priors.methods "
            f"({', '.join(cfg.priors.methods)}), got {dec.prior!r}"
        )
    coarse = [v.name for v in cfg.train.variants if v.objective == "coarse"]
    if dec.accept in ("latent", "prior") and coarse:
        raise CodepriorError(
            f"{src}: sample.decoder.accept: {dec.accept} applies to models over codes, but "
            f"{', '.join(coarse)} sample cluster ids (use exact or gsd)"
        )


def validate_config(cfg: PipelineConfig, src: str, base: str | os.PathLike | None = None) -> PipelineConfig:
    """Cross-field checks the types cannot express (names, prior references, value ranges); fills defaults that
    depend on other keys (``priors.compression_rate``) and resolves ``evaluate.reference`` against ``base``."""
    _positive(cfg, src)
    _check_dataset(cfg, src)
    if cfg.tokenizer.schedule not in ("full", "demo"):
        raise CodepriorError(f"{src}: tokenizer.schedule: must be full or demo, got {cfg.tokenizer.schedule!r}")
    if not cfg.device == "auto" and not cfg.device == "cpu" and not cfg.device.startswith("cuda"):
        raise CodepriorError(f"{src}: device: expected auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    _check_priors_and_variants(cfg, src)
    _check_decoder(cfg, src)
    if cfg.train.torchrun is not None:
        t = cfg.train.torchrun
        if t.nproc_per_node < 1 or t.nnodes < 1 or not 0 <= t.node_rank < t.nnodes:
            raise CodepriorError(
                f"{src}: train.torchrun: need nproc_per_node >= 1, nnodes >= 1, 0 <= node_rank < nnodes"
            )
    if cfg.evaluate.reference != "test-split":
        ref = Path(os.path.expanduser(cfg.evaluate.reference))
        if not ref.is_absolute() and base is not None:
            ref = Path(base) / ref
        if not ref.is_file():
            raise CodepriorError(f"{src}: evaluate.reference: no such file: {cfg.evaluate.reference}")
        cfg.evaluate.reference = str(ref.resolve())
    return cfg
