"""One training loop for ``codeprior train`` (GPT with the token / cluster-ce / coarse objective) and
``codeprior train-refine`` (the coarse-to-fine refine model).

Python API: :class:`TrainConfig` + :func:`train(cfg, eval_fn=None) -> dict` (final metrics). The same call runs
single-process or under ``torchrun`` (DDP; FSDP with ``fsdp=True``).

Run directory::

    RUN/config.json            the TrainConfig, the model config, the data manifest summary, the prior hash
    RUN/metrics.csv            one row per logged step (train metrics; validation columns on validation steps)
    RUN/eval.jsonl             results of the ``eval_fn`` callback (one JSON object per call)
    RUN/tb/                    TensorBoard events (unless tensorboard=False)
    RUN/checkpoints/NNNNNNN.pt LlamaGen layout {"model", "optimizer", "steps", "args", "ema"} + "config" and the
                               trainer state (scheduler, RNG per rank, data position, prior hash): resumable;
                               "provenance" (codeprior.provenance): objective, vocabulary, prior and shard hashes
    RUN/model.pt               final weights (+ EMA) in LlamaGen layout, without optimizer state
    RUN/summary.json           final metrics (what train() returns)

Determinism: the training stream is a sequence of per-epoch permutations of the train split drawn from
``seed``; step ``s`` consumes stream positions ``[s * G, (s + 1) * G)`` for global batch ``G``, whatever the world
size or gradient accumulation. The data position is stored in samples, so a run resumes exactly, also on another
world size.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from codeprior.errors import CodepriorError
from codeprior.provenance import check_prior_for_shards, training_provenance
from codeprior.train import distributed as D
from codeprior.train.objectives import (
    OBJECTIVES,
    cluster_ce_loss,
    coarse_loss,
    objective_metrics,
    to_coarse,
    token_loss,
)
from codeprior.utils.io import atomic_path, load_checkpoint, torch_save_atomic, write_json_atomic
from codeprior.utils.progress import progress
from codeprior.utils.seed import seed_everything

__all__ = ["TrainConfig", "train", "find_latest_checkpoint", "CSV_COLUMNS", "TRAINER_VERSION"]

TRAINER_VERSION = 1
CKPT_DIR = "checkpoints"
CSV_COLUMNS = (
    "step", "epoch", "samples", "loss", "token_loss", "cluster_loss", "token_acc", "cluster_acc", "grad_norm",
    "lr", "tokens_per_s", "val_loss", "val_token_loss", "val_token_acc", "val_cluster_acc", "time",
)
EvalFn = Callable[[int, nn.Module], dict]


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults are LlamaGen's where LlamaGen has one."""

    codes: str
    out: str
    model: str = "GPT-tiny"
    objective: str = "token"  # token | cluster-ce | coarse | refine (train-refine)
    prior: str | None = None
    lam: float = 1.0  # weight of the cluster CE term (cluster-ce)
    # optimisation
    global_batch: int = 64
    grad_accum: int = 1
    max_steps: int | None = None
    epochs: float | None = None
    lr: float = 1e-4
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    schedule: str = "constant"  # constant | cosine
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    ema: float = 0.0  # EMA decay; 0 = off
    # model overrides
    dropout: float | None = None  # token/resid/ffn dropout (LlamaGen 0.1)
    class_dropout: float | None = None  # CFG label dropout (LlamaGen 0.1; refine 0)
    drop_path: float | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # data
    aug: str = "random"
    val_split: str = "test"
    # runtime
    device: str | None = None
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False
    fsdp: bool = False
    seed: int = 0
    threads: int = 0  # torch CPU threads (0: torch's default)
    # logging / checkpoints
    log_every: int = 10
    val_every: int = 0  # 0: only at the end
    val_batches: int = 0  # 0: the whole held-out split
    eval_every: int = 0  # call eval_fn every M steps (0: only at the end, when given)
    ckpt_every: int = 1000
    keep_ckpts: int = 0  # keep the newest N step checkpoints (0: all)
    tensorboard: bool = True
    wandb: str | None = None  # wandb project name
    resume: str | None = None  # "auto" (newest in out/checkpoints) or a checkpoint path
    overwrite: bool = False
    stop_at_step: int | None = None  # stop this invocation at this global step (checkpoint written), resumable
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ------------------------------------------------------------------------------------------------ helpers
def _validate(cfg: TrainConfig) -> None:
    where = "train"
    objectives = (*OBJECTIVES, "refine")
    if cfg.objective not in objectives:
        raise CodepriorError(f"{where}: --objective must be one of {', '.join(objectives)}, got {cfg.objective!r}")
    if cfg.objective != "token" and not cfg.prior:
        raise CodepriorError(f"{where}: --objective {cfg.objective} needs --prior PRIOR.safetensors")
    if cfg.max_steps is None and cfg.epochs is None:
        raise CodepriorError(f"{where}: give --max-steps or --epochs")
    for name in ("global_batch", "grad_accum", "log_every", "ckpt_every"):
        if int(getattr(cfg, name)) <= 0:
            raise CodepriorError(f"{where}: --{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.max_steps is not None and cfg.max_steps <= 0:
        raise CodepriorError(f"{where}: --max-steps must be positive, got {cfg.max_steps}")
    if cfg.schedule not in ("constant", "cosine"):
        raise CodepriorError(f"{where}: --schedule must be constant or cosine, got {cfg.schedule!r}")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise CodepriorError(f"{where}: --precision must be auto, fp32 or bf16, got {cfg.precision!r}")
    if not 0.0 <= cfg.ema < 1.0:
        raise CodepriorError(f"{where}: --ema decay must be in [0, 1), got {cfg.ema}")
    if cfg.ema and cfg.fsdp:
        raise CodepriorError(f"{where}: --ema is not supported with --fsdp (the EMA would need the full model on every rank)")


def lr_factor(step: int, cfg: TrainConfig, total: int) -> float:
    """Multiplier of ``cfg.lr`` for optimizer step ``step`` (0-based): linear warmup, then constant or cosine."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    t = min(max(t, 0.0), 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


class SampleStream:
    """Positions in the infinite training stream -> (sample index, epoch): concatenated per-epoch permutations."""

    def __init__(self, n: int, seed: int) -> None:
        if n <= 0:
            raise CodepriorError("train: the train split is empty")
        self.n, self.seed = n, seed
        self._cache: dict[int, torch.Tensor] = {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = {epoch: torch.randperm(self.n, generator=g)}
        return self._cache[epoch]

    def take(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx, ep = [], []
        pos = start
        while pos < start + count:
            e, off = divmod(pos, self.n)
            m = min(self.n - off, start + count - pos)
            idx.append(self.perm(e)[off : off + m])
            ep.append(torch.full((m,), e, dtype=torch.long))
            pos += m
        return torch.cat(idx), torch.cat(ep)


def gather(ds: Any, idx: torch.Tensor, epochs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and labels of ``idx`` with each sample's augmentation drawn for its own epoch."""
    if epochs.numel() and bool((epochs == epochs[0]).all()):
        ds.set_epoch(int(epochs[0]))
        return ds.batch(idx)
    codes, labels = torch.empty(len(idx), ds.seq_len, dtype=torch.long), torch.empty(len(idx), dtype=torch.long)
    for e in epochs.unique().tolist():
        sel = (epochs == e).nonzero().squeeze(1)
        ds.set_epoch(int(e))
        c, lab = ds.batch(idx[sel])
        codes[sel], labels[sel] = c, lab
    return codes, labels


def find_latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """Newest ``RUN/checkpoints/NNNNNNN.pt`` by step, or None."""
    d = Path(run_dir) / CKPT_DIR
    best: tuple[int, Path] | None = None
    for p in d.glob("*.pt") if d.is_dir() else []:
        if re.fullmatch(r"\d+\.pt", p.name):
            s = int(p.stem)
            if best is None or s > best[0]:
                best = (s, p)
    return best[1] if best else None


def _rng_state() -> dict[str, Any]:
    st = np.random.get_state()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(st[1], dtype=np.int64)),
        "numpy_pos": int(st[2]),
        "numpy_has_gauss": int(st[3]),
        "numpy_cached_gaussian": float(st[4]),
        "python": [int(x) for x in random.getstate()[1]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(("MT19937", st["numpy_keys"].numpy().astype(np.uint32), st["numpy_pos"],
                         st["numpy_has_gauss"], st["numpy_cached_gaussian"]))
    random.setstate((3, tuple(st["python"]), None))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def _param_groups(model: nn.Module, wrapped: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """LlamaGen: weight decay on parameters with >= 2 dims (matrices, embeddings), none on norms/biases.

    Dimensions are read from the bare model (FSDP flattens/shards them) and matched by cleaned names.
    """
    dims = {n: p.dim() for n, p in model.named_parameters()}
    decay, no_decay = [], []
    for n, p in wrapped.named_parameters():
        if not p.requires_grad:
            continue
        clean = re.sub(r"(_orig_mod\.|_fsdp_wrapped_module\.|_checkpoint_wrapped_module\.|^module\.)", "", n)
        (decay if dims.get(clean, p.dim()) >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _Logger:
    """Rank-0 sinks: CSV (metrics.csv), TensorBoard, wandb."""

    def __init__(self, cfg: TrainConfig, run: Path, resume_step: int | None, info: D.DistInfo) -> None:
        self.on = info.is_main
        self.csv_path = run / "metrics.csv"
        self.tb = self.wb = None
        if not self.on:
            return
        rows: list[dict[str, str]] = []
        if resume_step is not None and self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step]
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        self._trim_eval(run / "eval.jsonl", resume_step)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"), purge_step=resume_step + 1 if resume_step is not None else None)
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                raise CodepriorError("--wandb: the wandb package is not installed (pip install wandb)") from None
            self.wb = wandb.init(project=cfg.wandb, name=run.name, config=cfg.to_dict(), dir=str(run), resume="allow")

    @staticmethod
    def _trim_eval(path: Path, resume_step: int | None) -> None:
        """Keep the eval results up to the resumed step (all of them go on a fresh run), like metrics.csv, so a
        resumed run does not list the evaluations after its checkpoint twice."""
        if not path.is_file():
            return
        keep: list[str] = []
        if resume_step is not None:
            for line in path.read_text().splitlines():
                try:
                    step = int(json.loads(line)["step"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from a killed run
                if step <= resume_step:
                    keep.append(line + "\n")
        with atomic_path(path) as tmp:
            tmp.write_text("".join(keep))

    def log(self, step: int, row: dict[str, Any]) -> None:
        if not self.on:
            return
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore").writerow({"step": step, **row})
        scalars = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k not in ("step",)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k.replace("val_", "val/") if k.startswith("val_") else f"train/{k}", v, step)
        if self.wb is not None:
            self.wb.log(scalars, step=step)

    def log_eval(self, step: int, res: dict[str, Any], run: Path) -> None:
        if not self.on:
            return
        with open(run / "eval.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **res}, default=float) + "\n")
        nums = {k: float(v) for k, v in res.items() if isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in nums.items():
                self.tb.add_scalar(f"eval/{k}", v, step)
        if self.wb is not None:
            self.wb.log({f"eval/{k}": v for k, v in nums.items()}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


# ------------------------------------------------------------------------------------------------ model
def _build_model(cfg: TrainConfig, manifest: dict[str, Any], prior: Any, saved_config: dict | None) -> nn.Module:
    over: dict[str, Any] = dict(cfg.model_overrides)
    if cfg.dropout is not None:
        over.update(token_dropout_p=cfg.dropout, resid_dropout_p=cfg.dropout, ffn_dropout_p=cfg.dropout)
    if cfg.class_dropout is not None:
        over["class_dropout_prob"] = cfg.class_dropout
    if cfg.drop_path is not None:
        over["drop_path_rate"] = cfg.drop_path
    N, h_w = int(manifest["codebook_size"]), tuple(int(g) for g in manifest["grid"])
    if cfg.objective == "refine":
        from codeprior.models.refine import RefineModel, get_refine_config

        if saved_config is not None:
            mc = get_refine_config(saved_config)
        else:
            mc = get_refine_config(cfg.model, vocab_size=N, coarse_vocab_size=prior.k,
                                   num_classes=int(manifest["num_classes"]), grid=h_w, **over)
        return RefineModel(mc, prior.token_to_cluster)
    from codeprior.models.gpt import GPT, get_gpt_config

    if saved_config is not None:
        mc = get_gpt_config(saved_config)
    else:
        vocab = prior.k if cfg.objective == "coarse" else N
        mc = get_gpt_config(cfg.model, vocab_size=vocab, num_classes=int(manifest["num_classes"]), grid=h_w, **over)
    return GPT(mc)


def _forward(model: nn.Module, objective: str, codes: torch.Tensor, labels: torch.Tensor, ttc: torch.Tensor | None,
             k: int | None, lam: float, want_cluster_logits: bool = True
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """(loss, parts, logits) of one micro-batch (cluster-ce: ``parts["cluster_logits"]`` if wanted, for metrics)."""
    parts: dict[str, torch.Tensor] = {}
    if objective == "coarse":
        coarse = to_coarse(codes, ttc)
        logits = model(coarse, labels)
        loss = coarse_loss(logits, coarse)
    elif objective == "refine":
        logits = model(to_coarse(codes, ttc), labels)
        loss = token_loss(logits, codes)
    else:
        logits = model(codes, labels)
        if objective == "cluster-ce":
            loss, parts = cluster_ce_loss(logits, codes, ttc, lam, k=k, return_cluster_logits=want_cluster_logits)
        else:
            loss = token_loss(logits, codes)
    if objective in ("token", "refine"):
        parts["token_loss"] = loss.detach()
    return loss, parts, logits


@torch.no_grad()
def _validate_loss(model: nn.Module, val: Any, cfg: TrainConfig, info: D.DistInfo, ttc: torch.Tensor | None,
                   k: int | None, autocast: Any) -> dict[str, float]:
    """Token-weighted validation loss and accuracies over the held-out split, sharded over ranks."""
    was = model.training
    model.eval()
    b = max(1, cfg.global_batch // (info.world_size * cfg.grad_accum))
    n = len(val)
    chunk = b * info.world_size
    n_chunks = math.ceil(n / chunk)
    if cfg.val_batches:
        n_chunks = min(n_chunks, cfg.val_batches)
    sums = torch.zeros(5, dtype=torch.float64, device=info.device)  # loss, token_loss, tok_correct, cl_correct, n
    metric_obj = "token" if cfg.objective == "refine" else cfg.objective
    for c in range(n_chunks):
        lo = c * chunk + info.rank * b
        idx = torch.arange(lo, min(lo + b, n, (c + 1) * chunk))
        weight = 1.0
        if idx.numel() == 0:  # keep every rank's forward count equal (FSDP collectives); weight 0
            idx, weight = torch.zeros(1, dtype=torch.long), 0.0
        codes, labels = val.batch(idx)
        codes, labels = codes.to(info.device), labels.to(info.device)
        with autocast():
            loss, parts, logits = _forward(model, cfg.objective, codes, labels, ttc, k, cfg.lam)
        ntok = codes.numel() * weight
        mets = objective_metrics(metric_obj, logits, codes, ttc, k,
                                 parts.get("cluster_logits"))
        sums += torch.tensor([float(loss) * ntok, float(parts.get("token_loss", torch.tensor(float("nan")))) * ntok,
                              mets.get("token_acc", float("nan")) * ntok, mets.get("cluster_acc", float("nan")) * ntok,
                              ntok], dtype=torch.float64, device=info.device)
    D.all_reduce_sum(sums, info)
    model.train(was)
    tot = max(float(sums[4]), 1.0)
    out = {"val_loss": float(sums[0]) / tot}
    for i, name in ((1, "val_token_loss"), (2, "val_token_acc"), (3, "val_cluster_acc")):
        if not math.isnan(float(sums[i])):
            out[name] = float(sums[i]) / tot
    return out


# ------------------------------------------------------------------------------------------------ train
def train(cfg: TrainConfig, eval_fn: EvalFn | None = None) -> dict[str, Any]:
    """Train a model as described by ``cfg``; returns the final metrics (also written to ``RUN/summary.json``).

    ``eval_fn(step, model) -> dict`` (optional) is called on rank 0 every ``cfg.eval_every`` steps and at the end,
    with the EMA model when EMA is on (else the bare live model) in eval mode; its numbers are logged.
    Under FSDP it is not called (the full model is not materialised on one rank).
    """
    _validate(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    info = D.init_distributed(cfg.device)
    try:
        return _train(cfg, info, eval_fn)
    finally:
        D.shutdown_distributed(info)


def _train(cfg: TrainConfig, info: D.DistInfo, eval_fn: EvalFn | None) -> dict[str, Any]:
    from codeprior.data.codes import CodeShards

    run = Path(cfg.out)
    ds = CodeShards(cfg.codes, "train", aug=cfg.aug, seed=cfg.seed)
    manifest = ds.manifest
    val = CodeShards(cfg.codes, cfg.val_split, aug=0) if cfg.val_split in manifest["splits"] else None
    prior = None
    if cfg.prior:
        from codeprior.priors.prior import load_prior

        prior = load_prior(cfg.prior)
        if prior.num_codes != int(manifest["codebook_size"]):
            raise CodepriorError(
                f"{cfg.prior}: prior covers {prior.num_codes} codes but {cfg.codes} has codebook_size {manifest['codebook_size']}"
            )
        check_prior_for_shards(prior, cfg.prior, manifest, cfg.codes)
    prior_hash = prior.sha256() if prior is not None else None
    G, A, W = cfg.global_batch, cfg.grad_accum, info.world_size
    if G % (W * A):
        raise CodepriorError(f"train: --global-batch {G} must be divisible by world size x --grad-accum = {W} x {A}")
    total = int(cfg.max_steps) if cfg.max_steps is not None else max(1, math.ceil(float(cfg.epochs) * len(ds) / G))

    # ---- resume / fresh run
    ckpt: dict[str, Any] | None = None
    ckpt_path: Path | None = None
    if cfg.resume:
        ckpt_path = find_latest_checkpoint(run) if cfg.resume == "auto" else Path(cfg.resume)
        if ckpt_path is not None:
            ckpt = load_checkpoint(ckpt_path)
            _check_resume(ckpt, ckpt_path, cfg, prior_hash, manifest)
    elif D.broadcast_object(find_latest_checkpoint(run) is not None, info):  # rank 0 decides for all ranks
        if not cfg.overwrite:
            raise CodepriorError(f"{run}: already holds checkpoints; pass --resume to continue or --overwrite to start over")
    if not cfg.resume and cfg.overwrite and info.is_main:
        shutil.rmtree(run / CKPT_DIR, ignore_errors=True)
        for name in ("metrics.csv", "eval.jsonl", "summary.json", "model.pt"):
            (run / name).unlink(missing_ok=True)
        shutil.rmtree(run / "tb", ignore_errors=True)
    D.barrier(info)

    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = _build_model(cfg, manifest, prior, ckpt.get("config") if ckpt else None)
    if ckpt is not None:
        _load_model_sd(model, ckpt["model"], ckpt_path)
    model.to(info.device)
    prov = training_provenance(cfg.objective, model.config.vocab_size, manifest, prior, cfg.codes, cfg.prior)
    ema = None
    if cfg.ema:
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        if ckpt is not None and ckpt.get("ema") is not None:
            _load_model_sd(ema, ckpt["ema"], ckpt_path)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and info.device.type == "cuda")
    wrapped = D.wrap_model(model, info, fsdp=cfg.fsdp, bf16=use_bf16)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    opt = torch.optim.AdamW(_param_groups(model, wrapped, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            fused=info.device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg, total))
    step, samples = 0, 0
    if ckpt is not None:
        D.load_optimizer_state_dict(wrapped, opt, ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step, samples = int(ckpt["steps"]), int(ckpt["data"]["samples_seen"])
    rngs = ckpt.get("rng") if ckpt else None
    if rngs and info.rank < len(rngs) and int(ckpt["trainer"]["world_size"]) == W:
        _set_rng_state(rngs[info.rank])
    else:
        seed_everything(cfg.seed + 100_003 * info.rank + 7_919 * step)  # per-rank streams (dropout, class dropout)
    del ckpt

    ttc = prior.token_to_cluster.to(info.device) if prior is not None else None
    k = prior.k if prior is not None else None
    dev_type = info.device.type

    def autocast() -> Any:
        return torch.autocast(dev_type, dtype=torch.bfloat16, enabled=use_bf16)

    if info.is_main:
        run.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run / "config.json", {
            "train": cfg.to_dict(), "model": unwrapped_config(model), "prior_sha256": prior_hash, "provenance": prov,
            "data": {k_: manifest.get(k_) for k_ in ("grid", "seq_len", "codebook_size", "num_classes", "n_aug", "dataset")},
            "train_samples": len(ds), "val_samples": len(val) if val is not None else 0, "world_size": W,
            "total_steps": total,
        })
    logger = _Logger(cfg, run, step if cfg.resume and step else None, info)
    stream = SampleStream(len(ds), cfg.seed)
    stop = min(total, cfg.stop_at_step) if cfg.stop_at_step is not None else total
    metric_obj = "token" if cfg.objective == "refine" else cfg.objective
    tokens_per_step = G * ds.seq_len
    last: dict[str, Any] = {}
    loss_sum = torch.zeros((), device=info.device, dtype=torch.float64)
    parts_sum: dict[str, torch.Tensor] = {}
    n_since, t_log = 0, time.perf_counter()
    bar = progress(total=total, initial=step, desc=f"train {cfg.objective}", disable=None if cfg.progress else True)
    wrapped.train()

    def save(step_: int) -> None:
        _save_checkpoint(run, wrapped, model, ema, opt, sched, cfg, info, step_, samples, prior_hash, prov)

    while step < stop:
        gidx, gep = stream.take(samples, G)
        micro_idx = D.rank_slice(gidx, info.rank, W, A)
        micro_ep = D.rank_slice(gep, info.rank, W, A)
        last_logits = last_codes = None
        last_parts: dict[str, torch.Tensor] = {}
        log_now = (step + 1) % cfg.log_every == 0 or step + 1 == stop
        for a, (mi, me) in enumerate(zip(micro_idx, micro_ep)):
            codes, labels = gather(ds, mi, me)
            codes = codes.to(info.device, non_blocking=True)
            labels = labels.to(info.device, non_blocking=True)
            with D.no_sync(wrapped, a < A - 1), autocast():
                loss, parts, logits = _forward(wrapped, cfg.objective, codes, labels, ttc, k, cfg.lam,
                                               want_cluster_logits=log_now and a == A - 1)
                (loss / A).backward()
            loss_sum += loss.detach().double() / A
            for name in ("token_loss", "cluster_loss"):
                if name in parts:
                    parts_sum[name] = parts_sum.get(name, torch.zeros_like(loss_sum)) + parts[name].double() / A
            last_logits, last_codes, last_parts = logits.detach(), codes, parts
        if cfg.grad_clip > 0:
            inner = getattr(wrapped, "_orig_mod", wrapped)
            gn = inner.clip_grad_norm_(cfg.grad_clip) if D.is_fsdp(inner) else torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.grad_clip)
        else:
            gn = torch.zeros(())
        lr_now = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm.detach(), 1.0 - cfg.ema)
                for be, bm in zip(ema.buffers(), model.buffers()):
                    be.copy_(bm)
        step += 1
        samples += G
        n_since += 1
        bar.update(1)

        row: dict[str, Any] = {}
        if log_now:
            red = torch.stack([loss_sum, *(parts_sum.get(n_, torch.zeros_like(loss_sum)) for n_ in ("token_loss", "cluster_loss"))])
            D.all_reduce_sum(red, info)
            red = red / (W * n_since)
            dt = time.perf_counter() - t_log
            mets = objective_metrics(metric_obj, last_logits, last_codes, ttc, k,
                                     last_parts.get("cluster_logits"))
            row = {"epoch": samples / len(ds), "samples": samples, "loss": float(red[0]),
                   **({"token_loss": float(red[1])} if "token_loss" in parts_sum else {}),
                   **({"cluster_loss": float(red[2])} if "cluster_loss" in parts_sum else {}),
                   **mets, "grad_norm": float(gn), "lr": lr_now, "tokens_per_s": tokens_per_step * n_since / dt,
                   "time": time.time()}
            bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            loss_sum.zero_()
            parts_sum = {}
            n_since, t_log = 0, time.perf_counter()
        if val is not None and ((cfg.val_every and step % cfg.val_every == 0) or step == total):
            row.update(_validate_loss(wrapped, val, cfg, info, ttc, k, autocast))
            t_log = time.perf_counter()  # validation time is not training throughput
        if row:
            last.update(row)
            logger.log(step, row)
        if eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total):
            _run_eval(eval_fn, step, ema if ema is not None else model, wrapped, info, logger, run, last)
            t_log = time.perf_counter()
        if step % cfg.ckpt_every == 0 or step == stop:
            save(step)
            t_log = time.perf_counter()
    bar.close()

    summary = {"step": step, "total_steps": total, "finished": step >= total, "objective": cfg.objective,
               "run_dir": str(run), "prior_sha256": prior_hash, "world_size": W,
               **{k_: v for k_, v in last.items() if k_ not in ("time",)}}
    if step >= total:
        sd = D.full_model_state_dict(wrapped)
        if info.is_main:
            final = {"model": sd, "steps": step, "args": cfg.to_dict(), "config": unwrapped_config(model),
                     "objective": cfg.objective, "prior_sha256": prior_hash, "provenance": prov}
            if ema is not None:
                final["ema"] = {k_: v.detach().cpu() for k_, v in ema.state_dict().items()}
            torch_save_atomic(final, run / "model.pt")
            summary["model"] = str(run / "model.pt")
    if info.is_main:
        write_json_atomic(run / "summary.json", summary)
    logger.close()
    D.barrier(info)
    return summary


def unwrapped_config(model: nn.Module) -> dict[str, Any]:
    return D.unwrap_model(model).config.to_dict()


def _load_model_sd(model: nn.Module, sd: dict[str, torch.Tensor], path: Path | None) -> None:
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CodepriorError(f"{path}: checkpoint does not fit the model ({' '.join(first[:2])[:300]})") from None


def _check_resume(ckpt: Any, path: Path, cfg: TrainConfig, prior_hash: str | None, manifest: dict[str, Any]) -> None:
    if not isinstance(ckpt, dict) or "model" not in ckpt or "trainer" not in ckpt:
        raise CodepriorError(f"{path}: not a resumable codeprior training checkpoint (no trainer state)")
    was = (ckpt.get("provenance") or {}).get("codebook_sha256")
    now = manifest.get("codebook_sha256")
    if was and now and was != now:
        raise CodepriorError(f"{cfg.codes}: shards of another codebook than the ones {path} was trained on "
                             f"(codebook sha256 {now[:12]}… vs {was[:12]}…); resume on the original shards")
    saved = ckpt.get("args", {})
    if saved.get("objective") != cfg.objective:
        raise CodepriorError(f"{path}: was trained with --objective {saved.get('objective')}, not {cfg.objective}")
    if saved.get("model") != cfg.model:
        raise CodepriorError(f"{path}: was trained with --model {saved.get('model')}, not {cfg.model}")
    want = ckpt.get("prior_sha256")
    if want != prior_hash:
        if want is None:
            raise CodepriorError(f"{path}: was trained without a prior; drop --prior to resume it")
        if prior_hash is None:
            raise CodepriorError(f"{path}: was trained with a prior (sha256 {want[:12]}…); pass the same --prior to resume")
        raise CodepriorError(
            f"{cfg.prior}: prior does not match the checkpoint's (sha256 {prior_hash[:12]}… vs {want[:12]}… in {path}); "
            "resume with the prior the run was started with"
        )


def _run_eval(eval_fn: EvalFn, step: int, target: nn.Module, wrapped: nn.Module, info: D.DistInfo, logger: _Logger,
              run: Path, last: dict[str, Any]) -> None:
    if D.is_fsdp(getattr(wrapped, "_orig_mod", wrapped)):
        return
    if info.is_main:
        was = target.training
        target.eval()
        res = dict(eval_fn(step, target) or {})
        target.train(was)
        logger.log_eval(step, res, run)
        last.update({f"eval_{k}": v for k, v in res.items() if isinstance(v, (int, float))})
    D.barrier(info)


def _save_checkpoint(run: Path, wrapped: nn.Module, model: nn.Module, ema: nn.Module | None, opt: torch.optim.Optimizer,
                     sched: Any, cfg: TrainConfig, info: D.DistInfo, step: int, samples: int,
                     prior_hash: str | None, prov: dict[str, Any]) -> None:
    """Resumable checkpoint, LlamaGen layout plus trainer state; full state dicts, written atomically by rank 0."""
    sd = D.full_model_state_dict(wrapped)
    osd = D.full_optimizer_state_dict(wrapped, opt)
    rngs = D.all_gather_objects(_rng_state(), info)
    if info.is_main:
        ck = {
            "model": sd,
            "optimizer": osd,
            "steps": step,
            "args": cfg.to_dict(),
            "config": unwrapped_config(model),
            "scheduler": sched.state_dict(),
            "rng": rngs,
            "data": {"samples_seen": samples, "global_batch": cfg.global_batch, "seed": cfg.seed},
            "prior_sha256": prior_hash,
            "objective": cfg.objective,
            "provenance": prov,
            "trainer": {"version": TRAINER_VERSION, "world_size": info.world_size, "time": time.time()},
        }
        if ema is not None:
            ck["ema"] = {k: v.detach().cpu().clone() for k, v in ema.state_dict().items()}
        torch_save_atomic(ck, run / CKPT_DIR / f"{step:07d}.pt")
        if cfg.keep_ckpts:
            olds = sorted((p for p in (run / CKPT_DIR).glob("*.pt") if re.fullmatch(r"\d+\.pt", p.name)),
                          key=lambda p: int(p.stem))
            for p in olds[: -cfg.keep_ckpts]:
                p.unlink(missing_ok=True)
    D.barrier(info)
