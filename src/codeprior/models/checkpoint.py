"""Checkpoint interop with LlamaGen: load and save GPT, VQ and refine models in LlamaGen's file layout.

Layout read and written (the DDP layout of LlamaGen's ``train_c2i.py`` / ``vq_train.py``)::

    {"model": state_dict, "optimizer": ..., "steps": int, "args": dict, "ema": state_dict (optional),
     "config": {"kind": "gpt" | "vq" | "refine", ...}}      # <- our addition; LlamaGen ignores unknown keys

Also read: bare state dicts (LlamaGen's FSDP ``consolidated.pth``) and the released files that hold only
``{"model": sd}``. Wrapper prefixes ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) are stripped when
*every* key carries them. Key matching is strict: any missing/unexpected key or shape mismatch raises one
:class:`CodepriorError` that lists them (never a silent ``strict=False``). The one documented exception:
``quantize.codebook_used`` (LlamaGen's training-time usage window, not a weight) may be absent from a VQ file.

Models are built on the ``meta`` device and the weights assigned, so loading GPT-XL costs no random init and no
second copy in memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn as nn

from codeprior.errors import CodepriorError
from codeprior.utils.io import load_checkpoint, torch_save_atomic

if TYPE_CHECKING:  # the model modules are imported where they are used, so that this one stays light
    from codeprior.models.gpt import GPT
    from codeprior.models.refine import RefineModel
    from codeprior.models.vq import VQModel

__all__ = [
    "load_gpt",
    "save_gpt",
    "load_vq",
    "save_vq",
    "load_refine",
    "save_refine",
    "read_model_state",
    "load_state_dict_strict",
    "check_finite_weights",
    "unwrap_model",
    "plain_args",
]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_VQ_OPTIONAL_KEYS = ("quantize.codebook_used",)


# --------------------------------------------------------------------------------------------------
# Generic helpers
# --------------------------------------------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside DDP / FSDP-less wrappers and ``torch.compile`` (``.module`` / ``._orig_mod``)."""
    seen = 0
    while seen < 8:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            break
        seen += 1
    return model


def plain_args(args: Any) -> dict[str, Any] | None:
    """``argparse.Namespace`` / dict -> a dict of plain values (str, int, float, bool, None, lists/dicts of them),
    so the checkpoint loads with ``weights_only=True``. Other values (paths, objects) become strings."""
    if args is None:
        return None
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, Mapping):
        raise CodepriorError(f"save: args must be a dict or argparse.Namespace, got {type(args).__name__}")

    def conv(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        return str(v)

    return {str(k): conv(v) for k, v in args.items() if not callable(v)}


def _strip_prefixes(sd: Mapping[str, Any]) -> dict[str, Any]:
    sd = dict(sd)
    changed = True
    while changed and sd:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p) :]: v for k, v in sd.items()}
                changed = True
    return sd


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def read_model_state(
    path_or_sd: str | os.PathLike | Mapping[str, Any], *, use_ema: bool = False, extras: dict[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, str]:
    """(state_dict, our ``config`` dict or None, source name) from a file or an in-memory checkpoint.

    Accepts a LlamaGen DDP checkpoint (``model`` / ``ema`` entries), a bare (FSDP) state dict, or our files.
    ``extras``, when given, receives the checkpoint's ``provenance`` entry (None when absent).
    """
    if isinstance(path_or_sd, (str, os.PathLike)):
        source = str(path_or_sd)
        ckpt = load_checkpoint(path_or_sd)
    elif isinstance(path_or_sd, Mapping):
        source, ckpt = "state dict", path_or_sd
        # the model takes ownership of the loaded tensors: copy, so the caller's dict is never aliased
        ckpt = {
            k: (
                {kk: vv.clone() if isinstance(vv, torch.Tensor) else vv for kk, vv in v.items()}
                if k in ("model", "ema") and isinstance(v, Mapping)
                else (v.clone() if isinstance(v, torch.Tensor) else v)
            )
            for k, v in ckpt.items()
        }
    else:
        raise CodepriorError(f"checkpoint: expected a path or a state dict, got {type(path_or_sd).__name__}")
    if not isinstance(ckpt, Mapping):
        raise CodepriorError(f"{source}: not a checkpoint (a {type(ckpt).__name__}, expected a dict)")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), Mapping) else None
    if extras is not None:
        prov = ckpt.get("provenance")
        extras["provenance"] = dict(prov) if isinstance(prov, Mapping) else None
    if use_ema:
        if "ema" not in ckpt or ckpt["ema"] is None:
            raise CodepriorError(f"{source}: no 'ema' weights in this checkpoint (drop --use-ema)")
        sd = ckpt["ema"]
    elif "model" in ckpt and isinstance(ckpt["model"], Mapping):
        sd = ckpt["model"]
    elif _is_state_dict(ckpt):
        sd = ckpt
    else:
        keys = ", ".join(sorted(map(str, ckpt))[:8])
        raise CodepriorError(f"{source}: no 'model' entry and not a bare state dict (top-level keys: {keys})")
    if not _is_state_dict(sd):
        raise CodepriorError(f"{source}: the model entry is not a state dict of tensors")
    return _strip_prefixes(sd), (dict(config) if config is not None else None), source


