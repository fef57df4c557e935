import numpy as np
import torch

from codeprior import __version__
from codeprior.priors import Prior, load_prior
from codeprior.priors.extract import extract


def test_string_metadata_survives_round_trip(tmp_path):
    p = Prior(torch.tensor([0, 1, 1]), {"source": "1e5", "flag": "true", "method": "dcpe", "backend": {"a": 1}})
    p.save(tmp_path / "p.safetensors")
    m = load_prior(tmp_path / "p.safetensors").metadata
    assert m["source"] == "1e5" and m["flag"] == "true" and m["backend"] == {"a": 1} and m["k"] == 2


def test_extract_metadata_round_trip(tmp_path):
    cb = torch.randn(64, 4)
    p = extract(cb, "kmeans", 8, normalize=False, seed=7, progress=False, source="cb.npy")
    p.save(tmp_path / "k.safetensors")
    q = load_prior(tmp_path / "k.safetensors", cb)
    for key in ("method", "k", "normalize", "seed", "codebook_sha256", "source", "num_codes", "dim"):
        assert q.metadata[key] == p.metadata[key], key
    assert q.metadata["codeprior_version"] == __version__
    assert q.metadata["backend"]["library"].startswith("scikit-learn")
    assert torch.equal(q.token_to_cluster, p.token_to_cluster)


def test_every_method_handles_k_1_and_k_n():
    """k = 1 puts every code in cluster 0; k = N gives every code a cluster of its own (each method)."""
    for n in (1, 2, 8):
        cb = torch.randn(n, 3)
        for method in ("dcpe", "kmeans", "balanced-kmeans"):
            one = extract(cb, method, 1, progress=False)
            assert one.k == 1 and one.num_codes == n, (method, n)
            assert one.token_to_cluster.tolist() == [0] * n, (method, n)
            own = extract(cb, method, n, progress=False)
            assert own.k == n and own.num_codes == n, (method, n)
            assert sorted(own.token_to_cluster.tolist()) == list(range(n)), (method, n)
            assert own.cluster_sizes().tolist() == [1] * n, (method, n)


def test_zero_row_with_normalisation():
    """A zero row stays at the origin when normalised (no NaN), and every method still gives k non-empty clusters."""
    from codeprior.priors.extract import geometry

    cb = torch.randn(16, 4)
    cb[3] = 0.0
    unit = geometry(cb, normalize=True)
    assert (unit[3] == 0).all() and np.isfinite(unit).all()
    assert np.allclose(np.linalg.norm(np.delete(unit, 3, 0), axis=1), 1.0)
    for method in ("dcpe", "kmeans", "balanced-kmeans"):
        p = extract(cb, method, 4, progress=False)
        assert p.k == 4 and int(p.cluster_sizes().min()) >= 1
