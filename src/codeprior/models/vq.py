"""LlamaGen-compatible VQ tokenizer (VQGAN-style encoder/decoder with an L2-normalised codebook).

The module tree reproduces LlamaGen's ``VQModel`` parameter names exactly, so a released LlamaGen
checkpoint (``vq_ds16_c2i.pt``) loads with ``load_state_dict(strict=True)`` and computes the same codes and
images:

- ``encoder.conv_in``, ``encoder.conv_blocks.{i}.res.{j}.{norm1,conv1,norm2,conv2[,nin_shortcut]}``,
  ``encoder.conv_blocks.{last}.attn.{j}.{norm,q,k,v,proj_out}``, ``encoder.conv_blocks.{i}.downsample.conv``
  (every level but the last), ``encoder.mid.{0,1,2}`` (res, attn, res), ``encoder.norm_out``, ``encoder.conv_out``;
- ``quant_conv`` (1x1, z_channels -> embed dim), ``quantize.embedding.weight`` [N, D], buffer
  ``quantize.codebook_used`` [65536], ``post_quant_conv`` (embed dim -> z_channels);
- ``decoder.conv_in``, ``decoder.mid.{0,1,2}``, ``decoder.conv_blocks.{i}`` ordered from the *lowest* resolution
  (i = 0, which carries the attention blocks) up, each with ``num_res_blocks + 1`` res blocks and an
  ``upsample.conv`` on all but the last, ``decoder.norm_out``, ``decoder.conv_out``.

Quantisation: z and the codebook rows are both L2-normalised at use time (``codebook_l2_norm``), the code is the
argmin of the squared distance, and gradients pass to the encoder by the straight-through estimator. Losses follow
LlamaGen: codebook ``mean((z_q - sg(z))^2)``, commitment ``beta * mean((sg(z_q) - z)^2)``, optional entropy loss.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from codeprior.errors import CodepriorError
from codeprior.models.vq_config import (  # re-exported: the config and registry live in vq_config.py (no torch)
    VQ_CONFIGS,
    VQConfig,
    get_vq_config,
    is_llamagen_vq_args,
    vq_config_from_llamagen_args,
)

__all__ = [
    "USAGE_WINDOW",
    "VQ_CONFIGS",
    "AttnBlock",
    "Decoder",
    "Downsample",
    "Encoder",
    "ResnetBlock",
    "Upsample",
    "VQConfig",
    "VQModel",
    "VectorQuantizer",
    "entropy_loss",
    "get_vq_config",
    "is_llamagen_vq_args",
    "swish",
    "vq_config_from_llamagen_args",
]

USAGE_WINDOW = 65536  # length of LlamaGen's ``quantize.codebook_used`` buffer


# --------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm -> swish -> conv3x3 -> GroupNorm -> swish -> dropout -> conv3x3, plus a (1x1 if needed) skip."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections (scale 1/sqrt(C)) and a residual."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(ch, groups)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        # [B, C, H, W] -> [B, 1, HW, C] (one head of width C)
        q, k, v = (p(h).flatten(2).transpose(1, 2).unsqueeze(1) for p in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after zero-padding one pixel on the right and bottom only (asymmetric, as LlamaGen)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``res`` blocks, ``attn`` blocks (lowest resolution only), optional resampler."""

    # Set only on the levels that resample (tested with hasattr); declared here for the type checker.
    downsample: nn.Module
    upsample: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.res):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        g, ch, mult = cfg.norm_groups, cfg.ch, cfg.ch_mult
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for level, m in enumerate(mult):
            lv = _Level()
            block_out = ch * m
            for _ in range(cfg.num_res_blocks):
                lv.res.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if level == len(mult) - 1:
                    lv.attn.append(AttnBlock(block_in, g))
            if level != len(mult) - 1:
                lv.downsample = Downsample(block_in)
            self.conv_blocks.append(lv)
        self.mid = nn.ModuleList(
            [
                ResnetBlock(block_in, block_in, cfg.dropout, g),
                AttnBlock(block_in, g),
                ResnetBlock(block_in, block_in, cfg.dropout, g),
            ]
        )
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for lv in cast("Iterable[_Level]", self.conv_blocks):
            h = lv.run_blocks(h)
            if hasattr(lv, "downsample"):
                h = lv.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        g, ch, mult = cfg.norm_groups, cfg.ch, cfg.dec_ch_mult
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = nn.ModuleList(
            [
                ResnetBlock(block_in, block_in, cfg.dropout, g),
                AttnBlock(block_in, g),
                ResnetBlock(block_in, block_in, cfg.dropout, g),
            ]
        )
        self.conv_blocks = nn.ModuleList()
        for level in reversed(range(len(mult))):  # conv_blocks[0] is the lowest resolution
            lv = _Level()
            block_out = ch * mult[level]
            for _ in range(cfg.num_res_blocks + 1):
                lv.res.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if level == len(mult) - 1:
                    lv.attn.append(AttnBlock(block_in, g))
            if level != 0:
                lv.upsample = Upsample(block_in)
            self.conv_blocks.append(lv)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.in_channels, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for lv in cast("Iterable[_Level]", self.conv_blocks):
            h = lv.run_blocks(h)
            if hasattr(lv, "upsample"):
                h = lv.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


