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
A config the caller names (``--model`` / ``--vq-model``) that contradicts the file's stored config or args is
refused with both values; one that agrees is fine, and for a file that says nothing it is what is used.

Reading the state dict (wrapper prefixes, LlamaGen's runtime buffers, strict key matching) is
:mod:`codeprior.models.state_dict`'s. Models are built on the ``meta`` device and the weights assigned, so loading
GPT-XL costs no random init and no second copy in memory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn as nn

from codeprior.errors import CodepriorError, note
from codeprior.models.state_dict import (
    _RUNTIME_BUFFER,
    _VQ_OPTIONAL_KEYS,
    check_finite_weights,
    load_state_dict_strict,
    plain_args,
    read_model_state,
    unwrap_model,
)
from codeprior.utils.io import torch_save_atomic

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
