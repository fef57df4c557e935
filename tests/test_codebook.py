import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from codeprior.codebook import (
    LLAMAGEN_KEY,
    count_distinct_rows,
    k_from_compression_rate,
    load_codebook,
    validate_k,
)
from codeprior.errors import CodepriorError


@pytest.fixture
def cb():
    return torch.randn(64, 8)


def test_llamagen_wrapped_and_bare_state_dict(tmp_path, cb):
    sd = {LLAMAGEN_KEY: cb.clone(), "encoder.conv_in.weight": torch.randn(3, 3)}
    torch.save({"model": sd}, tmp_path / "vq.pt")
    torch.save(sd, tmp_path / "bare.pth")
    assert torch.equal(load_codebook(tmp_path / "vq.pt"), cb)
    assert torch.equal(load_codebook(tmp_path / "bare.pth"), cb)


def test_safetensors_both_keys_and_npy(tmp_path, cb):
    save_file({"codebook": cb}, str(tmp_path / "a.safetensors"))
    save_file({LLAMAGEN_KEY: cb.double()}, str(tmp_path / "b.safetensors"))
    np.save(tmp_path / "c.npy", cb.numpy().astype(np.float16).astype(np.float64))
    assert torch.equal(load_codebook(tmp_path / "a.safetensors"), cb)
    b = load_codebook(tmp_path / "b.safetensors")
    assert b.dtype == torch.float32 and torch.equal(b, cb)
    c = load_codebook(tmp_path / "c.npy")
    assert c.shape == (64, 8) and c.dtype == torch.float32


def test_missing_file(tmp_path):
    with pytest.raises(CodepriorError, match="nope.pt: no such file"):
        load_codebook(tmp_path / "nope.pt")


@pytest.mark.parametrize("name", ["bad.pt", "bad.safetensors", "bad.npy"])
def test_corrupt_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00garbage, not a tensor file" * 3)
    with pytest.raises(CodepriorError, match=name) as e:
        load_codebook(tmp_path / name)
    assert "\n" not in str(e.value)


def test_no_codebook_lists_keys(tmp_path):
    torch.save({"model": {"decoder.w": torch.zeros(2), "quant_conv.weight": torch.zeros(2)}}, tmp_path / "x.pt")
    with pytest.raises(CodepriorError, match=r"x.pt: no codebook tensor.*decoder.w, quant_conv.weight"):
        load_codebook(tmp_path / "x.pt")
    save_file({"other": torch.zeros(3)}, str(tmp_path / "y.safetensors"))
    with pytest.raises(CodepriorError, match=r"y.safetensors: no codebook tensor.*found: other"):
        load_codebook(tmp_path / "y.safetensors")


def test_pickled_objects_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CodepriorError, match="obj.npy"):
        load_codebook(tmp_path / "obj.npy")


@pytest.mark.parametrize(
    "arr,msg",
    [
        (np.zeros(5, np.float32), "2-D"),
        (np.zeros((2, 3, 4), np.float32), "2-D"),
        (np.zeros((0, 8), np.float32), "empty"),
        (np.array([[1.0, np.nan], [0.0, 1.0]], np.float32), "non-finite"),
        (np.array([[1.0, 2.0], [np.inf, 1.0]], np.float32), "non-finite.*first row 1"),
    ],
)
def test_invalid_shapes_and_values(tmp_path, arr, msg):
    np.save(tmp_path / "cb.npy", arr)
    with pytest.raises(CodepriorError, match=msg):
        load_codebook(tmp_path / "cb.npy")


def test_validate_k():
    assert validate_k(4, 16, "balanced-kmeans") == 4
    with pytest.raises(CodepriorError, match="at least 1"):
        validate_k(0, 16)
    with pytest.raises(CodepriorError, match="exceeds the number of codes"):
        validate_k(17, 16)
    with pytest.raises(CodepriorError, match=r"divide.*16 % 5 = 1.*4"):
        validate_k(5, 16, "balanced-kmeans")
    validate_k(5, 16, "dcpe")
    assert k_from_compression_rate(16384, 2) == 8192
    with pytest.raises(CodepriorError, match="compression rate"):
        k_from_compression_rate(16, 0.5)


def test_count_distinct_rows():
    x = torch.randn(10, 3)
    assert count_distinct_rows(torch.cat([x, x[:4]])) == 10
