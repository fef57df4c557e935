import sys
import types

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.metrics import adjusted_rand_score

from codeprior.errors import CodepriorError
from codeprior.priors.dcpe import choose_backend, cut_exact, dcpe_labels
from codeprior.priors.extract import extract, geometry
from codeprior.priors.quality import same_partition


def _codebooks():
    rng = np.random.default_rng(0)
    iso = rng.standard_normal((300, 8))
    aniso = rng.standard_normal((400, 8)) * np.linspace(0.1, 3, 8)
    # dense blob + sparse halo
    blobs = np.concatenate([rng.standard_normal((250, 4)) * 0.05, rng.standard_normal((150, 4)) * 2 + 3])
    dup = rng.standard_normal((200, 6))
    dup = np.concatenate([dup, dup[:40], dup[:10]])  # duplicate rows, some three times
    return {"iso": iso, "aniso": aniso, "blobs": blobs, "dup": dup[rng.permutation(len(dup))]}


@pytest.mark.parametrize("name", ["iso", "aniso", "blobs", "dup"])
@pytest.mark.parametrize("normalize", [True, False])
def test_identical_to_scipy(name, normalize):
    X = _codebooks()[name].astype(np.float32)  # codebooks are float32: the reference sees the same values
    n = len(X)
    distinct = len(np.unique(X, axis=0))
    ref_Z = linkage(geometry(X, normalize), "average")
    checked = 0
    for k in sorted({1, 2, 7, n // 4, n // 2, distinct}):
        ref = fcluster(ref_Z, k, "maxclust")
        if len(np.unique(ref)) != k:  # tied merge heights at this cut: scipy yields fewer than k
            continue
        got = extract(torch.from_numpy(X), "dcpe", k, normalize=normalize, progress=False).token_to_cluster.numpy()
        assert adjusted_rand_score(ref, got) == 1.0, (name, k)
        assert same_partition(ref, got)
        assert len(np.unique(got)) == k
        checked += 1
    assert checked >= 5


def test_duplicates_share_a_cluster():
    X = _codebooks()["dup"]
    distinct = len(np.unique(X, axis=0))
    for k in (5, distinct // 2, distinct):
        lab = extract(torch.tensor(X, dtype=torch.float32), "dcpe", k, progress=False).token_to_cluster.numpy()
        _, group = np.unique(X.astype(np.float32), axis=0, return_inverse=True)
        for g in np.unique(group):
            assert len(np.unique(lab[group.ravel() == g])) == 1


def test_k_above_distinct_rows_refused():
    X = torch.randn(10, 3)
    X = torch.cat([X, X])
    with pytest.raises(CodepriorError, match="distinct codes"):
        extract(X, "dcpe", 11, progress=False)


def test_tied_heights_still_exactly_k_clusters():
    # a square grid: the first 18 merges all happen at exactly height 1
    g = np.stack(np.meshgrid(np.arange(6.0), np.arange(6.0)), -1).reshape(-1, 2)
    Z = linkage(g, "average")
    k = 20
    coarse = fcluster(Z, k, "maxclust")
    assert len(np.unique(coarse)) == 18  # scipy's height cut cannot give 20 here
    lab, info = dcpe_labels(g, k, backend="full", progress=False)
    assert len(np.unique(lab)) == k and info["backend"] == "full"
    # we stop after exactly N - k of the tied merges: a refinement of scipy's cut, made of unit pairs
    for c in np.unique(lab):
        members = np.flatnonzero(lab == c)
        assert len(np.unique(coarse[members])) == 1
        assert len(members) <= 2
        if len(members) == 2:
            assert np.linalg.norm(g[members[0]] - g[members[1]]) == 1.0
    assert np.bincount(lab).tolist().count(2) == len(g) - k


def test_cut_exact_numbering_and_range():
    X = np.random.default_rng(3).standard_normal((50, 3))
    Z = linkage(X, "average")
    for k in (1, 13, 50):
        lab = cut_exact(Z, 50, k)
        assert lab[0] == 0 and set(lab.tolist()) == set(range(k))
        first = [int(np.flatnonzero(lab == c)[0]) for c in range(k)]
        assert first == sorted(first)  # numbered in order of first appearance
    with pytest.raises(CodepriorError):
        cut_exact(Z, 50, 51)


def test_backend_choice(monkeypatch):
    monkeypatch.setenv("CODEPRIOR_DCPE_MAX_BYTES", str(10**12))
    assert choose_backend(2048, 8)[0] == "full"  # small: the full matrix is quickest (measured)
    assert choose_backend(16384, 8)[0] == "split"  # beyond: the split backend, even when the matrix fits
    monkeypatch.setenv("CODEPRIOR_DCPE_MAX_BYTES", "1000")
    backend, reason = choose_backend(1000, 8)
    assert backend == "split" and "CODEPRIOR_DCPE_MAX_BYTES" in reason  # the matrix does not fit the budget
    assert choose_backend(16384, 8, "full")[0] == "full"
    assert choose_backend(16384, 8, "sparse")[0] == "sparse"
    monkeypatch.setenv("CODEPRIOR_DCPE_MAX_BYTES", "lots")
    with pytest.raises(CodepriorError, match="CODEPRIOR_DCPE_MAX_BYTES"):
        choose_backend(100, 8)


def test_auto_dispatches_to_sparse_module(monkeypatch):
    X = np.random.default_rng(1).standard_normal((40, 4))
    calls = {}

    def fake(X_, k, progress=True):  # stands in for the real sparse backend: returns scipy's answer renamed
        calls["args"] = (X_.shape, k, X_.dtype)
        return 100 - fcluster(linkage(X_, "average"), k, "maxclust").astype(np.int64)

    mod = types.ModuleType("codeprior.priors.dcpe_sparse")
    mod.sparse_average_linkage = fake
    monkeypatch.setitem(sys.modules, "codeprior.priors.dcpe_sparse", mod)
    monkeypatch.setenv("CODEPRIOR_DCPE_MAX_BYTES", "1")
    import codeprior.priors.dcpe_split as dcpe_split

    # the matrix-multiply search (as in high dimension), where split hands a too-large component over to sparse
    monkeypatch.setattr(dcpe_split, "HIGH_DIM", 1)
    lab, info = dcpe_labels(X, 6, progress=False)
    assert calls["args"] == ((40, 4), 6, np.float64)
    assert info["backend"] == "sparse" and "split: a component of" in info["reason"]  # handed over by split
    assert sorted(np.unique(lab)) == list(range(6)) and lab[0] == 0
    full, _ = dcpe_labels(X, 6, backend="full", progress=False)
    assert np.array_equal(lab, full)


def test_metadata_records_backend_and_hash():
    cb = torch.randn(30, 4)
    p = extract(cb, "dcpe", 5, normalize=False, progress=False, source="x.npy")
    m = p.metadata
    assert m["method"] == "dcpe" and m["k"] == 5 and m["normalize"] is False and m["source"] == "x.npy"
    assert m["backend"]["backend"] == "full" and m["seconds"] >= 0 and len(m["codebook_sha256"]) == 64
    p.check_codebook(cb)


def test_real_sparse_backend_agrees_with_full():
    pytest.importorskip("codeprior.priors.dcpe_sparse")
    X = _codebooks()["dup"].astype(np.float64)
    for k in (9, 60):
        sparse, info = dcpe_labels(X, k, backend="sparse", progress=False)
        full, _ = dcpe_labels(X, k, backend="full", progress=False)
        assert info["backend"] == "sparse"
        assert np.array_equal(sparse, full)  # both numbered by first appearance
