"""GPU check: exercise codeprior's accelerator paths on one CUDA device and write a JSON report.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out gpu_check.json            # CUDA, ~3-6 minutes
    PYTHONPATH=src python3 benchmarks/gpu_check.py --device cpu --quick --out /tmp/gc.json   # smoke test on CPU

Checks (each records status pass / fail / skip, the error, timings and details; a failure does not stop the others):

* ``kv_cache_fp32`` / ``kv_cache_bf16``: cached incremental decoding (class prefill, a chunked prefill, then one token
  at a time) gives the logits of a plain full forward (GPT-tiny with GQA, fp32 and bf16 autocast).
* ``objectives``: token / cluster-CE / cluster-logits / coarse losses and gradients on the device equal those on CPU.
* ``train_*``: ``codeprior train`` in subprocesses (token, cluster-ce; eager, ``--compile``; FSDP under torchrun;
  ``--resume`` for more steps; coarse + ``train-refine``); finite losses, checkpoints load with ``load_gpt``.
* ``fsdp_wrap_world1``: ``distributed.wrap_model(fsdp=True)`` on a 1-process NCCL group, a few bf16 steps, then the
  gathered full state dict loads into a plain GPT and gives the same logits.
* ``sample_*``: ``codeprior sample`` with CFG (and coarse-to-fine with ``--refine``); the fraction of codes equal
  between the device and CPU for the same seed is recorded (informational: kernels differ across devices).
* ``throughput``: train-step time of GPT-B (GPT-tiny with ``--quick``) for token / cluster-ce / coarse at batch 64,
  bf16, median of 10 steps after warm-up, and the ratios to token.

Needs only torch, numpy, safetensors (no fastcluster / faiss / prdc, no data files, no network): the data, the
prior and the VQ tokenizer are synthetic, written under ``--workdir`` (a temporary directory by default).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(SRC))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from codeprior.utils.io import write_json_atomic  # noqa: E402


class Skip(Exception):
    """Raised by a check that does not apply here (e.g. FSDP on CPU)."""


# ------------------------------------------------------------------------------------------------ context
class Ctx:
    """Settings and shared artefacts (synthetic data, prior, tokenizer, trained runs) of one gpu_check run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.quick = bool(args.quick)
        self.work = Path(args.workdir)
        self.timeout = args.timeout
        self.results: dict[str, dict[str, Any]] = {}
        # Synthetic code data: 7x7 grid (Fashion-MNIST-like), vocabulary N, k clusters (unequal, scattered).
        self.N = 512 if self.quick else 4096
        self.k = self.N // 8
        self.grid = (7, 7)
        self.num_classes = 10
        self.steps = 10 if self.quick else 30
        self.batch = 8 if self.quick else 32
        self._data_ready = False

    # paths
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

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("OMP_NUM_THREADS", "1" if not self.cuda else env.get("OMP_NUM_THREADS", "4"))
        return env

    def ensure_data(self) -> None:
        """Random code shards (train/test), a random partition prior and a random VQ-fmnist-shaped tokenizer."""
        if self._data_ready:
            return
        from codeprior.data.codes import write_code_shards
        from codeprior.models.checkpoint import save_vq
        from codeprior.models.vq import VQModel, get_vq_config
        from codeprior.priors.prior import Prior

        g = np.random.default_rng(0)
        L = self.grid[0] * self.grid[1]
        meta = {"grid": list(self.grid), "codebook_size": self.N, "num_classes": self.num_classes,
                "dataset": "synthetic (gpu_check)"}
        for split, n in (("train", 256 if self.quick else 1024), ("test", 64)):
            labels = g.integers(0, self.num_classes, n)
            # class-dependent codes plus noise, so the loss has something to learn
            base = (labels[:, None] * 37 + np.arange(L)[None, :] * 11) % self.N
            noise = g.integers(0, 8, (n, L))
            codes = ((base + noise) % self.N).reshape(n, 1, L)
            write_code_shards(self.codes, split, codes, labels, meta)
        ttc = torch.from_numpy(g.permutation(self.N) % self.k)  # every cluster used, members scattered
        Prior(ttc, {"method": "random (gpu_check)"}).save(self.prior)
        torch.manual_seed(0)
        save_vq(VQModel(get_vq_config("VQ-fmnist", codebook_size=self.N)), self.vq)
        self._data_ready = True

    def cli(self, *argv: str, torchrun: bool = False, timeout: float | None = None) -> dict[str, Any]:
        """Run ``python -m codeprior.cli ARGV`` (or under ``torch.distributed.run``); raise on a non-zero exit."""
        if torchrun:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                   "-m", "codeprior.cli", *argv]
        else:
            cmd = [sys.executable, "-m", "codeprior.cli", *argv]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, env=self.env(), capture_output=True, text=True,
                           timeout=timeout or self.timeout)
        wall = time.perf_counter() - t0
        out = {"cmd": " ".join(cmd[1:]), "rc": p.returncode, "wall_s": round(wall, 2)}
        if p.returncode != 0:
            raise RuntimeError(_failure_text(p))
        out["stdout_tail"] = p.stdout.strip().splitlines()[-3:]
        return out


