"""The feature classifier: checkpoint format, caching, image layouts; full accuracy in a slow test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

import codeprior.evaluate.classifier as clf
from codeprior.errors import CodepriorError
from codeprior.evaluate.classifier import (
    ClassifierConfig,
    get_classifier,
    images_to_float,
    load_classifier,
    save_classifier,
    train_classifier,
)

TINY = dict(widths=(4, 8), feature_dim=16, epochs=1, max_steps=5, batch_size=32)


@dataclass
class TinyConfig(ClassifierConfig):
    widths: tuple[int, ...] = (4, 8)
    feature_dim: int = 16
    epochs: int = 1
    max_steps: int = 5
    batch_size: int = 32


def _data(n=96, seed=0):
    g = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = (g.integers(0, 60, (n, 28, 28)) + (y[:, None, None] * 20)).astype(np.uint8)  # class = brightness
    return x, y.astype(np.int64)


def test_images_to_float_layouts():
    g = np.random.default_rng(0)
    hw = g.integers(0, 256, (3, 5, 6), dtype=np.uint8)
    a = images_to_float(hw)
    assert a.shape == (3, 1, 5, 6) and a.dtype == torch.float32
    assert torch.equal(images_to_float(hw[..., None]), a)  # NHWC
    assert torch.equal(images_to_float(hw[:, None]), a)  # NCHW
    assert float(a.max()) <= 1.0 and torch.allclose(a[0, 0], torch.from_numpy(hw[0]).float() / 255)
    assert images_to_float(hw, channels=3).shape == (3, 3, 5, 6)
    with pytest.raises(CodepriorError, match="uint8"):
        images_to_float(hw.astype(np.float32))


def test_save_load_roundtrip_weights_only(tmp_path):
    x, y = _data()
    model, ckpt = train_classifier(x, y, x, y, ClassifierConfig(**TINY), dataset="synthetic")
    path = tmp_path / "c.pt"
    save_classifier(ckpt, path)
    raw = torch.load(path, weights_only=True)  # plain tensors / dicts / numbers only
    assert raw["kind"] == "codeprior-classifier" and 0 <= raw["test_accuracy"] <= 1
    loaded = load_classifier(path)
    with torch.no_grad():
        xf = images_to_float(x)
        assert torch.allclose(loaded.model(xf), model(xf))
    d = loaded.describe()
    assert d["test_accuracy"] == ckpt["test_accuracy"] and d["num_features"] == 16 and d["path"] == str(path)
    assert d["data_sha256"] == clf.data_sha256(x, y, x, y)


def test_training_is_seeded():
    x, y = _data()
    _, a = train_classifier(x, y, x, y, ClassifierConfig(**TINY))
    _, b = train_classifier(x, y, x, y, ClassifierConfig(**TINY))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_load_rejects_other_files(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"model": {}}, p)
    with pytest.raises(CodepriorError, match="not a codeprior classifier"):
        load_classifier(p)
    with pytest.raises(CodepriorError, match="no such file"):
        load_classifier(tmp_path / "missing.pt")


def test_get_classifier_caches_by_config_and_data(tmp_path, monkeypatch):
    x, y = _data()
    data = {"train": _data(96, 0), "test": _data(40, 1)}
    monkeypatch.setattr(clf, "load_split", lambda name, split, data_dir=None: data[split])
    calls = []
    real_train = clf.train_classifier

    def counting_train(*a, **k):
        calls.append(1)
        return real_train(*a, **k)

    monkeypatch.setattr(clf, "train_classifier", counting_train)
    path = tmp_path / "cache.pt"
    cfg = ClassifierConfig(**TINY)
    first = get_classifier("synthetic", None, path, cfg, log=lambda m: None)
    assert path.exists() and len(calls) == 1
    second = get_classifier("synthetic", None, path, cfg, log=lambda m: None)
    assert len(calls) == 1 and second.config_sha256 == first.config_sha256  # reused
    get_classifier("synthetic", None, path, ClassifierConfig(**{**TINY, "seed": 1}), log=lambda m: None)
    assert len(calls) == 2  # config changed -> retrained
    data["test"] = _data(40, 2)
    get_classifier("synthetic", None, path, ClassifierConfig(**{**TINY, "seed": 1}), log=lambda m: None)
    assert len(calls) == 3  # data changed -> retrained
    with pytest.raises(CodepriorError, match="another config or data"):
        get_classifier("synthetic", None, path, cfg, train_if_missing=False)
    with pytest.raises(CodepriorError, match="no classifier"):
        get_classifier("synthetic", None, tmp_path / "none.pt", cfg, train_if_missing=False)


def test_default_cache_path_respects_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CODEPRIOR_CACHE", str(tmp_path))
    assert clf.default_classifier_path("fashion-mnist") == tmp_path / "classifier-fashion-mnist.pt"


def test_cli_classifier_train_and_info(tmp_path, monkeypatch, capsys):
    from codeprior.cli import main

    data = {"train": _data(96, 0), "test": _data(40, 1)}
    monkeypatch.setattr(clf, "load_split", lambda name, split, data_dir=None: data[split])
    monkeypatch.setattr(clf, "ClassifierConfig", TinyConfig)
    out = tmp_path / "c.pt"
    assert (
        main(["classifier", "train", "--data", "fashion-mnist", "--out", str(out), "--json", str(tmp_path / "c.json")])
        == 0
    )
    assert "test accuracy" in capsys.readouterr().out and out.exists()
    assert main(["classifier", "info", str(out)]) == 0
    assert '"test_accuracy"' in capsys.readouterr().out
    assert main(["classifier", "info", str(tmp_path / "missing.pt")]) == 2


@pytest.mark.slow
def test_full_classifier_reaches_90_percent(tmp_path):
    """The default recipe on the full Fashion-MNIST train split: >= 90% test accuracy (minutes on CPU)."""
    from codeprior.data.images import load_idx

    try:
        xtr, ytr = load_idx("fashion-mnist", "train")
        xte, yte = load_idx("fashion-mnist", "test")
    except CodepriorError as e:
        pytest.skip(str(e))
    _, ckpt = train_classifier(xtr, ytr, xte, yte, ClassifierConfig(), dataset="fashion-mnist")
    assert ckpt["test_accuracy"] >= 0.90, ckpt["test_accuracy"]
