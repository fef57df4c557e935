"""GPU checks: codeprior's accelerator paths on one CUDA device (``pytest -m gpu``; skipped without CUDA).

* KV cache: cached incremental decoding (class prefill, a chunked prefill, then one token at a time) gives the
  logits of a plain full forward (GPT-tiny with GQA, fp32 and bf16 autocast).
* Objectives: token / cluster-CE / cluster-logits / coarse losses and gradients on the device equal those on CPU.
* Training: ``codeprior train`` in subprocesses (token, cluster-ce; eager, ``--compile``; FSDP under torchrun;
  ``--resume`` for more steps; coarse + ``train-refine``): finite losses, checkpoints load with ``load_gpt``.
* FSDP: ``distributed.wrap_model(fsdp=True)`` on a 1-process NCCL group, 5 bf16 steps, then the gathered full state
  dict loads into a plain GPT and gives the same logits.
* Sampling: ``codeprior sample`` with CFG (and coarse-to-fine with ``--refine``); the fraction of codes equal between
  the device and CPU for the same seed is recorded (informational: kernels differ across devices).
* Throughput: train-step time of GPT-B for token / cluster-ce / coarse at batch 64, bf16, median of 10 steps after
  warm-up, and the ratios to token (recorded; the check asserts finite losses).

Data, prior and VQ tokenizer are synthetic (no data files, no network). The figures (logit differences, steps/s,
compile speed-up, code agreement, throughput) go to each test's ``record_property`` and, with
``CODEPRIOR_GPU_REPORT=PATH``, to a JSON report. ``CODEPRIOR_GPU_DEVICE`` picks the device (default ``cuda``;
``cuda:1``; ``cpu`` runs a smoke test at tiny sizes, skipping what needs CUDA). The subprocess checks are also
marked ``slow``: a plain ``pytest`` on a CUDA machine runs only the KV-cache and objective checks.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DEVICE = torch.device(os.environ.get("CODEPRIOR_GPU_DEVICE", "cuda"))
CUDA = DEVICE.type == "cuda"
TIMEOUT = 180.0  # seconds per CLI subprocess (compile gets >= 300)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA and not torch.cuda.is_available(), reason="needs a CUDA device"),
]
slow = pytest.mark.slow
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA (CODEPRIOR_GPU_DEVICE is cpu)")


# ------------------------------------------------------------------------------------------------ shared set-up
@dataclass
class Ctx:
    """Sizes, paths and synthetic inputs (code shards, a random prior, a random VQ tokenizer) of one session."""

    work: Path
    quick: bool = not CUDA  # tiny sizes for the CPU smoke test
    grid: tuple[int, int] = (7, 7)
    num_classes: int = 10
    figures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.N = 512 if self.quick else 4096
        self.k = self.N // 8
        self.steps = 10 if self.quick else 30
        self.batch = 8 if self.quick else 32

    @property
    def codes(self) -> Path:
        return self.work / "codes"

    @property
    def prior(self) -> Path:
        return self.work / "prior.safetensors"

    @property
    def vq(self) -> Path:
        return self.work / "vq.pt"

    def run_dir(self, name: str) -> Path:
        return self.work / "runs" / name

    def write_inputs(self) -> None:
        """Random code shards (train/test), a random partition prior and a random VQ-fmnist-shaped tokenizer."""
        from codeprior.data.codes import write_code_shards
        from codeprior.models.checkpoint import save_vq
        from codeprior.models.vq import VQModel, get_vq_config
        from codeprior.priors.prior import Prior

        g = np.random.default_rng(0)
        L = self.grid[0] * self.grid[1]
        meta = {
            "grid": list(self.grid),
            "codebook_size": self.N,
            "num_classes": self.num_classes,
            "dataset": "synthetic (gpu check)",
        }
        for split, n in (("train", 256 if self.quick else 1024), ("test", 64)):
            labels = g.integers(0, self.num_classes, n)
            # class-dependent codes plus noise, so the loss has something to learn
            base = (labels[:, None] * 37 + np.arange(L)[None, :] * 11) % self.N
            noise = g.integers(0, 8, (n, L))
            codes = ((base + noise) % self.N).reshape(n, 1, L)
            write_code_shards(self.codes, split, codes, labels, meta)
        ttc = torch.from_numpy(g.permutation(self.N) % self.k)  # every cluster used, members scattered
        Prior(ttc, {"method": "random (gpu check)"}).save(self.prior)
        torch.manual_seed(0)
        save_vq(VQModel(get_vq_config("VQ-fmnist", codebook_size=self.N)), self.vq)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("OMP_NUM_THREADS", "4" if CUDA else "1")
        return env

    def cli(self, *argv: str, torchrun: bool = False, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Run ``python -m codeprior.cli ARGV`` (or under ``torch.distributed.run``); fail the test on a non-zero exit."""
        cmd = (
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
            if torchrun
            else [sys.executable]
        )
        cmd += ["-m", "codeprior.cli", *argv]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=timeout)
        assert p.returncode == 0, _failure_text(p)
        return {"cmd": " ".join(cmd[1:]), "wall_s": round(time.perf_counter() - t0, 2)}


