"""The one definition of every training setting: :class:`TrainConfig` (defaults, help text, CLI flag, checks).

``codeprior train`` / ``train-refine`` generate their flags from it (:func:`add_config_flags`,
:func:`config_from_namespace`), the pipeline and the benchmarks build it with :meth:`TrainConfig.from_dict`
(unknown keys are an error) and read the defaults with :func:`config_fields` / :func:`config_defaults`.

Each field's metadata (:func:`codeprior.utils.settings.setting`, the machinery every settings record shares) holds
its help text, its argparse group and type, and, where the flag is not ``--field-name``, the flag spelling
(``--no-tensorboard``, ``--stop-after-steps``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from codeprior.errors import CodepriorError
from codeprior.utils.argtypes import (
    DEVICE_HELP,
    THREADS_HELP,
    image_size_int,
    nonneg_float,
    nonneg_int,
    open_unit_float,
    positive_float,
    positive_int,
    seed_int,
    threads_int,
    unit_float,
)
from codeprior.utils.settings import add_flags, field_infos, flag_of, from_dict, setting

__all__ = [
    "TrainConfig",
    "setting",
    "config_fields",
    "config_defaults",
    "add_config_flags",
    "config_from_namespace",
    "setting_flag",
    "setting_names",
]

GROUPS = ("data and output", "optimisation (LlamaGen defaults)", "model", "runtime", "logging and checkpoints")
_DATA, _OPT, _MODEL, _RUN, _LOG = GROUPS


def setting_names(text: str) -> list[str]:
    """``lr,global-batch,--seed`` -> ``["lr", "global_batch", "seed"]`` (setting names, flag spellings accepted;
    checked against the settings by :meth:`TrainConfig.validate`)."""
    return [n.strip().lstrip("-").replace("-", "_") for n in text.split(",") if n.strip()]


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults are LlamaGen's where LlamaGen has one."""

    codes: str = setting(
        help="code-shard directory (from `codeprior tokenize`); its 'test' split is the validation set when present",
        group=_DATA,
        required=True,
        metavar="DIR",
    )
    out: str = setting(
        help="run directory (checkpoints, metrics.csv, tb/, model.pt)", group=_DATA, required=True, metavar="RUN_DIR"
    )
    model: str = setting("GPT-tiny", "GPT config name (GPT-tiny, GPT-S, GPT-B, GPT-L, ...)")
    objective: str = setting("token", "training objective (train-refine: refine)")
    prior: str | None = setting(
        None,
        "prior .safetensors; needed for cluster-ce and coarse; with token it adds cluster accuracy",
        metavar="PRIOR",
    )
    lam: float = setting(1.0, "weight of the cluster CE term (cluster-ce; 1.0 as IAR)", argtype=nonneg_float)
    level_weights: list[float] = setting(
        [],
        "hier-cluster-ce: weight of each level's cluster CE, finest level first, one per level of the prior "
        "(default: --lam for every level)",
        argtype=nonneg_float,
        nargs="+",
        metavar="W",
    )
    snce_k: int = setting(
        32,
        "snce: codes in each soft target (the target and its K-1 nearest codes; 1 = token CE)",
        argtype=positive_int,
        metavar="K",
    )
    snce_tau: float = setting(
        0.0,
        "snce: temperature of the weights exp(-d^2/tau) (squared L2 on normalised codes); 0 = 0.25 x the median "
        "squared distance from a code to its nearest other code (the prior study's best)",
        argtype=nonneg_float,
        metavar="TAU",
    )
    snce_source: str = setting(
        "code",
        "snce: the ground-truth embedding the weights measure from: the target code's own (code, a static table) "
        "or the encoder output stored in the shards (encoder; `codeprior tokenize --store-embeddings`)",
        choices=("code", "encoder"),
    )
    codebook: str | None = setting(
        None,
        "snce: the tokenizer checkpoint or codebook file of the shards (default: the tokenizer their manifest "
        "names; checked against the shards' codebook hash)",
        metavar="FILE",
    )
    # optimisation
    global_batch: int = setting(64, "samples per optimizer step over all ranks", group=_OPT, argtype=positive_int)
    grad_accum: int = setting(1, "micro-steps per optimizer step", group=_OPT, argtype=positive_int)
    max_steps: int | None = setting(None, "optimizer steps to train for", group=_OPT, argtype=positive_int)
    epochs: float | None = setting(None, "alternatively, epochs of the train split", group=_OPT, argtype=positive_float)
    lr: float = setting(1e-4, "peak learning rate", group=_OPT, argtype=positive_float)
    weight_decay: float = setting(0.05, "AdamW weight decay on 2-D parameters", group=_OPT, argtype=nonneg_float)
    beta1: float = setting(0.9, "AdamW beta1", group=_OPT, argtype=open_unit_float)
    beta2: float = setting(0.95, "AdamW beta2", group=_OPT, argtype=open_unit_float)
    grad_clip: float = setting(1.0, "max global gradient norm, 0 = off", group=_OPT, argtype=nonneg_float)
    schedule: str = setting(
        "constant",
        "learning-rate schedule after warmup (constant, as LlamaGen, or cosine)",
        group=_OPT,
        choices=("constant", "cosine"),
    )
    warmup_steps: int = setting(0, "linear warmup steps", group=_OPT, argtype=nonneg_int)
    min_lr_ratio: float = setting(0.0, "cosine floor as a fraction of --lr", group=_OPT, argtype=unit_float)
    ema: float = setting(
        0.0,
        "keep an EMA of the weights with this decay (e.g. 0.9999); 0 = off",
        group=_OPT,
        argtype=open_unit_float,
        metavar="DECAY",
    )
    # model overrides
    dropout: float | None = setting(
        None, "token/residual/FFN dropout (model default: 0.1)", group=_MODEL, argtype=open_unit_float
    )
    class_dropout: float | None = setting(
        None,
        "probability of replacing the label by the null class, for CFG (GPT default 0.1, refine 0)",
        group=_MODEL,
        argtype=open_unit_float,
    )
    drop_path: float | None = setting(None, "stochastic depth rate", group=_MODEL, argtype=open_unit_float)
    model_overrides: dict[str, Any] = setting(
        {},
        "any model config field, JSON value (e.g. --model-override n_layer=2); repeatable",
        group=_MODEL,
        flag="--model-override",
        action="append",
        metavar="KEY=VALUE",
    )
    # data
    aug: str = setting(
        "random",
        "'random' (one of the stored augmentations per sample and epoch) or a fixed augmentation index",
        group=_DATA,
    )
    val_split: str = setting("test", "held-out split used for validation loss", group=_DATA)
    image_size: int | None = setting(
        None,
        "the image size the codes were made at (LlamaGen's flag); checked against the shards, whose grid is the one "
        "training uses",
        group=_DATA,
        argtype=image_size_int,
        metavar="PX",
    )
    # runtime
    device: str | None = setting("auto", DEVICE_HELP, group=_RUN, metavar="DEVICE")
    precision: str = setting(
        "auto", "auto: bf16 autocast on CUDA, fp32 on CPU", group=_RUN, choices=("auto", "fp32", "bf16")
    )
    compile: bool = setting(False, "torch.compile the model", group=_RUN)
    loss_chunk: int = setting(
        0,
        "apply the output head and the loss TOKENS tokens at a time, never holding the [tokens, vocabulary] logits "
        "(same loss and gradients; less memory; not with --fsdp); 0 = full logits",
        group=_RUN,
        argtype=nonneg_int,
        metavar="TOKENS",
    )
    fsdp: bool = setting(False, "shard the model with FSDP (block-level auto-wrap; under torchrun)", group=_RUN)
    seed: int = setting(0, "seed for weights, data order and augmentations", group=_RUN, argtype=seed_int)
    threads: int = setting(0, THREADS_HELP, group=_RUN, argtype=threads_int, metavar="N")
    # logging / checkpoints
    log_every: int = setting(10, "log train metrics every N steps", group=_LOG, argtype=positive_int)
    val_every: int = setting(0, "validation loss every N steps (0 = only at the end)", group=_LOG, argtype=nonneg_int)
    val_batches: int = setting(0, "cap validation at N batches (0 = the whole split)", group=_LOG, argtype=nonneg_int)
    eval_every: int = setting(
        0, "call the Python API's eval_fn every M steps (0: only at the end, when given)", cli=False
    )
    ckpt_every: int = setting(1000, "write a resumable checkpoint every N steps", group=_LOG, argtype=positive_int)
    keep_ckpts: int = setting(
        2,
        "keep only the newest N step checkpoints besides model.pt (0 = all; a resume needs only the newest)",
        group=_LOG,
        argtype=nonneg_int,
    )
    tensorboard: bool = setting(True, "do not write TensorBoard events", group=_LOG, flag="--no-tensorboard")
    wandb: str | None = setting(None, "also log to Weights & Biases (needs wandb)", group=_LOG, metavar="PROJECT")
    resume: str | None = setting(
        None,
        "continue from CKPT, or (no value) from the newest checkpoint in RUN_DIR if any",
        group=_LOG,
        nargs="?",
        const="auto",
        metavar="CKPT",
    )
    overwrite: bool = setting(False, "start over in a RUN_DIR that already holds checkpoints", group=_LOG)
    allow_changed: list[str] = setting(
        [],
        "with --resume: settings that may differ from the checkpoint's (comma-separated, e.g. lr,global_batch); "
        "other changes are refused (codeprior.train.resume lists those that may always change)",
        group=_LOG,
        argtype=setting_names,
        metavar="SETTING,...",
    )
    stop_at_step: int | None = setting(
        None,
        "stop this invocation at global step STEP (a checkpoint is written; continue with --resume)",
        group=_LOG,
        argtype=positive_int,
        flag="--stop-after-steps",
        metavar="STEP",
    )
    progress: bool = setting(True, "no progress bar", group=_LOG, flag="--no-progress")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config of a dict of settings; a key that is not a setting is a one-line error naming it."""
        return from_dict(cls, d, where="train config")

    def validate(self) -> None:
        """One-line errors for settings that cannot run (checked by :func:`codeprior.train.trainer.train`)."""
        from codeprior.train.objective_traits import TRAITS, all_objectives

        where = "train"
        if self.objective not in TRAITS:
            raise CodepriorError(
                f"{where}: --objective must be one of {', '.join(all_objectives())}, got {self.objective!r}"
            )
        if TRAITS[self.objective].needs_prior and not self.prior:
            raise CodepriorError(f"{where}: --objective {self.objective} needs --prior PRIOR.safetensors")
        if self.max_steps is None and self.epochs is None:
            raise CodepriorError(f"{where}: give --max-steps or --epochs")
        for name in ("global_batch", "grad_accum", "log_every", "ckpt_every"):
            if int(getattr(self, name)) <= 0:
                raise CodepriorError(f"{where}: --{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise CodepriorError(f"{where}: --max-steps must be positive, got {self.max_steps}")
        if self.schedule not in _meta("schedule")["argparse"]["choices"]:
            raise CodepriorError(f"{where}: --schedule must be constant or cosine, got {self.schedule!r}")
        if self.precision not in _meta("precision")["argparse"]["choices"]:
            raise CodepriorError(f"{where}: --precision must be auto, fp32 or bf16, got {self.precision!r}")
        if not 0.0 <= self.ema < 1.0:
            raise CodepriorError(f"{where}: --ema decay must be in [0, 1), got {self.ema}")
        known = {f.name for f in fields(self)} | {"stop_after_steps", "model_override"}
        for name in self.allow_changed:
            if name not in known:
                raise CodepriorError(f"{where}: --allow-changed: {name!r} is not a training setting")
        self.allow_changed = [_ALIASES.get(n, n) for n in self.allow_changed]
        if self.snce_source not in _meta("snce_source")["argparse"]["choices"]:
            raise CodepriorError(f"{where}: --snce-source must be code or encoder, got {self.snce_source!r}")
        if self.snce_k < 1 or self.snce_tau < 0 or any(w < 0 for w in self.level_weights):
            raise CodepriorError(
                f"{where}: --snce-k must be >= 1, --snce-tau >= 0 and --level-weights >= 0; got "
                f"{self.snce_k}, {self.snce_tau}, {self.level_weights}"
            )
        if self.loss_chunk < 0:
            raise CodepriorError(f"{where}: --loss-chunk must be >= 0, got {self.loss_chunk}")
        if self.loss_chunk and not TRAITS[self.objective].loss_chunk:
            if TRAITS[self.objective].model_kind != "gpt":
                raise CodepriorError(f"{where}: --loss-chunk applies to the GPT objectives, not {self.objective}")
            raise CodepriorError(f"{where}: --loss-chunk is not supported with --objective {self.objective}; use 0")
        if self.loss_chunk and self.fsdp:
            raise CodepriorError(
                f"{where}: --loss-chunk is not supported with --fsdp (the head's sharded weight is used outside the "
                "model's forward); drop one of them"
            )
        if self.ema and self.fsdp:
            raise CodepriorError(
                f"{where}: --ema is not supported with --fsdp (the EMA would need the full model on every rank)"
            )


# ------------------------------------------------------------------------------------------------ introspection
def _meta(name: str) -> Mapping[str, Any]:
    return next(f.metadata for f in fields(TrainConfig) if f.name == name)


def config_fields() -> list[dict[str, Any]]:
    """Every setting as ``{"name", "default", "help", "flag"}`` (``default`` absent for required ones)."""
    return field_infos(TrainConfig)


def config_defaults() -> dict[str, Any]:
    """``{name: default}`` of every setting that has one."""
    return {f["name"]: f["default"] for f in config_fields() if "default" in f}


# ------------------------------------------------------------------------------------------------ CLI
#: flag spellings that are not ``--field-name`` -> the field
_ALIASES = {"stop_after_steps": "stop_at_step", "model_override": "model_overrides"}


def setting_flag(name: str) -> str:
    """The CLI flag of setting ``name`` (``--name`` for settings without one)."""
    f = next((f for f in fields(TrainConfig) if f.name == name), None)
    return flag_of(f) if f is not None else "--" + name.replace("_", "-")


def add_config_flags(
    p: argparse.ArgumentParser, *, skip: tuple[str, ...] = (), override: dict[str, dict[str, Any]] | None = None
) -> None:
    """Add one flag per :class:`TrainConfig` field to ``p`` (argparse groups as in :data:`GROUPS`).

    ``skip``: fields the command does not take; ``override``: per-field argparse changes (another default or help
    for the command, e.g. train-refine's ``--model``). Help ends with the default where there is one.
    """
    add_flags(p, TrainConfig, skip=skip, override=override, groups=GROUPS)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (JSON values, else the text) -> a dict of model config overrides."""
    out: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise CodepriorError(f"--model-override: expected KEY=VALUE, got {it!r}")
        key, val = it.split("=", 1)
        try:
            out[key.strip()] = json.loads(val)
        except json.JSONDecodeError:
            out[key.strip()] = val
    return out


def config_from_namespace(args: argparse.Namespace, **fixed: Any) -> TrainConfig:
    """The :class:`TrainConfig` of parsed flags (from :func:`add_config_flags`); ``fixed`` sets the fields the
    command does not expose (``objective="refine"``) and extra model overrides (``model_overrides``)."""
    fixed = dict(fixed)
    extra = fixed.pop("model_overrides", {})
    d: dict[str, Any] = {}
    for f in fields(TrainConfig):
        if f.name in fixed or not hasattr(args, f.name):
            continue
        d[f.name] = getattr(args, f.name)
    over = parse_overrides(d.pop("model_overrides", []))
    for k, v in extra.items():
        over.setdefault(k, v)
    return TrainConfig.from_dict({**d, **fixed, "model_overrides": over})
