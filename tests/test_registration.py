"""Adding a prior method, an objective or an acceptance rule is one module plus its registration: a toy of each,
registered in this test alone, runs through the CLI (``prior``, ``train``, ``sample``) and through the pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN_FLAGS, write_tiny_codes

from codeprior.cli import main
from codeprior.decoding.settings import ACCEPT_RULES, AcceptRule, register_accept_rule, unregister_accept_rule
from codeprior.models import save_vq
from codeprior.models.vq import VQModel, get_vq_config
from codeprior.priors.methods import METHODS, PriorMethod, register_method, unregister_method
from codeprior.train.objective_traits import TRAITS, ObjectiveTraits
from codeprior.train.objectives import REGISTRY, TokenObjective, register_objective, unregister_objective

N = 16
CALLS: dict[str, int] = {}


# ------------------------------------------------------------------ the three toys (what a new module would hold)
def toy_labels(X: np.ndarray, k: int, *, seed: int = 0, progress: bool = True, backend: str = "auto"):
    """Prior method ``toy``: code i in cluster i % k."""
    CALLS["prior"] = CALLS.get("prior", 0) + 1
    return np.arange(X.shape[0]) % k, {"backend": "toy"}


class ToyObjective(TokenObjective):
    """Objective ``toy``: LlamaGen's token CE, but it needs a prior (so the pipeline wires one to it)."""

    traits = ObjectiveTraits("toy", needs_prior=True, loss_parts=("token_loss",))


def build_toy_rule(settings, model, *, codebook, token_to_cluster):
    """Acceptance rule ``toy``: accept every draft token."""
    CALLS["rule"] = CALLS.get("rule", 0) + 1
    return lambda p, q, x: torch.ones(x.shape, dtype=p.dtype, device=p.device)


@pytest.fixture
def toys():
    """Register the toys for one test; unregister them afterwards (the registries are as before)."""
    before = (list(METHODS), list(TRAITS), list(REGISTRY), list(ACCEPT_RULES))
    CALLS.clear()
    register_method(PriorMethod("toy", f"{__name__}:toy_labels"))
    register_objective(ToyObjective())
    register_accept_rule(AcceptRule("toy", f"{__name__}:build_toy_rule"))
    yield
    unregister_method("toy")
    unregister_objective("toy")
    unregister_accept_rule("toy")
    assert (list(METHODS), list(TRAITS), list(REGISTRY), list(ACCEPT_RULES)) == before


def test_unregistered_toys_are_refused(tmp_path, capsys):
    """Without the registration the CLI does not know the names (so the test below depends on it)."""
    np.save(tmp_path / "cb.npy", np.random.default_rng(0).normal(size=(N, 4)).astype(np.float32))
    with pytest.raises(SystemExit) as e:
        main(["prior", str(tmp_path / "cb.npy"), "--method", "toy", "--k", "4", "--out", str(tmp_path / "p.st")])
    assert e.value.code == 2 and "invalid choice: 'toy'" in capsys.readouterr().err


def test_toys_run_through_the_cli(tmp_path, toys):
    torch.manual_seed(0)
    vq = VQModel(
        get_vq_config(
            "VQ-fmnist", codebook_size=N, ch=16, z_channels=16, norm_groups=4, ch_mult=[1, 2, 2], image_size=12
        )
    ).eval()
    save_vq(vq, tmp_path / "vq.pt")
    prior = tmp_path / "toy.safetensors"
    assert main(["prior", str(tmp_path / "vq.pt"), "--method", "toy", "--k", "4", "--out", str(prior)]) == 0
    assert CALLS["prior"] == 1
    from codeprior.priors import load_prior

    assert load_prior(prior).token_to_cluster.tolist() == [i % 4 for i in range(N)]

    write_tiny_codes(tmp_path / "codes", vq, np.random.default_rng(0), tokenizer_sha256="a" * 64)
    run = tmp_path / "run"
    argv = ["train", "--codes", str(tmp_path / "codes"), *TINY_TRAIN_FLAGS, "--objective", "toy", "--out", str(run)]
    assert main([*argv, "--prior", str(prior)]) == 0
    ck = torch.load(run / "model.pt", weights_only=True)
    assert ck["provenance"]["objective"] == "toy"

    out = tmp_path / "s"
    sample = ["sample", "--ckpt", str(run / "model.pt"), "--tokenizer", str(tmp_path / "vq.pt"), "--num", "3"]
    assert (
        main([*sample, "--device", "cpu", "--no-progress", "--decoder", "sjd", "--accept", "toy", "--out", str(out)])
        == 0
    )
    assert CALLS["rule"] == 1
    meta_s = json.loads((out / "samples.json").read_text())
    assert meta_s["decoder"]["accept"] == "toy"
    with np.load(out / "samples.npz") as z:
        assert z["arr_0"].shape[0] == 3


def test_toys_run_through_the_pipeline(tmp_path, toys, fmnist_idx, tiny_pipeline):
    from codeprior.pipeline import config_from_dict, read_stage_manifest, run_pipeline
    from codeprior.pipeline.stages.train import TrainOutputs

    fmnist_idx(tmp_path / "data", n_train=200, n_test=60)
    cfg = config_from_dict(
        {
            **tiny_pipeline(tmp_path / "data"),
            "priors": {"methods": ["toy"], "compression_rate": 64},
            "train": {
                "steps": 2,
                "batch_size": 8,
                "eval_every": 0,
                "variants": [{"name": "toy-run", "objective": "toy", "prior": "toy"}],
            },
            "sample": {
                "num_samples": 10,
                "grid_per_class": 1,
                "batch_size": 10,
                "decoder": {"decoder": "sjd", "accept": "toy", "window": 4},
            },
            "substitution": {"enabled": False},
        },
        "toy.yaml",
    )
    res = run_pipeline(cfg, tmp_path / "run", until="sample-toy-run", log=lambda s: None)
    assert {r.name for r in res} >= {"priors", "train-toy-run", "sample-toy-run"}
    assert CALLS["prior"] == 1 and CALLS["rule"] >= 1
    trained = TrainOutputs.from_manifest(read_stage_manifest(tmp_path / "run" / "train-toy-run"))
    assert (trained.objective, trained.prior) == ("toy", "toy")
    meta = json.loads((tmp_path / "run" / "sample-toy-run" / "samples.json").read_text())
    assert meta["decoder"]["accept"] == "toy"


def test_a_toy_variant_is_checked_against_the_registry(tmp_path, toys):
    """The pipeline config accepts the registered objective (and refuses it once it is gone, like any typo)."""
    from codeprior.errors import CodepriorError
    from codeprior.pipeline import config_from_dict

    data = {"priors": {"methods": ["toy"]}, "train": {"variants": [{"name": "t", "objective": "toy", "prior": "toy"}]}}
    cfg = config_from_dict(data, "toy.yaml")
    assert cfg.train.variants[0].objective == "toy"
    unregister_objective("toy")
    with pytest.raises(CodepriorError, match=r"toy.yaml: train.variants\[0\].objective: must be one of 'token'"):
        config_from_dict(data, "toy.yaml")
    register_objective(ToyObjective())
