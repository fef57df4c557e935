"""Checkpoint interop with LlamaGen: load and save GPT, VQ and refine models in LlamaGen's file layout.

Layout read and written (the DDP layout of LlamaGen's ``train_c2i.py`` / ``vq_train.py``)::

    {"model": state_dict, "optimizer": ..., "steps": int, "args": dict, "ema": state_dict (optional),
     "config": {"kind": "gpt" | "vq" | "refine", ...}}      # <- our addition; LlamaGen ignores unknown keys

Also read: bare state dicts (LlamaGen's FSDP ``consolidated.pth``), the released files that hold only
``{"model": sd}``, and the files LlamaGen's ``train_c2i.py`` / ``vq_train.py`` (and IAR's and DCPE's forks) write:
``args`` as an ``argparse.Namespace`` (allowed by :func:`codeprior.utils.io.load_checkpoint`, still
``weights_only=True``), ``optimizer`` / ``discriminator`` / ``optimizer_disc`` / ``steps`` entries (ignored).
Without our ``config`` entry, the model config comes from those ``args`` (GPT: ``gpt_model``, grid
``image_size // downsample_size``, vocabulary, classes, class tokens; VQ: ``vq_model``, codebook size and width).
A config the caller names (``--gpt-model`` / ``--vq-model``) that contradicts the file's stored config or args is
refused with both values; one that agrees is fine, and for a file that says nothing it is what is used.

Wrapper prefixes ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) are stripped when *every* key carries
them. LlamaGen's non-weight buffers (``*.kv_cache.k_cache`` / ``v_cache``, which a GPT that has run LlamaGen's
``generate()`` carries, and ``freqs_cis`` / ``causal_mask`` of forks that register them) are dropped with one
note. Key matching is otherwise strict: any missing/unexpected key or shape mismatch raises one
:class:`CodepriorError` that lists them (never a silent ``strict=False``). The one documented exception:
``quantize.codebook_used`` (LlamaGen's training-time usage window, not a weight) may be absent from a VQ file.

Models are built on the ``meta`` device and the weights assigned, so loading GPT-XL costs no random init and no
second copy in memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn as nn

from codeprior.errors import CodepriorError, note
from codeprior.utils.io import load_checkpoint, torch_save_atomic

if TYPE_CHECKING:  # the model modules are imported where they are used, so that this one stays light
    from codeprior.models.gpt import GPT, GPTConfig
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
    "checkpoint_dict",
    "load_state_dict_strict",
    "check_finite_weights",
    "unwrap_model",
    "plain_args",
]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_VQ_OPTIONAL_KEYS = ("quantize.codebook_used",)
#: LlamaGen's non-weight buffers: the KV cache ``setup_caches()`` registers (``generate()`` leaves it in the state
#: dict), and the RoPE table / causal mask that some forks register as buffers. Dropped when the model lacks them.
_RUNTIME_BUFFER = re.compile(r"(^|\.)kv_cache\.[kv]_cache$|(^|\.)freqs_cis$|(^|\.)causal_mask$")


# --------------------------------------------------------------------------------------------------
# Generic helpers
# --------------------------------------------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside ``torch.compile`` (``._orig_mod``), DDP, DataParallel and FSDP (``.module``) wrappers,
    nested in any order: the one unwrapping every save, export and config lookup goes through."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel, FSDP)
    for _ in range(8):  # wrappers nest a few levels at most; a cycle must not hang
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, wrappers):
            model = model.module
        else:
            break
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
    ``extras``, when given, receives the checkpoint's ``provenance`` entry and its ``args`` as a plain dict
    (each None when absent).
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
        args = ckpt.get("args")  # LlamaGen's scripts: an argparse.Namespace; codeprior's: a plain dict
        extras["args"] = plain_args(args) if isinstance(args, (argparse.Namespace, Mapping)) else None
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


#: GPT fields a model name fixes (compared with a file's config when a name is given with it)
_GPT_ARCH = ("dim", "n_layer", "n_head", "kv_heads", "multiple_of", "ffn_dim_multiplier", "rope_base", "norm_eps")
#: and what a full config given by the caller fixes besides (the grid only when the file says it)
_GPT_DATA = ("vocab_size", "num_classes", "cls_token_num")
#: VQ fields a model name fixes (LlamaGen's --codebook-size / --codebook-embed-dim are separate flags)
_VQ_ARCH = (
    "codebook_l2_norm",
    "ch",
    "ch_mult",
    "dec_ch_mult",
    "z_channels",
    "num_res_blocks",
    "in_channels",
    "norm_groups",
)
#: and what a full config given by the caller fixes besides
_VQ_CODEBOOK = ("codebook_size", "codebook_embed_dim")


def _describe_given(config: Any, flag: str) -> str:
    return f"{flag} {config}" if isinstance(config, str) else f"the {type(config).__name__} passed as {flag}"


def _check_agrees(
    given: Any, file_cfg: Any, fields: tuple[str, ...], source: str, config: Any, flag: str, where: str
) -> None:
    """Refuse a config the caller names that contradicts the file's own (both values named)."""
    diffs = [
        f"{f} {getattr(given, f)!r} vs {getattr(file_cfg, f)!r}"
        for f in fields
        if getattr(given, f) != getattr(file_cfg, f)
    ]
    if diffs:
        shown = ", ".join(diffs[:4]) + (", ..." if len(diffs) > 4 else "")
        raise CodepriorError(
            f"{source}: {_describe_given(config, flag)} contradicts {where}: {shown} (given vs file); "
            f"drop {flag}, the file says which model it holds"
        )


