"""Import LlamaGen's pre-extracted code folders into code shards (``codeprior tokenize import-llamagen``).

LlamaGen's ``autoregressive/train/extract_codes_c2i.py`` (FoundationVision/LlamaGen @ce98ec4; DCPE's
ali-vilab/DCPE @c5e4485 and IAR's sjtuplayer/IAR @a46074a ship the same script) writes two small files per image::

    CODE_PATH/{dataset}{SIZE}_codes/{i}.npy    int64 [1, n_aug, L]   (n_aug 10 with --ten-crop, else 2: image, flip)
    CODE_PATH/{dataset}{SIZE}_labels/{i}.npy   int64 [1]

``i`` runs over 0..N-1 in dataset order (rank r of W writes r, r+W, ...), so file ``i`` is image ``i``. This module
streams those files into one split of a shard directory (:mod:`codeprior.data.codes`): files are read in chunks
(by a few threads) into a fixed buffer and written through :class:`~codeprior.data.codes.ShardWriter`, so memory
does not grow with N, a killed import resumes at the first unfinished chunk, and the split appears in the
manifest only once complete. Every augmentation is kept on the ``n_aug`` axis.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from codeprior.data.codes import (
    MANIFEST,
    PARTIAL_CODES,
    PROGRESS_FILE,
    ShardWriter,
    build_manifest,
    code_dtype,
    read_manifest,
)
from codeprior.errors import CodepriorError
from codeprior.utils.lock import LOCK_NAME
from codeprior.utils.paths import show
from codeprior.utils.progress import progress

_CODES_DIR = re.compile(r"^(?P<dataset>.*?)(?P<size>\d+)_codes$")
_NUMBERED = re.compile(r"^(0|[1-9][0-9]*)\.npy$")
# Without --codebook-size / --tokenizer / --num-classes the vocabulary and class count come from the data, known
# only at the end; the partial files use these dtypes meanwhile (every LlamaGen, IAR and DCPE tokenizer has 16384
# codes). A larger value stops the import with a request for the flag.
_PROVISIONAL_CODEBOOK = 1 << 16  # uint16
_PROVISIONAL_CLASSES = 1 << 15  # int16 labels
_MAX_FILE = "import_max.npy"  # per chunk: largest code, largest label (written before the chunk is marked done)
_PADDING_PROBE = 255  # the most trailing DistributedSampler-padding files looked for (one fewer than the GPUs)

#: torchvision's TenCrop order: five_crop(img) then five_crop(hflip(img)), five_crop = tl, tr, bl, br, center
TEN_CROP = [f"{f}{c}" for f in ("", "hflip_") for c in ("crop_tl", "crop_tr", "crop_bl", "crop_br", "crop_center")]
AUGMENTATIONS = {1: ["identity"], 2: ["identity", "hflip"], 10: TEN_CROP}


@dataclass(frozen=True)
class CodeFolder:
    """A located LlamaGen code folder pair (see :func:`find_code_folder`)."""

    codes: Path
    labels: Path
    dataset: str  # the extract script's --dataset ("imagenet"; DCPE also writes "imagenet_val")
    image_size: int  # the extract script's --image-size, from the folder name


def find_code_folder(code_dir: str | os.PathLike) -> CodeFolder:
    """``CODE_DIR`` may be LlamaGen's ``--code-path`` (holding one ``{dataset}{SIZE}_codes`` folder) or that
    ``..._codes`` folder itself; its ``..._labels`` sibling must exist."""
    root = Path(code_dir)
    if not root.is_dir():
        raise CodepriorError(f"{show(root)}: {'not a folder' if root.exists() else 'no such folder'}")
    name = root.name
    if name.endswith("_labels") and _CODES_DIR.match(name[: -len("_labels")] + "_codes"):
        root, name = root.with_name(name[: -len("_labels")] + "_codes"), name[: -len("_labels")] + "_codes"
    m = _CODES_DIR.match(name)
    if m is None:
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and _CODES_DIR.match(p.name))
        if not found:
            raise CodepriorError(
                f"{show(root)}: no {{dataset}}{{SIZE}}_codes folder (e.g. imagenet256_codes, what LlamaGen's "
                "extract_codes_c2i.py writes under --code-path)"
            )
        if len(found) > 1:
            raise CodepriorError(f"{show(root)}: several code folders ({', '.join(found)}); name one of them")
        root = root / found[0]
        m = _CODES_DIR.match(found[0])
        assert m is not None
    if not root.is_dir():
        raise CodepriorError(f"{show(root)}: no such folder")
    labels = root.with_name(f"{m['dataset']}{m['size']}_labels")
    if not labels.is_dir():
        raise CodepriorError(f"{show(labels)}: no such folder (the labels beside {root.name})")
    return CodeFolder(root.resolve(), labels.resolve(), m["dataset"], int(m["size"]))


def scan_numbered(folder: Path) -> tuple[int, int]:
    """``(count, largest index)`` of the files ``{i}.npy`` in ``folder``, streamed (nothing kept per file).
    Other ``.npy`` names (``007.npy``, ``a.npy``) are refused; other files are ignored."""
    count, top = 0, -1
    with os.scandir(folder) as it:
        for e in it:
            if not e.name.endswith(".npy"):
                continue
            if not _NUMBERED.match(e.name):
                raise CodepriorError(
                    f"{show(folder / e.name)}: not a LlamaGen code file name ({{i}}.npy, i = 0, 1, ...)"
                )
            count += 1
            top = max(top, int(e.name[:-4]))
    return count, top


def _first_gap(folder: Path, upto: int) -> int:
    """The smallest index in 0..upto-1 without a file (one byte per index: only on the error path)."""
    seen = np.zeros(upto, dtype=bool)
    with os.scandir(folder) as it:
        for e in it:
            if _NUMBERED.match(e.name) and int(e.name[:-4]) < upto:
                seen[int(e.name[:-4])] = True
    return int(np.argmin(seen)) if not seen.all() else upto


def count_files(folder: CodeFolder) -> int:
    """N, checking that both folders hold exactly ``0.npy .. {N-1}.npy`` (one-line error naming a missing file)."""
    n = {}
    for f in (folder.codes, folder.labels):
        count, top = scan_numbered(f)
        if count == 0:
            raise CodepriorError(f"{show(f)}: no {{i}}.npy files")
        if count != top + 1:
            gap = _first_gap(f, top + 1)
            raise CodepriorError(
                f"{show(f / f'{gap}.npy')}: missing ({count} files numbered up to {top}: the numbering has gaps)"
            )
        n[f] = count
    nc, nl = n[folder.codes], n[folder.labels]
    if nc != nl:
        short, longer = (folder.labels, folder.codes) if nl < nc else (folder.codes, folder.labels)
        m = min(nc, nl)
        raise CodepriorError(
            f"{show(short / f'{m}.npy')}: missing ({longer.name} has {max(nc, nl)} files, {short.name} {m})"
        )
    return nc


# --------------------------------------------------------------------------------------------------- file reading
def _read_bytes(path: Path, size_hint: int) -> bytes:
    """The whole file; a file of exactly ``size_hint`` bytes (the usual case) costs one ``read`` call."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise CodepriorError(f"{show(path)}: no such file (removed during the import?)") from None
    except OSError as e:
        raise CodepriorError(f"{show(path)}: cannot open ({e.strerror})") from None
    try:
        data = os.read(fd, size_hint + 1)
        if len(data) == size_hint:  # a regular file returns less than asked only at its end
            return data
        parts = [data]
        while parts[-1]:
            parts.append(os.read(fd, 1 << 20))
        return b"".join(parts)
    finally:
        os.close(fd)