def _failure_text(p: subprocess.CompletedProcess) -> str:
    """One line for a failed subprocess: codeprior's own error line if any (torchrun prints its summary after it),
    else the last lines of stderr."""
    lines = (p.stderr or p.stdout or "").strip().splitlines()
    own = [ln for ln in lines if "codeprior: error:" in ln]
    return f"exit {p.returncode}: " + " | ".join(own[-2:] or lines[-12:])


def _meta() -> dict[str, Any]:
    m: dict[str, Any] = {
        "device": str(DEVICE),
        "quick": not CUDA,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if CUDA:
        m["gpu"] = torch.cuda.get_device_name(DEVICE)
        m["cuda"] = torch.version.cuda
    return m


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    """The session's inputs; on teardown the figures go to ``$CODEPRIOR_GPU_REPORT`` (JSON) when it is set."""
    c = Ctx(tmp_path_factory.mktemp("gpu_check"))
    c.write_inputs()
    meta = _meta()
    yield c
    path = os.environ.get("CODEPRIOR_GPU_REPORT")
    if path:
        from codeprior.utils.io import write_json_atomic

        write_json_atomic(path, {**meta, "checks": c.figures})


@pytest.fixture
def record(
    ctx: Ctx, request: pytest.FixtureRequest, record_property: Callable[[str, Any], None]
) -> Callable[..., None]:
    """``record(**figures)``: keep a test's figures (JUnit properties, the JSON report, and printed)."""

    def rec(**figures: Any) -> None:
        ctx.figures.setdefault(request.node.name, {}).update(figures)
        for k, v in figures.items():
            record_property(k, v)
        print(request.node.name, figures)

    return rec


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize(DEVICE)


# ------------------------------------------------------------------------------------------------ 1. KV cache
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_kv_cache_matches_full_forward(bf16: bool, record: Callable[..., None]) -> None:
    from codeprior.models.gpt import GPT, KVCache, get_gpt_config

    N, C = (4096 if CUDA else 512), 10
    torch.manual_seed(0)
    cfg = get_gpt_config("GPT-tiny", vocab_size=N, num_classes=C, grid=(8, 8), n_kv_head=2)
    model = GPT(cfg).to(DEVICE).eval()
    torch.nn.init.normal_(model.output.weight, std=0.1)  # the head is zero-initialised: make logits non-trivial
    B, L = 4, cfg.block_size
    codes = torch.randint(0, N, (B, L), device=DEVICE)
    labels = torch.randint(0, C, (B,), device=DEVICE)
    ac = torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16)
    with torch.no_grad(), ac:
        full = model(codes, labels).float()  # [B, L, V]: position i predicts codes[:, i]
        caches = [KVCache(B, cfg.kv_heads, L, cfg.head_dim) for _ in model.layers]
        h = model.cls_embedding(labels, train=False).to(model.tok_embeddings.weight.dtype)
        steps = [model.output(model.forward_hidden(h, caches=caches, start=0)[:, -1:]).float()]
        P = 5  # chunked prefill of codes[:, :P] after the class token (explicit causal-mask path), then 1 by 1
        hid = model.forward_hidden(model.tok_embeddings(codes[:, :P]), caches=caches, start=1)
        steps.append(model.output(hid).float())
        for i in range(P, L - 1):
            hid = model.forward_hidden(model.tok_embeddings(codes[:, i : i + 1]), caches=caches, start=1 + i)
            steps.append(model.output(hid).float())
        inc = torch.cat(steps, 1)
    diff = (inc - full).abs()
    scale = float(full.abs().max())
    tol = (3e-2 if bf16 else 1e-4) * max(1.0, scale)
    record(
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        logit_scale=scale,
        tol=tol,
        argmax_agree=float((inc.argmax(-1) == full.argmax(-1)).float().mean()),
    )
    assert inc.shape == full.shape == (B, L, N)
    assert torch.isfinite(inc).all()
    assert float(diff.max()) <= tol, f"cached logits differ from full forward: max |diff| {float(diff.max()):.3g}"