def _fmt_keys(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > n else ''})"


def check_finite_weights(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse NaN / inf in any floating tensor of ``sd`` with one line naming ``source`` and the first bad tensor:
    such weights sample identical grey images or train on garbage without any other error."""
    for name, t in sd.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not t.is_meta:
            if bool(torch.isfinite(t.sum(dtype=torch.float32))):  # NaN / inf propagate: one cheap pass per tensor
                continue
            finite = torch.isfinite(t)  # the sum overflowed or a value is bad: count exactly
            if not bool(finite.all()):
                n_bad = int(t.numel() - int(finite.sum()))
                raise CodepriorError(
                    f"{source}: non-finite weights (nan/inf) in tensor {name} ({n_bad} of {t.numel()} values); "
                    "the checkpoint is corrupt or its training diverged"
                )


def load_state_dict_strict(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    source: str,
    *,
    optional: tuple[str, ...] = (),
    assign: bool = False,
) -> None:
    """``model.load_state_dict(sd, strict=True)`` with one readable error: missing and unexpected keys (a few
    each, with counts) and shape mismatches; NaN / inf weights are refused (:func:`check_finite_weights`). Keys in
    ``optional`` may be absent from ``sd`` (kept as built)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and k not in optional]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_fmt_keys(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_fmt_keys(shapes, 3)}")
        raise CodepriorError(f"{source}: weights do not match the model config; " + "; ".join(parts))
    check_finite_weights(sd, source)
    full = dict(sd)
    for k in optional:
        if k not in full and k in own:
            t = own[k]
            full[k] = torch.zeros(t.shape, dtype=t.dtype) if t.is_meta else t
    # Cast floating weights to the model's dtype (e.g. a bf16 FSDP file into an fp32 model).
    for k, t in own.items():
        v = full[k]
        if v.is_floating_point() and t.is_floating_point() and v.dtype != t.dtype:
            full[k] = v.to(t.dtype)
    model.load_state_dict(full, strict=True, assign=assign)


def _config_from(
    config: Any, stored: dict[str, Any] | None, source: str, resolve: Callable[..., Any], kind: str, hint: str
) -> Any:
    if config is None:
        if stored is None:
            raise CodepriorError(
                f"{source}: no 'config' entry in this checkpoint (a LlamaGen file?); name the model config, e.g. {hint}"
            )
        stored_kind = stored.get("kind", kind)
        if stored_kind != kind:
            raise CodepriorError(f"{source}: holds a {stored_kind!r} model, not a {kind!r} model")
        return resolve({k: v for k, v in stored.items() if k != "kind"})
    return resolve(config)


_M = TypeVar("_M", bound=nn.Module)


def _build_and_load(ctor: Callable[[], _M], sd: dict[str, torch.Tensor], source: str, **kw: Any) -> _M:
    with torch.device("meta"):
        model = ctor()
    load_state_dict_strict(model, sd, source, assign=True, **kw)
    # Materialise what is not in the state dict: the non-persistent RoPE table.
    reset_rope = getattr(model, "reset_rope", None)
    if reset_rope is not None:
        reset_rope()
    return model


def _model_config(model: nn.Module) -> Any:
    """The ``config`` of the bare module (a GPTConfig, RefineConfig or VQConfig)."""
    return unwrap_model(model).config


def _save(
    model: nn.Module,
    path: str | os.PathLike,
    config: dict[str, Any],
    *,
    optimizer: Any,
    steps: Any,
    args: Any,
    ema: Any,
    extras: dict[str, Any],
) -> Path:
    model = unwrap_model(model)
    ckpt: dict[str, Any] = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
    if steps is not None:
        ckpt["steps"] = int(steps)
    if args is not None:
        ckpt["args"] = plain_args(args)
    if ema is not None:
        ema_sd = unwrap_model(ema).state_dict() if isinstance(ema, nn.Module) else dict(ema)
        ckpt["ema"] = {k: v.detach().cpu() for k, v in ema_sd.items()}
    reserved = set(ckpt) | {"config"}
    clash = sorted(set(extras) & reserved)
    if clash:
        raise CodepriorError(f"{path}: extra entries {clash} clash with the checkpoint layout")
    ckpt.update(extras)
    ckpt["config"] = config
    torch_save_atomic(ckpt, path)
    return Path(path)


# --------------------------------------------------------------------------------------------------
# GPT
# --------------------------------------------------------------------------------------------------


