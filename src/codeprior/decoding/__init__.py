"""Decoding: speculative Jacobi decoding over the GPT's static KV buffers, with selectable acceptance rules.

The settings records and the registries (:mod:`codeprior.decoding.settings`) import without torch, so CLI flags and
config checks can read them; the rules and the decoder load on first use.
"""

from importlib import import_module
from typing import Any

from codeprior.decoding.settings import (
    ACCEPT_RULES,
    DECODERS,
    DRAFT_INITS,
    REFINE_MODES,
    AcceptRule,
    DecoderSettings,
    SampleSettings,
    register_accept_rule,
    unregister_accept_rule,
)

_LAZY = {
    **dict.fromkeys(("GroupRule", "LatentRule", "PriorRule", "build_rule", "exact_rule", "latent_neighbors"), "accept"),
    **dict.fromkeys(("auto_window", "draw", "jacobi_generate", "measure_pass_costs"), "jacobi"),
    **dict.fromkeys(("AutoWindow", "PassCosts"), "window"),
}

__all__ = [
    "ACCEPT_RULES",
    "AcceptRule",
    "AutoWindow",
    "DECODERS",
    "DRAFT_INITS",
    "DecoderSettings",
    "GroupRule",
    "LatentRule",
    "PassCosts",
    "PriorRule",
    "REFINE_MODES",
    "SampleSettings",
    "auto_window",
    "build_rule",
    "draw",
    "exact_rule",
    "jacobi_generate",
    "latent_neighbors",
    "measure_pass_costs",
    "register_accept_rule",
    "unregister_accept_rule",
]


def __getattr__(name: str) -> Any:
    """The torch-side names, imported from their module on first use."""
    if name in _LAZY:
        value = getattr(import_module(f"codeprior.decoding.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'codeprior.decoding' has no attribute {name!r}")
