"""What codeprior checks (docs/checks.md), through the CLI: provenance mismatches and bad outputs are refused before
any work with exit 2 and one line, inputs stay unchanged and nothing is left behind."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN_FLAGS

from codeprior.cli import main
from codeprior.data.codes import write_code_shards
from codeprior.models import save_vq
from codeprior.models.vq import VQModel, get_vq_config
from codeprior.priors.prior import Prior
from codeprior.utils.io import sha256_tensor

N = 16
TTC = torch.arange(N) % 4


def _vq(seed: int) -> VQModel:
    torch.manual_seed(seed)
    return VQModel(
        get_vq_config(
            "VQ-fmnist", codebook_size=N, ch=16, z_channels=16, norm_groups=4, ch_mult=[1, 2, 2], image_size=12
        )
    ).eval()


def _listing(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _fail(capsys, argv: list[str], expect: str) -> str:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("codeprior: error: "), err
    assert expect in err[0], err[0]
    return err[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shards tokenised with tokenizer A (hashes recorded), priors of A's and B's codebooks, a token and a coarse
    model trained one step on the shards."""
    root = tmp_path_factory.mktemp("world")
    vq_a, vq_b = _vq(0), _vq(1)
    save_vq(vq_a, root / "vq_a.pt")
    save_vq(vq_b, root / "vq_b.pt")
    g = np.random.default_rng(0)
    meta = {
        "grid": [3, 3],
        "codebook_size": N,
        "num_classes": 3,
        "n_aug": 1,
        "codebook_sha256": sha256_tensor(vq_a.quantize.embedding.weight),
        "tokenizer_sha256": "a" * 64,
    }
    for split, n in (("train", 24), ("test", 8)):
        labels = g.integers(0, 3, n)
        write_code_shards(root / "codes", split, g.integers(0, N, (n, 1, 9)), labels, meta)
    Prior(TTC, {"codebook_sha256": sha256_tensor(vq_a.quantize.embedding.weight)}).save(root / "prior_a.safetensors")
    Prior(TTC, {"codebook_sha256": sha256_tensor(vq_b.quantize.embedding.weight)}).save(root / "prior_b.safetensors")
    common = ["--codes", str(root / "codes"), *TINY_TRAIN_FLAGS]
    assert main(["train", *common, "--out", str(root / "token")]) == 0
    assert (
        main(
            [
                "train",
                *common,
                "--objective",
                "coarse",
                "--prior",
                str(root / "prior_a.safetensors"),
                "--out",
                str(root / "coarse"),
            ]
        )
        == 0
    )
    return root


def test_checkpoints_record_provenance(world):
    ck = torch.load(world / "coarse" / "model.pt", weights_only=True)
    p = ck["provenance"]
    assert p["objective"] == "coarse" and p["vocab_size"] == 4 and p["codebook_size"] == N
    assert p["prior_sha256"] == Prior(TTC).sha256()
    assert p["codebook_sha256"] == p["prior_codebook_sha256"] == sha256_tensor(_vq(0).quantize.embedding.weight)
    assert p["tokenizer_sha256"] == "a" * 64
    step = torch.load(next((world / "coarse" / "checkpoints").glob("*.pt")), weights_only=True)
    assert step["provenance"] == p


@pytest.mark.parametrize("cmd", ["train", "train-refine"])
def test_train_refuses_prior_of_another_codebook(world, tmp_path, capsys, cmd):
    objective = ["--objective", "cluster-ce"] if cmd == "train" else []
    line = _fail(
        capsys,
        [
            cmd,
            "--codes",
            str(world / "codes"),
            *objective,
            "--prior",
            str(world / "prior_b.safetensors"),
            "--max-steps",
            "1",
            "--out",
            str(tmp_path / "run"),
        ],
        "another codebook",
    )
    assert "prior_b.safetensors" in line and str(world / "codes") in line
    assert not (tmp_path / "run").exists()