_M = TypeVar("_M", bound=nn.Module)


def _drop_runtime_buffers(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """``sd`` without LlamaGen's non-weight buffers the model does not have (one note when any are dropped)."""
    own = model.state_dict()
    drop = [k for k in sd if k not in own and _RUNTIME_BUFFER.search(k)]
    if not drop:
        return sd
    kinds = sorted({m.group(0).lstrip(".").split(".")[0] for k in drop if (m := _RUNTIME_BUFFER.search(k))})
    note(
        f"{source}: dropped {len(drop)} non-weight buffers ({', '.join(kinds)}; left by LlamaGen's "
        "setup_caches()/generate(), rebuilt by codeprior when needed)"
    )
    dropped = set(drop)
    return {k: v for k, v in sd.items() if k not in dropped}


def _build_and_load(ctor: Callable[[], _M], sd: dict[str, torch.Tensor], source: str, **kw: Any) -> _M:
    with torch.device("meta"):
        model = ctor()
    sd = _drop_runtime_buffers(model, sd, source)
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
    ckpt = checkpoint_dict(
        unwrap_model(model).state_dict(),
        config,
        optimizer=optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer,
        steps=steps,
        args=plain_args(args),
        ema=unwrap_model(ema).state_dict() if isinstance(ema, nn.Module) else ema,
        extras=extras,
        source=str(path),
    )
    torch_save_atomic(ckpt, path)
    return Path(path)


def checkpoint_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: dict[str, Any],
    *,
    optimizer: Any = None,
    steps: int | None = None,
    args: dict[str, Any] | None = None,
    ema: Mapping[str, torch.Tensor] | None = None,
    extras: Mapping[str, Any] | None = None,
    source: str = "checkpoint",
) -> dict[str, Any]:
    """The one checkpoint layout (LlamaGen's DDP layout plus our ``config``), as the dict ``torch.save`` writes:
    ``{"model", "optimizer", "steps", "args", "ema", **extras, "config"}``, entries that are None left out, tensors
    detached on the CPU. ``save_gpt`` / ``save_refine`` / ``save_vq`` and the trainer's step checkpoints and final
    ``model.pt`` all write it; an ``extras`` key that names a layout entry is an error naming ``source``."""
    ckpt: dict[str, Any] = {"model": {k: v.detach().cpu() for k, v in state_dict.items()}}
    if optimizer is not None:
        ckpt["optimizer"] = optimizer
    if steps is not None:
        ckpt["steps"] = int(steps)
    if args is not None:
        ckpt["args"] = args
    if ema is not None:
        ckpt["ema"] = {k: v.detach().cpu() for k, v in ema.items()}
    clash = sorted(set(extras or {}) & (set(ckpt) | {"config"}))
    if clash:
        raise CodepriorError(f"{source}: extra entries {clash} clash with the checkpoint layout")
    ckpt.update(extras or {})
    ckpt["config"] = config
    return ckpt


# --------------------------------------------------------------------------------------------------
# GPT
# --------------------------------------------------------------------------------------------------


