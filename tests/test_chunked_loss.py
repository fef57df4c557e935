"""Chunked head + loss (codeprior.train.chunked): the same loss, gradients and metrics as the full-logits path
(token, cluster-ce, coarse; ignore_index and every reduction; float64), through the objectives and the trainer."""

import pytest
import torch
from helpers import tiny_gpt
from test_trainer import _final_weights, cfg_for, read_csv

from codeprior.errors import CodepriorError
from codeprior.train.chunked import chunked_head_loss
from codeprior.train.objectives import cluster_ce_loss, get_objective, token_loss

V, D, K = 40, 12, 11


def _prior() -> torch.Tensor:
    """Unequal, non-contiguous clusters with singletons: code j -> cluster, k = 11."""
    g = torch.Generator().manual_seed(1)
    ttc = torch.cat([torch.arange(K), torch.randint(0, 4, (V - K,), generator=g)])
    return ttc[torch.randperm(V, generator=g)]


def _case(M: int = 29, seed: int = 0, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(M, D, generator=g, dtype=torch.float64).requires_grad_()
    w = (torch.randn(V, D, generator=g, dtype=torch.float64) * scale).requires_grad_()
    t = torch.randint(0, V, (M,), generator=g)
    t[[i for i in (2, 9, 17) if i < M]] = -100
    return h, w, t


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("lam", [None, 0.0, 0.6])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_loss_and_gradients_equal_the_full_path(reduction, lam, chunk):
    ttc = _prior()
    h, w, t = _case()
    logits = h @ w.t()
    if lam is None:
        ref, ref_parts = token_loss(logits, t, reduction=reduction), {}
    else:
        ref, ref_parts = cluster_ce_loss(logits, t, ttc, lam, k=K, reduction=reduction, return_cluster_logits=True)
    g_out = torch.randn_like(ref) if reduction == "none" else torch.tensor(1.7, dtype=ref.dtype)
    gh, gw = torch.autograd.grad(ref, (h, w), g_out)
    loss, parts = chunked_head_loss(
        h, w, t, token_to_cluster=ttc, k=K, lam=lam, reduction=reduction, chunk=chunk, want_metrics=True
    )
    ch, cw = torch.autograd.grad(loss, (h, w), g_out)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ch, gh, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cw, gw, rtol=1e-12, atol=1e-12)
    if reduction == "none":
        assert bool((loss[t == -100] == 0).all())
    for name in ref_parts:  # token_loss, cluster_loss, cluster_logits
        torch.testing.assert_close(parts[name], ref_parts[name], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        parts["cluster_logits"], cluster_ce_loss(logits, t, ttc, k=K, return_cluster_logits=True)[1]["cluster_logits"]
    )
    assert torch.equal(parts["token_pred"], logits.argmax(-1))
    assert ("cluster_loss" in parts) == (lam is not None)


