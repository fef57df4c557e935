"""Objectives: cluster logits against independent references (IAR's reshape formula, a per-cluster loop),
gradients (float64 gradcheck), unequal/singleton/non-contiguous partitions, numerical stability, metrics."""

import pytest
import torch
import torch.nn.functional as F

from codeprior.errors import CodepriorError
from codeprior.train.objectives import (
    accuracy,
    cluster_ce_loss,
    cluster_logits,
    coarse_loss,
    objective_metrics,
    to_coarse,
    token_loss,
)


def _loop_reference(logits: torch.Tensor, ttc: torch.Tensor, k: int) -> torch.Tensor:
    """Per-cluster logsumexp with a Python loop over clusters (independent of the implementation)."""
    return torch.stack([logits[..., ttc == c].logsumexp(-1) for c in range(k)], dim=-1)


def test_token_loss_is_llamagen_ce():
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    ref = -torch.log_softmax(logits, -1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(token_loss(logits, targets), ref)
    # bf16 logits are upcast
    assert token_loss(logits.bfloat16(), targets).dtype == torch.float32


def test_cluster_logits_equal_iar_reshape_for_equal_contiguous_clusters():
    B, L, N, k = 3, 4, 64, 8
    logits = torch.randn(B, L, N) * 5
    ttc = torch.arange(N) // (N // k)  # contiguous blocks of N/k codes
    ref = logits.view(B, L, k, N // k).logsumexp(-1)  # IAR's formula
    torch.testing.assert_close(cluster_logits(logits, ttc, k), ref)
    targets = torch.randint(0, N, (B, L))
    loss, parts = cluster_ce_loss(logits, targets, ttc, lam=0.5, k=k, return_cluster_logits=True)
    ref_loss = F.cross_entropy(logits.view(-1, N), targets.view(-1)) + 0.5 * F.cross_entropy(
        ref.view(-1, k), (targets // (N // k)).view(-1)
    )
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(parts["cluster_logits"], ref)


def test_unequal_noncontiguous_partition_with_singletons_matches_loop():
    N, k = 40, 13
    g = torch.Generator().manual_seed(1)
    ttc = torch.cat([torch.arange(k), torch.randint(0, 3, (N - k,), generator=g)])  # sizes: many 1s, a few large
    ttc = ttc[torch.randperm(N, generator=g)]  # scattered members, no permutation needed
    assert (torch.bincount(ttc) == 1).sum() >= 5
    logits = torch.randn(2, 3, N, generator=g) * 10
    torch.testing.assert_close(cluster_logits(logits, ttc, k), _loop_reference(logits, ttc, k))
    # k inferred from the map
    torch.testing.assert_close(cluster_logits(logits, ttc), _loop_reference(logits, ttc, k))
    # softmax over cluster logits = summed token probabilities per cluster
    p = torch.softmax(logits, -1)
    summed = torch.zeros(2, 3, k).index_add_(-1, ttc, p)
    torch.testing.assert_close(torch.softmax(cluster_logits(logits, ttc, k), -1), summed)


def test_gradcheck_float64():
    N, k = 9, 4
    ttc = torch.tensor([2, 0, 3, 1, 0, 2, 2, 0, 1])  # unequal, non-contiguous, cluster 3 a singleton
    x = torch.randn(2, 3, N, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: cluster_logits(z, ttc, k), (x,))
    t = torch.randint(0, N, (2, 3))
    assert torch.autograd.gradcheck(lambda z: cluster_ce_loss(z, t, ttc, lam=0.7, k=k)[0], (x,))


def test_gradient_matches_autograd_of_reference():
    N, k = 30, 7
    ttc = torch.randint(0, k, (N,))
    ttc[:k] = torch.arange(k)
    x = torch.randn(4, N, requires_grad=True)
    w = torch.randn(4, k)
    (cluster_logits(x, ttc, k) * w).sum().backward()
    g1 = x.grad.clone()
    x.grad = None
    (_loop_reference(x, ttc, k) * w).sum().backward()
    torch.testing.assert_close(g1, x.grad)


def test_numerically_stable_when_a_cluster_underflows():
    ttc = torch.tensor([0, 0, 1, 1, 2])
    x = torch.tensor([[0.0, 1.0, -1000.0, -1001.0, 3.0], [1e4, 1e4, 0.0, 0.0, 1e4]], requires_grad=True)
    out = cluster_logits(x, ttc, 3)
    ref = _loop_reference(x.detach().double(), ttc, 3).float()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    # within-cluster softmax: gradient of cluster 1's logit w.r.t. its members sums to 1
    torch.testing.assert_close(x.grad[0, 2:4].sum(), torch.tensor(1.0), atol=1e-4, rtol=0)  # float32 ulp at 1000


def test_masked_logits_as_from_a_restricted_model():
    ttc = torch.tensor([0, 0, 1, 1])
    x = torch.tensor([[0.5, 1.0, float("-inf"), float("-inf")]], requires_grad=True)
    out = cluster_logits(x, ttc, 2)
    assert out[0, 1] == float("-inf") and torch.isfinite(out[0, 0])
    out[:, 0].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0, 2:].abs().sum() == 0


def test_coarse_loss_and_mapping():
    ttc = torch.tensor([1, 0, 1, 2])
    codes = torch.tensor([[0, 3, 1]])
    assert to_coarse(codes, ttc).tolist() == [[1, 2, 0]]
    logits = torch.randn(1, 3, 3)
    torch.testing.assert_close(
        coarse_loss(logits, to_coarse(codes, ttc)), F.cross_entropy(logits[0], torch.tensor([1, 2, 0]))
    )


def test_metrics():
    ttc = torch.tensor([0, 0, 1, 1])
    # token argmax = 1 (cluster 0) but cluster 1 holds more mass: cluster_acc uses cluster logits
    logits = torch.tensor([[[0.0, 2.0, 1.8, 1.8]]]).log_softmax(-1)
    targets = torch.tensor([[2]])
    m = objective_metrics("token", logits, targets, ttc, 2)
    assert m == {"token_acc": 0.0, "cluster_acc": 1.0}
    assert objective_metrics("token", logits, targets) == {"token_acc": 0.0}
    coarse_logits = torch.tensor([[[0.0, 1.0]]])
    assert objective_metrics("coarse", coarse_logits, targets, ttc) == {"cluster_acc": 1.0}
    assert float(accuracy(torch.eye(3)[None], torch.tensor([[0, 2, 2]]))) == pytest.approx(2 / 3)


def test_bad_shapes_raise_user_error():
    with pytest.raises(CodepriorError, match="token_to_cluster"):
        cluster_logits(torch.randn(2, 5), torch.zeros(4, dtype=torch.long), 1)
    with pytest.raises(CodepriorError, match="do not match"):
        token_loss(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def _unfused(logits, targets, ttc, k, lam):
    """Reference: token CE + lam * CE over loop-computed cluster logits, plain autograd."""
    cl = _loop_reference(logits, ttc, k)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)) + lam * F.cross_entropy(
        cl.reshape(-1, k), ttc[targets].reshape(-1)
    )


@pytest.mark.parametrize("lam", [0.0, 1.0, 2.5])
def test_fused_cluster_ce_matches_unfused_reference(lam):
    N, k = 24, 9
    g = torch.Generator().manual_seed(2)
    ttc = torch.cat([torch.arange(k), torch.randint(0, 4, (N - k,), generator=g)])[torch.randperm(N, generator=g)]
    x = (torch.randn(3, 5, N, generator=g) * 4).requires_grad_()
    t = torch.randint(0, N, (3, 5), generator=g)
    loss, parts = cluster_ce_loss(x, t, ttc, lam, k=k, return_cluster_logits=True)
    (gx,) = torch.autograd.grad(loss * 1.7, x)
    ref = _unfused(x, t, ttc, k, lam)
    (gr,) = torch.autograd.grad(ref * 1.7, x)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(gx, gr)
    torch.testing.assert_close(parts["token_loss"], token_loss(x, t))
    torch.testing.assert_close(parts["cluster_logits"], _loop_reference(x.detach(), ttc, k))
    # without the (metrics-only) cluster logits, the default: same loss and gradient
    loss2, parts2 = cluster_ce_loss(x, t, ttc, lam, k=k)
    assert set(parts2) == {"token_loss", "cluster_loss"}
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(torch.autograd.grad(loss2 * 1.7, x)[0], gx)


def test_fused_cluster_ce_when_the_target_cluster_underflows():
    ttc = torch.tensor([0, 0, 1, 1, 2])
    x = torch.tensor(
        [[0.0, 1.0, -1000.0, -1001.0, 3.0], [5.0, 0.0, 1.0, 2.0, 0.0]], dtype=torch.float64, requires_grad=True
    )
    t = torch.tensor([3, 0])  # row 0: target cluster 1 lies ~1000 below the row max
    loss, _ = cluster_ce_loss(x.float(), t, ttc, 1.0, k=3)
    ref = _unfused(x, t, ttc, 3, 1.0)
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) < 1e-3 * ref.item()
    xf = x.detach().float().requires_grad_()
    cluster_ce_loss(xf, t, ttc, 1.0, k=3)[0].backward()
    (gr,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(xf.grad, gr.float(), atol=1e-4, rtol=1e-4)


def test_registry_objectives_match_the_loss_functions():
    from codeprior.train.objectives import ALL_OBJECTIVES, OBJECTIVES, REGISTRY, get_objective

    assert OBJECTIVES == ("token", "cluster-ce", "coarse", "hier-cluster-ce", "snce")
    assert ALL_OBJECTIVES == ("token", "cluster-ce", "coarse", "refine", "hier-cluster-ce", "snce")
    ttc = torch.tensor([0, 0, 1, 2, 2, 1])
    g = torch.Generator().manual_seed(0)
    codes, labels = torch.randint(0, 6, (2, 5), generator=g), torch.tensor([0, 1])
    seen = {}

    def model(x, y):  # a stand-in model: fixed logits over the objective's vocabulary
        seen["input"] = x
        return torch.randn(2, 5, seen["V"], generator=torch.Generator().manual_seed(1))

    for name in ("token", "cluster-ce", "coarse", "refine"):  # snce / hier-cluster-ce: tests/test_snce.py, ..._hier
        obj = REGISTRY[name]
        seen["V"] = obj.vocab_size(6, 3)
        assert seen["V"] == (3 if name == "coarse" else 6)
        loss, parts, logits = obj.forward(model, codes, labels, ttc, 3, 0.5, want_cluster_logits=True)
        coarse_in = name in ("coarse", "refine")
        assert torch.equal(seen["input"], to_coarse(codes, ttc) if coarse_in else codes)
        if name == "coarse":
            assert torch.equal(loss, coarse_loss(logits, to_coarse(codes, ttc))) and parts == {}
            assert set(obj.metrics(logits, codes, ttc, 3)) == {"cluster_acc"}
        elif name == "cluster-ce":
            assert torch.equal(loss, cluster_ce_loss(logits, codes, ttc, 0.5, k=3)[0])
            assert set(parts) == {"token_loss", "cluster_loss", "cluster_logits"}
        else:
            assert torch.equal(loss, token_loss(logits, codes)) and torch.equal(parts["token_loss"], loss)
        assert set(obj.loss_parts) == set(parts) - {"cluster_logits"}
        assert "cluster_logits" not in obj.forward(model, codes, labels, ttc, 3, 0.5)[1]  # only when asked
        assert obj.needs_prior == (name != "token") and (obj.model_kind == "refine") == (name == "refine")
    with pytest.raises(CodepriorError, match="unknown objective 'tok'"):
        get_objective("tok")


# ------------------------------------------------------------------ ignore_index, reduction, target dtypes


def _masked_case(seed=3, B=3, L=5, N=24, k=7, ignore_index=-100):
    """Logits [B, L, N], targets with a few positions set to ``ignore_index``, an unequal non-contiguous partition."""
    g = torch.Generator().manual_seed(seed)
    ttc = torch.cat([torch.arange(k), torch.randint(0, 3, (N - k,), generator=g)])[torch.randperm(N, generator=g)]
    x = torch.randn(B, L, N, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, N, (B, L), generator=g)
    t[0, 1] = t[2, 4] = t[1, 0] = ignore_index
    return x, t, ttc, k


def _dense_cluster_ce(x, t, ttc, k, lam, ignore_index, reduction):
    """Independent reference: token CE from F.cross_entropy plus the NLL of the summed softmax probability of each
    cluster (a dense one-hot [N, k] matmul), both with torch's own ignore_index / reduction semantics."""
    onehot = F.one_hot(ttc, k).to(x.dtype)  # [N, k]
    log_p_cluster = (torch.softmax(x, -1) @ onehot).log()  # [..., k]
    keep = t != ignore_index
    ct = torch.where(keep, ttc[torch.where(keep, t, 0)], ignore_index)
    V = x.shape[-1]
    tok = F.cross_entropy(x.reshape(-1, V), t.reshape(-1), ignore_index=ignore_index, reduction=reduction)
    clu = F.nll_loss(log_p_cluster.reshape(-1, k), ct.reshape(-1), ignore_index=ignore_index, reduction=reduction)
    if reduction == "none":
        tok, clu = tok.reshape(t.shape), clu.reshape(t.shape)
    return tok + lam * clu, tok, clu


@pytest.mark.parametrize("ignore_index", [-100, 5])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_token_and_coarse_loss_equal_f_cross_entropy(reduction, ignore_index):
    x, t, _, _ = _masked_case(ignore_index=ignore_index)
    x = x.float().requires_grad_()
    w = torch.randn(t.shape) if reduction == "none" else torch.tensor(1.7)
    for fn in (token_loss, coarse_loss):
        out = fn(x, t, ignore_index=ignore_index, reduction=reduction)
        ref = F.cross_entropy(x.reshape(-1, 24), t.reshape(-1), ignore_index=ignore_index, reduction=reduction)
        ref = ref.reshape(t.shape) if reduction == "none" else ref
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref)
        (g1,) = torch.autograd.grad((out * w).sum(), x)
        (g2,) = torch.autograd.grad((ref * w).sum(), x)
        torch.testing.assert_close(g1, g2)
        assert g1[0, 1].abs().sum() == 0  # an ignored position: no gradient