def _failure_text(p: subprocess.CompletedProcess) -> str:
    """One line for a failed subprocess: codeprior's own error line if any (torchrun prints its summary after it),
    else the last lines of stderr."""
    lines = (p.stderr or p.stdout or "").strip().splitlines()
    own = [ln for ln in lines if "codeprior: error:" in ln]
    return f"exit {p.returncode}: " + " | ".join(own[-2:] or lines[-12:])


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ------------------------------------------------------------------------------------------------ 1. KV cache
def _kv_parity(ctx: Ctx, bf16: bool) -> dict[str, Any]:
    from codeprior.models.gpt import GPT, KVCache, get_gpt_config

    if bf16 and not ctx.cuda and not ctx.quick:
        raise Skip("bf16 autocast parity is checked on CUDA")
    dev = ctx.device
    torch.manual_seed(0)
    cfg = get_gpt_config("GPT-tiny", vocab_size=ctx.N, num_classes=ctx.num_classes, grid=(8, 8), n_kv_head=2)
    model = GPT(cfg).to(dev).eval()
    torch.nn.init.normal_(model.output.weight, std=0.1)  # the head is zero-initialised: make logits non-trivial
    B, L = 4, cfg.block_size
    codes = torch.randint(0, ctx.N, (B, L), device=dev)
    labels = torch.randint(0, ctx.num_classes, (B,), device=dev)
    ac = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
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
    res = {"dtype": "bf16-autocast" if bf16 else "fp32", "max_abs_diff": float(diff.max()),
           "mean_abs_diff": float(diff.mean()), "logit_scale": scale, "tol": tol,
           "argmax_agree": float((inc.argmax(-1) == full.argmax(-1)).float().mean()), "shape": list(full.shape)}
    if not torch.isfinite(inc).all() or res["max_abs_diff"] > tol:
        raise AssertionError(f"cached logits differ from full forward: max |diff| {res['max_abs_diff']:.3g} > {tol:.3g}")
    return res


def check_kv_cache_fp32(ctx: Ctx) -> dict[str, Any]:
    return _kv_parity(ctx, bf16=False)


def check_kv_cache_bf16(ctx: Ctx) -> dict[str, Any]:
    return _kv_parity(ctx, bf16=True)


