"""Pre-tokenisation: encode a whole image dataset with a VQ tokenizer into memory-mapped code shards.

Every image is encoded as the original and, by default, its horizontal flip (``n_aug = 2``; LlamaGen's
ImageNet recipe uses ten-crop instead, which for 28x28 Fashion-MNIST would only cut the garment). Work is
split into fixed chunks written through :class:`codeprior.data.codes.ShardWriter`, so a killed run resumes,
and under ``torchrun`` each rank encodes a contiguous range of chunks into the same memmap (rank 0 creates
and finalises it; gloo barriers in between). :func:`check_shards` decodes stored codes next to the originals.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from codeprior.data.codes import CodeShards, ShardWriter, read_manifest
from codeprior.data.images import (
    IDX_DATASETS,
    IdxImageDataset,
    build_image_dataset,
    dataset_info,
    resolve_folder_split,
    save_image_grid,
)
from codeprior.errors import CodepriorError
from codeprior.runtime import env_ranks, process_group
from codeprior.tokenize_settings import default_batch_size
from codeprior.utils.io import sha256_file, sha256_tensor
from codeprior.utils.progress import progress

AUG_NAMES = {1: ["identity"], 2: ["identity", "hflip"]}
AUG_NOTE = "original + horizontal flip per image (LlamaGen's ImageNet recipe uses ten-crop instead)"


def load_tokenizer(
    path: str | os.PathLike,
    config: Any = None,
    device: str | torch.device = "cpu",
    default_config: Any = None,
    flag: str = "--vq-model",
) -> torch.nn.Module:
    """Load a VQ tokenizer checkpoint in eval mode via ``codeprior.models.load_vq``: our files and ``vq_train.py``'s
    carry their config (a ``config`` contradicting it is refused, naming ``flag``); LlamaGen's released files need
    ``config`` (a registry name such as ``VQ-16``) or ``default_config`` (used only when the file says nothing)."""
    from codeprior.models import load_vq  # late import: the models package is large

    vq = load_vq(str(path), config=config, default_config=default_config, flag=flag)
    return vq.to(device).eval()


def default_splits(data: str | os.PathLike) -> list[str]:
    """``train,test`` for the IDX datasets; for folders the ``train`` and ``val`` subfolders that exist (or ``train``)."""
    if isinstance(data, str) and data in IDX_DATASETS:
        return ["train", "test"]
    root = Path(data)
    found = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    return found or ["train"]


# --------------------------------------------------------------------------------------------------- distributed
def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment (``(0, 1)`` without it)."""
    return env_ranks()[:2]


def _barrier(active: bool) -> None:
    if active:
        dist.barrier()


def _broadcast_error(active: bool, err: str | None) -> None:
    """Share rank 0's failure so the other ranks stop with it instead of hanging at the next barrier."""
    if not active:
        if err:
            raise CodepriorError(err)
        return
    box = [err]
    dist.broadcast_object_list(box, src=0)
    if box[0]:
        raise CodepriorError(box[0])


# --------------------------------------------------------------------------------------------------- encoding
def encode_batch(vq: Any, x: torch.Tensor, flip: bool) -> torch.Tensor:
    """Codes ``[B, n_aug, h*w]`` (int64) for images ``x`` [B, C, H, W]: the original, then (``flip``) its mirror."""
    xx = torch.cat([x, x.flip(-1)]) if flip else x
    codes = vq.encode_codes(xx)
    b = x.shape[0]
    n_aug = 2 if flip else 1
    return codes.reshape(n_aug, b, -1).transpose(0, 1).contiguous().long()