@pytest.mark.parametrize("ignore_index", [-100, 5])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cluster_ce_with_ignore_index_matches_dense_reference(reduction, ignore_index):
    x, t, ttc, k = _masked_case(ignore_index=ignore_index)
    x.requires_grad_()
    w = torch.randn(t.shape, dtype=x.dtype) if reduction == "none" else torch.tensor(1.3, dtype=x.dtype)
    for lam in (0.0, 0.7):
        loss, parts = cluster_ce_loss(x, t, ttc, lam, k=k, ignore_index=ignore_index, reduction=reduction)
        ref, ref_tok, ref_clu = _dense_cluster_ce(x, t, ttc, k, lam, ignore_index, reduction)
        assert loss.shape == ref.shape == parts["token_loss"].shape
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(parts["token_loss"], ref_tok.detach())
        torch.testing.assert_close(parts["cluster_loss"], ref_clu.detach())
        (g1,) = torch.autograd.grad((loss * w).sum(), x)
        (g2,) = torch.autograd.grad((ref * w).sum(), x)
        torch.testing.assert_close(g1, g2)
        assert g1[0, 1].abs().sum() == 0 and g1[1, 0].abs().sum() == 0
    # float64 gradcheck of the fused backward, every reduction, with ignored positions
    xs = x.detach()[:2, :3].clone().requires_grad_()
    ts = t[:2, :3]
    assert (ts == ignore_index).any()
    assert torch.autograd.gradcheck(
        lambda z: cluster_ce_loss(z, ts, ttc, 0.7, k=k, ignore_index=ignore_index, reduction=reduction)[0], (xs,)
    )


