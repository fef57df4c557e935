"""VQ tokenizer: LlamaGen state-dict layout, and encode/quantise/decode against plain independent computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from codeprior.errors import CodepriorError
from codeprior.models.vq import VQ_CONFIGS, VQConfig, VQModel, get_vq_config

# ---------------------------------------------------------------------------------------------------------------
# LlamaGen's state-dict layout, enumerated from its published structure (independent of the model code)
# ---------------------------------------------------------------------------------------------------------------


def _norm(p, c):
    return {f"{p}.weight": (c,), f"{p}.bias": (c,)}


def _conv(p, cout, cin, k):
    return {f"{p}.weight": (cout, cin, k, k), f"{p}.bias": (cout,)}


def _res(p, cin, cout):
    d = {**_norm(f"{p}.norm1", cin), **_conv(f"{p}.conv1", cout, cin, 3)}
    d.update({**_norm(f"{p}.norm2", cout), **_conv(f"{p}.conv2", cout, cout, 3)})
    if cin != cout:
        d.update(_conv(f"{p}.nin_shortcut", cout, cin, 1))
    return d


def _attn(p, c):
    d = _norm(f"{p}.norm", c)
    for n in ("q", "k", "v", "proj_out"):
        d.update(_conv(f"{p}.{n}", c, c, 1))
    return d


def llamagen_vq_shapes(ch=128, ch_mult=(1, 1, 2, 2, 4), z=256, nrb=2, cin=3, n_e=16384, d_e=8) -> dict:
    L = len(ch_mult)
    s = _conv("encoder.conv_in", ch, cin, 3)
    c = ch
    for i, m in enumerate(ch_mult):
        for j in range(nrb):
            s.update(_res(f"encoder.conv_blocks.{i}.res.{j}", c, ch * m))
            c = ch * m
            if i == L - 1:
                s.update(_attn(f"encoder.conv_blocks.{i}.attn.{j}", c))
        if i != L - 1:
            s.update(_conv(f"encoder.conv_blocks.{i}.downsample.conv", c, c, 3))
    s.update({**_res("encoder.mid.0", c, c), **_attn("encoder.mid.1", c), **_res("encoder.mid.2", c, c)})
    s.update({**_norm("encoder.norm_out", c), **_conv("encoder.conv_out", z, c, 3)})
    s.update({**_conv("quant_conv", d_e, z, 1), **_conv("post_quant_conv", z, d_e, 1)})
    s.update({"quantize.embedding.weight": (n_e, d_e), "quantize.codebook_used": (65536,)})
    c = ch * ch_mult[-1]
    s.update(_conv("decoder.conv_in", c, z, 3))
    s.update({**_res("decoder.mid.0", c, c), **_attn("decoder.mid.1", c), **_res("decoder.mid.2", c, c)})
    for i, level in enumerate(reversed(range(L))):
        for j in range(nrb + 1):
            s.update(_res(f"decoder.conv_blocks.{i}.res.{j}", c, ch * ch_mult[level]))
            c = ch * ch_mult[level]
            if level == L - 1:
                s.update(_attn(f"decoder.conv_blocks.{i}.attn.{j}", c))
        if level != 0:
            s.update(_conv(f"decoder.conv_blocks.{i}.upsample.conv", c, c, 3))
    s.update({**_norm("decoder.norm_out", c), **_conv("decoder.conv_out", cin, c, 3)})
    return s


@pytest.mark.parametrize("name,ch_mult", [("VQ-16", (1, 1, 2, 2, 4)), ("VQ-8", (1, 2, 2, 4))])
def test_llamagen_key_set_and_shapes(name, ch_mult):
    with torch.device("meta"):
        model = VQModel(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == llamagen_vq_shapes(ch_mult=ch_mult)
    # a few anchors straight from the released vq_ds16_c2i.pt
    assert got["quantize.embedding.weight"] == (16384, 8)
    assert got["quant_conv.weight"] == (8, 256, 1, 1)
    assert got["post_quant_conv.weight"] == (256, 8, 1, 1)


def test_vq16_strict_load_of_llamagen_state_dict():
    shapes = llamagen_vq_shapes()
    g = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    model = VQModel("VQ-16")
    model.load_state_dict(sd, strict=True)
    assert torch.equal(model.quantize.embedding.weight, sd["quantize.embedding.weight"])
    assert torch.equal(
        model.decoder.conv_blocks[0].attn[2].proj_out.weight, sd["decoder.conv_blocks.0.attn.2.proj_out.weight"]
    )
    bad = dict(sd)
    bad["encoder.conv_blocks.0.attn.0.q.weight"] = torch.zeros(128, 128, 1, 1)
    with pytest.raises(RuntimeError, match="Unexpected"):
        model.load_state_dict(bad, strict=True)


def test_configs_match_llamagen():
    for name, mult in (("VQ-16", [1, 1, 2, 2, 4]), ("VQ-8", [1, 2, 2, 4])):
        c = VQ_CONFIGS[name]
        assert (c.codebook_size, c.codebook_embed_dim, c.codebook_l2_norm, c.commit_loss_beta) == (16384, 8, True, 0.25)
        assert (c.ch, c.ch_mult, c.z_channels, c.num_res_blocks, c.in_channels, c.norm_groups) == (
            128,
            mult,
            256,
            2,
            3,
            32,
        )
        assert c.entropy_loss_ratio == 0.0
    assert VQ_CONFIGS["VQ-16"].grid_size(256) == 16 and VQ_CONFIGS["VQ-8"].grid_size(256) == 32
    f = VQ_CONFIGS["VQ-fmnist"]
    assert (f.codebook_size, f.codebook_embed_dim, f.in_channels, f.grid_size(28)) == (4096, 8, 1, 7)


def test_get_vq_config_overrides_aliases_and_errors():
    c = get_vq_config("VQ-16", codebook_size=1024, encoder_ch_mult=[1, 2], dropout_p=0.1)
    assert (c.codebook_size, c.ch_mult, c.dropout) == (1024, [1, 2], 0.1)
    assert VQ_CONFIGS["VQ-16"].codebook_size == 16384  # registry untouched
    assert get_vq_config(c.to_dict()) == c
    with pytest.raises(CodepriorError, match="unknown VQ config"):
        get_vq_config("VQ-99")
    with pytest.raises(CodepriorError, match="unknown field"):
        get_vq_config("VQ-16", nonsense=1)
    with pytest.raises(CodepriorError, match="divisible"):
        get_vq_config("VQ-16", ch=48)


# ---------------------------------------------------------------------------------------------------------------
# Plain functional reference (LlamaGen's equations, written from the state dict alone)
# ---------------------------------------------------------------------------------------------------------------

TINY = dict(
    codebook_size=64,
    codebook_embed_dim=4,
    ch=8,
    ch_mult=[1, 2],
    z_channels=8,
    num_res_blocks=1,
    in_channels=1,
    norm_groups=4,
    image_size=8,
)


def _gn(x, sd, p, g):
    return F.group_norm(x, g, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6)


def _cv(x, sd, p, stride=1, pad=None):
    w = sd[f"{p}.weight"]
    pad = w.shape[-1] // 2 if pad is None else pad
    return F.conv2d(x, w, sd[f"{p}.bias"], stride=stride, padding=pad)


def _sw(x):
    return x * torch.sigmoid(x)


def _res_ref(x, sd, p, g):
    h = _cv(_sw(_gn(x, sd, f"{p}.norm1", g)), sd, f"{p}.conv1")
    h = _cv(_sw(_gn(h, sd, f"{p}.norm2", g)), sd, f"{p}.conv2")
    if f"{p}.nin_shortcut.weight" in sd:
        x = _cv(x, sd, f"{p}.nin_shortcut")
    return x + h


def _attn_ref(x, sd, p, g):
    b, c, hh, ww = x.shape
    h = _gn(x, sd, f"{p}.norm", g)
    q = _cv(h, sd, f"{p}.q").reshape(b, c, -1).permute(0, 2, 1)
    k = _cv(h, sd, f"{p}.k").reshape(b, c, -1)
    v = _cv(h, sd, f"{p}.v").reshape(b, c, -1)
    w = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)
    out = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
    return x + _cv(out, sd, f"{p}.proj_out")


def encoder_ref(x, sd, cfg):
    g, L, n = cfg.norm_groups, len(cfg.ch_mult), cfg.num_res_blocks
    h = _cv(x, sd, "encoder.conv_in")
    for i in range(L):
        for j in range(n):
            h = _res_ref(h, sd, f"encoder.conv_blocks.{i}.res.{j}", g)
            if i == L - 1:
                h = _attn_ref(h, sd, f"encoder.conv_blocks.{i}.attn.{j}", g)
        if i != L - 1:
            h = _cv(F.pad(h, (0, 1, 0, 1)), sd, f"encoder.conv_blocks.{i}.downsample.conv", stride=2, pad=0)
    h = _res_ref(h, sd, "encoder.mid.0", g)
    h = _attn_ref(h, sd, "encoder.mid.1", g)
    h = _res_ref(h, sd, "encoder.mid.2", g)
    h = _cv(_sw(_gn(h, sd, "encoder.norm_out", g)), sd, "encoder.conv_out")
    return _cv(h, sd, "quant_conv")


def decoder_ref(zq, sd, cfg):
    g, L, n = cfg.norm_groups, len(cfg.ch_mult), cfg.num_res_blocks
    h = _cv(_cv(zq, sd, "post_quant_conv"), sd, "decoder.conv_in")
    h = _res_ref(h, sd, "decoder.mid.0", g)
    h = _attn_ref(h, sd, "decoder.mid.1", g)
    h = _res_ref(h, sd, "decoder.mid.2", g)
    for i in range(L):
        for j in range(n + 1):
            h = _res_ref(h, sd, f"decoder.conv_blocks.{i}.res.{j}", g)
            if i == 0:
                h = _attn_ref(h, sd, f"decoder.conv_blocks.{i}.attn.{j}", g)
        if i != L - 1:
            h = _cv(F.interpolate(h, scale_factor=2, mode="nearest"), sd, f"decoder.conv_blocks.{i}.upsample.conv")
    return _cv(_sw(_gn(h, sd, "decoder.norm_out", g)), sd, "decoder.conv_out")


def _randomised_tiny(**over):
    cfg = get_vq_config(TINY, **over)
    model = VQModel(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-trivial norms/biases so that every term matters
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):  # GroupNorm scales
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name != "quantize.embedding.weight":
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g))  # rows not unit-norm, as in released files
    return model.eval()


def test_tiny_keys_follow_llamagen_pattern():
    model = _randomised_tiny()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == llamagen_vq_shapes(ch=8, ch_mult=(1, 2), z=8, nrb=1, cin=1, n_e=64, d_e=4)


@pytest.mark.parametrize("l2", [True, False])
def test_encode_quantise_decode_match_plain_reference(l2):
    model = _randomised_tiny(codebook_l2_norm=l2)
    cfg, sd = model.config, model.state_dict()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1

    z = encoder_ref(x, sd, cfg)  # [B, D, 4, 4]
    torch.testing.assert_close(model.encode_features(x), z, rtol=1e-5, atol=1e-5)

    zf = z.permute(0, 2, 3, 1).reshape(-1, cfg.codebook_embed_dim)
    emb = sd["quantize.embedding.weight"]
    if l2:
        zf = zf / zf.norm(dim=1, keepdim=True)
        emb = emb / emb.norm(dim=1, keepdim=True)
    dist = ((zf[:, None, :] - emb[None, :, :]) ** 2).sum(-1)  # brute force, no expansion
    codes_ref = dist.argmin(1).view(3, 4, 4)
    codes = model.encode_codes(x)
    assert codes.dtype == torch.long and codes.shape == (3, 4, 4)
    assert torch.equal(codes, codes_ref)

    zq = emb[codes_ref].permute(0, 3, 1, 2)
    img_ref = decoder_ref(zq, sd, cfg)
    torch.testing.assert_close(model.decode_codes(codes), img_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.decode_code(codes.flatten(), shape=(3, 4, 4, 4)), img_ref, rtol=1e-5, atol=1e-5)

    recon, losses = model(x)  # forward value = decode of the chosen codes
    torch.testing.assert_close(recon, img_ref, rtol=1e-5, atol=1e-5)
    sq = ((emb[codes_ref.flatten()] - zf) ** 2).mean()
    torch.testing.assert_close(losses["codebook"], sq)
    torch.testing.assert_close(losses["commit"], 0.25 * sq)
    torch.testing.assert_close(losses["recon"], ((img_ref - x) ** 2).mean(), rtol=1e-5, atol=1e-6)
    assert float(losses["entropy"]) == 0.0


@pytest.mark.parametrize("l2", [True, False])
def test_straight_through_gradient(l2):
    model = _randomised_tiny(codebook_l2_norm=l2)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    w = torch.randn(2, 4, 3, 3)
    zq, _, _ = model.quantize(z)
    (gz,) = torch.autograd.grad((zq * w).sum(), z)
    # STE: d(z_q)/dz is the identity on the (normalised) features, so the gradient is w pulled back through
    # the normalisation only.
    z2 = z.detach().clone().requires_grad_(True)
    zn = F.normalize(z2, dim=1) if l2 else z2
    (gref,) = torch.autograd.grad((zn * w).sum(), z2)
    torch.testing.assert_close(gz, gref)
    # the codebook gets gradient only from the codebook loss, not through z_q's straight-through path
    assert model.quantize.embedding.weight.grad is None


def test_codebook_loss_moves_codebook_and_commit_moves_encoder():
    model = _randomised_tiny()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    _, losses, _ = model.quantize(z)
    (g_e,) = torch.autograd.grad(losses["commit"], model.quantize.embedding.weight, allow_unused=True)
    assert g_e is None or torch.count_nonzero(g_e) == 0
    (g_z,) = torch.autograd.grad(losses["codebook"], z, allow_unused=True)
    assert g_z is None or torch.count_nonzero(g_z) == 0


def test_entropy_loss_matches_formula():
    model = _randomised_tiny(entropy_loss_ratio=0.5, entropy_temperature=0.1)
    z = torch.randn(2, 4, 3, 3)
    _, losses, _ = model.quantize(z)
    zf = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 4), dim=1)
    e = F.normalize(model.quantize.embedding.weight, dim=1)
    a = -((zf[:, None] - e[None]) ** 2).sum(-1) / 0.1
    p = a.softmax(-1)
    avg = p.mean(0)
    ref = -(p * (a + 1e-5).log_softmax(-1)).sum(-1).mean() + (avg * (avg + 1e-5).log()).sum()
    torch.testing.assert_close(losses["entropy"], 0.5 * ref, rtol=1e-4, atol=1e-5)


def test_usage_window_and_codebook_usage():
    model = _randomised_tiny().train()
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    _, _, idx = model.quantize(model.encode_features(x))
    buf = model.quantize.codebook_used
    assert torch.equal(buf[-idx.numel() :], idx.flatten().float())
    assert torch.count_nonzero(buf[: -idx.numel()]) == 0
    codes = torch.tensor([[0, 1], [1, 63]])
    assert model.codebook_usage(codes) == pytest.approx(3 / 64)
    model.eval()
    before = buf.clone()
    model(x)
    assert torch.equal(model.quantize.codebook_used, before)  # only updated in training


def test_fmnist_shapes_and_input_errors():
    model = VQModel("VQ-fmnist").eval()
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    codes = model.encode_codes(x)
    assert codes.shape == (2, 7, 7) and int(codes.max()) < 4096
    assert model.decode_codes(codes).shape == (2, 1, 28, 28)
    with pytest.raises(CodepriorError, match="expected images"):
        model.encode_codes(torch.rand(2, 3, 28, 28))
    with pytest.raises(CodepriorError, match="codes must lie"):
        model.decode_codes(torch.full((1, 7, 7), 4096))
    with pytest.raises(CodepriorError, match="integer codes"):
        model.decode_codes(torch.zeros(1, 7, 7))


def test_vqconfig_is_plain_and_roundtrips():
    c = VQ_CONFIGS["VQ-fmnist"]
    assert isinstance(c, VQConfig)
    d = c.to_dict()
    assert all(isinstance(v, (int, float, bool, list, type(None))) for v in d.values())
    assert VQModel(d).config == c