def encode_batch_embeddings(vq: Any, x: torch.Tensor, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`encode_batch`'s codes and the encoder's continuous output at every position, ``float16
    [B, n_aug, h*w, D]`` (pre-quantisation, as the quantizer reads it), from one encoder pass."""
    if not hasattr(vq, "encode_features") or not hasattr(getattr(vq, "quantize", None), "lookup_indices"):
        raise CodepriorError("tokenizer: --store-embeddings needs codeprior's VQ model (encode_features)")
    xx = torch.cat([x, x.flip(-1)]) if flip else x
    f = vq.encode_features(xx)  # [n_aug * B, D, h, w]
    codes = vq.quantize.lookup_indices(f)
    b, n_aug = x.shape[0], 2 if flip else 1
    emb = f.flatten(2).transpose(1, 2).reshape(n_aug, b, -1, f.shape[1]).transpose(0, 1)
    return codes.reshape(n_aug, b, -1).transpose(0, 1).contiguous().long(), emb.to(torch.float16).contiguous()


def _chunk_batches(
    ds: Any, writer: ShardWriter, chunks: Sequence[int], num_workers: int
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(chunk, images, labels)`` for the given chunks (IDX arrays sliced directly; folders via a DataLoader)."""
    if isinstance(ds, IdxImageDataset):
        for c in chunks:
            s, e = writer.chunk_range(c)
            x, y = ds.get_batch(s, e)
            yield c, x, y
        return
    indices = [i for c in chunks for i in range(*writer.chunk_range(c))]
    loader = DataLoader(
        Subset(ds, indices),
        batch_size=writer.chunk_size,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=False,
    )
    # batches align with chunks: chunks are contiguous and only the dataset's last chunk can be short
    for c, (x, y) in zip(chunks, loader):
        yield c, x, y


def subset_indices(n: int, limit: int | None) -> np.ndarray | None:
    """The ``limit`` images of a split of ``n`` that ``--limit`` keeps: evenly spaced, so an image folder sorted by
    class keeps every class (None: the whole split)."""
    if limit is None or limit >= n:
        return None
    return (np.arange(int(limit), dtype=np.int64) * n) // int(limit)


def _subset(ds: Any, limit: int | None) -> Any:
    idx = subset_indices(len(ds), limit)
    return ds if idx is None else torch.utils.data.Subset(ds, idx.tolist())


def tokenize_split(
    vq: Any,
    data: str | os.PathLike,
    split: str,
    out_dir: str | os.PathLike,
    *,
    meta: dict[str, Any],
    data_dir: str | os.PathLike | None = None,
    flip: bool = True,
    batch_size: int = 512,
    image_size: int | None = None,
    overwrite: bool = False,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Encode one split into ``out_dir/{split}``; resumable and torchrun-aware. Returns the manifest.

    ``limit``: encode only that many images of the split (:func:`subset_indices`), to try things on a subset.
    ``meta["embeddings"]`` (set by :func:`tokenize_dataset` with ``store_embeddings``): also store the encoder's
    output per position (float16)."""
    out_dir = Path(out_dir)
    rank, world = dist_info()
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    ds = _subset(build_image_dataset(data, split, data_dir=data_dir, image_size=image_size, flip=False), limit)
    n = len(ds)
    if n == 0:
        raise CodepriorError(f"{data}: split {split!r} is empty")
    x0, _ = ds[0]
    with torch.inference_mode():
        probe = vq.encode_codes(x0.unsqueeze(0).to(device))
    if probe.dim() != 3:
        raise CodepriorError(f"tokenizer: encode_codes must return [B, h, w], got {list(probe.shape)}")
    grid = [int(probe.shape[1]), int(probe.shape[2])]
    n_aug = 2 if flip else 1
    split_meta = dict(
        meta,
        grid=grid,
        n_aug=n_aug,
        image_size=int(x0.shape[-1]),
        channels=int(x0.shape[0]),
        augmentations=AUG_NAMES[n_aug],
        augmentation_note=AUG_NOTE if flip else "original only",
    )
    fingerprint = {
        k: split_meta.get(k)
        for k in (
            "tokenizer_sha256",
            "codebook_sha256",
            "dataset",
            "grid",
            "n_aug",
            "image_size",
            "channels",
            "limit",
            "embeddings",
        )
    }

    # rank 0 decides: skip a finished split, or (re)create / resume the partial files
    err = None
    skip = False
    if rank == 0:
        try:
            final = out_dir / split / "codes.npy"
            if (out_dir / "manifest.json").is_file() and final.is_file():
                m = read_manifest(out_dir)
                same = (
                    all(m.get(k) == v for k, v in fingerprint.items() if k not in ("grid", "n_aug"))
                    and m.get("grid") == grid
                    and m.get("n_aug") == n_aug
                )
                if split in m["splits"] and same and not overwrite:
                    skip = True
                elif split in m["splits"] and not overwrite:
                    raise CodepriorError(
                        f"{out_dir / split}: already tokenised with other settings "
                        f"(tokenizer/dataset/augmentation); pass --overwrite to replace it"
                    )
            if not skip:
                ShardWriter(out_dir, split, n, split_meta, chunk_size=batch_size, create=True, fingerprint=fingerprint)
        except CodepriorError as e:
            err = str(e)
    if distributed:
        box = [skip]
        dist.broadcast_object_list(box, src=0)
        skip = bool(box[0])
    _broadcast_error(distributed, err)
    if skip:
        if rank == 0:
            log(
                f"{out_dir / split}: already tokenised with this tokenizer and settings; skipping (--overwrite to redo)"
            )
        return read_manifest(out_dir)

    writer = ShardWriter(out_dir, split, n, split_meta, chunk_size=batch_size, create=False, fingerprint=fingerprint)
    lo, hi = rank * writer.n_chunks // world, (rank + 1) * writer.n_chunks // world
    mine = writer.pending_chunks(range(lo, hi))
    already = int(np.asarray(writer.done).sum())
    if rank == 0 and already:
        log(f"{out_dir / split}: resuming, {already} of {writer.n_chunks} chunks already done")
    n_mine = sum(e - s for s, e in map(writer.chunk_range, mine))
    t0 = time.perf_counter()
    sub = max(1, int(batch_size))
    desc = f"tokenize {split}" + (f" (rank 0 of {world})" if distributed else "")
    with torch.inference_mode(), progress(total=n_mine, unit="img", desc=desc) as bar:
        for c, x, y in _chunk_batches(ds, writer, mine, num_workers):
            x = x.to(device)
            if writer.embed_shape:
                both = [encode_batch_embeddings(vq, x[s : s + sub], flip) for s in range(0, x.shape[0], sub)]
                codes = torch.cat([p[0] for p in both]).cpu()
                writer.write_chunk(c, codes, y, torch.cat([p[1] for p in both]).cpu())
            else:
                parts = [encode_batch(vq, x[s : s + sub], flip) for s in range(0, x.shape[0], sub)]
                writer.write_chunk(c, torch.cat(parts).cpu(), y)
            bar.update(x.shape[0])
    seconds = time.perf_counter() - t0
    _barrier(distributed)
    err = None
    manifest: dict[str, Any] = {}
    if rank == 0:
        try:
            manifest = writer.finalize()
        except CodepriorError as e:
            err = str(e)
    _broadcast_error(distributed, err)
    _barrier(distributed)
    if rank == 0:
        rate = n_mine / seconds if seconds > 0 else float("inf")
        log(
            f"{out_dir / split}: {n} images x {n_aug} augmentation(s) -> {grid[0]}x{grid[1]} codes "
            f"({seconds:.1f} s, {rate:.0f} img/s on rank 0)"
        )
    return manifest or read_manifest(out_dir)


def tokenize_dataset(
    vq: Any,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    splits: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    flip: bool = True,
    batch_size: int | None = None,
    image_size: int | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    store_embeddings: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Encode ``splits`` of ``data`` (``fashion-mnist``, ``mnist`` or an image folder) into ``out_dir``.

    ``vq`` needs ``encode_codes``, ``config.codebook_size`` and ``quantize.embedding.weight``. The manifest
    records the tokenizer file's SHA-256 (``tokenizer_path``), the codebook's hash, the dataset, grid and
    augmentations. Joins torchrun's process group when ``WORLD_SIZE > 1``. ``store_embeddings``: also store the
    encoder's continuous output at every position (``embeddings.npy``, float16: ``2 * D`` bytes per token and
    augmentation, 8x the uint16 codes at D = 8), SNCE's ``encoder`` source.
    """
    data_spec: str = data if isinstance(data, str) and data in IDX_DATASETS else str(Path(data).resolve())
    if batch_size is None:
        batch_size = default_batch_size(data_spec)
    if batch_size < 1:
        raise CodepriorError(f"--batch-size must be >= 1, got {batch_size}")
    splits = list(splits) if splits else default_splits(data_spec)
    if data_spec not in IDX_DATASETS:
        for split in splits:  # fail before any work on a missing split
            resolve_folder_split(data_spec, split)
    info = dataset_info(data_spec, data_dir)
    codebook = vq.quantize.embedding.weight
    meta = {
        "dataset": data_spec,
        "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else None,
        "num_classes": info["num_classes"],
        "class_names": info["class_names"],
        "codebook_size": int(vq.config.codebook_size),
        "tokenizer": str(Path(tokenizer_path).resolve()) if tokenizer_path else None,
        "tokenizer_sha256": sha256_file(tokenizer_path) if tokenizer_path else None,
        "codebook_sha256": sha256_tensor(codebook),
        "flip": bool(flip),
        "limit": None if limit is None else int(limit),  # images per split (a subset), None = every image
    }
    if store_embeddings:  # only then: manifests (and resume fingerprints) of plain runs stay as they were
        meta["embeddings"] = {"dim": int(codebook.shape[1]), "dtype": "float16"}
    if int(codebook.shape[0]) != meta["codebook_size"]:
        raise CodepriorError(
            f"tokenizer: codebook has {codebook.shape[0]} rows but config says {meta['codebook_size']}"
        )
    manifest: dict[str, Any] = {}
    was_training = getattr(vq, "training", False)
    if hasattr(vq, "eval"):
        vq.eval()
    try:
        with process_group():
            for split in splits:
                manifest = tokenize_split(
                    vq,
                    data_spec,
                    split,
                    out_dir,
                    meta=meta,
                    data_dir=data_dir,
                    flip=flip,
                    batch_size=batch_size,
                    image_size=image_size,
                    overwrite=overwrite,
                    num_workers=num_workers,
                    device=device,
                    limit=limit,
                    log=log,
                )
    finally:
        if was_training:
            vq.train()
    return manifest


# --------------------------------------------------------------------------------------------------- round trip
def check_shards(
    shard_dir: str | os.PathLike,
    vq: Any,
    *,
    split: str | None = None,
    n: int = 16,
    out: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    nrow: int = 8,
) -> dict[str, Any]:
    """Round-trip check: decode ``n`` stored code grids (evenly spaced over the split) next to the originals.

    Returns the agreement of the stored codes with a fresh encoding of the same images (1.0 when the shards
    match this tokenizer and dataset order), the flip augmentation's agreement, and the PSNR of the decoded
    images against the originals. Writes ``out`` as a grid: rows of originals, each followed by the decodes.
    """
    manifest = read_manifest(shard_dir)
    split = split or ("test" if "test" in manifest["splits"] else sorted(manifest["splits"])[0])
    shards = CodeShards(shard_dir, split, aug=0)
    result: dict[str, Any] = {"split": split}
    if tokenizer_path is not None and manifest.get("tokenizer_sha256"):
        result["tokenizer_matches"] = sha256_file(tokenizer_path) == manifest["tokenizer_sha256"]
    if int(vq.config.codebook_size) != shards.codebook_size:
        raise CodepriorError(
            f"{shard_dir}: shards use codebook_size {shards.codebook_size}, the tokenizer has {vq.config.codebook_size}"
        )
    n = max(1, min(int(n), len(shards)))
    idx = np.unique(np.linspace(0, len(shards) - 1, n).round().astype(np.int64))
    h, w = shards.grid
    stored = torch.from_numpy(shards.codes[idx].astype(np.int64))  # [n, n_aug, L]
    data_dir = data_dir if data_dir is not None else manifest.get("data_dir")
    ds = build_image_dataset(
        manifest["dataset"], split, data_dir=data_dir, image_size=manifest.get("image_size"), flip=False
    )
    ds = _subset(ds, manifest.get("limit"))  # shards of `tokenize --limit N` hold that subset
    if len(ds) != len(shards):
        raise CodepriorError(f"{shard_dir}: split {split!r} has {len(shards)} entries but the dataset has {len(ds)}")
    x = torch.stack([ds[int(i)][0] for i in idx]).to(device)
    labels_ok = bool(np.array_equal(np.asarray([ds[int(i)][1] for i in idx]), shards.labels[idx]))
    was_training = getattr(vq, "training", False)
    vq.eval()
    with torch.inference_mode():
        fresh = encode_batch(vq, x, flip=shards.n_aug == 2).cpu()
        decoded = vq.decode_codes(stored[:, 0].reshape(-1, h, w).to(device)).float().clamp(-1, 1).cpu()
    if was_training:
        vq.train()
    result["code_agreement"] = float((fresh[:, 0] == stored[:, 0]).float().mean())
    if shards.n_aug == 2:
        result["flip_agreement"] = float((fresh[:, 1] == stored[:, 1]).float().mean())
    mse = float(((decoded - x.cpu()) ** 2).mean()) / 4.0  # on the [0, 1] scale
    result["mse"] = mse
    result["psnr"] = float(10 * np.log10(1.0 / max(mse, 1e-12)))
    result["labels_match"] = labels_ok
    result["n"] = int(len(idx))
    if out is not None:
        nrow = max(1, min(nrow, len(idx)))
        rows = []
        for s in range(0, len(idx), nrow):
            orig, dec = x[s : s + nrow].cpu(), decoded[s : s + nrow]
            if len(orig) < nrow:  # pad the last row so originals and decodes stay aligned
                pad = torch.ones(nrow - len(orig), *orig.shape[1:])
                orig, dec = torch.cat([orig, pad]), torch.cat([dec, pad])
            rows += [orig, dec]
        save_image_grid(torch.cat(rows), out, nrow=nrow)
        result["grid"] = str(out)
    return result
