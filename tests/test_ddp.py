"""Distributed training on CPU (gloo): a 2-process torchrun run reaches the same weights as a 1-process run with the
same global batch, and its checkpoint resumes on another world size."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from codeprior.data.codes import write_code_shards
from codeprior.priors.prior import Prior
from codeprior.train.distributed import rank_slice
from codeprior.train.trainer import TrainConfig, train
from codeprior.utils.io import load_checkpoint

N = 16
TTC = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 6, 6, 6, 7, 1])


def test_rank_slices_partition_the_global_batch():
    g = torch.arange(24)
    parts = [rank_slice(g, r, 3, 2) for r in range(3)]
    assert torch.equal(torch.cat([torch.cat(p) for p in parts]), g)
    assert all(len(m) == 4 for p in parts for m in p)
    with pytest.raises(Exception, match="divisible"):
        rank_slice(g, 0, 5, 1)


def test_resolve_device(monkeypatch):
    """One resolver for every command: auto, torchrun's local rank, unknown names and missing CUDA are handled."""
    from codeprior.errors import CodepriorError
    from codeprior.runtime import env_ranks, init_distributed, resolve_device

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert env_ranks() == (0, 1, 0)
    assert resolve_device("cpu") == torch.device("cpu")
    assert (
        resolve_device("auto")
        == resolve_device(None)
        == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    )
    with pytest.raises(CodepriorError, match="--device: unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(CodepriorError, match="sample: unknown device"):
        resolve_device("gpu0", where="sample")
    if not torch.cuda.is_available():
        with pytest.raises(CodepriorError, match="cuda requested but no CUDA device"):
            resolve_device("cuda:0")
    with pytest.raises(CodepriorError, match="expected cpu or cuda"):
        init_distributed("meta")  # a torch device, but not one the trainer runs on
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert env_ranks() == (0, 4, 3)
    assert resolve_device("cuda", check=False) == torch.device("cuda", 3)
    assert resolve_device("cuda:1", check=False) == torch.device("cuda", 1)  # an explicit index stays


def _single(root, name, **kw):
    base = dict(
        codes=str(root / "codes"),
        out=str(root / name),
        objective="cluster-ce",
        prior=str(root / "prior.safetensors"),
        model_overrides={"dim": 32, "n_layer": 1, "n_head": 2},
        dropout=0.0,
        class_dropout=0.0,
        ema=0.5,
        lr=1e-3,
        global_batch=8,
        max_steps=4,
        log_every=1,
        ckpt_every=2,
        val_every=2,
        tensorboard=False,
        progress=False,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow  # two torchrun workers + a reference run: ~35 s on the shared 2-core machine
def test_two_process_gloo_equals_one_process(tmp_path):
    g = np.random.default_rng(0)
    meta = {"grid": [3, 3], "codebook_size": N, "num_classes": 3, "n_aug": 2}
    for split, n in (("train", 20), ("test", 7)):  # odd test split: ranks get unequal validation shares
        labels = g.integers(0, 3, n)
        write_code_shards(
            tmp_path / "codes", split, (labels[:, None, None] * 5 + g.integers(0, 4, (n, 2, 9))) % N, labels, meta
        )
    Prior(TTC, {}).save(tmp_path / "prior.safetensors")

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "codeprior",
        "train",
        "--codes",
        str(tmp_path / "codes"),
        "--out",
        str(tmp_path / "ddp"),
        "--objective",
        "cluster-ce",
        "--prior",
        str(tmp_path / "prior.safetensors"),
        "--model-override",
        "dim=32",
        "--model-override",
        "n_layer=1",
        "--model-override",
        "n_head=2",
        "--dropout",
        "0",
        "--class-dropout",
        "0",
        "--ema",
        "0.5",
        "--lr",
        "1e-3",
        "--global-batch",
        "8",
        "--grad-accum",
        "2",  # 2 ranks x 2 micro-steps (no_sync) x 2 samples
        "--max-steps",
        "4",
        "--log-every",
        "1",
        "--ckpt-every",
        "2",
        "--val-every",
        "2",
        "--no-tensorboard",
        "--no-progress",
        "--threads",
        "1",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    single = train(_single(tmp_path, "single"))
    a = load_checkpoint(tmp_path / "single" / "model.pt")
    b = load_checkpoint(tmp_path / "ddp" / "model.pt")
    for part in ("model", "ema"):
        for key in a[part]:
            torch.testing.assert_close(b[part][key], a[part][key], rtol=1e-4, atol=1e-5, msg=f"{part}.{key}")
    # rank-0 logging only: one row per step; validation covers the whole (odd-sized) split on both
    lines = (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(x.split(",")[0]) for x in lines] == [1, 2, 3, 4]
    ddp_summary = __import__("json").loads((tmp_path / "ddp" / "summary.json").read_text())
    assert ddp_summary["world_size"] == 2
    assert ddp_summary["val_loss"] == pytest.approx(single["val_loss"], rel=1e-4)

    # resume the 2-process checkpoint of step 2 in one process: same end point
    ck = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "0000002.pt")
    assert ck["trainer"]["world_size"] == 2 and len(ck["rng"]) == 2 and ck["data"]["samples_seen"] == 16
    train(_single(tmp_path, "mixed", resume=str(tmp_path / "ddp" / "checkpoints" / "0000002.pt")))
    c = load_checkpoint(tmp_path / "mixed" / "model.pt")
    for key in a["model"]:
        torch.testing.assert_close(c["model"][key], a["model"][key], rtol=1e-4, atol=1e-5)
