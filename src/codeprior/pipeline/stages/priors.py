"""Stage ``priors``: extract every configured prior from the tokenizer's codebook (same k) and measure them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from codeprior.codebook import load_codebook
from codeprior.pipeline.config import PipelineConfig
from codeprior.pipeline.engine import StageContext
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.stages.tokenizer import checkpoint_of
from codeprior.pipeline.validation import check_k
from codeprior.priors.extract import extract
from codeprior.priors.quality import prior_quality, quality_row
from codeprior.utils.io import write_json_atomic

__all__ = ["FILES", "PriorsOutputs", "run", "prior_k"]


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


def run(cfg: PipelineConfig, ctx: StageContext) -> PriorsOutputs:
    """Extract, save and measure each prior of ``priors.methods``."""
    vq_path = str(checkpoint_of(ctx))
    cb = load_codebook(vq_path)
    k = prior_k(cfg, int(cb.shape[0]), vq_path)
    priors, files = {}, {}
    for method in cfg.priors.methods:
        out = ctx.dir / FILES.prior(method)
        p = extract(cb, method, k, normalize=cfg.priors.normalize, seed=cfg.seed, source=vq_path)
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
