"""Tokenizer evaluation: how much a VQ round trip (encode -> codes -> decode) costs.

Reports reconstruction FID (reconstructions vs the originals, classifier features), pixel MSE and PSNR
(on the [0, 1] scale; PSNR averaged over images), the classifier's accuracy on originals and on
reconstructions (and how often the two predictions agree), and codebook usage.

Images travel as uint8 everywhere outside the tokenizer (the same quantisation samples go through),
and the tokenizer sees floats in [-1, 1] as the API contract says.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from codeprior.errors import CodepriorError
from codeprior.evaluate.classifier import images_to_float
from codeprior.evaluate.features import FeatureExtractor
from codeprior.evaluate.metrics import fid_from_features
from codeprior.utils.progress import progress


def to_vq_input(images: np.ndarray | torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """uint8 images (any layout :func:`images_to_float` accepts) -> float [N, C, H, W] in [-1, 1]."""
    return images_to_float(images, channels) * 2.0 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] (clamped) -> uint8 [N, C, H, W], rounding like the sample writer."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _vq_device(vq: Any) -> torch.device:
    """The device of ``vq``'s weights (CPU for a stand-in without parameters): batches go there, results come back
    to the CPU, where the images and the features are."""
    params = getattr(vq, "parameters", None)
    p = next(iter(params()), None) if callable(params) else None
    return p.device if p is not None else torch.device("cpu")


def _vq_channels(vq: Any) -> int | None:
    cfg = getattr(vq, "config", None)
    return getattr(cfg, "in_channels", None)


@torch.no_grad()
def encode_images(
    vq: Any, images: np.ndarray | torch.Tensor, batch_size: int = 256, desc: str | None = None
) -> torch.Tensor:
    """uint8 images -> code indices LongTensor [N, h, w] (``vq.encode_codes`` in batches)."""
    x, dev = to_vq_input(images, _vq_channels(vq)), _vq_device(vq)
    out = [
        vq.encode_codes(x[i : i + batch_size].to(dev)).long().cpu()
        for i in progress(range(0, len(x), batch_size), desc=desc or "encode", disable=None if desc else True)
    ]
    if not out:
        raise CodepriorError("images: nothing to encode (0 images)")
    return torch.cat(out)


@torch.no_grad()
def decode_codes(vq: Any, codes: torch.Tensor, batch_size: int = 256, desc: str | None = None) -> torch.Tensor:
    """Codes [N, h, w] -> float images [N, C, H, W] clamped to [-1, 1] (``vq.decode_codes`` in batches)."""
    dev = _vq_device(vq)
    out = [
        vq.decode_codes(codes[i : i + batch_size].to(dev)).float().clamp(-1, 1).cpu()
        for i in progress(range(0, len(codes), batch_size), desc=desc or "decode", disable=None if desc else True)
    ]
    return torch.cat(out)


def per_image_mse_psnr(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image MSE and PSNR (dB, peak 1), both on the [0, 1] pixel scale, of two float image sets in [-1, 1]:
    codeprior's one definition of a tokenizer's MSE / PSNR (PSNR is averaged over images, not taken of the mean
    MSE)."""
    a01, b01 = (a.float() + 1) / 2, (b.float() + 1) / 2
    per_image = (a01 - b01).pow(2).flatten(1).mean(1)
    return per_image, 10 * torch.log10(1.0 / per_image.clamp_min(1e-10))


def mse_psnr(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean squared error and mean per-image PSNR (:func:`per_image_mse_psnr`) of two float image sets in [-1, 1]."""
    per_image, psnr = per_image_mse_psnr(a, b)
    return float(per_image.mean()), float(psnr.mean())


def round_trip(
    vq: Any, images: np.ndarray | torch.Tensor, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 ``images`` through ``vq`` and back: the inputs (float [N, C, H, W] in [-1, 1]), the codes [N, h, w] and
    the reconstructions (clamped to [-1, 1]), on the CPU."""
    vq.eval()
    x = to_vq_input(images, _vq_channels(vq))
    codes = encode_images(vq, images, batch_size, desc="encode")
    recon = decode_codes(vq, codes, batch_size, desc="decode")
    if recon.shape != x.shape:
        raise CodepriorError(
            f"tokenizer: reconstructions have shape {tuple(recon.shape[1:])}, inputs {tuple(x.shape[1:])}"
        )
    return x, codes, recon


def feature_metrics(
    images: np.ndarray | torch.Tensor,
    recon: torch.Tensor,
    labels: np.ndarray | torch.Tensor | None,
    extractor: FeatureExtractor,
) -> dict[str, Any]:
    """What the classifier sees of a round trip: ``feature_extractor``, ``rfid`` (reconstructions vs originals),
    ``prediction_agreement`` and, with ``labels``, ``accuracy_originals`` / ``accuracy_reconstructions``."""
    f_orig, lg_orig = extractor.extract(images, desc="features (originals)")
    f_rec, lg_rec = extractor.extract(to_uint8(recon), desc="features (reconstructions)")
    out: dict[str, Any] = {
        "feature_extractor": extractor.describe(),
        "rfid": fid_from_features(f_orig, f_rec),
        "prediction_agreement": float((lg_orig.argmax(1) == lg_rec.argmax(1)).float().mean()),
    }
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels)).long()
        out["accuracy_originals"] = float((lg_orig.argmax(1) == y).float().mean())
        out["accuracy_reconstructions"] = float((lg_rec.argmax(1) == y).float().mean())
    return out


def evaluate_tokenizer(
    vq: Any,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor | None,
    extractor: FeatureExtractor,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Round-trip ``images`` (uint8) through ``vq`` and measure what is lost (see module docstring)."""
    t0 = time.perf_counter()
    x, codes, recon = round_trip(vq, images, batch_size)
    mse, psnr = mse_psnr(recon, x)
    feats = feature_metrics(images, recon, labels, extractor)
    out: dict[str, Any] = {
        "feature_extractor": feats.pop("feature_extractor"),
        "num_images": int(len(x)),
        "grid": list(codes.shape[1:]),
        "rfid": feats.pop("rfid"),
        "mse": mse,
        "psnr": psnr,
        "codes_used": int(codes.unique().numel()),
        "prediction_agreement": feats.pop("prediction_agreement"),
    }
    codebook_size = getattr(getattr(vq, "config", None), "codebook_size", None)
    if codebook_size:
        out["codebook_size"] = int(codebook_size)
        out["codebook_usage"] = out["codes_used"] / int(codebook_size)
    out.update(feats)  # the accuracies, with labels
    out["seconds"] = time.perf_counter() - t0
    return out


def format_tokenizer_table(result: dict[str, Any]) -> str:
    fe = result["feature_extractor"]
    acc = fe.get("test_accuracy")
    head = f"features: {fe['name']}" + (f", test accuracy {acc:.4f}" if acc is not None else "")
    keys = [
        ("num_images", "{}"),
        ("rfid", "{:.4f}"),
        ("mse", "{:.6f}"),
        ("psnr", "{:.3f}"),
        ("accuracy_originals", "{:.4f}"),
        ("accuracy_reconstructions", "{:.4f}"),
        ("prediction_agreement", "{:.4f}"),
        ("codes_used", "{}"),
        ("codebook_usage", "{:.4f}"),
    ]
    rows = [(k, f.format(result[k])) for k, f in keys if k in result]
    w = max(len(k) for k, _ in rows)
    return "\n".join([head] + [f"  {k:<{w}}  {v}" for k, v in rows])
