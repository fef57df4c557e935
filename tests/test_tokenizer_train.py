"""Tokenizer training: batch order, dead-code restarts, run layout, exact resume, evaluation, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from codeprior import tokenizer_train as tt
from codeprior.cli import main
from codeprior.errors import CodepriorError
from codeprior.models.checkpoint import load_vq
from codeprior.models.vq import VQModel, get_vq_config
from codeprior.tokenizer_settings import SCHEDULES
from codeprior.utils.io import load_checkpoint

TINY = get_vq_config(
    "VQ-fmnist",
    codebook_size=64,
    codebook_embed_dim=4,
    ch=8,
    ch_mult=[1, 2],
    z_channels=8,
    num_res_blocks=1,
    norm_groups=4,
    image_size=8,
)


def synthetic_images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 1, size, size]: smooth random patterns (upsampled 2x2 noise) so they are compressible."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 2, 2, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=True)
    return (x * 255).round().to(torch.uint8)


def small_settings(**kw) -> tt.TrainSettings:
    base = dict(
        steps=12,
        batch_size=16,
        lr=3e-3,
        warmup_steps=2,
        restart_every=4,
        ckpt_every=6,
        log_every=3,
        eval_batch_size=32,
        seed=3,
    )
    base.update(kw)
    return tt.TrainSettings(**base)


def test_batch_indices_cover_each_epoch_once_and_are_seeded():
    n, b = 50, 8  # 6 full batches per epoch, 2 images dropped
    epoch0 = torch.cat([tt.batch_indices(n, b, s, seed=1) for s in range(6)])
    assert epoch0.numel() == 48 and epoch0.unique().numel() == 48
    assert torch.equal(tt.batch_indices(n, b, 2, seed=1), tt.batch_indices(n, b, 2, seed=1))
    assert not torch.equal(tt.batch_indices(n, b, 0, seed=1), tt.batch_indices(n, b, 6, seed=1))  # next epoch
    assert not torch.equal(tt.batch_indices(n, b, 0, seed=1), tt.batch_indices(n, b, 0, seed=2))
    with pytest.raises(CodepriorError, match="exceeds"):
        tt.batch_indices(4, 8, 0, seed=0)


def test_lr_schedule_warmup_and_cosine_endpoints():
    s = tt.TrainSettings(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert tt.lr_at(0, s) == pytest.approx(0.1)
    assert tt.lr_at(9, s) == pytest.approx(1.0)
    assert tt.lr_at(10, s) == pytest.approx(1.0)
    assert tt.lr_at(55, s) == pytest.approx(0.1 + 0.9 * 0.5)
    assert tt.lr_at(100, s) == pytest.approx(0.1)


def test_psnr():
    assert tt.psnr_from_mse(1.0) == pytest.approx(0.0)  # MSE on the [0, 1] scale, peak 1
    assert tt.psnr_from_mse(0.01) == pytest.approx(20.0)
    assert math.isinf(tt.psnr_from_mse(0.0))


def test_restart_dead_codes_reseeds_only_unused_rows_and_resets_moments():
    model = VQModel(TINY)
    opt = tt.make_optimizer(model, small_settings())
    x = tt.to_float(synthetic_images(4))
    _, losses, _, _ = model.forward_with_codes(x)
    (losses["recon"] + losses["codebook"]).backward()
    opt.step()
    w_before = model.quantize.embedding.weight.detach().clone()
    counts = torch.ones(64, dtype=torch.long)
    dead = torch.tensor([3, 10, 63])
    counts[dead] = 0
    feats = F.normalize(torch.randn(20, 4), dim=1)
    n = tt.restart_dead_codes(model, opt, counts, feats, torch.Generator().manual_seed(0), noise=0.0)
    w = model.quantize.embedding.weight.detach()
    assert n == 3
    alive = torch.ones(64, dtype=torch.bool)
    alive[dead] = False
    assert torch.equal(w[alive], w_before[alive])
    # each re-seeded row is one of the features (noise 0), all distinct
    match = (w[dead][:, None, :] - feats[None]).abs().amax(-1) < 1e-6
    assert match.any(1).all() and match.float().argmax(1).unique().numel() == 3
    state = opt.state[model.quantize.embedding.weight]
    assert torch.count_nonzero(state["exp_avg"][dead]) == 0 and torch.count_nonzero(state["exp_avg_sq"][dead]) == 0
    assert torch.count_nonzero(state["exp_avg_sq"][alive]) > 0


def test_train_writes_llamagen_layout_and_learns(tmp_path):
    train, test = synthetic_images(96), synthetic_images(40, seed=9)
    s = small_settings(steps=30, log_every=10)
    res = tt.train_vq(tmp_path / "run", TINY, train, test, s, device="cpu", dataset="synthetic")
    run = tmp_path / "run"
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"0000024.pt", "0000030.pt"}  # keeps 2
    ck = load_checkpoint(run / "checkpoints" / "0000030.pt")
    assert {"model", "optimizer", "steps", "args", "config"} <= set(ck)
    assert ck["steps"] == 30 and ck["args"]["batch_size"] == 16 and ck["config"]["kind"] == "vq"
    assert "quantize.embedding.weight" in ck["model"] and "quantize.codebook_used" in ck["model"]
    vq = load_vq(run / "tokenizer.pt")  # our file carries its config
    assert vq.config == TINY
    hist = res["history"]
    assert [h["step"] for h in hist] == [10, 20, 30]
    assert hist[-1]["recon"] < hist[0]["recon"]
    t = res["test"]
    assert t["images"] == 40 and 0 < t["codebook_usage"] <= 1 and t["psnr"] == pytest.approx(tt.psnr_from_mse(t["mse"]))
    assert (run / "recon_grid.png").stat().st_size > 0
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["test"]["mse"] == pytest.approx(t["mse"]) and on_disk["checkpoint"] == str(run / "tokenizer.pt")


def test_evaluate_matches_direct_computation():
    model = VQModel(TINY).eval()
    imgs = synthetic_images(37, seed=4)
    r = tt.reconstruction_stats(model, imgs, batch_size=10)
    x = imgs.float() / 127.5 - 1
    codes = model.encode_codes(x)
    with torch.no_grad():
        rec = model.decode_codes(codes).clamp(-1, 1)
    assert r["mse"] == pytest.approx(float(((rec - x) ** 2).mean()) / 4, rel=1e-5)  # on the [0, 1] scale
    assert r["codes_used"] == codes.unique().numel()
    assert r["codebook_usage"] == pytest.approx(codes.unique().numel() / 64)
    p = torch.bincount(codes.flatten(), minlength=64).double() / codes.numel()
    assert r["perplexity"] == pytest.approx(math.exp(-(p[p > 0] * p[p > 0].log()).sum().item()), rel=1e-6)


class _Stop(Exception):
    pass


def test_resume_continues_exactly(tmp_path, capsys):
    train = synthetic_images(64)
    s = small_settings()
    full = tt.train_vq(tmp_path / "a", TINY, train, None, s)

    def stop_at_9(step, rec):
        if step == 9:
            raise _Stop  # interrupted after the step-6 checkpoint

    with pytest.raises(_Stop):
        tt.train_vq(tmp_path / "b", TINY, train, None, s, on_step=stop_at_9)
    with pytest.raises(CodepriorError, match="--resume"):
        tt.train_vq(tmp_path / "b", TINY, train, None, s)
    with pytest.raises(CodepriorError, match="lr="):
        tt.train_vq(tmp_path / "b", TINY, train, None, small_settings(lr=1e-2), resume=True)
    capsys.readouterr()
    resumed = tt.train_vq(tmp_path / "b", TINY, train, None, s, resume=True)
    assert f"tokenizer train: resuming from step 6 of {tmp_path / 'b' / 'checkpoints'}" in capsys.readouterr().err
    a = load_checkpoint(tmp_path / "a" / "tokenizer.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "tokenizer.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]


def test_dead_code_restart_raises_codebook_usage(tmp_path):
    train = synthetic_images(128)
    kw = dict(steps=24, batch_size=32, log_every=24)
    with_r = tt.train_vq(tmp_path / "r", TINY, train, train, small_settings(restart_every=4, **kw))
    without = tt.train_vq(tmp_path / "n", TINY, train, train, small_settings(restart_every=10_000, **kw))
    assert with_r["test"]["codes_used"] > without["test"]["codes_used"] + 5


def test_bad_inputs(tmp_path):
    with pytest.raises(CodepriorError, match="channel"):
        tt.train_vq(tmp_path, TINY, torch.zeros(8, 3, 8, 8, dtype=torch.uint8), None, small_settings())
    with pytest.raises(CodepriorError, match="schedule"):
        tt.make_settings("weekly")
    with pytest.raises(CodepriorError, match="positive"):
        tt.make_settings("demo", steps=0)
    assert tt.make_settings("demo", lr=None).lr == SCHEDULES["demo"]["lr"]


def test_cli_train_and_eval(tmp_path, monkeypatch, capsys):
    data = {"train": synthetic_images(24, size=28), "test": synthetic_images(12, size=28, seed=5)}
    monkeypatch.setattr(tt, "load_images_uint8", lambda spec, split, data_dir=None: data[split])
    out = tmp_path / "tok"
    rc = main(["tokenizer", "train", "--out", str(out), "--steps", "2", "--batch-size", "8", "--device", "cpu"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["test"]["images"] == 12 and res["checkpoint"] == str(out / "tokenizer.pt")
    rc = main(
        [
            "tokenizer",
            "eval",
            "--tokenizer",
            str(out / "tokenizer.pt"),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "e.json"),
        ]
    )
    assert rc == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["mse"] == pytest.approx(res["test"]["mse"]) and ev["codes_used"] == res["test"]["codes_used"]
    assert main(["tokenizer", "eval", "--tokenizer", str(tmp_path / "missing.pt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_shared_schedule_and_param_groups_keep_the_vq_numbers():
    """The VQ trainer's schedule and optimiser come from codeprior.train.optim: exactly its former formulas."""
    s = small_settings(steps=20, warmup_steps=4, lr=3e-3, min_lr_ratio=0.1, weight_decay=0.01)
    for step in range(25):
        if step < 4:
            want = 3e-3 * (step + 1) / 4
        else:
            t = min((step - 4) / 16, 1.0)
            want = 3e-3 * (0.1 + (1 - 0.1) * 0.5 * (1 + math.cos(math.pi * t)))
        assert tt.lr_at(step, s) == want  # bit for bit
    model = VQModel(get_vq_config(TINY))
    decay, no_decay = tt.make_optimizer(model, s).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in decay["params"]] == [
        n for n, p in model.named_parameters() if p.dim() >= 2 and n != "quantize.embedding.weight"
    ]
    assert "quantize.embedding.weight" in {names[id(p)] for p in no_decay["params"]}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)


