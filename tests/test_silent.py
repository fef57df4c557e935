"""Nothing silent (issue 24, items 5 and 7): non-finite weights and logits, out-of-range labels, a missing
--classifier, a finished or resumed sample, a resume with changed settings, and memory estimates before work."""

from __future__ import annotations

import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from codeprior.cli import main
from codeprior.errors import CodepriorError
from codeprior.models import load_gpt, load_refine, load_vq, save_gpt, save_refine, save_vq
from codeprior.models.gpt import GPT, get_gpt_config
from codeprior.models.refine import RefineModel, get_refine_config
from codeprior.models.sampling import NonFiniteLogits
from codeprior.models.vq import VQModel, get_vq_config
from codeprior.sample import SampleSettings, sample_to_dir
from codeprior.utils import memory

V, C, GRID, K = 64, 3, (3, 3), 8


def _gpt(vocab: int = V, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = get_gpt_config(
        "GPT-tiny", dim=32, n_layer=1, n_head=2, vocab_size=vocab, num_classes=C, block_size=9, grid=GRID
    )
    gpt = GPT(cfg)
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    return gpt.eval()


def _vq() -> VQModel:
    torch.manual_seed(0)
    cfg = get_vq_config(
        "VQ-fmnist", codebook_size=V, ch=16, z_channels=16, norm_groups=4, ch_mult=[1, 2, 2], image_size=12
    )
    return VQModel(cfg).eval()


def _refine() -> RefineModel:
    torch.manual_seed(0)
    cfg = get_refine_config(
        "Refine-tiny",
        dim=32,
        n_layer=1,
        n_head=2,
        vocab_size=V,
        coarse_vocab_size=K,
        num_classes=C,
        block_size=9,
        grid=GRID,
    )
    r = RefineModel(cfg, torch.arange(V) % K)
    torch.nn.init.normal_(r.output.weight, std=0.5)
    return r.eval()


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [x for x in err if x.startswith("codeprior: error:")]
    assert len(lines) == 1 and "Traceback" not in "\n".join(err), err
    return lines[0]


@pytest.fixture
def models(tmp_path):
    """A tiny GPT, a VQ tokenizer and their files; the sample command's arguments."""
    save_gpt(_gpt(), tmp_path / "gpt.pt")
    save_vq(_vq(), tmp_path / "vq.pt")
    base = ["sample", "--ckpt", str(tmp_path / "gpt.pt"), "--tokenizer", str(tmp_path / "vq.pt")]
    base += ["--device", "cpu", "--no-progress", "--batch-size", "4"]
    return tmp_path, base


# ---------------------------------------------------------------------------------------------- non-finite weights
def test_nan_weights_are_refused_at_load(tmp_path, capsys):
    gpt = _gpt()
    with torch.no_grad():
        gpt.layers[0].attention.wqkv.weight[0, 0] = float("nan")
    save_gpt(gpt, tmp_path / "nan.pt")
    with pytest.raises(CodepriorError, match=r"nan\.pt: non-finite weights .* tensor layers\.0\.attention\.wqkv"):
        load_gpt(tmp_path / "nan.pt")
    vq = _vq()
    with torch.no_grad():
        vq.quantize.embedding.weight[3, 1] = float("inf")
    save_vq(vq, tmp_path / "vq.pt")
    with pytest.raises(CodepriorError, match=r"vq\.pt: non-finite weights .* quantize\.embedding\.weight \(1 of"):
        load_vq(tmp_path / "vq.pt")
    r = _refine()
    with torch.no_grad():
        r.output.weight.fill_(float("nan"))
    save_refine(r, tmp_path / "refine.pt")
    with pytest.raises(CodepriorError, match=r"refine\.pt: non-finite weights .* output\.weight"):
        load_refine(tmp_path / "refine.pt")
    # bf16 weights whose sum overflows the dtype are not mistaken for non-finite ones
    big = _gpt().to(torch.bfloat16)
    with torch.no_grad():
        big.output.weight.fill_(3e38)
    save_gpt(big, tmp_path / "big.pt")
    load_gpt(tmp_path / "big.pt")
    # the CLI: one line, exit 2, before anything is written
    save_vq(_vq(), tmp_path / "good_vq.pt")
    argv = ["sample", "--ckpt", str(tmp_path / "nan.pt"), "--tokenizer", str(tmp_path / "good_vq.pt")]
    assert main([*argv, "--num-samples", "2", "--device", "cpu", "--out", str(tmp_path / "s")]) == 2
    assert "non-finite weights" in _one_line(capsys) and not (tmp_path / "s").exists()


def test_nan_classifier_is_refused(tmp_path):
    from codeprior.evaluate.classifier import ClassifierConfig, load_classifier, save_classifier, train_classifier

    g = np.random.default_rng(0)
    x, y = g.integers(0, 255, (20, 28, 28), dtype=np.uint8), g.integers(0, 10, 20)
    _, ck = train_classifier(x, y, x, y, ClassifierConfig(max_steps=1, batch_size=10, widths=(4, 4, 4)), dataset="t")
    ck["model"]["head.bias"][2] = float("nan")
    save_classifier(ck, tmp_path / "clf.pt")
    with pytest.raises(CodepriorError, match=r"clf\.pt: non-finite weights .* head\.bias"):
        load_classifier(tmp_path / "clf.pt")


# ---------------------------------------------------------------------------------------------- non-finite logits
def _overflowing(gpt: torch.nn.Module) -> torch.nn.Module:
    """Finite weights whose logits overflow to inf (what a diverged bf16 run can give)."""
    with torch.no_grad():
        gpt.output.weight.fill_(3e38)
    return gpt


def test_nonfinite_logits_stop_sampling_with_the_token_and_the_file(models, capsys):
    tmp, base = models
    save_gpt(_overflowing(_gpt()), tmp / "inf.pt")
    for decoder in (["--decoder", "ar"], ["--decoder", "sjd", "--window", "4"]):
        out = tmp / f"s-{decoder[1]}"
        argv = ["sample", "--ckpt", str(tmp / "inf.pt"), *base[3:], "--num-samples", "2", "--out", str(out), *decoder]
        assert main(argv) == 2, decoder
        line = _one_line(capsys)
        assert f"{tmp / 'inf.pt'}: " in line and "non-finite logits" in line and "at token 0" in line, line
        assert "of samples 0..1" in line and not (out / "samples.npz").exists()


def test_nonfinite_refine_logits_name_the_refine_model(tmp_path):
    r = _refine()
    with torch.no_grad():
        r.output.weight.fill_(3e38)
    with pytest.raises(NonFiniteLogits, match="refine sampling: non-finite logits .* at token 0 of samples 0..1") as e:
        sample_to_dir(_gpt(vocab=K), _vq(), tmp_path, 2, SampleSettings(), refine=r, grid=GRID, batch_size=2)
    assert e.value.stage == "refine"


def test_finite_sampling_is_unchanged_by_the_check(tmp_path):
    """The check reads flags only: the same codes as before (the AR fingerprint test pins them elsewhere)."""
    gpt = _gpt()
    a = gpt.generate(torch.tensor([0, 1]), cfg_scale=2.0, generator=torch.Generator().manual_seed(1))
    b = gpt.generate(torch.tensor([0, 1]), cfg_scale=2.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (2, 9)


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture
def codes(tmp_path):
    from codeprior.data.codes import write_code_shards

    g = np.random.default_rng(0)
    meta = {"grid": [3, 3], "codebook_size": 16, "num_classes": 3, "n_aug": 1}
    write_code_shards(tmp_path / "codes", "train", g.integers(0, 16, (16, 1, 9)), g.integers(0, 3, 16), meta)
    return tmp_path


def _cfg(root: Path, **kw):
    from codeprior.train.config import TrainConfig

    base = dict(
        codes=str(root / "codes"),
        out=str(root / "run"),
        model_overrides={"dim": 32, "n_layer": 1, "n_head": 2},
        global_batch=4,
        max_steps=4,
        lr=1e-3,
        log_every=2,
        ckpt_every=2,
        tensorboard=False,
        progress=False,
        threads=1,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_nonfinite_training_stops_with_the_step_and_the_run(codes):
    from codeprior.train.trainer import train

    run = codes / "run"
    # an absurd lr blows the weights up in the second step; checked at each log (the loss) and before every
    # checkpoint (loss and weights): the run stops before a non-finite checkpoint or model.pt is written
    cfg = _cfg(codes, lr=1e30, max_steps=6, log_every=1, ckpt_every=100, grad_clip=0.0)
    with pytest.raises(CodepriorError) as e:
        train(cfg)
    assert str(e.value).startswith(f"{run}: training loss is nan at step 3; stopped (newest checkpoint: none)")
    cfg = _cfg(codes, lr=1e30, max_steps=6, log_every=5, ckpt_every=1, grad_clip=0.0, overwrite=True)
    with pytest.raises(CodepriorError) as e:
        train(cfg)
    msg = str(e.value)
    assert msg.startswith(f"{run}: weights are non-finite after step 2; stopped (newest checkpoint: {run}/checkpoints")
    assert "\n" not in msg and "--lr" in msg
    for ck in (run / "checkpoints").glob("*.pt"):
        load_gpt(ck)  # every checkpoint written is finite (load refuses non-finite weights)
    assert not (run / "model.pt").exists()


def test_resume_says_where_it_resumed_from_and_refuses_changed_settings(codes, capsys):
    from codeprior.train.trainer import train
    from codeprior.utils.io import load_checkpoint

    train(_cfg(codes, stop_at_step=2))
    ck = codes / "run" / "checkpoints" / "0000002.pt"
    capsys.readouterr()
    with pytest.raises(CodepriorError) as e:
        train(_cfg(codes, resume="auto", lr=2e-3, seed=3))
    msg = str(e.value)
    assert msg.startswith(f"{ck}: --resume with changed settings") and "\n" not in msg
    assert "--lr 0.001 -> 0.002" in msg and "--seed 0 -> 3" in msg and "--allow-changed lr,seed" in msg
    # model settings cannot change (the model is rebuilt from the checkpoint), even when allowed
    with pytest.raises(CodepriorError, match=r"changed model settings \(--dropout none -> 0\.2\)"):
        train(_cfg(codes, resume="auto", dropout=0.2, allow_changed=["dropout"]))
    with pytest.raises(CodepriorError, match="--allow-changed: 'learning_rate' is not a training setting"):
        train(_cfg(codes, resume="auto", allow_changed=["learning_rate"]))
    # allowed: the new lr really is the one in effect; a longer run and other log intervals need no permission
    out = train(_cfg(codes, resume="auto", lr=2e-3, allow_changed=["lr"], max_steps=6, log_every=1))
    assert out["step"] == 6
    err = capsys.readouterr().err
    assert f"train: resuming from step 2 of {ck}; changed: lr 0.001 -> 0.002" in err
    last = load_checkpoint(codes / "run" / "checkpoints" / "0000006.pt")
    assert last["args"]["lr"] == 2e-3 and last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-3)
    # the CLI: one line, exit 2; --allow-changed takes flag spellings
    argv = ["train", "--codes", str(codes / "codes"), "--out", str(codes / "run"), "--global-batch", "4"]
    argv += ["--model-override", "dim=32", "--model-override", "n_layer=1", "--model-override", "n_head=2"]
    argv += ["--max-steps", "8", "--lr", "0.002", "--log-every", "2", "--ckpt-every", "2", "--no-tensorboard"]
    argv += ["--no-progress", "--threads", "1", "--device", "cpu", "--resume"]
    assert main([*argv, "--global-batch", "8"]) == 2
    assert "--global-batch 4 -> 8" in _one_line(capsys)
    assert main([*argv, "--global-batch", "8", "--allow-changed", "global-batch"]) == 0


def test_resume_without_a_checkpoint_says_so(codes, capsys):
    from codeprior.train.trainer import train

    train(_cfg(codes, resume="auto", max_steps=2))
    assert f"train: --resume: no checkpoint in {codes / 'run' / 'checkpoints'}; starting at step 0" in (
        capsys.readouterr().err
    )


# ---------------------------------------------------------------------------------------------- sample reruns
def test_a_finished_sample_says_it_reused_the_samples(models, capsys):
    tmp, base = models
    argv = [*base, "--num-samples", "4", "--chunk-size", "2", "--out", str(tmp / "s")]
    assert main(argv) == 0
    assert "wrote 4 samples" in capsys.readouterr().out
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "already finished with this model and settings; reused it" in out and "wrote" not in out
    # a resumed run says how far the earlier one came
    (tmp / "s" / "samples.npz").unlink()
    (tmp / "s" / "samples.json").unlink()
    assert main([*argv[:-1], str(tmp / "t"), "--keep-chunks"]) == 0
    (tmp / "t" / "samples.npz").unlink()
    (tmp / "t" / "samples.json").unlink()
    (tmp / "t" / "chunks" / "000001.npz").unlink()
    capsys.readouterr()
    assert main([*argv[:-1], str(tmp / "t")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp / 't' / 'chunks'}: resuming, 1 of 2 chunks already sampled" in out and "wrote 4 samples" in out


# ---------------------------------------------------------------------------------------------- evaluate
def _classifier(path: Path) -> None:
    from codeprior.evaluate.classifier import ClassifierConfig, save_classifier, train_classifier

    g = np.random.default_rng(0)
    x, y = g.integers(0, 255, (20, 12, 12), dtype=np.uint8), np.arange(20) % 10
    cfg = ClassifierConfig(max_steps=1, batch_size=10, widths=(4, 4, 4), image_size=12)
    save_classifier(train_classifier(x, y, x, y, cfg, dataset="t")[1], path)


def test_evaluate_refuses_labels_outside_the_classifier(tmp_path, capsys):
    g = np.random.default_rng(0)
    images = g.integers(0, 255, (12, 12, 12, 1), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=images)
    _classifier(tmp_path / "clf.pt")
    argv = ["evaluate", "--reference", str(tmp_path / "ref.npz"), "--classifier", str(tmp_path / "clf.pt")]
    np.savez(tmp_path / "ok.npz", arr_0=images, labels=np.arange(12) % 10)
    assert main(["evaluate", str(tmp_path / "ok.npz"), *argv[1:]]) == 0
    capsys.readouterr()
    np.savez(tmp_path / "bad.npz", arr_0=images, labels=np.arange(12) % 10 + 5)
    assert main(["evaluate", str(tmp_path / "bad.npz"), *argv[1:]]) == 2
    line = _one_line(capsys)
    assert f"{tmp_path / 'bad.npz'}: label 10 of sample 5 is outside 0..9" in line and "clf.pt" in line
    np.savez(tmp_path / "neg.npz", arr_0=images, labels=np.arange(12) - 1)
    assert main(["evaluate", str(tmp_path / "neg.npz"), *argv[1:]]) == 2
    assert "'labels' must be class indices >= 0" in _one_line(capsys)
    np.savez(tmp_path / "frac.npz", arr_0=images, labels=np.full(12, 0.5))
    assert main(["evaluate", str(tmp_path / "frac.npz"), *argv[1:]]) == 2
    assert "'labels' must be class indices >= 0, got float64" in _one_line(capsys)
    from codeprior.evaluate.metrics import class_match_rate

    with pytest.raises(CodepriorError, match="label 3 of sample 1 is outside 0..2"):
        class_match_rate(torch.zeros(2, 3), np.array([0, 3]))


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "S.npz"],
        ["evaluate-tokenizer", "--tokenizer", "VQ.pt"],
        ["prior", "substitute", "P.safetensors", "--tokenizer", "VQ.pt"],
    ],
    ids=["evaluate", "evaluate-tokenizer", "prior-substitute"],
)
def test_a_missing_classifier_is_a_missing_file(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.setenv("CODEPRIOR_CACHE", str(tmp_path / "cache"))
    np.savez(tmp_path / "S.npz", arr_0=np.zeros((4, 12, 12, 1), np.uint8))
    argv = [str(tmp_path / a) if a[0].isupper() else a for a in argv]
    assert main([*argv, "--classifier", str(tmp_path / "typo.pt")]) == 2
    line = _one_line(capsys)
    assert f"{tmp_path / 'typo.pt'}: --classifier: no such file" in line
    assert not (tmp_path / "typo.pt").exists() and not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------------------------- memory
def test_available_bytes_from_psutil_or_meminfo(tmp_path, monkeypatch):
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", info)
    monkeypatch.setitem(sys.modules, "psutil", None)  # not installed
    assert memory.available_bytes() == 8_000_000 * 1024
    fake = types.SimpleNamespace(virtual_memory=lambda: types.SimpleNamespace(available=1234))
    monkeypatch.setitem(sys.modules, "psutil", fake)
    assert memory.available_bytes() == 1234
    monkeypatch.setitem(sys.modules, "psutil", None)
    monkeypatch.setattr(memory, "MEMINFO", tmp_path / "none")
    assert memory.available_bytes() is None
    memory.check_memory(10**30, "x")  # unknown: nothing refused


def test_labels_flag_gives_the_requested_labels(models):
    tmp, base = models
    assert main([*base, "--num-samples", "2", "--labels", "2,0", "--per-class", "--out", str(tmp / "pc")]) == 0
    assert main([*base, "--num-samples", "5", "--labels", "2,0", "--out", str(tmp / "cycle")]) == 0
    with np.load(tmp / "pc" / "samples.npz") as f:
        assert f["labels"].tolist() == [2, 2, 0, 0]  # --num per listed class
    with np.load(tmp / "cycle" / "samples.npz") as f:
        assert f["labels"].tolist() == [2, 0, 2, 0, 2]  # the list repeated up to --num


def test_sample_refuses_what_does_not_fit_before_any_work(models, capsys, monkeypatch):
    tmp, base = models
    for extra in (
        ["--num-samples", "1000000000000"],
        ["--num-samples", "2", "--decoder", "sjd", "--window", "1000000000"],
    ):
        assert main([*base, *extra, "--out", str(tmp / "big")]) == 2
        line = _one_line(capsys)
        assert line.startswith("codeprior: error: sample: ") and "needs about" in line and "available" in line
        assert "--ignore-memory-check" in line and not (tmp / "big").exists()
    # --num 2e8 of 12x12x1 images: ~62 GB to assemble (pixels twice, labels); a machine with 8 GB refuses, with --labels too
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 8 * 10**9)
    assert main([*base, "--num-samples", "200000000", "--labels", "0,1", "--out", str(tmp / "big")]) == 2
    assert "sample: 200000000 samples of 12x12x1 (batch 4): needs about 62.4 GB" in _one_line(capsys)
    # the flag overrides the refusal
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 1000)
    assert main([*base, "--num-samples", "2", "--out", str(tmp / "small")]) == 2
    capsys.readouterr()
    assert main([*base, "--num-samples", "2", "--out", str(tmp / "small"), "--ignore-memory-check"]) == 0


