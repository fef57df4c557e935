"""SNCE (issue 27): the neighbour table, the fused loss against the dense formula (loss and gradient), gradcheck,
K = 1 is token CE, and `codeprior train --objective snce` from the CLI with its one-line errors."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_TRAIN_FLAGS

from codeprior.cli import main as cli_main
from codeprior.data.codes import write_code_shards
from codeprior.errors import CodepriorError
from codeprior.train.objectives import token_loss
from codeprior.train.snce import neighbour_table, snce_dense_loss, snce_loss
from codeprior.utils.io import load_checkpoint, sha256_tensor


def _codebook(V=40, D=4, seed=0):
    return torch.randn(V, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _case(V=40, B=3, L=5, seed=1, ignore=True):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, L, V, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    t = torch.randint(0, V, (B, L), generator=g)
    if ignore:
        t[0, 1] = t[2, 3] = -100
    return x, t


def test_neighbour_table_is_the_k_nearest_normalised_codes_with_softmax_weights():
    cb = _codebook()
    tab = neighbour_table(cb, 6, tau=0.3)
    xn = F.normalize(cb, dim=-1)
    d2 = torch.cdist(xn, xn).pow(2)
    assert torch.equal(tab.index[:, 0], torch.arange(40))  # the code itself first
    for v in range(40):  # the same set as a full sort of the distances
        assert set(tab.index[v].tolist()) == set(torch.argsort(d2[v])[:6].tolist())
        want = torch.softmax(-d2[v, tab.index[v]] / 0.3, 0)
        torch.testing.assert_close(tab.weight[v].double(), want, atol=1e-6, rtol=1e-5)
    assert bool((tab.weight[:, :-1] >= tab.weight[:, 1:] - 1e-7).all())  # nearer codes weigh more
    d2.fill_diagonal_(float("inf"))
    auto = neighbour_table(cb, 6)  # default tau: 0.25 x the median squared distance to the nearest other code
    assert auto.tau == pytest.approx(0.25 * float(d2.min(1).values.median()), rel=1e-6)
    assert neighbour_table(cb, 1).tau == pytest.approx(auto.tau, rel=1e-6)  # also without a neighbour column


@pytest.mark.parametrize("source", ["code", "encoder"])
def test_fused_loss_and_gradient_equal_the_dense_soft_target_formula(source):
    """Independent reference: -sum q log_softmax(x) with q built as a dense [M, V] tensor."""
    cb = _codebook()
    tab = neighbour_table(cb, 8)
    x, t = _case()
    z = torch.randn(3, 5, 4, dtype=torch.float64) if source == "encoder" else None
    loss, parts = snce_loss(x, t, tab, embeddings=z)
    (g,) = torch.autograd.grad(loss, x)
    xr = x.detach().clone().requires_grad_(True)
    ref = snce_dense_loss(xr, t, tab, embeddings=z)
    (gr,) = torch.autograd.grad(ref, xr)
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g, gr, atol=1e-7, rtol=1e-5)
    assert torch.equal(g[0, 1], torch.zeros(40)) and torch.equal(g[2, 3], torch.zeros(40))  # ignored: no gradient
    torch.testing.assert_close(parts["token_loss"], token_loss(x.detach(), t))  # the hard-target CE, for logging


def test_encoder_weights_measure_from_z_over_the_targets_neighbours():
    cb = _codebook()
    tab = neighbour_table(cb, 5, tau=0.2)
    t = torch.tensor([3, 7])
    z = torch.randn(2, 4, dtype=torch.float64)
    idx, q = tab.rows(t, z)
    assert torch.equal(idx, tab.index[t])
    e, zn = F.normalize(cb, dim=-1), F.normalize(z, dim=-1)
    for r in range(2):
        want = torch.softmax(-((e[idx[r]] - zn[r]) ** 2).sum(1) / 0.2, 0)
        torch.testing.assert_close(q[r].double(), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck(reduction):
    tab = neighbour_table(_codebook(V=12, D=3), 4)
    x, t = _case(V=12, B=2, L=3, ignore=False)
    t[1, 2] = -100

    def f(x_):
        return snce_loss(x_, t, tab, reduction=reduction)[0]

    assert torch.autograd.gradcheck(f, (x.detach().clone().requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_k1_is_token_cross_entropy():
    tab = neighbour_table(_codebook(), 1)
    assert bool((tab.weight == 1).all())
    x, t = _case()
    for reduction in ("mean", "sum", "none"):
        loss = snce_loss(x, t, tab, reduction=reduction)[0]
        ref = token_loss(x, t, reduction=reduction)
        torch.testing.assert_close(loss, ref, atol=1e-12, rtol=1e-12)
    (g,) = torch.autograd.grad(snce_loss(x, t, tab)[0], x)
    (gr,) = torch.autograd.grad(token_loss(x, t), x)
    torch.testing.assert_close(g, gr, atol=1e-12, rtol=1e-12)


def test_float32_and_bf16_logits_match_float64():
    tab = neighbour_table(_codebook(), 8)
    x, t = _case()
    ref = snce_loss(x, t, tab)[0]
    torch.testing.assert_close(snce_loss(x.float(), t, tab)[0].double(), ref, atol=1e-5, rtol=1e-5)
    assert snce_loss(x.bfloat16(), t, tab)[0].dtype == torch.float32  # taken in float32 like the other losses


def test_bad_inputs_are_one_line_errors():
    tab = neighbour_table(_codebook(), 4)
    x, t = _case(V=30)
    with pytest.raises(CodepriorError, match="covers 40 codes but the logits 30"):
        snce_loss(x, t, tab)
    x, t = _case()
    t[0, 0] = 40
    with pytest.raises(CodepriorError, match="outside"):
        snce_loss(x, t, tab)
    with pytest.raises(CodepriorError, match=r"--snce-k must be in 1..40"):
        neighbour_table(_codebook(), 41)


# ------------------------------------------------------------------------------------------------ the trainer
N = 16


def _shards(root, codebook_hash=None):
    g = np.random.default_rng(0)
    meta = {"grid": [3, 3], "codebook_size": N, "num_classes": 3, "n_aug": 2}
    if codebook_hash:
        meta["codebook_sha256"] = codebook_hash
    for split, n in (("train", 32), ("test", 8)):
        labels = g.integers(0, 3, n)
        codes = (labels[:, None, None] * 5 + g.integers(0, 4, (n, 2, 9))) % N
        write_code_shards(root / "codes", split, codes, labels, meta)
    return root / "codes"


def _train_args(root, *extra):
    """``codeprior train --objective snce`` on the tiny shards: the shared tiny-run flags, then this file's
    steps, batch and per-step logging (later flags win)."""
    return [
        "train",
        "--codes",
        str(root / "codes"),
        "--out",
        str(root / "run"),
        "--objective",
        "snce",
        *TINY_TRAIN_FLAGS,
        "--max-steps",
        "3",
        "--global-batch",
        "8",
        "--log-every",
        "1",
        *extra,
    ]


def test_train_snce_from_the_cli(tmp_path, capsys):
    cb = torch.randn(N, 4)
    np.save(tmp_path / "cb.npy", cb.numpy())
    _shards(tmp_path, sha256_tensor(cb))
    assert cli_main(_train_args(tmp_path, "--codebook", str(tmp_path / "cb.npy"), "--snce-k", "4")) == 0
    err = capsys.readouterr().err
    assert "snce: K=4" in err and "source code" in err
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(float(r["token_loss"]) > 0 for r in rows)
    assert float(rows[-1]["loss"]) != float(rows[-1]["token_loss"])  # the soft loss, not the hard CE
    final = load_checkpoint(tmp_path / "run" / "model.pt")
    assert final["objective"] == "snce" and final["args"]["snce_k"] == 4
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["finished"]


def test_train_snce_errors_are_one_line(tmp_path, capsys):
    cb = torch.randn(N, 4)
    np.save(tmp_path / "cb.npy", cb.numpy())
    np.save(tmp_path / "other.npy", torch.randn(N, 4).numpy())
    _shards(tmp_path, sha256_tensor(cb))
    cases = [
        ((), "the manifest names no tokenizer file; give --codebook"),
        (("--codebook", str(tmp_path / "other.npy")), "not the codebook the shards"),
        (("--codebook", str(tmp_path / "cb.npy"), "--snce-k", "17"), "--snce-k must be in 1..16"),
        (("--codebook", str(tmp_path / "cb.npy"), "--loss-chunk", "8"), "--loss-chunk is not supported"),
    ]
    for extra, msg in cases:
        assert cli_main(_train_args(tmp_path, *extra, "--overwrite")) == 2
        err = capsys.readouterr().err
        assert msg in err and err.strip().count("\n") == 0, err
