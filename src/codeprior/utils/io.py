"""Atomic writes (temp file + rename), hashing, and safe checkpoint loading.

Every file codeprior writes goes through :func:`atomic_path`, so an interrupted run never leaves a
half-written output behind. Checkpoints are always read with ``weights_only=True``; the one class allowed beyond
tensors and plain data is ``argparse.Namespace`` (the ``args`` entry LlamaGen's, IAR's and DCPE's training
scripts save), through torch's safe-globals mechanism: its fields are set as plain attributes, so nothing in the
file is called, and any other class or function inside it (a pickle payload) is still refused.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from codeprior.errors import CodepriorError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp_path
        # mkstemp creates 0600, and some writers (safetensors) replace the file: set the usual mode last
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temp file + rename (never a half-written checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a ``.pt``/``.pth`` file with ``weights_only=True``; bad files raise a one-line CodepriorError."""
    path = Path(path)
    if not path.exists():
        raise CodepriorError(f"{path}: no such file")
    if path.is_dir():
        raise CodepriorError(f"{path}: is a directory, expected a checkpoint file")
    try:
        with _safe_globals():
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many different types for corrupt/unsafe files
        raise CodepriorError(f"{path}: cannot read checkpoint ({_load_error(e)})") from None


#: Classes a checkpoint may hold besides tensors and plain data (still ``weights_only=True``): the ``args``
#: namespace of LlamaGen's / IAR's / DCPE's training scripts.
SAFE_CHECKPOINT_CLASSES: tuple[type, ...] = (argparse.Namespace,)


def _safe_globals() -> contextlib.AbstractContextManager[Any]:
    """``torch.serialization.safe_globals`` for :data:`SAFE_CHECKPOINT_CLASSES` (torch >= 2.5; older torch
    refuses a pickled Namespace like any other class)."""
    ctx = getattr(torch.serialization, "safe_globals", None)
    return ctx(list(SAFE_CHECKPOINT_CLASSES)) if ctx is not None else contextlib.nullcontext()


def _load_error(e: Exception) -> str:
    """One line for a failed ``torch.load``. The weights-only refusal keeps torch's reason (the unsupported global
    or opcode) but never its advice to pass ``weights_only=False``, which would run code from the file."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    if "Weights only load failed" in text:
        m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.?\s*Please use|\n\n|$)", text, re.S) or re.search(
            r"(Trying to load unsupported GLOBAL [^\n]+?)\.?\s*(?:\n|$)", text
        )
        reason = " ".join(m.group(1).split()) if m else "unsupported content"
        if reason.startswith("Unsupported operand"):
            return f"not a PyTorch checkpoint: {reason}"
        return (
            f"it holds more than tensors and plain data: {reason}; codeprior loads checkpoints with "
            "weights_only=True and never runs code from a file (re-save the weights with torch.save(state_dict))"
        )
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_tensor(t: torch.Tensor) -> str:
    """Hash of a tensor's float32 values and shape (independent of the file it came from)."""
    t = t.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256()
    h.update(repr(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()