def load_gpt(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    config: Any = None,
    use_ema: bool = False,
    device: str | torch.device | None = None,
) -> GPT:
    """A :class:`GPT` (in eval mode) from a LlamaGen or codeprior checkpoint, a bare state dict, or an in-memory
    checkpoint dict. ``config``: a :class:`GPTConfig`, a registry name (``"GPT-B"``), a dict, or None to use the
    file's ``config`` entry. ``use_ema`` loads the ``ema`` weights. Strict key and shape matching."""
    from codeprior.models.gpt import GPT, get_gpt_config

    extras: dict[str, Any] = {}
    sd, stored, source = read_model_state(path_or_state_dict, use_ema=use_ema, extras=extras)
    cfg = _config_from(config, stored, source, get_gpt_config, "gpt", "--gpt-model GPT-B (config='GPT-B')")
    model = _build_and_load(lambda: GPT(cfg), sd, source)
    model.provenance = extras["provenance"]  # what it was trained from (codeprior.provenance), None for LlamaGen files
    if device is not None:
        model.to(device)
    return model.eval()


def save_gpt(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    optimizer: Any = None,
    steps: int | None = None,
    args: Any = None,
    ema: Any = None,
    **extras: Any,
) -> Path:
    """Write ``{"model", "optimizer", "steps", "args", "ema", "config", **extras}`` atomically (LlamaGen's DDP
    layout; LlamaGen's scripts read ``checkpoint["model"]``)."""
    return _save(
        model,
        path,
        _model_config(model).to_dict(),
        optimizer=optimizer,
        steps=steps,
        args=args,
        ema=ema,
        extras=extras,
    )


# --------------------------------------------------------------------------------------------------
# Refine
# --------------------------------------------------------------------------------------------------


def load_refine(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    config: Any = None,
    use_ema: bool = False,
    device: str | torch.device | None = None,
) -> RefineModel:
    """A :class:`RefineModel` (eval mode) from a checkpoint written by :func:`save_refine`; the
    ``token_to_cluster`` map comes from the weights. ``config`` as in :func:`load_gpt`."""
    from codeprior.models.refine import RefineModel, get_refine_config

    extras: dict[str, Any] = {}
    sd, stored, source = read_model_state(path_or_state_dict, use_ema=use_ema, extras=extras)
    cfg = _config_from(config, stored, source, get_refine_config, "refine", "config='Refine-S'")
    model = _build_and_load(lambda: RefineModel(dataclasses.replace(cfg, restrict=False)), sd, source)
    model.provenance = extras["provenance"]
    model.config = cfg  # built unrestricted (the map comes from the weights); restore the real setting
    if cfg.restrict or model.has_prior:
        if not model.has_prior:
            raise CodepriorError(f"{source}: restricted refine model without a token_to_cluster map")
        try:
            model.check_mapping()
        except CodepriorError as e:
            raise CodepriorError(f"{source}: {e}") from None
    if device is not None:
        model.to(device)
    return model.eval()


def save_refine(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    optimizer: Any = None,
    steps: int | None = None,
    args: Any = None,
    ema: Any = None,
    **extras: Any,
) -> Path:
    """Same layout as :func:`save_gpt` (config kind ``refine``; the map is the ``token_to_cluster`` weight)."""
    return _save(
        model,
        path,
        _model_config(model).to_dict(),
        optimizer=optimizer,
        steps=steps,
        args=args,
        ema=ema,
        extras=extras,
    )


# --------------------------------------------------------------------------------------------------
# VQ
# --------------------------------------------------------------------------------------------------


def _vq_config_dict(cfg: Any) -> dict[str, Any]:
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
    return {"kind": "vq", **{k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}}


def load_vq(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    config: Any = None,
    use_ema: bool = False,
    device: str | torch.device | None = None,
    default_config: Any = None,
) -> VQModel:
    """A :class:`VQModel` (eval mode) from LlamaGen's ``vq_ds16_c2i.pt`` (``config="VQ-16"``), a ``vq_train.py``
    checkpoint, a bare state dict or our files. Strict matching, except that LlamaGen's usage-statistics buffer
    ``quantize.codebook_used`` may be absent (it is then zero). ``config`` overrides the file's stored config;
    ``default_config`` is used only for files without one (LlamaGen's)."""
    from codeprior.models.vq import VQModel, get_vq_config

    sd, stored, source = read_model_state(path_or_state_dict, use_ema=use_ema)
    if config is None and stored is None:
        config = default_config
    cfg = _config_from(config, stored, source, get_vq_config, "vq", "--vq-model VQ-16 (config='VQ-16')")
    model = _build_and_load(lambda: VQModel(cfg), sd, source, optional=_VQ_OPTIONAL_KEYS)
    if device is not None:
        model.to(device)
    return model.eval()


def save_vq(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    optimizer: Any = None,
    steps: int | None = None,
    args: Any = None,
    ema: Any = None,
    **extras: Any,
) -> Path:
    """LlamaGen's ``vq_train.py`` layout (``model``, ``optimizer``, ``steps``, ``args``, ``ema``; pass
    ``discriminator=...``/``optimizer_disc=...`` as extras) plus our ``config`` entry; atomic."""
    return _save(
        model,
        path,
        _vq_config_dict(_model_config(model)),
        optimizer=optimizer,
        steps=steps,
        args=args,
        ema=ema,
        extras=extras,
    )
