"""Hierarchical cluster-CE (issue 27): multi-level prior files (nesting checked on write and load, old files one
level), `codeprior prior --rates`, the loss against per-level cluster CE computed independently, and training from
the CLI and the pipeline."""

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import TINY_TRAIN_FLAGS

from codeprior.cli import main as cli_main
from codeprior.data.codes import write_code_shards
from codeprior.errors import CodepriorError
from codeprior.priors.dcpe import relabel_first_occurrence
from codeprior.priors.extract import extract_labels
from codeprior.priors.prior import Prior, load_prior, write_prior_file
from codeprior.train.hierarchical import hier_cluster_ce_loss
from codeprior.utils.io import load_checkpoint

FINE = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 5, 1, 6, 7])  # 12 codes, k = 8, non-contiguous
MID = torch.tensor([0, 1, 1, 2, 3, 2, 2, 3])[FINE]  # k = 4, a coarsening of FINE
TOP = torch.tensor([0, 0, 1, 1])[MID]  # k = 2


def _is_coarsening(fine, coarse):
    return all(len({int(c) for c in coarse[fine == f]}) == 1 for f in fine.unique())


# ------------------------------------------------------------------------------------------------ prior files
def test_multi_level_prior_round_trips_and_old_files_are_one_level(tmp_path):
    p = Prior(FINE, {"method": "dcpe"}, [MID, TOP])
    assert p.level_ks == [8, 4, 2] and p.metadata["level_ks"] == [8, 4, 2]
    p.save(tmp_path / "p.safetensors")
    q = load_prior(tmp_path / "p.safetensors")
    assert [t.tolist() for t in q.levels] == [FINE.tolist(), MID.tolist(), TOP.tolist()]
    assert q.sha256() == p.sha256() != Prior(FINE, {}).sha256()  # the levels are part of the partition's hash
    old = Prior(FINE, {})
    old.save(tmp_path / "old.safetensors")
    o = load_prior(tmp_path / "old.safetensors")
    assert len(o.levels) == 1 and o.level_ks == [8] and "level_ks" not in o.metadata
    import hashlib

    assert o.sha256() == hashlib.sha256(FINE.numpy().tobytes()).hexdigest()  # one-level hashes as before


def test_levels_that_do_not_nest_are_refused_on_write_and_on_load(tmp_path):
    split = MID.clone()
    split[1] = 3  # code 1 leaves code 0's level-1 cluster
    with pytest.raises(CodepriorError, match=r"prior: level 1 is not a coarsening of level 0 \(its cluster 0 spans"):
        Prior(FINE, {}, [split])
    with pytest.raises(CodepriorError, match="level 1 is not a coarsening of level 0"):
        write_prior_file(tmp_path / "w.safetensors", FINE.numpy(), {}, [split.numpy()])
    assert not (tmp_path / "w.safetensors").exists()
    with pytest.raises(CodepriorError, match="level 1 has 8 clusters, not fewer than level 0's 8"):
        Prior(FINE, {}, [FINE.clone()])
    from safetensors.torch import save_file

    save_file({"token_to_cluster": FINE, "level_1": MID, "level_2": split}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CodepriorError, match=r"bad.safetensors: prior: level 2 is not a coarsening of level 1") as e:
        load_prior(tmp_path / "bad.safetensors")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("method", ["dcpe", "kmeans"])
def test_prior_rates_writes_nested_levels(tmp_path, method, capsys):
    cb = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    np.save(tmp_path / "cb.npy", cb)
    out = tmp_path / f"{method}.safetensors"
    assert (
        cli_main(["prior", str(tmp_path / "cb.npy"), "--method", method, "--rates", "2", "4", "8", "--out", str(out)])
        == 0
    )
    assert "levels k = 32, 16, 8" in capsys.readouterr().out
    p = load_prior(out)
    assert p.level_ks == [32, 16, 8] and p.metadata["rates"] == [2.0, 4.0, 8.0]
    for fine, coarse in zip(p.levels, p.levels[1:]):
        assert _is_coarsening(fine, coarse)
    fine, _ = extract_labels(cb, method, 32, progress=False)
    assert np.array_equal(p.token_to_cluster.numpy(), fine)  # level 0 is the one-level prior at rate 2
    if method == "dcpe":  # one dendrogram: each level is DCPE's own partition at that k
        for k, lv in zip((16, 8), p.levels[1:]):
            ref, _ = extract_labels(cb, "dcpe", k, progress=False)
            assert np.array_equal(relabel_first_occurrence(lv.numpy()), ref)