def entropy_loss(affinity: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Per-sample entropy minus entropy of the batch-average code distribution (LlamaGen / MaskGIT form).

    ``affinity`` [M, N] is the negative squared distance. Low values mean confident assignments that are spread
    over the whole codebook.
    """
    a = affinity.reshape(-1, affinity.shape[-1]) / temperature
    probs = F.softmax(a, dim=-1)
    log_probs = F.log_softmax(a + 1e-5, dim=-1)
    avg = probs.mean(dim=0)
    avg_entropy = -(avg * torch.log(avg + 1e-5)).sum()
    sample_entropy = -(probs * log_probs).sum(dim=-1).mean()
    return sample_entropy - avg_entropy


class VectorQuantizer(nn.Module):
    """Nearest-codeword quantiser with LlamaGen's L2 normalisation, losses and usage window."""

    codebook_used: torch.Tensor  # a buffer, registered only when ``show_usage``

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.n_e = cfg.codebook_size
        self.e_dim = cfg.codebook_embed_dim
        self.beta = cfg.commit_loss_beta
        self.entropy_loss_ratio = cfg.entropy_loss_ratio
        self.entropy_temperature = cfg.entropy_temperature
        self.l2_norm = cfg.codebook_l2_norm
        self.show_usage = cfg.codebook_show_usage
        self.embedding = nn.Embedding(self.n_e, self.e_dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / self.n_e, 1.0 / self.n_e)
            if self.l2_norm:
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        if self.show_usage:
            # LlamaGen: float buffer holding the most recent 65536 code indices seen in training.
            self.register_buffer("codebook_used", torch.zeros(USAGE_WINDOW))

    def codebook(self) -> torch.Tensor:
        """The codebook as used for lookup (row-normalised when ``l2_norm``)."""
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def _project(self, z_flat: torch.Tensor) -> torch.Tensor:
        return F.normalize(z_flat, p=2, dim=-1) if self.l2_norm else z_flat

    @staticmethod
    def _sq_dist(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # ||z||^2 + ||e||^2 - 2 z.e, the expansion LlamaGen uses (same float rounding, same argmin on near-ties)
        return z.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * (z @ e.t())

    @torch.no_grad()
    def lookup_indices(self, z: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Code indices [B, h, w] for pre-quantisation features z [B, D, h, w], chunked to bound memory."""
        b, d, hh, ww = z.shape
        flat = self._project(z.permute(0, 2, 3, 1).reshape(-1, d))
        e = self.codebook()
        e_sq = e.pow(2).sum(1)
        out = torch.empty(flat.shape[0], dtype=torch.long, device=z.device)
        for s in range(0, flat.shape[0], chunk):
            # ||e||^2 - 2 z.e in one fused addmm: the squared distance minus the per-row constant ||z||^2, which
            # does not change the argmin (about 5x faster than materialising the full expansion at inference).
            out[s : s + chunk] = torch.addmm(e_sq, flat[s : s + chunk], e.t(), alpha=-2).argmin(dim=1)
        return out.view(b, hh, ww)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Quantise z [B, D, h, w] -> (z_q [B, D, h, w] with straight-through gradient, losses, indices [B, h, w]).

        ``z_q`` and the losses are expressed in the normalised space when ``l2_norm`` (as LlamaGen).
        """
        b, d, hh, ww = z.shape
        if d != self.e_dim:
            raise CodepriorError(f"VectorQuantizer: expected {self.e_dim} channels, got {d}")
        zf = self._project(z.permute(0, 2, 3, 1).reshape(-1, d))
        e = self.codebook()
        dist = self._sq_dist(zf, e)
        idx = dist.argmin(dim=1)
        zq = e[idx]
        if self.show_usage and self.training:
            with torch.no_grad():
                n = min(idx.numel(), USAGE_WINDOW)
                buf = self.codebook_used
                buf[: USAGE_WINDOW - n] = buf[n:].clone()
                buf[USAGE_WINDOW - n :] = idx[-n:].to(buf.dtype)
        losses = {
            "codebook": F.mse_loss(zq, zf.detach()),
            "commit": self.beta * F.mse_loss(zf, zq.detach()),
            "entropy": (
                self.entropy_loss_ratio * entropy_loss(-dist, self.entropy_temperature)
                if self.entropy_loss_ratio > 0
                else zf.new_zeros(())
            ),
        }
        zq = zf + (zq - zf).detach()  # straight-through estimator
        zq = zq.view(b, hh, ww, d).permute(0, 3, 1, 2).contiguous()
        return zq, losses, idx.view(b, hh, ww)

    def get_codebook_entry(
        self, indices: torch.Tensor, shape: tuple[int, ...] | list[int] | None = None, channel_first: bool = True
    ) -> torch.Tensor:
        """LlamaGen-compatible lookup: ``shape`` is (B, D, h, w) if ``channel_first`` else (B, h, w, D)."""
        zq = self.codebook()[indices]
        if shape is not None:
            if channel_first:
                zq = zq.reshape(shape[0], shape[2], shape[3], shape[1]).permute(0, 3, 1, 2).contiguous()
            else:
                zq = zq.reshape(*shape)
        return zq


class VQModel(nn.Module):
    """LlamaGen's VQ tokenizer: ``encoder -> quant_conv -> quantize -> post_quant_conv -> decoder``."""

    #: set by :func:`codeprior.models.load_vq`: where the config came from (None for a model built here)
    checkpoint_info: dict[str, Any] | None = None

    def __init__(self, config: VQConfig | str) -> None:
        super().__init__()
        self.config = get_vq_config(config)
        cfg = self.config
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    # ---- codeprior API -------------------------------------------------------------------------------------------
    def _check_images(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise CodepriorError(f"VQModel: expected images [B, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
        f = self.config.downsample_factor
        if x.shape[-1] < f or x.shape[-2] < f:
            raise CodepriorError(f"VQModel: images {tuple(x.shape[-2:])} are smaller than the downsample factor {f}")

    def encode_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation features [B, D, h, w] (``quant_conv(encoder(x))``, not normalised)."""
        self._check_images(x)
        return self.quant_conv(self.encoder(x))

    @torch.no_grad()
    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> code indices LongTensor [B, h, w]."""
        return self.quantize.lookup_indices(self.encode_features(x))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Code indices [B, h, w] -> images [B, C, H, W] (nominally in [-1, 1]; not clamped)."""
        if codes.dim() != 3 or codes.dtype.is_floating_point:
            raise CodepriorError(f"VQModel: expected integer codes [B, h, w], got {codes.dtype} {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.config.codebook_size):
            raise CodepriorError(f"VQModel: codes must lie in [0, {self.config.codebook_size})")
        zq = self.quantize.codebook()[codes.long()].permute(0, 3, 1, 2).contiguous()
        return self.decode(zq)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruct x; losses: ``recon`` (MSE), ``codebook``, ``commit`` (beta included), ``entropy``."""
        zq, losses, _ = self.quantize(self.encode_features(x))
        recon = self.decode(zq)
        return recon, {"recon": F.mse_loss(recon, x), **losses}

    def forward_with_codes(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Like ``forward`` but also returns the codes [B, h, w] and normalised features [B*h*w, D] (for training)."""
        z = self.encode_features(x)
        zq, losses, idx = self.quantize(z)
        recon = self.decode(zq)
        feats = self.quantize._project(z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
        return recon, {"recon": F.mse_loss(recon, x), **losses}, idx, feats

    def codebook_usage(self, codes: torch.Tensor) -> float:
        """Fraction of codebook entries that occur at least once in ``codes`` (any shape)."""
        used = torch.bincount(codes.reshape(-1).long(), minlength=self.config.codebook_size)
        return float((used > 0).sum().item()) / self.config.codebook_size

    # ---- LlamaGen-compatible API ---------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """``(z_q, losses, indices)``: LlamaGen's ``encode`` with the losses as a dict."""
        return self.quantize(self.encode_features(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, code_b: torch.Tensor, shape: Any = None, channel_first: bool = True) -> torch.Tensor:
        """LlamaGen's ``decode_code(indices, shape=[B, D, h, w])``."""
        return self.decode(self.quantize.get_codebook_entry(code_b, shape, channel_first))
