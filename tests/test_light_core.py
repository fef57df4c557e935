"""The light core (issue 23, item 7): without the extras (pipeline / eval / tensorboard packages), the core modules
import and work, and a command that needs an extra says in one line which one to install (exit 2).

The extras are made absent in a subprocess by a ``sys.meta_path`` finder that refuses every module they provide
(:data:`codeprior.utils.extras.EXTRAS`) and the heavy packages they pull in; it also records every refused import,
so a core path that merely *tries* an extra-only import (and swallows the error) fails the test too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import codeprior
from codeprior.cli import main
from codeprior.utils.extras import DISTRIBUTIONS, EXTRAS, extra_providing, missing_extra_error, require_extra

SRC = Path(codeprior.__file__).resolve().parents[1]
PYPROJECT = SRC.parent / "pyproject.toml"
#: Everything the extras provide, plus what they drag in (pydantic_core) and the optional integrations.
BLOCKED = sorted({m for mods in EXTRAS.values() for m in mods} | {"pydantic_core", "torch_fidelity", "wandb"})

CORE_MODULES = (
    "codeprior.priors",
    "codeprior.train.objectives",
    "codeprior.models",
    "codeprior.models.checkpoint",
    "codeprior.decoding",
    "codeprior.utils.io",
    "codeprior.sample",
    "codeprior.tokenize",
    "codeprior.train.trainer",
    "codeprior.cli",
)

# Runs in the subprocess: argv[1] = blocked names (comma-separated), argv[2] = scratch folder. Prints one JSON line.
SCRIPT = r"""
import contextlib, importlib, importlib.abc, io, json, sys
from pathlib import Path

BLOCKED = set(sys.argv[1].split(","))
tmp = Path(sys.argv[2])
refused = []


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            refused.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Block())
out = {}
try:
    import matplotlib  # noqa: F401  (the blocker itself must work, or the test proves nothing)
    out["blocker_works"] = False
except ModuleNotFoundError:
    out["blocker_works"] = True
refused.clear()

from codeprior.cli import main


def cli(*argv):
    err, so = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(so):
        try:
            rc = main(list(argv))
        except SystemExit as e:  # --help
            rc = e.code
    return {"rc": rc, "stderr": err.getvalue(), "stdout": so.getvalue()}


out["help"] = cli("--help")
out["help_refused"] = sorted(set(refused))

# ---- the library: every core module, then a tiny task through each of them ----
for m in sys.argv[3].split(","):
    importlib.import_module(m)
import numpy as np
import torch
import torch.nn.functional as F
from codeprior.decoding import jacobi_generate
from codeprior.models import GPT, get_gpt_config, load_gpt, save_gpt
from codeprior.priors import load_prior
from codeprior.priors.extract import extract
from codeprior.train.objectives import cluster_ce_loss

torch.manual_seed(0)
cb = torch.randn(64, 8)
prior = extract(cb, "dcpe", 8, progress=False)
prior.save(tmp / "dcpe.safetensors")
loaded = load_prior(tmp / "dcpe.safetensors", cb)
out["prior_roundtrip"] = bool(torch.equal(loaded.token_to_cluster, prior.token_to_cluster)) and loaded.k == 8
out["other_priors_k"] = [extract(cb, m, 8, progress=False).k for m in ("kmeans", "balanced-kmeans")]

ttc = loaded.token_to_cluster
logits = torch.randn(2, 6, 64, requires_grad=True)
targets = torch.randint(0, 64, (2, 6))
loss, _ = cluster_ce_loss(logits, targets, ttc, lam=0.5)
loss.backward()
z = logits.detach().reshape(-1, 64)
t = targets.reshape(-1)
cl = torch.stack([z[:, ttc == c].logsumexp(-1) for c in range(8)], -1)  # independent reference
ref = F.cross_entropy(z, t) + 0.5 * F.cross_entropy(cl, ttc[t])
out["loss_err"] = abs(float(loss.detach()) - float(ref))
out["grad_finite"] = bool(torch.isfinite(logits.grad).all())

