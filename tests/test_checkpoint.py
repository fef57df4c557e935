"""Checkpoint interop: LlamaGen key names/shapes, parity of logits with an independent plain implementation of
LlamaGen's equations, strict key matching, and the save/load round trip."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from codeprior.errors import CodepriorError
from codeprior.models import (
    GPT,
    RefineModel,
    get_gpt_config,
    get_refine_config,
    load_gpt,
    load_refine,
    load_vq,
    save_gpt,
    save_refine,
    save_vq,
)

# ------------------------------------------------------------------------------------------------
# LlamaGen state dicts built by hand (names and shapes from LlamaGen's gpt.py, not from our model)
# ------------------------------------------------------------------------------------------------


def llamagen_gpt_shapes(dim, n_layer, n_head, n_kv_head, vocab, num_classes, multiple_of=256):
    head_dim = dim // n_head
    hidden = int(2 * 4 * dim / 3)
    hidden = hidden + (-hidden) % multiple_of
    shapes = {
        "cls_embedding.embedding_table.weight": (num_classes + 1, dim),
        "tok_embeddings.weight": (vocab, dim),
        "norm.weight": (dim,),
        "output.weight": (vocab, dim),
    }
    for i in range(n_layer):
        p = f"layers.{i}."
        shapes[p + "attention.wqkv.weight"] = ((n_head + 2 * n_kv_head) * head_dim, dim)
        shapes[p + "attention.wo.weight"] = (dim, dim)
        shapes[p + "feed_forward.w1.weight"] = (hidden, dim)
        shapes[p + "feed_forward.w3.weight"] = (hidden, dim)
        shapes[p + "feed_forward.w2.weight"] = (dim, hidden)
        shapes[p + "attention_norm.weight"] = (dim,)
        shapes[p + "ffn_norm.weight"] = (dim,)
    return shapes


def random_sd(shapes, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, s in shapes.items():
        if k.endswith("norm.weight"):
            sd[k] = 1.0 + 0.2 * torch.randn(s, generator=g)
        else:
            boost = 4.0 if ("embedding" in k or k == "output.weight") else 1.0
            sd[k] = scale * torch.randn(s, generator=g) / math.sqrt(s[-1]) * boost
    return sd


def test_gpt_b_has_llamagen_keys_and_shapes():
    expected = llamagen_gpt_shapes(768, 12, 12, 12, 16384, 1000)
    with torch.device("meta"):
        model = GPT(get_gpt_config("GPT-B"))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert expected["layers.0.feed_forward.w1.weight"] == (2048, 768)
    n = sum(p.numel() for p in model.parameters())
    assert 110e6 < n < 112.5e6  # LlamaGen: 111M


@pytest.mark.parametrize(
    "name,layers,heads,dim,hidden,params",
    [
        ("GPT-L", 24, 16, 1024, 2816, 343e6),
        ("GPT-XL", 36, 20, 1280, 3584, 775e6),
        ("GPT-XXL", 48, 24, 1536, 4096, 1.4e9),
    ],
)
def test_large_configs_match_llamagen(name, layers, heads, dim, hidden, params):
    cfg = get_gpt_config(name)
    assert (cfg.n_layer, cfg.n_head, cfg.dim, cfg.ffn_dim, cfg.head_dim) == (layers, heads, dim, hidden, 64)
    assert (cfg.vocab_size, cfg.num_classes, cfg.block_size, cfg.grid_hw) == (16384, 1000, 256, (16, 16))
    with torch.device("meta"):
        n = sum(p.numel() for p in GPT(cfg).parameters())
    assert abs(n - params) / params < 0.03


def _meta_sd(shapes):
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def test_load_gpt_b_ddp_and_fsdp_layouts_strict():
    shapes = llamagen_gpt_shapes(768, 12, 12, 12, 16384, 1000)
    ddp = {"model": _meta_sd(shapes), "optimizer": {}, "steps": 5000, "args": {"gpt_model": "GPT-B"}}
    m = load_gpt(ddp, "GPT-B")
    assert m.config.n_layer == 12 and not m.training
    m = load_gpt(_meta_sd(shapes), "GPT-B")  # FSDP consolidated.pth: bare state dict
    assert m.tok_embeddings.weight.shape == (16384, 768)
    # a DDP-wrapped model's keys ("module.") are accepted
    m = load_gpt({"model": {"module." + k: v for k, v in _meta_sd(shapes).items()}}, "GPT-B")
    # ... but GPT-B weights are refused by the GPT-L config, with one error listing the problems
    with pytest.raises(CodepriorError) as e:
        load_gpt(_meta_sd(shapes), "GPT-L")
    msg = str(e.value)
    assert "missing keys: 84 (layers.12." in msg and "shape mismatches" in msg and "\n" not in msg


def test_strict_errors_list_missing_unexpected_and_shapes():
    cfg = get_gpt_config("GPT-tiny", vocab_size=32, num_classes=3, block_size=16)
    sd = random_sd(llamagen_gpt_shapes(128, 4, 4, 4, 32, 3, multiple_of=64))
    sd.pop("norm.weight")
    sd["layers.0.attention.bias"] = torch.zeros(3)
    sd["output.weight"] = torch.zeros(33, 128)
    with pytest.raises(
        CodepriorError,
        match=r"missing keys: 1 \(norm.weight\).*unexpected keys: 1 "
        r"\(layers.0.attention.bias\).*output.weight \(33, 128\) vs model \(32, 128\)",
    ):
        load_gpt(sd, cfg)
    with pytest.raises(CodepriorError, match="no 'config' entry"):
        load_gpt({"model": sd})
    with pytest.raises(CodepriorError, match="unknown model name"):
        load_gpt(sd, "GPT-Q")
    with pytest.raises(CodepriorError, match="no 'ema'"):
        load_gpt({"model": sd}, cfg, use_ema=True)


# ------------------------------------------------------------------------------------------------
# Parity: LlamaGen's published equations, written out plainly (complex-number RoPE, per-head loops)
# ------------------------------------------------------------------------------------------------


def reference_logits(sd, dim, n_layer, n_head, n_kv_head, grid, codes, labels, base=10000.0, eps=1e-5):
    sd = {k: v.double() for k, v in sd.items()}
    B, L = codes.shape
    hd = dim // n_head
    rows, cols = grid
    x = torch.cat(
        [sd["cls_embedding.embedding_table.weight"][labels][:, None], sd["tok_embeddings.weight"][codes[:, :-1]]], dim=1
    )
    T = x.shape[1]
    quarter = hd // 4
    inv_freq = [base ** (-(2.0 * j) / (hd / 2)) for j in range(quarter)]
    rot = torch.zeros(T, hd // 2, dtype=torch.complex128)  # position 0 (class token): zero table
    for t in range(1, T):
        r, c = divmod(t - 1, cols)
        for j in range(quarter):
            rot[t, j] = complex(math.cos(r * inv_freq[j]), math.sin(r * inv_freq[j]))
            rot[t, quarter + j] = complex(math.cos(c * inv_freq[j]), math.sin(c * inv_freq[j]))

    def rms(v, w):
        return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps) * w

    def rope(z, nh):
        zc = torch.view_as_complex(z.reshape(B, T, nh, hd // 2, 2).contiguous())
        return torch.view_as_real(zc * rot[None, :, None, :]).reshape(B, T, nh, hd)

    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    for i in range(n_layer):
        p = f"layers.{i}."
        a = rms(x, sd[p + "attention_norm.weight"])
        qkv = a @ sd[p + "attention.wqkv.weight"].T
        q = rope(qkv[..., :dim].reshape(B, T, n_head, hd), n_head)
        k = rope(qkv[..., dim : dim + n_kv_head * hd].reshape(B, T, n_kv_head, hd), n_kv_head)
        v = qkv[..., dim + n_kv_head * hd :].reshape(B, T, n_kv_head, hd)
        out = torch.zeros(B, T, n_head, hd, dtype=torch.float64)
        for h in range(n_head):
            g = h // (n_head // n_kv_head)
            s = q[:, :, h] @ k[:, :, g].transpose(1, 2) / math.sqrt(hd)
            s = s.masked_fill(causal, float("-inf"))
            out[:, :, h] = torch.softmax(s, -1) @ v[:, :, g]
        x = x + out.reshape(B, T, dim) @ sd[p + "attention.wo.weight"].T
        f = rms(x, sd[p + "ffn_norm.weight"])
        ff = F.silu(f @ sd[p + "feed_forward.w1.weight"].T) * (f @ sd[p + "feed_forward.w3.weight"].T)
        x = x + ff @ sd[p + "feed_forward.w2.weight"].T
    return rms(x, sd["norm.weight"]) @ sd["output.weight"].T


@pytest.mark.parametrize("n_kv_head,grid", [(4, (4, 4)), (2, (3, 5))])
def test_logits_match_plain_llamagen_equations(n_kv_head, grid):
    dim, n_layer, n_head, vocab, ncls = 64, 2, 4, 40, 5
    L = grid[0] * grid[1]
    cfg = get_gpt_config(
        "GPT-tiny",
        dim=dim,
        n_layer=n_layer,
        n_head=n_head,
        n_kv_head=n_kv_head,
        vocab_size=vocab,
        num_classes=ncls,
        grid=grid,
    )
    sd = random_sd(llamagen_gpt_shapes(dim, n_layer, n_head, n_kv_head, vocab, ncls, multiple_of=64), seed=1)
    model = load_gpt({"model": sd, "steps": 1}, cfg)
    codes = torch.randint(0, vocab, (3, L), generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 4, 5])  # 5 = the null class
    got = model(codes, labels)
    ref = reference_logits(sd, dim, n_layer, n_head, n_kv_head, grid, codes, labels)
    assert got.shape == (3, L, vocab) and got.dtype == torch.float32
    assert ref.abs().max() > 1.0  # a non-trivial comparison
    torch.testing.assert_close(got.double(), ref, atol=2e-4, rtol=1e-4)


def test_reference_detects_rope_changes():
    """Guard for the parity test itself: LlamaGen's zero table at the class token matters."""
    dim, grid = 64, (4, 4)
    cfg = get_gpt_config("GPT-tiny", dim=dim, n_layer=1, n_head=4, vocab_size=16, num_classes=2, grid=grid)
    sd = random_sd(llamagen_gpt_shapes(dim, 1, 4, 4, 16, 2, multiple_of=64), seed=3)
    model = load_gpt(sd, cfg)
    model.freqs_cis[0] = torch.tensor([1.0, 0.0])  # identity rotation instead of the zero table
    codes, labels = torch.randint(0, 16, (2, 16)), torch.tensor([0, 1])
    ref = reference_logits(sd, dim, 1, 4, 4, grid, codes, labels)
    assert (model(codes, labels).double() - ref).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------