def test_ignored_positions_are_as_if_absent_even_where_code_0s_cluster_underflows():
    ttc = torch.tensor([0, 0, 1, 1, 2])
    x = torch.tensor([[-1000.0, -1001.0, 1.0, 2.0, 3.0], [5.0, 0.0, 1.0, 2.0, 0.0], [0.5, 0.1, 2.0, -1.0, 0.3]])
    t = torch.tensor([-100, 0, 4])  # row 0 is ignored; its (read-as-0) target cluster lies 1000 below the max
    xg = x.clone().requires_grad_()
    loss, parts = cluster_ce_loss(xg, t, ttc, 1.0, k=3)
    loss.backward()
    xr = x[1:].clone().requires_grad_()
    ref, _ = cluster_ce_loss(xr, t[1:], ttc, 1.0, k=3)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(xg.grad[1:], xr.grad)
    assert torch.equal(xg.grad[0], torch.zeros(5))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_positions_ignored_behave_as_f_cross_entropy(reduction):
    """mean: NaN loss and a zero gradient (0 kept positions), as F.cross_entropy; sum: 0; none: zeros."""
    x = torch.randn(2, 3, 6, requires_grad=True)
    t = torch.full((2, 3), -100)
    ttc = torch.tensor([0, 1, 1, 2, 2, 2])
    ref = F.cross_entropy(x.detach().reshape(-1, 6), t.reshape(-1), reduction=reduction)
    for out in (
        token_loss(x, t, reduction=reduction),
        coarse_loss(x, t, reduction=reduction),
        cluster_ce_loss(x, t, ttc, 1.0, k=3, reduction=reduction)[0],
    ):
        torch.testing.assert_close(out.detach(), ref.reshape(out.shape), equal_nan=True)
        assert bool(torch.isnan(out).all()) == (reduction == "mean")
        (g,) = torch.autograd.grad(out.sum(), x)
        assert torch.equal(g, torch.zeros_like(x))
    parts = cluster_ce_loss(x, t, ttc, 1.0, k=3, reduction=reduction)[1]
    assert bool(torch.isnan(parts["cluster_loss"]).all()) == (reduction == "mean")


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.uint8])
def test_any_integer_target_dtype_gives_the_int64_result(dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 40, generator=g, requires_grad=True)
    t = torch.randint(0, 40, (2, 5), generator=g)
    ttc = torch.arange(40) % 6
    small = t.to(dtype)
    assert torch.equal(token_loss(x, small), token_loss(x, t))
    assert torch.equal(coarse_loss(x[..., :6], to_coarse(small, ttc)), coarse_loss(x[..., :6], to_coarse(t, ttc)))
    assert torch.equal(to_coarse(small, ttc), to_coarse(t, ttc))
    assert torch.equal(to_coarse(t, ttc.to(dtype)).long(), to_coarse(t, ttc))
    a, pa = cluster_ce_loss(x, small, ttc.to(dtype), 1.0, k=6)
    b, pb = cluster_ce_loss(x, t, ttc, 1.0, k=6)
    assert torch.equal(a, b) and torch.equal(pa["cluster_loss"], pb["cluster_loss"])
    assert torch.equal(torch.autograd.grad(a, x)[0], torch.autograd.grad(b, x)[0])
    assert torch.equal(cluster_logits(x, ttc.to(dtype), 6), cluster_logits(x, ttc, 6))
    assert torch.equal(accuracy(x, small), accuracy(x, t))


