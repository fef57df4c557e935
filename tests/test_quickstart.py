"""The README's quick start, run as written on tiny stand-ins, so it cannot drift from the code.

Stand-ins: ``VQ-16`` and ``GPT-B`` are registered as tiny models of the same shape family (VQ-16's four downsamples,
so 256-px images give a 16x16 grid), ``vq_ds16_c2i.pt`` is a random tokenizer in the released file's layout
(``{"model": state_dict}`` only), ``/data/imagenet`` is a folder of a few random images in two classes, and
``torchrun --nproc_per_node 8 -m codeprior`` runs in this process. Every flag and value is the README's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from doc_snippets import ROOT, code_blocks, codeprior_argv, commands, section
from PIL import Image

import codeprior.models.gpt_config as gpt_config
import codeprior.models.vq as vqmod
from codeprior.cli import main

TINY_VQ16 = vqmod.VQConfig(
    codebook_size=64,
    codebook_embed_dim=4,
    ch=4,
    ch_mult=[1, 1, 1, 1, 1],
    z_channels=4,
    num_res_blocks=1,
    norm_groups=2,
    image_size=256,
)
TINY_GPT_B = gpt_config.GPTConfig(dim=16, n_layer=1, n_head=2, multiple_of=16)


def quickstart_commands() -> list[list[str]]:
    blocks = code_blocks(section(ROOT / "README.md", "Quick start with a LlamaGen checkpoint"), "bash")
    assert len(blocks) == 1, "the quick start is one bash block"
    return [codeprior_argv(a) for a in commands(blocks[0])]


@pytest.fixture
def standins(tmp_path, monkeypatch):
    monkeypatch.setitem(vqmod.VQ_CONFIGS, "VQ-16", TINY_VQ16)
    monkeypatch.setitem(gpt_config.GPT_CONFIGS, "GPT-B", TINY_GPT_B)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    vq = vqmod.VQModel(TINY_VQ16).eval()
    torch.save({"model": vq.state_dict()}, tmp_path / "vq_ds16_c2i.pt")  # the released file's layout
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01440764", "n01443537"):
            d = tmp_path / "data" / "imagenet" / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (72, 90, 3), dtype=np.uint8)).save(d / f"{i}.JPEG")
    return tmp_path


def test_quickstart_runs_as_written(standins, capsys):
    cmds = quickstart_commands()
    assert [a[0] for a in cmds] == ["prior", "prior", "prior", "tokenize", "train", "sample"]
    for argv in cmds:
        argv = [str(standins / "data" / "imagenet") if a == "/data/imagenet" else a for a in argv]
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 0, f"codeprior {' '.join(argv)} -> exit {rc}: {err.strip().splitlines()[-1:]}"
    with np.load(standins / "samples" / "B-cce" / "samples.npz") as f:
        assert f["arr_0"].shape == (100, 256, 256, 3)  # 50 per class x 2 classes, decoded from a 16x16 grid
        assert np.bincount(f["labels"]).tolist() == [50, 50]
    meta = json.loads((standins / "codes" / "manifest.json").read_text())
    assert meta["grid"] == [16, 16] and meta["codebook_size"] == 64