# ------------------------------------------------------------------------------------------------ 2. objectives
def _objectives(k: int) -> dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]:
    from codeprior.train.objectives import (
        cluster_ce_loss,
        cluster_logits,
        coarse_loss,
        to_coarse,
        token_loss,
    )

    return {
        "token": lambda x, t, m: token_loss(x, t),
        "cluster_ce": lambda x, t, m: cluster_ce_loss(x, t, m, 1.0, k=k, return_cluster_logits=True)[0],
        "cluster_ce_lam0.5_nologits": lambda x, t, m: cluster_ce_loss(x, t, m, 0.5, k=k, return_cluster_logits=False)[
            0
        ],
        "cluster_logits": lambda x, t, m: (cluster_logits(x, m, k) * torch.linspace(-1, 1, k, device=x.device)).sum(),
        "coarse": lambda x, t, m: coarse_loss(x[..., :k], to_coarse(t, m)),
        # ignored positions (every 5th target; row 0's underflowing target is kept) and the other reductions
        "token_ignore_sum": lambda x, t, m: token_loss(x, t.masked_fill(t % 5 == 1, -100), reduction="sum"),
        "cluster_ce_ignore_mean": lambda x, t, m: cluster_ce_loss(x, t.masked_fill(t % 5 == 1, -100), m, k=k)[0],
        "cluster_ce_ignore_none": lambda x, t, m: (
            cluster_ce_loss(x, t.masked_fill(t % 5 == 1, -100), m, k=k, reduction="none")[0]
            * torch.linspace(0, 1, t.shape[-1], device=x.device)
        ).sum(),
    }


@needs_cuda
@pytest.mark.parametrize("name", list(_objectives(1024)))
def test_objectives_equal_cpu(name: str, record: Callable[..., None]) -> None:
    """Same loss and gradient on the device as on CPU (fp32), including a row whose target cluster underflows."""
    g = torch.Generator().manual_seed(0)
    N, k = 4096, 1024
    ttc = torch.randperm(N, generator=g) % k
    x0 = torch.randn(6, 49, N, generator=g) * 3
    x0[0, 0, ttc == int(ttc[0])] -= 200.0  # a whole cluster ~200 below the row max: the underflow branch
    t = torch.randint(0, N, (6, 49), generator=g)
    t[0, 0] = 0  # ... and it is the target's cluster
    fn = _objectives(k)[name]
    vals, grads = [], []
    for dev in (torch.device("cpu"), DEVICE):
        x = x0.to(dev, copy=True).requires_grad_(True)  # a fresh leaf per device
        loss = fn(x, t.to(dev), ttc.to(dev))
        loss.backward()
        vals.append(loss.detach().double().cpu())
        grads.append(x.grad.double().cpu())
    dv = float((vals[0] - vals[1]).abs())
    dg = float((grads[0] - grads[1]).abs().max())
    record(loss_cpu=float(vals[0]), loss_dev=float(vals[1]), abs_diff=dv, grad_max_abs_diff=dg)
    assert torch.isfinite(vals[1]) and torch.isfinite(grads[1]).all()
    assert dv <= 1e-5 * max(1.0, float(vals[0].abs()))
    assert dg <= 1e-6


# ------------------------------------------------------------------------------------------------ 3. training
def _train_args(
    ctx: Ctx, name: str, objective: str, *extra: str, steps: int | None = None, overwrite: bool = True
) -> list[str]:
    args = [
        "train",
        "--codes",
        str(ctx.codes),
        "--out",
        str(ctx.run_dir(name)),
        "--model",
        "GPT-tiny",
        "--objective",
        objective,
        "--max-steps",
        str(steps or ctx.steps),
        "--global-batch",
        str(ctx.batch),
        "--device",
        DEVICE.type,
        "--precision",
        "bf16" if CUDA else "fp32",
        "--log-every",
        "5",
        "--ckpt-every",
        "1000",
        "--val-batches",
        "2",
        "--no-tensorboard",
        "--no-progress",
    ]
    args += ["--overwrite"] if overwrite else []
    if objective != "token":
        args += ["--prior", str(ctx.prior)]
    if not CUDA:
        args += ["--threads", "1"]
    return args + list(extra)