@pytest.mark.parametrize("bad", [40, -1, -7])
def test_targets_out_of_range_are_one_line_user_errors(bad):
    x = torch.randn(2, 3, 40)
    t = torch.randint(0, 40, (2, 3))
    t[1, 2] = bad
    ttc = torch.arange(40) % 4
    calls = [
        lambda: token_loss(x, t),
        lambda: cluster_ce_loss(x, t, ttc, k=4),
        lambda: coarse_loss(x, t),
        lambda: to_coarse(t, ttc),
    ]
    for call in calls:
        with pytest.raises(
            CodepriorError, match=rf"^objectives: 1 target\(s\) outside \[0, 40\) \(first: {bad}\)"
        ) as e:
            call()
        assert "\n" not in str(e.value)
    # the same value is fine once it is the ignore_index
    assert torch.isfinite(token_loss(x, t, ignore_index=bad))
    with pytest.raises(CodepriorError, match="ignore_index=-1"):
        token_loss(x, torch.full((2, 3), -100), ignore_index=-1)  # -100 is only special as the ignore_index


def test_bad_target_dtype_and_reduction_are_user_errors():
    x = torch.randn(2, 3, 5)
    with pytest.raises(CodepriorError, match="targets must be an integer tensor, got torch.float32"):
        token_loss(x, torch.zeros(2, 3))
    with pytest.raises(CodepriorError, match="token_to_cluster must be an integer tensor"):
        cluster_ce_loss(x, torch.zeros(2, 3, dtype=torch.long), torch.zeros(5))
    for fn in (token_loss, coarse_loss):
        with pytest.raises(CodepriorError, match="reduction must be one of mean, sum, none; got 'avg'"):
            fn(x, torch.zeros(2, 3, dtype=torch.long), reduction="avg")
    with pytest.raises(CodepriorError, match="reduction must be"):
        cluster_ce_loss(x, torch.zeros(2, 3, dtype=torch.long), torch.zeros(5, dtype=torch.long), reduction="avg")


