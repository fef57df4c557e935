"""Tiny inputs for the benchmarks' ``--smoke`` modes: a random IDX image set and a pipeline run folder trained on it
for a few steps (seconds on CPU, no download). What a smoke run measures means nothing; that it runs is the point.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# the IDX file prefix of each split (the Fashion-MNIST names load_idx looks for)
_PREFIX = {"train": "train", "test": "t10k"}


def idx_dataset(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """Random 28x28 images whose brightness follows the label (so a classifier has something to learn), labels
    0-9, written as a Fashion-MNIST-named IDX folder (a ``data_dir``); returns ``root``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.arange(n) % 10
        x = rng.integers(0, 60, (n, 28, 28)) + y[:, None, None] * 20
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            a = np.ascontiguousarray(arr, dtype=np.uint8)
            header = struct.pack(">HBB", 0, 0x08, a.ndim) + b"".join(struct.pack(">I", d) for d in a.shape)
            with gzip.open(root / f"{_PREFIX[split]}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + a.tobytes())
    return root


def tiny_config(data_dir: Path, variants: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A pipeline config at smoke size on ``data_dir``: 5 tokenizer steps, 1 classifier epoch, 2 training steps."""
    return {
        "name": "smoke",
        "device": "cpu",
        "threads": 1,
        "data": {"dataset": "fashion-mnist", "data_dir": str(data_dir)},
        "tokenizer": {"schedule": "demo", "steps": 5, "batch_size": 16, "num_recon": 8, "num_images": 20},
        "tokenize": {"batch_size": 100},
        "classifier": {"epochs": 1, "use_cache": False},
        "priors": {"k": 8},
        "train": {
            "max_steps": 2,
            "global_batch": 8,
            "eval_every": 0,
            "eval_samples": 10,
            "ckpt_every": 2,
            "variants": list(variants or [{"name": "token", "objective": "token"}]),
        },
        "refine": {"max_steps": 2, "global_batch": 8},
    }


#: the stages every smoke run gets from a shared tiny run (``CODEPRIOR_SMOKE_RUN``)
SHARED_STAGES = ("tokenize", "classifier", "train-token")


def tiny_run(root: Path, until: Sequence[str] = ("classifier", "train-token"), **kw: Any) -> Path:
    """A pipeline run folder ``root/run`` on a random image set ``root/data``, with the stages ``until`` (and
    what they need) done; ``kw`` goes to :func:`tiny_config`. Returns the run folder.

    With ``CODEPRIOR_SMOKE_RUN`` set (tests/test_benchmarks_smoke.py builds one tiny run for all smoke runs), a copy
    of that folder's ``run/`` and ``data/`` (a tiny run with :data:`SHARED_STAGES` done) instead."""
    from codeprior.pipeline import config_from_dict, run_pipeline

    shared = os.environ.get("CODEPRIOR_SMOKE_RUN")
    if shared and not kw and set(until) <= set(SHARED_STAGES):
        for part in ("data", "run"):
            shutil.copytree(Path(shared) / part, root / part)
        return root / "run"
    cfg = config_from_dict(tiny_config(idx_dataset(root / "data"), **kw), "smoke.yaml")
    for stage in until:
        run_pipeline(cfg, root / "run", until=stage, log=lambda _m: None)
    return root / "run"
