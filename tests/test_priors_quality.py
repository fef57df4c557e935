import itertools

import numpy as np
import pytest
import torch

from codeprior.priors import Prior
from codeprior.priors.quality import format_table, prior_quality, quality_row, size_histogram


def _brute(X, lab):
    n = len(X)
    D = np.linalg.norm(X[:, None] - X[None], axis=-1)
    intra = [D[i, j] for i, j in itertools.combinations(range(n), 2) if lab[i] == lab[j]]
    other = [min(D[i, j] for j in range(n) if lab[j] != lab[i]) for i in range(n)]
    nn = [lab[min((j for j in range(n) if j != i), key=lambda j: D[i, j])] == lab[i] for i in range(n)]
    return np.mean(intra), np.mean(other), np.mean(nn)


@pytest.mark.parametrize("normalize", [True, False])
def test_metrics_match_brute_force(normalize, monkeypatch):
    import codeprior.priors.quality as q

    monkeypatch.setattr(q, "_CHUNK_ELEMENTS", 7 * 37)  # several chunks, last one partial
    rng = np.random.default_rng(0)
    cb = torch.from_numpy(rng.standard_normal((37, 5)).astype(np.float32) * 3)
    lab = torch.from_numpy(rng.integers(0, 6, 37))
    lab = torch.unique(lab, return_inverse=True)[1]
    prior = Prior(lab, {"method": "kmeans", "normalize": normalize})
    res = prior_quality(prior, cb)
    X = cb.double().numpy()
    if normalize:
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
    intra, other, nn = _brute(X, lab.numpy())
    assert res["normalize"] is normalize
    assert res["intra_mean_pairwise"] == pytest.approx(intra, rel=1e-6)
    assert res["nearest_other_mean"] == pytest.approx(other, rel=1e-6)
    assert res["nn_same_cluster_share"] == pytest.approx(nn)
    sizes = np.bincount(lab.numpy())
    assert res["sizes"]["min"] == sizes.min() and res["sizes"]["max"] == sizes.max()
    assert res["sizes"]["median"] == np.median(sizes)
    # override of the geometry
    assert prior_quality(prior, cb, normalize=not normalize)["normalize"] is (not normalize)


def test_singletons_duplicates_and_edge_cases():
    cb = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
    p = Prior(torch.tensor([0, 0, 1, 2]), {"normalize": False})
    r = prior_quality(p, cb)
    assert r["intra_mean_pairwise"] == 0.0  # the duplicate pair
    assert r["nn_same_cluster_share"] == pytest.approx(2 / 4)
    assert r["nearest_other_mean"] == pytest.approx((3 + 3 + 3 + 7) / 4)
    assert r["sizes"]["singleton_clusters"] == 2
    assert r["sizes"]["singleton_cluster_share"] == pytest.approx(2 / 3)
    assert r["sizes"]["singleton_code_share"] == pytest.approx(2 / 4)
    all_single = prior_quality(Prior(torch.arange(4), {"normalize": False}), cb)
    assert all_single["intra_mean_pairwise"] is None
    one = prior_quality(Prior(torch.zeros(4, dtype=torch.long), {"normalize": False}), cb)
    assert one["nearest_other_mean"] is None and one["nn_same_cluster_share"] == 1.0


def test_size_histogram_bins():
    assert size_histogram(np.array([1, 1, 2, 3, 4, 5, 9])) == [("1", 2), ("2", 1), ("3-4", 2), ("5-8", 1), ("9-16", 1)]


def test_format_table_side_by_side():
    cb = torch.randn(40, 4)
    a = prior_quality(Prior(torch.arange(40) % 4, {"method": "kmeans"}), cb)
    b = prior_quality(Prior(torch.arange(40) // 2, {"method": "dcpe"}), cb)
    text = format_table([quality_row(a, "km"), quality_row(b, "dc")])
    lines = text.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["metric", "km", "dc"]
    assert len({len(line) for line in lines}) == 1  # aligned
    row = next(line for line in lines if line.startswith("| clusters (k)"))
    assert row.split("|")[2].strip() == "4" and row.split("|")[3].strip() == "20"
    # bins missing from one prior show as 0; raw quality dicts are accepted too
    assert "clusters of size 9-16" in format_table([a, b])
    assert format_table([{"name": "x", "a": {"b": 1.23456}}]).splitlines()[2] == "| a.b    | 1.235 |"
    assert format_table([]) == ""


def test_same_partition_is_equality_up_to_renaming():
    from codeprior.priors.quality import same_partition

    assert same_partition([0, 0, 1, 2], [7, 7, 3, 5])
    assert not same_partition([0, 0, 1, 2], [0, 1, 1, 2])  # a different grouping
    assert not same_partition([0, 1, 2, 3], [0, 0, 1, 2])  # b merges two of a's clusters
    assert not same_partition([0, 0, 1, 2], [0, 1, 2, 3])  # b splits one of a's clusters
