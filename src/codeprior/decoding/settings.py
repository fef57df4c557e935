"""Decoder settings: plain AR decoding or speculative Jacobi decoding (SJD) with a selectable acceptance rule.

One dataclass shared by ``codeprior sample`` and the pipeline's sample stage (as a field of
:class:`codeprior.sample.SampleSettings`), recorded in ``samples.json``. Defaults are the released settings
(docs/sampling.md and docs/reference section 7), except the window: ``"auto"`` picks it from measured pass costs
and the running acceptance (:mod:`codeprior.decoding.window`; SJD's scripts fix 16); GSD's dynamic
groups of up to 7 rank neighbours on each side, probability gap 0.15, squared embedding distance 0.5; LANTERN++'s
k = 10 latent neighbours and delta = 3.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from codeprior.errors import CodepriorError

DECODERS = ("ar", "sjd")
DRAFT_INITS = ("random", "repeat")
#: how the refine stage turns cluster ids into codes (:meth:`codeprior.models.refine.RefineModel.refine`)
REFINE_MODES = ("sample", "argmax", "random-member")


@dataclass(frozen=True)
class AcceptRule:
    """One acceptance rule of speculative decoding, by name.

    ``build``: ``"module:function"`` called as ``fn(settings, model, codebook=..., token_to_cluster=...)`` (the
    tokenizer's codebook [V, D] and the prior's token-to-cluster map, or None) that returns the rule, a callable
    ``(p, q, x) -> acceptance probabilities`` (:mod:`codeprior.decoding.accept`). ``codes_only``: it reads the
    model's vocabulary as codebook codes, so models that sample cluster ids cannot use it. ``needs_prior``: it
    reads a prior file (``--prior`` / ``sample.decoder.prior``).
    """

    name: str
    build: str
    codes_only: bool = False
    needs_prior: bool = False


#: every acceptance rule by name, in the order the CLI lists them (a live mapping: ``in``, iteration and
#: ``", ".join(ACCEPT_RULES)`` see rules registered after import)
ACCEPT_RULES: dict[str, AcceptRule] = {}


def register_accept_rule(rule: AcceptRule) -> AcceptRule:
    """Add ``rule`` to :data:`ACCEPT_RULES`."""
    ACCEPT_RULES[rule.name] = rule
    return rule


def unregister_accept_rule(name: str) -> None:
    """Remove ``name`` from :data:`ACCEPT_RULES` (tests that register a toy rule undo it with this)."""
    ACCEPT_RULES.pop(name, None)


register_accept_rule(AcceptRule("exact", "codeprior.decoding.accept:build_exact"))
register_accept_rule(AcceptRule("gsd", "codeprior.decoding.accept:build_gsd"))
register_accept_rule(AcceptRule("latent", "codeprior.decoding.accept:build_latent", codes_only=True))
register_accept_rule(AcceptRule("prior", "codeprior.decoding.accept:build_prior", codes_only=True, needs_prior=True))


def parse_window(value: Any) -> int | str:
    """``"auto"`` or a window >= 1 (an int, or its decimal string as a command line gives it)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise CodepriorError(f"sampling: --window must be 'auto' or an integer >= 1, got {value!r}")
    try:
        w = int(value)
    except ValueError:
        raise CodepriorError(f"sampling: --window must be 'auto' or an integer >= 1, got {value!r}") from None
    if w < 1:
        raise CodepriorError(f"sampling: --window must be 'auto' or an integer >= 1, got {value!r}")
    return w


@dataclass
class DecoderSettings:
    """How codes are decoded. ``decoder="ar"`` ignores every other field (plain one-token-per-pass decoding)."""

    decoder: str = "ar"
    accept: str = "exact"
    window: int | str = "auto"  # tokens per pass, or "auto" (cost-aware, plain AR when no window pays)
    init: str = "random"
    prior: str | None = None  # prior file for accept="prior" (cluster mass under DCPE / k-means / balanced k-means)
    gsd_neighbors: int = 7
    gsd_prob_gap: float = 0.15
    gsd_embed_dist: float = 0.5
    latent_k: int = 10
    latent_delta: float = 3.0
    compile: bool = False

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise CodepriorError(f"sampling: --decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.accept not in ACCEPT_RULES:
            raise CodepriorError(f"sampling: --accept must be one of {', '.join(ACCEPT_RULES)}, got {self.accept!r}")
        if self.init not in DRAFT_INITS:
            raise CodepriorError(f"sampling: --draft-init must be one of {', '.join(DRAFT_INITS)}, got {self.init!r}")
        self.window = parse_window(self.window)
        if (
            self.gsd_neighbors < 0
            or self.latent_k < 0
            or self.gsd_prob_gap < 0
            or self.gsd_embed_dist < 0
            or self.latent_delta < 0
        ):
            raise CodepriorError("sampling: the GSD / LANTERN parameters must be >= 0")
        if self.decoder == "sjd" and ACCEPT_RULES[self.accept].needs_prior and not self.prior:
            raise CodepriorError(f"sampling: --accept {self.accept} needs --prior FILE")

    @property
    def speculative(self) -> bool:
        return self.decoder == "sjd"

    @classmethod
    def coerce(cls, value: Any) -> DecoderSettings:
        """A DecoderSettings from itself, None (defaults) or a plain dict (config files, samples.json)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(cls.__dataclass_fields__))
            if unknown:
                raise CodepriorError(f"sampling: unknown decoder settings {unknown}")
            return cls(**value)
        raise CodepriorError(f"sampling: decoder settings must be a dict, got {type(value).__name__}")
