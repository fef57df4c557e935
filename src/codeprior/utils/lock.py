"""One writer per output folder: an advisory lock on ``OUT/.codeprior.lock``.

``pipeline``/``demo``, ``sample``, ``train``/``train-refine``, ``tokenize`` and ``tokenizer train`` hold
:func:`folder_lock` on their output folder while they write it, so a second process on the same ``--out`` stops
at once with one line naming the holder's pid and command instead of corrupting the first one's files.

* The lock is ``fcntl.flock`` on the lock file; the file holds the holder's pid and command (JSON) for the
  message. The kernel drops a flock when its process dies (crash, ``kill -9``, power-off of a network client
  aside), so a leftover file whose holder is gone is simply taken over, with a one-line note.
* The file is removed when the command ends; a folder the lock itself created is removed too when the command
  left nothing in it (a refused or failed run leaves no empty folder behind).
* Under ``torchrun`` only rank 0 takes it (for all ranks: a second launch's rank 0 is refused, and torchrun stops
  that launch's other ranks). Forked pipeline stage jobs inherit the parent's lock and never take it again.
* The name starts with ``.codeprior`` so that checks for foreign files in a run folder can tell it is
  codeprior's own (:data:`LOCK_NAME`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from codeprior.errors import CodepriorError, note
from codeprior.utils.io import disk_errors
from codeprior.utils.paths import show

__all__ = ["LOCK_NAME", "folder_lock", "lock_holder"]

LOCK_NAME = ".codeprior.lock"


def _read(fd: int) -> dict[str, Any]:
    try:
        rec = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def lock_holder(folder: str | os.PathLike) -> dict[str, Any]:
    """The record (``pid``, ``command``, ``started``) in ``folder``'s lock file; ``{}`` when there is none."""
    try:
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        return _read(fd)
    finally:
        os.close(fd)


def _describe(rec: dict[str, Any]) -> str:
    pid = rec.get("pid", "?")
    cmd = rec.get("command")
    return f"pid {pid}: {cmd}" if cmd else f"pid {pid}"


def _command() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv else "codeprior", *sys.argv[1:]]
    if argv[0] in ("__main__.py", "cli.py"):
        argv[0] = "codeprior"
    return " ".join(argv)[:300]


def _acquire(path: Path, folder: Path) -> int:
    """An fd of ``path`` holding its exclusive flock; a one-line error when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            rec = _read(fd)
            os.close(fd)
            raise CodepriorError(
                f"{show(folder)}: in use by another codeprior process ({_describe(rec)}); wait for it to finish "
                "or stop it, then run again"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # the previous holder removes the file when it ends: if that happened between our open and flock, we hold
        # a lock on a removed file, so start over on the path's new file
        try:
            st, now = os.fstat(fd), os.stat(path)
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def folder_lock(
    folder: str | os.PathLike, command: str | None = None, *, note: Callable[[str], None] = note
) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created when missing) for the block; yields the lock file's path.

    A second process gets a :class:`CodepriorError` naming the holder's pid and ``command`` (default: this
    process's command line). A lock file left by a process that is gone is taken over with a ``note``.
    Non-zero torchrun ranks (``RANK`` > 0) take no lock: rank 0 holds it for the launch.
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    if int(os.environ.get("RANK", "0") or 0) > 0:
        yield path
        return
    created = []  # the folders the lock makes, innermost first: removed again if the command leaves them empty
    p = Path(os.path.abspath(folder))
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    with disk_errors(path):
        folder.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, folder)
    owner = os.getpid()
    try:
        old = _read(fd)
        if old.get("pid") not in (None, os.getpid()):
            note(f"{show(path)}: took over the lock left by {_describe(old)}, which is no longer running")
        rec = {"pid": os.getpid(), "command": command or _command(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with disk_errors(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(rec) + "\n").encode(), 0)
        yield path
    finally:
        # a forked child that returns through here (it should os._exit) must not remove the parent's lock
        if os.getpid() == owner:
            with contextlib.suppress(OSError):
                path.unlink()
        os.close(fd)
        for d in created:
            try:
                d.rmdir()  # only when empty: a refused or failed first run leaves no folder behind
            except OSError:
                break
