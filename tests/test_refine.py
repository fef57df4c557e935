"""Refine model: restriction to cluster members, bidirectional vs causal (DCPE) attention, sampling modes."""

from __future__ import annotations

import pytest
import torch

from codeprior.errors import CodepriorError
from codeprior.models import REFINE_CONFIGS, RefineModel, get_refine_config
from codeprior.models.gpt import TransformerBlock
from codeprior.priors.prior import Prior

N, K, NCLS, GRID = 30, 6, 4, (3, 4)
L = GRID[0] * GRID[1]


def t2c() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    m = torch.cat([torch.arange(K), torch.randint(0, K, (N - K,), generator=g)])  # every cluster used, unequal sizes
    return m[torch.randperm(N, generator=g)]


def make(causal=False, restrict=True, seed=0, mapping="t2c") -> RefineModel:
    torch.manual_seed(seed)
    cfg = get_refine_config(
        "Refine-tiny", vocab_size=N, coarse_vocab_size=K, num_classes=NCLS, grid=GRID, causal=causal, restrict=restrict
    )
    m = RefineModel(cfg, t2c() if mapping == "t2c" else mapping)
    torch.nn.init.normal_(m.output.weight, std=0.5)
    return m.eval()


def batch(B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, K, (B, L), generator=g), torch.randint(0, NCLS, (B,), generator=g)


def test_registry_and_shared_blocks():
    assert {"Refine-tiny", "Refine-S", "Refine-B", "Refine-L"} <= set(REFINE_CONFIGS)
    m = make()
    assert all(isinstance(b, TransformerBlock) for b in m.layers)  # the GPT's blocks, not a copy
    assert m.tok_embeddings.weight.shape == (K, 128) and m.output.weight.shape == (N, 128)
    assert m.config.causal is False and m.config.restrict is True  # CTF defaults


def test_logits_restricted_to_cluster_members():
    m = make()
    coarse, labels = batch()
    logits = m(coarse, labels)
    assert logits.shape == (3, L, N)
    member = t2c()[None, None, :] == coarse[..., None]
    assert torch.isfinite(logits[member]).all() and torch.isinf(logits[~member]).all()
    assert torch.equal(t2c()[logits.argmax(-1)], coarse)
    # training loss on ground truth codes stays finite and differentiable
    fine = torch.stack([torch.stack([torch.nonzero(t2c() == c)[0, 0] for c in row]) for row in coarse])
    m.train()
    loss = torch.nn.functional.cross_entropy(m(coarse, labels).flatten(0, 1), fine.flatten())
    loss.backward()
    assert torch.isfinite(loss) and m.tok_embeddings.weight.grad.abs().sum() > 0


def test_bidirectional_sees_future_coarse_ids():
    m = make()
    coarse, labels = batch()
    base = m(coarse, labels)
    changed = coarse.clone()
    changed[:, 8] = (changed[:, 8] + 1) % K
    out = m(changed, labels)
    assert (out[:, :8].nan_to_num(0, 0, 0) - base[:, :8].nan_to_num(0, 0, 0)).abs().amax() > 1e-4


def test_causal_unrestricted_variant_dcpe():
    m = make(causal=True, restrict=False)
    coarse, labels = batch()
    base = m(coarse, labels)
    assert torch.isfinite(base).all()  # unrestricted
    changed = coarse.clone()
    changed[:, 8] = (changed[:, 8] + 1) % K
    out = m(changed, labels)
    assert torch.equal(out[:, :8], base[:, :8])  # positions before 8 never see coarse id 8 ...
    assert (out[:, 8] - base[:, 8]).abs().amax() > 1e-4  # ... position 8 sees its own coarse id
    # prefix consistency: position i's logits from the length-(i+1) prefix are the same
    torch.testing.assert_close(m(coarse[:, :5], labels), base[:, :5])


def test_sampling_modes():
    m = make()
    coarse, labels = batch(B=4)
    for mode in ("sample", "argmax", "random-member"):
        fine = m.sample(coarse, labels, mode=mode, generator=torch.Generator().manual_seed(0))
        assert fine.shape == coarse.shape and torch.equal(t2c()[fine], coarse), mode
    assert torch.equal(m.sample(coarse, labels, mode="argmax"), m(coarse, labels).argmax(-1))
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    full = m.sample(coarse, labels, generator=gens([1, 2, 3, 4]))
    part = m.sample(coarse[2:], labels[2:], generator=gens([3, 4]))
    assert torch.equal(full[2:], part)
    with pytest.raises(CodepriorError, match="mode must be one of"):
        m.sample(coarse, labels, mode="beam")
    with pytest.raises(CodepriorError, match="coarse ids must be in"):
        m.sample(coarse + K, labels)


