"""Provenance: what each artifact was made from, and the checks its consumers run before any work.

Records (see docs/checks.md):

* code shards (``manifest.json``): ``tokenizer_sha256`` (the tokenizer file) and ``codebook_sha256`` (its codebook,
  :func:`codeprior.utils.io.sha256_tensor`);
* priors: ``codebook_sha256`` of the codebook they were extracted from (same hash, so the two meet);
* GPT / refine checkpoints: a plain-dict ``provenance`` entry (LlamaGen ignores unknown keys) with the objective,
  vocabulary, the prior's partition hash and codebook hash, and the shards' tokenizer / codebook hashes;
* sample folders: a fingerprint of models and settings (:mod:`codeprior.sample`).

A mismatch is a one-line :class:`CodepriorError` naming both files; an artifact without the record (a LlamaGen
checkpoint, older shards) gets one warning that it cannot be checked.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from codeprior.errors import CodepriorError
from codeprior.train.objective_traits import traits_of

_warned: set[str] = set()


def warn_unchecked(what: str, why: str, subject: str) -> None:
    """Print once per process: ``codeprior: warning: WHAT: WHY, so SUBJECT cannot be checked``."""
    msg = f"codeprior: warning: {what}: {why}, so {subject} cannot be checked"
    if msg not in _warned:
        _warned.add(msg)
        print(msg, file=sys.stderr, flush=True)


def short(h: str | None) -> str:
    return f"{h[:12]}…" if h else "none"


def check_prior_for_shards(prior: Any, prior_path: str, manifest: Mapping[str, Any], codes_path: str) -> None:
    """Refuse a prior extracted from another codebook than the one the shards were tokenised with."""
    want, got = manifest.get("codebook_sha256"), prior.metadata.get("codebook_sha256")
    if not want or not got:
        missing = codes_path if not want else prior_path
        warn_unchecked(missing, "no codebook hash recorded", "whether the prior belongs to the shards' codebook")
        return
    if want != got:
        raise CodepriorError(
            f"{prior_path}: prior was extracted from another codebook than the shards in {codes_path} were tokenised "
            f"with (codebook sha256 {short(got)} vs {short(want)}); extract the prior from that tokenizer"
        )


def training_provenance(
    objective: str, vocab_size: int, manifest: Mapping[str, Any], prior: Any, codes: str, prior_path: str | None
) -> dict[str, Any]:
    """The ``provenance`` entry of a GPT / refine checkpoint (plain data: loads with ``weights_only=True``)."""
    return {
        "objective": objective,
        "vocab_size": int(vocab_size),
        "codebook_size": int(manifest["codebook_size"]),
        "codes": str(codes),
        "tokenizer_sha256": manifest.get("tokenizer_sha256"),
        "codebook_sha256": manifest.get("codebook_sha256"),
        "prior": str(prior_path) if prior_path else None,
        "prior_sha256": prior.sha256() if prior is not None else None,
        "prior_codebook_sha256": prior.metadata.get("codebook_sha256") if prior is not None else None,
    }


def check_sampling(
    gpt: Any, ckpt: str, vq: Any, tokenizer: str, refine: Any = None, refine_path: str | None = None
) -> None:
    """Before sampling: the checkpoint's objective fits --refine, and the tokenizer has the codebook it was trained on."""
    from codeprior.utils.io import sha256_tensor

    prov: Mapping[str, Any] | None = getattr(gpt, "provenance", None)
    objective = prov.get("objective") if prov else None
    traits = traits_of(objective)
    codebook_size = int(vq.config.codebook_size)
    if refine is None:
        if (traits is not None and traits.needs_refine) or (
            objective is None and gpt.config.vocab_size != codebook_size
        ):
            what = (
                f"a {objective} (cluster-id) model"
                if traits is not None and traits.needs_refine
                else f"a model over {gpt.config.vocab_size} ids, not the tokenizer's {codebook_size} codes"
            )
            raise CodepriorError(
                f"{ckpt}: is {what}; sample it with --refine REFINE.pt (its ids are clusters, not codes of {tokenizer})"
            )
    elif traits is not None and traits.samples_codes:
        raise CodepriorError(
            f"{ckpt}: is a {objective} model (its ids are codes, not clusters); drop --refine {refine_path}"
        )
    codebook_hash = None
    for model, path in ((gpt, ckpt), (refine, refine_path)):
        if model is None:
            continue
        p = getattr(model, "provenance", None)
        if not p:
            warn_unchecked(
                str(path), "no provenance record (a LlamaGen or older checkpoint)", "its objective and tokenizer"
            )
            continue
        want = p.get("codebook_sha256")
        if not want:
            warn_unchecked(str(path), "trained on shards without a codebook hash", "its tokenizer")
            continue
        codebook_hash = codebook_hash or sha256_tensor(vq.quantize.embedding.weight)
        if want != codebook_hash:
            raise CodepriorError(
                f"{tokenizer}: not the tokenizer {path} was trained with (codebook sha256 {short(codebook_hash)} vs "
                f"{short(want)} recorded from {p.get('codes')})"
            )
    if refine is not None and prov and prov.get("prior_sha256") and getattr(refine, "has_prior", False):
        from codeprior.priors.prior import Prior

        got = Prior(refine.token_to_cluster.detach().cpu()).sha256()
        if got != prov["prior_sha256"]:
            raise CodepriorError(
                f"{refine_path}: refine model uses another prior than {ckpt} (prior sha256 "
                f"{short(got)} vs {short(prov['prior_sha256'])})"
            )
