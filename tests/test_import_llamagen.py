"""`codeprior tokenize import-llamagen`: LlamaGen's extract_codes_c2i.py folders ({i}.npy [1, n_aug, L] int64 codes,
{i}.npy [1] labels, built here with np.save) become code shards equal file by file; resume gives identical bytes;
bad input is one line with exit 2; the trainer's data loader and a tiny GPT read the result."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN_FLAGS

import codeprior.data.llamagen_import as li
from codeprior.cli import main
from codeprior.data.codes import CodeShards, ShardWriter, read_manifest
from codeprior.errors import CodepriorError
from codeprior.utils.io import sha256_file, sha256_tensor


def make_folder(
    root: Path,
    n: int = 37,
    n_aug: int = 10,
    seq_len: int = 16,
    vocab: int = 300,
    classes: int = 7,
    size: int = 64,
    dataset: str = "imagenet",
    seed: int = 0,
) -> tuple[Path, np.ndarray, np.ndarray]:
    """LlamaGen's layout under ``root`` (its --code-path); returns (root, codes [n, n_aug, L], labels [n]) where the
    largest code is vocab - 1 and the largest label classes - 1."""
    g = np.random.default_rng(seed)
    codes = g.integers(0, vocab, (n, n_aug, seq_len), dtype=np.int64)
    codes[n // 2, 0, 0] = vocab - 1
    labels = g.integers(0, classes, n, dtype=np.int64)
    labels[n // 3] = classes - 1
    cdir, ldir = root / f"{dataset}{size}_codes", root / f"{dataset}{size}_labels"
    cdir.mkdir(parents=True)
    ldir.mkdir(parents=True)
    for i in range(n):
        np.save(cdir / f"{i}.npy", codes[i : i + 1])  # [1, n_aug, L] int64, as extract_codes_c2i.py writes
        np.save(ldir / f"{i}.npy", labels[i : i + 1])  # [1]
    return root, codes, labels


def quiet(_msg: str) -> None:
    pass


def digest(out: Path, split: str = "train") -> dict[str, str]:
    files = [out / "manifest.json", out / split / "codes.npy", out / split / "labels.npy"]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.parametrize(("n_aug", "vocab", "dtype"), [(10, 300, "uint16"), (2, 200, "uint8")])
def test_values_and_labels_equal_the_files(tmp_path, n_aug, vocab, dtype):
    root, codes, labels = make_folder(tmp_path / "cp", n_aug=n_aug, vocab=vocab)
    out = tmp_path / "shards"
    m = li.import_llamagen(root, out, chunk_size=8, workers=2, log=quiet, warn=quiet)
    assert m["grid"] == [4, 4] and m["seq_len"] == 16 and m["n_aug"] == n_aug and m["image_size"] == 64
    assert m["codebook_size"] == vocab and m["num_classes"] == 7 and m["dtype"] == dtype  # inferred: max + 1
    assert m["splits"]["train"]["n"] == 37 and len(m["augmentations"]) == n_aug
    stored = np.load(out / "train" / "codes.npy")
    assert stored.dtype == dtype and stored.shape == (37, n_aug, 16)
    for i in range(37):  # file i is row i: every augmentation, in order
        np.testing.assert_array_equal(stored[i], np.load(root / "imagenet64_codes" / f"{i}.npy")[0])
        assert np.load(out / "train" / "labels.npy")[i] == np.load(root / "imagenet64_labels" / f"{i}.npy")[0]
    np.testing.assert_array_equal(stored, codes)
    np.testing.assert_array_equal(np.load(out / "train" / "labels.npy"), labels)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["codes.npy", "labels.npy"]  # no partial files left


def test_codes_folder_itself_and_flags_give_the_same_shards(tmp_path):
    root, _, _ = make_folder(tmp_path / "cp")
    a, b = tmp_path / "a", tmp_path / "b"
    li.import_llamagen(root, a, chunk_size=8, log=quiet, warn=quiet)
    li.import_llamagen(root / "imagenet64_codes", b, chunk_size=5, workers=1, log=quiet, warn=quiet)
    assert digest(a) == digest(b)  # chunking and threads do not change a byte
    # given sizes win over the data's maxima
    c = tmp_path / "c"
    m = li.import_llamagen(root, c, codebook_size=70000, num_classes=1000, log=quiet, warn=quiet)
    assert (m["codebook_size"], m["dtype"], m["num_classes"]) == (70000, "uint32", 1000)
    np.testing.assert_array_equal(np.load(c / "train" / "codes.npy"), np.load(a / "train" / "codes.npy"))


def test_resume_after_interruption_gives_identical_bytes(tmp_path, monkeypatch):
    root, _, _ = make_folder(tmp_path / "cp", n=45)
    ref = tmp_path / "ref"
    li.import_llamagen(root, ref, chunk_size=8, log=quiet, warn=quiet)

    out = tmp_path / "out"
    real = ShardWriter.write_chunk
    calls = []

    def crash_after_two(self, c, codes, labels):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(c)
        real(self, c, codes, labels)

    monkeypatch.setattr(ShardWriter, "write_chunk", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        li.import_llamagen(root, out, chunk_size=8, log=quiet, warn=quiet)
    assert not (out / "manifest.json").exists() and not (out / "train" / "codes.npy").exists()
    monkeypatch.setattr(ShardWriter, "write_chunk", lambda self, c, a, b: (calls.append(c), real(self, c, a, b)))
    logs: list[str] = []
    li.import_llamagen(root, out, chunk_size=8, log=logs.append, warn=quiet)
    assert calls == [0, 1, 2, 3, 4, 5]  # the second run wrote only chunks 2..5
    assert any("resuming, 2 of 6 chunks done" in s for s in logs)
    assert digest(out) == digest(ref)

    # killed after the last chunk, before the files were renamed (the uint8 narrowing case): same bytes again
    root8, _, _ = make_folder(tmp_path / "cp8", n=20, vocab=100, seed=3)
    ref8, out8 = tmp_path / "ref8", tmp_path / "out8"
    li.import_llamagen(root8, ref8, chunk_size=8, log=quiet, warn=quiet)
    finalize = ShardWriter.finalize
    monkeypatch.setattr(ShardWriter, "finalize", lambda self, check=True: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        li.import_llamagen(root8, out8, chunk_size=8, log=quiet, warn=quiet)
    monkeypatch.setattr(ShardWriter, "finalize", finalize)
    li.import_llamagen(root8, out8, chunk_size=8, log=quiet, warn=quiet)
    assert digest(out8) == digest(ref8) and np.load(out8 / "train" / "codes.npy").dtype == np.uint8

    # the per-chunk maxima removed by hand after an interruption: the split starts over, same bytes
    out9 = tmp_path / "out9"
    calls.clear()
    monkeypatch.setattr(ShardWriter, "write_chunk", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        li.import_llamagen(root, out9, chunk_size=8, log=quiet, warn=quiet)
    (out9 / "train" / li._MAX_FILE).unlink()
    monkeypatch.setattr(ShardWriter, "write_chunk", lambda self, c, a, b: (calls.append(c), real(self, c, a, b)))
    li.import_llamagen(root, out9, chunk_size=8, log=quiet, warn=quiet)
    assert calls == [0, 1, 0, 1, 2, 3, 4, 5] and digest(out9) == digest(ref)


def test_skip_overwrite_and_second_split(tmp_path):
    root, _, _ = make_folder(tmp_path / "cp")
    out = tmp_path / "shards"
    li.import_llamagen(root, out, codebook_size=512, num_classes=10, log=quiet, warn=quiet)
    before = digest(out)
    logs: list[str] = []
    li.import_llamagen(root, out, codebook_size=512, num_classes=10, log=logs.append, warn=quiet)
    assert "already imported" in logs[0] and digest(out) == before
    with pytest.raises(CodepriorError, match="--overwrite"):
        li.import_llamagen(root, out, codebook_size=600, num_classes=10, log=quiet, warn=quiet)
    li.import_llamagen(root, out, codebook_size=512, num_classes=10, overwrite=True, log=quiet, warn=quiet)
    # DCPE's imagenet_val folder as the val split: takes the train split's vocabulary and classes
    val_root, val_codes, _ = make_folder(tmp_path / "val", n=9, dataset="imagenet_val", vocab=50, classes=3)
    m = li.import_llamagen(val_root, out, split="val", log=quiet, warn=quiet)
    assert sorted(m["splits"]) == ["train", "val"] and m["codebook_size"] == 512 and m["num_classes"] == 10
    np.testing.assert_array_equal(CodeShards(out, "val").codes, val_codes)
    # a split that cannot join (other augmentation count) is refused before any work
    other, _, _ = make_folder(tmp_path / "other", n=4, n_aug=2)
    with pytest.raises(CodepriorError, match="n_aug: 10 there vs 2 here"):
        li.import_llamagen(other, out, split="test", log=quiet, warn=quiet)
    assert not (out / "test").exists()


def test_tokenizer_is_recorded_and_checked(tmp_path, capsys):
    root, _, _ = make_folder(tmp_path / "cp")
    cb = torch.randn(320, 8)
    vq = tmp_path / "vq_ds16_c2i.pt"
    torch.save({"model": {"quantize.embedding.weight": cb, "encoder.conv_in.weight": torch.zeros(2)}}, vq)
    out = tmp_path / "shards"
    assert main(["tokenize", "import-llamagen", str(root), "--out", str(out), "--tokenizer", str(vq)]) == 0
    err = capsys.readouterr().err
    assert "--tokenizer" not in err and "vocabulary" not in err  # no note: the tokenizer gave the vocabulary
    m = read_manifest(out)
    assert m["tokenizer_sha256"] == sha256_file(vq) and m["codebook_sha256"] == sha256_tensor(cb)
    assert m["codebook_size"] == 320 and m["tokenizer"] == str(vq.resolve())
    # without one: said once on stderr
    assert main(["tokenize", "import-llamagen", str(root), "--out", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().err.count("no --tokenizer given") == 1
    # a codebook smaller than the codes, or a contradicting --codebook-size, is refused naming the file
    small = tmp_path / "small.pt"
    torch.save({"model": {"quantize.embedding.weight": torch.randn(100, 8)}}, small)
    args = ["tokenize", "import-llamagen", str(root), "--out", str(tmp_path / "c"), "--tokenizer"]
    assert main([*args, str(small)]) == 2
    assert "imagenet64_codes/" in (e := capsys.readouterr().err) and ">= codebook size 100" in e
    assert main([*args, str(vq), "--codebook-size", "300"]) == 2
    assert "320 codes but --codebook-size says 300" in capsys.readouterr().err


def test_sampler_padding_is_noted_and_num_images_drops_it(tmp_path):
    root, codes, labels = make_folder(tmp_path / "cp", n=30)
    for j in range(3):  # 3 GPUs' DistributedSampler padding: files 30..32 repeat files 0..2
        np.save(root / "imagenet64_codes" / f"{30 + j}.npy", codes[j : j + 1])
        np.save(root / "imagenet64_labels" / f"{30 + j}.npy", labels[j : j + 1])
    notes: list[str] = []
    m = li.import_llamagen(root, tmp_path / "a", log=quiet, warn=notes.append)
    assert m["splits"]["train"]["n"] == 33
    assert any("last 3 files (30..32) repeat files 0..2" in s and "--num-images 30" in s for s in notes)
    m = li.import_llamagen(root, tmp_path / "b", num_images=30, log=quiet, warn=quiet)
    np.testing.assert_array_equal(CodeShards(tmp_path / "b", "train").codes, codes)
    one, c1, l1 = make_folder(tmp_path / "one", n=9, n_aug=2, seed=5)  # 2 GPUs, 9 images: one padding file
    np.save(one / "imagenet64_codes" / "9.npy", c1[:1])
    np.save(one / "imagenet64_labels" / "9.npy", l1[:1])
    notes.clear()
    li.import_llamagen(one, tmp_path / "c", log=quiet, warn=notes.append)
    assert any("the last file (9) repeats file 0" in s and "--num-images 9" in s for s in notes)
    notes.clear()
    li.import_llamagen(root, tmp_path / "d", num_images=31, log=quiet, warn=notes.append)  # no check with -n
    assert not any("repeat" in s for s in notes)


def _bad(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A broken folder for case ``name`` and the text its one-line error must contain."""
    root, codes, _ = make_folder(tmp_path / name, n=12)
    c, lab = root / "imagenet64_codes", root / "imagenet64_labels"
    if name == "missing":
        return tmp_path / "nowhere", "nowhere: no such folder"
    if name == "no_labels":
        for f in lab.iterdir():
            f.unlink()
        lab.rmdir()
        return root, "imagenet64_labels: no such folder"
    if name == "gap":
        (c / "5.npy").unlink()
        return root, "imagenet64_codes/5.npy: missing"
    if name == "label_missing":
        (lab / "11.npy").unlink()
        return root, "imagenet64_labels/11.npy: missing"
    if name == "extra_label":
        np.save(lab / "12.npy", np.array([1]))
        return root, "imagenet64_codes/12.npy: missing"
    if name == "bad_name":
        np.save(c / "007.npy", codes[:1])
        return root, "007.npy: not a LlamaGen code file name"
    if name == "wrong_shape":
        np.save(c / "0.npy", codes[0])  # [n_aug, L] without the leading 1
        return root, "imagenet64_codes/0.npy: expected codes of shape [1, n_aug, L]"
    if name == "n_aug":
        np.save(c / "7.npy", codes[7:8, :2])
        return root, "imagenet64_codes/7.npy: codes shape [1, 2, 16] differs from the first file's [1, 10, 16]"
    if name == "length":
        np.save(c / "9.npy", np.zeros((1, 10, 25), dtype=np.int64))
        return root, "imagenet64_codes/9.npy: codes shape [1, 10, 25] differs"
    if name == "non_square":
        for i in range(12):
            np.save(c / f"{i}.npy", codes[i : i + 1, :, :15])
        return root, "15 codes per image is not a square grid"
    if name == "float":
        np.save(c / "3.npy", codes[3:4].astype(np.float32))
        return root, "imagenet64_codes/3.npy: codes must be integers, got dtype float32"
    if name == "label_float":
        np.save(lab / "4.npy", np.array([1.5]))
        return root, "imagenet64_labels/4.npy: label must be an integer"
    if name == "negative":
        bad = codes[6:7].copy()
        bad[0, 3, 2] = -1
        np.save(c / "6.npy", bad)
        return root, "imagenet64_codes/6.npy: code -1 negative"
    if name == "corrupt":
        (c / "8.npy").write_bytes((c / "8.npy").read_bytes()[:100])
        return root, "imagenet64_codes/8.npy: not a readable .npy file"
    raise AssertionError(name)


