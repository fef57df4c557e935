"""docs/integration.md, executed: every Python snippet and every command of its shell blocks, on tiny stand-ins.

Stand-ins (written here, no LlamaGen code): ``GPT-B`` and ``VQ-16`` are registered as tiny models of the same
family (VQ-16's four downsamples: 384-px images give LlamaGen's 24x24 grid); ``vq_ds16_c2i.pt`` is a random
tokenizer in the released file's layout; ``c2i_B_384.pt`` and ``coarse.pt`` are written the way LlamaGen's
``train_c2i.py`` writes them (``args`` an ``argparse.Namespace``, optimizer state, steps); ``model`` in the snippets
is a LlamaGen-shaped module (training forward ``model(cond_idx=, idx=, targets=) -> (logits, loss)``, or the
``Transformer`` stand-in of tests/test_from_llamagen.py); ``/data/...`` folders are LlamaGen's
``extract_codes_c2i.py`` layout. Paths and flags are the page's.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from doc_snippets import ROOT, code_blocks, codeprior_argv, commands, snippets
from test_from_llamagen import LlamaGenLike, ModelArgs
from test_quickstart import TINY_GPT_B
from test_quickstart import TINY_VQ16 as QUICKSTART_VQ16

import codeprior.models.gpt_config as gpt_config
import codeprior.models.vq as vqmod
from codeprior.cli import main
from codeprior.models import GPT, get_gpt_config

DOC = ROOT / "docs" / "integration.md"
N_CODES, N_CLASSES = 256, 2
TINY_VQ16 = dataclasses.replace(QUICKSTART_VQ16, codebook_size=N_CODES)  # 256 codes: room for 128 IAR clusters


def llamagen_args(**kw) -> argparse.Namespace:
    """The ``args`` LlamaGen's train_c2i.py saves (its argparse names and defaults, the ones a loader reads)."""
    base = dict(gpt_model="GPT-B", gpt_type="c2i", vocab_size=16384, image_size=256, downsample_size=16,
                num_classes=1000, cls_token_num=1, dropout_p=0.1, token_dropout_p=0.1, drop_path_rate=0.0,
                global_batch_size=256, lr=1e-4, epochs=300, code_path="/data/imagenet_code_c2i_flip_ten_crop")  # fmt: skip
    base.update(kw)
    return argparse.Namespace(**base)


class TrainForward(nn.Module):
    """LlamaGen's training forward on a codeprior GPT: ``(logits [B, L, V], loss or None)``."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(self, idx, cond_idx, input_pos=None, targets=None):
        logits = self.gpt(torch.cat([idx, idx[:, :1]], 1), cond_idx)  # the GPT's input is codes[:, :-1]
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setitem(vqmod.VQ_CONFIGS, "VQ-16", TINY_VQ16)
    monkeypatch.setitem(gpt_config.GPT_CONFIGS, "GPT-B", TINY_GPT_B)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.save({"model": vqmod.VQModel(TINY_VQ16).state_dict()}, "vq_ds16_c2i.pt")
    assert main(["prior", "vq_ds16_c2i.pt", "--method", "dcpe", "--k", "64", "--out", "dcpe.safetensors"]) == 0
    return tmp_path


def _training_loop_namespace(vocab: int, steps: int = 3, lr: float = 1e-3):
    torch.manual_seed(1)
    gpt = GPT(get_gpt_config(TINY_GPT_B, vocab_size=vocab, num_classes=N_CLASSES, grid=(4, 4))).train()
    model = TrainForward(gpt)
    g = torch.Generator().manual_seed(2)
    loader = [(torch.randint(0, N_CODES, (4, 1, 16), generator=g), torch.randint(0, N_CLASSES, (4, 1), generator=g))]
    return {
        "model": model,
        "loader": loader * steps,
        "device": torch.device("cpu"),
        "optimizer": torch.optim.SGD(model.parameters(), lr=lr),
        "args": argparse.Namespace(vocab_size=vocab, lambda_cce=1.0),
    }


def test_the_page_has_its_snippets():
    assert set(snippets(DOC)) == {"llamagen-cluster-ce", "llamagen-coarse", "from-llamagen"}


def test_cluster_ce_snippet_computes_iars_loss_in_llamagens_loop(workdir):
    from codeprior.priors import load_prior
    from codeprior.train.objectives import cluster_ce_loss

    ns = _training_loop_namespace(N_CODES, lr=0.0)  # lr 0: the last batch's loss can be recomputed exactly
    exec(snippets(DOC)["llamagen-cluster-ce"], ns)
    x, y = ns["loader"][-1]
    z = x.reshape(4, -1)
    logits, _ = ns["model"](cond_idx=y.reshape(-1), idx=z[:, :-1])
    ttc = load_prior("dcpe.safetensors").token_to_cluster
    # independent reference: token CE + CE of the summed cluster probabilities
    p = logits.softmax(-1).flatten(0, 1)
    p_cluster = torch.zeros(p.shape[0], int(ttc.max()) + 1).index_add_(1, ttc, p)
    ref = F.cross_entropy(logits.flatten(0, 1), z.flatten()) + F.nll_loss(p_cluster.log(), ttc[z.flatten()])
    assert ns["loss"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert ns["loss"].item() == pytest.approx(cluster_ce_loss(logits, z, ttc)[0].item(), rel=1e-6)
    trained = _training_loop_namespace(N_CODES)
    before = {n: q.detach().clone() for n, q in trained["model"].named_parameters()}
    exec(snippets(DOC)["llamagen-cluster-ce"], trained)
    assert any(not torch.equal(q, before[n]) for n, q in trained["model"].named_parameters())


def test_coarse_snippet_trains_on_cluster_ids(workdir):
    from codeprior.priors import load_prior

    k = load_prior("dcpe.safetensors").k
    ns = _training_loop_namespace(k)
    exec(snippets(DOC)["llamagen-coarse"], ns)
    assert int(ns["z_indices"].max()) < k and ns["loss"].isfinite()
    ns_wrong = _training_loop_namespace(N_CODES)  # a model built without --vocab-size K is stopped
    with pytest.raises(AssertionError, match="--vocab-size"):
        exec(snippets(DOC)["llamagen-coarse"], ns_wrong)


def test_from_llamagen_snippet(workdir):
    a = ModelArgs(dim=32, n_layer=2, n_head=4, multiple_of=16, vocab_size=24, num_classes=1000, block_size=16)
    ns = {"model": LlamaGenLike(a, after_generate=True).eval()}
    exec(snippets(DOC)["from-llamagen"], ns)
    assert ns["gpt"].tok_embeddings.weight is ns["model"].tok_embeddings.weight  # shared, not copied
    assert ns["ar"].shape == (4, 16) and int(ns["passes"].max()) <= 16


def _llamagen_code_folder(root, n: int, n_aug: int, L: int, codes_max: int) -> None:
    """LlamaGen's extract_codes_c2i.py layout: {i}.npy codes [1, n_aug, L] int64, labels [1]."""
    rng = np.random.default_rng(0)
    (root / "imagenet384_codes").mkdir(parents=True)
    (root / "imagenet384_labels").mkdir()
    for i in range(n):
        np.save(root / "imagenet384_codes" / f"{i}.npy", rng.integers(0, codes_max, (1, n_aug, L)))
        np.save(root / "imagenet384_labels" / f"{i}.npy", np.array([i % N_CLASSES]))