def _read_metrics(run: Path, tokens_per_step: int) -> dict[str, Any]:
    """Logged steps and losses of RUN/metrics.csv (asserted finite) and the steady steps/s."""
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows if r.get("loss")]
    tps = [float(r["tokens_per_s"]) for r in rows if r.get("tokens_per_s")]
    assert losses and all(math.isfinite(v) for v in losses), f"{run}/metrics.csv: non-finite or missing losses {losses}"
    val = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
    assert all(math.isfinite(v) for v in val), f"{run}/metrics.csv: non-finite validation loss {val}"
    steady = tps[1:] or tps  # the first window holds start-up (and compilation)
    return {
        "logged_steps": [int(r["step"]) for r in rows if r.get("loss")],
        "losses": losses,
        "val_loss": val,
        "steps_per_s": statistics.median(steady) / tokens_per_step if steady else None,
    }


def _check_model_file(path: Path, *, refine: bool = False) -> None:
    """The checkpoint opens with codeprior's loaders and gives finite logits (a refine model: finite row maxima,
    no NaN, since it masks non-members of each position's cluster to -inf)."""
    from codeprior.models.checkpoint import load_gpt, load_refine

    m = (load_refine if refine else load_gpt)(path, device=DEVICE)
    c = m.config
    inp_vocab = c.coarse_vocab_size if refine else c.vocab_size
    with torch.no_grad():
        logits = m(torch.randint(0, inp_vocab, (2, c.block_size), device=DEVICE), torch.tensor([0, 1], device=DEVICE))
    assert not torch.isnan(logits).any(), f"{path}: NaN logits after loading"
    assert torch.isfinite(logits.max(-1).values).all(), f"{path}: non-finite logits after loading"
    if not refine:
        assert torch.isfinite(logits).all(), f"{path}: non-finite logits after loading"


def _train_run(
    ctx: Ctx, name: str, objective: str, *extra: str, torchrun: bool = False, timeout: float = TIMEOUT
) -> dict[str, Any]:
    """``codeprior train`` in a subprocess; finite losses; the last checkpoint and model.pt load."""
    proc = ctx.cli(*_train_args(ctx, name, objective, *extra), torchrun=torchrun, timeout=timeout)
    run = ctx.run_dir(name)
    res = {**proc, **_read_metrics(run, ctx.batch * ctx.grid[0] * ctx.grid[1])}
    _check_model_file(max((run / "checkpoints").glob("*.pt")))
    _check_model_file(run / "model.pt")
    return res


@pytest.fixture(scope="module")
def token_run(ctx: Ctx) -> dict[str, Any]:
    """The eager token run (trained once: the compile, resume and sampling checks use it)."""
    return _train_run(ctx, "token", "token")


@pytest.fixture(scope="module")
def cluster_ce_run(ctx: Ctx) -> dict[str, Any]:
    return _train_run(ctx, "cluster-ce", "cluster-ce")


@slow
def test_train_token(token_run: dict[str, Any], ctx: Ctx, record: Callable[..., None]) -> None:
    record(steps_per_s=token_run["steps_per_s"], wall_s=token_run["wall_s"])
    assert token_run["logged_steps"][-1] == ctx.steps


@slow
def test_train_cluster_ce(cluster_ce_run: dict[str, Any], ctx: Ctx, record: Callable[..., None]) -> None:
    record(steps_per_s=cluster_ce_run["steps_per_s"], wall_s=cluster_ce_run["wall_s"])
    assert cluster_ce_run["logged_steps"][-1] == ctx.steps


@slow
@needs_cuda
@pytest.mark.parametrize("objective", ["token", "cluster-ce"])
def test_train_compile(objective: str, ctx: Ctx, request: pytest.FixtureRequest, record: Callable[..., None]) -> None:
    """``--compile``; steps/s against the eager run (the first logging window, which holds compilation, excluded)."""
    eager = request.getfixturevalue("token_run" if objective == "token" else "cluster_ce_run")
    res = _train_run(ctx, f"{objective}-compile", objective, "--compile", timeout=max(TIMEOUT, 300))
    figures = {"steps_per_s": res["steps_per_s"], "eager_steps_per_s": eager["steps_per_s"]}
    if eager["steps_per_s"] and res["steps_per_s"]:
        figures["speedup_vs_eager"] = res["steps_per_s"] / eager["steps_per_s"]
    record(**figures)
    assert res["logged_steps"][-1] == ctx.steps