gpt = GPT(get_gpt_config("GPT-tiny", vocab_size=64, num_classes=3, grid=(2, 3), n_layer=1))
torch.nn.init.normal_(gpt.output.weight, std=0.3)  # the zero-initialised head would make every draw a tie
save_gpt(gpt, tmp / "gpt.pt")
gpt2 = load_gpt(tmp / "gpt.pt")
labels = torch.tensor([0, 1, 2])
ar = gpt2.generate(labels, top_k=1)
sjd, _ = jacobi_generate(gpt2, labels, top_k=1, window=3)
out["codes_shape"] = list(ar.shape)
out["greedy_ar_equals_sjd"] = bool(torch.equal(ar, sjd))
out["library_refused"] = sorted(set(refused))

# ---- core commands: prior, train (TensorBoard absent: a note, metrics.csv), sample ----
from codeprior.data.codes import write_code_shards
from codeprior.models import save_vq
from codeprior.models.vq import VQModel, get_vq_config
from codeprior.utils.io import sha256_tensor

vq = VQModel(get_vq_config("VQ-fmnist", codebook_size=16, ch=16, z_channels=16, norm_groups=4, ch_mult=[1, 2, 2],
                           image_size=12)).eval()
save_vq(vq, tmp / "vq.pt")
g = np.random.default_rng(0)
meta = {"grid": [3, 3], "codebook_size": 16, "num_classes": 3, "n_aug": 1,
        "codebook_sha256": sha256_tensor(vq.quantize.embedding.weight), "tokenizer_sha256": "a" * 64}
for split, n in (("train", 16), ("test", 8)):
    write_code_shards(tmp / "codes", split, g.integers(0, 16, (n, 1, 9)), g.integers(0, 3, n), meta)
out["prior_cmd"] = cli("prior", str(tmp / "vq.pt"), "--method", "dcpe", "--k", "4", "--out", str(tmp / "p.safetensors"))
out["train_cmd"] = cli("train", "--codes", str(tmp / "codes"), "--max-steps", "1", "--global-batch", "4",
                       "--no-progress", "--threads", "1", "--device", "cpu", "--model-override", "dim=32",
                       "--model-override", "n_layer=1", "--model-override", "n_head=2", "--out", str(tmp / "run"))
out["sample_cmd"] = cli("sample", "--ckpt", str(tmp / "run" / "model.pt"), "--tokenizer", str(tmp / "vq.pt"),
                        "--num-samples", "2", "--device", "cpu", "--no-progress", "--out", str(tmp / "s"))
out["core_cmd_refused"] = sorted(set(refused))

# ---- commands that need an extra: one line, exit 2, nothing written ----
(tmp / "cfg.yaml").write_text("name: x\n")
out["extra_cmds"] = {
    "pipeline": cli("pipeline", str(tmp / "cfg.yaml"), "--out", str(tmp / "prun")),
    "demo": cli("demo", "--out", str(tmp / "drun")),
    "report": cli("report", str(tmp / "run")),
    "evaluate": cli("evaluate", str(tmp / "x.npz"), "--json", str(tmp / "e.json")),
    "evaluate-tokenizer": cli("evaluate-tokenizer", "--tokenizer", str(tmp / "vq.pt")),
    "prior substitute": cli("prior", "substitute", str(tmp / "p.safetensors"), "--tokenizer", str(tmp / "vq.pt")),
}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def blocked_run(tmp_path_factory) -> dict:
    """Run :data:`SCRIPT` once with the extras blocked; its JSON result."""
    tmp = tmp_path_factory.mktemp("light_core")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(BLOCKED), str(tmp), ",".join(CORE_MODULES)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["tmp"] = str(tmp)
    return res


def test_help_and_core_library_without_extras(blocked_run):
    r = blocked_run
    assert r["blocker_works"]
    assert r["help"]["rc"] == 0 and "usage: codeprior" in r["help"]["stdout"]
    assert r["help_refused"] == []  # --help does not even look for an extra
    assert r["prior_roundtrip"] and r["other_priors_k"] == [8, 8]
    assert r["loss_err"] < 1e-5 and r["grad_finite"]
    assert r["codes_shape"] == [3, 6]
    assert r["greedy_ar_equals_sjd"]  # exact SJD with top-k 1 decodes AR's codes
    assert r["library_refused"] == []  # no core module tried (and swallowed) an extra-only import


