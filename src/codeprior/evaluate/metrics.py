"""Sample-quality metrics on extractor features: FID, KID, Inception-style score, PRDC, class match.

Which library does what:

* FID and KID: torchmetrics (``FrechetInceptionDistance`` / ``KernelInceptionDistance`` given a custom
  feature module, so torch-fidelity is not needed); we pass features already extracted once
  (:class:`~codeprior.evaluate.features.PrecomputedFeatures`).
* Inception-style score: torchmetrics ``InceptionScore`` on the extractor's logits,
  ``exp(E_x KL(p(y|x) || p(y)))`` averaged over ``splits`` chunks.
* Precision / recall / density / coverage: the ``prdc`` package (Naeem et al. 2020), ``nearest_k=5``.
* Class match: share of class-conditional samples the classifier assigns to their intended label.

KID and IS draw random subsets / permutations; they run under a forked RNG seeded by ``seed`` so
results are reproducible and the caller's global RNG is untouched.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codeprior.errors import CodepriorError
from codeprior.evaluate.features import FeatureExtractor, PrecomputedFeatures

METRIC_KEYS = (
    "fid",
    "kid_mean",
    "kid_std",
    "is_mean",
    "is_std",
    "precision",
    "recall",
    "density",
    "coverage",
    "class_match",
)


def _check_features(real: torch.Tensor, fake: torch.Tensor, need: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    real, fake = torch.as_tensor(real), torch.as_tensor(fake)
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise CodepriorError(
            f"features: expected [N, D] arrays of equal D, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    if len(real) < need or len(fake) < need:
        raise CodepriorError(f"features: need at least {need} samples on each side, got {len(real)} and {len(fake)}")
    return real, fake


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (torchmetrics, float64 statistics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _check_features(real, fake)
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid_from_features(
    real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel inception distance (cubic polynomial kernel MMD^2, unbiased), mean and std over subsets.

    ``subset_size`` is capped at the smaller set's size so small evaluations still work.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _check_features(real, fake)
    size = int(min(subset_size, len(real), len(fake)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=PrecomputedFeatures(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score_from_logits(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """``exp(E KL(p(y|x) || p(y)))`` per split (torchmetrics ``InceptionScore``); mean and std over splits."""
    from torchmetrics.image.inception import InceptionScore

    logits = torch.as_tensor(logits)
    if logits.dim() != 2 or len(logits) < 2 * splits:
        raise CodepriorError(
            f"logits: need [N, K] with N >= {2 * splits} for {splits} splits, got {tuple(logits.shape)}"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = InceptionScore(feature=PrecomputedFeatures(logits.shape[1]), splits=splits)
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*degrees of freedom.*")  # splits=1: std undefined
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), (float(std) if splits > 1 else 0.0)


def prdc_from_features(
    real: torch.Tensor, fake: torch.Tensor, nearest_k: int = 5, max_samples: int = 10000, seed: int = 0
) -> dict[str, float]:
    """Precision, recall, density, coverage (``prdc`` package) on at most ``max_samples`` per side.

    PRDC builds N x N distance matrices, so each side is subsampled (seeded) to ``max_samples``.
    """
    from prdc import compute_prdc

    real, fake = _check_features(real, fake, need=nearest_k + 2)
    g = torch.Generator().manual_seed(seed)
    if max_samples and len(real) > max_samples:
        real = real[torch.randperm(len(real), generator=g)[:max_samples]]
    if max_samples and len(fake) > max_samples:
        fake = fake[torch.randperm(len(fake), generator=g)[:max_samples]]
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the sample counts
        out = compute_prdc(real_features=real.float().numpy(), fake_features=fake.float().numpy(), nearest_k=nearest_k)
    return {k: float(v) for k, v in out.items()}


def class_match_rate(logits: torch.Tensor, labels: torch.Tensor | np.ndarray) -> float:
    """Share of samples whose predicted class is their intended (conditioning) label; labels outside the
    classifier's classes are refused (they would count as misses, a number that measures nothing)."""
    labels = torch.as_tensor(np.asarray(labels)).long().view(-1)
    if len(labels) != len(logits):
        raise CodepriorError(f"labels: {len(labels)} labels for {len(logits)} samples")
    check_labels(labels, int(torch.as_tensor(logits).shape[1]), "labels")
    return float((torch.as_tensor(logits).argmax(1) == labels).float().mean())