@slow
@needs_cuda
def test_train_fsdp_torchrun(ctx: Ctx, record: Callable[..., None]) -> None:
    """``torchrun --standalone --nproc_per_node 1 -m codeprior.cli train ... --fsdp`` (FSDP needs CUDA)."""
    res = _train_run(ctx, "token-fsdp", "token", "--fsdp", torchrun=True)
    record(steps_per_s=res["steps_per_s"], wall_s=res["wall_s"])
    assert res["logged_steps"][-1] == ctx.steps


@slow
def test_train_resume(token_run: dict[str, Any], ctx: Ctx, record: Callable[..., None]) -> None:
    """Continue (a copy of) the finished token run to 10 more steps with ``--resume``."""
    from codeprior.utils.io import load_checkpoint

    more = ctx.steps + 10
    run = ctx.run_dir("token-resume")
    shutil.copytree(ctx.run_dir("token"), run)
    res = {
        **ctx.cli(*_train_args(ctx, "token-resume", "token", "--resume", steps=more, overwrite=False)),
        **_read_metrics(run, ctx.batch * ctx.grid[0] * ctx.grid[1]),
    }
    record(steps_per_s=res["steps_per_s"], wall_s=res["wall_s"])
    assert res["logged_steps"][-1] == more, f"resumed run ended at step {res['logged_steps'][-1]}"
    assert int(load_checkpoint(run / "model.pt")["steps"]) == more
    _check_model_file(run / "model.pt")


# ------------------------------------------------------------------------------------------------ FSDP wrap
def _fsdp_worker(device: str, out: str) -> None:
    """Child process: FSDP-wrap a GPT with the trainer's wrap_model on a world-1 NCCL group, train 5 bf16 steps,
    gather; writes the figures to ``out`` (JSON) and raises if a check fails."""
    import torch.distributed as dist

    import codeprior.train.distributed as D
    from codeprior.models.gpt import GPT, get_gpt_config
    from codeprior.utils.io import write_json_atomic

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(D.free_port()), RANK="0", WORLD_SIZE="1")
    dev = torch.device("cuda", torch.device(device).index or 0)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=dev)

    class _Info(D.DistInfo):  # a world-1 group works for FSDP; DistInfo calls it distributed only for world > 1
        distributed = True  # type: ignore[assignment]

    try:
        torch.manual_seed(0)
        model = GPT(get_gpt_config("GPT-tiny", vocab_size=512, num_classes=10, grid=(7, 7))).to(dev)
        wrapped = D.wrap_model(model, _Info(device=dev), fsdp=True, bf16=True)
        opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
        codes = torch.randint(0, 512, (16, 49), device=dev)
        labels = torch.randint(0, 10, (16,), device=dev)
        losses = []
        for _ in range(5):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(wrapped(codes, labels).flatten(0, 1), codes.flatten())
            loss.backward()
            wrapped.clip_grad_norm_(1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss))
        sd = D.full_model_state_dict(wrapped)
        osd = D.full_optimizer_state_dict(wrapped, opt)
        plain = GPT(model.config).to(dev).eval()
        plain.load_state_dict(sd)
        wrapped.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            a, b = wrapped(codes, labels), plain(codes, labels)
        res = {
            "losses": losses,
            "full_state_dict_keys": len(sd),
            "optimizer_state_entries": len(osd["state"]) if osd else 0,
            "gathered_vs_fsdp_max_abs_diff": float((a - b).abs().max()),
            "logit_scale": float(a.abs().max()),
        }
        write_json_atomic(out, res)
    finally:
        dist.destroy_process_group()