def _magic_header(shape: tuple[int, ...]) -> bytes:
    """The .npy header of a uint8 array of ``shape`` (no data: nothing may try to load it)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def test_evaluate_refuses_what_does_not_fit_before_any_work(tmp_path, capsys):
    from codeprior.evaluate.metrics import npz_shape

    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("arr_0.npy", _magic_header((10**9, 256, 256, 3)))
    assert npz_shape(tmp_path / "huge.npz") == (10**9, 256, 256, 3)
    np.savez(tmp_path / "ref.npz", arr_0=np.zeros((4, 256, 256, 3), np.uint8))
    argv = ["evaluate", str(tmp_path / "huge.npz"), "--reference", str(tmp_path / "ref.npz")]
    assert main(argv) == 2
    line = _one_line(capsys)
    assert f"evaluate: {tmp_path / 'huge.npz'} holds 1000000000 images of 256x256x3" in line
    assert "needs about" in line and "--ignore-memory-check" in line
    # with the flag the check is skipped, and reading the file is what fails (one line)
    assert main([*argv, "--ignore-memory-check"]) == 2
    assert "huge.npz" in _one_line(capsys)


def test_docs_list_the_checks():
    text = (Path(__file__).parents[1] / "docs" / "checks.md").read_text()
    for needle in ("non-finite", "--allow-changed", "--ignore-memory-check", "reused"):
        assert needle in text, needle
