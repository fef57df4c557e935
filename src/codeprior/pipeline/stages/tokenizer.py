"""Stage ``tokenizer``: train the VQ tokenizer here, or reuse a given checkpoint; save reconstructions."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from codeprior.data.images import build_image_dataset, save_image_grid
from codeprior.pipeline.config import PipelineConfig
from codeprior.pipeline.engine import StageContext
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.registry import Build, StageDef, outputs_of
from codeprior.pipeline.stages.common import load_vq, test_split
from codeprior.report import Doc, ReportSection
from codeprior.tokenizer_train import latest_checkpoint, train_tokenizer
from codeprior.utils.io import sha256_file

__all__ = ["STAGE", "FILES", "TokenizerOutputs", "run", "checkpoint_of"]


class FILES:
    """What the stage writes in ``RUN/tokenizer/``."""

    train = "train"  # the tokenizer trainer's run folder (when trained here)
    reconstructions = "reconstructions.png"  # originals and reconstructions, alternating rows of 8


@dataclass(frozen=True)
class TokenizerOutputs(StageOutputs):
    """The tokenizer every later stage loads."""

    source: str  # "trained here" | "given checkpoint"
    steps: int | None  # training steps (trained here)
    train_seconds: float | None
    checkpoint: Path
    checkpoint_sha256: str
    model: str
    codebook_size: int
    codebook_dim: int
    grid: tuple[int, int]  # codes per image, [h, w]

    def to_metrics(self, base: Path | None = None) -> dict:
        """As before the records existed: a given checkpoint's manifest has no ``steps`` / ``train_seconds``."""
        out = super().to_metrics(base)
        if self.source != "trained here":
            del out["steps"], out["train_seconds"]
        return out


def checkpoint_of(ctx: StageContext) -> Path:
    """The tokenizer checkpoint of the run (``ctx`` must declare the ``tokenizer`` stage)."""
    return TokenizerOutputs.from_manifest(ctx.upstream["tokenizer"]).checkpoint


def run(cfg: PipelineConfig, ctx: StageContext, device: str) -> TokenizerOutputs:
    """Train (or resume training) the tokenizer, or take the given one; draw originals vs reconstructions."""
    t = cfg.tokenizer
    steps = train_seconds = None
    if t.checkpoint:
        path, source = t.checkpoint, "given checkpoint"
    else:
        resume = ctx.resume and latest_checkpoint(ctx.dir / FILES.train) is not None
        if not resume:
            shutil.rmtree(ctx.dir / FILES.train, ignore_errors=True)
        res = train_tokenizer(
            cfg.data.dataset,
            cfg.data.data_dir,
            t.model,
            ctx.dir / FILES.train,
            schedule=t.schedule,
            steps=t.steps,
            batch_size=t.batch_size,
            lr=t.lr,
            seed=cfg.seed,
            device=device,
            resume=resume,
            evaluate=False,
        )  # the tokenizer-eval stage measures it
        path, source = res["checkpoint"], "trained here"
        steps, train_seconds = res.get("settings", {}).get("steps"), res.get("train_seconds")
    vq = load_vq(cfg, path, device)
    test = build_image_dataset(cfg.data.dataset, test_split(cfg.data.dataset), cfg.data.data_dir, cfg.data.image_size)
    n = min(t.num_recon, len(test))
    idx = torch.linspace(0, len(test) - 1, n).round().long().tolist()
    x = torch.stack([test[i][0] for i in idx]).to(device)
    with torch.inference_mode():
        codes = vq.encode_codes(x)
        rec = vq.decode_codes(codes).float().clamp(-1, 1)
    nrow = 8
    rows = []
    for s in range(0, n, nrow):  # originals row, reconstructions row
        rows += [x[s : s + nrow].cpu(), rec[s : s + nrow].cpu()]
    save_image_grid(torch.cat(rows), ctx.dir / FILES.reconstructions, nrow=nrow)
    return TokenizerOutputs(
        source=source,
        steps=steps,
        train_seconds=train_seconds,
        checkpoint=Path(path).resolve(),
        checkpoint_sha256=sha256_file(path),
        model=t.model,
        codebook_size=int(vq.config.codebook_size),
        codebook_dim=int(vq.quantize.embedding.weight.shape[1]),
        grid=tuple(codes.shape[1:]),
    )


def _description(b: Build, _: None) -> str:
    return "reuse the given VQ checkpoint" if b.cfg.tokenizer.checkpoint else "train the VQ tokenizer"


def report_tokenizer(doc: Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    """The report's tokenizer section: what the tokenizer is (the tokenize and tokenizer-eval stages add theirs)."""
    if not doc.section("Tokenizer", "tokenizer", manifests.get("tokenizer")):
        return
    tok = TokenizerOutputs.from_manifest(manifests["tokenizer"])
    cells = {k: getattr(tok, k) for k in ("source", "model", "codebook_size", "grid", "steps")}
    cells = {k: "x".join(map(str, v)) if isinstance(v, tuple) else v for k, v in cells.items() if v is not None}
    doc.table([k.replace("_", " ") for k in cells], [list(cells.values())])


def report_reconstructions(doc: Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    """The end of the tokenizer section: test images and their reconstructions."""
    if not manifests.get("tokenizer"):
        return
    doc.image(
        run_dir / "tokenizer" / FILES.reconstructions,
        "Test images (odd rows) and their reconstructions through the tokenizer (even rows)",
    )


STAGE = StageDef(
    "tokenizer",
    run=lambda b, ctx, _: run(b.cfg, ctx, b.device),
    config=lambda b, _: {**b.slices["tokenizer"], **b.seed},
    deps=("data",),
    inputs=lambda cfg: {"checkpoint": sha256_file(cfg.tokenizer.checkpoint)} if cfg.tokenizer.checkpoint else {},
    description=_description,
    outputs=outputs_of(FILES),
    report=(ReportSection(40, report_tokenizer), ReportSection(43, report_reconstructions)),
)
