"""Geometric quality of a prior: cluster sizes, compactness, separation, and neighbour agreement.

:func:`prior_quality` computes, on the geometry the prior was extracted on (L2-normalised or raw rows,
from the prior's metadata unless overridden):

* cluster-size statistics: min / median / max / mean, singleton share (of clusters and of codes), and a
  histogram over power-of-two bins (1, 2, 3-4, 5-8, ...);
* ``intra_mean_pairwise``: mean Euclidean distance over all pairs of codes that share a cluster
  (pair-weighted; ``None`` when every cluster is a singleton);
* ``nearest_other_mean``: mean over codes of the distance to the nearest code in *another* cluster
  (``None`` when k = 1);
* ``nn_same_cluster_share``: share of codes whose nearest neighbour (itself excluded) is in the same cluster.

Everything comes out of one exact pass over the N x N distances in row chunks (float64 torch matmul,
~32 MB per chunk), so N = 16384 takes a second or two and little memory. :func:`format_table` lays out
one or more results side by side (used by ``codeprior prior inspect`` and the report).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from codeprior.priors.prior import Prior
from codeprior.utils.progress import progress as progress_bar

_CHUNK_ELEMENTS = 1 << 22  # rows per chunk * N distances held at once (32 MB in float64)


def same_partition(a: Any, b: Any) -> bool:
    """Whether two label arrays describe the same partition up to renaming (the pairs (a_i, b_i) are a bijection)."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    pairs = np.unique(np.stack([a, b], 1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def size_histogram(sizes: np.ndarray) -> list[tuple[str, int]]:
    """Counts of clusters per size bin: ``1``, ``2``, ``3-4``, ``5-8``, ... up to the largest cluster."""
    sizes = np.asarray(sizes)
    out: list[tuple[str, int]] = [("1", int((sizes == 1).sum()))]
    lo, hi = 2, 2
    mx = int(sizes.max()) if sizes.size else 1
    while lo <= mx:
        label = str(lo) if lo == hi else f"{lo}-{hi}"
        out.append((label, int(((sizes >= lo) & (sizes <= hi)).sum())))
        lo, hi = hi + 1, hi * 2
    return out


def _geometry(codebook: torch.Tensor, normalize: bool) -> torch.Tensor:
    X = codebook.detach().to("cpu", torch.float64)
    if normalize:
        X = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return X.contiguous()


