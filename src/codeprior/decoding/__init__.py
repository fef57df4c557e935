"""Decoding: speculative Jacobi decoding over the GPT's static KV buffers, with selectable acceptance rules."""

from codeprior.decoding.accept import GroupRule, LatentRule, PriorRule, build_rule, exact_rule, latent_neighbors
from codeprior.decoding.jacobi import auto_window, draw, jacobi_generate, measure_pass_costs
from codeprior.decoding.settings import ACCEPT_RULES, DECODERS, DRAFT_INITS, DecoderSettings
from codeprior.decoding.window import AutoWindow, PassCosts

__all__ = [
    "ACCEPT_RULES",
    "AutoWindow",
    "DECODERS",
    "DRAFT_INITS",
    "DecoderSettings",
    "GroupRule",
    "LatentRule",
    "PassCosts",
    "PriorRule",
    "auto_window",
    "build_rule",
    "draw",
    "exact_rule",
    "jacobi_generate",
    "latent_neighbors",
    "measure_pass_costs",
]