def test_one_tokenizer_evaluation_and_its_deprecated_alias(tmp_path, monkeypatch, capsys):
    """`tokenizer eval --rfid` adds evaluate_tokenizer's rFID and accuracies to the round-trip numbers;
    `evaluate-tokenizer` (deprecated) runs it with the same flags: the same JSON and one deprecation line."""
    import numpy as np

    import codeprior.evaluate.classifier as clf
    from codeprior.evaluate.metrics import make_extractor
    from codeprior.evaluate.tokenizer_eval import evaluate_tokenizer

    x = {"train": synthetic_images(24, size=28), "test": synthetic_images(12, size=28, seed=5)}
    y = {s: np.arange(len(v)) % 10 for s, v in x.items()}
    monkeypatch.setattr(tt, "load_images_uint8", lambda spec, split, data_dir=None: x[split])
    monkeypatch.setattr(clf, "load_split", lambda name, split, data_dir=None: (x[split][:, 0].numpy(), y[split]))
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--out", str(out), "--steps", "2", "--batch-size", "8", "--device", "cpu"]) == 0
    cfg = clf.ClassifierConfig(widths=(4, 8), feature_dim=16, epochs=1, max_steps=2, batch_size=8)
    _, ck = clf.train_classifier(x["train"][:, 0].numpy(), y["train"], x["test"][:, 0].numpy(), y["test"], cfg)
    clf.save_classifier(ck, tmp_path / "clf.pt")
    capsys.readouterr()
    flags = ["--tokenizer", str(out / "tokenizer.pt"), "--classifier", str(tmp_path / "clf.pt"), "--device", "cpu"]
    assert main(["tokenizer", "eval", "--rfid", *flags, "--num-images", "10"]) == 0
    new = capsys.readouterr()
    assert new.err == ""
    assert main(["evaluate-tokenizer", *flags, "--num", "10"]) == 0
    old = capsys.readouterr()
    lines = old.err.strip().splitlines()
    assert len(lines) == 2 and all("is deprecated, use" in ln for ln in lines), lines  # the command, --num
    assert (
        sum("codeprior evaluate-tokenizer is deprecated, use codeprior tokenizer eval --rfid" in ln for ln in lines)
        == 1
    )
    a, b = json.loads(new.out), json.loads(old.out)
    a.pop("seconds"), b.pop("seconds")
    assert a == b and a["images"] == 10
    vq = load_vq(out / "tokenizer.pt")
    ext = make_extractor("classifier", classifier=str(tmp_path / "clf.pt"))
    direct = evaluate_tokenizer(vq, x["test"][:10], y["test"][:10], ext)
    for k in ("rfid", "mse", "psnr", "codes_used", "accuracy_originals", "accuracy_reconstructions"):
        assert a[k] == pytest.approx(direct[k], rel=1e-5), k
    assert main(["tokenizer", "eval", *flags[:2], "--device", "cpu", "--num-images", "10"]) == 0
    pix = json.loads(capsys.readouterr().out)  # no --rfid: no classifier numbers, the same round trip's
    assert "rfid" not in pix and "feature_extractor" not in pix
    for k in ("mse", "psnr", "perplexity", "codebook_usage", "codes_used", "images"):
        assert pix[k] == pytest.approx(a[k], rel=1e-4), k
