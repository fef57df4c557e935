import numpy as np
import pytest
import torch

from codeprior.errors import CodepriorError
from codeprior.priors.balanced_kmeans import balanced_assign, balanced_kmeans_labels
from codeprior.priors.extract import extract
from codeprior.priors.kmeans import _fix_empty_clusters


def _groups(X):
    _, g = np.unique(np.asarray(X), axis=0, return_inverse=True)
    return g.ravel()


# ---------------------------------------------------------------- k-means
def test_kmeans_deterministic_and_seed_dependent():
    cb = torch.randn(400, 8)
    a = extract(cb, "kmeans", 20, seed=1, progress=False).token_to_cluster
    b = extract(cb, "kmeans", 20, seed=1, progress=False).token_to_cluster
    c = extract(cb, "kmeans", 20, seed=2, progress=False).token_to_cluster
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_kmeans_is_a_lloyd_fixed_point():
    cb = torch.randn(300, 4)
    p = extract(cb, "kmeans", 12, normalize=False, progress=False)
    X = cb.double().numpy()
    lab = p.token_to_cluster.numpy()
    centres = np.stack([X[lab == c].mean(0) for c in range(12)])
    nearest = ((X[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(nearest, lab)  # converged: every code is with its nearest centre
    assert p.metadata["backend"]["converged"]


def test_kmeans_all_clusters_used_with_duplicates():
    base = torch.randn(40, 3)
    cb = torch.cat([base, base[:30], base[:10]])[torch.randperm(80)]
    p = extract(cb, "kmeans", 40, progress=False)  # k == number of distinct rows
    assert p.k == 40 and int(p.cluster_sizes().min()) >= 1
    lab, g = p.token_to_cluster.numpy(), _groups(cb.numpy())
    for grp in np.unique(g):
        assert len(np.unique(lab[g == grp])) == 1
    with pytest.raises(CodepriorError, match="distinct codes"):
        extract(cb, "kmeans", 41, progress=False)


def test_fix_empty_clusters_moves_whole_duplicate_groups():
    X = np.array([[0.0, 0], [0, 0], [0.1, 0], [5, 5], [5, 5], [9, 9]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    centres = np.array([[0.0, 0], [6, 6], [100, 100]])
    fixed, moved = _fix_empty_clusters(X, labels, centres.copy(), 3)
    assert moved == 1 and sorted(np.bincount(fixed, minlength=3)) == [1, 2, 3]
    assert fixed[5] == 2  # the farthest code of a cluster with two groups moves
    assert fixed[3] == fixed[4]


# ---------------------------------------------------------------- balanced k-means
def _reference_greedy(D, cap):
    """Plain sequential rule: visit by distance to the nearest centre; take the nearest centre with room."""
    n, k = D.shape
    room = [cap] * k
    out = np.empty(n, dtype=np.int64)
    for p in sorted(range(n), key=lambda i: (D[i].min(), i)):
        best = None
        for c in range(k):
            if room[c] > 0 and (best is None or D[p, c] < D[p, best]):
                best = c
        out[p] = best
        room[best] -= 1
    return out


def test_balanced_assign_matches_sequential_rule():
    rng = np.random.default_rng(0)
    for trial in range(150):
        k = int(rng.integers(1, 9))
        m = int(rng.integers(1, 9))
        n = k * m
        if trial % 3 == 0:
            D = rng.integers(0, 3, size=(n, k)).astype(np.float64)  # many ties
        elif trial % 3 == 1:
            D = rng.random((n, k)) ** 3
        else:  # everyone prefers centre 0: long fallback chains
            D = rng.random((n, k)) + np.arange(k)[None] * 2.0
        assert np.array_equal(balanced_assign(D, m), _reference_greedy(D, m)), trial


def test_balanced_assign_uneven_capacity_vector():
    rng = np.random.default_rng(1)
    D = rng.random((30, 4))
    cap = np.array([2, 10, 8, 12])
    lab = balanced_assign(D, cap)
    assert (np.bincount(lab, minlength=4) <= cap).all()
    with pytest.raises(ValueError):
        balanced_assign(D, 5)


def test_balanced_sizes_exact_and_deterministic():
    cb = torch.randn(512, 8) * torch.linspace(0.2, 2, 8)
    a = extract(cb, "balanced-kmeans", 16, seed=3, progress=False)
    b = extract(cb, "balanced-kmeans", 16, seed=3, progress=False)
    assert torch.equal(a.token_to_cluster, b.token_to_cluster)
    assert a.cluster_sizes().tolist() == [32] * 16
    c = extract(cb, "balanced-kmeans", 16, seed=4, progress=False)
    assert not torch.equal(a.token_to_cluster, c.token_to_cluster)


def test_balanced_is_a_fixed_point_of_its_own_iteration():
    X = np.random.default_rng(2).standard_normal((96, 3))
    lab, info = balanced_kmeans_labels(X, 8, seed=0, progress=False)
    assert info["converged"]
    centres = np.stack([X[lab == c].mean(0) for c in range(8)])
    D = ((X[:, None] - centres[None]) ** 2).sum(-1)
    assert np.array_equal(balanced_assign(D, 12), lab)


def test_balanced_duplicates_no_crash_and_kept_together():
    base = torch.randn(60, 4)
    cb = torch.cat([base, base[:4]])  # 64 rows, 4 duplicated pairs
    p = extract(cb, "balanced-kmeans", 8, progress=False)
    assert p.cluster_sizes().tolist() == [8] * 8
    lab = p.token_to_cluster
    # duplicates are visited together and share a centre unless it fills between them: check most agree
    assert sum(int(lab[i] == lab[60 + i]) for i in range(4)) >= 3


def test_balanced_rejects_uneven_k():
    with pytest.raises(CodepriorError, match="divide"):
        extract(torch.randn(30, 2), "balanced-kmeans", 7, progress=False)
