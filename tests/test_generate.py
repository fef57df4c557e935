"""Generation: KV-cache tokens equal full-recompute tokens; CFG, temperature, top-k/top-p; per-sample generators;
and the public sampling helpers."""

from __future__ import annotations

import pytest
import torch
from helpers import NCLS, V, tiny_gpt

from codeprior.errors import CodepriorError
from codeprior.models import sample_logits
from codeprior.models.gpt import filter_logits


def recompute_generate(model, labels, seq_len, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """Reference without any cache: call the training forward on the growing sequence at every step."""
    B = labels.shape[0]
    use_cfg = cfg_scale != 1.0
    lab = torch.cat([labels, torch.full_like(labels, NCLS)]) if use_cfg else labels
    seq = torch.zeros(B, 0, dtype=torch.long)
    with torch.no_grad():
        for i in range(seq_len):
            x = torch.cat([seq, torch.zeros(B, 1, dtype=torch.long)], 1)  # dummy target slot
            x = torch.cat([x, x]) if use_cfg else x
            logits = model(x, lab)[:, i]
            if use_cfg:
                c, u = logits.chunk(2)
                logits = u + cfg_scale * (c - u)
            tok = sample_logits(logits, temperature, top_k, top_p, generator)
            seq = torch.cat([seq, tok[:, None]], 1)
    return seq


@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(cfg_scale=2.0),
        dict(cfg_scale=3.0, temperature=0.7, top_k=10),
        dict(temperature=1.3, top_p=0.8),
        dict(cfg_scale=1.5, top_k=20, top_p=0.9),
    ],
)
def test_kv_cache_equals_recompute(kw):
    model = tiny_gpt()
    labels = torch.tensor([0, 3, 4, 1])
    got = model.generate(labels, 15, generator=torch.Generator().manual_seed(7), **kw)
    want = recompute_generate(model, labels, 15, generator=torch.Generator().manual_seed(7), **kw)
    assert got.shape == (4, 15) and got.dtype == torch.long
    assert torch.equal(got, want)
    assert len(set(got.flatten().tolist())) > 5  # genuinely random draws, not a constant sequence


def test_kv_cache_equals_recompute_gqa_and_partial_length():
    model = tiny_gpt(seed=1, n_kv_head=2)
    labels = torch.tensor([2, 2, 0])
    got = model.generate(labels, 9, cfg_scale=2.5, generator=torch.Generator().manual_seed(3))
    want = recompute_generate(model, labels, 9, cfg_scale=2.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, want)


def test_greedy_matches_argmax_of_forward():
    model = tiny_gpt(seed=2)
    labels = torch.tensor([1, 4])
    got = model.generate(labels, 15, temperature=0.0)
    assert torch.equal(model(got, labels).argmax(-1), got)


