"""VQ tokenizer configurations: :class:`VQConfig` (LlamaGen's ``ModelArgs`` names), the ``VQ_CONFIGS`` registry and
lookups, without torch (``codeprior tokenizer train --help`` lists the names; the model is in
:mod:`codeprior.models.vq`, which re-exports everything here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from codeprior.errors import CodepriorError

__all__ = ["VQConfig", "VQ_CONFIGS", "get_vq_config", "is_llamagen_vq_args", "vq_config_from_llamagen_args"]


@dataclass
class VQConfig:
    """Hyper-parameters of a :class:`~codeprior.models.vq.VQModel` (LlamaGen's ``ModelArgs`` names where they exist).

    ``ch_mult`` has one entry per resolution level; the encoder downsamples ``len(ch_mult) - 1`` times.
    ``decoder_ch_mult`` defaults to ``ch_mult`` (LlamaGen keeps them equal). ``norm_groups`` is the GroupNorm
    group count (32 in LlamaGen; every channel width must be divisible by it). ``image_size`` is the nominal
    input size, used only for information (the model is fully convolutional).
    """

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    entropy_temperature: float = 0.01
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_ch_mult: list[int] | None = None
    z_channels: int = 256
    num_res_blocks: int = 2
    in_channels: int = 3
    dropout: float = 0.0
    norm_groups: int = 32
    image_size: int = 256

    def __post_init__(self) -> None:
        self.ch_mult = [int(m) for m in self.ch_mult]
        if self.decoder_ch_mult is not None:
            self.decoder_ch_mult = [int(m) for m in self.decoder_ch_mult]
        self.validate()

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def dec_ch_mult(self) -> list[int]:
        return list(self.decoder_ch_mult if self.decoder_ch_mult is not None else self.ch_mult)

    def grid_size(self, image_size: int | None = None) -> int:
        """Side of the code grid for square inputs of ``image_size`` (default: the nominal size)."""
        s = self.image_size if image_size is None else image_size
        for _ in range(len(self.ch_mult) - 1):
            s = (s + 1 - 3) // 2 + 1  # pad (0,1), 3x3 conv stride 2, no padding
        return s

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise CodepriorError(f"VQConfig: {msg}")

        if self.codebook_size < 1 or self.codebook_embed_dim < 1:
            bad("codebook_size and codebook_embed_dim must be positive")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            bad(f"ch_mult must be a non-empty list of positive ints, got {self.ch_mult}")
        if len(self.dec_ch_mult) != len(self.ch_mult):
            bad("decoder_ch_mult must have as many levels as ch_mult")
        if self.num_res_blocks < 1 or self.ch < 1 or self.z_channels < 1 or self.in_channels < 1:
            bad("ch, z_channels, num_res_blocks and in_channels must be positive")
        if self.norm_groups < 1:
            bad("norm_groups must be positive")
        widths = {self.ch * m for m in self.ch_mult + self.dec_ch_mult}
        odd = sorted(w for w in widths if w % self.norm_groups)
        if odd:
            bad(f"channel widths {odd} are not divisible by norm_groups={self.norm_groups}")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# LlamaGen's ModelArgs field names accepted as aliases by get_vq_config.
_ALIASES = {"encoder_ch_mult": "ch_mult", "dropout_p": "dropout"}

VQ_CONFIGS: dict[str, VQConfig] = {
    # LlamaGen's released tokenizers (vq_ds16_c2i.pt / vq_ds8_c2i.pt): 16384 x 8 codebook, ~72M parameters.
    "VQ-16": VQConfig(ch_mult=[1, 1, 2, 2, 4], image_size=256),
    "VQ-8": VQConfig(ch_mult=[1, 2, 2, 4], image_size=256),
    # Small tokenizer for 28x28 grey images (Fashion-MNIST / MNIST): two downsamples -> 7x7 codes, 4096 x 8
    # codebook. Sized to train in minutes on 2 CPU cores (see docs/tokenizer.md for measurements).
    "VQ-fmnist": VQConfig(
        codebook_size=4096,
        codebook_embed_dim=8,
        ch=16,
        ch_mult=[1, 2, 4],
        z_channels=64,
        num_res_blocks=1,
        in_channels=1,
        norm_groups=8,
        image_size=28,
    ),
}
# The same tokenizer with one downsample: 14x14 = 196 codes per image, a longer sequence for the AR model
# (benchmarks/speculative_grid14.yaml: speculative decoding, whose windows gain more on longer sequences).
VQ_CONFIGS["VQ-fmnist-14"] = dataclasses.replace(VQ_CONFIGS["VQ-fmnist"], ch_mult=[1, 2])


def get_vq_config(name_or_cfg: str | VQConfig | dict[str, Any], **overrides: Any) -> VQConfig:
    """A fresh :class:`VQConfig` from a registry name, a config, or a plain dict, with field overrides.

    LlamaGen's names ``encoder_ch_mult`` / ``dropout_p`` are accepted as aliases; unknown fields are an error.
    """
    if isinstance(name_or_cfg, VQConfig):
        base = name_or_cfg.to_dict()
    elif isinstance(name_or_cfg, dict):
        base = dict(name_or_cfg)
    elif isinstance(name_or_cfg, str):
        if name_or_cfg not in VQ_CONFIGS:
            raise CodepriorError(f"{name_or_cfg}: unknown VQ config (known: {', '.join(VQ_CONFIGS)})")
        base = VQ_CONFIGS[name_or_cfg].to_dict()
    else:
        raise CodepriorError(f"VQConfig: expected a name, VQConfig or dict, got {type(name_or_cfg).__name__}")
    base.update(overrides)
    for old, new in _ALIASES.items():
        if old in base:
            base[new] = base.pop(old)
    known = {f.name for f in dataclasses.fields(VQConfig)}
    unknown = sorted(set(base) - known)
    if unknown:
        raise CodepriorError(f"VQConfig: unknown field(s) {', '.join(unknown)}")
    return VQConfig(**base)


#: vq_train.py's args that shape the model (the ones it passes to ``VQ_models[args.vq_model](...)``, plus the size)
_LLAMAGEN_VQ_ARGS = (
    "codebook_size",
    "codebook_embed_dim",
    "codebook_l2_norm",
    "commit_loss_beta",
    "entropy_loss_ratio",
    "dropout_p",
    "image_size",
)


def is_llamagen_vq_args(args: Mapping[str, Any] | None) -> bool:
    """Whether a checkpoint's ``args`` look like those of LlamaGen's ``vq_train.py``."""
    return isinstance(args, Mapping) and "vq_model" in args and "codebook_embed_dim" in args


def vq_config_from_llamagen_args(
    args: Mapping[str, Any], *, model: str | None = None, source: str = "args"
) -> VQConfig:
    """The :class:`VQConfig` LlamaGen's ``vq_train.py`` built from its ``args``: ``VQ_models[vq_model]`` with the
    codebook size and width, L2 norm, loss weights, dropout and (for information) the training image size."""
    name = model or args.get("vq_model")
    if not name:
        raise CodepriorError(f"{source}: args hold no vq_model; name the model config, e.g. --vq-model VQ-16")
    over = {k: args[k] for k in _LLAMAGEN_VQ_ARGS if args.get(k) is not None}
    try:
        return get_vq_config(str(name), **over)
    except (CodepriorError, TypeError, ValueError) as e:
        raise CodepriorError(f"{source}: args vq_model {name!r}: {e}") from None
