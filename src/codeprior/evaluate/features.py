"""Feature extractors: uint8 images -> (features for FID/KID/PRDC, logits for IS and class match).

Two kinds: the in-project :class:`ClassifierFeatures` (default; works offline) and, when the user has the
standard weights file, Inception-v3 (:mod:`codeprior.evaluate.inception`). Both are ``nn.Module``\\ s
with a ``num_features`` attribute whose ``forward`` takes uint8 ``[N, C, H, W]`` and returns features,
which is exactly what torchmetrics' ``FrechetInceptionDistance(feature=...)`` and
``KernelInceptionDistance(feature=...)`` accept, so they can also be used with torchmetrics directly.

:func:`codeprior.evaluate.metrics.evaluate_images` runs the extractor once per image set and hands the
features to torchmetrics through :class:`PrecomputedFeatures` (an identity module), so FID, KID, IS and
PRDC share one forward pass instead of four.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from codeprior.evaluate.classifier import LoadedClassifier, images_to_float
from codeprior.utils.progress import progress


class FeatureExtractor(nn.Module):
    """Base: ``extract(uint8 images) -> (features float32 [N, D], logits float32 [N, K])``."""

    name: str = "base"
    num_features: int
    num_classes: int

    def describe(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def extract(
        self, images: torch.Tensor | np.ndarray, batch_size: int = 500, desc: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover - overridden

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """torchmetrics interface: uint8 [N, C, H, W] -> features [N, num_features]."""
        return self.extract(images)[0]


class ClassifierFeatures(FeatureExtractor):
    """Penultimate-layer features and logits of the in-project classifier (see ``classifier.py``)."""

    name = "classifier"

    def __init__(self, classifier: LoadedClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.model = classifier.model.eval()
        self.num_features = classifier.model.config.feature_dim
        self.num_classes = classifier.model.config.num_classes

    def train(self, mode: bool = True) -> ClassifierFeatures:
        """Always stays in eval mode (BN statistics and dropout must not change features)."""
        return super().train(False)

    def describe(self) -> dict[str, Any]:
        return self.classifier.describe()

    @torch.no_grad()
    def extract(
        self, images: torch.Tensor | np.ndarray, batch_size: int = 1000, desc: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = images_to_float(images, self.model.config.channels)
        size = self.model.config.image_size
        if x.shape[-2:] != (size, size):
            from codeprior.errors import CodepriorError

            raise CodepriorError(f"images: {tuple(x.shape[-2:])} pixels, the classifier was trained on {size}x{size}")
        feats, logits = [], []
        for i in progress(range(0, len(x), batch_size), desc=desc or "features", disable=None if desc else True):
            f, lg = self.model.features_and_logits(x[i : i + batch_size])
            feats.append(f)
            logits.append(lg)
        if not feats:
            return torch.zeros(0, self.num_features), torch.zeros(0, self.num_classes)
        return torch.cat(feats).float(), torch.cat(logits).float()


class PrecomputedFeatures(nn.Module):
    """Identity module with ``num_features``: lets torchmetrics metrics consume features computed once."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features
