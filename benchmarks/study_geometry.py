"""Geometry of the prior study (benchmarks/prior_study.py): the codebook's density disparity, raw-vs-normalised
partition agreement (adjusted Rand index) and, per rate and prior, the quality row and the substitution test.

Cheap next to the training runs (seconds per prior on the demo's 4096 x 8 codebook); every result is cached in the
study folder (``agreement.json``, ``geometry.json``) so a rerun computes only what is missing.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import convergence_runs as R


def folder_of(rate: int, normalize: bool = True) -> str:
    return f"rate-{rate}" + ("" if normalize else "-raw")


def density_disparity(codebook: Any, normalize: bool = True, k: int = 5) -> dict[str, float]:
    """Spread of each code's distance to its k-th nearest other code: how unevenly the codes fill their space.

    A uniform codebook has every code at a similar k-NN distance (CV near 0, p90/p10 near 1); dense cores with
    sparse outskirts give a large CV. Returned: ``cv``, ``p90_p10``, ``median``, ``k``."""
    import numpy as np
    import torch

    from codeprior.priors.extract import geometry

    X = torch.from_numpy(geometry(torch.as_tensor(codebook), normalize))
    n = X.shape[0]
    kk = min(k, n - 1)
    kth = torch.empty(n, dtype=torch.float64)
    x2 = (X * X).sum(1)
    for i0 in range(0, n, 512):
        i1 = min(n, i0 + 512)
        d = torch.addmm(x2[i0:i1, None] + x2[None, :], X[i0:i1], X.T, alpha=-2.0).clamp_min_(0).sqrt_()
        d[torch.arange(i1 - i0), torch.arange(i0, i1)] = float("inf")
        kth[i0:i1] = d.kthvalue(kk, dim=1).values
    v = kth.numpy()
    p10, p90 = np.percentile(v, [10, 90])
    return {
        "k": kk,
        "median": float(np.median(v)),
        "cv": float(v.std() / v.mean()) if v.mean() > 0 else 0.0,
        "p90_p10": float(p90 / p10) if p10 > 0 else float("inf"),
    }


def partition_agreement(out: Path, vq: str, rates: Sequence[int], methods: Sequence[str], num_codes: int) -> dict:
    """Adjusted Rand index between raw-row and L2-normalised partitions per method and rate (``agreement.json``;
    the priors are extracted into each rate's folders); ``raw_rate``: the rate with the lowest mean ARI."""
    from sklearn.metrics import adjusted_rand_score

    from codeprior.priors.prior import load_prior

    path = out / "agreement.json"
    if path.is_file():
        return json.loads(path.read_text())
    ari: dict[str, dict[str, float]] = {}
    for rate in rates:
        k = num_codes // rate
        a = R.extract_priors(vq, out / folder_of(rate) / "priors", k, methods, progress=False)
        r = R.extract_priors(vq, out / folder_of(rate, False) / "priors", k, methods, progress=False, normalize=False)
        ari[str(rate)] = {
            m: float(
                adjusted_rand_score(
                    load_prior(a[m]["path"]).token_to_cluster.numpy(), load_prior(r[m]["path"]).token_to_cluster.numpy()
                )
            )
            for m in methods
        }
    raw_rate = min(rates, key=lambda q: (statistics.fmean(ari[str(q)].values()), q))
    res = {"ari": ari, "methods": list(methods), "raw_rate": int(raw_rate)}
    from codeprior.utils.io import write_json_atomic

    write_json_atomic(path, res)
    return res


def geometry_table(
    out: Path, inputs: dict[str, Any], b: dict[str, Any], cells: Sequence[dict], compute: bool = True, log: Any = print
) -> dict:
    """Per (rate, method, geometry): quality row, substitution FID and the codebook's density disparity, cached in
    ``geometry.json`` one entry at a time (a rerun computes only what is missing; ``compute=False`` only reads)."""
    import torch

    from codeprior.codebook import load_codebook
    from codeprior.evaluate.classifier import load_split
    from codeprior.evaluate.metrics import make_extractor
    from codeprior.evaluate.substitution import substitution_reference, substitution_test
    from codeprior.models import load_vq
    from codeprior.priors.prior import load_prior
    from codeprior.priors.quality import prior_quality, quality_row
    from codeprior.utils.io import write_json_atomic

    path = out / "geometry.json"
    geo = json.loads(path.read_text()) if path.is_file() else {"density": {}, "priors": {}}
    if not compute:
        return geo
    cb = load_codebook(inputs["vq"])
    for norm in (True, False):
        geo["density"].setdefault("normalised" if norm else "raw", density_disparity(cb, norm))
    todo = sorted({(c["rate"], c["prior"], c["normalize"]) for c in cells if c["prior"]}, key=str)
    todo = [t for t in todo if f"{folder_of(t[0], t[2])}/{t[1]}" not in geo["priors"]]
    if todo:
        vq = load_vq(inputs["vq"])
        images, _ = load_split("fashion-mnist", "test", inputs.get("data_dir"))
        images = images[: b["sub_images"]]
        ext = make_extractor("classifier", data_dir=inputs.get("data_dir"), classifier=inputs["classifier"])
        with torch.no_grad():
            ref = substitution_reference(vq, images, ext)
            for rate, m, norm in todo:
                folder = folder_of(rate, norm)
                info = R.extract_priors(
                    inputs["vq"], out / folder / "priors", len(cb) // rate, [m], progress=False, normalize=norm
                )
                prior = load_prior(info[m]["path"], codebook=cb)
                log(f"prior_study: geometry of {folder}/{m}")
                sub = substitution_test(vq, prior.token_to_cluster, images, ext, draws=b["sub_draws"], reference=ref)
                q = quality_row(prior_quality(prior, cb), m)
                geo["priors"][f"{folder}/{m}"] = {
                    "rate": rate,
                    "method": m,
                    "normalize": norm,
                    "quality": q,
                    "substitution": {k: sub[k] for k in ("fid_vs_recon", "mse_vs_recon", "changed_share")},
                    "baseline_rfid": sub["baseline_rfid"],
                }
                write_json_atomic(path, geo)
    write_json_atomic(path, geo)
    return geo
