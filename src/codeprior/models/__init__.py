"""codeprior.models: LlamaGen-compatible GPT (with KV-cache generation), VQ tokenizer, refine model, and
checkpoint interop (LlamaGen file layout, strict key matching), and :func:`from_llamagen` (a LlamaGen model
object in codeprior's decoders, on shared parameters).

The VQ tokenizer lives in :mod:`codeprior.models.vq` (imported on demand by :func:`load_vq`/:func:`save_vq`).
Every name below loads on first use, so the torch-free configuration modules (:mod:`codeprior.models.gpt_config`,
:mod:`codeprior.models.vq_config`) import without torch: the CLI lists their registries in ``--help``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from codeprior.utils.lazy import lazy_exports

if TYPE_CHECKING:
    from codeprior.models.checkpoint import (
        load_gpt,
        load_refine,
        load_state_dict_strict,
        load_vq,
        read_model_state,
        save_gpt,
        save_refine,
        save_vq,
    )
    from codeprior.models.gpt import GPT, GPT_CONFIGS, GPTConfig, get_gpt_config, sample_logits
    from codeprior.models.llamagen import from_llamagen, gpt_config_from_llamagen, to_llamagen_args
    from codeprior.models.refine import REFINE_CONFIGS, RefineConfig, RefineModel, get_refine_config

#: public name -> the module that defines it (loaded on first access)
_HOME = {
    **dict.fromkeys(
        (
            "load_gpt",
            "load_refine",
            "load_state_dict_strict",
            "load_vq",
            "read_model_state",
            "save_gpt",
            "save_refine",
            "save_vq",
        ),
        "checkpoint",
    ),
    **dict.fromkeys(("GPT", "GPT_CONFIGS", "GPTConfig", "get_gpt_config", "sample_logits"), "gpt"),
    **dict.fromkeys(("from_llamagen", "gpt_config_from_llamagen", "to_llamagen_args"), "llamagen"),
    **dict.fromkeys(("REFINE_CONFIGS", "RefineConfig", "RefineModel", "get_refine_config"), "refine"),
}

__all__ = [
    "GPT",
    "GPTConfig",
    "GPT_CONFIGS",
    "get_gpt_config",
    "sample_logits",
    "RefineModel",
    "RefineConfig",
    "REFINE_CONFIGS",
    "get_refine_config",
    "load_gpt",
    "save_gpt",
    "load_vq",
    "save_vq",
    "load_refine",
    "save_refine",
    "read_model_state",
    "load_state_dict_strict",
    "from_llamagen",
    "gpt_config_from_llamagen",
    "to_llamagen_args",
]


__getattr__, __dir__ = lazy_exports("codeprior.models", _HOME, globals(), __all__)
