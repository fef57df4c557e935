"""The sampling settings records: :class:`SampleSettings` (guidance, temperatures, filtering, coarse-to-fine) and
its :class:`DecoderSettings` (plain AR, or speculative Jacobi decoding (SJD) with an acceptance rule).

The one definition of every sampling setting: ``codeprior sample`` generates its flags from these records
(:func:`add_sampling_flags`), the pipeline's ``sample:`` section embeds them (:mod:`codeprior.pipeline.config`:
``sample.cfg_scale`` is ``--cfg-scale``, ``sample.decoder.draft_init`` is ``--draft-init``), and ``samples.json``
records them. No torch here: ``codeprior sample --help`` reads these records.

Defaults are the released settings (docs/sampling.md and docs/reference section 7): LlamaGen's guidance 2.0 and
temperature 1.0; CTF's 1.1 for both stages of coarse-to-fine; GSD's dynamic groups of up to 7 rank neighbours on each
side, probability gap 0.15, squared embedding distance 0.5; LANTERN++'s k = 10 latent neighbours and delta = 3.0;
except the window: ``"auto"`` picks it from measured pass costs and the running acceptance
(:mod:`codeprior.decoding.window`; SJD's scripts fix 16).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Any

from codeprior.errors import CodepriorError
from codeprior.utils.argtypes import nonneg_float, nonneg_int, positive_float, positive_int, seed_int, top_p_float
from codeprior.utils.settings import add_flags, check_record, from_dict, old_keys, setting

__all__ = [
    "DECODERS",
    "ACCEPT_RULES",
    "AcceptRule",
    "register_accept_rule",
    "unregister_accept_rule",
    "DRAFT_INITS",
    "REFINE_MODES",
    "parse_window",
    "window_arg",
    "DecoderSettings",
    "SampleSettings",
    "add_sampling_flags",
    "sampling_from_namespace",
]

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

_WHERE = "sampling"
_DECODING = "decoding (docs/sampling.md)"


def parse_window(value: Any) -> int | str:
    """``"auto"`` or a window >= 1 (an int, or its decimal string as a command line gives it)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise CodepriorError(f"{_WHERE}: --window must be 'auto' or an integer >= 1, got {value!r}")
    try:
        w = int(value)
    except ValueError:
        raise CodepriorError(f"{_WHERE}: --window must be 'auto' or an integer >= 1, got {value!r}") from None
    if w < 1:
        raise CodepriorError(f"{_WHERE}: --window must be 'auto' or an integer >= 1, got {value!r}")
    return w


def window_arg(text: str) -> int | str:
    """``--window``: ``auto`` or a positive integer (the argument type; a config's window takes the same)."""
    return "auto" if text.strip().lower() == "auto" else int(positive_int(text))


window_arg.__name__ = "int > 0 or auto"  # argparse names the type in its own messages


