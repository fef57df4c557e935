"""Stage ``tokenize``: pre-tokenise the train and test splits into code shards (original + flipped view)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from codeprior.pipeline.config import PipelineConfig
from codeprior.pipeline.engine import StageContext
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.registry import StageDef, outputs_of
from codeprior.pipeline.stages.common import load_vq
from codeprior.pipeline.stages.tokenizer import checkpoint_of
from codeprior.report import Doc, ReportSection, fmt, record
from codeprior.tokenize import tokenize_dataset

__all__ = ["STAGE", "FILES", "TokenizeOutputs", "run"]


class FILES:
    """What the stage writes in ``RUN/tokenize/``."""

    codes = "codes"  # memmapped code shards, one folder per split, with their manifest


@dataclass(frozen=True)
class TokenizeOutputs(StageOutputs):
    """The code shards the trainings read."""

    codes: Path
    grid: tuple[int, int]
    seq_len: int
    codebook_size: int
    n_aug: int
    dtype: str
    splits: dict[str, int]  # split -> images
    images_per_s: float

    @property
    def val_split(self) -> str:
        """The held-out split of the shards (``test``, or ``val`` for an image folder tokenised as such)."""
        return next((sp for sp in ("test", "val") if sp in (self.splits or {"test": 0})), "test")


def run(cfg: PipelineConfig, ctx: StageContext, device: str) -> TokenizeOutputs:
    """Encode every split with the run's tokenizer into ``codes/``."""
    ckpt = str(checkpoint_of(ctx))
    vq = load_vq(cfg, ckpt, device)
    t0 = time.perf_counter()
    m: Any = tokenize_dataset(  # the shard manifest: JSON values, read with .get
        vq,
        cfg.data.dataset,
        ctx.dir / FILES.codes,
        data_dir=cfg.data.data_dir,
        **asdict(cfg.tokenize.settings()),  # batch_size, flip, limit, store_embeddings
        image_size=cfg.data.image_size,
        tokenizer_path=ckpt,
        num_workers=cfg.num_workers,
        device=device,
        log=ctx.log,
    )
    splits = m.get("splits") or {}
    return TokenizeOutputs(
        codes=(ctx.dir / FILES.codes).resolve(),
        grid=m.get("grid"),
        seq_len=m.get("seq_len"),
        codebook_size=m.get("codebook_size"),
        n_aug=m.get("n_aug"),
        dtype=m.get("dtype"),
        splits={k: cast(int, v.get("n") if isinstance(v, dict) else v) for k, v in splits.items()},
        images_per_s=sum((v.get("n", 0) if isinstance(v, dict) else 0) for v in splits.values())
        / max(time.perf_counter() - t0, 1e-9),
    )


def report_shards(doc: Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    """A line of the tokenizer section: the code shards."""
    if not manifests.get("tokenizer"):
        return
    tk = record(manifests, "tokenize", TokenizeOutputs)
    if tk is not None:
        doc.p(
            "Pre-tokenised code shards: "
            + ", ".join(
                f"{k.replace('_', ' ')} {fmt(v)}" for k, v in tk.to_metrics().items() if not isinstance(v, (dict, list))
            )
        )


STAGE = StageDef(
    "tokenize",
    run=lambda b, ctx, _: run(b.cfg, ctx, b.device),
    config=lambda b, _: b.slices["tokenize"],
    deps=("data", "tokenizer"),
    description="pre-tokenise train and test splits into code shards",
    outputs=outputs_of(FILES),
    report=(ReportSection(41, report_shards),),
)
