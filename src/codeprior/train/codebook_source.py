"""The codebook a training run's shards were made with (for objectives that read code geometry, e.g. SNCE)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from codeprior.errors import CodepriorError

__all__ = ["run_codebook"]


def run_codebook(cfg: Any, manifest: Mapping[str, Any]) -> torch.Tensor:
    """The codebook [V, D] of ``cfg.codebook`` or, when unset, of the tokenizer file the shards' manifest names;
    refused (one line) when its size or hash differs from what the shards were tokenised with."""
    from codeprior.codebook import load_codebook
    from codeprior.provenance import short, warn_unchecked
    from codeprior.utils.io import sha256_tensor

    path = cfg.codebook or manifest.get("tokenizer")
    if not path:
        raise CodepriorError(
            f"{cfg.codes}: the manifest names no tokenizer file; give --codebook (the tokenizer checkpoint or a "
            "codebook file) for --objective " + str(cfg.objective)
        )
    if not cfg.codebook and not Path(path).is_file():
        raise CodepriorError(
            f"{cfg.codes}: the tokenizer the shards were made with ({path}) is gone; give --codebook for "
            f"--objective {cfg.objective}"
        )
    cb = load_codebook(path)
    if int(cb.shape[0]) != int(manifest["codebook_size"]):
        raise CodepriorError(
            f"{path}: codebook has {cb.shape[0]} codes but {cfg.codes} has codebook_size {manifest['codebook_size']}"
        )
    want = manifest.get("codebook_sha256")
    if not want:
        warn_unchecked(str(cfg.codes), "no codebook hash recorded", f"whether {path} is the shards' codebook")
    elif sha256_tensor(cb) != want:
        raise CodepriorError(
            f"{path}: not the codebook the shards in {cfg.codes} were tokenised with (sha256 "
            f"{short(sha256_tensor(cb))} vs {short(want)})"
        )
    return cb
