"""Decoding: speculative Jacobi decoding over the GPT's static KV buffers, with selectable acceptance rules."""

from codeprior.decoding.accept import GroupRule, LatentRule, PriorRule, build_rule, exact_rule, latent_neighbors
from codeprior.decoding.jacobi import draw, jacobi_generate
from codeprior.decoding.settings import ACCEPT_RULES, DECODERS, DRAFT_INITS, DecoderSettings

__all__ = [
    "ACCEPT_RULES",
    "DECODERS",
    "DRAFT_INITS",
    "DecoderSettings",
    "GroupRule",
    "LatentRule",
    "PriorRule",
    "build_rule",
    "draw",
    "exact_rule",
    "jacobi_generate",
    "latent_neighbors",
]