def test_prior_rates_errors(tmp_path, capsys):
    np.save(tmp_path / "cb.npy", np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32))
    base = ["prior", str(tmp_path / "cb.npy"), "--out", str(tmp_path / "p.safetensors")]
    for extra, msg in (
        (["--method", "dcpe", "--rates", "4", "2"], "--rates: give increasing compression rates"),
        (["--method", "balanced-kmeans", "--rates", "2", "4"], "nested levels are built for dcpe and kmeans"),
        (["--method", "dcpe", "--rates", "2", "2.01"], "each must have fewer"),
    ):
        assert cli_main(base + extra) == 2
        err = capsys.readouterr().err
        assert msg in err and err.strip().count("\n") == 0, err


# ------------------------------------------------------------------------------------------------ the loss
def _cluster_nll(x, t, ttc, k):
    """Independent reference: NLL of the summed softmax probability of the target's cluster (dense one-hot)."""
    logp = (torch.softmax(x, -1) @ F.one_hot(ttc, k).to(x.dtype)).log()
    keep = t != -100
    ct = torch.where(keep, ttc[torch.where(keep, t, 0)], -100)
    return F.nll_loss(logp.reshape(-1, k), ct.reshape(-1), ignore_index=-100)


def test_loss_is_token_ce_plus_weighted_per_level_cluster_ce():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 5, 12, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    t = torch.randint(0, 12, (2, 5), generator=g)
    t[1, 2] = -100
    levels, w = [FINE, MID, TOP], [0.5, 1.0, 0.25]
    loss, parts = hier_cluster_ce_loss(x, t, levels, w, return_cluster_logits=True)
    ref = F.cross_entropy(x.reshape(-1, 12), t.reshape(-1), ignore_index=-100) + sum(
        wl * _cluster_nll(x, t, lv, int(lv.max()) + 1) for lv, wl in zip(levels, w)
    )
    torch.testing.assert_close(loss, ref, atol=1e-10, rtol=1e-10)
    (g1,) = torch.autograd.grad(loss, x)
    (g2,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(g1, g2, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(parts["token_loss"] + parts["cluster_loss"], loss.detach(), atol=1e-10, rtol=1e-10)
    assert parts["cluster_logits"].shape == (2, 5, 8)
    with pytest.raises(CodepriorError, match="2 weight"):
        hier_cluster_ce_loss(x, t, levels, [1.0, 1.0])


# ------------------------------------------------------------------------------------------------ trainer, CLI
def _shards(root):
    g = np.random.default_rng(0)
    meta = {"grid": [3, 3], "codebook_size": 12, "num_classes": 3, "n_aug": 2}
    for split, n in (("train", 32), ("test", 8)):
        labels = g.integers(0, 3, n)
        codes = (labels[:, None, None] * 4 + g.integers(0, 4, (n, 2, 9))) % 12
        write_code_shards(root / "codes", split, codes, labels, meta)
    Prior(FINE, {}, [MID, TOP]).save(root / "hier.safetensors")


def _args(root, *extra):
    """``codeprior train --objective hier-cluster-ce`` on the tiny shards: the shared tiny-run flags, then this file's
    steps, batch and per-step logging (later flags win)."""
    return [
        "train",
        "--codes",
        str(root / "codes"),
        "--out",
        str(root / "run"),
        "--objective",
        "hier-cluster-ce",
        "--prior",
        str(root / "hier.safetensors"),
        *TINY_TRAIN_FLAGS,
        "--max-steps",
        "2",
        "--global-batch",
        "8",
        "--log-every",
        "1",
        *extra,
    ]


def test_train_hier_cluster_ce_from_the_cli(tmp_path, capsys):
    _shards(tmp_path)
    assert cli_main(_args(tmp_path, "--level-weights", "1", "0.5", "0.25")) == 0
    assert "levels k = 8 (weight 1), 4 (weight 0.5), 2 (weight 0.25)" in capsys.readouterr().err
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # loss = token CE + the weighted cluster CEs
        assert float(r["loss"]) == pytest.approx(float(r["token_loss"]) + float(r["cluster_loss"]), rel=1e-5)
    assert load_checkpoint(tmp_path / "run" / "model.pt")["args"]["level_weights"] == [1.0, 0.5, 0.25]
    assert cli_main(_args(tmp_path, "--level-weights", "1", "0.5", "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "--level-weights gives 2 weight(s) but the prior has 3 level(s) (k = 8, 4, 2)" in err
    assert err.strip().count("\n") == 0


def test_pipeline_variants_validate_their_objective_settings(tmp_path):
    from codeprior.pipeline.config import config_from_dict

    base = {"data": {"dataset": "fashion-mnist", "data_dir": str(tmp_path)}, "priors": {"methods": ["dcpe"]}}

    def cfg(variant, priors=None):
        return config_from_dict(
            {**base, "priors": {**base["priors"], **(priors or {})}, "train": {"variants": [variant]}}, "c.yaml"
        )

    ok = cfg({"name": "h", "objective": "hier-cluster-ce", "prior": "dcpe", "level_weights": [1, 0.5]}, {"levels": [4]})
    assert ok.train.variants[0].trainer_settings() == {"level_weights": [1, 0.5]}
    s = cfg({"name": "s", "objective": "snce", "snce_k": 8, "snce_tau": 0.1})
    assert s.train.variants[0].trainer_settings() == {"snce_k": 8, "snce_tau": 0.1}
    for variant, priors, msg in (
        ({"name": "h", "objective": "hier-cluster-ce", "prior": "dcpe"}, None, "needs priors.levels"),
        (
            {"name": "h", "objective": "hier-cluster-ce", "prior": "dcpe", "level_weights": [1]},
            {"levels": [4]},
            r"1 weight\(s\) for 2 levels",
        ),
        ({"name": "s", "objective": "snce", "prior": "dcpe"}, None, "the snce objective uses no prior"),
        (
            {"name": "s", "objective": "snce", "level_weights": [1]},
            None,
            "level_weights: not a setting of objective snce",
        ),
        ({"name": "s", "objective": "snce", "snce_k": 0}, None, "snce_k"),
        ({"name": "s", "objective": "snce", "snce_source": "encoder"}, None, "set tokenize.store_embeddings: true"),
        ({"name": "t", "objective": "token"}, {"levels": [1.5]}, "priors.levels: give increasing compression rates"),
    ):
        with pytest.raises(CodepriorError, match=msg):
            cfg(variant, priors)


def test_pipeline_trains_snce_and_hier_cluster_ce(tmp_path, make_idx_dataset, tiny_pipeline):
    """The first stages with a given 16-code tokenizer, then one snce and one hier-cluster-ce variant."""
    from codeprior.models import save_vq
    from codeprior.models.vq import VQModel, get_vq_config
    from codeprior.pipeline import run_pipeline
    from codeprior.pipeline.config import load_config

    make_idx_dataset(tmp_path / "idx", n_train=40, n_test=20)
    run = tmp_path / "R"
    (run / "tokenizer").mkdir(parents=True)
    vq = VQModel(get_vq_config("VQ-fmnist", codebook_size=16, ch=16, z_channels=16, norm_groups=4, ch_mult=[1, 2, 2]))
    save_vq(vq, run / "tokenizer" / "vq.pt")
    cfg = tiny_pipeline(tmp_path / "idx")
    cfg["tokenizer"] = {"checkpoint": str(run / "tokenizer" / "vq.pt"), "num_recon": 8, "eval_images": 20}
    cfg["priors"] = {"compression_rate": 2, "levels": [4, 8], "methods": ["dcpe", "kmeans"]}
    cfg["train"] = {
        "steps": 2,
        "batch_size": 8,
        "eval_every": 0,
        "variants": [
            {"name": "snce", "objective": "snce", "snce_k": 4},
            {"name": "hier", "objective": "hier-cluster-ce", "prior": "kmeans", "level_weights": [1, 0.5, 0.25]},
        ],
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    conf = load_config(tmp_path / "cfg.yaml")
    res = run_pipeline(conf, run, until="train-snce") + run_pipeline(conf, run, until="train-hier")
    assert {r.name for r in res if r.action == "ran"} >= {"priors", "train-snce", "train-hier"}
    for m in ("dcpe", "kmeans"):
        assert load_prior(run / "priors" / f"{m}.safetensors").level_ks == [8, 4, 2]
    assert load_checkpoint(run / "train-snce" / "run" / "model.pt")["args"]["snce_k"] == 4
    args = load_checkpoint(run / "train-hier" / "run" / "model.pt")["args"]
    assert args["objective"] == "hier-cluster-ce" and args["level_weights"] == [1, 0.5, 0.25]
