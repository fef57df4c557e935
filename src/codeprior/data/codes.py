"""Pre-tokenised code shards: memory-mapped ``.npy`` files plus a JSON manifest.

Layout (``DIR`` is what ``codeprior tokenize --out`` names)::

    DIR/manifest.json          grid, seq_len, codebook_size, num_classes, n_aug, dtype, tokenizer_sha256, ...
    DIR/{split}/codes.npy      [N, n_aug, h*w], the smallest unsigned dtype holding codebook_size - 1
    DIR/{split}/labels.npy     [N] int16 (int32 for > 32767 classes)
    DIR/{split}/embeddings.npy [N, n_aug, h*w, D] float16, only when tokenised with --store-embeddings: the
                               encoder's continuous output at every position (SNCE's ``encoder`` source);
                               the manifest then holds ``embeddings: {"dim": D, "dtype": "float16"}``

One file per split (instead of LlamaGen's two small files per image) means one ``np.load(mmap_mode="r")`` and
no per-sample file system traffic; the reader's :meth:`CodeShards.batch` gathers a whole batch with one fancy
index. A split appears in the manifest only after its files are complete, so readers never see partial data.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from codeprior.errors import CodepriorError
from codeprior.utils.io import disk_error, write_json_atomic

__all__ = [
    "MANIFEST",
    "CODES_FILE",
    "LABELS_FILE",
    "EMBED_FILE",
    "FORMAT_VERSION",
    "SHARED_KEYS",
    "code_dtype",
    "label_dtype",
    "read_manifest",
    "build_manifest",
    "merge_manifest",
    "remove_split_from_manifest",
    "check_code_array",
    "write_code_shards",
    "replace_dir",
    "augmentation_choice",
    "CodeShards",
    "ShardWriter",
    "reserve_file",
    "PROGRESS_FILE",
    "DONE_FILE",
    "PARTIAL_CODES",
    "PARTIAL_LABELS",
    "PARTIAL_EMBED",
]

MANIFEST = "manifest.json"
CODES_FILE = "codes.npy"
LABELS_FILE = "labels.npy"
EMBED_FILE = "embeddings.npy"
FORMAT_VERSION = 1
# Keys every split of one shard directory must agree on.
SHARED_KEYS = ("grid", "seq_len", "codebook_size", "num_classes", "n_aug", "dtype", "tokenizer_sha256")


def code_dtype(codebook_size: int) -> np.dtype:
    """Smallest unsigned integer dtype that holds codes ``0 .. codebook_size - 1``."""
    if codebook_size <= 0:
        raise CodepriorError(f"codebook_size must be positive, got {codebook_size}")
    for dt in (np.uint8, np.uint16, np.uint32):
        if codebook_size - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def label_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.int16) if num_classes <= np.iinfo(np.int16).max else np.dtype(np.int32)


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a shard directory (one-line error if missing or unreadable)."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise CodepriorError(f"{path}: no manifest (not a code-shard directory; create one with `codeprior tokenize`)")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CodepriorError(f"{path}: unreadable manifest ({type(e).__name__}: {e})") from None
    if not isinstance(m, dict):
        raise CodepriorError(f"{path}: manifest must be a JSON object")
    missing = [k for k in (*SHARED_KEYS, "splits") if k not in m]
    if missing:
        raise CodepriorError(f"{path}: manifest lacks {', '.join(missing)}")
    return m


def build_manifest(meta: Mapping[str, Any], split: str, n: int) -> dict[str, Any]:
    """Manifest for ``split`` of ``n`` images from ``meta`` (grid, codebook_size, num_classes, n_aug, ... )."""
    need = ("grid", "codebook_size", "num_classes", "n_aug")
    missing = [k for k in need if k not in meta]
    if missing:
        raise CodepriorError(f"code shards: meta lacks {', '.join(missing)}")
    grid = [int(g) for g in meta["grid"]]
    m: dict[str, Any] = {"format_version": FORMAT_VERSION}
    m.update({k: v for k, v in meta.items() if k != "splits"})
    m.update(
        grid=grid,
        seq_len=grid[0] * grid[1],
        codebook_size=int(meta["codebook_size"]),
        num_classes=int(meta["num_classes"]),
        n_aug=int(meta["n_aug"]),
        dtype=code_dtype(int(meta["codebook_size"])).name,
        label_dtype=label_dtype(int(meta["num_classes"])).name,
        tokenizer_sha256=meta.get("tokenizer_sha256"),
        splits={split: {"n": int(n)}},
    )
    return m


def merge_manifest(out_dir: str | os.PathLike, new: dict[str, Any], split: str) -> dict[str, Any]:
    """Add ``split`` to an existing manifest; the other splits must share the grid, codebook and tokenizer."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return new
    old = read_manifest(out_dir)
    others = {s: v for s, v in old["splits"].items() if s != split}
    if others:
        diff = [k for k in SHARED_KEYS if old.get(k) != new.get(k)]
        if diff:
            raise CodepriorError(
                f"{path}: split {split!r} differs from existing splits {sorted(others)} in {', '.join(diff)} "
                f"({', '.join(f'{k}: {old.get(k)!r} vs {new.get(k)!r}' for k in diff)}); use another --out"
            )
    merged = dict(new)
    merged["splits"] = {**others, split: new["splits"][split]}
    merged["splits"] = {s: merged["splits"][s] for s in sorted(merged["splits"])}
    return merged


