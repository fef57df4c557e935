"""Distributed plumbing for the trainer: model wrapping (DDP / FSDP), collectives, full state dicts, and the
world-size-independent split of each global batch. Device and process-group set-up (:class:`DistInfo`,
:func:`init_distributed`) live in :mod:`codeprior.runtime`, shared with the other commands, and are re-exported.

The same command runs single-process or under ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in the
environment): gloo on CPU, NCCL on GPU. Every global batch is one fixed list of sample indices; rank ``r`` takes
the ``r``-th contiguous slice of it and splits that into ``grad_accum`` micro-batches, so the samples that make up a
step (and, with equal micro-batch sizes, the averaged gradient) do not depend on the world size.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
import torch.nn as nn

from codeprior.errors import CodepriorError
from codeprior.models.checkpoint import unwrap_model  # re-exported: the one unwrapping helper
from codeprior.runtime import DistInfo, init_distributed, shutdown_distributed

if TYPE_CHECKING:
    from codeprior.models.gpt import TransformerBase

__all__ = [
    "DistInfo",
    "init_distributed",
    "shutdown_distributed",
    "rank_slice",
    "all_reduce_sum",
    "all_gather_objects",
    "broadcast_object",
    "wrap_model",
    "unwrap_model",
    "full_model_state_dict",
    "full_optimizer_state_dict",
    "load_optimizer_state_dict",
    "free_port",
    "barrier",
]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def rank_slice(global_indices: torch.Tensor, rank: int, world_size: int, grad_accum: int) -> list[torch.Tensor]:
    """This rank's micro-batches of one global batch: the ``rank``-th contiguous slice, cut into ``grad_accum``."""
    g = global_indices.numel()
    if g % (world_size * grad_accum):
        raise CodepriorError(
            f"--global-batch {g} must be divisible by world size x --grad-accum = {world_size} x {grad_accum}"
        )
    per_rank = g // world_size
    mine = global_indices[rank * per_rank : (rank + 1) * per_rank]
    return list(mine.chunk(grad_accum))


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (in place; identity when single-process)."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_model(model: nn.Module, info: DistInfo, *, fsdp: bool = False, bf16: bool = False) -> nn.Module:
    """DDP (or FSDP with block-level auto-wrap from ``model.get_fsdp_wrap_module_list()``) when distributed."""
    if fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import MixedPrecision, ShardingStrategy
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        if not (dist.is_available() and dist.is_initialized()):
            raise CodepriorError("--fsdp needs a process group: launch with torchrun --nproc-per-node N (N >= 1)")
        if info.device.type != "cuda":
            raise CodepriorError("--fsdp needs CUDA devices (PyTorch's FSDP does not run on CPU); drop it to use DDP")
        blocks = {type(m) for m in cast("TransformerBase", model).get_fsdp_wrap_module_list()}
        mp = (
            MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, buffer_dtype=torch.float32)
            if bf16
            else None
        )
        return FSDP(
            model,
            auto_wrap_policy=ModuleWrapPolicy(blocks),
            sharding_strategy=ShardingStrategy.FULL_SHARD,
            mixed_precision=mp,
            device_id=info.device if info.device.type == "cuda" else None,
            use_orig_params=True,
            sync_module_states=True,
        )
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    return model


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, FSDP)


def no_sync(model: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """``model.no_sync()`` when ``skip`` (a non-final micro-step) and the model supports it, else a no-op."""
    m = getattr(model, "_orig_mod", model)
    if skip and hasattr(m, "no_sync"):
        return cast(Any, m).no_sync()  # DDP / FSDP method; nn.Module's attribute typing says Tensor | Module
    return contextlib.nullcontext()


def full_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Full (unsharded) CPU state dict in LlamaGen key names; ``None`` on non-zero ranks under FSDP.

    Collective under FSDP: every rank must call it.
    """
    m = getattr(model, "_orig_mod", model)
    if is_fsdp(m):
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        cfg = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FSDP.state_dict_type(m, StateDictType.FULL_STATE_DICT, cfg):
            sd = m.state_dict()
        return {k: v.detach().cpu() for k, v in sd.items()} if dist.get_rank() == 0 else None
    return {k: v.detach().cpu().clone() for k, v in unwrap_model(model).state_dict().items()}


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Full optimizer state (parameter-index keyed, like a single-process run); collective under FSDP."""
    m = getattr(model, "_orig_mod", model)
    if is_fsdp(m):
        from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.state_dict_type(
            m,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=True, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=True, rank0_only=True),
        ):
            osd = FSDP.optim_state_dict(m, optimizer)
        return _to_cpu(osd) if dist.get_rank() == 0 else None
    return _to_cpu(optimizer.state_dict())


def load_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, osd: dict[str, Any]) -> None:
    m = getattr(model, "_orig_mod", model)
    if is_fsdp(m):
        from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.state_dict_type(
            m,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(rank0_only=False),
            FullOptimStateDictConfig(rank0_only=False),
        ):
            osd = FSDP.optim_state_dict_to_load(m, optimizer, osd)
    optimizer.load_state_dict(osd)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def free_port() -> int:
    """A free TCP port on localhost (for tests that launch ``torchrun``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def iter_chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, size):
        yield s, min(n, s + size)