# ------------------------------------------------------------------------------------------------ 2. objectives
def check_objectives(ctx: Ctx) -> dict[str, Any]:
    """Same losses and gradients on the device as on CPU (fp32), including rows where a cluster underflows."""
    from codeprior.train.objectives import cluster_ce_loss, cluster_logits, coarse_loss, to_coarse, token_loss

    if not ctx.cuda:
        raise Skip("device is cpu: nothing to compare against")
    g = torch.Generator().manual_seed(0)
    N, k = 4096, 1024
    ttc = torch.randperm(N, generator=g) % k
    x0 = torch.randn(6, 49, N, generator=g) * 3
    x0[0, 0, ttc == int(ttc[0])] -= 200.0  # a whole cluster ~200 below the row max: the underflow branch
    t = torch.randint(0, N, (6, 49), generator=g)
    t[0, 0] = 0  # ... and it is the target's cluster
    fns: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "token": lambda x, t, m: token_loss(x, t),
        "cluster_ce": lambda x, t, m: cluster_ce_loss(x, t, m, 1.0, k=k)[0],
        "cluster_ce_lam0.5_nologits": lambda x, t, m: cluster_ce_loss(x, t, m, 0.5, k=k, return_cluster_logits=False)[0],
        "cluster_logits": lambda x, t, m: (cluster_logits(x, m, k) * torch.linspace(-1, 1, k, device=x.device)).sum(),
        "coarse": lambda x, t, m: coarse_loss(x[..., :k], to_coarse(t, m)),
    }
    out: dict[str, Any] = {}
    bad = []
    for name, fn in fns.items():
        vals, grads = [], []
        for dev in (torch.device("cpu"), ctx.device):
            x = x0.to(dev, copy=True).requires_grad_(True)  # a fresh leaf per device and loss
            loss = fn(x, t.to(dev), ttc.to(dev))
            loss.backward()
            vals.append(loss.detach().double().cpu())
            grads.append(x.grad.double().cpu())
        dv = float((vals[0] - vals[1]).abs())
        dg = float((grads[0] - grads[1]).abs().max())
        finite = bool(torch.isfinite(vals[1]) and torch.isfinite(grads[1]).all())
        ok = finite and dv <= 1e-5 * max(1.0, float(vals[0].abs())) and dg <= 1e-6
        out[name] = {"loss_cpu": float(vals[0]), "loss_dev": float(vals[1]), "abs_diff": dv, "grad_max_abs_diff": dg,
                     "finite": finite, "ok": ok}
        if not ok:
            bad.append(name)
    if bad:
        raise AssertionError(f"device and cpu differ for {', '.join(bad)}")
    return out


# ------------------------------------------------------------------------------------------------ 3. training
def _train_args(ctx: Ctx, name: str, objective: str, *extra: str, steps: int | None = None) -> list[str]:
    args = ["train", "--codes", str(ctx.codes), "--out", str(ctx.run_dir(name)), "--model", "GPT-tiny",
            "--objective", objective, "--max-steps", str(steps or ctx.steps), "--global-batch", str(ctx.batch),
            "--device", ctx.device.type, "--precision", "bf16" if ctx.cuda else "fp32", "--log-every", "5",
            "--ckpt-every", "1000", "--val-batches", "2", "--no-tensorboard", "--no-progress", "--overwrite"]
    if objective != "token":
        args += ["--prior", str(ctx.prior)]
    if not ctx.cuda:
        args += ["--threads", "1"]
    return args + list(extra)


def _read_metrics(run: Path, tokens_per_step: int) -> dict[str, Any]:
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f)]
    losses = [float(r["loss"]) for r in rows if r.get("loss")]
    tps = [float(r["tokens_per_s"]) for r in rows if r.get("tokens_per_s")]
    if not losses or not all(math.isfinite(v) for v in losses):
        raise AssertionError(f"{run}/metrics.csv: non-finite or missing losses {losses}")
    val = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
    if val and not all(math.isfinite(v) for v in val):
        raise AssertionError(f"{run}/metrics.csv: non-finite validation loss {val}")
    steady = tps[1:] or tps  # the first window holds start-up (and compilation)
    return {"logged_steps": [int(r["step"]) for r in rows if r.get("loss")], "losses": losses, "val_loss": val,
            "steps_per_s": statistics.median(steady) / tokens_per_step if steady else None,
            "first_window_steps_per_s": tps[0] / tokens_per_step if tps else None}


