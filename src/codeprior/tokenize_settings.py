"""The tokenising settings record: :class:`TokenizeSettings`, the one definition of how images become code shards.

``codeprior tokenize`` generates its flags from it and the pipeline's ``tokenize:`` section embeds it (both call
:func:`codeprior.tokenize.tokenize_dataset` with its fields). No torch here: ``codeprior tokenize --help`` reads it.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from codeprior.utils.argtypes import positive_int
from codeprior.utils.settings import check_record, setting

__all__ = ["TokenizeSettings", "default_batch_size"]


def default_batch_size(data: str | os.PathLike) -> int:
    """``batch_size`` unset: 512 for the small IDX images, 32 for image folders (the encoder's activations of 256-px
    images dominate)."""
    from codeprior.pipeline.validation import IDX_DATASETS

    return 512 if str(data) in IDX_DATASETS else 32


@dataclass
class TokenizeSettings:
    """Which images are encoded and how (the shards record these; a change re-tokenises)."""

    batch_size: int | None = setting(
        None,
        "images per encoder batch and per resumable chunk (default: 512 for IDX data, 32 for image folders)",
        argtype=positive_int,
        metavar="N",
    )
    flip: bool = setting(
        True,
        "also encode the horizontal flip of every image (n_aug = 2; training augmentation); --no-flip: only the "
        "originals",
        action=argparse.BooleanOptionalAction,
    )
    limit: int | None = setting(
        None,
        "encode only N images per split, evenly spaced over it (every class of a folder sorted by class): a subset "
        "to try things on (default: every image)",
        argtype=positive_int,
        metavar="N",
    )
    store_embeddings: bool = setting(
        False,
        "also store the encoder's continuous output at every position beside the codes (embeddings.npy, float16: "
        "2 x D bytes per token and augmentation, 8x the codes at D = 8), for `train --objective snce --snce-source "
        "encoder`",
    )

    def __post_init__(self) -> None:
        check_record(self, "tokenize")
