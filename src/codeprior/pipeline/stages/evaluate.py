"""Stage ``evaluate``: FID / KID / IS / PRDC / class match of every run's samples against the reference."""

from __future__ import annotations

from dataclasses import dataclass

from codeprior.evaluate import evaluate_images, load_samples_npz
from codeprior.pipeline.config import PipelineConfig
from codeprior.pipeline.engine import StageContext
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.registry import Build, StageDef, outputs_of
from codeprior.pipeline.stages.classifier import ClassifierOutputs
from codeprior.pipeline.stages.common import describe_features, extractor, reference
from codeprior.pipeline.stages.sample import SampleOutputs
from codeprior.pipeline.stages.train import variant_runs
from codeprior.utils.io import write_json_atomic
from codeprior.verdict import summarize

__all__ = ["STAGE", "FILES", "EvaluateOutputs", "run"]


class FILES:
    """What the stage writes in ``RUN/evaluate/``."""

    metrics = "metrics.json"  # feature extractor, reference, "rows" (one per run), "summary" (per variant), results


@dataclass(frozen=True)
class EvaluateOutputs(StageOutputs):
    """One metrics row per run, and the features they were measured on."""

    rows: list[dict]
    feature_extractor: str
    feature_accuracy: float | None


def run(cfg: PipelineConfig, ctx: StageContext, device: str) -> EvaluateOutputs:
    """Measure the samples of every run on the classifier stage's features."""
    cm = ClassifierOutputs.from_manifest(ctx.upstream["classifier"])
    ext = extractor(cfg, cm.checkpoint)
    ref, ref_name = reference(cfg)
    rows, full = [], {}
    for v, run_name, seed in variant_runs(cfg):
        samples = SampleOutputs.from_manifest(ctx.upstream[f"sample-{run_name}"]).samples
        images, labels = load_samples_npz(str(samples))
        res = evaluate_images(
            images,
            labels,
            ref,
            ext,
            data=cfg.data.dataset,
            data_dir=cfg.data.data_dir,
            **cfg.evaluate.settings(seed=cfg.seed).metric_kwargs(),
        )
        full[run_name] = res
        rows.append(
            {
                "variant": v.name,
                "run": run_name,
                "seed": seed,
                "objective": v.objective,
                "prior": v.prior,
                "fid": res.get("fid"),
                "kid": res.get("kid_mean"),
                "kid_std": res.get("kid_std"),
                "is": res.get("is_mean"),
                "is_std": res.get("is_std"),
                "precision": res.get("precision"),
                "recall": res.get("recall"),
                "density": res.get("density"),
                "coverage": res.get("coverage"),
                "class_match": res.get("class_match"),
                "num_samples": res.get("num_samples"),
            }
        )
    desc = cm.feature_extractor
    features, accuracy = describe_features(desc), desc.get("test_accuracy")
    out = {
        "feature_extractor": features,
        "feature_accuracy": accuracy,
        "feature_details": desc,
        "reference": ref_name,
        "num_reference": int(len(ref)),
        "num_samples": cfg.sample.num_samples,
        "seeds": cfg.train.seeds,
        "rows": rows,
        "summary": summarize(rows),
        "results": full,
    }
    write_json_atomic(ctx.dir / FILES.metrics, out)
    return EvaluateOutputs(rows=rows, feature_extractor=features, feature_accuracy=accuracy)


def _config(b: Build, _: None) -> dict:
    cfg = b.cfg
    return {**b.slices["evaluate"], "variants": [v.model_dump() for v in cfg.train.variants], **b.seed} | (
        {"seeds": cfg.train.seeds} if cfg.train.seeds > 1 else {}
    )


STAGE = StageDef(
    "evaluate",
    run=lambda b, ctx, _: run(b.cfg, ctx, b.device),
    config=_config,
    deps=lambda b, _: ("data", "classifier") + tuple(f"sample-{r}" for _, r, _ in variant_runs(b.cfg)),
    description="metrics of every variant on classifier features",
    outputs=outputs_of(FILES),
)
