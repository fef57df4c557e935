"""Exactness of the sparse average linkage against scipy's full-matrix average linkage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import linkage
from sklearn.metrics import adjusted_rand_score

from codeprior.errors import CodepriorError
from codeprior.priors.dcpe import cut_exact
from codeprior.priors.dcpe_sparse import sparse_average_linkage
from codeprior.priors.quality import same_partition
from codeprior.priors.synthetic import mixed_density_codebook


def mixed_density(n: int, d: int, seed: int, dup_frac: float = 0.05) -> np.ndarray:
    """Six anisotropic Gaussian blobs whose scales differ by 100x (dense and sparse regions), with duplicate rows."""
    return mixed_density_codebook(n, d, seed, n_blobs=6, equal_sizes=True, dup_frac=dup_frac)


def scipy_cut(X: np.ndarray, k: int) -> np.ndarray:
    return cut_exact(linkage(X, "average"), len(X), k)


@pytest.mark.parametrize(
    "n,rate,seed", [(200, 2, 0), (600, 4, 1), (600, 16, 2), (1500, 2, 3), (3000, 2, 4), (1500, 16, 5)]
)
def test_matches_scipy_average_linkage(n: int, rate: int, seed: int) -> None:
    X = mixed_density(n, 8, seed)
    k = n // rate
    ref = scipy_cut(X, k)
    stats: dict = {}
    got = sparse_average_linkage(X, k, progress=False, stats=stats)
    assert got.dtype == np.int64 and got.shape == (n,)
    assert set(got.tolist()) == set(range(k))
    assert adjusted_rand_score(ref, got) == 1.0
    assert same_partition(ref, got)
    assert stats["exact"] is True
    assert stats["distinct_rows"] < n  # the data really has duplicates


def test_widening_is_exercised_and_exact_with_tiny_graph() -> None:
    # With 2 neighbours the initial graph cannot certify most merges: widening must do the work.
    X = mixed_density(800, 4, 7)
    stats: dict = {}
    got = sparse_average_linkage(X, 100, progress=False, n_neighbors=2, stats=stats)
    assert stats["widen_rounds"] > 0 and stats["bound_pairs_resolved"] > 0
    assert same_partition(scipy_cut(X, 100), got)


def test_disconnected_clusters_need_widening() -> None:
    # Far-apart groups give a disconnected kNN graph; cutting to fewer clusters than groups must still be exact.
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.standard_normal((40, 3)) * 0.1 + 100 * i for i in range(5)])
    for k in (1, 2, 3, 5, 7):
        assert same_partition(scipy_cut(X, k), sparse_average_linkage(X, k, progress=False, n_neighbors=3))


def test_duplicates_end_together() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((150, 5))
    X = np.concatenate([base, base[:40], base[:40], base[:10]])  # groups of up to 4 identical rows
    labels = sparse_average_linkage(X, 75, progress=False)
    inv = np.unique(X, axis=0, return_inverse=True)[1].reshape(-1)
    for g in np.unique(inv):
        assert len(set(labels[inv == g].tolist())) == 1
    assert adjusted_rand_score(scipy_cut(X, 75), labels) == 1.0


def test_more_duplicates_than_neighbours() -> None:
    # 30 copies of one row with n_neighbors=4: the kNN lists cannot hold all copies.
    rng = np.random.default_rng(1)
    X = np.concatenate([np.repeat(rng.standard_normal((3, 4)), 30, axis=0), rng.standard_normal((120, 4))])
    X = X[rng.permutation(len(X))]
    got = sparse_average_linkage(X, 40, progress=False, n_neighbors=4)
    assert same_partition(scipy_cut(X, 40), got)


def test_cut_inside_zero_height_merges() -> None:
    # k larger than the number of distinct rows: only duplicates merge, and exactly N - k of them.
    X = np.repeat(np.arange(10, dtype=float)[:, None], 3, axis=0)  # 30 rows, 10 distinct
    labels = sparse_average_linkage(X, 25, progress=False)
    assert len(set(labels.tolist())) == 25
    for i, j in zip(*np.nonzero(labels[:, None] == labels[None, :])):
        assert X[i, 0] == X[j, 0]  # clusters only join identical rows
    assert (sparse_average_linkage(X, 10, progress=False) == np.repeat(np.arange(10), 3)).all()


def test_trivial_k() -> None:
    X = mixed_density(50, 3, 0, dup_frac=0.0)
    assert (sparse_average_linkage(X, 50, progress=False) == np.arange(50)).all()
    assert (sparse_average_linkage(X, 1, progress=False) == 0).all()


def test_cut_exact_matches_fcluster_without_ties() -> None:
    from scipy.cluster.hierarchy import fcluster

    X = np.random.default_rng(5).standard_normal((300, 6))
    Z = linkage(X, "average")
    for k in (3, 30, 150):
        assert same_partition(cut_exact(Z, 300, k), fcluster(Z, k, "maxclust"))


@pytest.mark.parametrize(
    "X,k",
    [
        (np.zeros((5,)), 2),
        (np.full((5, 2), np.nan), 2),
        (np.zeros((5, 2)), 0),
        (np.zeros((5, 2)), 6),
        (np.zeros((5, 2)), 2.5),
        (np.zeros((0, 2)), 1),
    ],
)
def test_bad_input(X: np.ndarray, k: object) -> None:
    with pytest.raises(CodepriorError, match="dcpe_sparse"):
        sparse_average_linkage(X, k, progress=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("n,rate,nb,seed", [(1200, 2, 3, 11), (1200, 4, 6, 12), (900, 16, 4, 13)])
def test_lazy_rescans_and_sparse_graph_stay_exact(n: int, rate: int, nb: int, seed: int) -> None:
    # Small graphs force widening, bound resolution and lazily rescanned nearest candidates together.
    X = mixed_density(n, 6, seed)
    stats: dict = {}
    got = sparse_average_linkage(X, n // rate, progress=False, n_neighbors=nb, stats=stats)
    assert stats["lazy_rescans"] > 0 and stats["widen_rounds"] > 0
    assert same_partition(scipy_cut(X, n // rate), got)


def _exact_avg(X: np.ndarray, w: np.ndarray, P: np.ndarray, Q: np.ndarray) -> float:
    d = np.sqrt(((X[P][:, None, :] - X[Q][None, :, :]) ** 2).sum(-1))
    return float((d * w[P][:, None] * w[Q][None, :]).sum() / (w[P].sum() * w[Q].sum()))


@pytest.mark.parametrize("nb,seed", [(3, 21), (8, 22)])
def test_state_invariants_hold_after_the_run(nb: int, seed: int) -> None:
    # White-box check of the exactness argument on the final state: certified radii, bounds and heap keys.
    from codeprior.priors.dcpe_sparse import _SparseUPGMA

    X = mixed_density(500, 4, seed, dup_frac=0.0)
    w = np.ones(len(X))
    st = _SparseUPGMA(X, w, nb, workers=1)
    st.run(120, show=False)
    assert st.stats["widen_rounds"] > 0 and st.stats["ball_widened_clusters"] > 0
    live = [c for c in range(st.n) if st.alive[c]]
    assert len(live) == 120
    mem = {c: st._mem(c) for c in live}
    D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    for A in live:
        cand = set(st.adj[A])
        for C in live:
            if C == A:
                continue
            if C in cand:
                v = st.adj[A][C]
                exact = _exact_avg(X, w, mem[A], mem[C])
                if v >= 0:
                    assert v == pytest.approx(exact, rel=1e-9)
                else:
                    assert -v <= exact * (1 + 1e-9)  # a certified lower bound
                assert st.adj[C][A] == v  # both copies agree
            else:
                # every non-candidate point pair is at least the certified radius of either end
                block = D[np.ix_(mem[A], mem[C])]
                assert (block >= st.rad[mem[A]][:, None] * (1 - 1e-9)).all()
                assert (block >= st.rad[mem[C]][None, :] * (1 - 1e-9)).all()
        if st.adj[A]:
            assert st.nnv[A] <= min(abs(v) for v in st.adj[A].values()) * (1 + 1e-12)  # heap key is a lower bound
