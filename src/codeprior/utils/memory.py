"""Memory before work: estimate what a command will build and refuse it when the machine does not have it.

``sample`` (kept samples, chunk assembly, KV caches and the speculative decoder's window buffers) and ``evaluate``
(pixels as floats, features, PRDC distance matrices) call :func:`check_memory` with their estimate before any work,
so ``sample --num 1000000000000`` is a one-line refusal naming the estimate instead of an allocation of terabytes.
``--ignore-memory-check`` (:func:`add_memory_flag`, one spelling for every command) skips the refusal.

Available memory: ``psutil.virtual_memory().available`` when psutil is installed, else ``MemAvailable`` of
``/proc/meminfo``; on a CUDA device ``torch.cuda.mem_get_info``. When neither can be read nothing is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from codeprior.errors import CodepriorError

FLAG = "--ignore-memory-check"
MEMINFO = Path("/proc/meminfo")


def add_memory_flag(p: argparse.ArgumentParser) -> None:
    """``--ignore-memory-check`` (dest ``ignore_memory_check``), spelled the same in every command."""
    p.add_argument(
        FLAG,
        dest="ignore_memory_check",
        action="store_true",
        help="run even when the memory estimate exceeds what the machine has available (docs/checks.md)",
    )


def available_bytes(device: Any = None) -> int | None:
    """Free memory of ``device`` (a CUDA device: its free memory) or of the host (psutil, else /proc/meminfo);
    None when it cannot be told."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info(torch.device(device))
            return int(free)
        return None
    try:
        import psutil  # type: ignore[import-untyped]  # optional, no stubs needed
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def fmt_bytes(n: float) -> str:
    """``1.5 GB`` style (powers of 1000, as disks and ``free -h --si``)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def check_memory(
    need: int, what: str, *, hint: str = "", ignore: bool = False, device: Any = None, where: str = "host"
) -> None:
    """Refuse (one line, exit 2) when ``need`` bytes exceed the available memory of ``device`` (None: the host).

    ``what`` names the work (``sample: 1000 samples of 256x256x3``), ``hint`` how to need less."""
    if ignore:
        return
    avail = available_bytes(device)
    if avail is None or need <= avail:
        return
    place = f"{device} memory" if device is not None and str(device).startswith("cuda") else f"{where} memory"
    more = f"; {hint}" if hint else ""
    raise CodepriorError(
        f"{what}: needs about {fmt_bytes(need)} of {place}, {fmt_bytes(avail)} available{more} "
        f"(or pass {FLAG} to try anyway)"
    )