def _parse(path: Path, data: bytes) -> np.ndarray:
    """A ``.npy`` payload as an array (any valid header), or a one-line error naming the file."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # numpy raises ValueError / OSError / EOFError for corrupt files
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CodepriorError(f"{show(path)}: not a readable .npy file ({msg})") from None
    if not isinstance(arr, np.ndarray):
        raise CodepriorError(f"{show(path)}: expected one array, got an archive")
    return arr


def _header(data: bytes) -> tuple[bool, int]:
    """``(C-ordered, payload offset)`` of a valid ``.npy`` file's bytes (format 3.0 headers count as not C-ordered,
    so such files always take the full parse)."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        return False, 0
    _, fortran, _ = readers[version](f)
    return not fortran, f.tell()


class _NpyReader:
    """Reads same-shaped ``.npy`` files fast: a file whose header bytes equal the first file's (so the same dtype,
    shape and order) and whose length matches is decoded with ``np.frombuffer`` on its payload; any other file is
    parsed in full and checked. Only the re-parsing of an identical header is skipped."""

    def __init__(self, first: Path, what: str, shape_check: Callable[[Path, np.ndarray], None]) -> None:
        self.what = what
        self.check = shape_check
        data = _read_bytes(first, 1 << 16)
        arr = _parse(first, data)
        shape_check(first, arr)
        c_order, offset = _header(data)
        self.shape = tuple(arr.shape)
        self.dtype = arr.dtype
        self.header = data[:offset]
        self.size = offset + arr.nbytes
        self.fast = c_order and len(data) == self.size  # np.save writes C order; anything else is parsed

    def read(self, path: Path) -> np.ndarray:
        data = _read_bytes(path, self.size)
        if self.fast and len(data) == self.size and data.startswith(self.header):
            return np.frombuffer(data, dtype=self.dtype, offset=len(self.header)).reshape(self.shape)
        arr = _parse(path, data)
        self.check(path, arr)
        if tuple(arr.shape) != self.shape:
            raise CodepriorError(
                f"{show(path)}: {self.what} shape {list(arr.shape)} differs from the first file's {list(self.shape)} "
                "(every file of one folder must have the same n_aug and length)"
            )
        return arr


