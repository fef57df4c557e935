"""Stage ``data``: check the dataset, record its sizes and hash, save real test images for the report."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codeprior.data.images import build_image_dataset, dataset_info, load_idx
from codeprior.errors import CodepriorError
from codeprior.pipeline.config import IDX_DATASETS, DataConfig, PipelineConfig
from codeprior.pipeline.engine import StageContext, canonical
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.registry import StageDef, outputs_of
from codeprior.pipeline.stages.common import test_split
from codeprior.report import Doc, ReportSection, record
from codeprior.sample import save_class_grid
from codeprior.utils.io import atomic_path

__all__ = ["STAGE", "FILES", "DataOutputs", "run", "dataset_fingerprint"]

EXAMPLES_PER_CLASS = 8


class FILES:
    """What the stage writes in ``RUN/data/``."""

    examples_png = "examples.png"  # a few real test images per class, one row per class
    examples_npz = "examples.npz"  # the same images (``arr_0`` uint8 NHWC, ``labels``): the report's real column


@dataclass(frozen=True)
class DataOutputs(StageOutputs):
    """The dataset as the other stages and the report see it."""

    dataset: str
    test_split: str
    num_classes: int
    class_names: list[str]
    channels: int
    image_size: int
    train_size: int
    test_size: int
    class_counts_test: list[int]
    sha256: str


def dataset_fingerprint(cfg: DataConfig) -> dict[str, str]:
    """Hashes of the dataset: IDX files' contents, or an image folder's listing (names, sizes, mtimes)."""
    if cfg.dataset in IDX_DATASETS:
        out = {}
        for split in ("train", "test"):
            images, labels = load_idx(cfg.dataset, split, cfg.data_dir)
            h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
            h.update(np.ascontiguousarray(labels).tobytes())
            out[split] = h.hexdigest()
        return out
    root = Path(cfg.dataset)
    h = hashlib.sha256()
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            st = p.stat()
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
            n += 1
    return {"listing": h.hexdigest(), "files": str(n)}


def run(cfg: PipelineConfig, ctx: StageContext) -> DataOutputs:
    """Load both splits, save :data:`EXAMPLES_PER_CLASS` real test images per class, return the sizes."""
    d = cfg.data
    info = dataset_info(d.dataset, d.data_dir)
    split = test_split(d.dataset)
    train = build_image_dataset(d.dataset, "train", d.data_dir, d.image_size)
    test = build_image_dataset(d.dataset, split, d.data_dir, d.image_size)
    if len(train) == 0 or len(test) == 0:
        raise CodepriorError(f"{d.dataset}: empty split (train {len(train)}, {split} {len(test)})")
    targets = np.asarray(getattr(test, "targets", [test[i][1] for i in range(len(test))]))
    per = EXAMPLES_PER_CLASS
    idx = np.concatenate([np.flatnonzero(targets == c)[:per] for c in range(info["num_classes"])])
    x = np.stack([test[int(i)][0].numpy() for i in idx])  # [n, C, H, W] in [-1, 1]
    imgs = ((np.clip(x, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)
    save_class_grid(imgs, targets[idx], ctx.dir / FILES.examples_png, per_class=per)
    with atomic_path(ctx.dir / FILES.examples_npz) as tmp, open(tmp, "wb") as f:
        np.savez(f, arr_0=imgs, labels=targets[idx])
    x0 = test[0][0]
    return DataOutputs(
        dataset=d.dataset,
        test_split=split,
        num_classes=info["num_classes"],
        class_names=info["class_names"],
        channels=int(x0.shape[0]),
        image_size=int(x0.shape[-1]),
        train_size=len(train),
        test_size=len(test),
        class_counts_test=np.bincount(targets, minlength=info["num_classes"]).tolist(),
        sha256=hashlib.sha256(canonical(ctx.inputs).encode()).hexdigest(),
    )


def report_dataset(doc: Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    """The report's overview table of the dataset."""
    data = record(manifests, "data", DataOutputs)
    if data is not None:
        size = "?" if data.image_size is None else data.image_size
        doc.table(
            ["dataset", "classes", "image size", "train images", "test images", "sha256"],
            [
                [
                    str(data.dataset),
                    data.num_classes,
                    f"{'?' if data.channels is None else data.channels}x{size}x{size}",
                    data.train_size,
                    data.test_size,
                    str(data.sha256 or "")[:16],
                ]
            ],
        )


STAGE = StageDef(
    "data",
    run=lambda b, ctx, _: run(b.cfg, ctx),
    config=lambda b, _: b.slices["data"],
    inputs=lambda cfg: dataset_fingerprint(cfg.data),
    description="check the dataset, record sizes and hash",
    outputs=outputs_of(FILES),
    report=(ReportSection(11, report_dataset),),
)
