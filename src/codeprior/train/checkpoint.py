"""Checkpoint files shared by the training loops: ``RUN/checkpoints/NNNNNNN.pt`` lookup and pruning, RNG state
capture/restore, and the one-line error of a run gone non-finite. The file layout is
:func:`codeprior.models.checkpoint.checkpoint_dict` (one layout for every model file), and weights load through
:func:`codeprior.models.checkpoint.load_state_dict_strict`.

Checkpoints are written atomically with :func:`codeprior.utils.io.torch_save_atomic` (temporary file + rename),
so an interrupted run never leaves a half-written newest checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from codeprior.errors import CodepriorError

__all__ = [
    "CKPT_DIR",
    "RUN_FILES",
    "remove_failed_start",
    "step_checkpoints",
    "find_latest_checkpoint",
    "prune_checkpoints",
    "rng_state",
    "set_rng_state",
    "nonfinite_error",
]

CKPT_DIR = "checkpoints"
RUN_FILES = ("config.json", "metrics.csv", "eval.jsonl", "summary.json", "model.pt", "tb", CKPT_DIR)
"""What the trainer writes in its run folder (:mod:`codeprior.train.trainer`)."""


def remove_failed_start(run: Path, existed: set[str] | None) -> None:
    """After a run that failed before its first checkpoint: remove the :data:`RUN_FILES` this run wrote (never one
    that was there before it: ``existed``, None when the folder did not exist), and the folder itself when the run
    created it and it is now empty. A folder with an earlier run's checkpoint is left as it is (``--resume``)."""
    if existed is not None and CKPT_DIR in existed and find_latest_checkpoint(run) is not None:
        return
    for name in RUN_FILES:
        if existed is not None and name in existed:
            continue
        p = run / name
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    if existed is None:
        with contextlib.suppress(OSError):
            run.rmdir()  # only when empty


def step_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """The ``NNNNNNN.pt`` files of a checkpoint folder, oldest step first (none if it does not exist)."""
    d = Path(ckpt_dir)
    found = [p for p in d.glob("*.pt") if re.fullmatch(r"\d+\.pt", p.name)] if d.is_dir() else []
    return sorted(found, key=lambda p: int(p.stem))


def find_latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """Newest ``RUN/checkpoints/NNNNNNN.pt`` by step, or None."""
    found = step_checkpoints(Path(run_dir) / CKPT_DIR)
    return found[-1] if found else None


def prune_checkpoints(ckpt_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints of ``ckpt_dir`` (``keep=0`` deletes them all)."""
    old = step_checkpoints(ckpt_dir)
    for p in old[: max(0, len(old) - keep)]:
        p.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """This process's torch / numpy / python (and CUDA, when initialised) RNG states, as checkpointable values."""
    # numpy's stub types the no-argument call as the dict form; the default (legacy=True) returns this tuple
    st = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(st[1], dtype=np.int64)),
        "numpy_pos": int(st[2]),
        "numpy_has_gauss": int(st[3]),
        "numpy_cached_gaussian": float(st[4]),
        "python": [int(x) for x in random.getstate()[1]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(st: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(st["torch"])
    np.random.set_state(
        (
            "MT19937",
            st["numpy_keys"].numpy().astype(np.uint32),
            st["numpy_pos"],
            st["numpy_has_gauss"],
            st["numpy_cached_gaussian"],
        )
    )
    random.setstate((3, tuple(st["python"]), None))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def nonfinite_error(run: Path, step: int, finite: list[bool], loss: float | None) -> CodepriorError:
    """The one-line error that stops a run whose loss (``loss``; None: its weights) went NaN / inf at ``step``:
    ``finite`` holds, for each step since the last log, whether the running loss was still finite (the first
    False is the step that broke). Names the run folder and its newest checkpoint, which is still finite."""
    first = step - len(finite) + 1
    where = f"at step {first + finite.index(False)}" if False in finite else f"between steps {first} and {step}"
    what = f"training loss is {loss} {where}" if loss is not None else f"weights are non-finite after step {step}"
    return CodepriorError(
        f"{run}: {what}; stopped (newest checkpoint: {find_latest_checkpoint(run) or 'none'}); "
        "lower --lr or set --grad-clip, then --resume from a checkpoint before it"
    )
