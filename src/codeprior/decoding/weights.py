"""Weight-only bf16 and int8 for sampling: AR decoding at small batch reads every weight once per token, so it is
bound by memory bandwidth (GPT-B: ~390 MB of fp32 weights per pass); halving or quartering the bytes is the lever.

:func:`cast_weights` replaces every ``nn.Linear`` of the transformer blocks and the output head, in place:

* ``bf16``: the weight stored in bfloat16; the input is cast to bf16 for the matmul (fp32 accumulation inside
  the kernel) and the output cast back. Norms, RoPE, attention, the KV cache and the residual stream stay fp32.
* ``int8``: per-output-channel symmetric quantisation, ``w ~ scale[n] * q[n, k]`` with ``q`` in -127..127 and
  ``scale = max|w[n]| / 127``. On the CPU the matmul is torch's ``_weight_int8pack_mm`` (int8 weights dequantised
  inside the kernel; bf16 activations: its fp32-activation path is several times slower); elsewhere
  ``linear(x, q) * scale``.

Embeddings stay fp32 (a lookup reads one row). Sampling only: the replaced modules hold buffers, not parameters.
``fp32`` leaves the model as it is. The state dict changes (names and dtypes), so sample folders made with other
weights are told apart by their fingerprint.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from codeprior.errors import CodepriorError

WEIGHT_FORMATS = ("fp32", "bf16", "int8")
M = TypeVar("M", bound=nn.Module)


class BF16Linear(nn.Module):
    """A bias-free Linear with its weight in bfloat16; the input is cast to bf16 and the output back."""

    weight: torch.Tensor

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: ``(q [N, K] int8, scale [N] float32)`` with ``w ~ scale[:, None] * q``."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # an all-zero row keeps scale > 0 (q = 0)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """A bias-free Linear with per-output-channel int8 weights (:func:`quantize_int8`)."""

    weight: torch.Tensor
    scales: torch.Tensor
    scales_bf16: torch.Tensor

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_int8(linear.weight)
        self.register_buffer("weight", q)
        self.register_buffer("scales", scale)
        self.register_buffer("scales_bf16", scale.to(torch.bfloat16), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scales_bf16)
            return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)


def cast_weights(model: M, fmt: str) -> M:
    """Replace the Linear layers of ``model.layers`` and ``model.output`` by their ``fmt`` versions (in place;
    returns the model). ``fmt``: one of :data:`WEIGHT_FORMATS`; ``fp32`` changes nothing."""
    if fmt not in WEIGHT_FORMATS:
        raise CodepriorError(f"sampling: --weights must be one of {', '.join(WEIGHT_FORMATS)}, got {fmt!r}")
    if fmt == "fp32":
        return model
    cls = BF16Linear if fmt == "bf16" else Int8Linear
    targets = [(n, m) for n, m in model.named_modules() if n == "output" or n.startswith("layers.")]
    for name, lin in targets:
        if isinstance(lin, nn.Linear):
            if lin.bias is not None:
                raise CodepriorError(f"sampling: --weights {fmt} expects bias-free Linear layers ({name} has a bias)")
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, cls(lin))
    return model
