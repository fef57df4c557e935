"""Model weights out of any checkpoint layout: a state dict found, unwrapped, checked finite and loaded strictly.

Wrapper prefixes ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) are stripped when *every* key carries
them. LlamaGen's non-weight buffers (``*.kv_cache.k_cache`` / ``v_cache``, which a GPT that has run LlamaGen's
``generate()`` carries, and ``freqs_cis`` / ``causal_mask`` of forks that register them) are dropped with one
note. Key matching is otherwise strict: any missing/unexpected key or shape mismatch raises one
:class:`CodepriorError` that lists them (never a silent ``strict=False``). The one documented exception:
``quantize.codebook_used`` (LlamaGen's training-time usage window, not a weight) may be absent from a VQ file.


Used by :mod:`codeprior.models.checkpoint` (the per-model loaders) and the training checkpoints.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from codeprior.errors import CodepriorError
from codeprior.utils.io import load_checkpoint

__all__ = [
    "read_model_state",
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
