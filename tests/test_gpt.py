"""GPT model: configs, initialisation, training-forward semantics (causality, class/token dropout), RoPE table."""

from __future__ import annotations

import math

import pytest
import torch

from codeprior.errors import CodepriorError
from codeprior.models import GPT, GPT_CONFIGS, get_gpt_config
from codeprior.models.gpt import ffn_hidden_dim, precompute_rope_2d


def tiny(**kw) -> GPT:
    base = dict(vocab_size=32, num_classes=4, grid=(3, 4), n_layer=2)
    base.update(kw)
    return GPT(get_gpt_config("GPT-tiny", **base))


def test_registry_and_overrides():
    assert set(GPT_CONFIGS) >= {"GPT-tiny", "GPT-S", "GPT-B", "GPT-L", "GPT-XL", "GPT-XXL"}
    b = get_gpt_config("GPT-B")
    assert (b.dim, b.n_layer, b.n_head, b.vocab_size, b.num_classes, b.block_size) == (768, 12, 12, 16384, 1000, 256)
    assert (b.token_dropout_p, b.resid_dropout_p, b.ffn_dropout_p, b.attn_dropout_p, b.class_dropout_prob) == (
        0.1,
        0.1,
        0.1,
        0.0,
        0.1,
    )
    assert b.norm_eps == 1e-5 and b.rope_base == 10000
    fm = get_gpt_config("GPT-tiny", vocab_size=4096, num_classes=10, grid=(7, 7))
    assert fm.block_size == 49 and fm.grid_hw == (7, 7)
    assert get_gpt_config("GPT-tiny", block_size=49).grid_hw == (7, 7)  # square grid inferred
    assert get_gpt_config("GPT-S", grid=(4, 8)).block_size == 32  # non-square
    assert GPT_CONFIGS["GPT-B"].vocab_size == 16384  # overrides never mutate the registry
    assert get_gpt_config(fm.to_dict()) == fm


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(block_size=48), "not a square"),
        (dict(grid=(3, 5), block_size=16), "15 cells"),
        (dict(dim=120, n_head=4), "multiple of 4"),
        (dict(n_kv_head=3), "not a multiple of n_kv_head"),
        (dict(token_dropout_p=1.5), "token_dropout_p"),
        (dict(cls_token_num=2), "cls_token_num=1"),
        (dict(bogus=1), "unknown GPTConfig fields"),
    ],
)
def test_bad_configs(kw, msg):
    with pytest.raises(CodepriorError, match=msg):
        get_gpt_config("GPT-tiny", **kw)
    with pytest.raises(CodepriorError, match="unknown model name"):
        get_gpt_config("GPT-Z")


def test_ffn_hidden_size_rule():
    assert [ffn_hidden_dim(d, 256, None) for d in (768, 1024, 1280, 1536)] == [2048, 2816, 3584, 4096]
    assert ffn_hidden_dim(768, 256, 1.5) == 3072  # int(1.5 * 2048) rounded to 256


def test_initialisation():
    torch.manual_seed(0)
    m = GPT(get_gpt_config("GPT-S", vocab_size=512, num_classes=10, block_size=64))
    assert torch.count_nonzero(m.output.weight) == 0  # zero-initialised head
    for w in (
        m.tok_embeddings.weight,
        m.cls_embedding.embedding_table.weight,
        m.layers[0].attention.wqkv.weight,
        m.layers[3].feed_forward.w2.weight,
    ):
        assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    assert torch.equal(m.norm.weight, torch.ones(256))
    assert m.cls_embedding.embedding_table.weight.shape == (11, 256)  # null class row
    assert len(m.get_fsdp_wrap_module_list()) == 8
    out = m(torch.randint(0, 512, (2, 64)), torch.tensor([0, 9]))
    assert out.shape == (2, 64, 512) and torch.count_nonzero(out) == 0


