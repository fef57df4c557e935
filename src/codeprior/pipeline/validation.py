"""Validation of a pipeline config beyond pydantic's types: its errors as codeprior's one-line messages, and the
checks across fields (variant names, prior references, value ranges, dataset-dependent requirements).

The error translation is generic (it walks any pydantic model along an error's location), so the messages read
like every other codeprior check: ``cfg.yaml: train.stepz: unknown key (allowed: ...)``,
``cfg.yaml: train.steps: expected an integer, got 'ten'``, ``cfg.yaml: top level: expected a mapping, got list``.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from codeprior.decoding.settings import ACCEPT_RULES, DecoderSettings  # torch-free
from codeprior.errors import CodepriorError
from codeprior.evaluate_settings import SPLIT_REFERENCES
from codeprior.idx_datasets import IDX_DATASETS
from codeprior.train.objective_traits import TRAITS, gpt_objectives
from codeprior.utils import argtypes as at

if TYPE_CHECKING:  # config.py imports this module to validate; the schema is only needed for the annotations
    from pydantic_core import ErrorDetails

    from codeprior.pipeline.config import PipelineConfig

__all__ = [
    "IDX_DATASETS",
    "PRIOR_METHODS",
    "first_error",
    "value_bounds",
    "check_bound",
    "check_values",
    "check_k",
    "validate_config",
]

from codeprior.priors.methods import METHODS as PRIOR_METHODS


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


def _message(root: type[BaseModel], err: ErrorDetails, src: str, spelled: Mapping[str, str]) -> str:
    """One pydantic error as ``<src>: <dotted key>: <what is wrong>`` (the wording of codeprior's other checks)."""
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    _, owner, tp = _walk(root, loc)
    if len(loc) >= 2 and loc[-1] == "[key]":  # a mapping's key of the wrong type: named by the mapping's key
        loc = loc[:-2]
    key = _dotted(loc)
    key = spelled.get(key, key)
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


def first_error(
    e: ValidationError, src: str, root: type[BaseModel], spelled: Mapping[str, str] | None = None
) -> CodepriorError:
    """The error of ``root.model_validate`` a reader meets first (a section's unknown keys before its fields, fields
    in schema order), as one line ``<src>: <dotted key>: <what is wrong>``; ``spelled`` maps a renamed key to the old
    spelling the config gave it (the error names the key as written)."""
    errs = sorted(e.errors(), key=lambda err: _walk(root, tuple(err["loc"]))[0])
    return CodepriorError(_message(root, errs[0], src, spelled or {}))


# ---------------------------------------------------------------------------------------------- cross-field checks
def _trainer_type(name: str) -> Callable[[str], Any]:
    """The CLI argument type of the trainer's setting ``name`` (:class:`codeprior.train.config.TrainConfig`)."""
    from codeprior.train.config import TrainConfig

    return next(f.metadata["type"] for f in fields(TrainConfig) if f.name == name)


def _record_bounds(prefix: str, record: type, exclude: tuple[str, ...] = ()) -> dict[str, Callable[[str], Any]]:
    """The bounds of a settings record's numeric settings: each one's CLI argument type, under ``prefix``."""
    from codeprior.utils.settings import record_fields

    return {
        f"{prefix}.{f.name}": f.metadata["type"]
        for f in record_fields(record)
        if f.metadata["type"] is not None and f.name not in exclude and f.metadata.get("schema_type") is None
    }


def value_bounds() -> dict[str, Callable[[str], Any]]:
    """Every numeric pipeline key -> the CLI argument type that bounds it (``codeprior.utils.argtypes``).

    The trainer's settings take the trainer's own flag types (``train.max_steps`` is ``--max-steps``); sections that
    embed a settings record (``sample``, ``sample.decoder``, ``tokenize``, ``evaluate``) take the record's, which
    its command's flags use (``sample.cfg_scale`` is ``sample --cfg-scale``); the others take the type of the flag
    the same setting has on the command line (``seed`` every command's ``--seed``, ``num_workers`` ``tokenize
    --num-workers``), so a value the CLI refuses is refused in a config too, with the CLI's words. Keys ending in
    ``.*`` bound every value of a mapping.
    """
    from codeprior.classifier_settings import ClassifierConfig
    from codeprior.decoding.settings import DecoderSettings, SampleSettings
    from codeprior.evaluate_settings import EvaluateSettings
    from codeprior.pipeline.config import CLASSIFIER_FIXED
    from codeprior.tokenize_settings import TokenizeSettings

    t = _trainer_type
    return {
        "seed": at.nonneg_int,
        "num_workers": at.nonneg_int,
        "threads": at.threads_int,  # 0 = torch's default, as every command's --threads
        "jobs": at.workers_int,
        "stage_threads.*": at.workers_int,
        "data.image_size": at.positive_int,
        "tokenizer.steps": at.positive_int,
        "tokenizer.batch_size": at.positive_int,
        "tokenizer.lr": at.positive_float,
        "tokenizer.num_recon": at.positive_int,
        "tokenizer.num_images": at.positive_int,
        **_record_bounds("tokenize", TokenizeSettings),
        **_record_bounds("classifier", ClassifierConfig, exclude=CLASSIFIER_FIXED),
        "priors.k": at.positive_int,
        "priors.compression_rate": at.rate_float,
        "substitution.num_images": at.positive_int,
        "substitution.draws": at.positive_int,
        "train.max_steps": t("max_steps"),
        "train.global_batch": t("global_batch"),
        "train.lr": t("lr"),
        "train.warmup_steps": t("warmup_steps"),
        "train.weight_decay": t("weight_decay"),
        "train.grad_accum": t("grad_accum"),
        "train.ckpt_every": t("ckpt_every"),
        "train.keep_ckpts": t("keep_ckpts"),
        "train.eval_every": at.nonneg_int,  # the trainer's eval_every has no flag (Python API only)
        "train.eval_samples": at.positive_int,
        "train.val_batches": t("val_batches"),
        "train.seeds": at.positive_int,
        "train.ema": t("ema"),
        "train.dropout": t("dropout"),
        "train.loss_chunk": t("loss_chunk"),
        "train.variants[].lam": t("lam"),
        "train.variants[].snce_k": t("snce_k"),
        "train.variants[].snce_tau": t("snce_tau"),
        "train.torchrun.nproc_per_node": at.positive_int,
        "train.torchrun.nnodes": at.positive_int,
        "train.torchrun.node_rank": at.nonneg_int,
        "train.torchrun.master_port": at.positive_int,
        "refine.max_steps": t("max_steps"),
        "refine.global_batch": t("global_batch"),
        "refine.lr": t("lr"),
        "sample.num_samples": at.positive_int,
        "sample.grid_per_class": at.positive_int,
        "sample.batch_size": at.positive_int,
        **_record_bounds("sample", SampleSettings, exclude=("seed",)),
        **_record_bounds("sample.decoder", DecoderSettings),
        **_record_bounds("evaluate", EvaluateSettings, exclude=("seed",)),
    }


def _values(obj: Any, path: list[str]) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of ``obj`` at a bounds key (``a.b``, ``a[].b``, ``a.*``); absent sections: none."""
    if not path:
        return [("", obj)]
    head, rest = path[0], path[1:]
    if obj is None:
        return []
    if head == "*":
        return [(f".{k}{sub}", v) for k, x in obj.items() for sub, v in _values(x, rest)]
    if head.endswith("[]"):
        items = getattr(obj, head[:-2])
        return [(f".{head[:-2]}[{i}]{sub}", v) for i, x in enumerate(items) for sub, v in _values(x, rest)]
    value = obj.get(head) if isinstance(obj, dict) else getattr(obj, head)  # a section set to a dict in Python
    return [(f".{head}{sub}", v) for sub, v in _values(value, rest)]


def check_bound(argtype: Callable[[str], Any], value: Any, key: str, src: str) -> None:
    """``value`` through the CLI argument type ``argtype``: its refusal as ``<src>: <key>: <the CLI's words>``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if "int" in getattr(argtype, "__name__", "") else "a number"
        raise CodepriorError(f"{src}: {key}: expected {kind}, got {value!r}")
    try:
        argtype(repr(value))
    except argparse.ArgumentTypeError as e:
        raise CodepriorError(f"{src}: {key}: {e}") from None


def check_values(cfg: PipelineConfig, src: str, spelled: Mapping[str, str] | None = None) -> None:
    """Every numeric key within the bounds the CLI gives the same setting (:func:`value_bounds`); ``null`` (the
    default of optional keys) is not checked."""
    for bound_key, argtype in value_bounds().items():
        for key, v in _values(cfg, bound_key.split(".")):
            if v is not None:
                key = key.lstrip(".")
                check_bound(argtype, v, (spelled or {}).get(key, key), src)
    t = cfg.train.torchrun
    if t is not None and not t.node_rank < t.nnodes:
        raise CodepriorError(f"{src}: train.torchrun.node_rank: must be < nnodes ({t.nnodes}), got {t.node_rank}")


def _check_models(cfg: PipelineConfig, src: str) -> None:
    """``train.model``, ``refine.model`` and ``tokenizer.model`` name known configs; ``priors.k`` fits the codebook
    of a tokenizer trained here (a given checkpoint's codebook is checked by the priors stage when it loads it)."""
    from codeprior.models.gpt_config import GPT_CONFIGS  # imports torch, which parsing a config does not need
    from codeprior.models.refine import REFINE_CONFIGS
    from codeprior.models.vq import VQ_CONFIGS

    for key, name, known in (
        ("train.model", cfg.train.model, GPT_CONFIGS),
        ("refine.model", cfg.refine.model, REFINE_CONFIGS),
        ("tokenizer.model", cfg.tokenizer.model, VQ_CONFIGS),
    ):
        if name not in known:
            raise CodepriorError(f"{src}: {key}: unknown model {name!r} (known: {', '.join(known)})")
    if not cfg.tokenizer.checkpoint:
        check_k(cfg, int(VQ_CONFIGS[cfg.tokenizer.model].codebook_size), f"{src}: priors", cfg.tokenizer.model)


def check_k(cfg: PipelineConfig, num_codes: int, where: str, tokenizer: str) -> int:
    """The clusters per prior (``priors.k``, or the codebook size over ``priors.compression_rate``), refused when it
    exceeds the codebook's ``num_codes`` codes."""
    from codeprior.codebook import k_from_compression_rate

    pr = cfg.priors
    if pr.k is None:
        return int(k_from_compression_rate(num_codes, pr.compression_rate, name=f"{where}.compression_rate"))
    if pr.k > num_codes:
        raise CodepriorError(
            f"{where}.k: {pr.k} clusters for a codebook of {num_codes} codes ({tokenizer}); k must be <= {num_codes}"
        )
    return int(pr.k)


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
    if cfg.evaluate.reference in SPLIT_REFERENCES:
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
    _check_levels(pr, src)
    if not pr.methods:
        raise CodepriorError(f"{src}: priors.methods: empty (give at least one of {', '.join(PRIOR_METHODS)})")
    names = set()
    if not cfg.train.variants:
        raise CodepriorError(f"{src}: train.variants: empty (at least one variant is needed)")
    for i, v in enumerate(cfg.train.variants):
        key = f"train.variants[{i}]"
        if v.objective not in gpt_objectives():  # the registry, not a Literal: objectives registered later count
            choices = " | ".join(repr(o) for o in gpt_objectives())
            raise CodepriorError(f"{src}: {key}.objective: must be one of {choices}, got {v.objective!r}")
        if not v.name or not all(c.isalnum() or c in "-_." for c in v.name) or v.name.startswith("."):
            raise CodepriorError(f"{src}: {key}.name: use letters, digits, '-', '_' or '.', got {v.name!r}")
        if v.name in names or v.name == "refine" or v.name.startswith("refine-"):
            raise CodepriorError(f"{src}: {key}.name: duplicate or reserved name {v.name!r}")
        names.add(v.name)
        traits = TRAITS[v.objective]
        if not traits.needs_prior and v.prior is not None:
            raise CodepriorError(f"{src}: {key}.prior: the {v.objective} objective uses no prior")
        if traits.needs_prior:
            if v.prior is None:
                raise CodepriorError(f"{src}: {key}.prior: required for objective {v.objective}")
            if v.prior not in pr.methods:
                raise CodepriorError(
                    f"{src}: {key}.prior: {v.prior!r} is not extracted (priors.methods: {', '.join(pr.methods)})"
                )
        _check_objective_settings(v, key, cfg, src)


#: prior methods whose files can carry nested levels (``priors.levels``; codeprior.priors.extract.coarser_levels)
LEVEL_METHODS = ("dcpe", "kmeans")


def _check_levels(pr: Any, src: str) -> None:
    """``priors.levels``: compression rates >= 1, increasing, each above the first level's."""
    if pr.levels is None:
        return
    for i, r in enumerate(pr.levels):
        check_bound(at.rate_float, r, f"priors.levels[{i}]", src)
    first = pr.compression_rate
    rates = ([first] if first is not None else []) + list(pr.levels)
    if not pr.levels or any(b <= a for a, b in zip(rates, rates[1:])):
        raise CodepriorError(
            f"{src}: priors.levels: give increasing compression rates above compression_rate ({first}), got {pr.levels}"
        )


def _check_objective_settings(v: Any, key: str, cfg: PipelineConfig, src: str) -> None:
    """A variant's objective settings belong to its objective; an objective with level weights needs a prior with
    levels (``priors.levels``, a dcpe or kmeans prior)."""
    from codeprior.train.objective_traits import OBJECTIVE_SETTINGS

    own, pr = OBJECTIVE_SETTINGS.get(v.objective, ()), cfg.priors
    for name in v.trainer_settings():
        if name not in own:
            raise CodepriorError(f"{src}: {key}.{name}: not a setting of objective {v.objective}")
    if v.snce_source == "encoder" and not cfg.tokenize.store_embeddings:
        raise CodepriorError(f"{src}: {key}.snce_source: encoder reads embeddings; set tokenize.store_embeddings: true")
    for i, w in enumerate(v.level_weights or []):
        check_bound(at.nonneg_float, w, f"{key}.level_weights[{i}]", src)
    if "level_weights" in own:
        if not pr.levels or v.prior not in LEVEL_METHODS:
            raise CodepriorError(
                f"{src}: {key}: hier-cluster-ce needs priors.levels (coarser compression rates, e.g. [4, 8]) and a "
                f"dcpe or kmeans prior, got levels {pr.levels} and prior {v.prior!r}"
            )
        if v.level_weights is not None and len(v.level_weights) != 1 + len(pr.levels):
            raise CodepriorError(
                f"{src}: {key}.level_weights: {len(v.level_weights)} weight(s) for {1 + len(pr.levels)} levels"
            )


def _check_choices(section: Any, record: type, key: str, src: str, spelled: Mapping[str, str]) -> None:
    """The settings of ``section`` that take one of a registry's names (``choices``) against it, as
    ``<src>: <key>.<name>: must be one of 'a' | 'b', got 'x'``."""
    from codeprior.utils.settings import record_fields

    for f in record_fields(record):
        choices = f.metadata["argparse"].get("choices")
        value = getattr(section, f.name, None) if not isinstance(section, dict) else section.get(f.name)
        if choices is not None and value is not None and value not in choices:
            name = spelled.get(f"{key}.{f.name}", f"{key}.{f.name}")
            raise CodepriorError(f"{src}: {name}: must be one of {' | '.join(repr(c) for c in choices)}, got {value!r}")


def _check_decoder(cfg: PipelineConfig, src: str, spelled: Mapping[str, str]) -> None:
    """``sample`` and ``sample.decoder``: their choices; ``window`` 'auto' or a window; ``accept: prior`` names an
    extracted prior; ``latent``/``prior`` only where every variant samples codes (coarse models draw cluster ids)."""
    from codeprior.decoding.settings import SampleSettings, window_arg

    _check_choices(cfg.sample, SampleSettings, "sample", src, spelled)
    d = cfg.sample.decoder  # a section, or a plain dict set in Python
    d = d if isinstance(d, dict) else d.model_dump()
    _check_choices(d, DecoderSettings, "sample.decoder", src, spelled)
    w = d.get("window")
    if w is not None and w != "auto":
        if isinstance(w, bool) or not isinstance(w, int):
            raise CodepriorError(f"{src}: sample.decoder.window: expected an integer, got {w!r}")
        check_bound(window_arg, w, "sample.decoder.window", src)
    dec = DecoderSettings.coerce({**d, "prior": None, "accept": "exact"})  # the rest checked, prior below
    if dec.decoder != "sjd":
        return
    accept = d.get("accept", "exact")
    rule = ACCEPT_RULES[accept]
    if rule.needs_prior and d.get("prior") not in cfg.priors.methods:
        raise CodepriorError(
            f"{src}: sample.decoder.prior: must be one of priors.methods "
            f"({', '.join(cfg.priors.methods)}), got {d.get('prior')!r}"
        )
    coarse = [v.name for v in cfg.train.variants if TRAITS[v.objective].needs_refine]
    if rule.codes_only and coarse:
        usable = " or ".join(n for n, r in ACCEPT_RULES.items() if not r.codes_only)
        raise CodepriorError(
            f"{src}: sample.decoder.accept: {accept} applies to models over codes, but "
            f"{', '.join(coarse)} sample cluster ids (use {usable})"
        )


def validate_config(
    cfg: PipelineConfig,
    src: str,
    base: str | os.PathLike | None = None,
    spelled: Mapping[str, str] | None = None,
) -> PipelineConfig:
    """Cross-field checks the types cannot express (names, prior references, value ranges); fills defaults that
    depend on other keys (``priors.compression_rate``) and resolves ``evaluate.reference`` against ``base``."""
    spelled = spelled or {}
    check_values(cfg, src, spelled)
    _check_dataset(cfg, src)
    if cfg.tokenizer.schedule not in ("full", "demo"):
        raise CodepriorError(f"{src}: tokenizer.schedule: must be full or demo, got {cfg.tokenizer.schedule!r}")
    if not cfg.device == "auto" and not cfg.device == "cpu" and not cfg.device.startswith("cuda"):
        raise CodepriorError(f"{src}: device: expected auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    _check_priors_and_variants(cfg, src)
    _check_decoder(cfg, src, spelled)
    _check_models(cfg, src)
    if cfg.evaluate.reference not in SPLIT_REFERENCES:
        ref = Path(os.path.expanduser(cfg.evaluate.reference))
        if not ref.is_absolute() and base is not None:
            ref = Path(base) / ref
        if not ref.is_file():
            raise CodepriorError(f"{src}: evaluate.reference: no such file: {cfg.evaluate.reference}")
        cfg.evaluate.reference = str(ref.resolve())
    return cfg