def _check_model_file(path: Path, ctx: Ctx, *, refine: bool = False) -> dict[str, Any]:
    """The checkpoint opens with codeprior's loaders and gives finite logits."""
    from codeprior.models.checkpoint import load_gpt, load_refine

    m = (load_refine if refine else load_gpt)(path, device=ctx.device)
    c = m.config
    L = c.block_size
    inp_vocab = c.coarse_vocab_size if refine else c.vocab_size
    with torch.no_grad():
        logits = m(torch.randint(0, inp_vocab, (2, L), device=ctx.device), torch.tensor([0, 1], device=ctx.device))
    # a refine model masks non-members of each position's cluster to -inf: check the kept entries only
    ok = (not torch.isnan(logits).any()) and bool(torch.isfinite(logits.max(-1).values).all())
    if not ok or (not refine and not torch.isfinite(logits).all()):
        raise AssertionError(f"{path}: NaN or non-finite logits after loading")
    return {"loaded": str(path.name), "params": sum(p.numel() for p in m.parameters()), "vocab": c.vocab_size}


def _train_run(ctx: Ctx, name: str, objective: str, *extra: str, steps: int | None = None, torchrun: bool = False,
               timeout: float | None = None) -> dict[str, Any]:
    ctx.ensure_data()
    proc = ctx.cli(*_train_args(ctx, name, objective, *extra, steps=steps), torchrun=torchrun, timeout=timeout)
    run = ctx.run_dir(name)
    res = {**proc, **_read_metrics(run, ctx.batch * ctx.grid[0] * ctx.grid[1])}
    res["checkpoint"] = _check_model_file(sorted((run / "checkpoints").glob("*.pt"))[-1], ctx)
    res["model_pt"] = _check_model_file(run / "model.pt", ctx)
    return res


def check_train_token(ctx: Ctx) -> dict[str, Any]:
    return _train_run(ctx, "token", "token")


def check_train_cluster_ce(ctx: Ctx) -> dict[str, Any]:
    return _train_run(ctx, "cluster-ce", "cluster-ce")


def _compile(ctx: Ctx, objective: str) -> dict[str, Any]:
    if not ctx.cuda:
        raise Skip("--compile is exercised on CUDA only (inductor on CPU is slow to build here)")
    res = _train_run(ctx, f"{objective}-compile", objective, "--compile", timeout=max(ctx.timeout, 300))
    eager = ctx.results.get(f"train_{objective.replace('-', '_')}", {}).get("details", {})
    if eager.get("steps_per_s") and res.get("steps_per_s"):
        res["speedup_vs_eager"] = res["steps_per_s"] / eager["steps_per_s"]
        res["eager_steps_per_s"] = eager["steps_per_s"]
    return res


def check_train_compile_token(ctx: Ctx) -> dict[str, Any]:
    return _compile(ctx, "token")


def check_train_compile_cluster_ce(ctx: Ctx) -> dict[str, Any]:
    return _compile(ctx, "cluster-ce")


def check_train_fsdp_torchrun(ctx: Ctx) -> dict[str, Any]:
    """``torchrun --standalone --nproc_per_node 1 -m codeprior.cli train ... --fsdp`` (FSDP needs CUDA)."""
    if not ctx.cuda:
        raise Skip("FSDP needs CUDA")
    return _train_run(ctx, "token-fsdp", "token", "--fsdp", torchrun=True)


def check_train_resume(ctx: Ctx) -> dict[str, Any]:
    """Continue the finished token run to more steps with ``--resume``."""
    if ctx.results.get("train_token", {}).get("status") != "pass":
        raise Skip("needs train_token")
    more = ctx.steps + 10
    args = [a for a in _train_args(ctx, "token", "token", "--resume", steps=more) if a != "--overwrite"]
    proc = ctx.cli(*args)
    run = ctx.run_dir("token")
    res = {**proc, **_read_metrics(run, ctx.batch * ctx.grid[0] * ctx.grid[1])}
    if res["logged_steps"][-1] != more:
        raise AssertionError(f"resumed run ended at step {res['logged_steps'][-1]}, expected {more}")
    from codeprior.utils.io import load_checkpoint

    steps = int(load_checkpoint(run / "model.pt")["steps"])
    if steps != more:
        raise AssertionError(f"model.pt holds step {steps}, expected {more}")
    res["model_pt"] = _check_model_file(run / "model.pt", ctx)
    return res


