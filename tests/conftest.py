"""Shared test settings and fixtures: one thread, seeded torch, and IDX dataset writers (written here independently
of codeprior's reader, so that reading them back tests the reader)."""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("CODEPRIOR_NO_PROGRESS", "1")
# `--window auto` measures pass costs into a per-device cache: keep the tests' measurements out of ~/.cache
os.environ.setdefault(
    "CODEPRIOR_WINDOW_COSTS", os.path.join(tempfile.mkdtemp(prefix="codeprior-tests-"), "window-costs.json")
)
# Tiny models run fastest on one thread (and several pytest processes may share the machine).
torch.set_num_threads(1)

IDX_PREFIX = {"train": "train", "test": "t10k"}  # file prefix of each split (MNIST / Fashion-MNIST names)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def _write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    """Write ``arr`` as an unsigned-byte IDX file; with ``gz``, gzipped as ``path`` + ``.gz``. Returns the path."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = header + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def _write_idx_dataset(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], gz: bool = True) -> None:
    """``{split: (images, labels)}`` as ``root/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``."""
    root.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in splits.items():
        _write_idx(root / f"{IDX_PREFIX[split]}-images-idx3-ubyte", x, gz)
        _write_idx(root / f"{IDX_PREFIX[split]}-labels-idx1-ubyte", y, gz)


@pytest.fixture
def write_idx() -> Callable[..., Path]:
    """``write_idx(path, array, gz=True) -> path``: one IDX file."""
    return _write_idx


@pytest.fixture
def make_idx_dataset() -> Callable[..., dict]:
    """``make_idx_dataset(root, n_train=12, n_test=5, gz=True, seed=0) -> {split: (x, y)}``: random 28x28 uint8
    images and labels 0-9 written as an IDX dataset folder (a ``data_dir``)."""

    def make(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 0) -> dict:
        rng = np.random.default_rng(seed)
        out = {}
        for split, n in (("train", n_train), ("test", n_test)):
            x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
            y = rng.integers(0, 10, size=n).astype(np.uint8)
            out[split] = (x, y)
        _write_idx_dataset(root, out, gz)
        return out

    return make


@pytest.fixture
def fmnist_idx() -> Callable[..., Path]:
    """``fmnist_idx(root, n_train=300, n_test=120) -> root``: the first images of the installed Fashion-MNIST written
    back as an IDX data_dir; skips the test when Fashion-MNIST is not installed."""
    from codeprior.data.images import load_idx
    from codeprior.errors import CodepriorError

    def make(root: Path, n_train: int = 300, n_test: int = 120) -> Path:
        splits = {}
        for split, n in (("train", n_train), ("test", n_test)):
            try:
                x, y = load_idx("fashion-mnist", split)
            except CodepriorError as e:
                pytest.skip(f"Fashion-MNIST not installed: {e}")
            splits[split] = (x[:n], y[:n])
        _write_idx_dataset(root, splits)
        return root

    return make


@pytest.fixture
def tiny_pipeline() -> Callable[[Path], dict]:
    """The first stages of a pipeline config at tiny sizes (10 tokenizer steps, 1 classifier epoch) on a data dir."""
    return lambda data_dir: {
        "name": "tiny",
        "device": "cpu",
        "threads": 1,
        "data": {"dataset": "fashion-mnist", "data_dir": str(data_dir)},
        "tokenizer": {"schedule": "demo", "steps": 10, "batch_size": 32, "num_recon": 8, "num_images": 60},
        "tokenize": {"batch_size": 100},
        "classifier": {"epochs": 1, "use_cache": False},
    }


@pytest.fixture
def no_system_data(monkeypatch, tmp_path) -> None:
    """Hide /usr/share/datasets so tests only see the datasets they write."""
    from codeprior.data import images as im

    monkeypatch.setattr(im, "DEFAULT_DATA_ROOT", tmp_path / "nowhere")


@pytest.fixture
def fid_inputs(tmp_path) -> dict:
    """The FID hook's inputs (:func:`codeprior.curves.make_fid_fn`): a random VQ-fmnist-shaped tokenizer of 64 codes,
    a 3-step classifier and its features of 60 images as the reference."""
    from codeprior.evaluate import make_extractor
    from codeprior.evaluate.classifier import (
        ClassifierConfig,
        save_classifier,
        train_classifier,
    )
    from codeprior.models.checkpoint import save_vq
    from codeprior.models.vq import VQModel, get_vq_config
    from codeprior.utils.io import torch_save_atomic

    g = np.random.default_rng(0)
    y = np.arange(60) % 10
    x = (g.integers(0, 60, (60, 28, 28)) + y[:, None, None] * 20).astype(np.uint8)
    cfg = ClassifierConfig(widths=(4, 8), feature_dim=16, epochs=1, max_steps=3, batch_size=32)
    _, ckpt = train_classifier(x, y, x, y, cfg, dataset="synthetic")
    save_classifier(ckpt, tmp_path / "cls.pt")
    feats, _ = make_extractor("classifier", classifier=str(tmp_path / "cls.pt")).extract(x)
    torch_save_atomic({"features": feats}, tmp_path / "ref.pt")
    save_vq(VQModel(get_vq_config("VQ-fmnist", codebook_size=64)), tmp_path / "vq.pt")
    return {
        "classifier": str(tmp_path / "cls.pt"),
        "reference_features": str(tmp_path / "ref.pt"),
        "vq": str(tmp_path / "vq.pt"),
        "vq_config": None,
    }
