"""Exports for IAR (mapping, reordered VQ checkpoint, --cluster-size) and DCPE (idx_to_cluster): formats, round trips
through a tiny LlamaGen-layout VQ, IAR's own construction of the mapping, and the CLI's refusals."""

import argparse
import hashlib
import re

import numpy as np
import pytest
import torch
from test_vq import TINY, _randomised_tiny  # the tiny LlamaGen-layout VQ of the VQ tests

from codeprior.cli import main
from codeprior.codebook import load_codebook
from codeprior.errors import CodepriorError
from codeprior.models.checkpoint import load_vq, save_vq
from codeprior.models.vq import get_vq_config
from codeprior.priors import Prior, load_prior
from codeprior.priors.export import export_dcpe, export_iar, export_iar_vq, iar_cluster_size, iar_mapping
from codeprior.utils.io import sha256_tensor


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


# ---------------------------------------------------------------------------- IAR's reordered VQ checkpoint
CB_KEY = "quantize.embedding.weight"


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _equal_prior(cb, k=8, seed=0):
    """A random partition into k clusters of exactly N/k codes, tied to ``cb`` by its hash."""
    g = torch.Generator().manual_seed(seed)
    t2c = torch.arange(cb.shape[0])[torch.randperm(cb.shape[0], generator=g)] % k
    return Prior(t2c, {"method": "balanced-kmeans", "codebook_sha256": sha256_tensor(cb)})