def prior_quality(
    prior: Prior, codebook: torch.Tensor, normalize: bool | None = None, progress: bool = False
) -> dict[str, Any]:
    """Quality metrics of ``prior`` on ``codebook`` (see module docstring); a JSON-serialisable dict."""
    if codebook.shape[0] != prior.num_codes:
        from codeprior.errors import CodepriorError

        raise CodepriorError(f"prior: covers {prior.num_codes} codes but the codebook has {codebook.shape[0]}")
    if normalize is None:
        normalize = bool(prior.metadata.get("normalize", True))
    X = _geometry(codebook, normalize)
    lab = prior.token_to_cluster
    n, k = prior.num_codes, prior.k
    sizes = prior.cluster_sizes().numpy()

    x2 = (X * X).sum(1)
    intra_sum = 0.0
    nearest_other = torch.empty(n, dtype=torch.float64)
    nn_same = torch.zeros(n, dtype=torch.bool)
    chunk = max(1, min(n, _CHUNK_ELEMENTS // max(n, 1)))
    starts = range(0, n, chunk)
    for i0 in progress_bar(starts, desc="quality", unit="chunk", disable=None if progress else True):
        i1 = min(n, i0 + chunk)
        d = torch.addmm(x2[i0:i1, None] + x2[None, :], X[i0:i1], X.T, alpha=-2.0).clamp_min_(0).sqrt_()
        rows = torch.arange(i1 - i0)
        d[rows, rows + i0] = 0.0  # exact zero on the diagonal (matmul round-off)
        same = lab[i0:i1, None] == lab[None, :]
        intra_sum += float((d * same).sum())  # ordered pairs; the diagonal adds 0
        if k > 1:
            nearest_other[i0:i1] = d.masked_fill(same, math.inf).min(1).values
        if n > 1:
            d[rows, rows + i0] = math.inf
            nn = d.argmin(1)
            nn_same[i0:i1] = same[rows, nn]
    ordered_pairs = float((sizes.astype(np.float64) * (sizes - 1)).sum())
    hist = size_histogram(sizes)
    singletons = int((sizes == 1).sum())
    return {
        "method": prior.metadata.get("method"),
        "k": k,
        "num_codes": n,
        "normalize": bool(normalize),
        "sizes": {
            "min": int(sizes.min()),
            "median": float(np.median(sizes)),
            "max": int(sizes.max()),
            "mean": float(sizes.mean()),
            "singleton_clusters": singletons,
            "singleton_cluster_share": singletons / k,
            "singleton_code_share": singletons / n,
            "histogram": [{"bin": b, "clusters": c} for b, c in hist],
        },
        "intra_mean_pairwise": intra_sum / ordered_pairs if ordered_pairs > 0 else None,
        "nearest_other_mean": float(nearest_other.mean()) if k > 1 else None,
        "nn_same_cluster_share": float(nn_same.float().mean()) if n > 1 else None,
    }


def quality_row(q: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """Flatten a :func:`prior_quality` result into one table column (labelled metrics, in display order)."""
    s = q["sizes"]
    row: dict[str, Any] = {
        "name": name if name is not None else (q.get("method") or "prior"),
        "method": q.get("method") or "-",
        "codes": q["num_codes"],
        "clusters (k)": q["k"],
        "geometry": "L2-normalised" if q["normalize"] else "raw",
        "size min": s["min"],
        "size median": s["median"],
        "size max": s["max"],
        "size mean": s["mean"],
        "singleton clusters %": 100.0 * s["singleton_cluster_share"],
        "codes in singletons %": 100.0 * s["singleton_code_share"],
        "intra-cluster mean pair dist": q["intra_mean_pairwise"],
        "mean dist to nearest other-cluster code": q["nearest_other_mean"],
        "nearest neighbour in same cluster %": (
            None if q["nn_same_cluster_share"] is None else 100.0 * q["nn_same_cluster_share"]
        ),
    }
    for h in s["histogram"]:
        row[f"clusters of size {h['bin']}"] = h["clusters"]
    return row


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if v == int(v) and abs(v) < 1e9:
            return str(int(v))
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.4g}"
    return str(v)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = v
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table with one column per row dict (``name`` heads the column) and one line per metric.

    Metrics appear in order of first appearance across the rows; a metric a row lacks shows as ``-``
    (histogram bins a prior does not reach show as ``0``). Nested dicts are flattened with dots. Raw
    :func:`prior_quality` dicts are turned into table columns with :func:`quality_row` first.
    """
    if not rows:
        return ""
    cols = [quality_row(r) if "sizes" in r and isinstance(r.get("sizes"), dict) else _flatten(r) for r in rows]
    names = [str(c.get("name", f"prior {i + 1}")) for i, c in enumerate(cols)]
    metrics: list[str] = []
    for c in cols:
        for key in c:
            if key != "name" and key not in metrics:
                metrics.append(key)
    # keep histogram bins together, in numeric order, at the end
    bins = [m for m in metrics if m.startswith("clusters of size ")]
    if bins:
        bins.sort(key=lambda m: int(m.rsplit(" ", 1)[1].split("-")[0]))
        metrics = [m for m in metrics if m not in bins] + bins
    body = [["metric", *names]]
    for m in metrics:
        default = 0 if m.startswith("clusters of size ") else None
        body.append([m, *(_fmt(c.get(m, default)) for c in cols)])
    widths = [max(len(r[i]) for r in body) for i in range(len(body[0]))]
    lines = []
    for j, r in enumerate(body):
        cells = [r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:])]
        lines.append("| " + " | ".join(cells) + " |")
        if j == 0:
            lines.append("|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|")
    return "\n".join(lines)