@dataclass
class DecoderSettings:
    """How codes are decoded. ``decoder="ar"`` ignores every other field (plain one-token-per-pass decoding)."""

    decoder: str = setting(
        "ar", "ar: one token per model pass; sjd: speculative Jacobi decoding", group=_DECODING, choices=DECODERS
    )
    accept: str = setting(
        "exact",
        "SJD acceptance: exact (the AR distribution), gsd (dynamic groups), latent (LANTERN: VQ codebook "
        "neighbours), prior (cluster mass under --prior)",
        group=_DECODING,
        choices=ACCEPT_RULES,
    )
    window: int | str = setting(
        "auto",
        "SJD window: tokens per model pass, or auto: chosen from this device's measured pass costs and the running "
        "acceptance, plain AR when no window pays",
        group=_DECODING,
        argtype=window_arg,
        schema_type=Any,  # 'auto' or an int: checked against --window's type, not by the schema's types
    )
    draft_init: str = setting(
        "random",
        "SJD drafts at new positions: uniformly random, or the token to the left",
        group=_DECODING,
        choices=DRAFT_INITS,
        old_keys=("init",),
    )
    prior: str | None = setting(
        None,
        "the prior of --accept prior: a prior file (codeprior sample: --prior), in a pipeline config one of "
        "priors.methods",
        cli=False,
    )
    gsd_neighbors: int = setting(
        7, "--accept gsd: rank neighbours a group may take on each side", group=_DECODING, argtype=nonneg_int
    )
    gsd_prob_gap: float = setting(
        0.15, "--accept gsd: largest probability gap inside a group", group=_DECODING, argtype=nonneg_float
    )
    gsd_embed_dist: float = setting(
        0.5, "--accept gsd: largest squared embedding distance inside a group", group=_DECODING, argtype=nonneg_float
    )
    latent_k: int = setting(10, "--accept latent: codebook neighbours", group=_DECODING, argtype=positive_int)
    latent_delta: float = setting(
        3.0, "--accept latent: cap on the added mass (LANTERN++'s)", group=_DECODING, argtype=positive_float
    )
    compile: bool = setting(
        False,
        "torch.compile the fixed-shape model pass (AR and SJD; CUDA graphs on CUDA for AR): compiles once, tens of "
        "seconds on a CPU; pays off for long runs",
        group=_DECODING,
        old_flags=("--compile-decoding",),
    )

    def __post_init__(self) -> None:
        self.window = parse_window(self.window)
        check_record(self, _WHERE)
        if self.decoder == "sjd" and ACCEPT_RULES[self.accept].needs_prior and not self.prior:
            raise CodepriorError(f"{_WHERE}: --accept {self.accept} needs --prior FILE")

    @property
    def speculative(self) -> bool:
        return self.decoder == "sjd"

    @classmethod
    def coerce(cls, value: Any) -> DecoderSettings:
        """A DecoderSettings from itself, None (defaults), a plain dict (config files, samples.json; the old key
        ``init`` reads as ``draft_init``) or a pipeline config's ``sample.decoder`` section (the keys it was given)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if hasattr(value, "model_dump"):  # the pipeline's section (a pydantic model generated from this record)
            value = value.model_dump()
        if isinstance(value, dict):
            names = {f.name for f in fields(cls)} | set(old_keys(cls))
            unknown = sorted(set(value) - names)
            if unknown:
                raise CodepriorError(f"{_WHERE}: unknown decoder settings {unknown}")
            return from_dict(cls, value, where=_WHERE, warn=False)
        raise CodepriorError(f"{_WHERE}: decoder settings must be a dict, got {type(value).__name__}")


@dataclass
class SampleSettings:
    """Everything that decides which images come out (recorded next to the samples)."""

    cfg_scale: float = setting(
        2.0, "classifier-free guidance scale (1 = off)", argtype=nonneg_float, old_flags=("--cfg",)
    )
    temperature: float = setting(
        1.0,
        "sampling temperature of a GPT over codes (token, cluster-ce; a coarse GPT samples at --coarse-temperature)",
        argtype=nonneg_float,
    )
    top_k: int = setting(0, "top-k filtering (0 = off)", argtype=nonneg_int)
    top_p: float = setting(1.0, "nucleus filtering (1.0 = off)", argtype=top_p_float)
    seed: int = setting(0, "sample i depends only on (seed, i)", argtype=seed_int)
    # coarse-to-fine only
    coarse_temperature: float = setting(
        1.1,
        "coarse-to-fine stage 1: temperature of the coarse GPT over cluster ids (CTF's)",
        group="coarse-to-fine (--refine)",
        argtype=nonneg_float,
        old_keys=("tau1",),
    )
    refine_temperature: float = setting(
        1.1,
        "coarse-to-fine stage 2: temperature of the refine model (CTF's)",
        group="coarse-to-fine (--refine)",
        argtype=nonneg_float,
        old_keys=("tau2",),
    )
    refine_top_k: int = setting(
        0, "stage 2: top-k (0 = all members)", group="coarse-to-fine (--refine)", argtype=nonneg_int
    )
    refine_mode: str = setting(
        "sample",
        "stage 2: sample (CTF), argmax or random-member (DCPE release)",
        group="coarse-to-fine (--refine)",
        choices=REFINE_MODES,
    )
    decoder: DecoderSettings = field(default_factory=DecoderSettings)

    def __post_init__(self) -> None:
        self.decoder = DecoderSettings.coerce(self.decoder)
        check_record(self, _WHERE)

    def stage1_temperature(self, coarse: bool) -> float:
        """The temperature of the GPT: ``coarse_temperature`` for a coarse GPT (cluster ids), else ``temperature``."""
        return self.coarse_temperature if coarse else self.temperature


# ------------------------------------------------------------------------------------------------ CLI
def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """Every :class:`SampleSettings` and :class:`DecoderSettings` setting as a flag of ``p`` (``codeprior sample``)."""
    add_flags(p, SampleSettings)
    add_flags(p, DecoderSettings)


def sampling_from_namespace(args: argparse.Namespace, *, prior: str | None = None) -> SampleSettings:
    """The sampling settings of parsed flags; ``prior``: the prior file of ``--accept prior``."""
    from codeprior.utils.settings import from_namespace

    decoder = from_namespace(DecoderSettings, args, where=_WHERE, prior=prior)
    return from_namespace(SampleSettings, args, where=_WHERE, decoder=decoder)