def _check_codes_array(path: Path, arr: np.ndarray) -> None:
    if not np.issubdtype(arr.dtype, np.integer):
        raise CodepriorError(f"{show(path)}: codes must be integers, got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[0] != 1 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise CodepriorError(
            f"{show(path)}: expected codes of shape [1, n_aug, L] (LlamaGen's extract_codes_c2i.py), "
            f"got {list(arr.shape)}"
        )


def _check_label_array(path: Path, arr: np.ndarray) -> None:
    if not np.issubdtype(arr.dtype, np.integer):
        raise CodepriorError(f"{show(path)}: label must be an integer, got dtype {arr.dtype}")
    if arr.shape != (1,):
        raise CodepriorError(f"{show(path)}: expected a label of shape [1], got {list(arr.shape)}")


def grid_of(seq_len: int, where: str) -> list[int]:
    """``[h, w]`` of a square code grid of ``seq_len`` tokens (non-square lengths are refused)."""
    h = math.isqrt(seq_len)
    if h * h != seq_len:
        raise CodepriorError(
            f"{where}: {seq_len} codes per image is not a square grid (LlamaGen's grids are image_size/16 squared)"
        )
    return [h, h]


def sampler_padding(folder: CodeFolder, n: int, codes: _NpyReader, labels: _NpyReader) -> int:
    """How many trailing files repeat files ``0, 1, ...`` exactly (codes and label), as the padding of torch's
    ``DistributedSampler`` does when N is not a multiple of the number of GPUs; 0 when none."""
    tail = min(_PADDING_PROBE, n // 2)
    if tail == 0:
        return 0

    def pair(i: int) -> tuple[bytes, bytes]:
        return (
            codes.read(folder.codes / f"{i}.npy").tobytes(),
            labels.read(folder.labels / f"{i}.npy").tobytes(),
        )

    cache: dict[int, tuple[bytes, bytes]] = {}

    def get(i: int) -> tuple[bytes, bytes]:
        if i not in cache:
            cache[i] = pair(i)
        return cache[i]

    best = 0
    for k in range(1, tail + 1):
        if get(n - k) == get(0) and all(get(n - k + j) == get(j) for j in range(1, k)):
            best = k
    return best


# --------------------------------------------------------------------------------------------------- provenance
def tokenizer_record(path: str | os.PathLike) -> dict[str, Any]:
    """What the manifest records of ``--tokenizer`` (as ``codeprior tokenize`` does): the path, the file's SHA-256,
    the codebook's hash and size. Reads the file once with ``weights_only=True``; no model is built."""
    from codeprior.codebook import load_codebook
    from codeprior.utils.io import sha256_file, sha256_tensor

    cb = load_codebook(path)
    return {
        "tokenizer": str(Path(path).resolve()),
        "tokenizer_sha256": sha256_file(path),
        "codebook_sha256": sha256_tensor(cb),
        "codebook_size": int(cb.shape[0]),
    }


# --------------------------------------------------------------------------------------------------- import
def _check_out(out_dir: Path) -> None:
    """Refuse a non-empty ``--out`` that is not a shard directory (one with a manifest, or a partial split)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise CodepriorError(f"{show(out_dir)}: exists and is not a folder")
    if (out_dir / MANIFEST).is_file() or any(out_dir.glob(f"*/{PROGRESS_FILE}")):
        return
    with os.scandir(out_dir) as it:
        if any(e.name != LOCK_NAME for e in it):  # the command's own lock on the folder is not foreign
            raise CodepriorError(
                f"{show(out_dir)}: not empty and not a code-shard directory; choose a new or empty --out"
            )


def _check_joins(existing: dict[str, Any], split: str, want: dict[str, Any], out_dir: Path) -> None:
    """Before any work: a split added to a shard directory must share the other splits' grid, augmentations,
    tokenizer, vocabulary and classes (what :func:`codeprior.data.codes.merge_manifest` checks at the end)."""
    others = sorted(s for s in existing["splits"] if s != split)
    diff = [f"{k}: {existing.get(k)!r} there vs {v!r} here" for k, v in want.items() if existing.get(k) != v]
    if others and diff:
        raise CodepriorError(
            f"{show(out_dir / MANIFEST)}: split {split!r} would differ from {', '.join(others)} in "
            f"{'; '.join(diff)}; use another --out"
        )


def import_llamagen(
    code_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str = "train",
    tokenizer: str | os.PathLike | None = None,
    codebook_size: int | None = None,
    num_classes: int | None = None,
    num_images: int | None = None,
    chunk_size: int = 1024,
    workers: int = 4,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Import ``CODE_DIR/{dataset}{SIZE}_codes`` + ``_labels`` as split ``split`` of ``out_dir``; returns the manifest.

    ``codebook_size`` / ``num_classes`` default to the tokenizer's codebook (``tokenizer``), then to an existing
    manifest in ``out_dir``, then to the largest code / label + 1. ``num_images`` imports files ``0..num_images-1``
    only (e.g. to drop DistributedSampler padding). Resumable: the same call after an interruption continues at
    the first unfinished chunk and gives the same bytes. ``warn`` (default: stderr) receives the notes.
    """
    warn = warn or (lambda msg: print(f"codeprior: note: {msg}", file=sys.stderr, flush=True))
    out_dir = Path(out_dir)
    if chunk_size < 1 or workers < 1:
        raise CodepriorError(f"chunk size and workers must be >= 1, got {chunk_size} and {workers}")
    folder = find_code_folder(code_dir)
    _check_out(out_dir)
    record: dict[str, Any] = {"tokenizer": None, "tokenizer_sha256": None, "codebook_sha256": None}
    if tokenizer is not None:
        rec = tokenizer_record(tokenizer)
        tok_size = rec.pop("codebook_size")
        if codebook_size is not None and codebook_size != tok_size:
            raise CodepriorError(
                f"{show(tokenizer)}: codebook has {tok_size} codes but --codebook-size says {codebook_size}"
            )
        codebook_size = tok_size
        record.update(rec)
    else:
        warn(
            "no --tokenizer given: the shards record no tokenizer or codebook hash, so a prior or a sampler's "
            "tokenizer cannot be checked against them (pass --tokenizer VQ.pt to record it)"
        )
    n_files = count_files(folder)
    codes_reader = _NpyReader(folder.codes / "0.npy", "codes", _check_codes_array)
    labels_reader = _NpyReader(folder.labels / "0.npy", "label", _check_label_array)
    _, n_aug, seq_len = codes_reader.shape
    grid = grid_of(seq_len, show(folder.codes / "0.npy"))
    if num_images is not None:
        if not 1 <= num_images <= n_files:
            raise CodepriorError(f"{show(folder.codes)}: --num-images {num_images} outside 1..{n_files} (files found)")
        n = num_images
    else:
        n = n_files
        pad = sampler_padding(folder, n, codes_reader, labels_reader)
        if pad:
            warn(
                f"{show(folder.codes)}: "
                + (
                    f"the last {pad} files ({n - pad}..{n - 1}) repeat files 0..{pad - 1}"
                    if pad > 1
                    else f"the last file ({n - 1}) repeats file 0"
                )
                + ": the "
                "padding torch's DistributedSampler adds when N is not a multiple of the GPU count (LlamaGen's own "
                f"dataset reads 1281167 files for ImageNet). Importing all {n}; pass --num-images {n - pad} to drop them."
            )

    existing = read_manifest(out_dir) if (out_dir / MANIFEST).is_file() else None
    if existing is not None and any(s != split for s in existing["splits"]):
        # a second split (val next to train) joins the first one's vocabulary and classes
        codebook_size = codebook_size or int(existing["codebook_size"])
        num_classes = num_classes or int(existing["num_classes"])
        _check_joins(
            existing,
            split,
            {
                "grid": grid,
                "n_aug": int(n_aug),
                "tokenizer_sha256": record["tokenizer_sha256"],
                "codebook_size": codebook_size,
                "num_classes": num_classes,
            },
            out_dir,
        )
    given_vocab, given_classes = codebook_size, num_classes

    meta: dict[str, Any] = {
        "dataset": f"{folder.dataset}{folder.image_size} (LlamaGen code folder)",
        "data_dir": None,
        "source_format": "llamagen-extract-codes-c2i",
        "image_size": folder.image_size,
        "downsample": folder.image_size // grid[0] if folder.image_size % grid[0] == 0 else None,
        "class_names": None,
        "grid": grid,
        "n_aug": int(n_aug),
        "augmentations": AUGMENTATIONS.get(int(n_aug), [f"aug{a}" for a in range(n_aug)]),
        "augmentation_note": (
            "LlamaGen ten-crop (--ten-crop): five crops of a center crop enlarged by --crop-range (1.1 by default; "
            "not recorded in the files), then their mirrors"
            if n_aug == 10
            else "LlamaGen's extract_codes_c2i.py: the image and its horizontal flip"
            if n_aug == 2
            else "as written by the extract script"
        ),
        **record,
        "codebook_size": codebook_size or _PROVISIONAL_CODEBOOK,
        "num_classes": num_classes or _PROVISIONAL_CLASSES,
    }
    source = {"codes": str(folder.codes), "labels": str(folder.labels), "files": n}
    chunk_size = min(chunk_size, n)  # a chunk larger than the split would only size the buffers below
    fingerprint = {
        "source": source,
        "grid": grid,
        "n_aug": int(n_aug),
        "tokenizer_sha256": record["tokenizer_sha256"],
        "codebook_size": given_vocab,
        "num_classes": given_classes,
    }

    final = out_dir / split / "codes.npy"
    if existing is not None and split in existing["splits"] and final.is_file():
        if existing["splits"][split].get("import_fingerprint") == _jsonable(fingerprint) and not overwrite:
            log(f"{show(out_dir / split)}: already imported from {show(folder.codes)}; skipping (--overwrite to redo)")
            return existing
        if not overwrite:
            raise CodepriorError(
                f"{show(out_dir / split)}: already holds split {split!r} from other input or settings; "
                "pass --overwrite to replace it"
            )

    writer = ShardWriter(out_dir, split, n, meta, chunk_size=chunk_size, create=True, fingerprint=fingerprint)
    maxima = _open_maxima(writer)
    if maxima is None:  # finished chunks whose maxima are lost (a file removed by hand): start the split over
        (writer.dir / PROGRESS_FILE).unlink()
        writer = ShardWriter(out_dir, split, n, meta, chunk_size=chunk_size, create=True, fingerprint=fingerprint)
        maxima = _open_maxima(writer)
        assert maxima is not None
    pending = writer.pending_chunks()
    if writer.resumed and len(pending) < writer.n_chunks:
        log(f"{show(out_dir / split)}: resuming, {writer.n_chunks - len(pending)} of {writer.n_chunks} chunks done")
    vocab_limit = int(writer.manifest["codebook_size"])
    class_limit = int(writer.manifest["num_classes"])
    dtype = np.dtype(writer.manifest["dtype"])
    buf = np.empty((writer.chunk_size, n_aug, seq_len), dtype=np.int64)
    lab = np.empty(writer.chunk_size, dtype=np.int64)

    def fill(j: int, i: int) -> None:
        buf[j] = codes_reader.read(folder.codes / f"{i}.npy")[0]
        lab[j] = labels_reader.read(folder.labels / f"{i}.npy")[0]

    t0 = time.perf_counter()
    n_todo = sum(e - s for s, e in map(writer.chunk_range, pending))
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        with progress(total=n_todo, unit="file", desc=f"import {folder.codes.name}") as bar:
            for c in pending:
                s, e = writer.chunk_range(c)
                b = e - s
                if pool is None:
                    for j in range(b):
                        fill(j, s + j)
                else:
                    list(pool.map(fill, range(b), range(s, e)))
                codes, labels = buf[:b], lab[:b]
                _check_range(codes, labels, s, folder, vocab_limit, class_limit, given_vocab, given_classes)
                maxima[c] = (int(codes.max()), int(labels.max()))
                maxima.flush()  # before the chunk is marked done, so a done chunk always has its maxima
                writer.write_chunk(c, codes.astype(dtype), labels)
                writer.reopen()  # unmap what was written: the resident set stays one chunk, whatever N
                bar.update(b)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - t0

    top_code, top_label = (int(v) for v in np.asarray(maxima).max(axis=0))
    if given_vocab is None:
        warn(f"{show(folder.codes)}: vocabulary {top_code + 1} taken from the largest code (pass --codebook-size)")
    if given_classes is None:
        warn(f"{show(folder.labels)}: {top_label + 1} classes taken from the largest label (pass --num-classes)")
    meta["codebook_size"] = given_vocab or top_code + 1
    meta["num_classes"] = given_classes or top_label + 1
    writer.manifest = build_manifest(meta, split, n)
    writer.manifest["splits"][split]["import_fingerprint"] = _jsonable(fingerprint)
    _narrow_codes(writer)
    del maxima
    manifest = writer.finalize(check=False)  # every chunk's range was checked before it was written
    with contextlib.suppress(FileNotFoundError):
        (writer.dir / _MAX_FILE).unlink()
    rate = n_todo / seconds if seconds > 0 else float("inf")
    log(
        f"{show(out_dir / split)}: {n} images x {n_aug} augmentation(s), grid {grid[0]}x{grid[1]}, codebook "
        f"{manifest['codebook_size']} ({manifest['dtype']}), {manifest['num_classes']} classes "
        f"({n_todo} files in {seconds:.1f} s, {rate:.0f} files/s)"
    )
    return manifest


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


def _open_maxima(writer: ShardWriter) -> np.memmap | None:
    """The per-chunk maxima file beside the partial shards (a fresh writer gets a fresh one); None when a resumed
    writer has finished chunks but no usable maxima file (then the caller starts the split over)."""
    path = writer.dir / _MAX_FILE
    if writer.resumed and path.is_file():
        with contextlib.suppress(OSError, ValueError):
            m = np.lib.format.open_memmap(path, mode="r+")
            if m.shape == (writer.n_chunks, 2) and m.dtype == np.int64:
                return m
    if writer.resumed and np.asarray(writer.done).any():
        return None
    m = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(writer.n_chunks, 2))
    m.flush()
    return m


