"""Stage ``tokenizer-eval``: the tokenizer's round trip on held-out images (rFID, PSNR, classifier accuracy)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from codeprior.evaluate import evaluate_tokenizer
from codeprior.pipeline.config import PipelineConfig
from codeprior.pipeline.engine import StageContext
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.registry import StageDef, outputs_of
from codeprior.pipeline.stages.classifier import ClassifierOutputs
from codeprior.pipeline.stages.common import extractor, load_vq, test_images_uint8
from codeprior.pipeline.stages.tokenizer import checkpoint_of
from codeprior.report import Doc, ReportSection, record
from codeprior.utils.io import write_json_atomic

__all__ = ["STAGE", "FILES", "TokenizerEvalOutputs", "run"]


class FILES:
    """What the stage writes in ``RUN/tokenizer-eval/``."""

    result = "tokenizer_eval.json"  # codeprior.evaluate.evaluate_tokenizer's full result


@dataclass(frozen=True)
class TokenizerEvalOutputs(StageOutputs):
    """The scalar results of :func:`codeprior.evaluate.evaluate_tokenizer` (None where it reported none)."""

    num_images: int
    grid: tuple[int, int]
    rfid: float
    mse: float
    psnr: float
    codes_used: int
    prediction_agreement: float
    codebook_size: int | None
    codebook_usage: float | None
    accuracy_originals: float | None
    accuracy_reconstructions: float | None
    seconds: float

    def to_metrics(self, base: Path | None = None) -> dict:
        """Only the keys the evaluation reported (as before the records existed)."""
        return {k: v for k, v in super().to_metrics(base).items() if v is not None}


def run(cfg: PipelineConfig, ctx: StageContext, device: str) -> TokenizerEvalOutputs:
    """Round-trip ``tokenizer.num_images`` test images and compare them on the run's features."""
    vq = load_vq(cfg, checkpoint_of(ctx), "cpu")  # codeprior.evaluate's encode/decode helpers work on the CPU
    images, labels = test_images_uint8(cfg, cfg.tokenizer.num_images)
    ext = extractor(cfg, ClassifierOutputs.from_manifest(ctx.upstream["classifier"]).checkpoint)
    res = evaluate_tokenizer(vq, images, labels, ext)
    write_json_atomic(ctx.dir / FILES.result, res)
    return TokenizerEvalOutputs.from_metrics(res)


def report_round_trip(doc: Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    """A table of the tokenizer section: the round trip's numbers."""
    if not manifests.get("tokenizer"):
        return
    ev = record(manifests, "tokenizer-eval", TokenizerEvalOutputs)
    if ev is not None:
        cols = [
            ("num_images", "test images"),
            ("rfid", "rFID"),
            ("mse", "MSE"),
            ("psnr", "PSNR (dB)"),
            ("codebook_usage", "codebook usage"),
            ("accuracy_originals", "classifier acc. originals"),
            ("accuracy_reconstructions", "classifier acc. reconstructions"),
        ]
        cols = [(k, h) for k, h in cols if getattr(ev, k) is not None]
        doc.table([h for _, h in cols], [[getattr(ev, k) for k, _ in cols]])
        doc.p(
            "Round trip through the tokenizer on held-out images: rFID on the same features as the metrics below, "
            "and whether the classifier still recognises the reconstructions."
        )


STAGE = StageDef(
    "tokenizer-eval",
    run=lambda b, ctx, _: run(b.cfg, ctx, b.device),
    config=lambda b, _: {"eval_images": b.cfg.tokenizer.num_images},  # its old name: finished runs stay finished
    deps=("data", "tokenizer", "classifier"),
    description="tokenizer round trip: rFID, PSNR, classifier accuracy on reconstructions",
    outputs=outputs_of(FILES),
    report=(ReportSection(42, report_round_trip),),
)
