"""In-project feature classifier: a small CNN trained on the dataset's train split.

No Inception weights are available offline, so FID / KID / PRDC use the penultimate-layer features of
this classifier and the Inception-style score uses its logits. The checkpoint stores the weights, the
config, the test accuracy and a hash of the data it was trained and tested on, so every metric can
name the extractor it came from and a cached classifier is reused only when config and data match.

Checkpoint layout (a plain dict, loadable with ``torch.load(..., weights_only=True)``)::

    {"model": state_dict, "config": dict, "test_accuracy": float, "data_sha256": str,
     "config_sha256": str, "dataset": str, "num_classes": int, "image_size": int, "channels": int,
     "steps": int, "seconds": float, "kind": "codeprior-classifier", "version": 1}
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from codeprior.classifier_settings import ClassifierConfig
from codeprior.errors import CodepriorError
from codeprior.utils.io import load_checkpoint, torch_save_atomic
from codeprior.utils.progress import progress

CKPT_KIND = "codeprior-classifier"
CKPT_VERSION = 1


class Classifier(nn.Module):
    """Conv-BN-ReLU-pool stages, then ``feature_dim`` penultimate features, then class logits.

    Input: float images in [0, 1], [B, C, H, W] (normalised inside, so callers never need dataset stats).
    """

    pixel_mean: torch.Tensor  # buffers (nn.Module's attribute lookup alone would type them Tensor | Module)
    pixel_std: torch.Tensor

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c, s = config.channels, config.image_size
        for w in config.widths:
            layers += [
                nn.Conv2d(c, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c, s = w, s // 2
        if s < 1:
            raise CodepriorError(
                f"classifier config: {len(config.widths)} pooling stages are too many for {config.image_size}px images"
            )
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c * s * s, config.feature_dim)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.num_classes)
        # Per-image standardisation constants (kept as buffers so the checkpoint is self-contained).
        self.register_buffer("pixel_mean", torch.tensor(0.5))
        self.register_buffer("pixel_std", torch.tensor(0.5))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` float [B, C, H, W] in [0, 1] -> (features [B, feature_dim], logits [B, num_classes])."""
        h = (x - self.pixel_mean) / self.pixel_std
        h = self.body(h).flatten(1)
        feats = F.relu(self.fc(h))
        return feats, self.head(self.drop(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]


def images_to_float(images: torch.Tensor | np.ndarray, channels: int | None = None) -> torch.Tensor:
    """uint8 images [N, H, W], [N, H, W, C] or [N, C, H, W] -> float [N, C, H, W] in [0, 1].

    The layout is inferred from where the small channel axis (1 or 3) sits; ``channels`` (when given)
    must match, and 1-channel images are repeated to 3 channels when 3 are asked for.
    """
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise CodepriorError(f"images: expected uint8 pixels, got {x.dtype}")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() == 4:
        if x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
            pass  # NCHW
        elif x.shape[-1] in (1, 3):
            x = x.permute(0, 3, 1, 2)  # NHWC (ADM / .npz layout)
        else:
            raise CodepriorError(f"images: cannot tell the channel axis of shape {tuple(x.shape)}")
    else:
        raise CodepriorError(f"images: expected [N, H, W(, C)] or [N, C, H, W], got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        if x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and channels == 1:
            x = (x.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
            return x.round().clamp(0, 255).div(255.0)
        else:
            raise CodepriorError(f"images: {x.shape[1]} channels, the feature extractor expects {channels}")
    return x.float().div(255.0)


def data_sha256(*arrays: np.ndarray | torch.Tensor) -> str:
    """Hash of the arrays' shapes, dtypes and bytes (identifies the exact data a classifier saw)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(torch.as_tensor(a).numpy() if isinstance(a, torch.Tensor) else a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@torch.no_grad()
def predict(
    model: Classifier, images: torch.Tensor | np.ndarray, batch_size: int = 1000, desc: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float32 [N, D], logits float32 [N, num_classes]) for uint8 images, in eval mode."""
    # uint8 images are converted; anything else must already be a float tensor in [0, 1]
    x = (
        images_to_float(images, model.config.channels)
        if torch.as_tensor(images).dtype == torch.uint8
        else cast(torch.Tensor, images)
    )
    was_training = model.training
    model.eval()
    feats, logits = [], []
    try:
        for i in progress(range(0, len(x), batch_size), desc=desc or "features", disable=None if desc else True):
            f, lg = model.features_and_logits(x[i : i + batch_size])
            feats.append(f)
            logits.append(lg)
    finally:
        model.train(was_training)
    d = model.config.feature_dim
    if not feats:
        return torch.zeros(0, d), torch.zeros(0, model.config.num_classes)
    return torch.cat(feats), torch.cat(logits)


def accuracy(model: Classifier, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    _, logits = predict(model, images)
    return float((logits.argmax(1) == torch.as_tensor(labels).long()).float().mean())


def train_classifier(
    train_images: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor,
    test_images: np.ndarray | torch.Tensor,
    test_labels: np.ndarray | torch.Tensor,
    config: ClassifierConfig | None = None,
    *,
    dataset: str = "custom",
) -> tuple[Classifier, dict[str, Any]]:
    """Train the classifier on uint8 images; return (model in eval mode, checkpoint dict).

    AdamW with a one-cycle schedule, label smoothing and random horizontal flips (a symmetry of
    Fashion-MNIST's garments), seeded by ``config.seed`` so a run is reproducible on the same machine.
    """
    config = config or ClassifierConfig()
    t0 = time.perf_counter()
    y_all = torch.as_tensor(np.asarray(train_labels)).long()
    x_all = images_to_float(train_images)
    if x_all.shape[1:] != (config.channels, config.image_size, config.image_size):
        raise CodepriorError(
            f"{dataset}: images of shape {tuple(x_all.shape[1:])}, classifier config expects "
            f"{(config.channels, config.image_size, config.image_size)}"
        )
    if len(x_all) != len(y_all):
        raise CodepriorError(f"{dataset}: {len(x_all)} images but {len(y_all)} labels")
    if int(y_all.max()) >= config.num_classes or int(y_all.min()) < 0:
        raise CodepriorError(f"{dataset}: labels outside 0..{config.num_classes - 1}")
    gen = torch.Generator().manual_seed(config.seed)
    if config.max_train and config.max_train < len(x_all):
        keep = torch.randperm(len(x_all), generator=gen)[: config.max_train]
        x_all, y_all = x_all[keep], y_all[keep]
    torch.manual_seed(config.seed)
    model = Classifier(config)
    n = len(x_all)
    bs = min(config.batch_size, n)
    steps_per_epoch = max(1, n // bs)
    total = config.epochs * steps_per_epoch
    if config.max_steps:
        total = min(total, config.max_steps) if config.epochs else config.max_steps
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(total, 2), pct_start=0.15)
    model.train()
    step = 0
    bar = progress(total=total, desc=f"classifier {dataset}")
    loss_val = math.nan
    while step < total:
        perm = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = perm[i * bs : (i + 1) * bs]
            xb, yb = x_all[idx], y_all[idx]
            if config.flip:
                flip = torch.rand(len(xb), generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), yb, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_val = float(loss.detach())
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss_val:.3f}")
    bar.close()
    model.eval()
    test_acc = accuracy(model, test_images, test_labels)
    ckpt = {
        "kind": CKPT_KIND,
        "version": CKPT_VERSION,
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "config_sha256": config.sha256(),
        "data_sha256": data_sha256(train_images, train_labels, test_images, test_labels),
        "dataset": dataset,
        "test_accuracy": test_acc,
        "num_classes": config.num_classes,
        "image_size": config.image_size,
        "channels": config.channels,
        "feature_dim": config.feature_dim,
        "steps": step,
        "final_loss": loss_val,
        "seconds": time.perf_counter() - t0,
    }
    return model, ckpt


@dataclass
class LoadedClassifier:
    """A classifier ready for feature extraction, with the facts every metric report must name."""

    model: Classifier
    path: str | None
    test_accuracy: float
    dataset: str
    data_sha256: str
    config_sha256: str
    extras: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "name": "classifier",
            "path": self.path,
            "dataset": self.dataset,
            "test_accuracy": self.test_accuracy,
            "num_features": self.model.config.feature_dim,
            "data_sha256": self.data_sha256,
            "config_sha256": self.config_sha256,
        }


def save_classifier(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a checkpoint dict from :func:`train_classifier` atomically."""
    torch_save_atomic(ckpt, path)


def load_classifier(path: str | os.PathLike) -> LoadedClassifier:
    """Load a classifier checkpoint (``weights_only=True``); wrong files raise a one-line CodepriorError."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CKPT_KIND:
        raise CodepriorError(
            f"{path}: not a codeprior classifier checkpoint (make one with `codeprior classifier train`)"
        )
    config = ClassifierConfig.from_dict(ckpt["config"])
    model = Classifier(config)
    if isinstance(ckpt.get("model"), dict):
        from codeprior.models.checkpoint import check_finite_weights

        check_finite_weights(ckpt["model"], str(path))
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        raise CodepriorError(
            f"{path}: classifier weights do not match its config ({str(e).splitlines()[0][:200]})"
        ) from None
    model.eval()
    return LoadedClassifier(
        model=model,
        path=str(path),
        test_accuracy=float(ckpt["test_accuracy"]),
        dataset=str(ckpt["dataset"]),
        data_sha256=str(ckpt["data_sha256"]),
        config_sha256=str(ckpt["config_sha256"]),
        extras={k: ckpt[k] for k in ("steps", "seconds", "final_loss") if k in ckpt},
    )


def default_cache_dir() -> Path:
    """``$CODEPRIOR_CACHE`` or ``$XDG_CACHE_HOME/codeprior`` or ``~/.cache/codeprior``."""
    if os.environ.get("CODEPRIOR_CACHE"):
        return Path(os.environ["CODEPRIOR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "codeprior"


def default_classifier_path(dataset: str) -> Path:
    name = Path(dataset).name if os.sep in dataset else dataset
    return default_cache_dir() / f"classifier-{name}.pt"


def load_split(dataset: str, split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images and int64 labels of a named dataset split, via ``codeprior.data.images.load_idx``."""
    from codeprior.data.images import load_idx

    x, y = load_idx(dataset, split, data_dir)
    return np.asarray(x), np.asarray(y)


def get_classifier(
    dataset: str = "fashion-mnist",
    data_dir: str | None = None,
    path: str | os.PathLike | None = None,
    config: ClassifierConfig | None = None,
    *,
    train_if_missing: bool = True,
    force: bool = False,
    log: Any = print,
) -> LoadedClassifier:
    """The classifier for ``dataset``: reuse ``path`` (default: the cache) when its config and data hashes
    match, otherwise train one on the train split, evaluate it on the test split and save it there."""
    path = Path(path) if path is not None else default_classifier_path(dataset)
    x_tr, y_tr = load_split(dataset, "train", data_dir)
    x_te, y_te = load_split(dataset, "test", data_dir)
    config = _fit_config_to_data(config or ClassifierConfig(), x_tr, y_tr)
    if path.exists() and not force:
        loaded = load_classifier(path)
        if loaded.config_sha256 == config.sha256() and loaded.data_sha256 == data_sha256(x_tr, y_tr, x_te, y_te):
            return loaded
        if not train_if_missing:
            raise CodepriorError(
                f"{path}: classifier was trained with another config or data; retrain with "
                f"`codeprior classifier train --data {dataset} --out {path} --force`"
            )
        log(f"codeprior: {path}: config or data changed, retraining the classifier")
    elif not path.exists() and not train_if_missing:
        raise CodepriorError(f"{path}: no classifier; train one with `codeprior classifier train --data {dataset}`")
    log(f"codeprior: training the feature classifier on {dataset} ({len(x_tr)} images, {config.epochs} epochs)")
    _, ckpt = train_classifier(x_tr, y_tr, x_te, y_te, config, dataset=dataset)
    save_classifier(ckpt, path)
    log(f"codeprior: classifier test accuracy {ckpt['test_accuracy']:.4f}, saved to {path}")
    return load_classifier(path)


def _fit_config_to_data(config: ClassifierConfig, x: np.ndarray, y: np.ndarray) -> ClassifierConfig:
    """Set channels / image size / class count from the data (keeps every training hyperparameter)."""
    x = np.asarray(x)
    if x.ndim == 3:
        ch, size = 1, x.shape[1]
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        ch, size = x.shape[-1], x.shape[1]
    else:
        ch, size = x.shape[1], x.shape[2]
    d = config.to_dict()
    d.update(channels=int(ch), image_size=int(size), num_classes=max(int(np.max(y)) + 1, config.num_classes))
    return ClassifierConfig.from_dict(d)