# ----------------------------------------------------------------------------------------------------------------
# Sample files and references


def check_labels(labels: np.ndarray | torch.Tensor, num_classes: int, source: str, against: str = "") -> None:
    """Refuse labels outside ``0..num_classes - 1`` with one line naming ``source`` and the first bad label."""
    lab = np.asarray(labels).reshape(-1)
    bad = np.flatnonzero((lab < 0) | (lab >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise CodepriorError(
            f"{source}: label {int(lab[i])} of sample {i} is outside 0..{num_classes - 1}"
            f"{' (the classes of ' + against + ')' if against else ''}; {len(bad)} of {len(lab)} labels are out "
            "of range, so their class match would be a miss that measures nothing"
        )


def npz_shape(path: str | os.PathLike, key: str = "arr_0") -> tuple[int, ...] | None:
    """Shape of array ``key`` in an ``.npz`` from its header (nothing loaded); None when it cannot be read."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return tuple(int(d) for d in read(f)[0])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def evaluate_memory(samples: tuple[int, ...], reference: tuple[int, ...], prdc_max: int) -> int:
    """Estimated bytes of :func:`evaluate_images` for uint8 image arrays of these shapes: the pixels, as bytes and
    as floats (converted at once), features and logits, and PRDC's three distance matrices (two copies each)."""
    n, r = samples[0], reference[0]
    px, rpx = int(np.prod(samples[1:])), int(np.prod(reference[1:]))
    pixels = n * px * 5 + r * rpx * 5
    feats = (n + r) * (256 + 1024) * 4 * 4
    mf, mr = min(n, prdc_max or n), min(r, prdc_max or r)
    return pixels + feats + 8 * (mf * mf + mr * mr + mf * mr)


def load_samples_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an ADM-layout sample file: ``arr_0`` uint8 [N, H, W, C] and optional ``labels`` [N]."""
    path = Path(path)
    if not path.exists():
        raise CodepriorError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "arr_0" not in z.files:
                raise CodepriorError(f"{path}: no 'arr_0' array (expected uint8 [N, H, W, C] samples; has {z.files})")
            images = z["arr_0"]
            labels = z["labels"] if "labels" in z.files else None
    except CodepriorError:
        raise
    except Exception as e:
        raise CodepriorError(f"{path}: cannot read .npz ({type(e).__name__}: {str(e)[:200]})") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise CodepriorError(f"{path}: arr_0 must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(images)):
        raise CodepriorError(f"{path}: 'labels' must be [N] with N = {len(images)}, got shape {labels.shape}")
    if labels is not None and len(labels):
        integral = labels.dtype.kind in "iu" or (labels.dtype.kind == "f" and bool(np.all(labels == np.round(labels))))
        if not integral or labels.min() < 0:
            raise CodepriorError(f"{path}: 'labels' must be class indices >= 0, got {labels.dtype} min {labels.min()}")
    return images, (labels.astype(np.int64) if labels is not None else None)


def load_reference(
    reference: str | os.PathLike | np.ndarray | torch.Tensor, data: str = "fashion-mnist", data_dir: str | None = None
) -> tuple[np.ndarray, str]:
    """Reference images: ``"test-split"`` / ``"train-split"`` of ``data``, an ``.npz`` path, or an array."""
    if isinstance(reference, (np.ndarray, torch.Tensor)):
        return np.asarray(reference), "array"
    ref = str(reference)
    if ref in ("test-split", "train-split"):
        from codeprior.evaluate.classifier import load_split

        images, _ = load_split(data, ref.split("-")[0], data_dir)
        return images, f"{data}:{ref.split('-')[0]}"
    images, _ = load_samples_npz(ref)
    return images, ref


def make_extractor(
    feature: str = "classifier",
    *,
    data: str = "fashion-mnist",
    data_dir: str | None = None,
    classifier: Any = None,
    inception_weights: str | None = None,
    train_if_missing: bool = True,
) -> FeatureExtractor:
    """Build the feature extractor by name (``classifier`` or ``inception``)."""
    if feature == "classifier":
        from codeprior.evaluate.classifier import LoadedClassifier, get_classifier, load_classifier
        from codeprior.evaluate.features import ClassifierFeatures

        if isinstance(classifier, LoadedClassifier):
            return ClassifierFeatures(classifier)
        if classifier is not None and Path(classifier).exists():
            return ClassifierFeatures(load_classifier(classifier))
        return ClassifierFeatures(get_classifier(data, data_dir, classifier, train_if_missing=train_if_missing))
    if feature == "inception":
        from codeprior.evaluate.inception import InceptionFeatures

        if not inception_weights:
            raise CodepriorError(
                "--inception-weights: Inception features need the pt_inception-2015-12-05 weights file"
            )
        return InceptionFeatures(inception_weights)
    raise CodepriorError(f"feature: unknown feature extractor {feature!r} (use 'classifier' or 'inception')")


def evaluate_images(
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor | None = None,
    reference: str | os.PathLike | np.ndarray | torch.Tensor = "test-split",
    feature: str | FeatureExtractor = "classifier",
    *,
    data: str = "fashion-mnist",
    data_dir: str | None = None,
    classifier: Any = None,
    inception_weights: str | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    nearest_k: int = 5,
    prdc_max: int = 10000,
    batch_size: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics for uint8 ``images`` ([N, H, W, C] or [N, C, H, W]) against a reference set.

    Returns a JSON-ready dict: ``fid``, ``kid_mean``/``kid_std``, ``is_mean``/``is_std``, ``precision``,
    ``recall``, ``density``, ``coverage``, ``class_match`` (only with ``labels``) and ``feature_extractor``
    (its name, file, test accuracy, feature dimension) so every number names what it was measured with.
    """
    t0 = time.perf_counter()
    extractor = (
        feature
        if isinstance(feature, FeatureExtractor)
        else make_extractor(
            feature, data=data, data_dir=data_dir, classifier=classifier, inception_weights=inception_weights
        )
    )
    ref_images, ref_name = load_reference(reference, data, data_dir)
    fake_f, fake_logits = extractor.extract(images, batch_size, desc="sample features")
    real_f, _ = extractor.extract(ref_images, batch_size, desc="reference features")
    if len(fake_f) < 2:
        raise CodepriorError(f"samples: need at least 2 images, got {len(fake_f)}")
    out: dict[str, Any] = {
        "feature_extractor": extractor.describe(),
        "reference": ref_name,
        "num_samples": int(len(fake_f)),
        "num_reference": int(len(real_f)),
    }
    out["fid"] = fid_from_features(real_f, fake_f)
    out["kid_mean"], out["kid_std"] = kid_from_features(real_f, fake_f, kid_subsets, kid_subset_size, seed)
    splits = max(1, min(is_splits, len(fake_logits) // 2))
    out["is_mean"], out["is_std"] = inception_score_from_logits(fake_logits, splits, seed)
    if len(real_f) >= nearest_k + 2 and len(fake_f) >= nearest_k + 2:
        out.update(prdc_from_features(real_f, fake_f, nearest_k, prdc_max, seed))
    if labels is not None:
        out["class_match"] = class_match_rate(fake_logits, labels)
    out["settings"] = {
        "kid_subsets": kid_subsets,
        "kid_subset_size": int(min(kid_subset_size, len(real_f), len(fake_f))),
        "is_splits": splits,
        "nearest_k": nearest_k,
        "prdc_max": prdc_max,
        "seed": seed,
    }
    out["seconds"] = time.perf_counter() - t0
    return out


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of a result dict from :func:`evaluate_images` (names the extractor)."""
    fe = result.get("feature_extractor", {})
    acc = fe.get("test_accuracy")
    head = f"features: {fe.get('name', '?')}"
    if fe.get("path"):
        head += f" ({fe['path']})"
    if acc is not None:
        head += f", test accuracy {acc:.4f}"
    head += f", {fe.get('num_features', '?')}-d"
    rows = [
        ("samples", f"{result.get('num_samples')}"),
        ("reference", f"{result.get('reference')} ({result.get('num_reference')})"),
    ]
    fmt = {
        "fid": "{:.4f}",
        "kid_mean": "{:.6f}",
        "kid_std": "{:.6f}",
        "is_mean": "{:.4f}",
        "is_std": "{:.4f}",
        "precision": "{:.4f}",
        "recall": "{:.4f}",
        "density": "{:.4f}",
        "coverage": "{:.4f}",
        "class_match": "{:.4f}",
    }
    for k in METRIC_KEYS:
        if k in result:
            rows.append((k, fmt[k].format(result[k])))
    w = max(len(k) for k, _ in rows)
    return "\n".join([head] + [f"  {k:<{w}}  {v}" for k, v in rows])
