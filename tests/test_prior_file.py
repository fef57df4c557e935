import pytest
import torch

from codeprior.errors import CodepriorError
from codeprior.priors import Prior, load_prior
from codeprior.utils.io import sha256_tensor


def test_roundtrip_and_hash_check(tmp_path):
    cb = torch.randn(10, 4)
    p = Prior(torch.tensor([0, 1, 1, 2, 0, 2, 2, 1, 0, 3]), {"method": "dcpe", "codebook_sha256": sha256_tensor(cb)})
    p.save(tmp_path / "p.safetensors")
    q = load_prior(tmp_path / "p.safetensors", cb)
    assert torch.equal(q.token_to_cluster, p.token_to_cluster)
    assert q.k == 4 and q.metadata["method"] == "dcpe"
    with pytest.raises(CodepriorError, match="different codebook"):
        load_prior(tmp_path / "p.safetensors", cb + 1)
    load_prior(tmp_path / "p.safetensors", cb + 1, allow_mismatch=True)


def test_rejects_unused_cluster_ids():
    with pytest.raises(CodepriorError, match="unused"):
        Prior(torch.tensor([0, 2, 2]))


def test_corrupt_file(tmp_path):
    f = tmp_path / "bad.safetensors"
    f.write_bytes(b"garbage")
    with pytest.raises(CodepriorError, match="bad.safetensors"):
        load_prior(f)
