"""Substitution test and tokenizer evaluation, with a tiny deterministic stand-in tokenizer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from codeprior.errors import CodepriorError
from codeprior.evaluate.classifier import Classifier, ClassifierConfig, LoadedClassifier
from codeprior.evaluate.features import ClassifierFeatures
from codeprior.evaluate.substitution import (
    ClusterSampler,
    format_substitution_table,
    substitute_codes,
    substitution_test,
)
from codeprior.evaluate.tokenizer_eval import evaluate_tokenizer, to_uint8


class LevelVQ(torch.nn.Module):
    """Stand-in tokenizer: 4x4 average pooling quantised to ``levels`` grey levels (code = level index).

    Codes close in index decode to close intensities, so a prior grouping neighbouring codes must
    score better in the substitution test than one grouping far-apart codes.
    """

    def __init__(self, levels: int = 16) -> None:
        super().__init__()
        self.config = SimpleNamespace(codebook_size=levels, in_channels=1)
        self.values = torch.linspace(-1, 1, levels)

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, 4)[:, 0]
        return (pooled[..., None] - self.values).abs().argmin(-1)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.values[codes][:, None], scale_factor=4, mode="nearest")


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    cfg = ClassifierConfig(widths=(8, 16), feature_dim=32)
    model = Classifier(cfg).eval()  # untrained: random conv features still separate image sets
    return ClassifierFeatures(LoadedClassifier(model, None, float("nan"), "synthetic", "-", cfg.sha256()))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    # smooth blobs so 4x4 pooling keeps most of the structure
    base = torch.rand(200, 1, 7, 7, generator=g)
    return (
        (F.interpolate(base, size=28, mode="bilinear", align_corners=False)[:, 0] * 255).round().to(torch.uint8).numpy()
    )


def test_sampler_stays_in_cluster_and_is_uniform():
    t2c = torch.tensor([0, 1, 0, 2, 1, 0, 3])  # cluster 0 = {0, 2, 5}, 1 = {1, 4}, 2 = {3}, 3 = {6}
    s = ClusterSampler(t2c)
    codes = torch.zeros(30000, dtype=torch.long)  # all code 0
    out = s(codes, torch.Generator().manual_seed(0))
    counts = torch.bincount(out, minlength=7)
    assert set(out.unique().tolist()) == {0, 2, 5}
    assert ((counts[[0, 2, 5]].float() / 30000 - 1 / 3).abs() < 0.015).all()
    all_codes = torch.arange(7).repeat(100)
    sub = s(all_codes, torch.Generator().manual_seed(1))
    assert torch.equal(t2c[sub], t2c[all_codes])  # cluster preserved everywhere
    assert torch.equal(sub[all_codes == 3], all_codes[all_codes == 3])  # singletons never change
    again = substitute_codes(all_codes, t2c, torch.Generator().manual_seed(1))
    assert torch.equal(sub, again)  # seeded: reproducible


def test_sampler_rejects_out_of_range_codes():
    with pytest.raises(CodepriorError):
        ClusterSampler(torch.tensor([0, 0, 1]))(torch.tensor([3]))


def test_identity_prior_changes_nothing(extractor, images):
    vq = LevelVQ()
    r = substitution_test(vq, torch.arange(16), images, extractor, draws=2)
    assert r["changed_share"]["mean"] == 0.0
    assert r["mse_vs_recon"]["mean"] == 0.0
    assert abs(r["fid_vs_recon"]["mean"]) < 1e-6
    assert r["fid_vs_originals"]["mean"] == pytest.approx(r["baseline_rfid"], abs=1e-6)


def test_neighbouring_clusters_beat_scattered_clusters(extractor, images):
    vq = LevelVQ()
    near = torch.arange(16) // 2  # {0,1}, {2,3}, ...: similar intensities
    far = torch.arange(16) % 8  # {0,8}, {1,9}, ...: opposite intensities
    r_near = substitution_test(vq, near, images, extractor, draws=3, seed=0)
    r_far = substitution_test(vq, far, images, extractor, draws=3, seed=0)
    assert 0 < r_near["mse_vs_recon"]["mean"] < r_far["mse_vs_recon"]["mean"] / 10
    assert r_near["fid_vs_recon"]["mean"] < r_far["fid_vs_recon"]["mean"]
    assert len(r_near["fid_vs_recon"]["draws"]) == 3 and r_near["fid_vs_recon"]["std"] >= 0
    # expected MSE for pairs {2i, 2i+1}: each code changes with prob 1/2 by one level step
    step = 2 / 15 / 2  # one level in [0, 1] units
    assert r_near["mse_vs_recon"]["mean"] == pytest.approx(0.5 * step**2, rel=0.1)
    table = format_substitution_table([("near", r_near), ("far", r_far)])
    assert "near" in table and "far" in table


def test_substitution_rejects_prior_of_other_codebook(extractor, images):
    with pytest.raises(CodepriorError, match="codebook"):
        substitution_test(LevelVQ(16), torch.arange(8), images, extractor, draws=1)


def test_evaluate_tokenizer_numbers(extractor, images):
    vq = LevelVQ()
    labels = np.zeros(len(images), dtype=np.int64)
    r = evaluate_tokenizer(vq, images, labels, extractor)
    x = torch.from_numpy(images).float()[:, None] / 127.5 - 1
    recon = vq.decode_codes(vq.encode_codes(x))
    expected = ((recon - x) / 2).pow(2).mean().item()
    assert r["mse"] == pytest.approx(expected, rel=1e-5)
    assert r["psnr"] > 10 and r["rfid"] > 0
    assert r["codebook_size"] == 16 and 0 < r["codebook_usage"] <= 1
    assert 0 <= r["accuracy_reconstructions"] <= 1 and r["grid"] == [7, 7]


def test_evaluate_tokenizer_perfect_tokenizer(extractor, images):
    class Identity(LevelVQ):
        def encode_codes(self, x):
            return ((x + 1) * 127.5).round().long()[:, 0]

        def decode_codes(self, codes):
            return (codes.float() / 127.5 - 1)[:, None]

    vq = Identity(256)
    r = evaluate_tokenizer(vq, images, None, extractor)
    assert r["mse"] < 1e-10 and abs(r["rfid"]) < 1e-6 and r["prediction_agreement"] == 1.0
    assert torch.equal(to_uint8(torch.from_numpy(images).float()[:, None] / 127.5 - 1)[:, 0], torch.from_numpy(images))


def test_cli_prior_substitute(tmp_path, extractor, monkeypatch, capsys):
    """End to end through `codeprior prior substitute` with a tiny real VQModel checkpoint and two priors."""
    vqmod = pytest.importorskip("codeprior.models.vq")
    from codeprior.cli import main
    from codeprior.evaluate.classifier import save_classifier, train_classifier
    from codeprior.models import save_vq
    from codeprior.priors.prior import Prior
    from codeprior.utils.io import sha256_tensor

    try:
        from codeprior.data.images import load_idx

        load_idx("fashion-mnist", "test")
    except Exception as e:
        pytest.skip(f"Fashion-MNIST not available: {e}")
    cfg = vqmod.VQConfig(
        codebook_size=32,
        codebook_embed_dim=4,
        ch=8,
        ch_mult=[1, 2, 2],
        z_channels=8,
        num_res_blocks=1,
        in_channels=1,
        norm_groups=4,
        image_size=28,
    )
    torch.manual_seed(0)
    vq = vqmod.VQModel(cfg).eval()
    vq_path = tmp_path / "vq.pt"
    save_vq(vq, vq_path)
    cb = vq.quantize.embedding.weight.detach()
    meta = {"codebook_sha256": sha256_tensor(cb), "method": "test"}
    Prior(torch.arange(32) // 2, dict(meta)).save(tmp_path / "pairs.safetensors")
    Prior(torch.arange(32) // 8, dict(meta)).save(tmp_path / "quads.safetensors")
    # a tiny classifier checkpoint (a few steps on random data: the CLI only needs a valid file)
    g = np.random.default_rng(0)
    x = g.integers(0, 256, (64, 28, 28), dtype=np.uint8)
    y = np.arange(64) % 10
    _, ck = train_classifier(x, y, x, y, ClassifierConfig(widths=(4, 8), feature_dim=16, max_steps=2, epochs=1))
    save_classifier(ck, tmp_path / "clf.pt")
    out = tmp_path / "sub.json"
    rc = main(
        [
            "prior",
            "substitute",
            str(tmp_path / "pairs.safetensors"),
            str(tmp_path / "quads.safetensors"),
            "--tokenizer",
            str(vq_path),
            "--num-images",
            "40",
            "--draws",
            "2",
            "--classifier",
            str(tmp_path / "clf.pt"),
            "--json",
            str(out),
            "--batch-size",
            "20",
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert [p["name"] for p in res["priors"]] == ["pairs", "quads"]
    assert all(len(p["mse_vs_recon"]["draws"]) == 2 for p in res["priors"])
    assert res["priors"][0]["k"] == 16 and res["priors"][1]["k"] == 4
    printed = capsys.readouterr().out
    assert "FID vs recon" in printed
    # a prior from another codebook is refused with a one-line error
    Prior(torch.arange(32) // 2, {"codebook_sha256": "0" * 64}).save(tmp_path / "other.safetensors")
    assert (
        main(
            [
                "prior",
                "substitute",
                str(tmp_path / "other.safetensors"),
                "--tokenizer",
                str(vq_path),
                "--classifier",
                str(tmp_path / "clf.pt"),
            ]
        )
        == 2
    )


def test_shared_reference_gives_the_same_numbers_and_is_computed_once(extractor, images, monkeypatch):
    from codeprior.evaluate import substitution as S

    vq = LevelVQ()
    near = torch.arange(16) // 2
    alone = substitution_test(vq, near, images, extractor, draws=2, seed=3)
    calls = []
    real = S.encode_images
    monkeypatch.setattr(S, "encode_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    ref = S.substitution_reference(vq, images, extractor)
    shared = [
        substitution_test(vq, p, images, extractor, draws=2, seed=3, reference=ref)
        for p in (near, torch.arange(16) % 8)
    ]
    assert len(calls) == 1  # the images were encoded once for both priors
    for key in ("fid_vs_recon", "mse_vs_recon", "fid_vs_originals", "changed_share"):
        assert shared[0][key]["draws"] == pytest.approx(alone[key]["draws"], rel=1e-9, abs=1e-12)
    assert shared[0]["baseline_rfid"] == pytest.approx(alone["baseline_rfid"])
    with pytest.raises(CodepriorError, match="other images"):
        substitution_test(vq, near, images[:5], extractor, draws=1, reference=ref)
