"""Speculative Jacobi decoding: window 1 is plain AR draw for draw; cached logits equal a full recompute after
rejections; exact acceptance reproduces the enumerated AR distribution (chi-square); per-sample independence of the
batch; relaxed rules accept at least as many tokens as exact; the static cache's write/rollback."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import NCLS, V, tiny_gpt
from scipy import stats

from codeprior.decoding import (
    DecoderSettings,
    GroupRule,
    LatentRule,
    PriorRule,
    build_rule,
    exact_rule,
    jacobi_generate,
)
from codeprior.decoding.jacobi import _probs
from codeprior.errors import CodepriorError
from codeprior.models import GPT, get_gpt_config


def gens(seeds):
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


SETTINGS = [
    {},
    dict(cfg_scale=2.0),
    dict(cfg_scale=3.0, temperature=0.7, top_k=10),
    dict(temperature=1.3, top_p=0.8),
    dict(cfg_scale=2.0, cfg_schedule="linear"),
    dict(cfg_scale=2.0, temperature=0.0),
]


@pytest.mark.parametrize("kw", SETTINGS)
def test_window_one_is_plain_ar(kw):
    model = tiny_gpt()
    labels = torch.tensor([0, 3, 4, 1])
    want = model.generate(labels, 15, generator=gens(range(4)), **kw)
    got, passes = jacobi_generate(model, labels, 15, generator=gens(range(4)), window=1, **kw)
    assert torch.equal(got, want)
    assert passes.tolist() == [15] * 4
    # the generators were consumed exactly as by AR decoding (a refine stage sharing them sees the same state)
    g1, g2 = gens([5]), gens([5])
    model.generate(labels[:1], 15, generator=g1, **kw)
    jacobi_generate(model, labels[:1], 15, generator=g2, window=1, **kw)
    if kw.get("temperature", 1.0) > 0:
        assert torch.equal(torch.rand(3, generator=g1[0]), torch.rand(3, generator=g2[0]))


@pytest.mark.parametrize("kw", [{}, dict(cfg_scale=2.5, top_k=12)])
def test_cached_logits_equal_full_recompute_after_rejections(kw):
    model = tiny_gpt(seed=1, n_kv_head=2)
    labels = torch.tensor([1, 2, 0])
    trace = []
    codes, passes = jacobi_generate(model, labels, 15, generator=gens([3, 4, 5]), window=6, on_pass=trace.append, **kw)
    assert (passes < 15).all() and (passes > 3).all()  # several passes, some with rejections
    assert len(trace[-1]["rows"]) < 3  # finished samples left the batch: the check covers the compacted batch too
    rejections = 0
    for i, t in enumerate(trace):
        nxt = dict(zip(trace[i + 1]["rows"].tolist(), trace[i + 1]["n"].tolist())) if i + 1 < len(trace) else {}
        for r, b in enumerate(t["rows"].tolist()):  # r: row in this pass's batch, b: the sample
            if not t["active"][r]:
                continue
            n, n_next = int(t["n"][r]), nxt.get(b, 15)
            rejections += int(n_next - n < 6 and n_next < 15)
            seq = torch.cat([codes[b, :n], t["inputs"][r, 1:]])[:15]  # accepted prefix + this pass's drafts
            x = torch.cat([seq, torch.zeros(1, dtype=torch.long)])[:15][None]  # teacher-forced input = class + seq
            if kw.get("cfg_scale", 1.0) != 1.0:
                lc = model(x, labels[b : b + 1])[0]
                lu = model(x, torch.tensor([NCLS]))[0]
                full = lu + kw["cfg_scale"] * (lc - lu)
            else:
                full = model(x, labels[b : b + 1])[0]
            m = min(6, 15 - n)  # the pass's outputs that lie inside the sequence
            torch.testing.assert_close(t["logits"][r, :m], full[n : n + m], atol=2e-5, rtol=1e-5)
    assert rejections >= 3


def _enumerated_ar(model, label, L, **kw):
    """Exact AR sampling distribution over all V**L sequences of a tiny model (processed conditionals)."""
    Vt = model.config.vocab_size
    seqs = torch.tensor(list(itertools.product(range(Vt), repeat=L)))
    lab = torch.full((seqs.shape[0],), label)
    with torch.no_grad():
        logits = model(seqs, lab)
        if kw.get("cfg_scale", 1.0) != 1.0:
            lu = model(seqs, torch.full_like(lab, model.config.num_classes))
            logits = lu + kw["cfg_scale"] * (logits - lu)
    p = _probs(logits, kw.get("temperature", 1.0), kw.get("top_k", 0), kw.get("top_p", 1.0))
    prob = p.gather(-1, seqs[..., None]).squeeze(-1).prod(-1)
    return seqs, prob / prob.sum()


@pytest.mark.parametrize(
    "kw,window,init",
    [
        ({}, 3, "random"),
        (dict(cfg_scale=2.0, temperature=0.8, top_k=3), 2, "repeat"),
        (dict(temperature=1.2), 4, "repeat"),
    ],
)
def test_exact_acceptance_reproduces_ar_distribution(kw, window, init):
    """Chi-square goodness of fit over all 4**3 = 64 sequences; false-alarm rate 1e-3 per case (fixed seeds)."""
    model = chi2_model()
    _, prob = _enumerated_ar(model, 1, 3, **kw)
    N = 6000
    codes, passes = jacobi_generate(
        model, torch.ones(N, dtype=torch.long), 3, generator=gens(range(N)), window=window, init=init, **kw
    )
    assert passes.float().mean() < 3  # drafts were accepted: this is not AR decoding in disguise
    counts = sequence_counts(codes)
    support = prob > 0
    assert counts[~support].sum() == 0  # never a sequence the AR sampler cannot produce (top-k)
    chi2, dof = _chi_square(counts[support], prob[support].double() * N)
    print(f"chi2={chi2:.1f} dof={dof} threshold={stats.chi2.ppf(1 - 1e-3, dof):.1f}")
    assert dof >= 15 and chi2 < stats.chi2.ppf(1 - 1e-3, dof), (chi2, dof)


def chi2_model() -> GPT:
    """The chi-square tests' model: 4 codes, 3 positions (64 sequences to enumerate), sharpened output weights."""
    torch.manual_seed(0)
    model = GPT(
        get_gpt_config(
            "GPT-tiny", dim=32, n_head=2, n_layer=2, vocab_size=4, num_classes=2, grid=(1, 3), multiple_of=16
        )
    )
    torch.nn.init.normal_(model.output.weight, std=0.5)
    return model.eval()


