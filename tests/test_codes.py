"""Code shards: dtype choice, atomic writing, manifest merging, memmap reader, augmentation choice, resumable writer."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from codeprior.data.codes import (
    CodeShards,
    ShardWriter,
    augmentation_choice,
    code_dtype,
    read_manifest,
    write_code_shards,
)
from codeprior.errors import CodepriorError

META = {
    "grid": [2, 3],
    "codebook_size": 300,
    "num_classes": 4,
    "tokenizer_sha256": "ab" * 32,
    "dataset": "toy",
    "augmentations": ["identity", "hflip"],
}


def toy(n=10, n_aug=2, seed=0, codebook_size=300):
    rng = np.random.default_rng(seed)
    return rng.integers(0, codebook_size, size=(n, n_aug, 6)), rng.integers(0, 4, size=n)


@pytest.mark.parametrize(
    "size,dtype",
    [(2, "uint8"), (256, "uint8"), (257, "uint16"), (65536, "uint16"), (65537, "uint32"), (2**18, "uint32")],
)
def test_code_dtype(size, dtype):
    assert code_dtype(size).name == dtype


def test_write_and_read(tmp_path):
    codes, labels = toy()
    m = write_code_shards(tmp_path, "train", codes, labels, META)
    assert m["dtype"] == "uint16" and m["seq_len"] == 6 and m["n_aug"] == 2 and m["splits"] == {"train": {"n": 10}}
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["tokenizer_sha256"] == META["tokenizer_sha256"] and on_disk["dataset"] == "toy"
    raw = np.load(tmp_path / "train" / "codes.npy")
    assert raw.dtype == np.uint16 and raw.shape == (10, 2, 6)
    assert np.load(tmp_path / "train" / "labels.npy").dtype == np.int16
    assert not list(tmp_path.glob(".*"))  # no temp dirs left

    ds = CodeShards(tmp_path, "train", aug=1)
    assert len(ds) == 10 and ds.grid == (2, 3)
    c, y = ds[4]
    assert c.dtype == torch.int64 and y.dtype == torch.int64
    assert c.tolist() == codes[4, 1].tolist() and int(y) == labels[4]
    assert ds[-1][0].tolist() == codes[9, 1].tolist()
    with pytest.raises(IndexError):
        ds[10]
    bc, bl = ds.batch([7, 0, 7])
    assert bc.shape == (3, 6) and bc.tolist() == [codes[7, 1].tolist(), codes[0, 1].tolist(), codes[7, 1].tolist()]
    assert bl.tolist() == [labels[7], labels[0], labels[7]]


def test_4d_codes_are_flattened(tmp_path):
    codes, labels = toy()
    write_code_shards(tmp_path, "train", codes.reshape(10, 2, 2, 3), labels, META)
    assert CodeShards(tmp_path, "train", aug=0)[3][0].tolist() == codes[3, 0].tolist()


def test_random_augmentation_is_reproducible(tmp_path):
    codes, labels = toy(n=400)
    write_code_shards(tmp_path, "train", codes, labels, META)
    ds = CodeShards(tmp_path, "train")
    items = torch.stack([ds[i][0] for i in range(400)])
    batch, _ = ds.batch(np.arange(400))
    assert torch.equal(items, batch)  # item path == fast path
    a0 = augmentation_choice(np.arange(400), 2, epoch=0)
    assert 150 < (a0 == 1).sum() < 250  # roughly fair
    expect = torch.from_numpy(codes[np.arange(400), a0].astype(np.int64))
    assert torch.equal(items, expect)
    ds.set_epoch(1)
    b1, _ = ds.batch(np.arange(400))
    assert not torch.equal(b1, batch)
    ds.set_epoch(0)
    assert torch.equal(ds.batch(np.arange(400))[0], batch)
    other_seed = CodeShards(tmp_path, "train", seed=1)
    assert not torch.equal(other_seed.batch(np.arange(400))[0], batch)


def test_pickling_reopens_memmap(tmp_path):
    codes, labels = toy(n=2000)
    write_code_shards(tmp_path, "train", codes, labels, META)
    ds = CodeShards(tmp_path, "train", aug=0)
    blob = pickle.dumps(ds)
    assert len(blob) < codes.size  # the memmap is not copied into DataLoader workers
    ds2 = pickle.loads(blob)
    assert ds2[1234][0].tolist() == codes[1234, 0].tolist()


def test_dataloader_workers(tmp_path):
    codes, labels = toy(n=64)
    write_code_shards(tmp_path, "train", codes, labels, META)
    ds = CodeShards(tmp_path, "train")
    ds.set_epoch(3)
    ref = torch.stack([ds[i][0] for i in range(64)])
    got = torch.cat([c for c, _ in torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2)])
    assert torch.equal(ref, got)


def test_second_split_merges_and_conflicts(tmp_path):
    codes, labels = toy()
    write_code_shards(tmp_path, "train", codes, labels, META)
    write_code_shards(tmp_path, "test", codes[:3], labels[:3], META)
    assert read_manifest(tmp_path)["splits"] == {"test": {"n": 3}, "train": {"n": 10}}
    with pytest.raises(CodepriorError, match="differs from existing splits.*tokenizer_sha256"):
        write_code_shards(tmp_path, "test", codes[:3], labels[:3], {**META, "tokenizer_sha256": "cd" * 32})
    # rewriting the only split with new settings is allowed
    write_code_shards(tmp_path / "solo", "train", codes, labels, META)
    write_code_shards(tmp_path / "solo", "train", codes % 200, labels, {**META, "codebook_size": 200})
    assert CodeShards(tmp_path / "solo", "train").manifest["dtype"] == "uint8"


def test_write_validation(tmp_path):
    codes, labels = toy()
    bad = codes.copy()
    bad[3, 1, 2] = 300
    with pytest.raises(CodepriorError, match="code 300 >= codebook_size 300"):
        write_code_shards(tmp_path, "train", bad, labels, META)
    with pytest.raises(CodepriorError, match="labels shape"):
        write_code_shards(tmp_path, "train", codes, labels[:5], META)
    with pytest.raises(CodepriorError, match="does not match"):
        write_code_shards(tmp_path, "train", codes[:, :, :5], labels, META)
    with pytest.raises(CodepriorError, match="labels outside"):
        write_code_shards(tmp_path, "train", codes, labels + 4, META)
    assert not (tmp_path / "manifest.json").exists()


def test_reader_errors(tmp_path):
    with pytest.raises(CodepriorError, match="no manifest"):
        CodeShards(tmp_path)
    codes, labels = toy()
    write_code_shards(tmp_path, "train", codes, labels, META)
    with pytest.raises(CodepriorError, match="no split 'test'"):
        CodeShards(tmp_path, "test")
    with pytest.raises(CodepriorError, match="aug must be"):
        CodeShards(tmp_path, aug=2)
    np.save(tmp_path / "train" / "codes.npy", codes[:9].astype(np.uint16))
    with pytest.raises(
        CodepriorError, match=r"codes.npy: shape \[9, 2, 6\] does not match the manifest's \[10, 2, 6\]"
    ):
        CodeShards(tmp_path)
    big = codes.astype(np.uint16)
    big[5, 0, 0] = 1000
    np.save(tmp_path / "train" / "codes.npy", big)
    with pytest.raises(CodepriorError, match="code 1000 >= codebook_size 300 \\(image 5\\)"):
        CodeShards(tmp_path)
    (tmp_path / "train" / "labels.npy").unlink()
    with pytest.raises(CodepriorError, match="labels.npy: no such file"):
        CodeShards(tmp_path, check_codes=False)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CodepriorError, match="unreadable manifest"):
        CodeShards(tmp_path)


def test_shard_writer_resume(tmp_path):
    codes, labels = toy(n=23)
    fp = {"tokenizer_sha256": "x"}
    w = ShardWriter(tmp_path, "train", 23, {**META, "n_aug": 2}, chunk_size=5, fingerprint=fp)
    assert w.n_chunks == 5 and not w.resumed
    for c in (0, 3):
        s, e = w.chunk_range(c)
        w.write_chunk(c, codes[s:e], labels[s:e])
    with pytest.raises(CodepriorError, match="3 of 5 chunks not written"):
        ShardWriter(tmp_path, "train", 23, {**META, "n_aug": 2}, chunk_size=5, fingerprint=fp).finalize()
    # a new writer (after a crash) resumes with the stored chunk size, whatever it is asked for
    w2 = ShardWriter(tmp_path, "train", 23, {**META, "n_aug": 2}, chunk_size=8, fingerprint=fp)
    assert w2.resumed and w2.chunk_size == 5 and w2.pending_chunks() == [1, 2, 4]
    for c in w2.pending_chunks():
        s, e = w2.chunk_range(c)
        w2.write_chunk(c, codes[s:e], labels[s:e])
    assert not (tmp_path / "manifest.json").exists()  # not visible before finalize
    m = w2.finalize()
    assert m["splits"]["train"]["n"] == 23
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["codes.npy", "labels.npy"]
    ds = CodeShards(tmp_path, "train", aug=1)
    np.testing.assert_array_equal(ds.codes, codes)
    np.testing.assert_array_equal(ds.labels, labels)


def test_shard_writer_restarts_on_other_settings(tmp_path):
    codes, labels = toy(n=10)
    w = ShardWriter(tmp_path, "train", 10, {**META, "n_aug": 2}, chunk_size=5, fingerprint={"t": 1})
    w.write_chunk(0, codes[:5], labels[:5])
    w2 = ShardWriter(tmp_path, "train", 10, {**META, "n_aug": 2}, chunk_size=5, fingerprint={"t": 2})
    assert not w2.resumed and w2.pending_chunks() == [0, 1]
    with pytest.raises(CodepriorError, match="chunk 1 got codes"):
        w2.write_chunk(1, codes[:4], labels[:4])
    with pytest.raises(CodepriorError, match="outside 0..299"):
        w2.write_chunk(1, codes[5:] + 300, labels[5:])


def test_split_directory_permissions(tmp_path):
    import os
    import stat

    codes, labels = toy()
    write_code_shards(tmp_path, "train", codes, labels, META)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "train").stat().st_mode) == 0o777 & ~mask