def check_fsdp_wrap_world1(ctx: Ctx) -> dict[str, Any]:
    """``wrap_model(fsdp=True)`` on a 1-process NCCL group, in a child process (see :func:`_fsdp_worker`)."""
    if not ctx.cuda:
        raise Skip("FSDP needs CUDA")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--fsdp-worker", "--device", str(ctx.device),
           "--out", str(ctx.work / "fsdp_worker.json")]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=ctx.env(), capture_output=True, text=True, timeout=ctx.timeout)
    if p.returncode != 0:
        raise RuntimeError(_failure_text(p))
    import json

    res = json.loads((ctx.work / "fsdp_worker.json").read_text())
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    return res


def _fsdp_worker(device: str, out: str) -> int:
    """Child process: FSDP-wrap a GPT with the trainer's wrap_model on a world-1 group, train 5 bf16 steps, gather."""
    import torch.distributed as dist

    import codeprior.train.distributed as D
    from codeprior.models.gpt import GPT, get_gpt_config

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(D.free_port()), RANK="0", WORLD_SIZE="1")
    dev = torch.device("cuda", torch.device(device).index or 0)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=dev)

    class _Info(D.DistInfo):  # wrap_model refuses FSDP unless world_size > 1; a world-1 group works for FSDP
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
        res = {"losses": losses, "full_state_dict_keys": len(sd), "optimizer_state_entries": len(osd["state"]) if osd else 0,
               "gathered_vs_fsdp_max_abs_diff": float((a - b).abs().max())}
        if not all(math.isfinite(v) for v in losses) or losses[-1] >= losses[0]:
            raise AssertionError(f"FSDP losses not finite or not decreasing: {losses}")
        if res["gathered_vs_fsdp_max_abs_diff"] > 5e-2 * max(1.0, float(a.abs().max())):
            raise AssertionError(f"gathered weights disagree with the FSDP model: {res['gathered_vs_fsdp_max_abs_diff']}")
        write_json_atomic(out, res)
    finally:
        dist.destroy_process_group()
    return 0


# ------------------------------------------------------------------------------------------------ 4. sampling
def check_sample_token(ctx: Ctx) -> dict[str, Any]:
    """``codeprior sample`` with CFG on the device; device-vs-CPU code agreement for the same seed."""
    if ctx.results.get("train_token", {}).get("status") != "pass":
        raise Skip("needs train_token")
    ckpt = ctx.run_dir("token") / "model.pt"
    out = ctx.work / "samples" / "token"
    shutil.rmtree(out, ignore_errors=True)
    num = 8
    proc = ctx.cli("sample", "--ckpt", str(ckpt), "--tokenizer", str(ctx.vq), "--num", str(num), "--cfg", "2.0",
                   "--seed", "3", "--batch-size", "4", "--device", str(ctx.device), "--out", str(out))
    npz = np.load(out / "samples.npz")
    imgs = npz["arr_0"]
    if imgs.shape[0] != num or imgs.dtype != np.uint8:
        raise AssertionError(f"samples.npz: got {imgs.shape} {imgs.dtype}, expected {num} uint8 images")
    res = {**proc, "npz_shape": list(imgs.shape), **_codes_cpu_vs_device(ctx, ckpt, None, num, seed=3, cfg=2.0)}
    return res


