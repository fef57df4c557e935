"""Stage ``classifier``: the feature extractor of every metric, and the reference features once."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from codeprior.errors import CodepriorError
from codeprior.evaluate.classifier import default_classifier_path, get_classifier, load_classifier
from codeprior.pipeline.config import PipelineConfig
from codeprior.pipeline.engine import StageContext
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.registry import StageDef, outputs_of
from codeprior.pipeline.stages.common import describe_features, extractor, reference
from codeprior.report import Doc, ReportSection, record
from codeprior.utils.io import sha256_file, torch_save_atomic

__all__ = ["STAGE", "FILES", "ClassifierOutputs", "run"]


class FILES:
    """What the stage writes in ``RUN/classifier/``."""

    classifier = "classifier.pt"  # the in-project classifier (trained here, or a copy of the cached one)
    reference_features = "reference_features.pt"  # {"features", "logits", "reference"} of the reference images


@dataclass(frozen=True)
class ClassifierOutputs(StageOutputs):
    """The feature extractor (a classifier checkpoint, or Inception with given weights) and its reference."""

    checkpoint: Path | None  # None with Inception weights
    feature_extractor: dict  # the extractor's describe()
    features: str  # one phrase naming it
    test_accuracy: float | None
    reference: str
    reference_features: Path
    num_reference: int


def run(cfg: PipelineConfig, ctx: StageContext, device: str) -> ClassifierOutputs:
    """Train (or reuse) the classifier, then extract the reference images' features once."""
    c = cfg.classifier
    out = ctx.dir / FILES.classifier
    if c.inception_weights:
        ext = extractor(cfg, None)
        desc = ext.describe()
        path = None
    else:
        if c.checkpoint:
            loaded = load_classifier(c.checkpoint)
            path = c.checkpoint
        else:
            cc = c.settings(cfg.seed)
            loaded = None
            cached = default_classifier_path(cfg.data.dataset)
            if c.use_cache and cached.is_file():
                try:
                    loaded = get_classifier(
                        cfg.data.dataset, cfg.data.data_dir, cached, cc, train_if_missing=False, log=ctx.log
                    )
                    shutil.copyfile(cached, out)
                    ctx.log(f"[{ctx.name}] reusing the cached classifier {cached} (same config and data)")
                except CodepriorError:
                    loaded = None
            if loaded is None:
                loaded = get_classifier(cfg.data.dataset, cfg.data.data_dir, out, cc, force=True, log=ctx.log)
            path = str(out.resolve())
        assert loaded is not None  # loaded from the checkpoint or the cache, else trained just above
        desc = loaded.describe()
        ext = extractor(cfg, path)
    # reference features once, for the FID-vs-step curves of the sample stages
    ref, ref_name = reference(cfg)
    feats, logits = ext.extract(ref, desc="reference features")
    torch_save_atomic({"features": feats, "logits": logits, "reference": ref_name}, ctx.dir / FILES.reference_features)
    return ClassifierOutputs(
        checkpoint=Path(path) if path else None,
        feature_extractor=desc,
        features=describe_features(desc),
        test_accuracy=desc.get("test_accuracy"),
        reference=ref_name,
        reference_features=(ctx.dir / FILES.reference_features).resolve(),
        num_reference=int(len(feats)),
    )


def classifier_inputs(cfg: PipelineConfig) -> dict[str, str]:
    """Hashes of the classifier / Inception weights a config gives (the stage's external inputs)."""
    given = (("checkpoint", cfg.classifier.checkpoint), ("inception", cfg.classifier.inception_weights))
    return {k: sha256_file(v) for k, v in given if v}


def report_features(doc: Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    """The report's opening line: the feature extractor of every FID/KID/IS/PRDC number."""
    cm = record(manifests, "classifier", ClassifierOutputs)
    if cm is not None and cm.features:
        acc = cm.test_accuracy
        doc.p(
            f"Feature extractor for every FID/KID/IS/PRDC number: {cm.features}"
            + (f", test accuracy {acc:.2%}." if isinstance(acc, (int, float)) else ".")
        )


STAGE = StageDef(
    "classifier",
    run=lambda b, ctx, _: run(b.cfg, ctx, b.device),
    config=lambda b, _: {**b.slices["classifier"], **b.seed},
    deps=("data",),
    inputs=classifier_inputs,
    description="feature extractor for FID/KID/IS/PRDC (in-project classifier)",
    outputs=outputs_of(FILES),
    report=(ReportSection(10, report_features),),
)
