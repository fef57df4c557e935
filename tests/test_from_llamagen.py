"""from_llamagen: a LlamaGen ``Transformer`` object in codeprior's decoders, on shared parameters.

LlamaGen is not imported: ``ModelArgs`` and ``LlamaGenLike`` below are written here with LlamaGen's field names,
defaults, module names and parameter shapes (FoundationVision/LlamaGen @ce98ec4, ``autoregressive/models/gpt.py``),
including what its ``setup_caches()`` / ``generate()`` leave behind (``kv_cache`` buffers, ``causal_mask``).
The reference is a codeprior GPT loaded independently (``load_gpt`` on a copy of the weights) under a config
written out by hand, so a field mapped wrongly (RoPE base, norm eps, GQA, FFN width, grid) changes the codes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from codeprior.decoding import jacobi_generate
from codeprior.errors import CodepriorError
from codeprior.models import GPTConfig, from_llamagen, load_gpt, save_gpt, to_llamagen_args


@dataclass
class ModelArgs:
    """LlamaGen's ModelArgs field names and defaults (written here; the t2i and cache fields included)."""

    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    caption_dim: int = 2048
    class_dropout_prob: float = 0.1
    model_type: str = "c2i"
    vocab_size: int = 16384
    cls_token_num: int = 1
    block_size: int = 256
    max_batch_size: int = 32
    max_seq_len: int = 2048


class _Weight(nn.Module):  # RMSNorm's only parameter
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class _KVCache(nn.Module):  # what LlamaGen's setup_caches() registers in every attention (non-weight buffers)
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("k_cache", torch.randn(shape))
        self.register_buffer("v_cache", torch.randn(shape))


class _Block(nn.Module):
    def __init__(self, a: ModelArgs, hidden: int) -> None:
        super().__init__()
        hd, kv = a.dim // a.n_head, a.n_kv_head or a.n_head
        self.attention = nn.Module()
        self.attention.wqkv = nn.Linear(a.dim, (a.n_head + 2 * kv) * hd, bias=False)
        self.attention.wo = nn.Linear(a.dim, a.dim, bias=False)
        self.attention.kv_cache = None
        self.feed_forward = nn.Module()
        self.feed_forward.w1 = nn.Linear(a.dim, hidden, bias=False)
        self.feed_forward.w3 = nn.Linear(a.dim, hidden, bias=False)
        self.feed_forward.w2 = nn.Linear(hidden, a.dim, bias=False)
        self.attention_norm, self.ffn_norm = _Weight(a.dim), _Weight(a.dim)