def _codes_cpu_vs_device(ctx: Ctx, ckpt: Path, refine: Path | None, num: int, seed: int, cfg: float) -> dict[str, Any]:
    from codeprior.models.checkpoint import load_gpt, load_refine
    from codeprior.sample import SampleSettings, balanced_labels, generate_codes

    st = SampleSettings(cfg_scale=cfg, seed=seed)
    codes = {}
    for dev in dict.fromkeys([torch.device("cpu"), ctx.device]):
        gpt = load_gpt(ckpt, device=dev)
        ref = load_refine(refine, device=dev) if refine else None
        labels = balanced_labels(num, gpt.config.num_classes)
        t0 = time.perf_counter()
        codes[dev.type] = generate_codes(gpt, labels, list(range(num)), st, refine=ref).cpu()
        codes[dev.type + "_s"] = time.perf_counter() - t0
    eq = (codes["cpu"] == codes[ctx.device.type]).float()
    return {"codes_equal_fraction": float(eq.mean()), "samples_identical_fraction": float(eq.all(1).float().mean()),
            "generate_s_cpu": round(codes["cpu_s"], 3), f"generate_s_{ctx.device.type}": round(codes[ctx.device.type + "_s"], 3)}


def check_sample_ctf(ctx: Ctx) -> dict[str, Any]:
    """Coarse GPT + ``train-refine``, then coarse-to-fine ``codeprior sample --refine`` on the device."""
    ctx.ensure_data()
    coarse = _train_run(ctx, "coarse", "coarse")
    refine_dir = ctx.run_dir("refine")
    args = ["train-refine", "--codes", str(ctx.codes), "--prior", str(ctx.prior), "--model", "Refine-tiny",
            "--out", str(refine_dir), "--max-steps", str(ctx.steps), "--global-batch", str(ctx.batch),
            "--device", ctx.device.type, "--precision", "bf16" if ctx.cuda else "fp32", "--log-every", "5",
            "--val-batches", "2", "--no-tensorboard", "--no-progress", "--overwrite"]
    if not ctx.cuda:
        args += ["--threads", "1"]
    refine = {**ctx.cli(*args), **_read_metrics(refine_dir, ctx.batch * 49)}
    refine["model_pt"] = _check_model_file(refine_dir / "model.pt", ctx, refine=True)
    out = ctx.work / "samples" / "ctf"
    shutil.rmtree(out, ignore_errors=True)
    num = 8
    samp = ctx.cli("sample", "--ckpt", str(ctx.run_dir("coarse") / "model.pt"), "--refine", str(refine_dir / "model.pt"),
                   "--tokenizer", str(ctx.vq), "--num", str(num), "--cfg", "2.0", "--temperature", "1.1",
                   "--seed", "5", "--batch-size", "4", "--device", str(ctx.device), "--out", str(out))
    imgs = np.load(out / "samples.npz")["arr_0"]
    if imgs.shape[0] != num:
        raise AssertionError(f"samples.npz: {imgs.shape[0]} images, expected {num}")
    agree = _codes_cpu_vs_device(ctx, ctx.run_dir("coarse") / "model.pt", refine_dir / "model.pt", num, seed=5, cfg=2.0)
    return {"coarse": coarse, "refine": refine, "sample": {**samp, "npz_shape": list(imgs.shape)}, **agree}


