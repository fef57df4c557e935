"""The evaluation settings record: :class:`EvaluateSettings`, the one definition of how samples are measured.

``codeprior evaluate`` generates its flags from it (``prior substitute`` takes its ``--batch-size`` and
``--seed``), the pipeline's ``evaluate:`` section embeds it (``evaluate.nearest_k`` is
``--nearest-k``) and :func:`codeprior.evaluate.metrics.evaluate_images` takes its fields. No torch here:
``codeprior evaluate --help`` reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from codeprior.utils.argtypes import positive_int, seed_int
from codeprior.utils.settings import check_record, setting

__all__ = ["EvaluateSettings", "SPLIT_REFERENCES"]

#: references that name a split of the dataset, not an .npz file
SPLIT_REFERENCES = ("test-split", "train-split")


@dataclass
class EvaluateSettings:
    """FID / KID / IS / PRDC settings (defaults: the torchmetrics / prdc conventions the metrics follow)."""

    reference: str = setting(
        "test-split",
        "reference images: the dataset's test-split or train-split, or an .npz of images (e.g. ADM's "
        "VIRTUAL_imagenet256_labeled.npz)",
        metavar="{test-split,train-split,REF.npz}",
    )
    kid_subsets: int = setting(100, "KID subsets", argtype=positive_int)
    kid_subset_size: int = setting(1000, "KID subset size", argtype=positive_int)
    nearest_k: int = setting(
        5,
        "k of precision / recall / density / coverage (PRDC's neighbourhood)",
        argtype=positive_int,
        old_keys=("prdc_k",),
    )
    prdc_max: int = setting(
        10000, "PRDC uses at most this many images per side (N x N distances)", argtype=positive_int
    )
    batch_size: int = setting(500, "images per forward pass of the feature extractor", argtype=positive_int)
    seed: int = setting(0, "seed for KID subsets / IS splits / draws", argtype=seed_int)

    def __post_init__(self) -> None:
        check_record(self, "evaluate")

    def metric_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`codeprior.evaluate.metrics.evaluate_images` (all but the reference)."""
        d = asdict(self)
        d.pop("reference")
        return d
