"""Pre-tokenisation: codes equal an independent reference encoding, resume after a crash, skip/overwrite,
image folders, the CLI (tokenize + check), the real VQModel, and two torchrun-style ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import codeprior.tokenize as tk
from codeprior.cli import main
from codeprior.data.codes import CodeShards, read_manifest
from codeprior.errors import CodepriorError
from codeprior.utils.io import sha256_file

K = 8  # levels linspace(-1, 1, 8): no mean of 16 (or 48) uint8 pixels lies exactly between two levels
LEVELS = np.linspace(-1, 1, K)


class StandInVQ(torch.nn.Module):
    """Tiny tokenizer with the VQModel API: 4x4 mean-pool of the channel mean, nearest of K scalar levels."""

    def __init__(self, levels=LEVELS, patch: int = 4) -> None:
        super().__init__()
        self.config = SimpleNamespace(codebook_size=len(levels))
        self.quantize = torch.nn.Module()
        self.quantize.embedding = torch.nn.Embedding(len(levels), 1)
        with torch.no_grad():
            self.quantize.embedding.weight.copy_(torch.tensor(levels, dtype=torch.float32)[:, None])
        self.patch = patch
        self.calls = 0
        self.images_seen = 0
        self.fail_after: int | None = None

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        self.images_seen += x.shape[0]
        m = F.avg_pool2d(x.mean(1, keepdim=True), self.patch)[:, 0]
        return (m[..., None] - self.quantize.embedding.weight[:, 0]).abs().argmin(-1)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        v = self.quantize.embedding.weight[:, 0][codes][:, None]
        return v.repeat_interleave(self.patch, -1).repeat_interleave(self.patch, -2)


def reference_codes(images_u8: np.ndarray, patch: int = 4) -> np.ndarray:
    """Independent numpy encoding: [N, H, W(, C)] uint8 -> [N, 2, h*w] (original, horizontal flip)."""
    f = images_u8.astype(np.float64) / 127.5 - 1
    if f.ndim == 4:
        f = f.mean(-1)
    out = []
    for g in (f, f[:, :, ::-1]):
        n, h, w = g.shape
        m = g.reshape(n, h // patch, patch, w // patch, patch).mean((2, 4))
        out.append(np.abs(m[..., None] - LEVELS).argmin(-1).reshape(n, -1))
    return np.stack(out, 1)


@pytest.fixture
def idx_data(tmp_path, no_system_data, make_idx_dataset):
    """A Fashion-MNIST-named IDX data_dir of 37 train / 11 test random images: (root, {split: (x, y)})."""
    root = tmp_path / "fm"
    return root, make_idx_dataset(root, n_train=37, n_test=11)


@pytest.fixture
def ckpt(tmp_path):
    p = tmp_path / "tok.pt"
    p.write_bytes(b"stand-in tokenizer weights")
    return p


def quiet(_msg: str) -> None:
    pass


def test_tokenize_matches_reference(idx_data, ckpt, tmp_path):
    root, ref = idx_data
    out = tmp_path / "codes"
    m = tk.tokenize_dataset(
        StandInVQ(), "fashion-mnist", out, data_dir=root, batch_size=8, tokenizer_path=ckpt, log=quiet
    )
    assert m["splits"] == {"test": {"n": 11}, "train": {"n": 37}}
    assert m["grid"] == [7, 7] and m["seq_len"] == 49 and m["n_aug"] == 2 and m["dtype"] == "uint8"
    assert m["augmentations"] == ["identity", "hflip"] and m["codebook_size"] == K
    assert m["tokenizer_sha256"] == sha256_file(ckpt) and len(m["codebook_sha256"]) == 64
    assert m["dataset"] == "fashion-mnist" and m["class_names"][9] == "Ankle boot" and m["num_classes"] == 10
    for split in ("train", "test"):
        ds = CodeShards(out, split, aug=0)
        np.testing.assert_array_equal(ds.codes, reference_codes(ref[split][0]))
        np.testing.assert_array_equal(ds.labels, ref[split][1])
    assert sorted(p.name for p in (out / "train").iterdir()) == ["codes.npy", "labels.npy"]


def test_no_flip_and_split_selection(idx_data, ckpt, tmp_path):
    root, ref = idx_data
    m = tk.tokenize_dataset(
        StandInVQ(),
        "fashion-mnist",
        tmp_path / "c",
        splits=["test"],
        data_dir=root,
        flip=False,
        batch_size=4,
        log=quiet,
    )
    assert m["n_aug"] == 1 and m["augmentations"] == ["identity"] and list(m["splits"]) == ["test"]
    np.testing.assert_array_equal(CodeShards(tmp_path / "c", "test").codes[:, 0], reference_codes(ref["test"][0])[:, 0])


def test_resume_after_crash(idx_data, ckpt, tmp_path):
    root, ref = idx_data
    out = tmp_path / "codes"
    vq = StandInVQ()
    vq.fail_after = 3  # the shape probe + two chunks of 8 images succeed, then the "process dies"
    with pytest.raises(RuntimeError, match="simulated crash"):
        tk.tokenize_dataset(vq, "fashion-mnist", out, splits=["train"], data_dir=root, batch_size=8, log=quiet)
    assert (out / "train" / ".progress.json").is_file() and not (out / "manifest.json").exists()
    vq2 = StandInVQ()
    logs: list[str] = []
    tk.tokenize_dataset(vq2, "fashion-mnist", out, splits=["train"], data_dir=root, batch_size=32, log=logs.append)
    assert any("resuming, 2 of 5 chunks already done" in s for s in logs)
    assert vq2.images_seen == 1 + 2 * (37 - 16)  # probe + the 21 remaining images and their flips
    np.testing.assert_array_equal(CodeShards(out, "train", aug=0).codes, reference_codes(ref["train"][0]))


def test_skip_and_overwrite(idx_data, tmp_path):
    root, _ = idx_data
    out = tmp_path / "codes"
    tk.tokenize_dataset(StandInVQ(), "fashion-mnist", out, splits=["test"], data_dir=root, log=quiet)
    vq = StandInVQ()
    logs: list[str] = []
    tk.tokenize_dataset(vq, "fashion-mnist", out, splits=["test"], data_dir=root, log=logs.append)
    assert vq.images_seen == 1 and "skipping" in logs[0]
    other = StandInVQ(levels=LEVELS[::-1].copy())  # another codebook
    with pytest.raises(CodepriorError, match="already tokenised with other settings"):
        tk.tokenize_dataset(other, "fashion-mnist", out, splits=["test"], data_dir=root, log=quiet)
    tk.tokenize_dataset(other, "fashion-mnist", out, splits=["test"], data_dir=root, overwrite=True, log=quiet)
    assert read_manifest(out)["codebook_sha256"] != ""
    assert CodeShards(out, "test").codes.max() <= K - 1


def test_limit_encodes_an_evenly_spaced_subset(idx_data, ckpt, tmp_path):
    """--limit N: N images per split, evenly spaced (indices i * n // N), equal to the reference encoding of exactly
    those images; recorded in the manifest, so a run with another limit is refused and `tokenize check` compares
    the same subset."""
    root, ref = idx_data
    out = tmp_path / "codes"
    m = tk.tokenize_dataset(StandInVQ(), "fashion-mnist", out, data_dir=root, limit=5, tokenizer_path=ckpt, log=quiet)
    assert m["splits"] == {"test": {"n": 5}, "train": {"n": 5}} and m["limit"] == 5
    for split, n in (("train", 37), ("test", 11)):
        idx = [i * n // 5 for i in range(5)]
        assert tk.subset_indices(n, 5).tolist() == idx
        ds = CodeShards(out, split, aug=0)
        np.testing.assert_array_equal(ds.codes, reference_codes(ref[split][0][idx]))
        np.testing.assert_array_equal(ds.labels, ref[split][1][idx])
    with pytest.raises(CodepriorError, match="already tokenised with other settings"):
        tk.tokenize_dataset(StandInVQ(), "fashion-mnist", out, data_dir=root, limit=6, tokenizer_path=ckpt, log=quiet)
    res = tk.check_shards(out, StandInVQ(), split="train", data_dir=root, tokenizer_path=ckpt)
    assert res["code_agreement"] == 1.0 and res["labels_match"] and res["n"] == 5
    assert tk.subset_indices(11, 11) is None and tk.subset_indices(11, 50) is None  # a limit >= n keeps every image


def test_image_folder(tmp_path, ckpt):
    rng = np.random.default_rng(3)
    root = tmp_path / "folder"
    arrays = []
    for cls in ("dog", "cat"):
        (root / "train" / cls).mkdir(parents=True)
        for j in range(3):
            a = rng.integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / "train" / cls / f"{j}.png")
    for cls in ("cat", "dog"):  # sorted class order = dataset order
        for j in range(3):
            arrays.append(np.asarray(Image.open(root / "train" / cls / f"{j}.png")))
    m = tk.tokenize_dataset(
        StandInVQ(), root, tmp_path / "c", data_dir=None, image_size=28, batch_size=4, num_workers=0, log=quiet
    )
    assert m["class_names"] == ["cat", "dog"] and m["dataset"] == str(root.resolve()) and m["image_size"] == 28
    ds = CodeShards(tmp_path / "c", "train", aug=0)
    np.testing.assert_array_equal(ds.codes, reference_codes(np.stack(arrays)))
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_cli_tokenize_and_check(idx_data, ckpt, tmp_path, monkeypatch, capsys):
    root, ref = idx_data
    monkeypatch.setattr(tk, "load_tokenizer", lambda path, config=None, device="cpu": StandInVQ())
    out = tmp_path / "codes"
    rc = main(
        [
            "tokenize",
            "--tokenizer",
            str(ckpt),
            "--data",
            "fashion-mnist",
            "--data-dir",
            str(root),
            "--out",
            str(out),
            "--batch-size",
            "16",
        ]
    )
    assert rc == 0
    assert "grid 7x7, codebook 8 (uint8), n_aug 2, splits test: 11, train: 37" in capsys.readouterr().out
    png = tmp_path / "rt.png"
    rc = main(
        [
            "tokenize",
            "check",
            str(out),
            "--tokenizer",
            str(ckpt),
            "--num-images",
            "6",
            "--out",
            str(png),
            "--data-dir",
            str(root),
            "--json",
        ]
    )
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["code_agreement"] == 1.0 and res["flip_agreement"] == 1.0 and res["labels_match"]
    assert res["split"] == "test" and res["n"] == 6 and res["tokenizer_matches"] is True
    grid = np.asarray(Image.open(png))
    assert grid.shape == (2 + 2 * 30, 2 + 6 * 30)  # one row of originals, one of decodes
    # the decoded row is the stand-in's reconstruction of the first test image
    dec = StandInVQ().decode_codes(torch.from_numpy(reference_codes(ref["test"][0][:1])[:, 0].reshape(1, 7, 7)))
    expect = ((dec[0, 0].detach().clamp(-1, 1) + 1) * 127.5).round().numpy().astype(np.uint8)
    np.testing.assert_array_equal(grid[32:60, 2:30], expect)

    # a different tokenizer does not match the stored codes: exit code 1
    monkeypatch.setattr(tk, "load_tokenizer", lambda path, config=None, device="cpu": StandInVQ(LEVELS * 0.5))
    assert main(["tokenize", "check", str(out), "--tokenizer", str(ckpt), "--data-dir", str(root)]) == 1
    assert "do not match" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert main(["tokenize", "--data", "fashion-mnist"]) == 2
    assert "--tokenizer, --out required" in capsys.readouterr().err
    assert main(["tokenize", "check", str(tmp_path), "--tokenizer", str(tmp_path / "x.pt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_real_vqmodel(idx_data, tmp_path, capsys):
    vqmod = pytest.importorskip("codeprior.models.vq")
    from codeprior.models import load_vq, save_vq

    root, ref = idx_data
    cfg = vqmod.get_vq_config("VQ-fmnist", codebook_size=300, ch=8, z_channels=16, norm_groups=4)
    torch.manual_seed(0)
    vq = vqmod.VQModel(cfg).eval()
    path = tmp_path / "vq.pt"
    save_vq(vq, path)
    out = tmp_path / "codes"
    assert (
        main(
            [
                "tokenize",
                "--tokenizer",
                str(path),
                "--data",
                "fashion-mnist",
                "--data-dir",
                str(root),
                "--out",
                str(out),
                "--split",
                "test",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    m = read_manifest(out)
    assert m["dtype"] == "uint16" and m["grid"] == [7, 7] and m["tokenizer_sha256"] == sha256_file(path)
    x = torch.from_numpy(ref["test"][0]).float().div(127.5).sub(1).unsqueeze(1)
    loaded = load_vq(str(path))
    with torch.inference_mode():
        expect = torch.stack([loaded.encode_codes(x), loaded.encode_codes(x.flip(-1))], 1).reshape(11, 2, 49)
    np.testing.assert_array_equal(CodeShards(out, "test").codes, expect.numpy())
    assert (
        main(["tokenize", "check", str(out), "--tokenizer", str(path), "--data-dir", str(root), "--num-images", "4"])
        == 0
    )
    # --json PATH writes the result there (as every command's --json); --json - prints it
    base = ["tokenize", "check", str(out), "--tokenizer", str(path), "--data-dir", str(root), "--num-images", "4"]
    capsys.readouterr()
    assert main([*base, "--json", "-"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert main([*base, "--json", str(tmp_path / "check.json")]) == 0
    written = json.loads((tmp_path / "check.json").read_text())
    assert written == printed and written["n"] == 4 and written["code_agreement"] == 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_share_the_memmap(idx_data, tmp_path):
    root, ref = idx_data
    out = tmp_path / "codes"
    script = tmp_path / "rank.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import codeprior.data.images as im
        from pathlib import Path
        im.DEFAULT_DATA_ROOT = Path({str(tmp_path / "nowhere")!r})
        from test_tokenize import StandInVQ
        import codeprior.tokenize as tk
        vq = StandInVQ()
        tk.tokenize_dataset(vq, "fashion-mnist", {str(out)!r}, splits=["train"], data_dir={str(root)!r},
                            batch_size=5, log=lambda m: None)
        print("SEEN", vq.images_seen)
    """)
    )
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            CODEPRIOR_NO_PROGRESS="1",
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, e) in zip(procs, outs):
        assert p.returncode == 0, e[-2000:]
    seen = [int(o.split("SEEN")[1]) for o, _ in outs]
    # 37 images in 8 chunks of 5: rank 0 encodes chunks 0-3 (20 images), rank 1 chunks 4-7 (17), plus a probe each
    assert seen == [1 + 2 * 20, 1 + 2 * 17]
    ds = CodeShards(out, "train", aug=0)
    np.testing.assert_array_equal(ds.codes, reference_codes(ref["train"][0]))
    np.testing.assert_array_equal(ds.labels, ref["train"][1])


def test_default_splits_and_device(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    (root / "val" / "c0").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "val" / "c0" / "a.png")
    assert tk.default_splits("fashion-mnist") == ["train", "test"]
    assert tk.default_splits(str(root)) == ["val"]
    m = tk.tokenize_dataset(StandInVQ(), root, tmp_path / "c", image_size=8, log=quiet)
    assert list(m["splits"]) == ["val"] and m["grid"] == [2, 2]
    with pytest.raises(CodepriorError, match="no 'train' split"):
        tk.tokenize_dataset(StandInVQ(), root, tmp_path / "d", splits=["train"], log=quiet)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    from codeprior.runtime import resolve_device  # the one device helper every command uses

    assert resolve_device("cuda", check=False) == torch.device("cuda", 3) and resolve_device("cpu").type == "cpu"
