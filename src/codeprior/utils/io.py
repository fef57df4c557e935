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
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codeprior.errors import CodepriorError
from codeprior.utils.paths import show

if TYPE_CHECKING:  # torch is imported where it is used: the prior path and --help run without it
    import torch

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})
"""Write failures that are the disk's, not the program's: full, over quota, failing, read-only."""
FULL_BELOW = 1 << 20
"""A write that fails with fewer free bytes than this on its disk is reported as a full disk (torch.save and
safetensors report ENOSPC as their own error types, without the errno)."""
_STREAMS = ("/dev/stdin", "/dev/stdout", "/dev/stderr")


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes (for this user) on the file system holding ``path`` or its nearest existing folder."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return -1


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    x = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(x) < 1024 or unit == "TiB":
            return f"{int(x)} bytes" if unit == "bytes" else f"{x:.1f} {unit}"
        x /= 1024
    raise AssertionError  # pragma: no cover


def disk_error(
    e: BaseException, path: str | os.PathLike | None = None, *, guess_full: bool = True
) -> CodepriorError | None:
    """The one-line :class:`CodepriorError` for a write that failed because of the disk (ENOSPC, EDQUOT, EIO,
    EROFS; with ``guess_full``, any error while the disk holding ``path`` is full), else None: other errors are
    never swallowed."""
    if isinstance(e, CodepriorError) or not isinstance(e, Exception):
        return None
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
        where = e.filename if e.filename is not None else path
        name = show(where) if where is not None else "a file"
        free = free_bytes(where) if where is not None else -1
        room = f" ({human_bytes(free)} free there)" if e.errno in (errno.ENOSPC, errno.EDQUOT) and free >= 0 else ""
        return CodepriorError(f"{name}: cannot write: {os.strerror(e.errno)}{room}; {_AFTER}")
    if guess_full and path is not None and 0 <= (free := free_bytes(path)) < FULL_BELOW:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        why = f"{type(e).__name__}: {first}" if first else type(e).__name__
        return CodepriorError(
            f"{show(path)}: cannot write: the disk is full ({human_bytes(free)} free there; {why}); {_AFTER}"
        )
    return None


_AFTER = "free some space (or fix the disk) and run the command again"


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike, *, guess_full: bool = True) -> Iterator[None]:
    """Turn a disk failure (:func:`disk_error`) while writing ``path`` into one line naming it."""
    try:
        yield
    except Exception as e:
        err = disk_error(e, path, guess_full=guess_full)
        if err is None:
            raise
        raise err from None


def _stream_alias(path: Path) -> bool:
    """Whether ``path`` is, or links through, a process's file descriptor (``/dev/stdout``, ``/proc/self/fd/1``)."""
    p = os.path.abspath(path)
    for _ in range(40):
        if p in _STREAMS or p.startswith(("/dev/fd/", "/proc/")):
            return True
        if not os.path.islink(p):
            return False
        p = os.path.join(os.path.dirname(p), os.readlink(p))
    return False


def write_target(path: str | os.PathLike) -> Path | None:
    """Where a write of ``path`` lands. A new path or a regular file: itself (replaced atomically). A symbolic link:
    the file it points to (the link stays a link; a dangling link creates its target, in a folder that must
    exist). A device, FIFO, socket or a process's stream (``/dev/null``, ``/dev/stdout``): None, written through."""
    path = Path(path)
    if _stream_alias(path):
        return None
    try:
        st = os.stat(path)  # follows links
    except FileNotFoundError:
        if not path.is_symlink():
            return path
        real = Path(os.path.realpath(path))
        if not real.parent.is_dir():
            raise CodepriorError(
                f"{show(path)}: is a symbolic link to {show(real)}, whose folder does not exist"
            ) from None
        return real
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CodepriorError(f"{show(path)}: symbolic link loop") from None
        raise
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return None
    return Path(os.path.realpath(path)) if path.is_symlink() else path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, else delete it.

    What is there is respected (:func:`write_target`): a symbolic link's target is replaced, not the link; a device,
    FIFO or stream is written through (the path itself is yielded). A full, failing or read-only disk is a
    one-line :class:`CodepriorError` naming the file (:func:`disk_error`), and no temporary file stays.
    """
    given = Path(path)
    target = write_target(given)
    if target is None:
        with disk_errors(given, guess_full=False):
            yield given
        return
    with disk_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp_path
        # mkstemp creates 0600, and some writers (safetensors) replace the file: set the usual mode last
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    except BaseException as e:
        err = disk_error(e, target)  # before the temp file goes: its bytes are what filled the disk
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if err is not None:
            raise err from None
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist") and type(o).__module__.startswith("torch"):  # a tensor, without importing torch
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
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a ``.pt``/``.pth`` file with ``weights_only=True``; bad files raise a one-line CodepriorError."""
    path = Path(path)
    if not path.exists():
        raise CodepriorError(f"{path}: no such file")
    if path.is_dir():
        raise CodepriorError(f"{path}: is a directory, expected a checkpoint file")
    import torch

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
    import torch

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
    import torch

    return sha256_array(t.detach().to("cpu", torch.float32).numpy())


def sha256_array(a: Any) -> str:
    """:func:`sha256_tensor` of a NumPy array (the same hash for the same float32 values), without torch."""
    import numpy as np

    a = np.ascontiguousarray(a, dtype=np.float32)
    h = hashlib.sha256()
    h.update(repr(tuple(int(s) for s in a.shape)).encode())
    h.update(a.tobytes())
    return h.hexdigest()