@slow
@needs_cuda
def test_fsdp_wrap_world1(ctx: Ctx, record: Callable[..., None]) -> None:
    """``wrap_model(fsdp=True)`` on a 1-process NCCL group (in a child process): the loss decreases over 5 bf16
    steps, and the gathered full state dict loads into a plain GPT with the FSDP model's logits."""
    out = ctx.work / "fsdp_worker.json"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_gpu; "
        f"test_gpu._fsdp_worker({str(DEVICE)!r}, {str(out)!r})"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=ctx.env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert p.returncode == 0, _failure_text(p)
    res = json.loads(out.read_text())
    record(**res)
    losses = res["losses"]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], f"FSDP losses {losses}"
    assert res["gathered_vs_fsdp_max_abs_diff"] <= 5e-2 * max(1.0, res["logit_scale"])


# ------------------------------------------------------------------------------------------------ 4. sampling
def _codes_cpu_vs_device(ckpt: Path, refine: Path | None, num: int, seed: int, cfg: float) -> dict[str, Any]:
    """Generate the same samples on CPU and on the device: the share of equal codes (informational)."""
    from codeprior.models.checkpoint import load_gpt, load_refine
    from codeprior.sample import SampleSettings, balanced_labels, generate_codes

    st = SampleSettings(cfg_scale=cfg, seed=seed)
    codes, secs = {}, {}
    for dev in dict.fromkeys([torch.device("cpu"), DEVICE]):
        gpt = load_gpt(ckpt, device=dev)
        ref = load_refine(refine, device=dev) if refine else None
        labels = balanced_labels(num, gpt.config.num_classes)
        t0 = time.perf_counter()
        codes[dev.type] = generate_codes(gpt, labels, list(range(num)), st, refine=ref).cpu()
        secs[dev.type] = round(time.perf_counter() - t0, 3)
    eq = (codes["cpu"] == codes[DEVICE.type]).float()
    return {
        "codes_equal_fraction": float(eq.mean()),
        "samples_identical_fraction": float(eq.all(1).float().mean()),
        "generate_s_cpu": secs["cpu"],
        f"generate_s_{DEVICE.type}": secs[DEVICE.type],
    }


def _sample(ctx: Ctx, name: str, ckpt: Path, *extra: str, num: int, seed: int) -> np.ndarray:
    out = ctx.work / "samples" / name
    shutil.rmtree(out, ignore_errors=True)
    ctx.cli(
        "sample",
        "--ckpt",
        str(ckpt),
        *extra,
        "--tokenizer",
        str(ctx.vq),
        "--num-samples",
        str(num),
        "--cfg-scale",
        "2.0",
        "--seed",
        str(seed),
        "--batch-size",
        "4",
        "--device",
        str(DEVICE),
        "--out",
        str(out),
    )
    return np.load(out / "samples.npz")["arr_0"]


@slow
def test_sample_token(token_run: dict[str, Any], ctx: Ctx, record: Callable[..., None]) -> None:
    """``codeprior sample`` with CFG on the device writes the images; device-vs-CPU code agreement is recorded."""
    ckpt = ctx.run_dir("token") / "model.pt"
    imgs = _sample(ctx, "token", ckpt, num=8, seed=3)
    record(npz_shape=list(imgs.shape), **_codes_cpu_vs_device(ckpt, None, 8, seed=3, cfg=2.0))
    assert imgs.shape[0] == 8 and imgs.dtype == np.uint8


@slow
def test_sample_coarse_to_fine(ctx: Ctx, record: Callable[..., None]) -> None:
    """Coarse GPT + ``train-refine``, then coarse-to-fine ``codeprior sample --refine`` on the device."""
    coarse = _train_run(ctx, "coarse", "coarse")
    refine_dir = ctx.run_dir("refine")
    args = [
        "train-refine",
        "--codes",
        str(ctx.codes),
        "--prior",
        str(ctx.prior),
        "--model",
        "Refine-tiny",
        "--out",
        str(refine_dir),
        "--max-steps",
        str(ctx.steps),
        "--global-batch",
        str(ctx.batch),
        "--device",
        DEVICE.type,
        "--precision",
        "bf16" if CUDA else "fp32",
        "--log-every",
        "5",
        "--val-batches",
        "2",
        "--no-tensorboard",
        "--no-progress",
        "--overwrite",
    ]
    if not CUDA:
        args += ["--threads", "1"]
    ctx.cli(*args)
    refine = _read_metrics(refine_dir, ctx.batch * ctx.grid[0] * ctx.grid[1])
    _check_model_file(refine_dir / "model.pt", refine=True)
    ckpt = ctx.run_dir("coarse") / "model.pt"
    imgs = _sample(ctx, "ctf", ckpt, "--refine", str(refine_dir / "model.pt"), "--temperature", "1.1", num=8, seed=5)
    record(
        coarse_steps_per_s=coarse["steps_per_s"],
        refine_steps_per_s=refine["steps_per_s"],
        npz_shape=list(imgs.shape),
        **_codes_cpu_vs_device(ckpt, refine_dir / "model.pt", 8, seed=5, cfg=2.0),
    )
    assert imgs.shape[0] == 8, f"samples.npz: {imgs.shape[0]} images, expected 8"