# Save / load round trips
# ------------------------------------------------------------------------------------------------


def _tiny_gpt(**kw):
    return GPT(get_gpt_config("GPT-tiny", vocab_size=24, num_classes=3, grid=(2, 3), n_layer=2, **kw))


def test_save_load_round_trip_llamagen_layout(tmp_path: Path):
    model = _tiny_gpt()
    torch.nn.init.normal_(model.output.weight)
    ema = _tiny_gpt()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    model(torch.randint(0, 24, (2, 6)), torch.tensor([0, 1])).sum().backward()
    opt.step()
    args = argparse.Namespace(lr=1e-4, out=tmp_path / "run", model="GPT-tiny", fn=print)
    path = save_gpt(
        model, tmp_path / "c" / "0000010.pt", optimizer=opt, steps=10, args=args, ema=ema, prior_sha256="ab"
    )
    ck = torch.load(path, weights_only=True)  # LlamaGen-readable and weights_only-safe
    assert set(ck) == {"model", "optimizer", "steps", "args", "ema", "config", "prior_sha256"}
    assert ck["steps"] == 10 and ck["args"]["out"] == str(tmp_path / "run") and "fn" not in ck["args"]
    assert ck["config"]["kind"] == "gpt" and ck["config"]["grid"] == [2, 3]
    plain = GPT(get_gpt_config("GPT-tiny", vocab_size=24, num_classes=3, grid=(2, 3), n_layer=2))
    plain.load_state_dict(ck["model"], strict=True)  # what LlamaGen's sample script does
    loaded = load_gpt(path)
    codes, labels = torch.randint(0, 24, (2, 6)), torch.tensor([2, 3])
    model.eval()
    assert torch.equal(loaded(codes, labels), model(codes, labels))
    loaded_ema = load_gpt(path, use_ema=True)
    assert torch.equal(loaded_ema.tok_embeddings.weight, ema.tok_embeddings.weight)
    assert not list(tmp_path.glob("c/.*.tmp"))  # atomic: no temp file left behind


