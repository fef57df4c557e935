"""Image datasets: Fashion-MNIST / MNIST from IDX files, and class-per-folder image trees (ImageNet layout).

* :func:`load_idx` reads the IDX files distributed by the dataset authors (gzip-compressed or raw), as
  installed by Debian's ``dataset-fashion-mnist`` under ``/usr/share/datasets/fashion-mnist/``. Every header
  field is validated, so a truncated or corrupt file gives one clear error naming it.
* :func:`build_image_dataset` returns a ``torch.utils.data.Dataset`` of ``(float [C, H, W] in [-1, 1], label)``.
  Image folders get LlamaGen's (ADM-style) center crop: halve with a box filter while the short side is at least
  twice the target, resize with bicubic so the short side equals the target, crop the center.
* :func:`save_image_grid` writes a PNG grid of images (atomically); other modules use it for sample grids.

PIL does the image decoding and resampling (no torchvision dependency); numpy holds the IDX arrays.
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from codeprior.errors import CodepriorError
from codeprior.idx_datasets import IDX_DATASETS
from codeprior.utils.io import atomic_path

DEFAULT_DATA_ROOT = Path("/usr/share/datasets")
DEFAULT_FOLDER_IMAGE_SIZE = 256
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")

FASHION_MNIST_CLASSES = list(IDX_DATASETS["fashion-mnist"].class_names)
MNIST_CLASSES = list(IDX_DATASETS["mnist"].class_names)

_IDX_PREFIX = {"train": "train", "test": "t10k"}
# IDX type codes -> numpy dtype (big-endian for multi-byte types, as the format specifies).
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# --------------------------------------------------------------------------------------------------- IDX files
def read_idx_file(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a numpy array; validate magic number, dims and size."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise CodepriorError(f"{path}: no such file") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise CodepriorError(f"{path}: corrupt or truncated gzip file ({type(e).__name__}: {e})") from None
    if len(data) < 4:
        raise CodepriorError(f"{path}: not an IDX file (only {len(data)} bytes)")
    zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in _IDX_TYPES or not 1 <= ndim <= 4:
        raise CodepriorError(f"{path}: not an IDX file (bad magic number 0x{data[:4].hex()})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CodepriorError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[type_code]
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise CodepriorError(f"{path}: IDX file {kind}: dims {list(dims)} need {expected} bytes, found {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_search_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """``data_dir`` and ``data_dir/<name>`` when given (never a silent fallback to the system copy), else the
    system dataset folder."""
    if data_dir is None:
        return [DEFAULT_DATA_ROOT / name]
    if not Path(data_dir).is_dir():
        raise CodepriorError(f"{data_dir}: --data-dir: no such directory")
    return [Path(data_dir), Path(data_dir) / name]


def _find_idx(name: str, stem: str, data_dir: str | os.PathLike | None) -> Path:
    dirs = _idx_search_dirs(name, data_dir)
    for d in dirs:
        for cand in (d / f"{stem}.gz", d / stem):
            if cand.is_file():
                return cand
    hint = IDX_DATASETS[name].install_hint if name in IDX_DATASETS else f"download the {name} IDX files"
    where = " or ".join(str(d) for d in dirs)
    raise CodepriorError(
        f"{dirs[0] / (stem + '.gz')}: {name} not found (looked in {where}); "
        f"{hint}, or pass --data-dir DIR holding {stem}[.gz]"
    )


def load_idx(
    name: str = "fashion-mnist", split: str = "train", data_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load Fashion-MNIST or MNIST: ``(uint8 images [N, H, W], int64 labels [N])``.

    Looks in ``data_dir`` (and ``data_dir/<name>``) first, then ``/usr/share/datasets/<name>/``; files are
    the original names (``train-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``, ...).
    """
    if name not in IDX_DATASETS:
        raise CodepriorError(f"{name}: unknown IDX dataset (expected one of {', '.join(IDX_DATASETS)})")
    if split not in _IDX_PREFIX:
        raise CodepriorError(f"{name}: unknown split {split!r} (expected train or test)")
    prefix = _IDX_PREFIX[split]
    img_path = _find_idx(name, f"{prefix}-images-idx3-ubyte", data_dir)
    lab_path = _find_idx(name, f"{prefix}-labels-idx1-ubyte", data_dir)
    images = read_idx_file(img_path)
    labels = read_idx_file(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise CodepriorError(f"{img_path}: expected uint8 images [N, H, W], got {images.dtype} {list(images.shape)}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise CodepriorError(f"{lab_path}: expected uint8 labels [N], got {labels.dtype} {list(labels.shape)}")
    if len(labels) != len(images):
        raise CodepriorError(f"{lab_path}: {len(labels)} labels but {img_path.name} has {len(images)} images")
    if len(labels) and int(labels.max()) >= 10:
        raise CodepriorError(f"{lab_path}: label {int(labels.max())} out of range 0..9")
    return images, labels.astype(np.int64)


# --------------------------------------------------------------------------------------------------- transforms
def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM / LlamaGen center crop: box-halve while the short side >= 2*size, bicubic to short side = size, crop."""
    while min(image.size) >= 2 * image_size:
        image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=Image.Resampling.BOX)
    scale = image_size / min(image.size)
    image = image.resize(
        (round(image.size[0] * scale), round(image.size[1] * scale)), resample=Image.Resampling.BICUBIC
    )
    arr = np.asarray(image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 [H, W] or [H, W, C] -> float [C, H, W] in [-1, 1]."""
    arr = np.ascontiguousarray(arr)
    t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
    return t.float().div_(127.5).sub_(1.0)


def uint8_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W] batch -> float in [-1, 1] (the same mapping as :func:`to_tensor`)."""
    return images.float().div_(127.5).sub_(1.0)


# --------------------------------------------------------------------------------------------------- datasets
class IdxImageDataset(Dataset):
    """In-memory grayscale dataset from IDX arrays; ``(float [1, H, W] in [-1, 1], label)``.

    ``image_size`` other than the native size resizes with the same center crop as image folders.
    ``flip`` applies a random horizontal flip (p = 0.5) drawn from torch's RNG (seeded per DataLoader worker).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        image_size: int | None = None,
        flip: bool = False,
        name: str = "idx",
    ) -> None:
        self.images = images
        self.targets = np.asarray(labels, dtype=np.int64)
        self.native_size = int(images.shape[1])
        self.image_size = int(image_size or self.native_size)
        self.flip = flip
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def _array(self, i: int) -> np.ndarray:
        arr = self.images[i]
        if self.image_size != self.native_size or arr.shape[0] != arr.shape[1]:
            arr = center_crop_arr(Image.fromarray(arr), self.image_size)
        return arr

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = to_tensor(self._array(i))
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.targets[i])

    def get_batch(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``start:stop`` as one float batch [B, 1, H, W] without augmentation (fast path for encoding)."""
        if self.image_size == self.native_size and self.images.shape[1] == self.images.shape[2]:
            x = uint8_to_float(torch.from_numpy(np.ascontiguousarray(self.images[start:stop]))).unsqueeze(1)
        else:
            x = torch.stack([to_tensor(self._array(i)) for i in range(start, stop)])
        return x, torch.from_numpy(self.targets[start:stop])


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` tree (one subfolder per class, class index = sorted folder names).

    Images load with PIL, convert to RGB, get the LlamaGen center crop to ``image_size`` and an optional random
    horizontal flip. A file PIL cannot decode raises a CodepriorError naming it.
    """

    def __init__(
        self, root: str | os.PathLike, image_size: int = DEFAULT_FOLDER_IMAGE_SIZE, flip: bool = False
    ) -> None:
        self.root = Path(root)
        self.classes = _folder_classes(self.root)
        self.image_size = int(image_size)
        self.flip = flip
        samples: list[tuple[Path, int]] = []
        for ci, cname in enumerate(self.classes):
            for dirpath, dirnames, filenames in os.walk(self.root / cname, followlinks=True):
                dirnames.sort()
                for fn in sorted(filenames):
                    if fn.lower().endswith(IMAGE_EXTENSIONS) and not fn.startswith("."):
                        samples.append((Path(dirpath) / fn, ci))
        if not samples:
            raise CodepriorError(f"{self.root}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
        self.samples = samples
        self.targets = np.array([c for _, c in samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 [size, size, 3] after the center crop (no flip)."""
        path = self.samples[i][0]
        try:
            with Image.open(path) as f:
                f.load()
                im = f.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise CodepriorError(
                f"{path}: cannot read image ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
            ) from None
        return center_crop_arr(im, self.image_size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = to_tensor(self.load(i))
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.targets[i])


def _folder_classes(root: Path) -> list[str]:
    if not root.is_dir():
        raise CodepriorError(f"{root}: no such directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise CodepriorError(f"{root}: no class subfolders (expected root/<class>/<image files>)")
    return classes


_SPLIT_DIRS = {"train": ("train",), "val": ("val", "test"), "test": ("test", "val")}


def resolve_folder_split(root: str | os.PathLike, split: str) -> Path:
    """The folder holding ``split``: ``root/train`` / ``root/val`` (or ``root/test``) if present, else root itself."""
    root = Path(root)
    if not root.is_dir():
        raise CodepriorError(f"{root}: no such directory (expected fashion-mnist, mnist or an image folder)")
    if split not in _SPLIT_DIRS:
        raise CodepriorError(f"{root}: unknown split {split!r} (expected train, val or test)")
    for name in _SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    present = [n for n in ("train", "val", "test") if (root / n).is_dir()]
    if present:
        raise CodepriorError(f"{root}: no {split!r} split (found {', '.join(present)})")
    return root


def _is_idx(spec: str | os.PathLike) -> bool:
    return isinstance(spec, str) and spec in IDX_DATASETS


def build_image_dataset(
    spec: str | os.PathLike,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    flip: bool = False,
) -> IdxImageDataset | ImageFolderDataset:
    """Dataset of ``(float [C, H, W] in [-1, 1], int label)`` for ``fashion-mnist``, ``mnist`` or an image folder.

    ``image_size`` defaults to 28 for the IDX datasets and 256 for image folders; ``flip`` turns on random
    horizontal flips (training augmentation). Datasets expose ``.targets`` (int64 labels, no image loading).
    """
    if _is_idx(spec):
        images, labels = load_idx(str(spec), split, data_dir)
        return IdxImageDataset(images, labels, image_size=image_size, flip=flip, name=str(spec))
    root = resolve_folder_split(spec, split)
    return ImageFolderDataset(root, image_size=image_size or DEFAULT_FOLDER_IMAGE_SIZE, flip=flip)


def dataset_info(spec: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """``dict(num_classes, channels, image_size, class_names)`` for a dataset spec (no image is loaded).

    Image folders report 3 channels (images convert to RGB) and the default size 256; class names are the
    sorted folder names of the training split.
    """
    if _is_idx(spec):
        names = IDX_DATASETS[str(spec)].class_names
        return {"num_classes": 10, "channels": 1, "image_size": 28, "class_names": list(names)}
    try:
        root = resolve_folder_split(spec, "train")
    except CodepriorError:
        root = resolve_folder_split(spec, "val")  # a tree with only val/ (or test/)
    classes = _folder_classes(root)
    return {"num_classes": len(classes), "channels": 3, "image_size": DEFAULT_FOLDER_IMAGE_SIZE, "class_names": classes}


# --------------------------------------------------------------------------------------------------- grids
def make_image_grid(
    images: torch.Tensor | np.ndarray, nrow: int = 8, padding: int = 2, pad_value: int = 255
) -> np.ndarray:
    """Tile ``[N, C, H, W]`` images (float in [-1, 1] or uint8) into one uint8 array [H', W', C] (C in {1, 3})."""
    x = torch.as_tensor(images).detach().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise CodepriorError(f"image grid: expected [N, C, H, W] with C in (1, 3), got {list(x.shape)}")
    if x.dtype != torch.uint8:
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    nrow = max(1, min(int(nrow), n))
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y0, x0 = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, y0 : y0 + h, x0 : x0 + w] = x[i]
    return grid.permute(1, 2, 0).numpy()


def save_image_grid(
    images: torch.Tensor | np.ndarray, path: str | os.PathLike, nrow: int = 8, padding: int = 2
) -> Path:
    """Write images ``[N, C, H, W]`` (float in [-1, 1] or uint8) as one grid image (PNG unless the suffix says
    otherwise); atomic, so a crash never leaves a half-written file."""
    path = Path(path)
    arr = make_image_grid(images, nrow=nrow, padding=padding)
    im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        im.save(tmp, format=fmt)
    return path
