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
from codeprior.pipeline.stages.common import describe_features, extractor, reference
from codeprior.utils.io import torch_save_atomic

__all__ = ["FILES", "ClassifierOutputs", "run"]


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