def sequence_counts(codes: torch.Tensor) -> torch.Tensor:
    """How often each of the 64 three-code sequences of :func:`chi2_model` was drawn (codes [N, 3])."""
    return torch.bincount((codes * torch.tensor([16, 4, 1])).sum(-1), minlength=64).double()


def _chi_square(counts: torch.Tensor, expected: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson's statistic, cells expecting fewer than ``min_expected`` draws pooled into one (validity)."""
    small = expected < min_expected
    c = torch.cat([counts[~small], counts[small].sum()[None]]) if small.any() else counts
    e = torch.cat([expected[~small], expected[small].sum()[None]]) if small.any() else expected
    return float(((c - e) ** 2 / e).sum()), int(c.numel()) - 1


def test_exact_acceptance_chi_square_detects_a_wrong_sampler():
    """The statistical test has power: drawing drafts without correction (always accept) is rejected."""
    model = chi2_model()
    _, prob = _enumerated_ar(model, 1, 3)
    N = 3000
    always = lambda p, q, x: torch.ones_like(x, dtype=p.dtype)  # noqa: E731  (a wrong rule)
    codes, _ = jacobi_generate(
        model, torch.ones(N, dtype=torch.long), 3, generator=gens(range(N)), window=3, rule=always
    )
    counts = sequence_counts(codes)
    chi2, dof = _chi_square(counts, prob.double() * N)
    print(f"wrong sampler: chi2={chi2:.1f} dof={dof}")
    assert chi2 > stats.chi2.ppf(1 - 1e-3, dof)


def _rules(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(V, 8, generator=g)
    t2c = torch.randperm(V, generator=g) % 6
    return {
        "exact": exact_rule,
        "gsd": GroupRule(model.tok_embeddings.weight),
        "latent": LatentRule(codebook, k=10, delta=3.0),
        "prior": PriorRule(t2c),
    }


@pytest.mark.parametrize("name", ["exact", "gsd", "latent", "prior"])
def test_sample_alone_equals_sample_in_a_batch(name):
    model = tiny_gpt(seed=2)
    rule = _rules(model)[name]
    labels = torch.tensor([0, 1, 2, 3, 4])
    kw = dict(cfg_scale=2.0, temperature=1.0, top_k=20, window=5, rule=rule, init="repeat")
    full, p_full = jacobi_generate(model, labels, 15, generator=gens(range(10, 15)), **kw)
    assert len(set(p_full.tolist())) > 1  # samples accept different numbers of tokens in the same batch
    for b in (0, 3):
        one, p_one = jacobi_generate(model, labels[b : b + 1], 15, generator=gens([10 + b]), **kw)
        assert torch.equal(one[0], full[b]) and int(p_one[0]) == int(p_full[b])
    split = torch.cat(
        [
            jacobi_generate(model, labels[i : i + 2], 15, generator=gens(range(10 + i, min(12 + i, 15))), **kw)[0]
            for i in range(0, 5, 2)
        ]
    )
    assert torch.equal(split, full)


def test_relaxed_rules_accept_at_least_as_many_tokens_as_exact():
    model = tiny_gpt(seed=3)
    labels = torch.arange(40) % NCLS
    rules = _rules(model)
    mean_passes = {}
    for name, rule in rules.items():
        _, passes = jacobi_generate(model, labels, 15, cfg_scale=2.0, generator=gens(range(40)), window=8, rule=rule)
        mean_passes[name] = passes.float().mean().item()
    for name in ("gsd", "latent", "prior"):
        assert mean_passes[name] <= mean_passes["exact"], mean_passes
    assert mean_passes["exact"] < 15


def test_rules_single_draft_properties():
    """Pointwise: latent >= exact; prior with singleton clusters == exact; GSD with no neighbours == exact."""
    torch.manual_seed(0)
    p = torch.rand(2, 3, V).softmax(-1)
    q = torch.rand(2, 3, V).pow(3).softmax(-1)
    x = torch.randint(V, (2, 3))
    ex = exact_rule(p, q, x)
    assert torch.all(LatentRule(torch.randn(V, 4), k=5)(p, q, x) >= ex)
    torch.testing.assert_close(PriorRule(torch.arange(V))(p, q, x), ex)
    torch.testing.assert_close(GroupRule(torch.randn(V, 4), neighbors=0)(p, q, x), ex)
    # expectation over x ~ q: the partition rule accepts at least 1 - TV(p, q)
    one = PriorRule(torch.arange(V) % 4)
    all_x = torch.arange(V).expand(2, 3, V)
    acc_prior = (q * torch.stack([one(p, q, all_x[..., i]) for i in range(V)], -1)).sum(-1)
    acc_exact = torch.minimum(p, q).sum(-1)
    assert torch.all(acc_prior >= acc_exact - 1e-6)
    # LANTERN's cap: delta = 0 adds nothing
    torch.testing.assert_close(LatentRule(torch.randn(V, 4), k=5, delta=0.0)(p, q, x), ex)


def test_build_rule_checks_sizes_and_coarse_models():
    model = tiny_gpt()
    assert build_rule(DecoderSettings("sjd", "exact"), model) is exact_rule
    assert isinstance(build_rule(DecoderSettings("sjd", "gsd"), model, coarse=True), GroupRule)
    with pytest.raises(CodepriorError, match="codebook has 10 codes but the model's vocabulary is 48"):
        build_rule(DecoderSettings("sjd", "latent"), model, codebook=torch.randn(10, 4))
    with pytest.raises(CodepriorError, match="prior covers 12 codes"):
        build_rule(DecoderSettings("sjd", "prior", prior="p.safetensors"), model, token_to_cluster=torch.arange(12) % 3)
    with pytest.raises(CodepriorError, match="needs a token model"):
        build_rule(DecoderSettings("sjd", "latent"), model, codebook=torch.randn(V, 4), coarse=True)
    with pytest.raises(CodepriorError, match="--accept prior needs --prior"):
        DecoderSettings("sjd", "prior")
    with pytest.raises(CodepriorError, match="--window"):
        DecoderSettings("sjd", window=0)
    assert DecoderSettings.coerce({"decoder": "sjd", "window": 4}).window == 4


def test_coarse_model_over_cluster_ids():
    """A coarse GPT (vocabulary = clusters) decodes with SJD unchanged; window 1 equals its AR codes."""
    coarse = tiny_gpt(seed=4, vocab_size=7)
    labels = torch.tensor([0, 1, 2])
    ar = coarse.generate(labels, 15, cfg_scale=2.0, generator=gens([1, 2, 3]))
    one, _ = jacobi_generate(coarse, labels, 15, cfg_scale=2.0, generator=gens([1, 2, 3]), window=1)
    assert torch.equal(one, ar)
    codes, passes = jacobi_generate(coarse, labels, 15, cfg_scale=2.0, generator=gens([1, 2, 3]), window=8)
    assert codes.max() < 7 and (passes < 15).all()


def test_static_cache_write_and_rollback():
    """Writes at per-row positions; a later write at an earlier position (rollback) overwrites in place."""
    from codeprior.models.gpt import KVCache

    cache = KVCache(2, 1, 6, 2)
    k = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2)
    kk, _ = cache.write(torch.tensor([[0, 1, 2], [2, 3, 4]]), k, k)
    assert kk.shape == (2, 1, 6, 2) and torch.equal(kk[0, 0, :3], k[0, 0]) and torch.equal(kk[1, 0, 2:5], k[1, 0])
    kk, _ = cache.write(torch.tensor([[1], [3]]), -torch.ones(2, 1, 1, 2), -torch.ones(2, 1, 1, 2))
    assert (kk[0, 0, 1] == -1).all() and (kk[1, 0, 3] == -1).all() and torch.equal(kk[0, 0, 2], k[0, 0, 2])


@pytest.mark.slow
def test_compiled_decoding_gives_the_eager_codes():
    """``compile=True`` (torch.compile of the fixed-shape pass; about a minute to compile on 2 CPU cores)."""
    model = tiny_gpt(seed=5, n_layer=1)
    labels = torch.tensor([0, 1, 2])
    eager, pe = jacobi_generate(model, labels, 15, cfg_scale=2.0, generator=gens([1, 2, 3]), window=4)
    comp, pc = jacobi_generate(model, labels, 15, cfg_scale=2.0, generator=gens([1, 2, 3]), window=4, compile=True)
    assert torch.equal(eager, comp) and torch.equal(pe, pc)
