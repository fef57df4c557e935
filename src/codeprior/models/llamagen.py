"""A LlamaGen ``Transformer`` object in codeprior's decoders, on the same parameter tensors (no copy).

:func:`from_llamagen` takes the model object a LlamaGen (or IAR / DCPE) script has built and trained, reads its
``config`` (LlamaGen's ``ModelArgs``) and returns a codeprior :class:`~codeprior.models.gpt.GPT` whose parameters
*are* the LlamaGen model's ``nn.Parameter`` objects: nothing is copied (memory does not double for a 3B model),
an in-place update through either model is seen by the other, and the GPT is ready for :meth:`GPT.generate` and
:func:`codeprior.decoding.jacobi_generate`. codeprior never imports LlamaGen: the object is duck-typed (its
``config`` attributes and its ``named_parameters()``).

What is read, and what is refused (one-line :class:`CodepriorError` each), follows LlamaGen's
``autoregressive/models/gpt.py`` (FoundationVision/LlamaGen @ce98ec4):

* ``model_type`` must be ``"c2i"`` (a text-to-image model has a caption embedder codeprior's GPT does not have);
* ``cls_token_num`` must be 1 and ``block_size`` a square (LlamaGen's own RoPE table asserts a square grid);
* ``class_dropout_prob`` must be > 0: LlamaGen builds the null-class row of its class table only then, and
  codeprior's GPT always has it (classifier-free guidance);
* every parameter name must be one of codeprior's (which are LlamaGen's) with the same shape; the non-weight
  buffers LlamaGen keeps (``kv_cache`` after ``generate()``, ``freqs_cis``, ``causal_mask``) are ignored (the
  RoPE table is recomputed); any other buffer is refused, since codeprior's GPT would not use it.

``max_batch_size``, ``max_seq_len`` and ``caption_dim`` (unused by a class-conditional model) and fork-specific
fields (IAR's ``cluster_size``, DCPE's compression settings: a DCPE coarse model simply has ``vocab_size = k``)
are not needed for decoding and are not read.

:func:`to_llamagen_args` is the reverse: the ``ModelArgs`` keyword arguments under which LlamaGen's
``Transformer`` loads a state dict written by :func:`codeprior.models.save_gpt` with ``strict=True``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn as nn

from codeprior.errors import CodepriorError
from codeprior.models.checkpoint import unwrap_model
from codeprior.models.gpt import GPT, GPTConfig

__all__ = ["from_llamagen", "gpt_config_from_llamagen", "to_llamagen_args"]

_WHO = "from_llamagen"
#: GPTConfig fields read from ModelArgs under the same name (every field but ``grid``, which LlamaGen lacks).
_SHARED_FIELDS = tuple(f.name for f in dataclasses.fields(GPTConfig) if f.name != "grid")
#: Buffers LlamaGen keeps beside the weights that carry no weights (the static KV cache made by
#: ``setup_caches``; the RoPE table and causal mask where a fork registers them).
_IGNORED_BUFFERS = ("kv_cache.k_cache", "kv_cache.v_cache", "freqs_cis", "causal_mask")


def _few(names: list[str], n: int = 4) -> str:
    return f"{len(names)} ({', '.join(names[:n])}{', ...' if len(names) > n else ''})"


def gpt_config_from_llamagen(args: Any) -> GPTConfig:
    """The :class:`GPTConfig` of a LlamaGen ``ModelArgs`` (any object with its attribute names).

    Raises a one-line :class:`CodepriorError` for a model codeprior's class-conditional GPT cannot represent.
    """
    missing = [f for f in (*_SHARED_FIELDS, "model_type") if not hasattr(args, f)]
    if missing:
        raise CodepriorError(
            f"{_WHO}: model.config ({type(args).__name__}) lacks LlamaGen ModelArgs fields {_few(missing)}"
        )
    model_type = args.model_type
    if model_type != "c2i":
        raise CodepriorError(
            f"{_WHO}: model_type={model_type!r} is not supported; codeprior's GPT is class-conditional ('c2i')"
        )
    if int(args.cls_token_num) != 1:
        raise CodepriorError(f"{_WHO}: cls_token_num={args.cls_token_num}; a class-conditional GPT has one class token")
    block = int(args.block_size)
    if block <= 0 or math.isqrt(block) ** 2 != block:
        raise CodepriorError(f"{_WHO}: block_size={args.block_size} is not a square grid (LlamaGen's RoPE needs one)")
    if not float(args.class_dropout_prob) > 0:
        raise CodepriorError(
            f"{_WHO}: class_dropout_prob={args.class_dropout_prob}: LlamaGen then builds no null-class row "
            f"(classifier-free guidance), which codeprior's GPT always has"
        )
    values = {f: getattr(args, f) for f in _SHARED_FIELDS}
    try:
        return GPTConfig(**values)
    except (CodepriorError, TypeError, ValueError) as e:
        raise CodepriorError(f"{_WHO}: cannot map ModelArgs: {e}") from None


def _check_device(params: dict[str, nn.Parameter]) -> None:
    devices = sorted({str(p.device) for p in params.values()})
    if len(devices) != 1:
        raise CodepriorError(f"{_WHO}: parameters live on several devices ({', '.join(devices)}); move the model first")
    if devices[0] == "meta":
        raise CodepriorError(f"{_WHO}: the model's parameters are on the meta device (no weights to share)")


def from_llamagen(model: nn.Module) -> GPT:
    """A codeprior :class:`GPT` (in eval mode) on the very ``nn.Parameter`` objects of LlamaGen's ``model``.

    ``model``: a LlamaGen ``Transformer`` (``GPT_models[name](...)``, after ``load_state_dict``), also wrapped
    in DDP or ``torch.compile``. Nothing is copied: ``gpt.tok_embeddings.weight is model.tok_embeddings.weight``.
    Decode it with ``gpt.generate(labels, cfg_scale=..., temperature=..., top_k=..., top_p=...)`` or
    ``jacobi_generate(gpt, labels, ...)``; greedy decoding gives LlamaGen's ``generate()`` codes.
    """
    if not isinstance(model, nn.Module):
        raise CodepriorError(f"{_WHO}: expected a LlamaGen Transformer (an nn.Module), got {type(model).__name__}")
    model = unwrap_model(model)
    if not hasattr(model, "config"):
        raise CodepriorError(f"{_WHO}: {type(model).__name__} has no .config (LlamaGen's ModelArgs)")
    cfg = gpt_config_from_llamagen(model.config)
    params = dict(model.named_parameters())
    if not params:
        raise CodepriorError(f"{_WHO}: {type(model).__name__} has no parameters")
    _check_device(params)
    extra_buffers = [n for n, _ in model.named_buffers() if not n.endswith(_IGNORED_BUFFERS)]
    if extra_buffers:
        raise CodepriorError(f"{_WHO}: buffers codeprior's GPT does not have: {_few(extra_buffers)}")

    with torch.device("meta"):  # no allocation and no random init: every parameter is replaced below
        gpt = GPT(cfg)
    own = dict(gpt.named_parameters())
    unknown = [n for n in params if n not in own]
    absent = [n for n in own if n not in params]
    shapes = [
        f"{n} {tuple(params[n].shape)} vs {tuple(p.shape)}"
        for n, p in own.items()
        if n in params and params[n].shape != p.shape
    ]
    if unknown or absent or shapes:
        parts = [f"unknown parameters {_few(unknown)}"] if unknown else []
        parts += [f"missing parameters {_few(absent)}"] if absent else []
        parts += [f"shape mismatches {_few(shapes, 2)}"] if shapes else []
        raise CodepriorError(f"{_WHO}: the parameters do not match the ModelArgs-built GPT: " + "; ".join(parts))
    for name, p in params.items():
        owner, _, leaf = name.rpartition(".")
        setattr(gpt.get_submodule(owner), leaf, p)  # registers the same Parameter object (shared storage)
    gpt.reset_rope()  # the RoPE table (not a weight), recomputed on the weights' device
    return gpt.eval()


def to_llamagen_args(config: GPTConfig) -> dict[str, Any]:
    """``ModelArgs`` keyword arguments for a codeprior :class:`GPTConfig`: ``Transformer(ModelArgs(**kw))``
    then loads the ``"model"`` state dict of a :func:`~codeprior.models.save_gpt` file with ``strict=True``."""
    if not isinstance(config, GPTConfig):
        raise CodepriorError(f"to_llamagen_args: expected a GPTConfig, got {type(config).__name__}")
    rows, cols = config.grid_hw
    if rows != cols:
        raise CodepriorError(f"to_llamagen_args: grid {rows}x{cols} is not square; LlamaGen's RoPE needs a square grid")
    if not config.class_dropout_prob > 0:
        raise CodepriorError(
            "to_llamagen_args: class_dropout_prob=0: LlamaGen would build no null-class row and could not load "
            "this model's class table; set a positive class_dropout_prob (it acts only in training)"
        )
    kw = {f: getattr(config, f) for f in _SHARED_FIELDS}
    kw["model_type"] = "c2i"
    return kw
