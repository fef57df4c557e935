"""Exactness of the split backend (components below a certified height) against scipy's average linkage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import pdist, squareform

import codeprior.priors.dcpe_split as split
from codeprior.priors.dcpe import cut_exact, dcpe_labels
from codeprior.priors.quality import same_partition
from codeprior.priors.synthetic import mixed_density_codebook


def scipy_cut(X: np.ndarray, k: int) -> np.ndarray:
    return cut_exact(linkage(X, "average"), len(X), k)


def mixed(n: int, d: int, seed: int, normalize: bool = True) -> np.ndarray:
    X = mixed_density_codebook(n, d, seed, n_blobs=12, dup_frac=0.03)
    return X / np.linalg.norm(X, axis=1, keepdims=True) if normalize else X


@pytest.mark.parametrize(
    "n,d,rate,seed",
    [(300, 8, 2, 0), (1200, 8, 2, 1), (1200, 8, 8, 2), (2500, 8, 2, 3), (900, 4, 16, 4), (700, 3, 4, 5)],
)
def test_matches_scipy_low_dim(n: int, d: int, rate: int, seed: int) -> None:
    X = mixed(n, d, seed)
    stats: dict = {}
    got = split.split_average_linkage(X, n // rate, workers=1, stats=stats)
    assert stats["range_search"] == "k-d tree"
    assert same_partition(scipy_cut(X, n // rate), got)
    assert len(np.unique(got)) == n // rate


@pytest.mark.parametrize("n,d,rate,seed", [(600, 32, 2, 0), (1000, 64, 4, 1), (500, 256, 2, 2), (800, 48, 16, 3)])
def test_matches_scipy_high_dim_matmul_search(n: int, d: int, rate: int, seed: int) -> None:
    X = mixed(n, d, seed, normalize=seed % 2 == 0)  # raw rows too: norms differ, so does the error bound
    stats: dict = {}
    got = split.split_average_linkage(X, n // rate, workers=1, stats=stats)
    assert stats["range_search"] == "blocked float32 matmul"
    assert same_partition(scipy_cut(X, n // rate), got)


@pytest.mark.parametrize("d", [8, 64])
def test_search_finds_every_pair_within_the_radius(d: int) -> None:
    X = mixed(700, d, 6, normalize=False)
    D = squareform(pdist(X))
    R = float(np.quantile(D[np.triu_indices(700, 1)], 0.02))
    tree = None
    if d < split.HIGH_DIM:
        from scipy.spatial import cKDTree

        tree = cKDTree(X)
    a, b, v = split._pairs_within(X, R, tree, 10**9)
    assert (a < b).all()
    found = set(zip(a.tolist(), b.tolist()))
    i, j = np.nonzero(np.triu(D <= R, 1))
    assert set(zip(i.tolist(), j.tolist())) <= found  # a superset of the true pairs
    # the edge value never exceeds the true distance (so an edge test at r <= R misses no pair)
    assert (v <= D[a, b]).all()


def test_several_rounds_reuse_components_and_stay_exact(monkeypatch) -> None:
    monkeypatch.setattr(split, "_START", 0.3)  # far below the cut: the height must grow over several rounds
    X = mixed(1500, 8, 7)
    stats: dict = {}
    got = split.split_average_linkage(X, 500, workers=1, stats=stats)
    assert stats["rounds"] >= 3
    assert same_partition(scipy_cut(X, 500), got)


def test_process_pool_gives_the_serial_partition(monkeypatch) -> None:
    X = mixed(1500, 8, 8)
    serial = split.split_average_linkage(X, 300, workers=1)
    monkeypatch.setattr(split, "_POOL_MIN_PAIRS", 0)  # use the pool even for this small codebook
    pooled = split.split_average_linkage(X, 300, workers=2)
    assert np.array_equal(serial, pooled)
    assert same_partition(scipy_cut(X, 300), pooled)


def test_duplicates_and_cut_among_zero_height_merges() -> None:
    rng = np.random.default_rng(9)
    base = rng.standard_normal((200, 8))
    X = np.concatenate([base, base[:60], base[:20]])[rng.permutation(280)]
    for k in (100, 200, 230, 280):  # 200 distinct rows: k=230 cuts among the zero-height merges
        got = split.split_average_linkage(X, k, workers=1)
        assert len(np.unique(got)) == k
        if k <= 200:
            assert same_partition(scipy_cut(X, k), got)
        _, group = np.unique(X, axis=0, return_inverse=True)
        if k <= 200:  # identical rows end together once every zero-height merge is done
            for g in np.unique(group):
                assert len(np.unique(got[group.ravel() == g])) == 1


def test_far_apart_groups_and_trivial_k() -> None:
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.standard_normal((40, 3)) * 0.1 + 100 * i for i in range(5)])
    for k in (1, 2, 3, 5, 7, 200):
        assert same_partition(scipy_cut(X, k), split.split_average_linkage(X, k, workers=1))


def test_large_components_use_the_sparse_algorithm(monkeypatch) -> None:
    X = mixed(2400, 8, 10)
    stats: dict = {}
    got = split.split_average_linkage(X, 300, workers=1, max_pairs=2000, stats=stats)  # components > 64 codes
    assert stats["sparse_components"] > 0
    assert same_partition(scipy_cut(X, 300), got)
    monkeypatch.setattr(split, "_POOL_MIN_PAIRS", 0)  # the same through the process pool
    assert np.array_equal(got, split.split_average_linkage(X, 300, workers=2, max_pairs=2000))


def test_sparse_merges_below_are_scipys_first_merges() -> None:
    from codeprior.priors.dcpe_sparse import sparse_merges_below

    rng = np.random.default_rng(12)
    base = rng.standard_normal((150, 5))
    X = np.concatenate([base, base[:30], base[:5]])
    Z = linkage(X, "average")
    height = float(Z[120, 2])
    h, ra, rb = sparse_merges_below(X, height)
    assert len(h) == int((Z[:, 2] <= height).sum())  # every merge up to the height, no more
    assert np.allclose(h, Z[: len(h), 2], rtol=1e-12, atol=0)  # in order, at scipy's heights
    assert (h[:35] == 0).all()  # the 35 extra copies first, at height 0
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _, lab = connected_components(coo_matrix((np.ones(len(h)), (ra, rb)), shape=(len(X), len(X))), directed=False)
    assert same_partition(cut_exact(Z, len(X), len(X) - len(h)), lab)


def test_too_large_in_high_dimension_falls_back(monkeypatch) -> None:
    X = mixed(900, 32, 10)
    with pytest.raises(split.TooLarge):
        split.split_average_linkage(X, 100, workers=1, max_pairs=100)
    monkeypatch.setenv("CODEPRIOR_DCPE_MAX_BYTES", "20000")  # components of ~50 codes at most
    lab, info = dcpe_labels(X, 100, progress=False)
    assert info["backend"] == "sparse" and "split" in info["reason"] and "split_fallback" in info
    assert same_partition(scipy_cut(X, 100), lab)


def test_auto_takes_split_beyond_small_codebooks() -> None:
    X = mixed(2600, 8, 11)
    lab, info = dcpe_labels(X, 1300, progress=False)
    assert info["backend"] == "split" and info["split"]["largest_component"] < 2600
    full, _ = dcpe_labels(X, 1300, backend="full", progress=False)
    assert np.array_equal(lab, full)  # both numbered by first appearance
