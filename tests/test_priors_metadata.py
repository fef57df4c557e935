import torch

from codeprior import __version__
from codeprior.priors import Prior, extract, load_prior


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
    for n in (1, 2, 8):
        cb = torch.randn(n, 3)
        for method in ("dcpe", "kmeans", "balanced-kmeans"):
            for k in (1, n):
                p = extract(cb, method, k, progress=False)
                assert p.k == k and p.num_codes == n, (method, n, k)


def test_zero_row_with_normalisation():
    cb = torch.randn(16, 4)
    cb[3] = 0.0
    for method in ("dcpe", "kmeans", "balanced-kmeans"):
        p = extract(cb, method, 4, progress=False)
        assert p.k == 4 and int(p.cluster_sizes().min()) >= 1
