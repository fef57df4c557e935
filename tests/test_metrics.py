"""Metrics: equivalence with independent references on synthetic features, and sanity on real images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from codeprior.errors import CodepriorError
from codeprior.evaluate.classifier import ClassifierConfig, save_classifier, train_classifier
from codeprior.evaluate.features import ClassifierFeatures
from codeprior.evaluate.metrics import (
    class_match_rate,
    evaluate_images,
    fid_from_features,
    format_table,
    inception_score_from_logits,
    kid_from_features,
    load_samples_npz,
    prdc_from_features,
)

# ------------------------------------------------------------------------------------------ references


def _fid_reference(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _mmd_poly_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    m = len(x)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    )


# ------------------------------------------------------------------------------------------ synthetic


def test_fid_matches_scipy_reference():
    g = np.random.default_rng(0)
    a = g.normal(size=(400, 8))
    b = g.normal(size=(300, 8)) @ g.normal(size=(8, 8)) * 0.5 + 0.3
    ours = fid_from_features(torch.from_numpy(a), torch.from_numpy(b))
    assert ours == pytest.approx(_fid_reference(a, b), rel=1e-6, abs=1e-8)


def test_fid_zero_for_identical_and_mean_shift_exact():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(500, 6, generator=g, dtype=torch.float64)
    assert abs(fid_from_features(a, a)) < 1e-6
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0], dtype=torch.float64)
    assert fid_from_features(a, a + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-6)


def test_kid_matches_unbiased_mmd_and_sign():
    g = np.random.default_rng(0)
    x = g.normal(size=(200, 5))
    y = g.normal(size=(200, 5)) + 0.5
    mean, std = kid_from_features(torch.from_numpy(x), torch.from_numpy(y), subsets=1, subset_size=200)
    # one subset of the whole set is a permutation, and MMD^2 is permutation invariant
    assert mean == pytest.approx(_mmd_poly_unbiased(x, y), rel=1e-6)
    assert std == 0.0
    same_mean, _ = kid_from_features(
        torch.from_numpy(x), torch.from_numpy(g.normal(size=(200, 5))), subsets=20, subset_size=100
    )
    assert abs(same_mean) < 0.1 * mean  # same distribution: ~0 (unbiased: may be slightly negative)
    far_mean, _ = kid_from_features(torch.from_numpy(x), torch.from_numpy(y + 1.5), subsets=20, subset_size=100)
    assert far_mean > mean > 0


def test_kid_reproducible_and_leaves_global_rng_alone():
    a, b = torch.randn(300, 4), torch.randn(300, 4) + 0.2
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    r1 = kid_from_features(a, b, subsets=10, subset_size=50, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert kid_from_features(a, b, subsets=10, subset_size=50, seed=7) == r1
    assert kid_from_features(a, b, subsets=10, subset_size=50, seed=8) != r1


def test_inception_score_bounds():
    k = 10
    confident = torch.full((1000, k), -20.0)
    confident[torch.arange(1000), torch.arange(1000) % k] = 20.0
    assert inception_score_from_logits(confident, splits=1)[0] == pytest.approx(k, rel=1e-3)
    assert 9.0 < inception_score_from_logits(confident, splits=5)[0] <= k  # splits see uneven class shares
    assert inception_score_from_logits(torch.zeros(1000, k), splits=5)[0] == pytest.approx(1.0, abs=1e-6)
    single_class = torch.zeros(1000, k)
    single_class[:, 3] = 20.0
    assert inception_score_from_logits(single_class, splits=5)[0] == pytest.approx(1.0, abs=1e-3)


def test_inception_score_matches_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(600, 7, generator=g, dtype=torch.float64) * 2
    p = logits.softmax(1)
    ref = math.exp(float((p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean()))
    assert inception_score_from_logits(logits, splits=1)[0] == pytest.approx(ref, rel=1e-6)


def test_prdc_identical_and_disjoint():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 4, generator=g)
    same = prdc_from_features(a, a.clone(), nearest_k=5)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = prdc_from_features(a, a + 100.0, nearest_k=5)
    assert far["precision"] == 0.0 and far["recall"] == 0.0 and far["coverage"] == 0.0 and far["density"] == 0.0


def test_prdc_subsamples_to_max():
    a, b = torch.randn(500, 3), torch.randn(400, 3)
    r1 = prdc_from_features(a, b, max_samples=100, seed=0)
    r2 = prdc_from_features(a, b, max_samples=100, seed=0)
    assert r1 == r2 and 0.0 < r1["precision"] <= 1.0


def test_class_match_rate():
    logits = torch.eye(4)[[0, 1, 2, 3, 0]]
    assert class_match_rate(logits, np.array([0, 1, 2, 0, 0])) == pytest.approx(0.8)
    with pytest.raises(CodepriorError):
        class_match_rate(logits, np.array([0, 1]))


def test_bad_feature_shapes():
    with pytest.raises(CodepriorError):
        fid_from_features(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(CodepriorError):
        fid_from_features(torch.randn(1, 3), torch.randn(10, 3))


# ------------------------------------------------------------------------------------------ real images


def _fmnist():
    pytest.importorskip("codeprior.data.images")
    from codeprior.data.images import load_idx

    try:
        return load_idx("fashion-mnist", "train"), load_idx("fashion-mnist", "test")
    except CodepriorError as e:
        pytest.skip(f"Fashion-MNIST not available: {e}")


@pytest.fixture(scope="session")
def fmnist():
    return _fmnist()


@pytest.fixture(scope="session")
def tiny_classifier(fmnist, tmp_path_factory):
    """A small classifier trained for a few hundred steps on a subset (keeps the tests fast)."""
    (xtr, ytr), (xte, yte) = fmnist
    cfg = ClassifierConfig(
        widths=(8, 16, 32), feature_dim=64, epochs=1, max_steps=150, batch_size=32, max_train=4800, lr=5e-3
    )
    model, ckpt = train_classifier(xtr, ytr, xte[:2000], yte[:2000], cfg, dataset="fashion-mnist")
    path = tmp_path_factory.mktemp("clf") / "tiny.pt"
    save_classifier(ckpt, path)
    return path, ckpt


@pytest.fixture(scope="session")
def extractor(tiny_classifier):
    from codeprior.evaluate.classifier import load_classifier

    return ClassifierFeatures(load_classifier(tiny_classifier[0]))


def test_tiny_classifier_learns(tiny_classifier):
    assert tiny_classifier[1]["test_accuracy"] > 0.6  # chance is 0.10


def test_fid_train_vs_test_small_noise_large(fmnist, extractor):
    (xtr, _), (xte, _) = fmnist
    f_tr, _ = extractor.extract(xtr[:2000])
    f_te, _ = extractor.extract(xte[:2000])
    g = np.random.default_rng(0)
    noise = g.integers(0, 256, size=(2000, 28, 28), dtype=np.uint8)
    f_noise, _ = extractor.extract(noise)
    real = fid_from_features(f_te, f_tr)
    fake = fid_from_features(f_te, f_noise)
    assert real >= 0 and fake > 50 * real


def test_fid_monotone_in_noise_and_kid_scale(fmnist, extractor):
    (_, _), (xte, _) = fmnist
    f_ref, _ = extractor.extract(xte[:1500])
    clean = xte[1500:3000].astype(np.float32)
    g = np.random.default_rng(0)
    eps = g.normal(size=clean.shape).astype(np.float32)
    fids, kids = [], []
    for sigma in (0, 16, 32, 64, 128):
        noisy = np.clip(clean + sigma * eps, 0, 255).round().astype(np.uint8)
        f, _ = extractor.extract(noisy)
        fids.append(fid_from_features(f_ref, f))
        kids.append(kid_from_features(f_ref, f, subsets=20, subset_size=500)[0])
    assert all(b > a for a, b in zip(fids, fids[1:])), fids
    assert all(b > a for a, b in zip(kids[1:], kids[2:])), kids
    assert abs(kids[0]) < 0.05 * kids[-1]  # same distribution: near zero, noise: clearly positive
    assert kids[-1] > 0


def _samples(fmnist, n=600):
    (_, _), (xte, yte) = fmnist
    return xte[-n:], yte[-n:]


def test_evaluate_images_layouts_and_fields(fmnist, extractor):
    imgs, labels = _samples(fmnist)
    ref = fmnist[1][0][:600]
    kw = dict(reference=ref, feature=extractor, kid_subsets=5, kid_subset_size=200, seed=0)
    r = evaluate_images(imgs[..., None], labels, **kw)  # NHWC
    r2 = evaluate_images(imgs[:, None], labels, **kw)  # NCHW
    for k in ("fid", "kid_mean", "is_mean", "precision", "recall", "density", "coverage", "class_match"):
        assert r[k] == pytest.approx(r2[k]), k
    fe = r["feature_extractor"]
    assert fe["name"] == "classifier" and 0.6 < fe["test_accuracy"] <= 1 and fe["num_features"] == 64
    assert r["class_match"] > 0.55
    assert r["num_samples"] == 600 and r["num_reference"] == 600
    table = format_table(r)
    assert "test accuracy" in table and "fid" in table
    # shuffled labels: class match drops towards chance
    r3 = evaluate_images(imgs, np.roll(labels, 1), **kw)
    assert r3["class_match"] < 0.3


def test_load_samples_npz_errors(tmp_path):
    good = tmp_path / "s.npz"
    np.savez(good, arr_0=np.zeros((4, 28, 28, 1), np.uint8), labels=np.arange(4))
    imgs, labels = load_samples_npz(good)
    assert imgs.shape == (4, 28, 28, 1) and labels.tolist() == [0, 1, 2, 3]
    bad = tmp_path / "b.npz"
    np.savez(bad, images=np.zeros((4, 28, 28, 1), np.uint8))
    with pytest.raises(CodepriorError, match="arr_0"):
        load_samples_npz(bad)
    np.savez(bad, arr_0=np.zeros((4, 28, 28, 1), np.float32))
    with pytest.raises(CodepriorError, match="uint8"):
        load_samples_npz(bad)
    np.savez(bad, arr_0=np.zeros((4, 28, 28, 1), np.uint8), labels=np.arange(3))
    with pytest.raises(CodepriorError, match="labels"):
        load_samples_npz(bad)
    with pytest.raises(CodepriorError, match="no such file"):
        load_samples_npz(tmp_path / "missing.npz")


def test_cli_evaluate(fmnist, tiny_classifier, tmp_path, capsys):
    from codeprior.cli import main

    imgs, labels = _samples(fmnist, 300)
    samples, ref = tmp_path / "samples.npz", tmp_path / "ref.npz"
    np.savez(samples, arr_0=imgs[..., None], labels=labels)
    np.savez(ref, arr_0=fmnist[1][0][:300, :, :, None])
    out = tmp_path / "m.json"
    rc = main(
        [
            "evaluate",
            str(samples),
            "--reference",
            str(ref),
            "--classifier",
            str(tiny_classifier[0]),
            "--json",
            str(out),
            "--kid-subsets",
            "3",
            "--kid-subset-size",
            "100",
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["feature_extractor"]["test_accuracy"] == pytest.approx(tiny_classifier[1]["test_accuracy"])
    assert res["fid"] >= 0 and "class_match" in res and res["reference"] == str(ref)
    assert "test accuracy" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "nope.npz"), "--classifier", str(tiny_classifier[0])]) == 2


def test_inception_weights_missing_is_a_clean_error(tmp_path, capsys):
    from codeprior.cli import main
    from codeprior.evaluate.inception import InceptionFeatures

    with pytest.raises(CodepriorError, match="no such file"):
        InceptionFeatures(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    samples = tmp_path / "s.npz"
    np.savez(samples, arr_0=np.zeros((4, 28, 28, 1), np.uint8))
    rc = main(["evaluate", str(samples), "--inception-weights", str(tmp_path / "missing.pth")])
    assert rc == 2
    assert "missing.pth" in capsys.readouterr().err
