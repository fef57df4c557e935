"""Prior substitution test: is a cluster of codes interchangeable for the decoder?

Encode real images, replace every code by a uniformly random member of its cluster, decode, and
measure how far the result moves from the untouched reconstructions (FID on classifier features and
pixel MSE), averaged over several draws (mean and std). A prior whose clusters group codes the decoder
treats alike scores low; this compares k-means / DCPE / balanced priors before any AR training (the
coarse-to-fine argument made numeric). Also reported: FID of the substituted images against the
originals, and the share of codes that actually changed (singleton clusters never change).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from codeprior.errors import CodepriorError
from codeprior.evaluate.features import FeatureExtractor
from codeprior.evaluate.metrics import fid_from_features
from codeprior.evaluate.tokenizer_eval import decode_codes, encode_images, mse_psnr, to_uint8, to_vq_input


class ClusterSampler:
    """Draw a uniformly random member of each code's cluster, vectorised over any code tensor."""

    def __init__(self, token_to_cluster: torch.Tensor) -> None:
        t2c = torch.as_tensor(token_to_cluster).long().view(-1)
        if t2c.numel() == 0 or int(t2c.min()) < 0:
            raise CodepriorError("prior: token_to_cluster must be non-empty with non-negative cluster ids")
        self.token_to_cluster = t2c
        k = int(t2c.max()) + 1
        # codes sorted by cluster; cluster c's members are order[start[c] : start[c] + size[c]]
        self.order = torch.argsort(t2c, stable=True)
        self.size = torch.bincount(t2c, minlength=k)
        self.start = torch.cumsum(self.size, 0) - self.size

    def __call__(self, codes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        codes = codes.long()
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.token_to_cluster.numel()):
            raise CodepriorError(f"codes: values must lie in [0, {self.token_to_cluster.numel()}) for this prior")
        cl = self.token_to_cluster[codes]
        u = torch.rand(codes.shape, generator=generator, dtype=torch.float64)
        offset = (u * self.size[cl]).long().clamp_max(self.size[cl] - 1)
        return self.order[self.start[cl] + offset]