def test_sample_refuses_coarse_without_refine_and_foreign_tokenizer(world, tmp_path, capsys):
    base = ["sample", "--num-samples", "2", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "s")]
    line = _fail(
        capsys,
        [*base, "--ckpt", str(world / "coarse" / "model.pt"), "--tokenizer", str(world / "vq_a.pt")],
        "is a coarse (cluster-id) model",
    )
    assert "--refine" in line
    line = _fail(
        capsys,
        [*base, "--ckpt", str(world / "token" / "model.pt"), "--tokenizer", str(world / "vq_b.pt")],
        "not the tokenizer",
    )
    assert "vq_b.pt" in line and "token/model.pt" in line
    assert not (tmp_path / "s").exists()
    assert main([*base, "--ckpt", str(world / "token" / "model.pt"), "--tokenizer", str(world / "vq_a.pt")]) == 0
    assert (tmp_path / "s" / "samples.npz").is_file() and not (tmp_path / "s" / "chunks").exists()


def test_sample_folder_of_another_model_is_refused_until_overwrite(world, tmp_path, capsys):
    out = tmp_path / "s"
    base = [
        "sample",
        "--num-samples",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--tokenizer",
        str(world / "vq_a.pt"),
        "--out",
        str(out),
    ]
    assert main([*base, "--ckpt", str(world / "token" / "model.pt"), "--keep-chunks"]) == 0
    (out / "samples.npz").unlink()  # interrupted before the assembly
    before = (out / "chunks" / "000000.npz").read_bytes()
    _fail(capsys, [*base, "--ckpt", str(world / "token" / "model.pt"), "--seed", "3"], "differs in: seed")
    assert (out / "chunks" / "000000.npz").read_bytes() == before
    assert main([*base, "--ckpt", str(world / "token" / "model.pt"), "--seed", "3", "--overwrite"]) == 0


