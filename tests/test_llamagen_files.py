"""Checkpoints as LlamaGen's, IAR's and DCPE's training scripts write them (issue 23), built here without their code.

``train_c2i.py`` saves ``{"model", "optimizer", "steps", "args": argparse.Namespace}`` (+ ``ema``), ``vq_train.py``
adds ``discriminator`` / ``optimizer_disc``; a model that has run LlamaGen's ``generate()`` carries KV-cache buffers,
and DDP / ``torch.compile`` wrappers add ``module.`` / ``_orig_mod.`` prefixes. These files load everywhere with no
extra flags, the code grid comes from their ``args``, and a flag that contradicts them is refused.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from codeprior.cli import main
from codeprior.errors import CodepriorError
from codeprior.models import load_gpt, load_vq, save_vq
from codeprior.models.gpt import GPT, get_gpt_config
from codeprior.models.gpt_config import GPT_CONFIGS, gpt_config_from_llamagen_args
from codeprior.models.vq import VQModel, get_vq_config
from codeprior.utils.io import load_checkpoint

V, C = 64, 3


def _gpt_args(**kw: Any) -> argparse.Namespace:
    """The Namespace train_c2i.py saves (its argparse fields; values for a tiny run)."""
    a = dict(
        code_path="/data/imagenet_code_c2i", cloud_save_path="/cloud", no_local_save=False, gpt_model="GPT-tiny",
        gpt_ckpt=None, gpt_type="c2i", vocab_size=V, ema=False, cls_token_num=1, dropout_p=0.1, token_dropout_p=0.1,
        drop_path_rate=0.0, no_compile=False, results_dir="results", dataset="imagenet_code", image_size=48,
        downsample_size=16, num_classes=C, epochs=300, lr=1e-4, weight_decay=0.05, beta1=0.9, beta2=0.95,
        max_grad_norm=1.0, global_batch_size=256, global_seed=0, num_workers=24, log_every=100, ckpt_every=5000,
        gradient_accumulation_steps=1, mixed_precision="bf16", rank=0, world_size=8, gpu=0, dist_url="env://",
    )  # fmt: skip
    a.update(kw)
    return argparse.Namespace(**a)


def _gpt(grid: tuple[int, int], seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    m = GPT(get_gpt_config("GPT-tiny", vocab_size=V, num_classes=C, grid=grid))
    torch.nn.init.normal_(m.output.weight, std=0.3)  # LlamaGen zero-initialises the head: uniform draws otherwise
    return m.eval()


def _optimizer_state(model: torch.nn.Module) -> dict[str, Any]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    sum(p.float().pow(2).sum() for p in model.parameters()).backward()
    opt.step()
    opt.zero_grad()
    return opt.state_dict()


def _with_generate_buffers(sd: dict[str, torch.Tensor], model: GPT, batch: int = 2) -> dict[str, torch.Tensor]:
    """What LlamaGen's setup_caches() leaves in the state dict (k_cache / v_cache per layer), plus the RoPE table
    and causal mask that forks register as buffers."""
    c = model.config
    seq = -(-(c.block_size + c.cls_token_num) // 8) * 8
    out = dict(sd)
    for i in range(c.n_layer):
        for name in ("k_cache", "v_cache"):
            out[f"layers.{i}.attention.kv_cache.{name}"] = torch.zeros(batch, c.n_head, seq, c.head_dim)
    out["freqs_cis"] = torch.zeros(seq, c.head_dim // 2, 2)
    out["causal_mask"] = torch.tril(torch.ones(batch, seq, seq, dtype=torch.bool))
    return out


def write_train_c2i(path: Path, model: GPT, args: argparse.Namespace, prefix: str = "", ema: bool = False) -> Path:
    """A GPT checkpoint laid out as train_c2i.py writes it."""
    sd = _with_generate_buffers({prefix + k: v for k, v in model.state_dict().items()}, model)
    sd = {(k if k.startswith(prefix) else prefix + k): v for k, v in sd.items()}
    ckpt: dict[str, Any] = {"model": sd, "optimizer": _optimizer_state(model), "steps": 5000, "args": args}
    if ema:
        ckpt["ema"] = dict(sd)
    torch.save(ckpt, path)
    return path


def _vq(seed: int = 0, **kw: Any) -> VQModel:
    torch.manual_seed(seed)
    return VQModel(get_vq_config("VQ-fmnist", codebook_size=V, codebook_embed_dim=4, **kw)).eval()


def write_vq_train(path: Path, vq: VQModel, prefix: str = "module.") -> Path:
    """A VQ checkpoint laid out as vq_train.py writes it (Namespace args, discriminator and its optimizer)."""
    args = argparse.Namespace(
        data_path="/data/imagenet/train", data_face_path=None, cloud_save_path="/cloud", no_local_save=False,
        vq_model="VQ-fmnist", vq_ckpt=None, finetune=False, ema=True, codebook_size=V, codebook_embed_dim=4,
        codebook_l2_norm=True, codebook_weight=1.0, entropy_loss_ratio=0.0, commit_loss_beta=0.25,
        reconstruction_weight=1.0, reconstruction_loss="l2", perceptual_weight=1.0, disc_weight=0.5,
        disc_start=20000, disc_type="patchgan", disc_loss="hinge", gen_loss="hinge", compile=False, dropout_p=0.0,
        results_dir="results_tokenizer_image", dataset="imagenet", image_size=28, epochs=40, lr=1e-4,
        mixed_precision="bf16",
    )  # fmt: skip
    disc = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 2, 1), torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(8, 1, 4))
    sd = {prefix + k: v for k, v in vq.state_dict().items()}
    ckpt = {
        "model": sd,
        "optimizer": _optimizer_state(vq),
        "discriminator": disc.state_dict(),
        "optimizer_disc": _optimizer_state(disc),
        "steps": 20000,
        "args": args,
        "ema": dict(sd),
    }
    torch.save(ckpt, path)
    return path


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------------ loading


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_train_c2i_gpt_loads_without_flags(tmp_path, capsys, prefix):
    ref = _gpt((3, 3))
    path = write_train_c2i(tmp_path / "0005000.pt", ref, _gpt_args(), prefix=prefix, ema=True)
    m = load_gpt(path)
    assert _same_weights(m, ref)
    assert m.config.grid_hw == (3, 3) and m.config.vocab_size == V and m.config.num_classes == C
    assert m.checkpoint_info["grid"].startswith("the file's args") and m.checkpoint_info["image_size"] == 48
    err = capsys.readouterr().err
    assert err.count("dropped 10 non-weight buffers") == 1 and "kv_cache" in err and "causal_mask" in err
    assert _same_weights(load_gpt(path, use_ema=True), ref)


def test_kv_cache_buffers_dropped_but_real_weights_still_strict(tmp_path):
    ref = _gpt((3, 3))
    sd = _with_generate_buffers(ref.state_dict(), ref)
    sd["layers.0.attention.wqkv.bias"] = torch.zeros(3)  # not a runtime buffer: still refused
    with pytest.raises(CodepriorError, match=r"unexpected keys: 1 \(layers.0.attention.wqkv.bias\)"):
        load_gpt({"model": sd, "args": _gpt_args()})
    sd = _with_generate_buffers(ref.state_dict(), ref)
    sd.pop("norm.weight")
    with pytest.raises(CodepriorError, match=r"missing keys: 1 \(norm.weight\)"):
        load_gpt({"model": sd, "args": _gpt_args()})


def test_vq_train_checkpoint_loads_without_flags(tmp_path):
    ref = _vq()
    path = write_vq_train(tmp_path / "vq.pt", ref)
    vq = load_vq(path)
    assert _same_weights(vq, ref) and vq.config.codebook_size == V and vq.config.image_size == 28
    assert vq.checkpoint_info["config"] == "the file's args (vq_model VQ-fmnist)"
    assert load_vq(path, "VQ-fmnist").config == vq.config  # a flag that agrees is fine


def test_namespace_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": _gpt((3, 3)).state_dict(), "args": _gpt_args(code_path=Payload())}, path)
    with pytest.raises(CodepriorError, match=r"evil.pt: cannot read checkpoint .*unsupported GLOBAL .*system"):
        load_checkpoint(path)
    for loader in (load_gpt, load_vq):
        with pytest.raises(CodepriorError, match="weights_only=True"):
            loader(path)
    assert main(["prior", str(path), "--method", "kmeans", "--k", "4", "--out", str(tmp_path / "p.safetensors")]) == 2
    assert not marker.exists()
    # a Namespace alone is allowed only inside the load: torch's global allow-list is left as it was
    torch.save({"args": argparse.Namespace(a=1)}, tmp_path / "ns.pt")
    with pytest.raises(Exception, match="Namespace"):
        torch.load(tmp_path / "ns.pt", weights_only=True)


def test_llamagen_args_to_config_dcpe_and_drop_path():
    cfg = gpt_config_from_llamagen_args(vars(_gpt_args(image_size=384, drop_path_rate=0.1)))
    assert cfg.grid_hw == (24, 24) and cfg.block_size == 576
    assert cfg.resid_dropout_p == cfg.ffn_dropout_p == 0.0 and cfg.drop_path_rate == 0.1  # as train_c2i.py
    dcpe = vars(_gpt_args(vocab_size=16384, codebook_compression=True, codebook_compression_rate=2))
    assert gpt_config_from_llamagen_args(dcpe).vocab_size == 8192
    with pytest.raises(CodepriorError, match="'t2i' GPT"):
        gpt_config_from_llamagen_args(vars(_gpt_args(gpt_type="t2i")))
    with pytest.raises(CodepriorError, match="image_size 100 is not a positive multiple of downsample_size 16"):
        gpt_config_from_llamagen_args(vars(_gpt_args(image_size=100)))


# ------------------------------------------------------------------------------------------------ the grid


def test_24x24_file_gets_its_grid_and_logits(tmp_path):
    ref = _gpt((24, 24))
    path = write_train_c2i(tmp_path / "c2i_384.pt", ref, _gpt_args(image_size=384, downsample_size=16))
    m = load_gpt(path)
    assert m.config.grid_hw == (24, 24)
    g = torch.Generator().manual_seed(1)
    codes, labels = torch.randint(0, V, (2, 576), generator=g), torch.tensor([0, 2])
    wrong = GPT(get_gpt_config("GPT-tiny", vocab_size=V, num_classes=C, grid=(16, 16))).eval()
    wrong.load_state_dict(ref.state_dict())
    with torch.no_grad():
        got, want = m(codes, labels), ref(codes, labels)
        assert torch.equal(got, want)
        off = (m(codes[:, :256], labels) - wrong(codes[:, :256], labels)).abs().max().item()
    assert off > 1e-3  # the 16x16 RoPE table gives other logits from the 17th token on


@pytest.fixture
def tiny_registry(monkeypatch):
    """A registry name for a tiny GPT, so a bare state dict (which says nothing) can be named by --gpt-model."""
    monkeypatch.setitem(GPT_CONFIGS, "GPT-test", get_gpt_config("GPT-tiny", vocab_size=V, num_classes=C))


def _vq16(tmp_path: Path, image_size: int = 384) -> Path:
    """A tiny codeprior tokenizer that downsamples by 16 (stored config)."""
    torch.manual_seed(0)
    vq = VQModel(
        get_vq_config(
            "VQ-fmnist", codebook_size=V, codebook_embed_dim=4, ch=8, ch_mult=[1, 1, 1, 1, 1], z_channels=8,
            norm_groups=4, image_size=image_size,
        )
    )  # fmt: skip
    return save_vq(vq, tmp_path / "vq16.pt")


def test_sample_cli_24x24_without_flags(tmp_path, capsys):
    gpt = write_train_c2i(tmp_path / "c2i_384.pt", _gpt((24, 24)), _gpt_args(image_size=384, downsample_size=16))
    out = tmp_path / "s"
    rc = main(["sample", "--ckpt", str(gpt), "--tokenizer", str(_vq16(tmp_path, 256)), "--num-samples", "2", "--batch-size",
               "2", "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert np.load(out / "samples.npz")["arr_0"].shape[:3] == (2, 384, 384)  # 24x24 codes x 16
    assert "assumed" not in capsys.readouterr().err  # the file said the grid


def test_sample_cli_bare_file_grid_from_flag_or_tokenizer(tmp_path, capsys, tiny_registry):
    path = tmp_path / "bare.pt"
    torch.save(_gpt((3, 3)).state_dict(), path)  # FSDP consolidated.pth: nothing says the grid
    tok = _vq16(tmp_path, image_size=48)
    base = ["sample", "--ckpt", str(path), "--model", "GPT-test", "--tokenizer", str(tok), "--num-samples", "1",
            "--no-progress"]  # fmt: skip
    assert main([*base, "--image-size", "64", "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "assumed 4x4 from --image-size 64 / the downsampling 16" in err and err.count("assumed") == 1
    assert np.load(tmp_path / "a" / "samples.npz")["arr_0"].shape[1:3] == (64, 64)
    assert main([*base, "--out", str(tmp_path / "b")]) == 0
    assert "assumed 3x3 from the image size 48 of" in capsys.readouterr().err
    assert np.load(tmp_path / "b" / "samples.npz")["arr_0"].shape[1:3] == (48, 48)
    assert main([*base, "--image-size", "50", "--out", str(tmp_path / "c")]) == 2
    assert "--image-size 50: not a multiple of the downsampling 16" in capsys.readouterr().err


def test_load_gpt_api_notes_an_assumed_grid(tiny_registry, capsys):
    sd = _gpt((3, 3)).state_dict()
    assert load_gpt(sd, "GPT-test", default_grid=(5, 5)).config.grid_hw == (5, 5)
    assert capsys.readouterr().err == ""
    assert load_gpt(sd, "GPT-test").config.grid_hw == (16, 16)
    assert "does not say its code grid; assumed 16x16, the default of GPT-test" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ CLI entry points


def test_prior_and_sample_cli_on_llamagen_layouts(tmp_path, capsys):
    vq_path = write_vq_train(tmp_path / "vq.pt", _vq())
    prior = tmp_path / "p.safetensors"
    assert main(["prior", str(vq_path), "--method", "kmeans", "--k", "4", "--out", str(prior), "--no-progress"]) == 0
    gpt = write_train_c2i(tmp_path / "gpt.pt", _gpt((3, 3)), _gpt_args(image_size=12, downsample_size=4))
    out = tmp_path / "s"
    rc = main(["sample", "--ckpt", str(gpt), "--tokenizer", str(vq_path), "--num-samples", "3", "--out", str(out),
               "--no-progress"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert np.load(out / "samples.npz")["arr_0"].shape[:3] == (3, 12, 12)


# ------------------------------------------------------------------------------------------------ contradictions


def _sample(tmp_path: Path, gpt: Path, tok: Path, *extra: str) -> list[str]:
    return ["sample", "--ckpt", str(gpt), "--tokenizer", str(tok), "--num-samples", "1", "--out", str(tmp_path / "out"),
            "--no-progress", *extra]  # fmt: skip


def test_contradicting_flags_exit_2_naming_both_values(tmp_path, capsys):
    gpt = write_train_c2i(tmp_path / "gpt.pt", _gpt((24, 24)), _gpt_args(image_size=384, downsample_size=16))
    tok = _vq16(tmp_path)

    assert main(_sample(tmp_path, gpt, tok, "--model", "GPT-B")) == 2
    err = capsys.readouterr().err
    assert "--model GPT-B contradicts the file's args (gpt_model GPT-tiny" in err and "dim 768 vs 128" in err

    assert main(_sample(tmp_path, gpt, tok, "--image-size", "256")) == 2
    err = capsys.readouterr().err
    assert "--image-size 256 gives a 16x16 grid" in err and "24x24 grid" in err and "image_size 384" in err

    assert main(_sample(tmp_path, gpt, tok, "--vq-model", "VQ-16")) == 2
    err = capsys.readouterr().err
    assert "vq16.pt: --vq-model VQ-16 contradicts the file's stored config" in err and "ch 128 vs 8" in err

    ds4 = write_vq_train(tmp_path / "vq4.pt", _vq())  # downsamples by 4, not 16
    assert main(_sample(tmp_path, gpt, ds4)) == 2
    err = capsys.readouterr().err
    assert "gpt.pt: a 24x24 grid" in err and "vq4.pt downsamples by 4 (96x96 codes at 384 px)" in err
    assert not (tmp_path / "out").exists()

    # flags that agree with the file are fine
    assert main(_sample(tmp_path, gpt, tok, "--model", "GPT-tiny", "--image-size", "384")) == 0


def test_pipeline_refuses_tokenizer_model_contradicting_the_file(tmp_path):
    from codeprior.pipeline.config import config_from_dict
    from codeprior.pipeline.stages.common import load_vq as pipeline_load_vq

    tok = save_vq(_vq(), tmp_path / "tok.pt")
    data = {"data": {"dataset": "fashion-mnist"}, "tokenizer": {"checkpoint": str(tok), "model": "VQ-16"}}
    with pytest.raises(CodepriorError, match=r"tok.pt: tokenizer.model VQ-16 contradicts .*ch 128 vs 16"):
        pipeline_load_vq(config_from_dict(data), tok, "cpu")
    for model in ("VQ-fmnist", None):  # agrees on the architecture (the codebook size is the file's), or not set
        data["tokenizer"].pop("model", None)
        data["tokenizer"].update({"model": model} if model else {})
        assert pipeline_load_vq(config_from_dict(data), tok, "cpu").config.codebook_size == V
