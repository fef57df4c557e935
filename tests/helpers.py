"""Small builders shared by several test files (``from helpers import ...``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from typing import Any

import torch

from codeprior.models import GPT, get_gpt_config

V, NCLS = 48, 5  # tiny_gpt's default vocabulary and number of classes


def tiny_gpt(seed: int | None = 0, head_std: float = 0.3, **kw: Any) -> GPT:
    """A random GPT-tiny in eval mode: vocabulary V, NCLS classes, a 3x5 grid and 2 layers unless ``kw`` overrides
    them; ``seed`` (None: the current RNG state) seeds the weights. The output head is drawn from N(0, head_std):
    the zero-initialised head would make every draw uniform."""
    if seed is not None:
        torch.manual_seed(seed)
    base: dict[str, Any] = dict(vocab_size=V, num_classes=NCLS, grid=(3, 5), n_layer=2)
    base.update(kw)
    m = GPT(get_gpt_config("GPT-tiny", **base))
    torch.nn.init.normal_(m.output.weight, std=head_std)
    return m.eval()


#: ``codeprior train`` flags for a one-step CPU run of a 1-layer, 32-wide GPT-tiny (tests that need a trained file)
TINY_TRAIN_FLAGS = [
    "--max-steps",
    "1",
    "--global-batch",
    "4",
    "--no-tensorboard",
    "--no-progress",
    "--threads",
    "1",
    "--device",
    "cpu",
    "--model-override",
    "dim=32",
    "--model-override",
    "n_layer=1",
    "--model-override",
    "n_head=2",
]


def write_tiny_codes(root: Any, vq: Any, g: Any, **meta: Any) -> None:
    """Random code shards of ``vq``'s codebook in ``root``: 24 train and 8 test sequences on a 3x3 grid, 3 classes
    (``g`` a numpy Generator; ``meta`` adds manifest keys such as ``tokenizer_sha256``)."""
    from codeprior.data.codes import write_code_shards
    from codeprior.utils.io import sha256_tensor

    n_codes = int(vq.config.codebook_size)
    info = {
        "grid": [3, 3],
        "codebook_size": n_codes,
        "num_classes": 3,
        "n_aug": 1,
        "codebook_sha256": sha256_tensor(vq.quantize.embedding.weight),
        **meta,
    }
    for split, n in (("train", 24), ("test", 8)):
        write_code_shards(root, split, g.integers(0, n_codes, (n, 1, 9)), g.integers(0, 3, n), info)
