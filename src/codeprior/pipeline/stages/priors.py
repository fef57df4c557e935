"""Stage ``priors``: extract every configured prior from the tokenizer's codebook (same k) and measure them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from codeprior.codebook import load_codebook
from codeprior.errors import CodepriorError
from codeprior.pipeline.config import PRIOR_METHODS, PipelineConfig
from codeprior.pipeline.engine import StageContext
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.registry import StageDef, outputs_of
from codeprior.pipeline.stages.tokenizer import checkpoint_of
from codeprior.pipeline.validation import LEVEL_METHODS, check_k
from codeprior.priors.extract import extract
from codeprior.priors.prior import Prior
from codeprior.priors.quality import prior_quality, quality_row
from codeprior.report import Doc, ReportSection, read_json, scalar_keys
from codeprior.report_figures import size_hist
from codeprior.utils.io import write_json_atomic

if TYPE_CHECKING:
    import torch

__all__ = ["STAGE", "FILES", "PriorsOutputs", "run", "prior_k"]


class FILES:
    """What the stage writes in ``RUN/priors/``."""

    quality = "quality.json"  # {"k", "normalize", "priors": {method: quality}, "rows": {method: table row}}
    sizes = "sizes.json"  # {method: [cluster sizes]}

    @staticmethod
    def prior(method: str) -> str:
        """The prior file of ``method``."""
        return f"{method}.safetensors"


@dataclass(frozen=True)
class PriorsOutputs(StageOutputs):
    """The extracted priors (one file per method) and a summary of their quality."""

    k: int
    num_codes: int
    files: dict[str, Path]  # method -> prior file
    summary: dict[str, dict]  # method -> singleton share, max size, nearest-neighbour share, seconds


def prior_k(cfg: PipelineConfig, num_codes: int, tokenizer: str = "the tokenizer") -> int:
    """Clusters per prior: ``priors.k``, or the codebook size over ``priors.compression_rate``; refused when it
    exceeds the codebook (the config check does this before any work for a tokenizer trained here)."""
    return check_k(cfg, num_codes, "priors", tokenizer)


def with_levels(p: Prior, cb: torch.Tensor, cfg: PipelineConfig, vq_path: str) -> Prior:
    """``p`` with the coarser levels of ``priors.levels`` (compression rates of the codebook size) nested under it."""
    import torch

    from codeprior.codebook import k_from_compression_rate
    from codeprior.priors.extract import coarser_levels

    n = int(cb.shape[0])
    ks = [int(k_from_compression_rate(n, r, name=f"{vq_path}: priors.levels")) for r in cfg.priors.levels or []]
    if any(b >= a for a, b in zip([p.k, *ks], ks)):
        raise CodepriorError(f"{vq_path}: priors.levels {cfg.priors.levels}: levels of {ks} clusters under k={p.k}")
    method = str(p.metadata["method"])
    coarser = coarser_levels(
        cb.numpy(),
        method,
        p.token_to_cluster.numpy(),
        ks,
        normalize=cfg.priors.normalize,
        seed=cfg.seed,
        source=vq_path,
    )
    meta = dict(p.metadata, rates=[cfg.priors.compression_rate, *(cfg.priors.levels or [])])
    return Prior(p.token_to_cluster, meta, [torch.from_numpy(c) for c in coarser])


def run(cfg: PipelineConfig, ctx: StageContext) -> PriorsOutputs:
    """Extract, save and measure each prior of ``priors.methods``."""
    vq_path = str(checkpoint_of(ctx))
    cb = load_codebook(vq_path)
    k = prior_k(cfg, int(cb.shape[0]), vq_path)
    priors, files = {}, {}
    for method in cfg.priors.methods:
        out = ctx.dir / FILES.prior(method)
        p = extract(cb, method, k, normalize=cfg.priors.normalize, seed=cfg.seed, source=vq_path)
        if cfg.priors.levels and method in LEVEL_METHODS:
            p = with_levels(p, cb, cfg, vq_path)
        p.save(out)
        priors[method] = p
        files[method] = out.resolve()
    quality = {m: prior_quality(p, cb, normalize=cfg.priors.normalize) for m, p in priors.items()}
    rows = {m: quality_row(q, name=m) for m, q in quality.items()}
    write_json_atomic(
        ctx.dir / FILES.quality, {"k": k, "normalize": cfg.priors.normalize, "priors": quality, "rows": rows}
    )
    write_json_atomic(ctx.dir / FILES.sizes, {m: p.cluster_sizes().tolist() for m, p in priors.items()})
    summary = {
        m: {
            "singleton_cluster_share": q["sizes"]["singleton_cluster_share"],
            "max_size": q["sizes"]["max"],
            "nn_same_cluster_share": q["nn_same_cluster_share"],
            "seconds": priors[m].metadata.get("seconds"),
        }
        for m, q in quality.items()
    }
    return PriorsOutputs(k=k, num_codes=int(cb.shape[0]), files=files, summary=summary)


def report_priors(doc: Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    """The report's priors section: each partition's geometry and cluster sizes."""
    if not doc.section("Codebook priors", "priors", manifests.get("priors")):
        return
    quality = read_json(run_dir / "priors" / FILES.quality) or {}
    rows_by_method: dict[str, dict] = quality.get("rows", {}) if isinstance(quality, dict) else {}
    if rows_by_method:  # one column per prior, one line per metric (the layout of `codeprior prior inspect`)
        keys = scalar_keys(rows_by_method.values(), skip=("name",))
        doc.table(
            ["metric"] + list(rows_by_method),
            [
                [k] + [row.get(k, 0 if k.startswith("clusters of size") else None) for row in rows_by_method.values()]
                for k in keys
            ],
        )
    doc.p(
        "Geometry of each partition of the tokenizer's codebook (same k for every method): cluster sizes, mean "
        "intra-cluster distance, distance to the nearest code of another cluster, and the share of codes whose "
        "nearest neighbour lies in their own cluster."
    )
    sizes = read_json(run_dir / "priors" / FILES.sizes) or {}
    if sizes:
        doc.image(size_hist(sizes, doc.fig_dir / "cluster_sizes.png"), "Cluster-size histograms (log count)")


STAGE = StageDef(
    "priors",
    run=lambda b, ctx, _: run(b.cfg, ctx),
    config=lambda b, _: {**b.slices["priors"], **b.seed},
    deps=("tokenizer",),
    description=lambda b, _: f"extract {', '.join(b.cfg.priors.methods)} priors (same k) and their quality",
    outputs=lambda: outputs_of(FILES, *(FILES.prior(m) for m in PRIOR_METHODS)),  # the methods registered now
    report=(ReportSection(50, report_priors),),
)
