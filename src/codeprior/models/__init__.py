"""codeprior.models: LlamaGen-compatible GPT (with KV-cache generation), VQ tokenizer, refine model, and
checkpoint interop (LlamaGen file layout, strict key matching), and :func:`from_llamagen` (a LlamaGen model
object in codeprior's decoders, on shared parameters).

The VQ tokenizer lives in :mod:`codeprior.models.vq` (imported on demand by :func:`load_vq`/:func:`save_vq`).
"""

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
