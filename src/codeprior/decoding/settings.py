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
ACCEPT_RULES = ("exact", "gsd", "latent", "prior")
DRAFT_INITS = ("random", "repeat")


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
        if self.decoder == "sjd" and self.accept == "prior" and not self.prior:
            raise CodepriorError("sampling: --accept prior needs --prior FILE")

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
