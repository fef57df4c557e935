"""GPT configurations: :class:`GPTConfig` (LlamaGen's field names), the ``GPT_CONFIGS`` registry and lookups."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from codeprior.errors import CodepriorError

__all__ = [
    "GPTConfig",
    "GPT_CONFIGS",
    "get_gpt_config",
    "find_multiple",
    "ffn_hidden_dim",
    "gpt_config_from_llamagen_args",
    "llamagen_image_geometry",
    "is_llamagen_gpt_args",
]

# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of ``k`` that is >= ``n``."""
    return n if n % k == 0 else n + k - (n % k)


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """LlamaGen's SwiGLU hidden size: 2/3 * 4 * dim (times the multiplier), rounded up to ``multiple_of``."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return find_multiple(hidden, multiple_of)


@dataclass
class GPTConfig:
    """Model hyper-parameters, with LlamaGen's ``ModelArgs`` field names and defaults.

    ``grid`` is the (rows, cols) layout of the code sequence used by the 2-D RoPE; ``None`` means the square
    ``sqrt(block_size)`` grid (LlamaGen). ``block_size`` is the number of image tokens (``rows * cols``).
    """

    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    vocab_size: int = 16384
    cls_token_num: int = 1
    block_size: int = 256
    grid: tuple[int, int] | None = None

    kind = "gpt"  # class attribute (not a field): tag written into checkpoints

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.grid is not None:
            g = tuple(int(x) for x in self.grid)
            if len(g) != 2 or min(g) <= 0:
                raise CodepriorError(f"{name}: grid must be two positive ints (rows, cols), got {self.grid!r}")
            self.grid = g
            if g[0] * g[1] != self.block_size:
                raise CodepriorError(
                    f"{name}: grid {g[0]}x{g[1]} has {g[0] * g[1]} cells but block_size={self.block_size}"
                )
        elif math.isqrt(self.block_size) ** 2 != self.block_size:
            raise CodepriorError(
                f"{name}: block_size={self.block_size} is not a square; pass grid=(rows, cols) for a non-square grid"
            )
        for f in ("dim", "n_layer", "n_head", "vocab_size", "num_classes", "block_size", "multiple_of"):
            if int(getattr(self, f)) <= 0:
                raise CodepriorError(f"{name}: {f} must be positive, got {getattr(self, f)}")
        if self.dim % self.n_head:
            raise CodepriorError(f"{name}: dim={self.dim} is not divisible by n_head={self.n_head}")
        if self.head_dim % 4:
            raise CodepriorError(f"{name}: head_dim={self.head_dim} must be a multiple of 4 for the 2-D RoPE")
        if self.n_kv_head is not None and (self.n_kv_head <= 0 or self.n_head % self.n_kv_head):
            raise CodepriorError(f"{name}: n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.cls_token_num != 1:
            raise CodepriorError(f"{name}: class-conditional models use cls_token_num=1, got {self.cls_token_num}")
        for f in (
            "token_dropout_p",
            "attn_dropout_p",
            "resid_dropout_p",
            "ffn_dropout_p",
            "drop_path_rate",
            "class_dropout_prob",
        ):
            if not 0.0 <= float(getattr(self, f)) < 1.0:
                raise CodepriorError(f"{name}: {f} must be in [0, 1), got {getattr(self, f)}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def grid_hw(self) -> tuple[int, int]:
        """(rows, cols) of the code grid."""
        if self.grid is not None:
            return self.grid
        s = math.isqrt(self.block_size)
        return (s, s)

    @property
    def ffn_dim(self) -> int:
        return ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (ints, floats, lists, None) for checkpoints; ``weights_only``-loadable."""
        d = asdict(self)
        if d.get("grid") is not None:
            d["grid"] = list(d["grid"])
        return {"kind": self.kind, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> GPTConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (no silent drops)."""
        d = dict(d)
        kind = d.pop("kind", cls.kind)
        if kind != cls.kind:
            raise CodepriorError(f"{source}: holds a {kind!r} model config, expected {cls.kind!r}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CodepriorError(f"{source}: unknown {cls.__name__} fields {unknown}")
        if d.get("grid") is not None:
            d["grid"] = tuple(d["grid"])
        return cls(**d)


def _llamagen(n_layer: int, n_head: int, dim: int) -> GPTConfig:
    return GPTConfig(dim=dim, n_layer=n_layer, n_head=n_head)


#: Named configs. B/L/XL/XXL/XXXL are LlamaGen's c2i models (head_dim 64, vocab 16384, 1000 classes, 16x16
#: grid); tiny/S are CPU-sized (override vocab_size/num_classes/block_size/grid for your data).
GPT_CONFIGS: dict[str, GPTConfig] = {
    "GPT-tiny": GPTConfig(dim=128, n_layer=4, n_head=4, multiple_of=64),
    "GPT-S": GPTConfig(dim=256, n_layer=8, n_head=8, multiple_of=64),
    "GPT-B": _llamagen(12, 12, 768),
    "GPT-L": _llamagen(24, 16, 1024),
    "GPT-XL": _llamagen(36, 20, 1280),
    "GPT-XXL": _llamagen(48, 24, 1536),
    "GPT-XXXL": _llamagen(48, 40, 2560),
}


def _resolve_config(name_or_cfg: Any, registry: dict[str, Any], cls: type[Any], overrides: dict[str, Any]) -> Any:
    if isinstance(name_or_cfg, cls):
        base = name_or_cfg
    elif isinstance(name_or_cfg, str):
        if name_or_cfg not in registry:
            raise CodepriorError(f"{name_or_cfg}: unknown model name; choose from {', '.join(registry)}")
        base = registry[name_or_cfg]
    elif isinstance(name_or_cfg, dict):
        base = cls.from_dict(name_or_cfg)
    else:
        raise CodepriorError(
            f"model config: expected a name, a {cls.__name__} or a dict, got {type(name_or_cfg).__name__}"
        )
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise CodepriorError(f"model config: unknown {cls.__name__} fields {unknown}")
    overrides = dict(overrides)
    if overrides.get("grid") is not None:
        g = tuple(int(x) for x in overrides["grid"])
        overrides["grid"] = g
        if "block_size" not in overrides and len(g) == 2:
            overrides["block_size"] = g[0] * g[1]
    elif "block_size" in overrides and "grid" not in overrides:
        overrides["grid"] = None  # a new block_size replaces the base's grid; square inferred (or error)
    return replace(base, **overrides)


def get_gpt_config(name_or_cfg: str | GPTConfig | dict[str, Any], **overrides: Any) -> GPTConfig:
    """A :class:`GPTConfig` from a registry name, a config or a plain dict, with field overrides.

    ``grid=(h, w)`` alone also sets ``block_size = h * w`` (e.g. ``grid=(7, 7)`` for Fashion-MNIST codes).
    """
    return _resolve_config(name_or_cfg, GPT_CONFIGS, GPTConfig, overrides)


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# LlamaGen's saved ``args`` (train_c2i.py; IAR's and DCPE's forks add fields but keep these)
# --------------------------------------------------------------------------------------------------

#: train_c2i.py's argparse defaults for the fields that shape the model (used when a field is absent from ``args``)
_LLAMAGEN_DEFAULTS: dict[str, Any] = {
    "vocab_size": 16384,
    "num_classes": 1000,
    "cls_token_num": 1,
    "dropout_p": 0.1,
    "token_dropout_p": 0.1,
    "drop_path_rate": 0.0,
    "downsample_size": 16,
    "codebook_compression_rate": 2,
}


def is_llamagen_gpt_args(args: Mapping[str, Any] | None) -> bool:
    """Whether a checkpoint's ``args`` look like those of LlamaGen's GPT training scripts."""
    return isinstance(args, Mapping) and ("gpt_model" in args or "gpt_type" in args)


def llamagen_image_geometry(args: Mapping[str, Any], source: str = "args") -> tuple[int, int] | None:
    """``(image_size, downsample_size)`` from LlamaGen ``args``; None when they do not say the image size.

    The code grid is ``image_size // downsample_size`` on each side (``latent_size`` in train_c2i.py)."""
    if args.get("image_size") is None:
        return None
    try:
        size = int(args["image_size"])
        ds = int(args.get("downsample_size") or _LLAMAGEN_DEFAULTS["downsample_size"])
    except (TypeError, ValueError):
        raise CodepriorError(
            f"{source}: args image_size={args.get('image_size')!r} / downsample_size="
            f"{args.get('downsample_size')!r} are not integers"
        ) from None
    if size <= 0 or ds <= 0 or size % ds:
        raise CodepriorError(f"{source}: args image_size {size} is not a positive multiple of downsample_size {ds}")
    return size, ds


def gpt_config_from_llamagen_args(
    args: Mapping[str, Any], *, model: str | None = None, source: str = "args"
) -> GPTConfig:
    """The :class:`GPTConfig` LlamaGen's ``train_c2i.py`` built from its ``args`` (a dict or ``vars(Namespace)``).

    Model name from ``gpt_model`` (or ``model`` when given, e.g. a flag the caller checked against it), grid
    ``image_size // downsample_size`` (left at the name's default when ``args`` has no ``image_size``: the caller
    decides), ``vocab_size`` (divided by ``codebook_compression_rate`` for DCPE's ``--codebook-compression``
    stage-1 models), ``num_classes``, ``cls_token_num`` and the dropouts (resid/FFN dropout 0 when
    ``drop_path_rate > 0``, as train_c2i.py does). Absent fields take train_c2i.py's defaults."""
    a = {**_LLAMAGEN_DEFAULTS, **{k: v for k, v in args.items() if v is not None}}
    if str(a.get("gpt_type", "c2i")) != "c2i":
        raise CodepriorError(
            f"{source}: a {a['gpt_type']!r} GPT (args gpt_type); codeprior loads class-conditional (c2i) GPTs"
        )
    name = model or a.get("gpt_model")
    if not name:
        raise CodepriorError(f"{source}: args hold no gpt_model; name the model config, e.g. --gpt-model GPT-B")
    try:
        vocab = int(a["vocab_size"])
        if a.get("codebook_compression"):
            vocab //= int(a["codebook_compression_rate"])
        drop_path = float(a["drop_path_rate"])
        dropout = 0.0 if drop_path > 0 else float(a["dropout_p"])
        over: dict[str, Any] = {
            "vocab_size": vocab,
            "num_classes": int(a["num_classes"]),
            "cls_token_num": int(a["cls_token_num"]),
            "token_dropout_p": float(a["token_dropout_p"]),
            "resid_dropout_p": dropout,
            "ffn_dropout_p": dropout,
            "drop_path_rate": drop_path,
        }
    except (TypeError, ValueError) as e:
        raise CodepriorError(f"{source}: args hold a value of the wrong type ({e})") from None
    geom = llamagen_image_geometry(a, source)
    if geom is not None:
        side = geom[0] // geom[1]
        over["grid"] = (side, side)
    try:
        return get_gpt_config(str(name), **over)
    except CodepriorError as e:
        raise CodepriorError(f"{source}: args gpt_model {name!r}: {e}") from None
