import pytest
import torch

from codeprior.errors import CodepriorError
from codeprior.priors import Prior
from codeprior.priors.export import export_dcpe, export_iar, iar_mapping


def test_iar_mapping_makes_clusters_contiguous(tmp_path):
    t2c = torch.tensor([2, 0, 1, 0, 2, 1, 1, 2, 0])
    m = export_iar(Prior(t2c), tmp_path / "mapping.pt")
    loaded = torch.load(tmp_path / "mapping.pt", weights_only=True)
    assert torch.equal(loaded, m) and loaded.dtype == torch.int64
    assert sorted(m.tolist()) == list(range(9))  # a permutation
    # new id // block size is the cluster of the old id; within a block old ids stay in order
    assert torch.equal(m // 3, t2c)
    assert m.tolist() == [6, 0, 3, 1, 7, 4, 5, 8, 2]


def test_iar_requires_equal_sizes(tmp_path):
    with pytest.raises(CodepriorError, match="equal cluster sizes.*1..2"):
        iar_mapping(Prior(torch.tensor([0, 0, 1])))
    with pytest.raises(CodepriorError, match="equal cluster sizes"):
        export_iar(Prior(torch.tensor([0, 0, 1])), tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()  # refused before anything is written


def test_dcpe_idx_to_cluster(tmp_path):
    t2c = torch.tensor([0, 1, 1, 2, 0])
    export_dcpe(Prior(t2c), tmp_path / "idx.pt")
    loaded = torch.load(tmp_path / "idx.pt", weights_only=True)
    assert loaded.dtype == torch.int64 and torch.equal(loaded, t2c)