def test_loaded_state_dict_is_not_aliased():
    model = _tiny_gpt()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = load_gpt(sd, model.config)
    with torch.no_grad():
        loaded.norm.weight.add_(1.0)
    assert torch.equal(sd["norm.weight"], model.norm.weight)


def test_load_errors_for_bad_files(tmp_path: Path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CodepriorError, match="bad.pt: cannot read checkpoint"):
        load_gpt(bad, "GPT-tiny")
    with pytest.raises(CodepriorError, match="no such file"):
        load_gpt(tmp_path / "missing.pt", "GPT-tiny")
    torch.save({"foo": 1}, tmp_path / "odd.pt")
    with pytest.raises(CodepriorError, match="no 'model' entry"):
        load_gpt(tmp_path / "odd.pt", "GPT-tiny")


def test_refine_round_trip_and_kind_check(tmp_path: Path):
    t2c = torch.arange(24) % 6
    cfg = get_refine_config("Refine-tiny", vocab_size=24, coarse_vocab_size=6, num_classes=3, grid=(2, 3))
    model = RefineModel(cfg, t2c)
    torch.nn.init.normal_(model.output.weight)
    path = save_refine(model, tmp_path / "r.pt", steps=3)
    loaded = load_refine(path)
    assert loaded.config == cfg and torch.equal(loaded.token_to_cluster, t2c)
    coarse, labels = torch.randint(0, 6, (2, 6)), torch.tensor([0, 2])
    model.eval()
    assert torch.equal(loaded(coarse, labels), model(coarse, labels))
    with pytest.raises(CodepriorError, match="holds a 'refine' model"):
        load_gpt(path)
    gpt_path = save_gpt(_tiny_gpt(), tmp_path / "g.pt")
    with pytest.raises(CodepriorError, match="holds a 'gpt' model"):
        load_refine(gpt_path)


def test_vq_round_trip_and_llamagen_file(tmp_path: Path):
    vq_mod = pytest.importorskip("codeprior.models.vq")
    cfg = vq_mod.get_vq_config("VQ-fmnist", ch=16, z_channels=16, norm_groups=4, codebook_size=64)
    model = vq_mod.VQModel(cfg).eval()
    path = save_vq(model, tmp_path / "vq.pt", steps=7, discriminator={"w": torch.zeros(1)})
    loaded = load_vq(path)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.equal(loaded.encode_codes(x), model.encode_codes(x))
    # LlamaGen's released layout: only {"model": sd}, config named by the user; usage buffer may be absent
    sd = {k: v for k, v in model.state_dict().items() if k != "quantize.codebook_used"}
    torch.save({"model": sd}, tmp_path / "released.pt")
    loaded = load_vq(tmp_path / "released.pt", cfg)
    assert torch.equal(loaded.quantize.embedding.weight, model.quantize.embedding.weight)
    sd.pop("quant_conv.bias")
    with pytest.raises(CodepriorError, match=r"missing keys: 1 \(quant_conv.bias\)"):
        load_vq({"model": sd}, cfg)
