"""Device, process group and rank handling for every command (train, tokenize, tokenizer train, sample).

* :func:`env_ranks`: ``(rank, world_size, local_rank)`` from ``torchrun``'s environment (``(0, 1, 0)`` without it);
* :func:`resolve_device`: a device name (``auto``/None, ``cpu``, ``cuda``, ``cuda:1``, ...) -> ``torch.device``;
  ``auto`` is CUDA when available, ``cuda`` under torchrun is this rank's GPU (``cuda:LOCAL_RANK``);
* :func:`init_process_group` / :func:`destroy_process_group` / :func:`process_group`: join torchrun's process
  group when there is one (NCCL for CUDA devices, gloo otherwise) and leave it only if this call made it;
* :class:`DistInfo` + :func:`init_distributed`: the trainer's view (rank, world, device, whether it logs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from codeprior.errors import CodepriorError

__all__ = [
    "env_ranks",
    "resolve_device",
    "init_process_group",
    "destroy_process_group",
    "process_group",
    "DistInfo",
    "init_distributed",
    "shutdown_distributed",
]


def env_ranks() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``."""
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def resolve_device(name: str | torch.device | None, *, check: bool = True, where: str = "--device") -> torch.device:
    """The ``torch.device`` of a device name.

    ``None``/``auto``: this rank's GPU (``cuda:LOCAL_RANK``) when CUDA is available, else ``cpu``. ``cuda`` without an
    index under torchrun (``WORLD_SIZE > 1``): ``cuda:LOCAL_RANK``. Anything else as ``torch.device`` reads it;
    a name it cannot read, or (with ``check``) CUDA on a machine without it, is a one-line error.
    """
    _, world, local = env_ranks()
    if name is None or str(name) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local)
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise CodepriorError(f"{where}: unknown device {str(name)!r} (cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and dev.index is None and world > 1:
        dev = torch.device("cuda", local)
    if check and dev.type == "cuda" and not torch.cuda.is_available():
        raise CodepriorError(f"{where}: cuda requested but no CUDA device is available")
    return dev


def _backend(device: torch.device | None) -> str:
    return "nccl" if device is not None and device.type == "cuda" else "gloo"


def init_process_group(
    device: torch.device | None = None, *, also_single: bool = False, bind_device: bool = False
) -> bool:
    """Join torchrun's process group (NCCL for a CUDA ``device``, else gloo) when ``WORLD_SIZE > 1``, or with
    ``also_single`` when torchrun launched a single process (so FSDP runs on one GPU too). ``bind_device``: pass
    the CUDA ``device`` as the group's ``device_id`` (NCCL connects eagerly on it).

    Returns whether this call created the group (then :func:`destroy_process_group` leaves it).
    """
    world = env_ranks()[1]
    launched = world > 1 or (also_single and "MASTER_ADDR" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ)
    if not launched or not dist.is_available() or dist.is_initialized():
        return False
    kw: dict[str, Any] = {"device_id": device} if bind_device and device is not None and device.type == "cuda" else {}
    dist.init_process_group(backend=_backend(device), **kw)
    return True


def destroy_process_group(created: bool) -> None:
    """Leave the process group if :func:`init_process_group` made it."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(device: torch.device | None = None) -> Iterator[bool]:
    """``with process_group(dev) as distributed:`` join torchrun's group for the block (``distributed``: world > 1)."""
    created = init_process_group(device)
    try:
        yield env_ranks()[1] > 1
    finally:
        destroy_process_group(created)


@dataclass
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its device, and whether it logs/saves."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """The trainer's set-up: resolve ``device`` (a CUDA device gets an index and becomes current; under torchrun
    it is this rank's GPU) and join the process group if launched by ``torchrun`` (any world size)."""
    rank, world, local = env_ranks()
    dev = resolve_device(device)
    if dev.type not in ("cpu", "cuda"):
        raise CodepriorError(f"--device: expected cpu or cuda[:i], got {device!r}")
    if dev.type == "cuda":
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    here = init_process_group(dev, also_single=True, bind_device=True)
    if world > 1:
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, initialized_here=here)


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the process group if :func:`init_distributed` joined it."""
    destroy_process_group(info.initialized_here)
