"""Image datasets: IDX parsing and validation, image folders with the ADM/LlamaGen center crop, image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from codeprior.data.images import (
    build_image_dataset,
    center_crop_arr,
    dataset_info,
    load_idx,
    read_idx_file,
    resolve_folder_split,
    save_image_grid,
)
from codeprior.errors import CodepriorError

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_roundtrip(tmp_path, no_system_data, gz, make_idx_dataset):
    ref = make_idx_dataset(tmp_path, gz=gz)
    for split in ("train", "test"):
        x, y = load_idx("fashion-mnist", split, data_dir=tmp_path)
        assert x.dtype == np.uint8 and y.dtype == np.int64
        np.testing.assert_array_equal(x, ref[split][0])
        np.testing.assert_array_equal(y, ref[split][1])


def test_load_idx_data_dir_subfolder(tmp_path, no_system_data, make_idx_dataset):
    ref = make_idx_dataset(tmp_path / "mnist")
    x, _ = load_idx("mnist", "test", data_dir=tmp_path)  # data_dir/<name>/ also searched
    np.testing.assert_array_equal(x, ref["test"][0])


def test_missing_dataset_says_how_to_get_it(tmp_path, no_system_data):
    with pytest.raises(CodepriorError, match="apt-get install dataset-fashion-mnist") as e:
        load_idx("fashion-mnist", "train", data_dir=tmp_path)
    assert "--data-dir" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CodepriorError, match="unknown IDX dataset"):
        load_idx("cifar", "train")
    with pytest.raises(CodepriorError, match="unknown split"):
        load_idx("mnist", "val", data_dir=tmp_path)


def test_truncated_idx_names_file(tmp_path, write_idx):
    p = write_idx(tmp_path / "a-idx3-ubyte", np.zeros((4, 28, 28), np.uint8), gz=False)
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(CodepriorError, match="truncated") as e:
        read_idx_file(p)
    assert str(p) in str(e.value)


def test_bad_magic_and_corrupt_gzip(tmp_path, write_idx):
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(b"\x01\x02\x08\x03" + b"\x00" * 40)
    with pytest.raises(CodepriorError, match="bad magic"):
        read_idx_file(p)
    g = write_idx(tmp_path / "y-idx3-ubyte", np.zeros((50, 28, 28), np.uint8))
    g.write_bytes(g.read_bytes()[: len(g.read_bytes()) // 2])  # truncated gzip stream
    with pytest.raises(CodepriorError, match=r"y-idx3-ubyte\.gz: corrupt or truncated gzip"):
        read_idx_file(g)


def test_label_count_mismatch(tmp_path, no_system_data, write_idx, make_idx_dataset):
    make_idx_dataset(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))  # 3 labels for 12 images
    with pytest.raises(CodepriorError, match="3 labels but"):
        load_idx("fashion-mnist", "train", data_dir=tmp_path)


def test_idx_dataset_values_and_flip(tmp_path, no_system_data, make_idx_dataset):
    ref = make_idx_dataset(tmp_path)
    ds = build_image_dataset("fashion-mnist", "train", data_dir=tmp_path)
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    expect = torch.from_numpy(ref["train"][0][3].astype(np.float32)) / 127.5 - 1
    torch.testing.assert_close(x[0], expect)
    assert y == int(ref["train"][1][3])
    xb, yb = ds.get_batch(2, 7)
    torch.testing.assert_close(xb[1], ds[3][0])
    assert yb.tolist() == ref["train"][1][2:7].tolist()

    fds = build_image_dataset("fashion-mnist", "train", data_dir=tmp_path, flip=True)
    seen = {"orig": 0, "flip": 0}
    for _ in range(40):
        fx, _ = fds[3]
        if torch.equal(fx, x):
            seen["orig"] += 1
        else:
            torch.testing.assert_close(fx, x.flip(-1))
            seen["flip"] += 1
    assert seen["orig"] > 5 and seen["flip"] > 5


def test_idx_resize(tmp_path, no_system_data, make_idx_dataset):
    ref = make_idx_dataset(tmp_path)
    ds = build_image_dataset("fashion-mnist", "test", data_dir=tmp_path, image_size=32)
    x, _ = ds[2]
    assert x.shape == (1, 32, 32) and x.min() >= -1 and x.max() <= 1
    # 28 -> 32: no box-halving, one bicubic resize to 32x32 (nothing to crop), then [-1, 1]
    big = np.asarray(Image.fromarray(ref["test"][0][2]).resize((32, 32), Image.BICUBIC), dtype=np.float32)
    torch.testing.assert_close(x[0], torch.from_numpy(big) / 127.5 - 1)


def test_center_crop_follows_adm_steps():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, size=(60, 100, 3), dtype=np.uint8)  # H=60, W=100
    img = Image.fromarray(arr)
    # by hand: 60 >= 2*16 -> box-halve to 50x30; 30 < 32 stop; bicubic to short side 16: (27, 16); center crop
    step = img.resize((50, 30), Image.BOX).resize((27, 16), Image.BICUBIC)
    expect = np.asarray(step)[0:16, 5:21]
    out = center_crop_arr(img, 16)
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out, expect)


def test_center_crop_keeps_the_center():
    arr = np.zeros((40, 120), np.uint8)
    arr[:, 40:80] = 255  # white middle third; the crop of a 40-high image to 40 is exactly the middle third
    out = center_crop_arr(Image.fromarray(arr), 40)
    assert out.shape == (40, 40) and out.min() == 255


def _png(path: Path, size=(40, 30), color=(255, 0, 0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_image_folder_classes_and_crop(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "b_cat" / "1.png", color=(0, 0, 255))
    _png(root / "b_cat" / "0.jpg", color=(0, 0, 255))
    _png(root / "a_dog" / "x.png", size=(64, 48), color=(255, 255, 255))
    (root / "a_dog" / "notes.txt").write_text("not an image")
    ds = build_image_dataset(root, "train", image_size=16)
    assert len(ds) == 3 and ds.classes == ["a_dog", "b_cat"]
    x, y = ds[0]
    assert y == 0 and x.shape == (3, 16, 16)
    torch.testing.assert_close(x, torch.ones(3, 16, 16))
    x2, y2 = ds[1]
    assert y2 == 1 and x2[2].min() > 0.9 and x2[0].max() < -0.9  # blue
    info = dataset_info(root)
    assert info == {"num_classes": 2, "channels": 3, "image_size": 256, "class_names": ["a_dog", "b_cat"]}


def test_image_folder_splits(tmp_path):
    root = tmp_path / "tree"
    _png(root / "train" / "c0" / "a.png")
    _png(root / "train" / "c1" / "a.png")
    _png(root / "val" / "c0" / "b.png")
    assert resolve_folder_split(root, "train") == root / "train"
    assert resolve_folder_split(root, "val") == root / "val"
    assert resolve_folder_split(root, "test") == root / "val"
    assert len(build_image_dataset(root, "val", image_size=8)) == 1
    assert dataset_info(root)["class_names"] == ["c0", "c1"]
    flat = tmp_path / "flat"
    _png(flat / "c0" / "a.png")
    assert resolve_folder_split(flat, "val") == flat
    only_train = tmp_path / "ot"
    _png(only_train / "train" / "c0" / "a.png")
    with pytest.raises(CodepriorError, match="no 'val' split"):
        resolve_folder_split(only_train, "val")


def test_image_folder_errors(tmp_path):
    with pytest.raises(CodepriorError, match="no such directory"):
        build_image_dataset(tmp_path / "missing")
    (tmp_path / "empty" / "c0").mkdir(parents=True)
    with pytest.raises(CodepriorError, match="no images found"):
        build_image_dataset(tmp_path / "empty")
    root = tmp_path / "bad"
    _png(root / "c0" / "good.png")
    bad = root / "c0" / "zz.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = build_image_dataset(root, image_size=8)
    ds[0]
    with pytest.raises(CodepriorError, match="zz.png: cannot read image"):
        ds[1]


def test_save_image_grid(tmp_path):
    x = -torch.ones(5, 3, 4, 6)
    x[2] = 1.0  # third image white
    p = save_image_grid(x, tmp_path / "g.png", nrow=3)
    arr = np.asarray(Image.open(p))
    assert arr.shape == (2 + 2 * (4 + 2), 2 + 3 * (6 + 2), 3)
    assert (arr[2:6, 2:8] == 0).all()  # image 0 black
    assert (arr[2:6, 2 + 2 * 8 : 2 + 2 * 8 + 6] == 255).all()  # image 2 white
    assert (arr[0, :] == 255).all()  # padding
    g = save_image_grid(torch.full((2, 1, 3, 3), 7, dtype=torch.uint8), tmp_path / "gray.png", nrow=2)
    garr = np.asarray(Image.open(g))
    assert garr.ndim == 2 and garr[2, 2] == 7
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(CodepriorError, match="expected"):
        save_image_grid(torch.zeros(2, 2, 4, 4), tmp_path / "bad.png")


def test_fashion_mnist_class_names():
    info = dataset_info("fashion-mnist")
    assert info["num_classes"] == 10 and info["channels"] == 1 and info["image_size"] == 28
    assert info["class_names"][0] == "T-shirt/top" and info["class_names"][9] == "Ankle boot"


@pytest.mark.skipif(
    not (REAL_FMNIST / "train-images-idx3-ubyte.gz").exists()
    and not (REAL_FMNIST / "train-images-idx3-ubyte").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist():
    x, y = load_idx("fashion-mnist", "train")
    xt, yt = load_idx("fashion-mnist", "test")
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert np.bincount(y).tolist() == [6000] * 10 and np.bincount(yt).tolist() == [1000] * 10
    assert int(y[0]) == 9  # the first training image is an ankle boot
