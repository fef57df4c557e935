"""Helpers several stages share: the tokenizer loader, the test split as uint8 images, the feature extractor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from codeprior.data.images import build_image_dataset, resolve_folder_split
from codeprior.evaluate import make_extractor
from codeprior.evaluate.classifier import load_split
from codeprior.evaluate.metrics import load_reference
from codeprior.pipeline.config import IDX_DATASETS, PipelineConfig
from codeprior.tokenize import load_tokenizer

__all__ = ["test_split", "load_vq", "test_images_uint8", "extractor", "describe_features", "reference"]


def test_split(dataset: str) -> str:
    """The held-out split's name: ``test`` for IDX datasets, an image folder's ``val`` (or ``test``)."""
    if dataset in IDX_DATASETS:
        return "test"
    return resolve_folder_split(dataset, "val").name  # val/, or test/ when there is no val/


def load_vq(cfg: PipelineConfig, path: str | Path, device: str) -> Any:
    """The tokenizer in eval mode: a checkpoint's own stored config (codeprior files, ``vq_train.py``'s args), else
    for a given LlamaGen checkpoint the config named in tokenizer.model. A tokenizer.model set in the config file
    that contradicts the checkpoint's stored config is refused, naming both (as ``--vq-model`` is on the CLI)."""
    t = cfg.tokenizer
    given = t.model if t.checkpoint and "model" in t.model_fields_set else None
    return load_tokenizer(
        path, config=given, default_config=t.model if t.checkpoint else None, device=device, flag="tokenizer.model"
    )


def test_images_uint8(cfg: PipelineConfig, n: int | None = None) -> tuple[Any, Any]:
    """uint8 test images [N, H, W(, C)] and labels: the IDX test split, or the first ``n`` of an image folder's val."""
    if cfg.data.dataset in IDX_DATASETS:
        x, y = load_split(cfg.data.dataset, "test", cfg.data.data_dir)
        return (x, y) if n is None else (x[:n], y[:n])
    ds = build_image_dataset(cfg.data.dataset, test_split(cfg.data.dataset), None, cfg.data.image_size)
    n = len(ds) if n is None else min(n, len(ds))
    xs, ys = [], []
    for i in range(n):
        img, label = ds[i]
        xs.append(((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy())
        ys.append(label)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def extractor(cfg: PipelineConfig, classifier: str | Path | None) -> Any:
    """The feature extractor the classifier stage chose (Inception with given weights, else its classifier)."""
    if cfg.classifier.inception_weights:
        return make_extractor("inception", inception_weights=cfg.classifier.inception_weights)
    return make_extractor("classifier", classifier=str(classifier))


def describe_features(desc: dict) -> str:
    """One phrase naming a feature extractor (for tables and the report)."""
    if desc.get("name") == "classifier":
        return (
            f"in-project classifier trained on {desc.get('dataset')} ({desc.get('num_features')}-d penultimate "
            "features)"
        )
    return f"{desc.get('name')} ({desc.get('path') or desc.get('weights') or ''})".strip()


def reference(cfg: PipelineConfig) -> tuple[Any, str]:
    """The reference images of the metrics and their name (the test split, or ``evaluate.reference``)."""
    return load_reference(cfg.evaluate.reference, cfg.data.dataset, cfg.data.data_dir)
