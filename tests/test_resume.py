"""Checkpoints and resume: an interrupted run (stopped, or really killed with SIGKILL) resumed with --resume ends
with the same weights as an uninterrupted run; a different prior is refused."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from codeprior.cli import main as cli_main
from codeprior.data.codes import write_code_shards
from codeprior.errors import CodepriorError
from codeprior.priors.prior import Prior
from codeprior.train.trainer import TrainConfig, find_latest_checkpoint, train
from codeprior.utils.io import load_checkpoint

N = 16
TTC = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 6, 6, 6, 7, 1])


@pytest.fixture
def data(tmp_path):
    g = np.random.default_rng(0)
    meta = {"grid": [3, 3], "codebook_size": N, "num_classes": 3, "n_aug": 3}
    for split, n in (("train", 20), ("test", 8)):  # 20 samples, batch 8: steps cross epoch boundaries
        labels = g.integers(0, 3, n)
        write_code_shards(
            tmp_path / "codes", split, (labels[:, None, None] * 5 + g.integers(0, 4, (n, 3, 9))) % N, labels, meta
        )
    Prior(TTC, {}).save(tmp_path / "prior.safetensors")
    return tmp_path


def _cfg(root, name, **kw):
    base = dict(
        codes=str(root / "codes"),
        out=str(root / name),
        objective="cluster-ce",
        prior=str(root / "prior.safetensors"),
        model_overrides={"dim": 32, "n_layer": 1, "n_head": 2},
        # dropout, class dropout, random augmentations, EMA, warmup + cosine, accumulation: all must resume
        dropout=0.1,
        class_dropout=0.2,
        ema=0.9,
        schedule="cosine",
        warmup_steps=2,
        lr=1e-3,
        grad_accum=2,
        global_batch=8,
        max_steps=6,
        log_every=1,
        ckpt_every=2,
        val_every=3,
        tensorboard=False,
        progress=False,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _assert_same_final(run_a, run_b):
    a, b = load_checkpoint(Path(run_a) / "model.pt"), load_checkpoint(Path(run_b) / "model.pt")
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=1e-6, msg=f"{part}.{key}")


def test_stop_and_resume_equals_uninterrupted(data):
    train(_cfg(data, "full"))
    out = train(_cfg(data, "split", stop_at_step=3))
    assert out["step"] == 3 and not out["finished"] and not (data / "split" / "model.pt").exists()
    assert find_latest_checkpoint(data / "split").name == "0000003.pt"
    out = train(_cfg(data, "split", resume="auto"))
    assert out["step"] == 6 and out["finished"]
    _assert_same_final(data / "full", data / "split")
    # the metrics log continues without duplicated steps
    steps = [int(line.split(",")[0]) for line in (data / "split" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]
    ck = load_checkpoint(data / "split" / "checkpoints" / "0000006.pt")
    assert {"model", "optimizer", "steps", "args", "ema", "config", "scheduler", "rng", "data", "prior_sha256"} <= set(
        ck
    )
    assert ck["data"]["samples_seen"] == 48 and ck["prior_sha256"] == Prior(TTC, {}).sha256()


def test_resume_from_an_explicit_earlier_checkpoint(data):
    train(_cfg(data, "full"))
    train(_cfg(data, "r", stop_at_step=4))
    train(_cfg(data, "r", resume=str(data / "r" / "checkpoints" / "0000002.pt")))
    _assert_same_final(data / "full", data / "r")


@pytest.mark.slow  # a CLI subprocess (torch import) + two in-process runs: ~30 s on the shared machine
def test_sigkill_then_resume(data):
    """Really kill the CLI (SIGKILL) after a checkpoint is on disk, resume, compare with an uninterrupted run."""
    steps = 150
    train(_cfg(data, "full", max_steps=steps, ckpt_every=5, val_every=0, log_every=10))
    run = data / "killed"
    cmd = [
        sys.executable,
        "-m",
        "codeprior",
        "train",
        "--codes",
        str(data / "codes"),
        "--out",
        str(run),
        "--objective",
        "cluster-ce",
        "--prior",
        str(data / "prior.safetensors"),
        "--model-override",
        "dim=32",
        "--model-override",
        "n_layer=1",
        "--model-override",
        "n_head=2",
        "--dropout",
        "0.1",
        "--class-dropout",
        "0.2",
        "--ema",
        "0.9",
        "--schedule",
        "cosine",
        "--warmup-steps",
        "2",
        "--lr",
        "1e-3",
        "--grad-accum",
        "2",
        "--global-batch",
        "8",
        "--max-steps",
        str(steps),
        "--log-every",
        "10",
        "--ckpt-every",
        "5",
        "--no-tensorboard",
        "--no-progress",
        "--threads",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while find_latest_checkpoint(run) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (run / "model.pt").exists()  # it really was interrupted
    killed_at = int(find_latest_checkpoint(run).stem)
    assert 0 < killed_at < steps
    out = train(_cfg(data, "killed", max_steps=steps, ckpt_every=5, val_every=0, log_every=10, resume="auto"))
    assert out["step"] == steps
    _assert_same_final(data / "full", run)


def test_prior_mismatch_is_refused(data, capsys):
    train(_cfg(data, "p", stop_at_step=2))
    other = data / "other.safetensors"
    Prior(torch.arange(N) % 4, {}).save(other)
    with pytest.raises(CodepriorError, match="does not match the checkpoint's"):
        train(_cfg(data, "p", resume="auto", prior=str(other)))
    with pytest.raises(CodepriorError, match="objective"):
        train(_cfg(data, "p", resume="auto", objective="token", prior=None))
    rc = cli_main(
        [
            "train",
            "--codes",
            str(data / "codes"),
            "--out",
            str(data / "p"),
            "--objective",
            "cluster-ce",
            "--prior",
            str(other),
            "--max-steps",
            "6",
            "--resume",
        ]
    )
    assert rc == 2 and "resume with the prior the run was started with" in capsys.readouterr().err


def test_resume_trims_eval_results_after_the_checkpoint(data):
    import json

    def eval_fn(step, model):
        return {"seen": float(step)}

    train(_cfg(data, "e", stop_at_step=4, eval_every=2), eval_fn=eval_fn)
    jl = data / "e" / "eval.jsonl"
    assert [json.loads(x)["step"] for x in jl.read_text().splitlines()] == [2, 4]
    with open(jl, "a") as f:
        f.write('{"step": 5, "seen"')  # a torn line, as a killed run can leave
    train(_cfg(data, "e", eval_every=2, resume=str(data / "e" / "checkpoints" / "0000002.pt")), eval_fn=eval_fn)
    assert [json.loads(x)["step"] for x in jl.read_text().splitlines()] == [2, 4, 6]
    train(_cfg(data, "e", eval_every=2, overwrite=True), eval_fn=eval_fn)  # a fresh run starts a fresh file
    assert [json.loads(x)["step"] for x in jl.read_text().splitlines()] == [2, 4, 6]