def _check_round_trip(vq, vq_new, mapping, prior):
    """decode(mapping[codes]) with the new VQ == decode(codes) with the old one, bit for bit; encoding with the new
    VQ gives mapping[codes]; IAR's own construction of the mapping from the two codebooks gives ours back."""
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(7)) * 2 - 1
    codes = vq.encode_codes(x)
    assert torch.equal(vq_new.encode_codes(x), mapping[codes])
    every = torch.arange(64).view(4, 4, 4)  # every code id once
    for c in (codes, every):
        assert torch.equal(vq_new.decode_codes(mapping[c]), vq.decode_codes(c))
    old, new = vq.quantize.embedding.weight.detach(), vq_new.quantize.embedding.weight.detach()
    assert not torch.equal(old, new)
    # IAR's balance_k_means.py: index = torch.where(cdist(old, new) ** 2 < 1e-6); mapping = index[1]. (Exact
    # differences here: cdist's default matmul expansion for > 25 rows leaves ~1e-6 of float32 rounding on
    # identical rows of norm ~2, which IAR's threshold does not always absorb.)
    d2 = torch.cdist(old, new, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    rows, cols = torch.where(d2 < 1e-6)
    assert torch.equal(rows, torch.arange(64)) and torch.equal(cols, mapping)
    # IAR's gpt.py: cluster = new_id // cluster_size, over contiguous blocks
    assert torch.equal(mapping // iar_cluster_size(prior), prior.token_to_cluster)


def test_iar_vq_round_trip_llamagen_layout_keeps_every_other_entry(tmp_path):
    vq = _randomised_tiny()
    ema = _randomised_tiny(codebook_l2_norm=True)  # another set of weights as the EMA copy
    with torch.no_grad():
        ema.quantize.embedding.weight.mul_(1.5)
    src = tmp_path / "vq_train.pt"  # LlamaGen vq_train.py's layout (args as a plain dict, as codeprior writes it)
    sd = {k: v.clone() for k, v in vq.state_dict().items()}
    ckpt = {
        "model": sd,
        "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
        "discriminator": {"w": torch.randn(2)},
        "steps": 1234,
        "args": {"vq_model": "VQ-16", "image_size": 8},
        "ema": {k: v.clone() for k, v in ema.state_dict().items()},
    }
    torch.save(ckpt, src)
    before = _digest(src)
    prior = _equal_prior(sd[CB_KEY])
    mapping = iar_mapping(prior)
    dst = tmp_path / "out" / "vq_iar.pt"
    assert export_iar_vq(prior, src, dst) == [f"model/{CB_KEY}", f"ema/{CB_KEY}"]
    assert _digest(src) == before  # the input is never touched
    got = torch.load(dst, weights_only=True)
    assert list(got) == list(ckpt) and list(got["model"]) == list(sd)
    for entry in ("model", "ema"):
        for key, v in ckpt[entry].items():
            if key == CB_KEY:  # new[mapping[i]] = old[i]; dtype and shape kept
                assert got[entry][key].dtype == v.dtype and torch.equal(got[entry][key][mapping], v)
            else:
                assert torch.equal(got[entry][key], v), key
    assert got["steps"] == 1234 and got["args"] == ckpt["args"]
    assert torch.equal(got["discriminator"]["w"], ckpt["discriminator"]["w"])
    assert torch.equal(got["optimizer"]["state"][0]["exp_avg"], torch.ones(3))
    cfg = get_vq_config(TINY)
    _check_round_trip(load_vq(src, cfg), load_vq(dst, cfg), mapping, prior)
    _check_round_trip(load_vq(src, cfg, use_ema=True), load_vq(dst, cfg, use_ema=True), mapping, prior)
    # codeprior's own file (with its config entry) and a bare state dict keep their layout too
    for name, write in (("ours.pt", lambda p: save_vq(vq, p)), ("bare.pt", lambda p: torch.save(vq.state_dict(), p))):
        save_src, save_dst = tmp_path / name, tmp_path / f"iar_{name}"
        write(save_src)
        export_iar_vq(prior, save_src, save_dst)
        a, b = torch.load(save_src, weights_only=True), torch.load(save_dst, weights_only=True)
        assert list(a) == list(b)
        cfg_ = None if name == "ours.pt" else cfg
        _check_round_trip(load_vq(save_src, cfg_), load_vq(save_dst, cfg_), mapping, prior)


def test_iar_vq_keeps_llamagen_argparse_args(tmp_path):
    """LlamaGen's and IAR's scripts save ``args`` as an argparse.Namespace: kept as it is (loads wherever the source
    loads with weights_only=True)."""
    from codeprior.utils.io import load_checkpoint

    vq = _randomised_tiny()
    src, dst = tmp_path / "vq.pt", tmp_path / "vq_iar.pt"
    torch.save({"model": vq.state_dict(), "args": argparse.Namespace(vq_model="VQ-16", image_size=8)}, src)
    try:
        load_checkpoint(src)
    except CodepriorError:
        pytest.skip("this build's load_checkpoint refuses argparse.Namespace (issue 23, item 1)")
    prior = _equal_prior(vq.state_dict()[CB_KEY])
    export_iar_vq(prior, src, dst)
    got = load_checkpoint(dst)
    assert got["args"] == argparse.Namespace(vq_model="VQ-16", image_size=8)
    torch.testing.assert_close(got["model"][CB_KEY][iar_mapping(prior)], vq.state_dict()[CB_KEY], rtol=0, atol=0)


def test_iar_vq_refusals_write_nothing(tmp_path):
    vq = _randomised_tiny()
    cb = vq.state_dict()[CB_KEY].clone()
    prior = _equal_prior(cb)
    good = tmp_path / "vq.pt"
    torch.save({"model": vq.state_dict()}, good)
    np.save(tmp_path / "cb.npy", cb.numpy())
    torch.save(cb, tmp_path / "cb_tensor.pt")
    torch.save({"model": {CB_KEY: cb}}, tmp_path / "cb_only.pt")
    from safetensors.torch import save_file

    save_file({"codebook": cb}, str(tmp_path / "cb.safetensors"))
    dst = tmp_path / "out.pt"
    cases = [
        (prior, "cb.npy", "cb.npy: holds a bare codebook (.npy file), not a VQ checkpoint"),
        (prior, "cb.safetensors", "cb.safetensors: holds a bare codebook (.safetensors file)"),
        (prior, "cb_tensor.pt", "cb_tensor.pt: holds a bare codebook, not a VQ checkpoint (a tensor)"),
        (prior, "cb_only.pt", "cb_only.pt: holds a bare codebook, not a VQ checkpoint (no decoder weights"),
        (Prior(torch.arange(64) % 5), "vq.pt", "prior has sizes 12..13; --method balanced-kmeans gives k clusters"),
        (_equal_prior(cb + 1), "vq.pt", "vq.pt: prior was extracted from a different codebook"),
        (_equal_prior(cb[:32]), "vq.pt", f"vq.pt: model/{CB_KEY} has shape (64, 4); the prior covers 32 codes"),
    ]
    for pr, name, msg in cases:
        with pytest.raises(CodepriorError, match=re.escape(msg)) as e:
            export_iar_vq(pr, tmp_path / name, dst)
        assert "\n" not in str(e.value) and not dst.exists()
    before = _digest(good)
    with pytest.raises(CodepriorError, match="is the input VQ checkpoint; refusing to overwrite it"):
        export_iar_vq(prior, good, tmp_path / "." / "vq.pt")
    assert _digest(good) == before


def _tiny_vq_file(tmp_path):
    path = tmp_path / "vq.pt"
    save_vq(_randomised_tiny(), path)  # codeprior's file: the config travels with it
    return path


def test_cli_export_iar_vq_end_to_end(tmp_path, capsys):
    src = _tiny_vq_file(tmp_path)
    before = _digest(src)
    out, m, vq_out = tmp_path / "bal.safetensors", tmp_path / "map.pt", tmp_path / "vq_iar.pt"
    argv = ["prior", str(src), "--method", "balanced-kmeans", "--k", "8", "--out", str(out), "--no-progress"]
    rc = main([*argv, "--export-iar", str(m), "--export-iar-vq", str(vq_out)])
    assert rc == 0
    stdout = capsys.readouterr().out.splitlines()
    assert stdout[-1] == f"IAR: --cluster-size 8 --codebook-size 64 --mapping-path {m} --vq-ckpt {vq_out}"
    assert f"IAR VQ checkpoint (codebook rows reordered by the mapping) -> {vq_out}" in stdout
    assert _digest(src) == before
    prior = load_prior(out, load_codebook(src))
    mapping = torch.load(m, weights_only=True)
    assert torch.equal(mapping, iar_mapping(prior))
    _check_round_trip(load_vq(src), load_vq(vq_out), mapping, prior)
    # the mapping alone still works, and prints IAR's flags without --vq-ckpt
    assert main([*argv, "--export-iar", str(m)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"IAR: --cluster-size 8 --codebook-size 64 --mapping-path {m}"


@pytest.mark.parametrize(
    "codebook,extra,expect",
    [
        ("vq.pt", ["--export-iar-vq", "v.pt"], "v.pt: --export-iar-vq needs --export-iar"),
        ("cb.npy", ["--export-iar", "m.pt", "--export-iar-vq", "v.pt"], "cb.npy: holds a bare codebook (.npy file)"),
        ("vq.pt", ["--export-iar", "m.pt", "--export-iar-vq", "vq.pt"], "vq.pt: --export-iar-vq is also the input"),
        ("vq.pt", ["--export-iar", "m.pt", "--export-iar-vq", "m.pt"], "m.pt: --export-iar-vq and --export-iar name"),
        ("vq.pt", ["--method", "dcpe", "--export-iar", "m.pt"], "m.pt: IAR export needs equal cluster sizes"),
    ],
)
def test_cli_iar_refusals_exit_2_before_any_work(tmp_path, monkeypatch, capsys, codebook, extra, expect):
    monkeypatch.chdir(tmp_path)
    _tiny_vq_file(tmp_path)
    np.save(tmp_path / "cb.npy", np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32))
    before = _digest(tmp_path / "vq.pt")
    if "--method" not in extra:
        extra = ["--method", "balanced-kmeans", *extra]
    rc = main(["prior", codebook, "--k", "8", "--out", "p.safetensors", *extra])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("codeprior: error: ") and expect in err[0], err
    assert not (tmp_path / "p.safetensors").exists() and not (tmp_path / "m.pt").exists()
    assert not (tmp_path / "v.pt").exists() and _digest(tmp_path / "vq.pt") == before