def test_to_coarse_and_accuracy_keep_ignored_positions_out():
    ttc = torch.tensor([1, 0, 1, 2])
    codes = torch.tensor([[0, -100, 3]])
    assert to_coarse(codes, ttc).tolist() == [[1, -100, 2]]
    assert to_coarse(codes.masked_fill(codes == -100, 7), ttc, ignore_index=7).tolist() == [[1, 7, 2]]
    logits = torch.tensor([[[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]])
    # position 0 right, position 1 ignored, position 2 wrong: 1 of 2 kept
    assert float(accuracy(logits, torch.tensor([[1, -100, 3]]))) == 0.5


def _docstring_snippet(fn) -> str:
    """The indented code block that ends the docstring of ``fn`` (after its ``::``)."""
    import textwrap

    return textwrap.dedent(fn.__doc__.split("::\n", 1)[1])


@pytest.mark.parametrize("fn", [token_loss, cluster_ce_loss, coarse_loss])
def test_docstring_training_loop_snippets_run(fn, tmp_path, monkeypatch):
    """Each loss's docstring snippet, run as written with a stand-in for LlamaGen's GPT (same call signature)."""
    from codeprior.priors import Prior, load_prior

    N, k, B, L = 16, 5, 2, 6
    Prior(torch.arange(N) % k).save(tmp_path / "dcpe.safetensors")
    monkeypatch.chdir(tmp_path)
    head = torch.nn.Linear(3, k if fn is coarse_loss else N)
    emb = torch.nn.Embedding(N, 3)

    def model(cond_idx, idx, targets=None):  # LlamaGen: (logits [B, L, V] float32, loss None without targets)
        h = torch.cat([torch.zeros(idx.shape[0], 1, 3), emb(idx)], 1)
        return head(h), None

    class Scaler:
        def scale(self, loss):
            return loss

    z_indices = torch.randint(0, N, (B, L))
    ns = {
        "model": model,
        "c_indices": torch.tensor([0, 1]),
        "z_indices": z_indices,
        "valid": torch.tensor([True, False]),
        "scaler": Scaler(),
        "device": "cpu",
        "load_prior": load_prior,
        "to_coarse": to_coarse,
        fn.__name__: fn,
    }
    exec(_docstring_snippet(fn), ns)
    assert torch.isfinite(ns["loss"]) and head.weight.grad is not None and head.weight.grad.abs().sum() > 0
