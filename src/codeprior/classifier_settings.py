"""The classifier settings record: :class:`ClassifierConfig`, the one definition of the feature classifier's recipe.

``codeprior classifier train`` generates its flags from it, the pipeline's ``classifier:`` section embeds its
training settings (``classifier.epochs`` is ``--epochs``) and :mod:`codeprior.evaluate.classifier` builds and
trains the network from it. No torch here: ``codeprior classifier --help`` reads it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from codeprior.errors import CodepriorError
from codeprior.utils.argtypes import nonneg_float, positive_float, positive_int, seed_int, unit_float
from codeprior.utils.settings import check_record, setting

__all__ = ["ClassifierConfig"]


@dataclass
class ClassifierConfig:
    """Architecture and training recipe. Every field enters the cache key (``config_sha256``)."""

    channels: int = setting(1, "image channels (set from the data)", cli=False)
    image_size: int = setting(28, "image side in pixels (set from the data)", cli=False)
    num_classes: int = setting(10, "classes (set from the data)", cli=False)
    widths: tuple[int, ...] = setting((16, 32, 64), "channels of the conv-BN-ReLU-pool stages", cli=False)
    feature_dim: int = setting(256, "penultimate features (the FID / KID / PRDC features)", cli=False)
    dropout: float = setting(0.2, "dropout before the class head", cli=False)
    epochs: int = setting(8, "training epochs", argtype=positive_int)
    batch_size: int = setting(128, "training batch size", argtype=positive_int)
    lr: float = setting(3e-3, "peak learning rate (one-cycle schedule, AdamW)", argtype=positive_float)
    weight_decay: float = setting(5e-4, "AdamW weight decay", argtype=nonneg_float)
    label_smoothing: float = setting(0.1, "label smoothing of the cross-entropy", argtype=unit_float)
    flip: bool = setting(
        True, "random horizontal flips in training; --no-flip: none", action=argparse.BooleanOptionalAction
    )
    max_train: int = setting(0, "0 = the whole train split; >0 = a fixed random subset (tests)", cli=False)
    max_steps: int = setting(0, "0 = epochs * steps per epoch; >0 = stop after this many steps (tests)", cli=False)
    seed: int = setting(0, "seed of the initialisation, the subset and the batches", argtype=seed_int)

    def __post_init__(self) -> None:
        check_record(self, "classifier")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CodepriorError(f"classifier config: unknown fields {sorted(unknown)}")
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple(int(w) for w in d["widths"])
        return cls(**d)

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()