def test_target_cluster_far_below_the_row_max_is_exact():
    """A target cluster ~1000 below the row max underflows exp(x - rowmax): its log-sum-exp is taken from its own
    members' max, so loss and gradient stay exact (the full path recomputes that row)."""
    ttc = _prior()
    h, w, t = _case(M=6)
    members = ttc == int(ttc[t[0]])
    with torch.no_grad():  # row 0's logits on its target cluster's members: about -1000
        w[members] = -1000.0 * h[0] / h[0].pow(2).sum()
    logits = h @ w.t()
    ref, _ = cluster_ce_loss(logits, t, ttc, 1.0, k=K)
    gh, gw = torch.autograd.grad(ref, (h, w))
    loss, _ = chunked_head_loss(h, w, t, token_to_cluster=ttc, k=K, lam=1.0, chunk=4)
    ch, cw = torch.autograd.grad(loss, (h, w))
    assert torch.isfinite(loss) and float(ref.detach()) > 100
    assert float((logits[0] - logits[0].max()).detach()[members].max()) < -800  # exp underflows in float64
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(ch, gh, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(cw, gw, rtol=1e-10, atol=1e-9)


def test_all_ignored_mean_is_nan_with_zero_gradient_and_no_grad_mode():
    h, w, t = _case(M=5)
    t[:] = -100
    loss, _ = chunked_head_loss(h, w, t, chunk=2)
    assert torch.isnan(loss)
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert not gh.any() and not gw.any()
    with torch.no_grad():  # validation: loss only (no gradients are precomputed)
        h2, w2, t2 = _case()
        a, _ = chunked_head_loss(h2, w2, t2, chunk=4)
    torch.testing.assert_close(a, token_loss(h2 @ w2.t(), t2).detach())


def test_errors():
    h, w, t = _case(M=4)
    with pytest.raises(CodepriorError, match="chunk must be"):
        chunked_head_loss(h, w, t, chunk=0)
    with pytest.raises(CodepriorError, match="outside"):
        chunked_head_loss(h, w, torch.tensor([0, 1, V, 2]))
    with pytest.raises(CodepriorError, match="needs token_to_cluster"):
        chunked_head_loss(h, w, t, lam=1.0)
    with pytest.raises(CodepriorError, match="is not"):
        chunked_head_loss(h, w[:, :3], t)
    loss, _ = chunked_head_loss(h, w, t, chunk=3)
    loss.backward(retain_graph=True)
    with pytest.raises(CodepriorError, match="backward twice"):
        loss.backward()


@pytest.mark.parametrize("objective", ["token", "cluster-ce", "coarse"])
def test_objective_forward_chunked_equals_full(objective):
    """Objective.forward(loss_chunk=...) on a GPT (float32, the training dtype: GPT.forward returns float32 logits):
    the loss, every parameter's gradient and the logged metrics equal the full-logits path."""
    ttc = _prior()
    vocab = K if objective == "coarse" else V
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, V, (3, 15), generator=g)
    labels = torch.randint(0, 5, (3,), generator=g)
    obj = get_objective(objective)
    out = {}
    for chunk in (0, 8):
        model = tiny_gpt(vocab_size=vocab).train()
        loss, parts, logits = obj.forward(model, codes, labels, ttc, K, 0.5, want_cluster_logits=True, loss_chunk=chunk)
        loss.backward()
        mets = obj.metrics(logits, codes, ttc, K, parts.get("cluster_logits"), parts.get("token_pred"))
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        out[chunk] = (loss.detach(), {n: v for n, v in parts.items() if n.endswith("_loss")}, grads, mets, logits)
    (l0, p0, g0, m0, lg0), (l1, p1, g1, m1, lg1) = out[0], out[8]
    assert lg0 is not None and lg1 is None  # the chunked path never builds the logits
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-6)
    assert p1.keys() == p0.keys()
    for n in p0:
        torch.testing.assert_close(p1[n], p0[n], rtol=1e-6, atol=1e-6)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6)
    assert m1 == m0 and set(m0) == ({"cluster_acc"} if objective == "coarse" else {"token_acc", "cluster_acc"})


def test_trainer_loss_chunk_gives_the_same_weights_and_metrics(tmp_path):
    a = _final_weights(cfg_for(tmp_path, "cluster-ce", out=str(tmp_path / "a"), max_steps=3, log_every=1))
    b = _final_weights(
        cfg_for(tmp_path, "cluster-ce", out=str(tmp_path / "b"), max_steps=3, log_every=1, loss_chunk=5, val_every=3)
    )
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    ra, rb = read_csv(tmp_path / "a" / "metrics.csv"), read_csv(tmp_path / "b" / "metrics.csv")
    for x, y in zip(ra, rb):
        for col in ("loss", "token_loss", "cluster_loss", "token_acc", "cluster_acc"):
            assert float(x[col]) == pytest.approx(float(y[col]), rel=1e-5), col
    assert rb[-1]["val_loss"] != "" and rb[-1]["val_cluster_acc"] != ""


def test_loss_chunk_setting_checks(tmp_path):
    with pytest.raises(CodepriorError, match="--loss-chunk is not supported with --fsdp"):
        cfg_for(tmp_path, "token", loss_chunk=64, fsdp=True).validate()
    with pytest.raises(CodepriorError, match="--loss-chunk applies to the GPT objectives"):
        cfg_for(tmp_path, "refine", loss_chunk=64).validate()


def test_bf16_autocast_matches_the_full_path():
    """Under autocast the head runs in bf16 as nn.Linear does there; the loss in float32 (bf16 tolerances)."""
    ttc = _prior()
    h, w, t = (x.float() if x.is_floating_point() else x for x in _case(M=64))
    h, w = h.detach().requires_grad_(), w.detach().mul(0.3).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, _ = cluster_ce_loss(torch.nn.functional.linear(h, w).float(), t, ttc, 1.0, k=K)
        loss, _ = chunked_head_loss(h, w, t, token_to_cluster=ttc, k=K, lam=1.0, chunk=16)
    gh, gw = torch.autograd.grad(ref, (h, w))
    ch, cw = torch.autograd.grad(loss, (h, w))
    assert loss.dtype == torch.float32 and ch.dtype == h.dtype and cw.dtype == w.dtype
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)  # the same bf16 logits, the same float32 loss
    torch.testing.assert_close(ch, gh, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(cw, gw, rtol=2e-2, atol=2e-3)
