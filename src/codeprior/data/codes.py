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

import contextlib
import errno
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
from codeprior.utils.io import disk_error, free_bytes, human_bytes, write_json_atomic

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


# --------------------------------------------------------------------------------------------------- resumable writer
def reserve_file(path: str | os.PathLike) -> None:
    """Allocate every block of ``path`` now (``posix_fallocate``), so that writing through a memmap of it can never
    hit a full disk: that would be SIGBUS ("Bus error", no message), which Python cannot catch. A full disk is an
    ``OSError`` (ENOSPC) naming ``path`` here instead. File systems that cannot reserve are left as they are."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.posix_fallocate(fd, 0, max(1, os.fstat(fd).st_size))
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        os.close(fd)


PROGRESS_FILE = ".progress.json"
DONE_FILE = ".done.npy"
PARTIAL_CODES = "codes.partial.npy"
PARTIAL_LABELS = "labels.partial.npy"
PARTIAL_EMBED = "embeddings.partial.npy"


class ShardWriter:
    """Resumable, multi-process writer of one split, used by ``codeprior tokenize``.

    Writes into ``DIR/{split}/codes.partial.npy`` / ``labels.partial.npy`` (``np.lib.format.open_memmap``)
    in fixed chunks of ``chunk_size`` images. After a chunk's rows are flushed, its byte in the done mask
    ``DIR/{split}/.done.npy`` is set; ``DIR/{split}/.progress.json`` records the shapes, chunk size and the
    settings fingerprint, so a killed run resumes where it stopped (and a run with other settings starts over).
    Several processes (torchrun ranks) may write disjoint chunks of the same memmaps; ``create=True`` on
    exactly one of them (rank 0), before the others open. :meth:`finalize` validates, renames the files to
    ``codes.npy`` / ``labels.npy`` and lists the split in the manifest.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        split: str,
        n: int,
        meta: Mapping[str, Any],
        chunk_size: int,
        create: bool = True,
        fingerprint: Mapping[str, Any] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.split = split
        self.dir = self.out_dir / split
        self.manifest = build_manifest(meta, split, n)
        self.n = int(n)
        self.shape = (self.n, self.manifest["n_aug"], self.manifest["seq_len"])
        emb = self.manifest.get("embeddings")
        self.embed_shape = (*self.shape, int(emb["dim"])) if isinstance(emb, dict) else None
        self.embeddings: np.memmap | None = None
        self.fingerprint = dict(fingerprint or {})
        self.resumed = False
        progress_path = self.dir / PROGRESS_FILE
        if create:
            prog = self._read_progress()
            if prog is not None and self._compatible(prog):
                self.chunk_size = int(prog["chunk_size"])
                self.resumed = True
                for f in self._partial_files():
                    reserve_file(self.dir / f)  # files of older versions are sparse
            else:
                self.chunk_size = int(chunk_size)
                self._create()
        else:
            prog = self._read_progress()
            if prog is None:
                raise CodepriorError(f"{progress_path}: missing (rank 0 must create the partial shards first)")
            self.chunk_size = int(prog["chunk_size"])
        self.n_chunks = max(1, -(-self.n // self.chunk_size))
        self._open()

    # ---- state files
    def _partial_files(self) -> tuple[str, ...]:
        return (PARTIAL_CODES, PARTIAL_LABELS, DONE_FILE) + ((PARTIAL_EMBED,) if self.embed_shape else ())

    def _read_progress(self) -> dict[str, Any] | None:
        path = self.dir / PROGRESS_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _compatible(self, prog: Mapping[str, Any]) -> bool:
        files_ok = all((self.dir / f).is_file() for f in self._partial_files())
        return (
            files_ok
            and prog.get("shape") == list(self.shape)
            and prog.get("dtype") == self.manifest["dtype"]
            and prog.get("fingerprint") == json.loads(json.dumps(self.fingerprint, default=str))
        )

    def _remove_partial(self) -> None:
        for f in (PROGRESS_FILE, DONE_FILE, PARTIAL_CODES, PARTIAL_LABELS, PARTIAL_EMBED):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f).unlink()

    def _create(self) -> None:
        """Fresh partial files, their space reserved up front (:func:`reserve_file`): a disk too small for the
        split is a one-line error now, never a bus error under the memmap later. Nothing stays on failure."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._remove_partial()
        n_chunks = max(1, -(-self.n // self.chunk_size))
        need = (
            int(np.prod(self.shape)) * np.dtype(self.manifest["dtype"]).itemsize
            + self.n * np.dtype(self.manifest["label_dtype"]).itemsize
            + n_chunks
            + (int(np.prod(self.embed_shape)) * 2 if self.embed_shape else 0)  # float16 embeddings
            + 4 * 4096  # .npy headers and file system blocks
        )
        free = free_bytes(self.dir)
        if 0 <= free < need:
            raise CodepriorError(
                f"{self.dir}: the {self.split} split needs {human_bytes(need)} ({need} bytes) of code shards, "
                f"only {human_bytes(free)} free on its disk; free some space or choose another --out"
            )
        try:
            self._create_files(n_chunks)
        except BaseException as e:
            err = disk_error(e, self.dir)  # before the partial files go: they hold what filled the disk
            self._remove_partial()
            if err is not None:
                raise CodepriorError(f"{err} (the {self.split} split needs {need} bytes)") from None
            raise

    def _create_files(self, n_chunks: int) -> None:
        np.lib.format.open_memmap(
            self.dir / PARTIAL_CODES, mode="w+", dtype=self.manifest["dtype"], shape=self.shape
        ).flush()
        np.lib.format.open_memmap(
            self.dir / PARTIAL_LABELS, mode="w+", dtype=self.manifest["label_dtype"], shape=(self.n,)
        ).flush()
        np.lib.format.open_memmap(self.dir / DONE_FILE, mode="w+", dtype=np.uint8, shape=(n_chunks,)).flush()
        if self.embed_shape:
            np.lib.format.open_memmap(
                self.dir / PARTIAL_EMBED, mode="w+", dtype=np.float16, shape=self.embed_shape
            ).flush()
        for f in self._partial_files():
            reserve_file(self.dir / f)
        write_json_atomic(
            self.dir / PROGRESS_FILE,
            {
                "shape": list(self.shape),
                "dtype": self.manifest["dtype"],
                "chunk_size": self.chunk_size,
                "n_chunks": n_chunks,
                "fingerprint": self.fingerprint,
            },
        )

    def _open(self) -> None:
        try:
            self.codes = np.lib.format.open_memmap(self.dir / PARTIAL_CODES, mode="r+")
            self.labels = np.lib.format.open_memmap(self.dir / PARTIAL_LABELS, mode="r+")
            self.done = np.lib.format.open_memmap(self.dir / DONE_FILE, mode="r+")
            if self.embed_shape:
                self.embeddings = np.lib.format.open_memmap(self.dir / PARTIAL_EMBED, mode="r+")
        except (OSError, ValueError) as e:
            raise CodepriorError(f"{self.dir}: cannot open partial shards ({type(e).__name__}: {e})") from None
        if tuple(self.codes.shape) != self.shape or self.done.shape != (self.n_chunks,):
            raise CodepriorError(
                f"{self.dir}: partial shards have shape {list(self.codes.shape)}, expected {list(self.shape)}"
            )

    # ---- writing
    def chunk_range(self, c: int) -> tuple[int, int]:
        return c * self.chunk_size, min(self.n, (c + 1) * self.chunk_size)

    def pending_chunks(self, chunks: range | list[int] | None = None) -> list[int]:
        chunks = range(self.n_chunks) if chunks is None else chunks
        return [c for c in chunks if not self.done[c]]

    def write_chunk(
        self,
        c: int,
        codes: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        embeddings: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Store chunk ``c`` (codes ``[b, n_aug, L]``, labels ``[b]``, and ``embeddings [b, n_aug, L, D]`` when the
        split stores them), flush, then mark it done."""
        s, e = self.chunk_range(c)
        codes = codes.cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
        labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if codes.shape != (e - s, *self.shape[1:]) or labels.shape != (e - s,):
            raise CodepriorError(
                f"{self.dir}: chunk {c} got codes {list(codes.shape)} / labels {list(labels.shape)}, "
                f"expected {[e - s, *self.shape[1:]]} / {[e - s]}"
            )
        if codes.size and (codes.min() < 0 or codes.max() >= self.manifest["codebook_size"]):
            raise CodepriorError(
                f"{self.dir}: tokenizer produced codes outside 0..{self.manifest['codebook_size'] - 1}"
            )
        if self.embed_shape:
            if embeddings is None:
                raise CodepriorError(f"{self.dir}: chunk {c}: this split stores embeddings; none were given")
            emb = embeddings.cpu().numpy() if isinstance(embeddings, torch.Tensor) else np.asarray(embeddings)
            if emb.shape != (e - s, *self.embed_shape[1:]):
                raise CodepriorError(
                    f"{self.dir}: chunk {c} got embeddings {list(emb.shape)}, expected {[e - s, *self.embed_shape[1:]]}"
                )
            assert self.embeddings is not None
            self.embeddings[s:e] = emb.astype(np.float16)
            self.embeddings.flush()
        self.codes[s:e] = codes
        self.labels[s:e] = labels
        self.codes.flush()
        self.labels.flush()
        self.done[c] = 1
        self.done.flush()

    def refresh(self) -> None:
        """Re-read the done mask (other processes wrote to it)."""
        self.done = np.lib.format.open_memmap(self.dir / DONE_FILE, mode="r+")

    def reopen(self) -> None:
        """Map the partial files afresh: the pages written so far leave this process's resident set (they stay in
        the page cache and the file), so a streaming writer's peak RSS does not grow with N."""
        self._open()

    def finalize(self, check: bool = True) -> dict[str, Any]:
        """Validate all chunks are done and (``check``) all codes in range, rename into place, update the manifest.
        ``check=False`` is for writers that checked every chunk's range before writing it."""
        self.refresh()
        missing = int((np.asarray(self.done) == 0).sum())
        if missing:
            raise CodepriorError(f"{self.dir}: {missing} of {self.n_chunks} chunks not written; rerun to resume")
        if check:
            check_code_array(self.codes, self.manifest["codebook_size"], str(self.dir / PARTIAL_CODES))
        manifest = merge_manifest(self.out_dir, self.manifest, self.split)
        remove_split_from_manifest(self.out_dir, self.split)
        del self.codes, self.labels, self.done  # close the memmaps before renaming
        self.embeddings = None
        if self.embed_shape:
            os.replace(self.dir / PARTIAL_EMBED, self.dir / EMBED_FILE)
        os.replace(self.dir / PARTIAL_CODES, self.dir / CODES_FILE)
        os.replace(self.dir / PARTIAL_LABELS, self.dir / LABELS_FILE)
        for f in (DONE_FILE, PROGRESS_FILE):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f).unlink()
        write_json_atomic(self.out_dir / MANIFEST, manifest)
        return manifest