def load_gpt(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    config: Any = None,
    use_ema: bool = False,
    device: str | torch.device | None = None,
    *,
    default_grid: tuple[int, int] | None = None,
    flag: str = "config",
) -> GPT:
    """A :class:`GPT` (in eval mode) from a LlamaGen or codeprior checkpoint, a bare state dict, or an in-memory
    checkpoint dict. Strict key and shape matching.

    The config comes from the file: our ``config`` entry, else LlamaGen's ``args``
    (:func:`codeprior.models.gpt_config.gpt_config_from_llamagen_args`). ``config`` (a registry name such as
    ``"GPT-B"``, a :class:`GPTConfig` or a dict) is needed for a file that stores neither, and is checked against
    one that does: a contradiction raises, naming both values (``flag`` is how the caller names the setting,
    e.g. ``--gpt-model``). The code grid (RoPE table) is not in the weights: when the file does not say it,
    ``default_grid`` (rows, cols) is used, else the grid of ``config`` (a note on stderr when that is a registry
    name's default). ``model.checkpoint_info`` says where the config and grid came from (``grid`` None: not from the
    file) and the image size / downsampling the file's args state. ``use_ema`` loads the ``ema`` weights."""
    from codeprior.models.gpt import GPT
    from codeprior.models.gpt_config import (
        get_gpt_config,
        gpt_config_from_llamagen_args,
        is_llamagen_gpt_args,
        llamagen_image_geometry,
    )

    extras: dict[str, Any] = {}
    sd, stored, source = read_model_state(path_or_state_dict, use_ema=use_ema, extras=extras)
    args, geom = extras["args"], None
    file_cfg: GPTConfig | None = None
    if stored is not None:
        file_cfg = _config_from(None, stored, source, get_gpt_config, "gpt", "")
        where = "the file's stored config"
    elif is_llamagen_gpt_args(args):
        geom = llamagen_image_geometry(args, source)
        fallback_name = config if isinstance(config, str) and not args.get("gpt_model") else None
        file_cfg = gpt_config_from_llamagen_args(args, model=fallback_name, source=source)
        said = [f"gpt_model {args.get('gpt_model') or fallback_name}"] + (
            [f"image_size {geom[0]}, downsample_size {geom[1]}"] if geom else []
        )
        where = f"the file's args ({', '.join(said)})"
    file_grid = stored is not None or geom is not None
    if config is None:
        if file_cfg is None:
            raise CodepriorError(
                f"{source}: no 'config' entry and no LlamaGen args in this checkpoint; name the model config, "
                "e.g. --gpt-model GPT-B (config='GPT-B')"
            )
        cfg = file_cfg
    else:
        given = get_gpt_config(config)
        if file_cfg is not None:
            fields = (
                _GPT_ARCH if isinstance(config, str) else _GPT_ARCH + _GPT_DATA + (("grid_hw",) if file_grid else ())
            )
            _check_agrees(given, file_cfg, fields, source, config, flag, where)
        cfg = file_cfg if (file_cfg is not None and isinstance(config, str)) else given
    if not file_grid:
        if default_grid is not None:
            h, w = (int(x) for x in default_grid)
            cfg = dataclasses.replace(cfg, grid=(h, w), block_size=h * w)
        elif config is None or isinstance(config, str):  # a name's default grid (a full config states its own)
            h, w = cfg.grid_hw
            name = config or (args or {}).get("gpt_model")
            note(
                f"{source}: the file does not say its code grid; assumed {h}x{w}, the default of {name} "
                "(say it with --image-size, or default_grid=(rows, cols))"
            )
    model = _build_and_load(lambda: GPT(cfg), sd, source)
    model.provenance = extras["provenance"]  # what it was trained from (codeprior.provenance), None for LlamaGen files
    model.checkpoint_info = {
        "config": where if file_cfg is not None else _describe_given(config, flag),
        "grid": where if file_grid else None,
        "image_size": geom[0] if geom else None,
        "downsample_size": geom[1] if geom else None,
    }
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
    *,
    flag: str = "config",
) -> VQModel:
    """A :class:`VQModel` (eval mode) from LlamaGen's ``vq_ds16_c2i.pt`` (``config="VQ-16"``), a ``vq_train.py``
    checkpoint (config from its ``args``), a bare state dict or our files. Strict matching, except that LlamaGen's
    usage-statistics buffer ``quantize.codebook_used`` may be absent (it is then zero). ``config`` is what a file
    without a stored config or args is built with; for one with them it must agree (else an error naming both
    values; ``flag`` names the setting, e.g. ``--vq-model``). ``default_config`` is used only for files that say
    nothing and no ``config``. ``model.checkpoint_info["config"]`` says where the config came from."""
    from codeprior.models.vq import VQModel, get_vq_config, is_llamagen_vq_args, vq_config_from_llamagen_args

    extras: dict[str, Any] = {}
    sd, stored, source = read_model_state(path_or_state_dict, use_ema=use_ema, extras=extras)
    args = extras["args"]
    file_cfg = None
    if stored is not None:
        file_cfg = _config_from(None, stored, source, get_vq_config, "vq", "")
        where = "the file's stored config"
    elif is_llamagen_vq_args(args):
        fallback_name = config if isinstance(config, str) and not args.get("vq_model") else None
        file_cfg = vq_config_from_llamagen_args(args, model=fallback_name, source=source)
        where = f"the file's args (vq_model {args.get('vq_model') or fallback_name})"
    if config is not None:
        given = get_vq_config(config)
        if file_cfg is not None:
            fields = _VQ_ARCH if isinstance(config, str) else _VQ_ARCH + _VQ_CODEBOOK
            _check_agrees(given, file_cfg, fields, source, config, flag, where)
        cfg = file_cfg if (file_cfg is not None and isinstance(config, str)) else given
        origin = where if file_cfg is not None else _describe_given(config, flag)
    elif file_cfg is not None:
        cfg, origin = file_cfg, where
    else:
        cfg = _config_from(default_config, None, source, get_vq_config, "vq", "--vq-model VQ-16 (config='VQ-16')")
        origin = f"the default {default_config}"
    model = _build_and_load(lambda: VQModel(cfg), sd, source, optional=_VQ_OPTIONAL_KEYS)
    model.checkpoint_info = {"config": origin}
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