def test_seeds_and_per_sample_generators():
    model = tiny_gpt(seed=3)
    labels = torch.tensor([0, 1, 2, 3])
    a = model.generate(labels, 15, cfg_scale=2.0, generator=torch.Generator().manual_seed(5))
    b = model.generate(labels, 15, cfg_scale=2.0, generator=torch.Generator().manual_seed(5))
    c = model.generate(labels, 15, cfg_scale=2.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    full = model.generate(labels, 15, cfg_scale=2.0, generator=gens([10, 11, 12, 13]))
    first = model.generate(labels[:1], 15, cfg_scale=2.0, generator=gens([10]))
    rest = model.generate(labels[1:], 15, cfg_scale=2.0, generator=gens([11, 12, 13]))
    assert torch.equal(full, torch.cat([first, rest]))  # sample i depends only on its own generator
    with pytest.raises(CodepriorError, match="3 generators for a batch of 4"):
        model.generate(labels, 4, generator=gens([1, 2, 3]))


def test_cfg_schedule_and_logits_processor():
    model = tiny_gpt(seed=4)
    labels = torch.tensor([1, 2, 3])
    g = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    plain = model.generate(labels, 15, generator=g())
    # a schedule of scale 1 everywhere is guidance-free sampling (through the doubled batch)
    assert torch.equal(model.generate(labels, 15, cfg_schedule=lambda i, n: 1.0, generator=g()), plain)
    const = model.generate(labels, 15, cfg_scale=3.0, generator=g())
    assert torch.equal(model.generate(labels, 15, cfg_scale=3.0, cfg_schedule="constant", generator=g()), const)
    lin = model.generate(labels, 15, cfg_scale=3.0, cfg_schedule="linear", generator=g())
    assert lin.shape == (3, 15)
    seen = []

    def only_even(logits, i, prefix):
        seen.append((i, tuple(prefix.shape)))
        mask = torch.ones_like(logits, dtype=torch.bool)
        mask[:, ::2] = False
        return logits.masked_fill(mask, float("-inf"))

    out = model.generate(labels, 15, cfg_scale=2.0, logits_processor=only_even, generator=g())
    assert (out % 2 == 0).all() and seen[3] == (3, (3, 3))
    with pytest.raises(CodepriorError, match="cfg_schedule"):
        model.generate(labels, 3, cfg_scale=2.0, cfg_schedule="cosine")


def test_generate_restores_mode_and_checks_inputs():
    model = tiny_gpt()
    model.train()
    model.generate(torch.tensor([0]), 3)
    assert model.training
    with pytest.raises(CodepriorError, match="seq_len"):
        model.generate(torch.tensor([0]), 16)
    with pytest.raises(CodepriorError, match="labels must be in"):
        model.generate(torch.tensor([6]), 3)


def test_coarse_vocabulary_model_uses_same_generate():
    k = 7  # a cluster-vocabulary (coarse) model is just a GPT with vocab_size = k
    model = tiny_gpt(vocab_size=k)
    out = model.generate(torch.tensor([0, 1]), 15, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert out.max() < k


# -- sampling helpers ---------------------------------------------------------------------------------


def test_filter_logits_matches_definition():
    torch.manual_seed(0)
    logits = torch.randn(6, 30)
    k_only = filter_logits(logits, top_k=5)
    for row, out in zip(logits, k_only):
        keep = set(row.argsort(descending=True)[:5].tolist())
        assert {i for i in range(30) if out[i] > float("-inf")} == keep
    p_only = filter_logits(logits, top_p=0.6)
    for row, out in zip(logits, p_only):
        probs = row.softmax(-1)
        order = probs.argsort(descending=True)
        mass, keep = 0.0, set()
        for i in order.tolist():  # smallest prefix whose mass reaches top_p
            keep.add(i)
            mass += probs[i].item()
            if mass > 0.6:
                break
        assert {i for i in range(30) if out[i] > float("-inf")} == keep
    assert torch.equal(filter_logits(logits, top_k=0, top_p=1.0), logits)


def test_sample_logits_distribution_and_filters():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    logits = probs.clamp_min(1e-30).log().expand(40000, 5)
    draws = sample_logits(logits, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)
    assert set(sample_logits(logits, top_k=2, generator=torch.Generator().manual_seed(1)).tolist()) == {2, 3}
    assert set(sample_logits(logits, top_p=0.5).tolist()) == {2, 3}
    assert (sample_logits(logits[:3], temperature=0.0) == 3).all()
    # temperature sharpens: at T=0.25 the top code dominates
    hot = sample_logits(logits, temperature=0.25, generator=torch.Generator().manual_seed(2))
    assert (hot == 3).float().mean() > 0.7
    with pytest.raises(CodepriorError, match="temperature"):
        sample_logits(logits, temperature=-1.0)


def test_sample_logits_per_row_generators_extra_axes():
    logits = torch.randn(3, 4, 10)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    a = sample_logits(logits, generator=gens)
    gens = [torch.Generator().manual_seed(s) for s in (2,)]
    b = sample_logits(logits[1:2], generator=gens)
    assert a.shape == (3, 4) and torch.equal(a[1:2], b)


def test_bf16_autocast_and_bf16_weights():
    model = tiny_gpt(seed=5)
    labels = torch.tensor([0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.generate(labels, 15, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
        logits = model(out, labels)
    assert out.shape == (2, 15) and out.max() < V and logits.dtype == torch.float32
    torch.testing.assert_close(logits, model(out, labels), atol=0.1, rtol=0.05)
    half = tiny_gpt(seed=5).to(torch.bfloat16)
    out = half.generate(labels, 15, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 15) and out.max() < V
