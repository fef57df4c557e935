"""Load and validate a VQ codebook (float32 [N, D]) from a LlamaGen checkpoint, ``.safetensors`` or ``.npy``.

Every problem with the input becomes a one-line :class:`CodepriorError` naming the file (the CLI exits 2):
missing or unreadable file, no codebook tensor (the keys that *were* there are listed), wrong rank, empty,
non-finite values. :func:`validate_k` checks a requested number of clusters against the codebook.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from codeprior.errors import CodepriorError

if TYPE_CHECKING:  # torch is imported where it is used: .npy / .safetensors codebooks load without it
    import torch

#: Where LlamaGen's VQ models keep the codebook inside the model state dict.
LLAMAGEN_KEY = "quantize.embedding.weight"
#: The tensor name codeprior uses in its own ``.safetensors`` codebook files.
SAFETENSORS_KEY = "codebook"

_TORCH_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin"}


def _list_keys(d: Mapping[str, Any], limit: int = 12) -> str:
    keys = [str(k) for k in d]
    shown = ", ".join(keys[:limit]) if keys else "none"
    return shown + (f", ... ({len(keys)} keys)" if len(keys) > limit else "")


def _from_state(obj: Any, path: Path) -> torch.Tensor:
    """Find the codebook in a loaded ``.pt`` object: ``{"model": sd}``, a bare state dict, or a tensor."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj
    if not isinstance(obj, Mapping):
        raise CodepriorError(f"{path}: expected a state dict or {{'model': state_dict}}, got {type(obj).__name__}")
    candidates: list[Mapping[str, Any]] = []
    for wrapper in ("model", "state_dict", "ema"):
        if isinstance(obj.get(wrapper), Mapping):
            candidates.append(obj[wrapper])
    candidates.append(obj)
    for sd in candidates:
        for key in (LLAMAGEN_KEY, SAFETENSORS_KEY):
            if key in sd and isinstance(sd[key], torch.Tensor):
                return sd[key]
        # a state dict saved from a wrapper module ("module." / "vq." prefixes)
        for key, v in sd.items():
            if isinstance(key, str) and key.endswith("." + LLAMAGEN_KEY) and isinstance(v, torch.Tensor):
                return v
    where = obj["model"] if isinstance(obj.get("model"), Mapping) else obj
    raise CodepriorError(
        f"{path}: no codebook tensor '{LLAMAGEN_KEY}' or '{SAFETENSORS_KEY}' (found: {_list_keys(where)})"
    )


def _load_safetensors(path: Path) -> np.ndarray:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt" if _has_bf16(path) else "numpy") as f:
            keys = list(f.keys())
            found = [k for k in (SAFETENSORS_KEY, LLAMAGEN_KEY) if k in keys]
            found += [k for k in keys if k.endswith("." + LLAMAGEN_KEY)]
            if found:
                t = f.get_tensor(found[0])
                return t if isinstance(t, np.ndarray) else t.float().numpy()
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CodepriorError(f"{path}: cannot read safetensors file ({msg})") from None
    shown = ", ".join(keys[:12]) if keys else "none"
    raise CodepriorError(f"{path}: no codebook tensor '{SAFETENSORS_KEY}' or '{LLAMAGEN_KEY}' (found: {shown})")