def remove_split_from_manifest(out_dir: str | os.PathLike, split: str) -> None:
    """Unlist ``split`` (before overwriting it), so readers never pair the manifest with half-written files."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return
    m = read_manifest(out_dir)
    if split in m["splits"]:
        del m["splits"][split]
        write_json_atomic(path, m)


def check_code_array(codes: np.ndarray, codebook_size: int, where: str, chunk: int = 1 << 16) -> None:
    """Raise if any code is >= ``codebook_size`` (scans in chunks: fine on a memmap)."""
    for s in range(0, len(codes), chunk):
        part = np.asarray(codes[s : s + chunk])
        if part.size and int(part.max()) >= codebook_size:
            bad = s + int(np.argwhere(part >= codebook_size)[0][0])
            raise CodepriorError(f"{where}: code {int(part.max())} >= codebook_size {codebook_size} (image {bad})")
        if part.size and np.issubdtype(part.dtype, np.signedinteger) and int(part.min()) < 0:
            raise CodepriorError(f"{where}: negative code {int(part.min())}")


def write_code_shards(
    out_dir: str | os.PathLike,
    split: str,
    codes: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """Write one split from in-memory arrays and update the manifest; returns the manifest.

    ``codes`` is ``[N, n_aug, h*w]`` (or ``[N, n_aug, h, w]``); ``meta`` holds at least ``grid``,
    ``codebook_size``, ``num_classes`` (``n_aug`` defaults to the array's) plus anything to record
    (``tokenizer_sha256``, ``dataset``, ``augmentations``, ``class_names`` ...). The split's files go to a
    temporary directory that is renamed into place; the manifest is written last.
    """
    out_dir = Path(out_dir)
    codes = codes.cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    meta = dict(meta)
    grid = [int(g) for g in meta.get("grid", ())]
    if len(grid) != 2:
        raise CodepriorError(f"{out_dir}: meta['grid'] must be [h, w], got {meta.get('grid')!r}")
    if codes.ndim == 4:
        codes = codes.reshape(codes.shape[0], codes.shape[1], -1)
    meta.setdefault("n_aug", codes.shape[1] if codes.ndim == 3 else None)
    manifest = build_manifest(meta, split, len(codes))
    expect = (len(codes), manifest["n_aug"], manifest["seq_len"])
    if codes.ndim != 3 or tuple(codes.shape) != expect:
        raise CodepriorError(
            f"{out_dir}: codes shape {list(codes.shape)} does not match [N, n_aug, h*w] = {list(expect)}"
        )
    if not np.issubdtype(codes.dtype, np.integer):
        raise CodepriorError(f"{out_dir}: codes must be integers, got {codes.dtype}")
    if labels.shape != (len(codes),):
        raise CodepriorError(f"{out_dir}: labels shape {list(labels.shape)} does not match N = {len(codes)}")
    check_code_array(codes, manifest["codebook_size"], f"{out_dir}/{split}")
    if len(labels) and (labels.min() < 0 or labels.max() >= manifest["num_classes"]):
        raise CodepriorError(f"{out_dir}/{split}: labels outside 0..{manifest['num_classes'] - 1}")
    manifest = merge_manifest(out_dir, manifest, split)

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}.", suffix=".tmp", dir=out_dir))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the split directory gets the usual permissions
        np.save(tmp / CODES_FILE, codes.astype(manifest["dtype"]))
        np.save(tmp / LABELS_FILE, labels.astype(manifest["label_dtype"]))
        remove_split_from_manifest(out_dir, split)
        replace_dir(tmp, out_dir / split)
    except BaseException as e:
        err = disk_error(e, tmp)  # np.save reports a full disk without an errno
        shutil.rmtree(tmp, ignore_errors=True)
        if err is not None:
            raise err from None
        raise
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` onto ``dst``, replacing any existing ``dst`` (old one renamed away first)."""
    trash = None
    if dst.exists():
        trash = dst.with_name(f".{dst.name}.old.{os.getpid()}")
        os.replace(dst, trash)
    os.replace(src, dst)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- reader
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays: a fast, well-mixed hash (wrap-around arithmetic intended)."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def augmentation_choice(indices: np.ndarray, n_aug: int, epoch: int, seed: int = 0) -> np.ndarray:
    """Deterministic augmentation index per ``(seed, epoch, sample index)``, independent of batch and worker layout."""
    idx = np.asarray(indices, dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(np.full(idx.shape, (int(seed) & 0xFFFFFFFF) << 32 | (int(epoch) & 0xFFFFFFFF), np.uint64))
        h = _splitmix64(key ^ _splitmix64(idx))
    return (h % np.uint64(n_aug)).astype(np.int64)


class CodeShards(Dataset):
    """Memory-mapped reader of one split: ``ds[i] -> (int64 codes [L], int64 label)``.

    ``aug="random"`` picks one of the ``n_aug`` augmentations per sample, deterministically from
    ``(seed, epoch, index)`` (call :meth:`set_epoch` each epoch), so runs are reproducible whatever the
    DataLoader's worker count; an int selects that augmentation always. :meth:`batch` is a collate-free fast
    path: one vectorised gather for a whole batch. Opening validates shapes against the manifest and
    (``check_codes=True``) that every code is below ``codebook_size``.
    """

    def __init__(
        self,
        dir: str | os.PathLike,
        split: str = "train",
        aug: str | int = "random",
        seed: int = 0,
        check_codes: bool = True,
    ) -> None:
        self.dir = Path(dir)
        self.split = split
        self.manifest = read_manifest(self.dir)
        m = self.manifest
        if split not in m["splits"]:
            raise CodepriorError(
                f"{self.dir / MANIFEST}: no split {split!r} (has {', '.join(sorted(m['splits'])) or 'none'})"
            )
        self.n_aug = int(m["n_aug"])
        self.seq_len = int(m["seq_len"])
        self.codebook_size = int(m["codebook_size"])
        self.num_classes = int(m["num_classes"])
        self.grid = tuple(int(g) for g in m["grid"])
        if aug != "random":
            if isinstance(aug, str) and aug.isdigit():
                aug = int(aug)
            if not isinstance(aug, int) or not 0 <= aug < self.n_aug:
                raise CodepriorError(
                    f"{self.dir}: aug must be 'random' or an index in 0..{self.n_aug - 1}, got {aug!r}"
                )
        self.aug = aug
        self.seed = int(seed)
        self.epoch = 0
        self._codes: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._embeddings: np.ndarray | None = None
        self.embed_dim = int(m["embeddings"]["dim"]) if isinstance(m.get("embeddings"), dict) else None
        self._open()
        if check_codes:
            check_code_array(self.codes, self.codebook_size, str(self.dir / split / CODES_FILE))
            if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
                raise CodepriorError(f"{self.dir / split / LABELS_FILE}: labels outside 0..{self.num_classes - 1}")

    def _open(self) -> None:
        n = int(self.manifest["splits"][self.split]["n"])
        cpath = self.dir / self.split / CODES_FILE
        lpath = self.dir / self.split / LABELS_FILE
        codes = _load_npy(cpath)
        labels = _load_npy(lpath)
        expect = (n, self.n_aug, self.seq_len)
        if tuple(codes.shape) != expect:
            raise CodepriorError(f"{cpath}: shape {list(codes.shape)} does not match the manifest's {list(expect)}")
        if codes.dtype.name != self.manifest["dtype"]:
            raise CodepriorError(
                f"{cpath}: dtype {codes.dtype.name} does not match the manifest's {self.manifest['dtype']}"
            )
        if tuple(labels.shape) != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise CodepriorError(f"{lpath}: expected {n} integer labels, got {labels.dtype} {list(labels.shape)}")
        self._codes, self._labels = codes, np.asarray(labels)
        if self.embed_dim is not None:
            epath = self.dir / self.split / EMBED_FILE
            if not epath.is_file():
                raise CodepriorError(f"{epath}: missing, but the manifest lists stored embeddings")
            emb = _load_npy(epath)
            if tuple(emb.shape) != (*expect, self.embed_dim) or emb.dtype != np.float16:
                raise CodepriorError(
                    f"{epath}: {emb.dtype} {list(emb.shape)}, expected float16 {[*expect, self.embed_dim]}"
                )
            self._embeddings = emb

    # memmaps must not be pickled into DataLoader workers (that would copy the whole file): reopen there.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_codes"] = None
        state["_labels"] = None
        state["_embeddings"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    @property
    def codes(self) -> np.ndarray:
        """The memmap ``[N, n_aug, L]`` (read-only)."""
        assert self._codes is not None
        return self._codes

    @property
    def labels(self) -> np.ndarray:
        assert self._labels is not None
        return self._labels

    @property
    def class_names(self) -> list[str] | None:
        return self.manifest.get("class_names")

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the random augmentations of ``epoch`` (like DistributedSampler.set_epoch)."""
        self.epoch = int(epoch)

    def aug_indices(self, indices: np.ndarray) -> np.ndarray:
        if self.aug == "random":
            return augmentation_choice(indices, self.n_aug, self.epoch, self.seed)
        return np.full(len(indices), int(self.aug), dtype=np.int64)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        i = i % n
        a = int(self.aug_indices(np.array([i]))[0])
        codes = torch.from_numpy(self.codes[i, a].astype(np.int64))
        return codes, torch.tensor(int(self.labels[i]), dtype=torch.int64)

    def batch(self, indices: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(int64 codes [B, L], int64 labels [B])`` for ``indices`` in one gather (no per-sample Python)."""
        idx = np.asarray(
            torch.as_tensor(indices).cpu().numpy() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64
        ).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"batch indices out of range for {n} samples")
        idx = idx % n if idx.size else idx
        a = self.aug_indices(idx)
        codes = self.codes[idx, a]  # advanced indexing on two axes -> [B, L], reads only the chosen rows
        return torch.from_numpy(codes.astype(np.int64)), torch.from_numpy(self.labels[idx].astype(np.int64))

    def batch_embeddings(self, indices: Any) -> torch.Tensor:
        """The stored encoder outputs ``float16 [B, L, D]`` of the same samples and augmentations as
        :meth:`batch` (same indices, same epoch); one-line error for shards tokenised without them."""
        if self._embeddings is None:
            raise CodepriorError(
                f"{self.dir}: no stored embeddings (tokenise with `codeprior tokenize --store-embeddings`)"
            )
        idx = np.asarray(
            torch.as_tensor(indices).cpu().numpy() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64
        ).reshape(-1) % max(len(self), 1)
        return torch.from_numpy(np.ascontiguousarray(self._embeddings[idx, self.aug_indices(idx)]))


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise CodepriorError(f"{path}: no such file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CodepriorError(f"{path}: unreadable .npy ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


# the resumable writer lives in codeprior.data.shard_writer (it builds on the layout above); its names stay here too
from codeprior.data.shard_writer import (  # noqa: E402
    DONE_FILE,
    PARTIAL_CODES,
    PARTIAL_EMBED,
    PARTIAL_LABELS,
    PROGRESS_FILE,
    ShardWriter,
    reserve_file,
)
