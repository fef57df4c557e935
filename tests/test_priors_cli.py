import argparse
import json

import numpy as np
import pytest
import torch

from codeprior.cli import main
from codeprior.priors import load_prior
from codeprior.utils.io import sha256_tensor


@pytest.fixture
def cb_file(tmp_path):
    rng = np.random.default_rng(0)
    cb = rng.standard_normal((96, 8)).astype(np.float32)
    path = tmp_path / "cb.npy"
    np.save(path, cb)
    return path, torch.from_numpy(cb)


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_extract_round_trip_with_exports(tmp_path, cb_file, capsys):
    path, cb = cb_file
    out = tmp_path / "bal.safetensors"
    rc = main(
        [
            "prior",
            str(path),
            "--method",
            "balanced-kmeans",
            "--k",
            "8",
            "--seed",
            "5",
            "--out",
            str(out),
            "--export-iar",
            str(tmp_path / "map.pt"),
            "--export-dcpe",
            str(tmp_path / "idx.pt"),
            "--no-progress",
        ]
    )
    assert rc == 0
    prior = load_prior(out, cb)
    m = prior.metadata
    assert (m["method"], m["k"], m["seed"], m["normalize"]) == ("balanced-kmeans", 8, 5, True)
    assert m["codebook_sha256"] == sha256_tensor(cb) and m["source"] == str(path)
    assert prior.cluster_sizes().tolist() == [12] * 8
    idx = torch.load(tmp_path / "idx.pt", weights_only=True)
    assert torch.equal(idx, prior.token_to_cluster)
    mapping = torch.load(tmp_path / "map.pt", weights_only=True)
    assert torch.equal(mapping // 12, prior.token_to_cluster)
    assert "8 clusters" in capsys.readouterr().out


def test_compression_rate_and_raw(tmp_path, cb_file):
    path, cb = cb_file
    out = tmp_path / "d.safetensors"
    assert main(["prior", str(path), "--method", "dcpe", "--compression-rate", "2", "--raw", "--out", str(out)]) == 0
    prior = load_prior(out, cb)
    assert prior.k == 48 and prior.metadata["normalize"] is False
    assert prior.metadata["backend"]["backend"] == "full"
    assert prior.metadata["backend"]["reason"].startswith("auto: 96 codes: the condensed distance matrix")


def test_cli_reports_sparse_backend_choice(tmp_path, cb_file, monkeypatch, capsys):
    import sys
    import types

    from scipy.cluster.hierarchy import fcluster, linkage

    path, cb = cb_file
    mod = types.ModuleType("codeprior.priors.dcpe_sparse")
    mod.sparse_average_linkage = lambda X, k, progress=True: fcluster(linkage(X, "average"), k, "maxclust")
    monkeypatch.setitem(sys.modules, "codeprior.priors.dcpe_sparse", mod)
    monkeypatch.setenv("CODEPRIOR_DCPE_MAX_BYTES", "1000")
    import codeprior.priors.dcpe_split as dcpe_split

    # the matrix-multiply search (as in high dimension), where split hands a too-large component over to sparse
    monkeypatch.setattr(dcpe_split, "HIGH_DIM", 1)
    out = tmp_path / "s.safetensors"
    assert main(["prior", str(path), "--method", "dcpe", "--k", "10", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "dcpe: split backend: 96 codes" in err  # the choice, then the hand-over: both printed
    assert "dcpe: sparse backend:" in err and "split: a component of" in err
    meta = load_prior(out, cb).metadata["backend"]
    assert meta["backend"] == "sparse" and meta["reason"].startswith("auto: ") and "split:" in meta["reason"]


def test_inspect_table_and_json(tmp_path, cb_file, capsys):
    path, _ = cb_file
    for method, k in (("dcpe", 24), ("kmeans", 24)):
        assert (
            main(
                [
                    "prior",
                    str(path),
                    "--method",
                    method,
                    "--k",
                    str(k),
                    "--out",
                    str(tmp_path / f"{method}.safetensors"),
                ]
            )
            == 0
        )
    capsys.readouterr()
    rc = main(
        [
            "prior",
            "inspect",
            str(tmp_path / "dcpe.safetensors"),
            str(tmp_path / "kmeans.safetensors"),
            "--codebook",
            str(path),
            "--json",
            str(tmp_path / "q.json"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| metric"))
    assert "dcpe" in header and "kmeans" in header
    data = json.loads((tmp_path / "q.json").read_text())
    assert [p["name"] for p in data["priors"]] == ["dcpe", "kmeans"]
    assert data["priors"][0]["quality"]["k"] == 24 and data["priors"][0]["metadata"]["method"] == "dcpe"


def test_inspect_refuses_other_codebook(tmp_path, cb_file, capsys):
    path, cb = cb_file
    assert main(["prior", str(path), "--method", "kmeans", "--k", "4", "--out", str(tmp_path / "p.safetensors")]) == 0
    np.save(tmp_path / "other.npy", cb.numpy() + 1)
    capsys.readouterr()
    assert main(["prior", "inspect", str(tmp_path / "p.safetensors"), "--codebook", str(tmp_path / "other.npy")]) == 2
    assert "different codebook" in _err_line(capsys)
    assert (
        main(
            [
                "prior",
                "inspect",
                str(tmp_path / "p.safetensors"),
                "--codebook",
                str(tmp_path / "other.npy"),
                "--allow-codebook-mismatch",
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "setup,args,expect",
    [
        (None, ["missing.npy", "--k", "4"], "missing.npy: no such file"),
        ("corrupt", ["bad.pt", "--k", "4"], "bad.pt: cannot read"),
        ("nokey", ["nokey.pt", "--k", "4"], "nokey.pt: no codebook tensor"),
        ("nan", ["nan.npy", "--k", "4"], "nan.npy: codebook has non-finite"),
        ("ok", ["cb.npy", "--k", "0"], "prior: argument --k: expected an integer > 0, got '0'"),
        ("ok", ["cb.npy", "--compression-rate", "nan"], "argument --compression-rate: expected a finite number"),
        ("ok", ["cb.npy", "--compression-rate", "inf"], "argument --compression-rate: expected a finite number"),
        ("ok", ["cb.npy", "--k", "97"], "cb.npy: k=97 exceeds"),
        ("ok", ["cb.npy", "--k", "7", "--method", "balanced-kmeans"], "cb.npy: balanced k-means needs k to divide"),
        ("ok", ["cb.npy", "--k", "7", "--method", "dcpe", "--export-iar", "m.pt"], "m.pt: IAR export needs equal"),
    ],
)
def test_bad_input_exit_2_one_line(tmp_path, monkeypatch, capsys, setup, args, expect):
    monkeypatch.chdir(tmp_path)
    if setup == "corrupt":
        (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    elif setup == "nokey":
        torch.save({"model": {"encoder.w": torch.zeros(1)}}, tmp_path / "nokey.pt")
    elif setup == "nan":
        np.save(tmp_path / "nan.npy", np.array([[np.nan, 1.0]] * 8, np.float32))
    elif setup == "ok":
        np.save(tmp_path / "cb.npy", np.random.default_rng(0).standard_normal((96, 4)).astype(np.float32))
    if "--method" not in args:
        args = args + ["--method", "kmeans"]
    try:
        rc = main(["prior", *args, "--out", "p.safetensors"])
    except SystemExit as e:  # argument errors stop in argparse
        rc = e.code
    assert rc == 2
    line = _err_line(capsys)
    assert line.startswith("codeprior: error: ") and expect in line
    assert not (tmp_path / "p.safetensors").exists()


def test_help_lists_examples_and_sub_actions(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prior", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--compression-rate" in out and "prior inspect" in out
    with pytest.raises(SystemExit):
        main(["prior", "inspect", "--help"])
    assert "--codebook" in capsys.readouterr().out


def test_missing_required_option_is_usage_error(cb_file, capsys):
    path, _ = cb_file
    with pytest.raises(SystemExit) as e:
        main(["prior", str(path), "--method", "kmeans", "--out", "x.safetensors"])
    assert e.value.code == 2


def test_sub_actions_are_extensible(monkeypatch, capsys):
    import codeprior.commands.prior as cmd

    seen = {}

    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("thing")

    def run(args):
        seen["thing"] = args.thing
        return 0

    monkeypatch.setitem(cmd.SUB_ACTIONS, "frobnicate", cmd.SubAction("frobnicate", "test action", configure, run))
    assert main(["prior", "frobnicate", "abc"]) == 0
    assert seen == {"thing": "abc"}


def test_inspect_checks_every_prior_before_measuring_and_notes_mixed_geometry(tmp_path, cb_file, capsys, monkeypatch):
    import codeprior.priors.quality as quality

    path, _ = cb_file
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert main(["prior", str(path), "--method", "kmeans", "--k", "8", "--out", str(a), "--no-progress"]) == 0
    assert main(["prior", str(path), "--method", "kmeans", "--k", "8", "--raw", "--out", str(b)]) == 0
    capsys.readouterr()
    measured = []
    real = quality.prior_quality
    monkeypatch.setattr(quality, "prior_quality", lambda *a, **k: measured.append(1) or real(*a, **k))
    rc = main(["prior", "inspect", str(a), str(tmp_path / "missing.safetensors"), "--codebook", str(path)])
    assert rc == 2 and measured == []  # refused before the first prior was measured
    assert "missing.safetensors: no such prior file" in _err_line(capsys)
    assert main(["prior", "inspect", str(a), str(b), "--codebook", str(path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "different geometries" in err and "a.safetensors: L2-normalised" in err and "b.safetensors: raw" in err
    # one geometry asked for: nothing to say (b before a: a note would not be the one already printed once)
    assert main(["prior", "inspect", str(b), str(a), "--codebook", str(path), "--raw", "--no-progress"]) == 0
    assert "different geometries" not in capsys.readouterr().err
