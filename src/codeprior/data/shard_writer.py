"""The resumable writer of code shards (:class:`ShardWriter`): a split is written in fixed chunks into reserved
``*.partial.npy`` files, its progress in ``.progress.json`` / ``.done.npy``, so a killed ``codeprior tokenize`` (or
``tokenize import-llamagen``) resumes where it stopped; :meth:`ShardWriter.finalize` checks the codes, renames the
files to the layout of :mod:`codeprior.data.codes` and adds the split to the manifest. Split from
:mod:`codeprior.data.codes`, which re-exports these names."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codeprior.data.codes import (
    CODES_FILE,
    EMBED_FILE,
    LABELS_FILE,
    MANIFEST,
    build_manifest,
    check_code_array,
    merge_manifest,
    remove_split_from_manifest,
)
from codeprior.errors import CodepriorError
from codeprior.utils.io import disk_error, free_bytes, human_bytes, write_json_atomic

__all__ = [
    "ShardWriter",
    "reserve_file",
    "PROGRESS_FILE",
    "DONE_FILE",
    "PARTIAL_CODES",
    "PARTIAL_LABELS",
    "PARTIAL_EMBED",
]


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