def test_shell_blocks_run_as_written(workdir, capsys):
    from codeprior.priors import load_prior

    k = load_prior("dcpe.safetensors").k
    # c2i_B_384.pt: a 384-px GPT-B as train_c2i.py saves it (args, optimizer, steps); coarse.pt: the same, --vocab-size K
    for name, vocab, size in (("c2i_B_384.pt", N_CODES, 384), ("coarse.pt", k, 384)):
        torch.manual_seed(3)
        gpt = GPT(get_gpt_config(TINY_GPT_B, vocab_size=vocab, num_classes=N_CLASSES, grid=(24, 24)))
        opt = torch.optim.AdamW(gpt.parameters())
        args = llamagen_args(vocab_size=vocab, image_size=size, num_classes=N_CLASSES)
        torch.save({"model": gpt.state_dict(), "optimizer": opt.state_dict(), "steps": 5000, "args": args}, name)
    data = workdir / "data" / "imagenet_code_c2i_flip_ten_crop"
    _llamagen_code_folder(data, n=4, n_aug=10, L=576, codes_max=N_CODES)
    blocks = code_blocks(DOC.read_text(), "bash")
    cmds = [codeprior_argv(a) for b in blocks for a in commands(b)]
    # the page's order: sample (1), train-refine + sample (3), prior (5), import + train (6); refine needs codes
    order = sorted(range(len(cmds)), key=lambda i: cmds[i][:2] != ["tokenize", "import-llamagen"])
    for i in order:
        argv = [str(data) if a == "/data/imagenet_code_c2i_flip_ten_crop" else a for a in cmds[i]]
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 0, f"codeprior {' '.join(argv)} -> exit {rc}: {err.strip().splitlines()[-1:]}"
    with np.load(workdir / "samples" / "B-384-sjd" / "samples.npz") as f:
        assert f["arr_0"].shape == (8, 384, 384, 3)  # the 24x24 grid from the file's args, no flag
    assert (workdir / "samples" / "coarse" / "samples.npz").is_file()
    assert (workdir / "vq_ds16_c2i-iar128.pt").is_file() and (workdir / "mapping.pt").is_file()


def test_doc_cites_the_repositories():
    text = DOC.read_text()
    for ref in ("FoundationVision/LlamaGen", "ce98ec4", "sjtuplayer/IAR", "a46074a", "ali-vilab/DCPE", "c5e4485"):
        assert ref in text