BAD = [
    "missing", "no_labels", "gap", "label_missing", "extra_label", "bad_name", "wrong_shape", "n_aug", "length",
    "non_square", "float", "label_float", "negative", "corrupt",
]  # fmt: skip


@pytest.mark.parametrize("name", BAD)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, name):
    root, expect = _bad(tmp_path, name)
    out = tmp_path / "out"
    rc = main(["tokenize", "import-llamagen", str(root), "--out", str(out), "--chunk-size", "4"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("codeprior: error")]
    assert rc == 2 and len(err) == 1 and expect in err[0], err
    assert not (out / "manifest.json").exists() and not (out / "train" / "codes.npy").exists()


def test_out_and_flag_errors(tmp_path, capsys):
    root, _, _ = make_folder(tmp_path / "cp")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["tokenize", "import-llamagen", str(root), "--out", str(foreign)]) == 2
    assert "not empty and not a code-shard directory" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1
    assert main(["tokenize", "import-llamagen", str(root), "--out", str(root / "imagenet64_codes" / "x")]) == 2
    capsys.readouterr()
    assert main(["tokenize", "import-llamagen", str(root), "--out", str(tmp_path / "o"), "--num-images", "99"]) == 2
    assert "--num-images 99 outside 1..37" in capsys.readouterr().err
    (root / "imagenet128_codes").mkdir()
    assert main(["tokenize", "import-llamagen", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "several code folders (imagenet128_codes, imagenet64_codes)" in capsys.readouterr().err


def test_trainer_reads_the_imported_shards(tmp_path):
    from codeprior.train.trainer import TrainConfig, train

    root, codes, labels = make_folder(tmp_path / "cp", n=24, seq_len=9, vocab=40, classes=3)
    out = tmp_path / "shards"
    li.import_llamagen(root, out, log=quiet, warn=quiet)
    ds = CodeShards(out, "train", seed=1)  # what the trainer opens
    idx = np.arange(24)
    got, lab = ds.batch(idx)
    aug = ds.aug_indices(idx)
    assert torch.equal(got, torch.from_numpy(codes[idx, aug])) and torch.equal(lab, torch.from_numpy(labels))
    res = train(
        TrainConfig(
            codes=str(out),
            out=str(tmp_path / "run"),
            model="GPT-tiny",
            model_overrides={"dim": 32, "n_layer": 1, "n_head": 2},
            global_batch=8,
            max_steps=2,
            log_every=1,
            ckpt_every=100,
            tensorboard=False,
            progress=False,
            threads=1,
        )
    )
    assert res["finished"] and res["step"] == 2


def test_train_image_size_is_checked_against_the_shards(tmp_path, capsys):
    from codeprior.cli import main

    root, _, _ = make_folder(tmp_path / "cp", n=8, seq_len=9, vocab=40, classes=3, size=384)
    out = tmp_path / "shards"
    li.import_llamagen(root, out, log=quiet, warn=quiet)
    base = ["train", "--codes", str(out), *TINY_TRAIN_FLAGS]
    assert main([*base, "--out", str(tmp_path / "bad"), "--image-size", "256"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--image-size 256 contradicts the shards' image_size 384" in err[0]
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    assert main([*base, "--out", str(tmp_path / "ok"), "--image-size", "384"]) == 0