def _has_bf16(path: Path) -> bool:
    """Whether a safetensors header declares a bfloat16 tensor (NumPy cannot hold one: read it with torch)."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(min(size, 100 << 20)))
    except Exception:  # unreadable: safe_open reports it
        return False
    return any(isinstance(v, dict) and v.get("dtype") == "BF16" for v in header.values())


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CodepriorError(f"{path}: cannot read .npy file ({msg})") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive opened through np.load
        raise CodepriorError(f"{path}: expected a single array (.npy), got an archive")
    if arr.dtype.kind not in "fiu":
        raise CodepriorError(f"{path}: codebook must be numeric, got dtype {arr.dtype}")
    return arr


def validate_codebook(cb: torch.Tensor, name: str = "codebook") -> torch.Tensor:
    """Check rank, size and finiteness; return a contiguous float32 CPU copy."""
    import torch

    if not isinstance(cb, torch.Tensor):
        raise CodepriorError(f"{name}: codebook must be a tensor, got {type(cb).__name__}")
    if cb.dtype == torch.bool or cb.is_complex():
        raise CodepriorError(f"{name}: codebook must be real-valued, got {cb.dtype}")
    _check_shape(tuple(cb.shape), name)
    return torch.from_numpy(validate_codebook_array(cb.detach().to("cpu", torch.float32).numpy(), name))


def _check_shape(shape: tuple[int, ...], name: str) -> None:
    if len(shape) != 2:
        raise CodepriorError(f"{name}: codebook must be 2-D [num_codes, dim], got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise CodepriorError(f"{name}: codebook is empty (shape {shape})")


def validate_codebook_array(cb: np.ndarray, name: str = "codebook") -> np.ndarray:
    """:func:`validate_codebook` for a NumPy array (no torch): a contiguous float32 copy, or a one-line error."""
    cb = np.asarray(cb)
    if cb.dtype.kind not in "fiu":
        raise CodepriorError(f"{name}: codebook must be real-valued, got {cb.dtype}")
    _check_shape(tuple(int(s) for s in cb.shape), name)
    cb = np.array(cb, dtype=np.float32, order="C", copy=True)
    bad = ~np.isfinite(cb)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise CodepriorError(
            f"{name}: codebook has non-finite values (NaN/inf) in {rows.size} rows, first row {int(rows[0])}"
        )
    return cb


def load_codebook(path: str | os.PathLike) -> torch.Tensor:
    """Load a codebook as float32 [N, D] from a LlamaGen ``.pt``, a ``.safetensors`` or a ``.npy`` file.

    ``.pt``/``.pth``: ``{"model": state_dict}`` or a bare state dict holding ``quantize.embedding.weight``
    (read with ``weights_only=True``). ``.safetensors``: tensor ``codebook`` or the LlamaGen key.
    ``.npy``: a 2-D numeric array (``allow_pickle=False``). Other suffixes are tried as torch checkpoints.
    """
    import torch

    return torch.from_numpy(load_codebook_array(path))


def load_codebook_array(path: str | os.PathLike) -> np.ndarray:
    """:func:`load_codebook` as a float32 NumPy array; ``.npy`` and ``.safetensors`` files load without torch."""
    path = Path(path)
    if not path.exists():
        raise CodepriorError(f"{path}: no such file")
    if path.is_dir():
        raise CodepriorError(f"{path}: is a directory, expected a codebook file (.pt, .safetensors or .npy)")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return validate_codebook_array(_load_safetensors(path), str(path))
    if suffix == ".npy":
        return validate_codebook_array(_load_npy(path), str(path))
    from codeprior.utils.io import load_checkpoint  # torch.load, weights_only=True

    return validate_codebook(_from_state(load_checkpoint(path), path), str(path)).numpy()


def count_distinct_rows(cb: torch.Tensor | np.ndarray) -> int:
    """Number of distinct rows (exact float equality) of a codebook (a tensor or an array)."""
    arr = cb if isinstance(cb, np.ndarray) else cb.detach().cpu().numpy()
    return int(np.unique(np.ascontiguousarray(arr), axis=0).shape[0])


def validate_k(k: int, num_codes: int, method: str | None = None, name: str = "codebook") -> int:
    """Check a cluster count: ``1 <= k <= N``; balanced k-means also needs ``N % k == 0``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise CodepriorError(f"{name}: k must be an integer, got {k!r}")
    k = int(k)
    if k < 1:
        raise CodepriorError(f"{name}: k must be at least 1, got {k}")
    if k > num_codes:
        raise CodepriorError(f"{name}: k={k} exceeds the number of codes ({num_codes})")
    from codeprior.priors.methods import METHODS

    if method in METHODS and METHODS[method].equal_sizes and num_codes % k != 0:
        raise CodepriorError(
            f"{name}: balanced k-means needs k to divide the number of codes evenly; {num_codes} % {k} = "
            f"{num_codes % k} (try a divisor such as {_nearest_divisor(num_codes, k)})"
        )
    return k


def _nearest_divisor(n: int, k: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0] if n <= 1_000_000 else [1]
    return min(divisors, key=lambda d: (abs(d - k), d))


def k_from_compression_rate(num_codes: int, rate: float | None, name: str = "codebook") -> int:
    """``k = round(N / rate)`` (DCPE's "compression rate"; rate 2 on 16384 codes gives 8192 clusters)."""
    if not rate or rate < 1:  # None too: a one-line error
        raise CodepriorError(f"{name}: compression rate must be >= 1, got {rate}")
    return max(1, int(round(num_codes / rate)))