# ------------------------------------------------------------------------------------------------ 5. throughput
def check_throughput(ctx: Ctx) -> dict[str, Any]:
    """Median train-step time (forward, backward, clip, fused AdamW) per objective at batch 64, bf16 autocast."""
    from codeprior.models.gpt import GPT, get_gpt_config
    from codeprior.train.objectives import cluster_ce_loss, coarse_loss, to_coarse, token_loss

    dev = ctx.device
    if ctx.quick:
        name, N, grid, B, C = "GPT-tiny", 512, (4, 4), 8, 10
    else:
        name, N, grid, B, C = "GPT-B", 16384, (16, 16), 64, 1000
    k = N // 2  # DCPE-like: unequal clusters, about two codes each
    g = torch.Generator().manual_seed(0)
    cut = torch.sort(torch.randperm(N - 1, generator=g)[: k - 1] + 1).values
    ttc = torch.zeros(N, dtype=torch.long)
    ttc[cut] = 1
    ttc = ttc.cumsum(0)[torch.randperm(N, generator=g)].to(dev)  # k unequal clusters, scattered members
    codes = torch.randint(0, N, (B, grid[0] * grid[1]), generator=g).to(dev)
    labels = torch.randint(0, C, (B,), generator=g).to(dev)
    use_bf16 = ctx.cuda
    warm, reps = (2, 3) if ctx.quick else (3, 10)
    out: dict[str, Any] = {"model": name, "vocab": N, "k": k, "grid": list(grid), "batch": B,
                           "precision": "bf16" if use_bf16 else "fp32"}
    for obj in ("token", "cluster-ce", "coarse"):
        torch.manual_seed(0)
        model = GPT(get_gpt_config(name, vocab_size=k if obj == "coarse" else N, num_classes=C, grid=grid)).to(dev)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
        inp = to_coarse(codes, ttc) if obj == "coarse" else codes

        def step() -> float:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
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

        for _ in range(warm):
            step()
        times = []
        for _ in range(reps):
            _sync(dev)
            t0 = time.perf_counter()
            loss = step()
            _sync(dev)
            times.append(time.perf_counter() - t0)
        if not math.isfinite(float(loss)):
            raise AssertionError(f"{obj}: non-finite loss")
        med = statistics.median(times)
        out[obj] = {"median_step_s": med, "steps_s": times, "tokens_per_s": B * codes.shape[1] / med,
                    "params": model.num_params()}
        if dev.type == "cuda":
            out[obj]["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
            torch.cuda.reset_peak_memory_stats(dev)
        del model, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for obj in ("cluster-ce", "coarse"):
        out[f"{obj}_over_token"] = out[obj]["median_step_s"] / out["token"]["median_step_s"]
    return out


# ------------------------------------------------------------------------------------------------ runner
CHECKS: list[tuple[str, Callable[[Ctx], dict[str, Any]]]] = [
    ("kv_cache_fp32", check_kv_cache_fp32),
    ("kv_cache_bf16", check_kv_cache_bf16),
    ("objectives", check_objectives),
    ("train_token", check_train_token),
    ("train_cluster_ce", check_train_cluster_ce),
    ("train_compile_token", check_train_compile_token),
    ("train_compile_cluster_ce", check_train_compile_cluster_ce),
    ("train_fsdp_torchrun", check_train_fsdp_torchrun),
    ("fsdp_wrap_world1", check_fsdp_wrap_world1),
    ("train_resume", check_train_resume),
    ("sample_token", check_sample_token),
    ("sample_ctf", check_sample_ctf),
    ("throughput", check_throughput),
]


def _summary_line(name: str, r: dict[str, Any]) -> str:
    d = r.get("details") or {}
    bits = []
    for key in ("max_abs_diff", "steps_per_s", "speedup_vs_eager", "codes_equal_fraction", "cluster-ce_over_token",
                "coarse_over_token"):
        if isinstance(d.get(key), float):
            bits.append(f"{key}={d[key]:.4g}")
    if r["status"] != "pass" and r.get("error"):
        bits.append(r["error"][:300])
    return f"[{r['status'].upper():4}] {name:26} {r['seconds']:7.1f}s  " + " ".join(bits)


def run_checks(ctx: Ctx, only: list[str] | None, out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {**meta, "checks": ctx.results}
    for name, fn in CHECKS:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            details = fn(ctx)
            r: dict[str, Any] = {"status": "pass", "details": details}
        except Skip as e:
            r = {"status": "skip", "error": str(e)}
        except Exception as e:  # noqa: BLE001 - a failing check is recorded, the others still run
            r = {"status": "fail", "error": f"{type(e).__name__}: {e}",
                 "traceback": traceback.format_exc().strip().splitlines()[-8:]}
        r["seconds"] = round(time.perf_counter() - t0, 2)
        ctx.results[name] = r
        print(_summary_line(name, r), flush=True)
        report["counts"] = {s: sum(1 for v in ctx.results.values() if v["status"] == s) for s in ("pass", "fail", "skip")}
        write_json_atomic(out, report)  # after every check, so a killed run still leaves a report
    return report


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    dev = torch.device(args.device)
    m: dict[str, Any] = {"device": str(dev), "quick": bool(args.quick), "torch": torch.__version__,
                         "python": platform.python_version(), "host": platform.node(),
                         "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if dev.type == "cuda":
        m["gpu"] = torch.cuda.get_device_name(dev)
        m["cuda"] = torch.version.cuda
    return m


def publish(report_path: Path) -> int:
    """The ``gpu_check`` section of docs/benchmarks.md: one row per check, throughput ratios to token."""
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common

    r = json.loads(report_path.read_text())
    rows = ["| check | status | seconds | key figures |", "|---|---|---:|---|"]
    for name, c in r["checks"].items():
        d = c.get("details", {})
        keys = [k for k in ("max_abs_diff", "steps_per_s", "speedup_vs_eager", "codes_equal_fraction",
                            "cluster-ce_over_token", "coarse_over_token") if k in d]
        figs = ", ".join(f"{k} {d[k]:.4g}" if isinstance(d[k], (int, float)) else f"{k} {d[k]}" for k in keys)
        rows.append(f"| `{name}` | {c.get('status')} | {c.get('seconds', 0):.1f} | {figs} |")
    tp = r["checks"].get("throughput", {}).get("details", {})
    lines = [
        "## GPU check (CUDA paths, throughput)",
        "",
        f"Command: `PYTHONPATH=src python3 benchmarks/gpu_check.py --out gpu_check.json` on {r.get('gpu')} "
        f"(torch {r.get('torch')}, CUDA {r.get('cuda')}), {r.get('started')}; "
        f"{r['counts'].get('pass', 0)} passed, {r['counts'].get('fail', 0)} failed, {r['counts'].get('skip', 0)} "
        f"skipped in {r.get('total_seconds')} s. What each check asserts: docs/training.md, section GPU check.",
        "",
        *rows,
    ]
    if "token" in tp:
        lines += [
            "",
            f"Throughput: {tp['model']}, batch {tp['batch']}, {tp['precision']}, vocabulary {tp['vocab']}, k = {tp['k']}: "
            f"token step {tp['token']['median_step_s'] * 1e3:.1f} ms (median of {len(tp['token']['steps_s'])}); "
            f"cluster-ce / token {tp.get('cluster-ce_over_token', float('nan')):.3f}, "
            f"coarse / token {tp.get('coarse_over_token', float('nan')):.3f} (same run).",
        ]
    _common.update_doc_section("gpu_check", "\n".join(lines))
    print("wrote docs/benchmarks.md section gpu_check")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="checks: " + ", ".join(n for n, _ in CHECKS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:1 or cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for a CPU smoke test)")
    p.add_argument("--out", default="gpu_check.json", help="JSON report path (written atomically after every check)")
    p.add_argument("--workdir", default=None, help="where synthetic data and runs go (default: a temporary directory, removed)")
    p.add_argument("--only", default=None, help="comma-separated check names to run")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per CLI subprocess (compile gets >= 300)")
    p.add_argument("--publish", metavar="JSON", default=None,
                   help="no checks: write the gpu_check section of docs/benchmarks.md from a report (e.g. one copied "
                        "back from the GPU machine to benchmarks/results/gpu_check.json)")
    p.add_argument("--fsdp-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fsdp_worker:
        return _fsdp_worker(args.device, args.out)
    if args.publish:
        return publish(Path(args.publish))
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch.cuda.is_available() is False; use --device cpu", file=sys.stderr)
        return 2
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    unknown = sorted(set(only or []) - {n for n, _ in CHECKS})
    if unknown:
        print(f"gpu_check: unknown checks {unknown}", file=sys.stderr)
        return 2
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="codeprior_gpu_check_")
        args.workdir = tmp
    t0 = time.perf_counter()
    try:
        report = run_checks(Ctx(args), only, Path(args.out), _meta(args))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(args.out, report)
    c = report.get("counts", {})
    print(f"gpu_check: {c.get('pass', 0)} passed, {c.get('fail', 0)} failed, {c.get('skip', 0)} skipped "
          f"in {report['total_seconds']:.0f}s -> {args.out}")
    return 1 if c.get("fail") else 0


if __name__ == "__main__":
    sys.exit(main())
