"""Standard Inception-v3 features (FID 2048-d pool features, IS logits) from a local weights file.

The weights are the FID Inception network converted from TensorFlow (2015-12-05 graph): pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` and torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``
(same network and key layout). Nothing is downloaded: the user passes the file with
``--inception-weights PATH``.

The network itself comes from **torch-fidelity** (``FeatureExtractorInceptionV3``, the implementation
torchmetrics' FID uses, with TF1-compatible bilinear resizing to 299 px). torch-fidelity pulls in
torchvision, so it is an optional dependency (``pip install torch-fidelity``); without it this module
raises a one-line error and the classifier features remain the default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codeprior.errors import CodepriorError
from codeprior.evaluate.classifier import images_to_float
from codeprior.evaluate.features import FeatureExtractor
from codeprior.utils.progress import progress


def _fidelity_extractor_class() -> Any:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        return None
    return FeatureExtractorInceptionV3


class InceptionFeatures(FeatureExtractor):
    """Inception-v3 pool3 features (2048-d) and ``logits_unbiased`` (1008 classes) via torch-fidelity."""

    name = "inception-v3"

    def __init__(self, weights_path: str | os.PathLike) -> None:
        super().__init__()
        path = Path(weights_path)
        if not path.exists():
            raise CodepriorError(
                f"{path}: no such file (expected the pt_inception-2015-12-05-*.pth Inception "
                f"weights of pytorch-fid / torch-fidelity)"
            )
        if path.is_dir():
            raise CodepriorError(f"{path}: is a directory, expected the pt_inception-2015-12-05-*.pth weights file")
        cls = _fidelity_extractor_class()
        if cls is None:
            raise CodepriorError(
                f"{path}: Inception features need torch-fidelity, which is not installed "
                f"(pip install torch-fidelity); the default classifier features work without it"
            )
        try:
            self.net = cls("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path))
        except Exception as e:
            raise CodepriorError(
                f"{path}: cannot load Inception weights ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else ''})"
            ) from None
        self.net.eval()
        self.path = str(path)
        self.num_features = 2048
        self.num_classes = 1008

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "test_accuracy": None,
            "num_features": self.num_features,
            "note": "standard FID Inception-v3 (2015-12-05 weights) via torch-fidelity",
        }

    @torch.no_grad()
    def extract(
        self, images: torch.Tensor | np.ndarray, batch_size: int = 64, desc: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch_size = min(batch_size, 64)  # 299 px activations: keep memory bounded
        x = (images_to_float(images, 3) * 255).round().to(torch.uint8)  # 3-channel uint8 NCHW, as torch-fidelity wants
        feats, logits = [], []
        for i in progress(range(0, len(x), batch_size), desc=desc or "inception", disable=None if desc else True):
            f, lg = self.net(x[i : i + batch_size])
            feats.append(f.float())
            logits.append(lg.float())
        if not feats:
            return torch.zeros(0, 2048), torch.zeros(0, 1008)
        return torch.cat(feats), torch.cat(logits)
