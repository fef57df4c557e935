"""What a resumed training run may change, and the checks that make ``--resume`` say what it does.

A checkpoint stores the :class:`codeprior.train.config.TrainConfig` it was trained with (``args``). On resume the
command's settings are compared with it: a setting in :data:`RESUME_MAY_CHANGE` (how long, how often to log and
checkpoint, where and how fast it runs) may differ; any other difference is a one-line refusal naming each changed
setting (old -> new) unless ``--allow-changed NAME,...`` names it, and then the new value really takes effect
(:func:`apply_resumed_settings`: the optimizer state and the schedule would otherwise keep the old lr / betas /
weight decay). The model settings (:data:`MODEL_SETTINGS`) never change on resume: the model is rebuilt from the
checkpoint's own config, so a new value would be silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from codeprior.errors import CodepriorError
from codeprior.train.config import TrainConfig, setting_flag
from codeprior.train.optim import lr_factor

__all__ = ["RESUME_MAY_CHANGE", "MODEL_SETTINGS", "check_resume", "changed_settings", "apply_resumed_settings"]

#: settings a resume may change without being told (the one list; docs/checks.md)
RESUME_MAY_CHANGE = frozenset(
    {
        # how long: extend (or shorten) a run, stop this invocation early
        "max_steps",
        "epochs",
        "stop_at_step",
        # how often to log, validate, evaluate and checkpoint, and where
        "log_every",
        "val_every",
        "val_batches",
        "val_split",
        "eval_every",
        "ckpt_every",
        "keep_ckpts",
        "tensorboard",
        "wandb",
        "progress",
        # where and how the same computation runs (the checkpoint holds full state dicts; the global batch is one
        # setting, so micro-steps may change with the number of processes, as an elastic resume does)
        "grad_accum",
        "device",
        "threads",
        "compile",
        "loss_chunk",
        "fsdp",
        # paths: the prior and the shards are checked by their hashes, not by their names (--image-size is a check
        # against the shards too, not a setting)
        "codes",
        "image_size",
        "out",
        "prior",
        "codebook",
        # the resume itself
        "resume",
        "overwrite",
        "allow_changed",
    }
)
#: rebuilt from the checkpoint's model config on resume: a change cannot take effect, so it is always refused
MODEL_SETTINGS = ("model", "objective", "model_overrides", "dropout", "class_dropout", "drop_path")


def _show(v: Any) -> str:
    return "none" if v is None else (repr(v) if isinstance(v, str) else str(v))


def changed_settings(saved: dict[str, Any], cfg: TrainConfig) -> list[tuple[str, Any, Any]]:
    """``(name, old, new)`` for each setting that differs from the checkpoint's and may not change silently
    (settings the checkpoint does not record, from older versions, are not compared)."""
    now = cfg.to_dict()
    return [
        (k, saved[k], now[k])
        for k in now
        if k in saved and k not in RESUME_MAY_CHANGE and saved[k] != now[k] and not _same_number(saved[k], now[k])
    ]


def _same_number(a: Any, b: Any) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)


def check_resume(
    ckpt: Any, path: Path, cfg: TrainConfig, prior_hash: str | None, manifest: dict[str, Any]
) -> list[tuple[str, Any, Any]]:
    """Refuse a checkpoint that does not continue this run (one line each); returns the allowed changes."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or "trainer" not in ckpt:
        raise CodepriorError(f"{path}: not a resumable codeprior training checkpoint (no trainer state)")
    was = (ckpt.get("provenance") or {}).get("codebook_sha256")
    now = manifest.get("codebook_sha256")
    if was and now and was != now:
        raise CodepriorError(
            f"{cfg.codes}: shards of another codebook than the ones {path} was trained on "
            f"(codebook sha256 {now[:12]}… vs {was[:12]}…); resume on the original shards"
        )
    saved = ckpt.get("args") or {}
    if saved.get("objective") != cfg.objective:
        raise CodepriorError(f"{path}: was trained with --objective {saved.get('objective')}, not {cfg.objective}")
    if saved.get("model") != cfg.model:
        raise CodepriorError(f"{path}: was trained with --model {saved.get('model')}, not {cfg.model}")
    want = ckpt.get("prior_sha256")
    if want != prior_hash:
        if want is None:
            raise CodepriorError(f"{path}: was trained without a prior; drop --prior to resume it")
        if prior_hash is None:
            raise CodepriorError(
                f"{path}: was trained with a prior (sha256 {want[:12]}…); pass the same --prior to resume"
            )
        raise CodepriorError(
            f"{cfg.prior}: prior does not match the checkpoint's (sha256 {prior_hash[:12]}… vs {want[:12]}… in {path}); "
            "resume with the prior the run was started with"
        )
    changed = changed_settings(saved, cfg)
    shown = ", ".join(f"{setting_flag(k)} {_show(a)} -> {_show(b)}" for k, a, b in changed)
    fixed = [k for k, _, _ in changed if k in MODEL_SETTINGS]
    if fixed:
        raise CodepriorError(
            f"{path}: --resume with changed model settings ({shown}); the model is rebuilt from the checkpoint's "
            "config, so resume with the old values or start a new run"
        )
    refused = [k for k, _, _ in changed if k not in cfg.allow_changed]
    if refused:
        raise CodepriorError(
            f"{path}: --resume with changed settings ({shown}); resume with the old values, or pass "
            f"--allow-changed {','.join(k for k, _, _ in changed)} to continue with the new ones"
        )
    return changed


def apply_resumed_settings(opt: torch.optim.Optimizer, sched: Any, cfg: TrainConfig, step: int, total: int) -> None:
    """After loading a checkpoint's optimizer and scheduler state: make this run's lr, betas and weight decay the
    ones in effect (the loaded state holds the old ones). Unchanged settings give the loaded values bit for bit."""
    sched.base_lrs = [cfg.lr for _ in opt.param_groups]
    factor = lr_factor(step, cfg, total)
    for i, g in enumerate(opt.param_groups):
        g["initial_lr"] = cfg.lr
        g["lr"] = cfg.lr * factor
        g["betas"] = (cfg.beta1, cfg.beta2)
        g["weight_decay"] = cfg.weight_decay if i == 0 else 0.0  # optim.param_groups: [decay, no decay]