def test_core_commands_without_extras(blocked_run):
    r, tmp = blocked_run, Path(blocked_run["tmp"])
    assert r["prior_cmd"]["rc"] == 0, r["prior_cmd"]["stderr"]
    assert (tmp / "p.safetensors").is_file()
    train = r["train_cmd"]
    assert train["rc"] == 0, train["stderr"]
    # TensorBoard is an extra: training says so once and keeps metrics.csv
    notes = [line for line in train["stderr"].splitlines() if "tensorboard is not installed" in line]
    assert len(notes) == 1 and "codeprior[tensorboard]" in notes[0]
    assert (tmp / "run" / "metrics.csv").is_file() and not (tmp / "run" / "tb").exists()
    assert r["sample_cmd"]["rc"] == 0, r["sample_cmd"]["stderr"]
    assert (tmp / "s" / "samples.npz").is_file() and list((tmp / "s").glob("*.png"))
    assert r["core_cmd_refused"] == ["tensorboard"]  # the logger's one look-up, nothing else


@pytest.mark.parametrize(
    "cmd, extra",
    [
        ("pipeline", "pipeline"),
        ("demo", "pipeline"),
        ("report", "pipeline"),
        ("evaluate", "eval"),
        ("evaluate-tokenizer", "eval"),
        ("prior substitute", "eval"),
    ],
)
def test_command_needing_an_extra_says_which_in_one_line(blocked_run, cmd, extra):
    res = blocked_run["extra_cmds"][cmd]
    assert res["rc"] == 2
    lines = res["stderr"].splitlines()
    assert len(lines) == 1, res["stderr"]  # one line, no traceback
    missing = ", ".join(DISTRIBUTIONS.get(m, m) for m in EXTRAS[extra])
    assert lines[0] == (
        f"codeprior: error: codeprior {cmd} needs the '{extra}' extra: pip install 'codeprior[{extra}]' "
        f"(missing: {missing})"
    )
    tmp = Path(blocked_run["tmp"])
    assert not any((tmp / d).exists() for d in ("prun", "drun", "e.json"))  # refused before any work


def _extra_distributions(table: dict[str, list[str]], extra: str) -> set[str]:
    """Distribution names an extra of pyproject.toml installs, following ``codeprior[a,b]`` self-references."""
    names: set[str] = set()
    for req in table[extra]:
        name = req.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip()
        if name.startswith("codeprior["):
            for sub in name[len("codeprior[") : -1].split(","):
                names |= _extra_distributions(table, sub.strip())
        else:
            names.add(name.lower())
    return names


def test_extras_table_matches_pyproject():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    table = project["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert _extra_distributions(table, extra) == {DISTRIBUTIONS.get(m, m) for m in modules}, extra
    core = {req.split(">")[0].split("=")[0].strip().lower() for req in project["dependencies"]}
    extra_only = {DISTRIBUTIONS.get(m, m) for mods in EXTRAS.values() for m in mods}
    assert not core & extra_only


def test_require_extra_and_the_safety_net(monkeypatch, capsys):
    require_extra("codeprior evaluate", "eval")  # installed here: no error
    assert extra_providing("matplotlib.pyplot") == "pipeline" and extra_providing("prdc") == "eval"
    assert extra_providing("numpy") is None
    assert missing_extra_error("x", ModuleNotFoundError("no", name="somethingelse")) is None

    # an extra-only import reached on a path no declaration covers still gives the one line, exit 2
    import codeprior.commands.classifier as classifier_cmd

    def boom(args):
        raise ModuleNotFoundError("No module named 'prdc'", name="prdc")

    monkeypatch.setattr(classifier_cmd, "run_info", boom)
    assert main(["classifier", "info", "whatever.pt"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "codeprior: error: codeprior classifier needs the 'eval' extra: pip install 'codeprior[eval]' (missing: prdc)"
    ]

    def other(args):
        raise ModuleNotFoundError("No module named 'notanextra'", name="notanextra")

    monkeypatch.setattr(classifier_cmd, "run_info", other)
    with pytest.raises(ModuleNotFoundError):  # not an extra's package: a real bug keeps its traceback
        main(["classifier", "info", "whatever.pt"])


def test_one_missing_package_stops_the_pipeline_before_any_work(monkeypatch, tmp_path, capsys):
    """matplotlib alone missing: the pipeline would run for hours and fail at its report; it stops at once."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("name: x\n")
    assert main(["pipeline", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "codeprior: error: codeprior pipeline needs the 'pipeline' extra: pip install 'codeprior[pipeline]' "
        "(missing: matplotlib)"
    ]
    assert not (tmp_path / "run").exists()