class LlamaGenLike(nn.Module):
    """A module shaped like LlamaGen's ``Transformer`` (names, shapes, ``.config``), with random weights."""

    def __init__(self, a: ModelArgs, seed: int = 0, after_generate: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.config = a
        hidden = int(2 * 4 * a.dim / 3)
        if a.ffn_dim_multiplier is not None:
            hidden = int(a.ffn_dim_multiplier * hidden)
        hidden = -(-hidden // a.multiple_of) * a.multiple_of
        self.cls_embedding = nn.Module()
        self.cls_embedding.embedding_table = nn.Embedding(a.num_classes + int(a.class_dropout_prob > 0), a.dim)
        self.tok_embeddings = nn.Embedding(a.vocab_size, a.dim)
        self.tok_dropout = nn.Dropout(a.token_dropout_p)
        self.layers = nn.ModuleList(_Block(a, hidden) for _ in range(a.n_layer))
        self.norm = _Weight(a.dim)
        self.output = nn.Linear(a.dim, a.vocab_size, bias=False)
        for name, p in self.named_parameters():  # norms away from 1 so that norm_eps / weights matter
            nn.init.normal_(p, mean=1.0 if name.endswith("norm.weight") else 0.0, std=0.1 if "norm" in name else 0.3)
        # LlamaGen keeps the RoPE table beside the weights; a wrong table must not be used
        self.register_buffer("freqs_cis", torch.randn(a.cls_token_num + a.block_size, a.dim // a.n_head // 2, 2))
        if after_generate:  # generate() -> setup_caches(): static KV buffers and the causal mask
            S = -(-(a.block_size + 1) // 8) * 8
            for b in self.layers:
                b.attention.kv_cache = _KVCache((4, a.n_head, S, a.dim // a.n_head))
            self.causal_mask = torch.tril(torch.ones(S, S, dtype=torch.bool))


# Non-default RoPE base, norm eps, FFN multiplier and GQA: a field dropped or mis-mapped changes the codes.
ARGS = dict(dim=32, n_layer=2, n_head=4, n_kv_head=2, multiple_of=16, ffn_dim_multiplier=1.3, rope_base=100.0,
            norm_eps=1e-3, vocab_size=24, num_classes=5, block_size=16)  # fmt: skip
# The same model, written out as codeprior's config by hand (independent of from_llamagen's mapping).
REF_CONFIG = GPTConfig(dim=32, n_layer=2, n_head=4, n_kv_head=2, multiple_of=16, ffn_dim_multiplier=1.3,
                       rope_base=100.0, norm_eps=1e-3, vocab_size=24, num_classes=5, block_size=16, grid=(4, 4))  # fmt: skip
LABELS = torch.tensor([0, 3, 4])


def _weights_copy(m: nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, _ in m.named_parameters()}
    return {k: v.clone() for k, v in m.state_dict().items() if k in names}


def test_config_mapping_and_shared_parameters():
    lg = LlamaGenLike(ModelArgs(**ARGS), after_generate=True)
    gpt = from_llamagen(lg)
    assert dataclasses.replace(gpt.config, grid=(4, 4)) == REF_CONFIG and gpt.config.grid_hw == (4, 4)
    assert not gpt.training
    theirs = dict(lg.named_parameters())
    mine = dict(gpt.named_parameters())
    assert mine.keys() == theirs.keys()
    for name, p in mine.items():
        assert p is theirs[name] and p.data_ptr() == theirs[name].data_ptr()
    # in-place edits are seen both ways
    with torch.no_grad():
        lg.output.weight.mul_(2.0)
        gpt.layers[1].feed_forward.w2.weight.add_(0.5)
    assert torch.equal(gpt.output.weight, lg.output.weight)
    assert torch.equal(lg.layers[1].feed_forward.w2.weight, gpt.layers[1].feed_forward.w2.weight)
    # the RoPE table is codeprior's (recomputed), not the stand-in's buffer; no kv_cache buffer was taken over
    assert torch.equal(gpt.freqs_cis, load_gpt(_weights_copy(lg), REF_CONFIG).freqs_cis)
    assert not any("kv_cache" in n for n, _ in gpt.named_buffers())


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
@pytest.mark.parametrize("after_generate", [False, True])
def test_greedy_ar_and_exact_sjd_match_an_independent_load(cfg_scale, after_generate):
    lg = LlamaGenLike(ModelArgs(**ARGS), seed=1, after_generate=after_generate)
    ref = load_gpt(_weights_copy(lg), REF_CONFIG)
    want = ref.generate(LABELS, cfg_scale=cfg_scale, temperature=0.0)
    assert len(set(want.flatten().tolist())) > 3  # informative codes, not a constant
    gpt = from_llamagen(lg)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(gpt.generate(LABELS, cfg_scale=cfg_scale, top_k=1, generator=g), want)
    assert torch.equal(gpt.generate(LABELS, cfg_scale=cfg_scale, temperature=0.0), want)
    sjd, passes = jacobi_generate(gpt, LABELS, cfg_scale=cfg_scale, top_k=1, window=6, generator=g)
    assert torch.equal(sjd, want) and bool((passes <= 16).all())
    # the shared weights are used: an edit through LlamaGen's object changes codeprior's codes accordingly
    with torch.no_grad():
        lg.tok_embeddings.weight.mul_(-1.0)
        ref.tok_embeddings.weight.mul_(-1.0)
    edited = ref.generate(LABELS, cfg_scale=cfg_scale, temperature=0.0)
    assert not torch.equal(edited, want)
    assert torch.equal(gpt.generate(LABELS, cfg_scale=cfg_scale, temperature=0.0), edited)


class _Compiled(nn.Module):  # how torch.compile wraps a module (``._orig_mod``), without importing dynamo
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self._orig_mod = m


def test_dtype_and_compile_wrapper_kept():
    lg = LlamaGenLike(ModelArgs(**ARGS)).to(torch.bfloat16)
    gpt = from_llamagen(_Compiled(lg))  # the wrapper is looked through
    assert gpt.tok_embeddings.weight is lg.tok_embeddings.weight and gpt.output.weight.dtype == torch.bfloat16
    assert gpt.freqs_cis.dtype == torch.float32
    assert gpt.generate(LABELS, temperature=0.0).shape == (3, 16)


def test_save_gpt_loads_into_a_llamagen_shaped_model(tmp_path):
    lg = LlamaGenLike(ModelArgs(**ARGS), seed=2, after_generate=True)
    gpt = from_llamagen(lg)
    path = save_gpt(gpt, tmp_path / "g.pt")
    kw = to_llamagen_args(gpt.config)
    args = ModelArgs(**kw)
    assert {f: getattr(args, f) for f in kw} == {f: getattr(lg.config, f) for f in kw}
    fresh = LlamaGenLike(args, seed=9)
    sd = torch.load(path, weights_only=True)["model"]
    fresh.load_state_dict({**sd, "freqs_cis": fresh.freqs_cis}, strict=True)  # LlamaGen's own keys, nothing else
    for name, p in fresh.named_parameters():
        assert torch.equal(p, dict(lg.named_parameters())[name])
    assert torch.equal(from_llamagen(fresh).generate(LABELS, temperature=0.0), gpt.generate(LABELS, temperature=0.0))


def _extra_param(m: nn.Module) -> nn.Module:
    m.register_parameter("extra", nn.Parameter(torch.zeros(3)))
    return m


def _extra_buffer(m: nn.Module) -> nn.Module:
    m.register_buffer("idx_to_cluster", torch.arange(24))
    return m


def _wrong_heads(m: nn.Module) -> nn.Module:
    m.config = dataclasses.replace(m.config, n_kv_head=4)  # wqkv was built for 2 kv heads
    return m


def _no_field(m: nn.Module) -> nn.Module:
    m.config = type("Args", (), {"dim": 32, "n_layer": 2})()
    return m


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda: LlamaGenLike(ModelArgs(**{**ARGS, "model_type": "t2i"})), "model_type='t2i'"),
        (lambda: LlamaGenLike(ModelArgs(**{**ARGS, "cls_token_num": 2})), "cls_token_num=2"),
        (lambda: LlamaGenLike(ModelArgs(**{**ARGS, "block_size": 12})), "block_size=12 is not a square"),
        (lambda: LlamaGenLike(ModelArgs(**{**ARGS, "class_dropout_prob": 0.0})), "no null-class row"),
        (lambda: LlamaGenLike(ModelArgs(**{**ARGS, "n_head": 3, "n_kv_head": None})), "not divisible by n_head"),
        (lambda: _extra_param(LlamaGenLike(ModelArgs(**ARGS))), "unknown parameters 1 (extra)"),
        (lambda: _wrong_heads(LlamaGenLike(ModelArgs(**ARGS))), "shape mismatches"),
        (lambda: _extra_buffer(LlamaGenLike(ModelArgs(**ARGS))), "buffers codeprior's GPT does not have"),
        (lambda: _no_field(LlamaGenLike(ModelArgs(**ARGS))), "lacks LlamaGen ModelArgs fields"),
        (lambda: {"model": {}}, "expected a LlamaGen Transformer"),
    ],
)
def test_unmappable_models_raise_one_line_errors(make, why):
    with pytest.raises(CodepriorError) as e:
        from_llamagen(make())
    msg = str(e.value)
    assert why in msg and msg.startswith("from_llamagen: ") and "\n" not in msg


def test_to_llamagen_args_refuses_what_llamagen_cannot_build():
    with pytest.raises(CodepriorError, match="not square"):
        to_llamagen_args(GPTConfig(dim=32, n_layer=1, n_head=4, block_size=12, grid=(3, 4)))
    with pytest.raises(CodepriorError, match="class_dropout_prob=0"):
        to_llamagen_args(GPTConfig(dim=32, n_layer=1, n_head=4, class_dropout_prob=0.0))
