"""Trainer: every objective trains from the Python API and the CLI, gradient accumulation is exact, LlamaGen's
optimiser defaults, schedule, data stream, logging, EMA, eval callback, and user errors."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from codeprior.cli import main as cli_main
from codeprior.data.codes import write_code_shards
from codeprior.errors import CodepriorError
from codeprior.priors.prior import Prior
from codeprior.train.optim import lr_factor
from codeprior.train.optim import param_groups as _param_groups
from codeprior.train.trainer import SampleStream, TrainConfig, train
from codeprior.utils.io import load_checkpoint

N = 16
TTC = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 6, 6, 6, 7, 1])  # unequal, non-contiguous, k = 8
TINY = {"dim": 32, "n_layer": 1, "n_head": 2}


def make_shards(root, n_train=48, n_test=16, seed=0):
    """Class-dependent synthetic codes (3x3 grid, 16 codes, 3 classes) plus a prior file."""
    g = np.random.default_rng(seed)
    meta = {"grid": [3, 3], "codebook_size": N, "num_classes": 3, "n_aug": 2}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = g.integers(0, 3, n)
        codes = (labels[:, None, None] * 5 + g.integers(0, 4, (n, 2, 9))) % N
        write_code_shards(root / "codes", split, codes, labels, meta)
    Prior(TTC, {}).save(root / "prior.safetensors")
    return root / "codes", root / "prior.safetensors"


def cfg_for(root, objective="token", **kw):
    codes, prior = make_shards(root) if not (root / "codes").exists() else (root / "codes", root / "prior.safetensors")
    with_prior = kw.pop("with_prior", False) or objective != "token"
    base = dict(
        codes=str(codes),
        out=str(root / f"run-{objective}"),
        objective=objective,
        prior=str(prior) if with_prior else None,
        model="Refine-tiny" if objective == "refine" else "GPT-tiny",
        model_overrides=dict(TINY),
        dropout=0.0,
        class_dropout=0.0,
        global_batch=8,
        max_steps=4,
        log_every=2,
        ckpt_every=100,
        tensorboard=False,
        progress=False,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("objective", ["token", "cluster-ce", "coarse", "refine"])
def test_each_objective_trains_and_writes_run_dir(tmp_path, objective):
    cfg = cfg_for(tmp_path, objective, with_prior=True, val_every=2)
    out = train(cfg)
    run = tmp_path / f"run-{objective}"
    assert out["finished"] and out["step"] == 4
    rows = read_csv(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(r["cluster_acc"] != "" for r in rows)  # every objective reports cluster accuracy with a prior
    assert (rows[-1]["token_acc"] == "") == (objective == "coarse")
    assert rows[-1]["val_loss"] != "" and float(rows[-1]["tokens_per_s"]) > 0
    final = load_checkpoint(run / "model.pt")
    assert final["steps"] == 4 and final["objective"] == objective
    head = final["model"]["output.weight"]
    assert head.shape[0] == (8 if objective == "coarse" else N)  # coarse: the vocabulary is the k clusters
    # the files load with the models module's readers (LlamaGen layout + config), final and step checkpoints alike
    from codeprior.models.checkpoint import load_gpt, load_refine

    load = load_refine if objective == "refine" else load_gpt
    m = load(run / "model.pt")
    assert torch.equal(m.output.weight, head)
    load(run / "checkpoints" / "0000004.pt")
    assert json.loads((run / "summary.json").read_text())["step"] == 4


def test_token_run_without_prior_has_no_cluster_metric(tmp_path):
    train(cfg_for(tmp_path, "token", max_steps=2))
    rows = read_csv(tmp_path / "run-token" / "metrics.csv")
    assert rows[-1]["cluster_acc"] == "" and rows[-1]["token_acc"] != ""


def test_training_reduces_validation_loss(tmp_path):
    cfg = cfg_for(tmp_path, "cluster-ce", lr=3e-3, max_steps=30, log_every=30, val_every=30)
    out = train(cfg)
    # chance level: token CE log(16) + cluster CE of a uniform token distribution (>= log 8 for this prior)
    assert out["val_token_loss"] < math.log(N) - 0.3
    assert out["val_cluster_acc"] > 0.3


def _final_weights(cfg):
    train(cfg)
    return load_checkpoint(f"{cfg.out}/model.pt")["model"]


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    a = _final_weights(cfg_for(tmp_path, "cluster-ce", out=str(tmp_path / "a"), grad_accum=1, max_steps=3))
    b = _final_weights(cfg_for(tmp_path, "cluster-ce", out=str(tmp_path / "b"), grad_accum=4, max_steps=3))
    c = _final_weights(cfg_for(tmp_path, "cluster-ce", out=str(tmp_path / "c"), global_batch=16, max_steps=3))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(a[key], c[key]) for key in a)  # a different global batch does differ


def test_weight_decay_only_on_matrices():
    from codeprior.models.gpt import GPT, get_gpt_config

    m = GPT(get_gpt_config("GPT-tiny", **TINY, vocab_size=N, num_classes=3, grid=(3, 3)))
    decay, no_decay = _param_groups(m, m, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert id(m.tok_embeddings.weight) in ids(decay) and id(m.norm.weight) in ids(no_decay)


def test_lr_schedule():
    cfg = TrainConfig(codes="x", out="y", max_steps=110, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, cfg, 110) == pytest.approx(0.1)
    assert lr_factor(9, cfg, 110) == pytest.approx(1.0)
    assert lr_factor(60, cfg, 110) == pytest.approx(0.55)
    assert lr_factor(110, cfg, 110) == pytest.approx(0.1)
    assert lr_factor(50, TrainConfig(codes="x", out="y", max_steps=5), 110) == 1.0  # LlamaGen: constant


def test_sample_stream_is_a_sequence_of_epoch_permutations():
    s = SampleStream(10, seed=3)
    idx, ep = s.take(0, 25)
    assert sorted(idx[:10].tolist()) == list(range(10)) and sorted(idx[10:20].tolist()) == list(range(10))
    assert ep.tolist() == [0] * 10 + [1] * 10 + [2] * 5
    assert not torch.equal(idx[:10], idx[10:20])
    i2, e2 = SampleStream(10, seed=3).take(7, 9)  # any window gives the same entries
    assert torch.equal(i2, idx[7:16]) and torch.equal(e2, ep[7:16])


def test_ema_is_an_exponential_average(tmp_path):
    cfg = cfg_for(tmp_path, "token", ema=0.5, max_steps=1, lr=1e-2)
    torch.manual_seed(0)
    train(cfg)
    final = load_checkpoint(f"{cfg.out}/model.pt")
    from codeprior.models.gpt import GPT, get_gpt_config

    torch.manual_seed(cfg.seed)
    init = GPT(get_gpt_config(final["config"])).state_dict()
    key = "layers.0.attention.wqkv.weight"
    torch.testing.assert_close(final["ema"][key], 0.5 * init[key] + 0.5 * final["model"][key])
    assert not torch.allclose(final["ema"][key], final["model"][key])


def test_eval_fn_callback(tmp_path):
    calls = []

    def eval_fn(step, model):
        calls.append((step, model.training))
        return {"fake_fid": 100.0 - step}

    out = train(cfg_for(tmp_path, "token", eval_every=2, max_steps=4), eval_fn=eval_fn)
    assert calls == [(2, False), (4, False)]
    assert out["eval_fake_fid"] == 96.0
    lines = (tmp_path / "run-token" / "eval.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4]


def test_tensorboard_events_written(tmp_path):
    """The events under RUN/tb hold every metrics.csv column (train/*, val/*) and the eval hook's results (eval/*),
    at the logged steps and with the logged values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(
        cfg_for(tmp_path, "token", tensorboard=True, max_steps=4, val_every=2, eval_every=2),
        eval_fn=lambda step, model: {"fake_fid": 100.0 - step},
    )
    run = tmp_path / "run-token"
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    logged = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    rows = read_csv(run / "metrics.csv")
    expect: dict[str, list[tuple[int, float]]] = {"eval/fake_fid": [(2, 98.0), (4, 96.0)]}
    for col in rows[0]:
        if col != "step" and rows[0][col] != "":
            tag = "val/" + col[4:] if col.startswith("val_") else "train/" + col
            expect[tag] = [(int(r["step"]), float(r[col])) for r in rows]
    assert {"train/loss", "train/lr", "val/loss", "val/token_acc"} <= set(expect)
    assert sorted(logged) == sorted(expect)
    for tag, points in expect.items():
        assert [s for s, _ in logged[tag]] == [s for s, _ in points] == [2, 4], tag
        assert [v for _, v in logged[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_user_errors(tmp_path, capsys):
    codes, prior = make_shards(tmp_path)
    with pytest.raises(CodepriorError, match="needs --prior"):
        train(TrainConfig(codes=str(codes), out=str(tmp_path / "r"), objective="coarse", max_steps=1))
    with pytest.raises(CodepriorError, match="max-steps or --epochs"):
        train(TrainConfig(codes=str(codes), out=str(tmp_path / "r")))
    with pytest.raises(CodepriorError, match="divisible"):
        train(cfg_for(tmp_path, "token", global_batch=6, grad_accum=4))
    bad = tmp_path / "bad.safetensors"
    Prior(torch.arange(8) % 3, {}).save(bad)
    with pytest.raises(CodepriorError, match="covers 8 codes"):
        train(cfg_for(tmp_path, "cluster-ce", prior=str(bad)))
    # CLI: one line, exit 2; a run dir with checkpoints is not silently overwritten
    args = [
        "train",
        "--codes",
        str(codes),
        "--out",
        str(tmp_path / "cli"),
        "--max-steps",
        "1",
        "--global-batch",
        "4",
        "--model-override",
        "dim=32",
        "--model-override",
        "n_layer=1",
        "--model-override",
        "n_head=2",
        "--no-tensorboard",
        "--no-progress",
        "--ckpt-every",
        "1",
        "--threads",
        "1",
    ]
    assert cli_main(args) == 0
    assert cli_main(args) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert cli_main(args + ["--overwrite"]) == 0
    assert (
        cli_main(
            ["train", "--codes", str(codes), "--out", str(tmp_path / "x"), "--objective", "coarse", "--max-steps", "1"]
        )
        == 2
    )


def test_epochs_bf16_autocast_and_cosine_schedule(tmp_path):
    cfg = cfg_for(
        tmp_path,
        "cluster-ce",
        max_steps=None,
        epochs=0.5,
        precision="bf16",
        schedule="cosine",
        warmup_steps=1,
        log_every=1,
        ckpt_every=1,
        keep_ckpts=2,
    )
    out = train(cfg)
    assert sorted(p.name for p in (tmp_path / "run-cluster-ce" / "checkpoints").glob("*.pt")) == [
        "0000002.pt",
        "0000003.pt",
    ]
    assert out["total_steps"] == 3 and out["step"] == 3  # ceil(0.5 * 48 / 8)
    rows = read_csv(tmp_path / "run-cluster-ce" / "metrics.csv")
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-4) and lrs[1] > lrs[2] > 0  # warmup 1 step, then cosine decay
    assert all(math.isfinite(float(r["loss"])) for r in rows)


def test_fsdp_on_cpu_is_a_clear_error(tmp_path):
    """FSDP is refused with one exact sentence: without a process group, and on CPU inside one (gloo, world 1)."""
    import torch.distributed as dist

    from codeprior.train.distributed import DistInfo, free_port, wrap_model

    with pytest.raises(CodepriorError) as e:
        wrap_model(torch.nn.Linear(2, 2), DistInfo(), fsdp=True)
    assert str(e.value) == "--fsdp needs a process group: launch with torchrun --nproc-per-node N (N >= 1)"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        with pytest.raises(CodepriorError) as e:
            wrap_model(torch.nn.Linear(2, 2), DistInfo(), fsdp=True)
    finally:
        dist.destroy_process_group()
    assert str(e.value) == "--fsdp needs CUDA devices (PyTorch's FSDP does not run on CPU); drop it to use DDP"


def _subparser(name):
    import argparse

    from codeprior.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_from_dict_round_trips_and_rejects_unknown_keys(tmp_path):
    cfg = cfg_for(tmp_path, "cluster-ce", lam=0.5)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(CodepriorError, match=r"unknown setting 'lrr'") as e:
        TrainConfig.from_dict({**cfg.to_dict(), "lrr": 1e-3})
    assert "\n" not in str(e.value)
    with pytest.raises(CodepriorError, match="missing setting 'codes'"):
        TrainConfig.from_dict({"out": "x"})


def test_cli_flags_are_generated_from_the_config():
    from codeprior.train.config import config_defaults, config_fields

    defaults = config_defaults()
    assert defaults["lr"] == 1e-4 and defaults["global_batch"] == 64 and "codes" not in defaults
    for command in ("train", "train-refine"):
        actions = {a.dest: a for a in _subparser(command)._actions}
        for f in config_fields():
            gpt_only = (
                "objective",
                "lam",
                "loss_chunk",
                "level_weights",
                "snce_k",
                "snce_tau",
                "snce_source",
                "codebook",
            )
            if f["flag"] is None or (command == "train-refine" and f["name"] in gpt_only):
                assert f["name"] not in actions
                continue
            a = actions[f["name"]]
            assert f["flag"] in a.option_strings and a.help
            if f["name"] == "model_overrides":
                assert a.default == []
            elif command == "train-refine" and f["name"] in ("model", "prior"):
                assert a.default == ("Refine-tiny" if f["name"] == "model" else None)
            else:
                assert a.default == f.get("default") and a.help.startswith(f["help"]), f["name"]
    assert _subparser("train-refine")._option_string_actions["--prior"].required
    assert _subparser("train")._option_string_actions["--objective"].choices == (
        "token",
        "cluster-ce",
        "coarse",
        "hier-cluster-ce",
        "snce",
    )


def test_cli_config_equals_python_config(tmp_path):
    from codeprior.commands.train import config_from_args

    codes, prior = make_shards(tmp_path)
    args = _subparser("train-refine").parse_args(
        [
            "--codes",
            str(codes),
            "--out",
            "r",
            "--prior",
            str(prior),
            "--max-steps",
            "3",
            "--causal",
            "--model-override",
            "dim=32",
            "--no-tensorboard",
            "--stop-after-steps",
            "2",
            "--resume",
        ]
    )
    args.task = "refine"
    cfg = config_from_args(args)
    assert cfg == TrainConfig(
        codes=str(codes),
        out="r",
        prior=str(prior),
        objective="refine",
        model="Refine-tiny",
        max_steps=3,
        model_overrides={"dim": 32, "causal": True, "restrict": True},
        tensorboard=False,
        stop_at_step=2,
        resume="auto",
    )