def substitute_codes(
    codes: torch.Tensor, token_to_cluster: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace every code by a uniformly random member of its cluster (itself included)."""
    return ClusterSampler(token_to_cluster)(codes, generator)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(statistics.fmean(values)), float(statistics.stdev(values)) if len(values) > 1 else 0.0


@dataclass
class SubstitutionReference:
    """What the substitution test needs besides the prior: the images' codes, their reconstructions and the
    features of originals and reconstructions. Computed once by :func:`substitution_reference` and shared
    by every prior tested on the same tokenizer, images and feature extractor."""

    images: np.ndarray | torch.Tensor
    codes: torch.Tensor
    recon: torch.Tensor
    f_orig: torch.Tensor
    f_rec: torch.Tensor


def substitution_reference(
    vq: Any, images: np.ndarray | torch.Tensor, extractor: FeatureExtractor, *, batch_size: int = 256
) -> SubstitutionReference:
    """Encode, decode and featurise ``images`` once (the part of the test that does not depend on the prior)."""
    vq.eval()
    codes = encode_images(vq, images, batch_size, desc="encode")
    recon = decode_codes(vq, codes, batch_size, desc="decode")
    f_orig, _ = extractor.extract(images, desc="features (originals)")
    f_rec, _ = extractor.extract(to_uint8(recon), desc="features (reconstructions)")
    return SubstitutionReference(images, codes, recon, f_orig, f_rec)


def substitution_test(
    vq: Any,
    token_to_cluster: torch.Tensor,
    images: np.ndarray | torch.Tensor,
    extractor: FeatureExtractor,
    *,
    draws: int = 5,
    seed: int = 0,
    batch_size: int = 256,
    reference: SubstitutionReference | None = None,
) -> dict[str, Any]:
    """Run the substitution test on uint8 ``images``; returns per-draw numbers and their mean / std.

    Keys: ``fid_vs_recon`` / ``mse_vs_recon`` / ``psnr_vs_recon`` (substituted vs untouched
    reconstructions, the headline numbers), ``fid_vs_originals``, ``changed_share``, each as
    ``{"mean", "std", "draws": [...]}``; plus ``baseline_rfid`` (untouched reconstructions vs originals)
    and the prior's cluster count / singleton share. ``reference`` (from :func:`substitution_reference` on the
    same ``vq``, ``images`` and ``extractor``) skips recomputing the prior-independent part when several
    priors are tested.
    """
    if draws < 1:
        raise CodepriorError(f"--draws: must be >= 1, got {draws}")
    t0 = time.perf_counter()
    vq.eval()
    sampler = ClusterSampler(token_to_cluster)
    codebook_size = getattr(getattr(vq, "config", None), "codebook_size", None)
    if codebook_size is not None and int(codebook_size) != sampler.token_to_cluster.numel():
        raise CodepriorError(
            f"prior: covers {sampler.token_to_cluster.numel()} codes but the tokenizer's codebook has {codebook_size}"
        )
    if reference is None:
        reference = substitution_reference(vq, images, extractor, batch_size=batch_size)
    elif reference.images is not images or len(reference.codes) != len(images):
        raise CodepriorError("substitution_test: the reference was computed for other images")
    codes, recon, f_orig, f_rec = reference.codes, reference.recon, reference.f_orig, reference.f_rec
    gen = torch.Generator().manual_seed(seed)
    per: dict[str, list[float]] = {
        k: [] for k in ("fid_vs_recon", "mse_vs_recon", "psnr_vs_recon", "fid_vs_originals", "changed_share")
    }
    for d in range(draws):
        sub = sampler(codes, gen)
        img = decode_codes(vq, sub, batch_size, desc=f"decode draw {d + 1}/{draws}")
        f_sub, _ = extractor.extract(to_uint8(img), desc=f"features draw {d + 1}/{draws}")
        mse, psnr = mse_psnr(img, recon)
        per["fid_vs_recon"].append(fid_from_features(f_rec, f_sub))
        per["fid_vs_originals"].append(fid_from_features(f_orig, f_sub))
        per["mse_vs_recon"].append(mse)
        per["psnr_vs_recon"].append(psnr)
        per["changed_share"].append(float((sub != codes).float().mean()))
    sizes = sampler.size
    out: dict[str, Any] = {
        "feature_extractor": extractor.describe(),
        "num_images": int(len(codes)),
        "draws": draws,
        "seed": seed,
        "k": int(sizes.numel()),
        "num_codes": int(sampler.token_to_cluster.numel()),
        "singleton_share": float((sizes == 1).float().mean()),
        "baseline_rfid": fid_from_features(f_orig, f_rec),
        "baseline_mse": mse_psnr(recon, to_vq_input(images, recon.shape[1]))[0],
    }
    for key, vals in per.items():
        m, s = _mean_std(vals)
        out[key] = {"mean": m, "std": s, "draws": vals}
    out["seconds"] = time.perf_counter() - t0
    return out


def format_substitution_table(results: list[tuple[str, dict[str, Any]]]) -> str:
    """Side-by-side table of several priors' substitution results (``(name, result)`` pairs)."""
    fe = results[0][1]["feature_extractor"]
    acc = fe.get("test_accuracy")
    head = f"features: {fe['name']}" + (f", test accuracy {acc:.4f}" if acc is not None else "")
    head += f"; {results[0][1]['num_images']} images, {results[0][1]['draws']} draws (mean ± std)"
    cols = ["prior", "k", "FID vs recon", "MSE vs recon", "PSNR vs recon", "FID vs orig", "changed"]
    rows = []
    for name, r in results:
        rows.append(
            [
                name,
                str(r["k"]),
                f"{r['fid_vs_recon']['mean']:.3f} ± {r['fid_vs_recon']['std']:.3f}",
                f"{r['mse_vs_recon']['mean']:.5f} ± {r['mse_vs_recon']['std']:.5f}",
                f"{r['psnr_vs_recon']['mean']:.2f}",
                f"{r['fid_vs_originals']['mean']:.3f}",
                f"{r['changed_share']['mean']:.3f}",
            ]
        )
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = [head, "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    lines.append(
        f"baseline (untouched reconstructions vs originals): rFID {results[0][1]['baseline_rfid']:.3f}, "
        f"MSE {results[0][1]['baseline_mse']:.5f}"
    )
    return "\n".join(lines)