def test_random_member_is_uniform_within_cluster():
    m = make()
    c = int(torch.bincount(t2c()).argmax())
    members = torch.nonzero(t2c() == c).flatten()
    coarse = torch.full((500, L), c)
    fine = m.sample(
        coarse, torch.zeros(500, dtype=torch.long), mode="random-member", generator=torch.Generator().manual_seed(0)
    )
    freq = torch.bincount(fine.flatten(), minlength=N)[members].float() / fine.numel()
    torch.testing.assert_close(freq, torch.full_like(freq, 1 / len(members)), atol=0.02, rtol=0)


def test_mapping_inputs_and_errors():
    prior = Prior(t2c())
    a, b = make(mapping=prior), make(mapping=t2c())
    assert torch.equal(a.token_to_cluster, b.token_to_cluster)
    cfg = get_refine_config("Refine-tiny", vocab_size=N, coarse_vocab_size=K, num_classes=NCLS, grid=GRID)
    assert torch.equal(RefineModel(cfg, prior=prior).token_to_cluster, t2c())
    with pytest.raises(CodepriorError, match="restrict=True needs token_to_cluster"):
        RefineModel(cfg)
    with pytest.raises(CodepriorError, match="some clusters empty"):
        RefineModel(cfg, torch.zeros(N, dtype=torch.long))
    with pytest.raises(CodepriorError, match=r"token_to_cluster must be an integer tensor \[30\]"):
        RefineModel(cfg, torch.arange(N + 1) % K)
    free = RefineModel(get_refine_config(cfg, restrict=False))  # unrestricted needs no map
    with pytest.raises(CodepriorError, match="no token_to_cluster map"):
        free.sample(*batch(), mode="random-member")
    with pytest.raises(CodepriorError, match="exceeds vocab_size"):
        get_refine_config("Refine-tiny", vocab_size=4, coarse_vocab_size=8)


def _reference_sample(m, coarse, labels, temperature, top_k, gens):
    """The plain definition: masked [B, L, N] logits from the full forward, then the library sampler."""
    from codeprior.models.gpt import sample_logits

    with torch.no_grad():
        return sample_logits(m(coarse, labels), temperature, top_k, 1.0, gens)


@pytest.mark.parametrize("top_k", [0, 2])
def test_member_sampling_equals_full_vocabulary_sampling(top_k):
    m = make()
    coarse, labels = batch(B=16, seed=3)
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(16)]  # noqa: E731
    got = m.sample(coarse, labels, temperature=1.1, top_k=top_k, generator=gens())
    ref = _reference_sample(m, coarse, labels, 1.1, top_k, gens())
    assert (t2c()[got] == coarse).all()  # always a member of the position's cluster
    # same uniforms, same CDF up to float rounding of the normalisation: identical draws except at an ulp boundary
    assert (got == ref).float().mean() >= 0.99


def test_member_logits_paths_agree_with_the_full_head(monkeypatch):
    import codeprior.models.refine as R

    m = make()
    coarse, labels = batch(B=5, seed=4)
    members, valid = m._members_of(coarse)
    with torch.no_grad():
        full = m(coarse, labels).gather(-1, members)
        monkeypatch.setattr(R, "_GATHER_ELEMS", 7 * members.shape[-1] * m.config.dim)  # 7 positions per chunk
        chunked = m._member_logits(coarse, labels, members)
        monkeypatch.setattr(R, "_GATHER_RATIO", 10**9)  # force the full head + column gather
        gathered = m._member_logits(coarse, labels, members)
    torch.testing.assert_close(chunked[valid], full[valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gathered[valid], full[valid], rtol=0, atol=0)


def test_member_sampling_follows_the_softmax_of_the_members():
    m = make()
    c = int(torch.bincount(t2c()).argmax())
    members = torch.nonzero(t2c() == c).flatten()
    coarse, labels = torch.full((3000, L), c), torch.zeros(3000, dtype=torch.long)
    with torch.no_grad():
        p = (m(coarse[:1], labels[:1])[0, 0, members] / 1.1).softmax(-1)
    fine = m.sample(coarse, labels, temperature=1.1, generator=torch.Generator().manual_seed(0))[:, 0]
    freq = torch.bincount(fine, minlength=N)[members].float() / len(fine)
    torch.testing.assert_close(freq, p, atol=0.03, rtol=0)


def test_member_table_follows_a_new_mapping():
    m = make()
    coarse, labels = batch(B=4, seed=5)
    m.sample(coarse, labels, generator=torch.Generator().manual_seed(0))  # builds and caches the table
    new = torch.roll(t2c(), 7)  # a different map with the same cluster sizes
    m.set_token_to_cluster(new)
    fine = m.sample(coarse, labels, generator=torch.Generator().manual_seed(0))
    assert (new[fine] == coarse).all()