# ------------------------------------------------------------------------------------------------ 5. throughput
def _train_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    obj: str,
    codes: torch.Tensor,
    labels: torch.Tensor,
    ttc: torch.Tensor,
    k: int,
) -> Callable[[], torch.Tensor]:
    """One training step of ``obj`` (forward under bf16 autocast on CUDA, loss, backward, clip, AdamW)."""
    from codeprior.train.objectives import (
        cluster_ce_loss,
        coarse_loss,
        to_coarse,
        token_loss,
    )

    inp = to_coarse(codes, ttc) if obj == "coarse" else codes

    def step() -> torch.Tensor:
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=CUDA):
            logits = model(inp, labels)
            if obj == "token":
                loss = token_loss(logits, codes)
            elif obj == "cluster-ce":
                loss = cluster_ce_loss(logits, codes, ttc, 1.0, k=k, return_cluster_logits=False)[0]
            else:
                loss = coarse_loss(logits, inp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


@slow
def test_throughput(record: Callable[..., None]) -> None:
    """Median train-step time (forward, backward, clip, fused AdamW) per objective at batch 64, bf16 autocast (on
    CPU: GPT-tiny, 4x4 codes, batch 8, fp32), and the ratios to token; every step's loss is finite."""
    from codeprior.models.gpt import GPT, get_gpt_config

    if CUDA:
        name, N, grid, B, C = "GPT-B", 16384, (16, 16), 64, 1000
    else:
        name, N, grid, B, C = "GPT-tiny", 512, (4, 4), 8, 10
    k = N // 2  # DCPE-like: unequal clusters, about two codes each
    g = torch.Generator().manual_seed(0)
    cut = torch.sort(torch.randperm(N - 1, generator=g)[: k - 1] + 1).values
    ttc = torch.zeros(N, dtype=torch.long)
    ttc[cut] = 1
    ttc = ttc.cumsum(0)[torch.randperm(N, generator=g)].to(DEVICE)  # k unequal clusters, scattered members
    codes = torch.randint(0, N, (B, grid[0] * grid[1]), generator=g).to(DEVICE)
    labels = torch.randint(0, C, (B,), generator=g).to(DEVICE)
    warm, reps = (3, 10) if CUDA else (2, 3)
    out: dict[str, Any] = {
        "model": name,
        "vocab": N,
        "k": k,
        "grid": list(grid),
        "batch": B,
        "precision": "bf16" if CUDA else "fp32",
    }
    for obj in ("token", "cluster-ce", "coarse"):
        torch.manual_seed(0)
        model = GPT(get_gpt_config(name, vocab_size=k if obj == "coarse" else N, num_classes=C, grid=grid)).to(DEVICE)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=CUDA)
        step = _train_step(model, opt, obj, codes, labels, ttc, k)
        for _ in range(warm):
            step()
        times, losses = [], []
        for _ in range(reps):
            _sync()
            t0 = time.perf_counter()
            losses.append(step())
            _sync()
            times.append(time.perf_counter() - t0)
        assert all(math.isfinite(float(v)) for v in losses), f"{obj}: non-finite loss"
        med = statistics.median(times)
        out[obj] = {
            "median_step_s": med,
            "steps_s": times,
            "tokens_per_s": B * codes.shape[1] / med,
            "params": model.num_params(),
        }
        if CUDA:
            out[obj]["peak_mem_gib"] = torch.cuda.max_memory_allocated(DEVICE) / 2**30
            torch.cuda.reset_peak_memory_stats(DEVICE)
        del model, opt, step
        if CUDA:
            torch.cuda.empty_cache()
    for obj in ("cluster-ce", "coarse"):
        out[f"{obj}_over_token"] = out[obj]["median_step_s"] / out["token"]["median_step_s"]
    record(**out)