def test_rope_table_layout():
    t = precompute_rope_2d((2, 3), head_dim=16, base=10000.0, cls_token_num=1)
    assert t.shape == (7, 8, 2)
    assert torch.count_nonzero(t[0]) == 0  # class token: zero table (q, k zeroed)
    # code at raster index 4 = (row 1, col 1); pairs 0..3 follow the row, pairs 4..7 the column
    freqs = [10000 ** (-4 * j / 16) for j in range(4)]
    r, c = divmod(5 - 1, 3)
    want = [r * f for f in freqs] + [c * f for f in freqs]
    torch.testing.assert_close(t[5, :, 0], torch.tensor([math.cos(a) for a in want]))
    torch.testing.assert_close(t[5, :, 1], torch.tensor([math.sin(a) for a in want]))
    assert "freqs_cis" not in tiny().state_dict()  # not a checkpoint key (LlamaGen)


def _randomise_head(m: GPT) -> GPT:
    torch.nn.init.normal_(m.output.weight, std=0.5)
    return m


def test_forward_is_causal_and_class_conditioned():
    m = _randomise_head(tiny()).eval()
    codes = torch.randint(0, 32, (2, 12))
    labels = torch.tensor([1, 2])
    base = m(codes, labels)
    changed = codes.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 32
    out = m(changed, labels)
    # position i is predicted from class + codes[:i]: code 5 influences positions 6.. only
    assert torch.equal(out[:, :6], base[:, :6])
    assert (out[:, 6:] - base[:, 6:]).abs().amax() > 1e-4
    # the last code is a target only: it never enters the input
    last = codes.clone()
    last[:, -1] = (last[:, -1] + 1) % 32
    assert torch.equal(m(last, labels), base)
    other = m(codes, torch.tensor([3, 2]))
    assert (other[0] - base[0]).abs().amax() > 1e-4 and torch.equal(other[1], base[1])


def test_class_dropout_only_in_train_mode():
    m = _randomise_head(tiny(class_dropout_prob=0.999999, token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0))
    codes, labels = torch.randint(0, 32, (3, 12)), torch.tensor([0, 1, 2])
    m.eval()
    cond = m(codes, labels)
    null = m(codes, torch.full((3,), 4))
    m.train()
    dropped = m(codes, labels)  # every label replaced by the null class
    torch.testing.assert_close(dropped, null)
    assert (cond - null).abs().amax() > 1e-4


def test_token_dropout_is_elementwise_and_train_only():
    m = _randomise_head(tiny(token_dropout_p=0.5, resid_dropout_p=0.0, ffn_dropout_p=0.0, class_dropout_prob=0.0))
    codes, labels = torch.randint(0, 32, (2, 12)), torch.tensor([0, 1])
    seen = {}
    m.tok_dropout.register_forward_hook(lambda mod, inp, out: seen.update(inp=inp[0], out=out))
    m.train()
    m(codes, labels)
    x, y = seen["inp"], seen["out"]
    zero = y == 0
    assert 0.3 < zero.float().mean() < 0.7  # element-wise (not whole tokens) ...
    assert zero.any(-1).float().mean() > 0.99 and not zero.all(-1).any()
    torch.testing.assert_close(y[~zero], 2 * x[~zero])  # ... with inverted-dropout scaling
    m.eval()
    a, b = m(codes, labels), m(codes, labels)
    assert torch.equal(a, b)


def test_bad_inputs():
    m = tiny()
    with pytest.raises(CodepriorError, match="block_size"):
        m(torch.zeros(1, 13, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    with pytest.raises(CodepriorError, match="labels must be"):
        m(torch.zeros(2, 12, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(CodepriorError, match="integer"):
        m(torch.zeros(2, 12), torch.zeros(2, dtype=torch.long))


def test_gradients_flow_and_drop_path():
    m = tiny(drop_path_rate=0.2)
    assert m.layers[0].drop_path.__class__.__name__ == "Identity"  # linspace(0, rate): first block has none
    assert m.layers[1].drop_path.p == pytest.approx(0.2)
    m.train()
    codes, labels = torch.randint(0, 32, (4, 12)), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(m(codes, labels).flatten(0, 1), codes.flatten())
    loss.backward()
    assert loss.item() == pytest.approx(math.log(32), abs=1e-4)  # zero head: uniform prediction
    assert m.output.weight.grad.abs().sum() > 0