def _check_range(
    codes: np.ndarray,
    labels: np.ndarray,
    start: int,
    folder: CodeFolder,
    vocab: int,
    classes: int,
    given_vocab: int | None,
    given_classes: int | None,
) -> None:
    """One-line error naming the first file with a code outside ``0..vocab-1`` or a label outside ``0..classes-1``."""
    if codes.size and (codes.min() < 0 or codes.max() >= vocab):
        j = int(np.argmax(((codes < 0) | (codes >= vocab)).reshape(len(codes), -1).any(axis=1)))
        row = codes[j]
        bad = int(row.min()) if row.min() < 0 else int(row.max())
        why = (
            "negative"
            if bad < 0
            else f">= codebook size {vocab}"
            if given_vocab is not None
            else f"> {vocab - 1}: pass --codebook-size (or --tokenizer) to store it"
        )
        raise CodepriorError(f"{show(folder.codes / f'{start + j}.npy')}: code {bad} {why}")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        j = int(np.argmax((labels < 0) | (labels >= classes)))
        bad = int(labels[j])
        why = (
            "negative"
            if bad < 0
            else f">= --num-classes {classes}"
            if given_classes is not None
            else f"> {classes - 1}: pass --num-classes"
        )
        raise CodepriorError(f"{show(folder.labels / f'{start + j}.npy')}: label {bad} {why}")


def _narrow_codes(writer: ShardWriter, chunk: int = 1 << 14) -> None:
    """Rewrite the partial codes in the final (smaller) dtype when the inferred vocabulary needs fewer bits than the
    provisional one; chunked (both files mapped afresh per chunk), through a temporary file renamed into place."""
    want = code_dtype(int(writer.manifest["codebook_size"]))
    if writer.codes.dtype == want:
        return
    path = writer.dir / PARTIAL_CODES
    tmp = writer.dir / f".{PARTIAL_CODES}.narrow.tmp"
    shape = writer.codes.shape
    writer.codes = None  # type: ignore[assignment]  # unmap the old file before it is replaced
    np.lib.format.open_memmap(tmp, mode="w+", dtype=want, shape=shape).flush()
    for s in range(0, shape[0], chunk):
        src = np.load(path, mmap_mode="r")
        dst = np.lib.format.open_memmap(tmp, mode="r+")
        dst[s : s + chunk] = src[s : s + chunk]
        dst.flush()
        del src, dst
    os.replace(tmp, path)
    writer.codes = np.lib.format.open_memmap(path, mode="r+")