def test_old_checkpoint_without_record_warns_once_and_samples(world, tmp_path, capsys):
    ck = torch.load(world / "token" / "model.pt", weights_only=True)
    del ck["provenance"]
    torch.save(ck, tmp_path / "old.pt")
    capsys.readouterr()
    assert (
        main(
            [
                "sample",
                "--ckpt",
                str(tmp_path / "old.pt"),
                "--tokenizer",
                str(world / "vq_a.pt"),
                "--num-samples",
                "2",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "cannot be checked" in warn[0] and "old.pt" in warn[0]


# ---------------------------------------------------------------------------------------------------- outputs
@pytest.fixture
def cb(tmp_path):
    np.save(tmp_path / "cb.npy", np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32))
    return tmp_path / "cb.npy"


def test_prior_out_onto_its_input_is_refused(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"codebook": torch.randn(32, 4)}, str(tmp_path / "cb.safetensors"))
    before = (tmp_path / "cb.safetensors").read_bytes()
    _fail(
        capsys,
        [
            "prior",
            str(tmp_path / "cb.safetensors"),
            "--method",
            "kmeans",
            "--k",
            "4",
            "--out",
            str(tmp_path / "cb.safetensors"),
        ],
        "is also the input CODEBOOK",
    )
    assert (tmp_path / "cb.safetensors").read_bytes() == before
    assert _listing(tmp_path) == {"cb.safetensors"}


@pytest.mark.parametrize(
    "out,expect",
    [
        ("cb.npy/p.safetensors", "cb.npy is a file"),
        (os.fsdecode(b"bad\xff.safetensors"), "bad\\xff.safetensors: --out: the name is not valid UTF-8"),
        ("p.safetensors --export-dcpe p.safetensors", "--export-dcpe and --out name the same file"),
    ],
)
def test_prior_bad_outputs(tmp_path, cb, capsys, monkeypatch, out, expect):
    monkeypatch.chdir(tmp_path)
    extra = out.split(" ")
    _fail(capsys, ["prior", str(cb), "--method", "kmeans", "--k", "4", "--out", *extra], expect)
    assert _listing(tmp_path) == {"cb.npy"}


def test_prior_out_in_unwritable_folder(tmp_path, cb, capsys, monkeypatch):
    import codeprior.utils.paths as paths

    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root may write anyway: let os.access answer as for a normal user
        real = os.access
        monkeypatch.setattr(paths.os, "access", lambda p, mode: False if os.fspath(p) == str(ro) else real(p, mode))
    _fail(
        capsys,
        ["prior", str(cb), "--method", "kmeans", "--k", "4", "--out", str(ro / "sub" / "p.safetensors")],
        f"cannot be written, folder {ro} is not writable",
    )
    assert not (ro / "sub").exists()


def test_prior_file_mode_is_0644(tmp_path, cb):
    old = os.umask(0o022)
    try:
        assert main(["prior", str(cb), "--method", "kmeans", "--k", "4", "--out", str(tmp_path / "p.safetensors")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "p.safetensors").stat().st_mode & 0o777 == 0o644


def test_train_tokenize_sample_outputs_checked_first(world, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _fail(
        capsys,
        ["train", "--codes", str(world / "codes"), "--max-steps", "1", "--out", str(world / "codes" / "run")],
        "is inside the input folder --codes",
    )
    _fail(
        capsys,
        ["train", "--codes", str(world / "codes"), "--max-steps", "1", "--out", str(tmp_path / "file" / "r")],
        "file is a file",
    )
    bad = os.fsdecode(b"run\xff")
    _fail(
        capsys,
        ["train", "--codes", str(world / "codes"), "--max-steps", "1", "--out", str(tmp_path / bad)],
        "not valid UTF-8",
    )
    _fail(
        capsys,
        [
            "sample",
            "--ckpt",
            str(world / "token" / "model.pt"),
            "--tokenizer",
            str(world / "vq_a.pt"),
            "--num-samples",
            "1",
            "--out",
            str(tmp_path / "file" / "s"),
        ],
        "file is a file",
    )
    _fail(
        capsys,
        ["tokenize", "--tokenizer", str(world / "vq_a.pt"), "--data", "fashion-mnist", "--out", str(tmp_path / "file")],
        "is a file, expected a folder",
    )
    assert _listing(tmp_path) == {"file"}
    assert not (world / "codes" / "run").exists()


def test_tokenize_missing_data_dir_is_an_error(world, tmp_path, capsys):
    _fail(
        capsys,
        [
            "tokenize",
            "--tokenizer",
            str(world / "vq_a.pt"),
            "--data",
            "fashion-mnist",
            "--data-dir",
            "/does/not/exist",
            "--out",
            str(tmp_path / "c"),
        ],
        "/does/not/exist: --data-dir: no such",
    )
    assert not (tmp_path / "c").exists()


def test_unsafe_pickle_message_is_whole_and_never_suggests_weights_only_false(tmp_path, capsys):
    class Thing:
        pass

    sys.modules[__name__].Thing = Thing  # picklable by reference
    Thing.__module__, Thing.__qualname__ = __name__, "Thing"
    torch.save({"model": Thing()}, tmp_path / "evil.pt")
    line = _fail(
        capsys,
        [
            "sample",
            "--ckpt",
            str(tmp_path / "evil.pt"),
            "--tokenizer",
            str(tmp_path / "evil.pt"),
            "--num-samples",
            "1",
            "--out",
            str(tmp_path / "s"),
        ],
        "evil.pt: cannot read checkpoint",
    )
    assert "Unsupported global" in line and "Thing" in line
    assert "weights_only` set to `False" not in line and "weights_only=False" not in line


def test_balanced_kmeans_non_convergence_is_printed(tmp_path, cb, capsys, monkeypatch):
    import codeprior.priors.balanced_kmeans as bk

    real = bk.balanced_kmeans_labels
    monkeypatch.setattr(
        bk,
        "balanced_kmeans_labels",
        lambda X, k, seed=0, progress=True: real(X, k, seed=seed, max_iter=1, progress=False),
    )
    assert (
        main(
            [
                "prior",
                str(cb),
                "--method",
                "balanced-kmeans",
                "--k",
                "4",
                "--out",
                str(tmp_path / "b.safetensors"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "warning: balanced-kmeans stopped after 1 iterations without converging" in capsys.readouterr().err


def test_resume_on_shards_of_another_codebook_is_refused(world, capsys):
    g = np.random.default_rng(1)
    meta = {
        "grid": [3, 3],
        "codebook_size": N,
        "num_classes": 3,
        "n_aug": 1,
        "codebook_sha256": sha256_tensor(_vq(1).quantize.embedding.weight),
    }
    write_code_shards(world / "codes_b", "train", g.integers(0, N, (8, 1, 9)), g.integers(0, 3, 8), meta)
    before = _listing(world / "coarse")
    _fail(
        capsys,
        [
            "train",
            "--codes",
            str(world / "codes_b"),
            "--objective",
            "coarse",
            "--prior",
            str(world / "prior_b.safetensors"),
            "--max-steps",
            "2",
            "--out",
            str(world / "coarse"),
            "--resume",
            "--model-override",
            "dim=32",
            "--model-override",
            "n_layer=1",
            "--model-override",
            "n_head=2",
        ],
        "shards of another codebook than the ones",
    )
    assert _listing(world / "coarse") == before


def test_train_with_prior_without_codebook_hash_warns_once_and_trains(world, tmp_path, capsys):
    Prior(TTC, {}).save(tmp_path / "old_prior.safetensors")  # written before priors recorded their codebook
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--codes",
                str(world / "codes"),
                "--objective",
                "cluster-ce",
                "--prior",
                str(tmp_path / "old_prior.safetensors"),
                "--max-steps",
                "1",
                "--global-batch",
                "4",
                "--no-tensorboard",
                "--no-progress",
                "--device",
                "cpu",
                "--model-override",
                "dim=32",
                "--model-override",
                "n_layer=1",
                "--model-override",
                "n_head=2",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "old_prior.safetensors: no codebook hash recorded" in warn[0]
    assert "cannot be checked" in warn[0]


def test_evaluate_uses_the_classifier_of_its_pipeline_run(tmp_path, capsys, monkeypatch):
    import json

    import codeprior.evaluate.metrics as metrics
    from codeprior.errors import CodepriorError

    run = tmp_path / "run"
    (run / "classifier").mkdir(parents=True)
    (run / "sample-token").mkdir()
    (run / "classifier" / "classifier.pt").write_bytes(b"x")
    (run / "classifier" / "manifest.json").write_text(
        json.dumps({"status": "done", "metrics": {"checkpoint": str(run / "classifier" / "classifier.pt")}})
    )
    np.savez(run / "sample-token" / "samples.npz", arr_0=np.zeros((4, 28, 28, 1), np.uint8), labels=np.zeros(4))
    seen = {}

    def fake(feature, **kw):
        seen.update(kw)
        raise CodepriorError("stop here")

    monkeypatch.setattr(metrics, "make_extractor", fake)
    assert main(["evaluate", str(run / "sample-token" / "samples.npz")]) == 2
    assert seen["classifier"] == str(run / "classifier" / "classifier.pt")
    assert "using the run's classifier" in capsys.readouterr().err
    np.savez(tmp_path / "loose.npz", arr_0=np.zeros((4, 28, 28, 1), np.uint8))
    assert main(["evaluate", str(tmp_path / "loose.npz")]) == 2
    assert seen["classifier"] is None
    assert "trained now on its train split if missing" in capsys.readouterr().err


def test_refine_model_of_another_prior_is_refused(world, tmp_path, capsys):
    h = sha256_tensor(_vq(0).quantize.embedding.weight)
    Prior(torch.arange(N) // 4, {"codebook_sha256": h}).save(tmp_path / "prior_c.safetensors")  # k = 4, other split
    assert (
        main(
            [
                "train-refine",
                "--codes",
                str(world / "codes"),
                "--prior",
                str(tmp_path / "prior_c.safetensors"),
                "--max-steps",
                "1",
                "--global-batch",
                "4",
                "--no-tensorboard",
                "--no-progress",
                "--device",
                "cpu",
                "--model-override",
                "dim=32",
                "--model-override",
                "n_layer=1",
                "--model-override",
                "n_head=2",
                "--out",
                str(tmp_path / "refine"),
            ]
        )
        == 0
    )
    line = _fail(
        capsys,
        [
            "sample",
            "--ckpt",
            str(world / "coarse" / "model.pt"),
            "--refine",
            str(tmp_path / "refine" / "model.pt"),
            "--tokenizer",
            str(world / "vq_a.pt"),
            "--num-samples",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "s"),
        ],
        "refine model uses another prior than",
    )
    assert "coarse/model.pt" in line
    assert not (tmp_path / "s").exists()
