"""One training loop for ``codeprior train`` (GPT with the token / cluster-ce / coarse objective) and
``codeprior train-refine`` (the coarse-to-fine refine model).

Python API: :class:`TrainConfig` (:mod:`codeprior.train.config`) + :func:`train(cfg, eval_fn=None) -> dict` (final
metrics). The same call runs single-process or under ``torchrun`` (DDP; FSDP with ``fsdp=True``). What differs
between objectives (inputs, vocabulary, loss, metrics) is the :class:`codeprior.train.objectives.Objective` of
``cfg.objective``; :class:`Trainer` holds the loop: set-up, :meth:`Trainer.train_step`, :meth:`Trainer.validate`,
:meth:`Trainer.evaluate`, :meth:`Trainer.save_checkpoint`, :meth:`Trainer.finish`; the sample order, batch
gathering and validation loss are :mod:`codeprior.train.batches`' (re-exported here).

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
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn as nn

from codeprior.errors import CodepriorError
from codeprior.models.checkpoint import checkpoint_dict, load_state_dict_strict
from codeprior.provenance import check_prior_for_shards, training_provenance
from codeprior.train import distributed as D
from codeprior.train.batches import SampleStream, gather, gather_embeddings, validation_loss
from codeprior.train.checkpoint import (
    CKPT_DIR,
    RUN_FILES,
    find_latest_checkpoint,
    nonfinite_error,
    prune_checkpoints,
    remove_failed_start,
    rng_state,
    set_rng_state,
)
from codeprior.train.config import TrainConfig
from codeprior.train.logger import CSV_COLUMNS, RunLogger
from codeprior.train.objectives import Objective, get_objective
from codeprior.train.optim import lr_factor, param_groups
from codeprior.train.resume import apply_resumed_settings, check_resume
from codeprior.utils.io import load_checkpoint, torch_save_atomic, write_json_atomic
from codeprior.utils.progress import progress
from codeprior.utils.seed import seed_everything

if TYPE_CHECKING:  # annotations only: build_model imports the model classes when it needs them
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from codeprior.models.gpt import GPT
    from codeprior.models.refine import RefineModel

__all__ = [
    "TrainConfig",
    "Trainer",
    "train",
    "find_latest_checkpoint",
    "CSV_COLUMNS",
    "TRAINER_VERSION",
    "SampleStream",
    "gather",
    "gather_embeddings",
    "validation_loss",
]

TRAINER_VERSION = 1
EvalFn = Callable[[int, nn.Module], dict]


# ------------------------------------------------------------------------------------------------ model
def build_model(
    cfg: TrainConfig, obj: Objective, manifest: dict[str, Any], prior: Any, saved_config: dict | None
) -> GPT | RefineModel:
    """The model ``obj`` trains (GPT or refine), from a saved config on resume, else from ``cfg.model`` + overrides."""
    over: dict[str, Any] = dict(cfg.model_overrides)
    if cfg.dropout is not None:
        over.update(token_dropout_p=cfg.dropout, resid_dropout_p=cfg.dropout, ffn_dropout_p=cfg.dropout)
    if cfg.class_dropout is not None:
        over["class_dropout_prob"] = cfg.class_dropout
    if cfg.drop_path is not None:
        over["drop_path_rate"] = cfg.drop_path
    N, h_w = int(manifest["codebook_size"]), tuple(int(g) for g in manifest["grid"])
    k = prior.k if prior is not None else None
    if obj.model_kind == "refine":
        from codeprior.models.refine import RefineModel, get_refine_config

        if saved_config is not None:
            rc = get_refine_config(saved_config)
        else:
            rc = get_refine_config(
                cfg.model, vocab_size=N, coarse_vocab_size=k, num_classes=int(manifest["num_classes"]), grid=h_w, **over
            )
        return RefineModel(rc, prior.token_to_cluster)
    from codeprior.models.gpt import GPT, get_gpt_config

    if saved_config is not None:
        mc = get_gpt_config(saved_config)
    else:
        mc = get_gpt_config(
            cfg.model, vocab_size=obj.vocab_size(N, k), num_classes=int(manifest["num_classes"]), grid=h_w, **over
        )
    return GPT(mc)


# ------------------------------------------------------------------------------------------------ train
def train(cfg: TrainConfig, eval_fn: EvalFn | None = None) -> dict[str, Any]:
    """Train a model as described by ``cfg``; returns the final metrics (also written to ``RUN/summary.json``).

    ``eval_fn(step, model) -> dict`` (optional) is called on rank 0 every ``cfg.eval_every`` steps and at the end,
    with the EMA model when EMA is on (else the bare live model) in eval mode; its numbers are logged.
    Under FSDP it is not called (the full model is not materialised on one rank).
    """
    cfg.validate()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    info = D.init_distributed(cfg.device)
    run = Path(cfg.out)
    existed = {name for name in RUN_FILES if (run / name).exists()} if run.is_dir() else None
    trainer: Trainer | None = None
    try:
        trainer = Trainer(cfg, info, eval_fn)
        return trainer.fit()
    except BaseException:
        if info.is_main:
            if trainer is not None and getattr(trainer, "logger", None) is not None:
                trainer.logger.abandon()
            if trainer is None or not trainer.saved:
                remove_failed_start(run, existed)
        raise
    finally:
        D.shutdown_distributed(info)


class Trainer:
    """One run: set-up (data, resume, model and optimiser, logging), then :meth:`fit` = steps, validation,
    evaluation and checkpoints until ``total`` (or ``stop_at_step``), then the final model and summary."""

    def __init__(self, cfg: TrainConfig, info: D.DistInfo, eval_fn: EvalFn | None = None) -> None:
        self.cfg, self.info, self.eval_fn = cfg, info, eval_fn
        self.saved = False  # whether this run wrote a checkpoint (a failure before it removes the run's files)
        self.obj = get_objective(cfg.objective)
        self.run = Path(cfg.out)
        self._setup_data()
        ckpt, ckpt_path = self._setup_resume()
        self._setup_model(ckpt, ckpt_path)
        self._setup_logging()

    # -------------------------------------------------------------------------------------------- set-up
    def _setup_data(self) -> None:
        """Train/validation shards, the prior (checked against the shards), and the step count."""
        from codeprior.data.codes import CodeShards

        cfg = self.cfg
        self.ds = CodeShards(cfg.codes, "train", aug=cfg.aug, seed=cfg.seed)
        self.manifest = manifest = self.ds.manifest
        if cfg.image_size is not None and manifest.get("image_size") != cfg.image_size:
            raise CodepriorError(
                f"{cfg.codes}: --image-size {cfg.image_size} contradicts the shards' image_size "
                f"{manifest.get('image_size')} (grid {manifest['grid']}); drop the flag or give shards of that size"
            )
        self.val = CodeShards(cfg.codes, cfg.val_split, aug=0) if cfg.val_split in manifest["splits"] else None
        self.prior = None
        if cfg.prior:
            from codeprior.priors.prior import load_prior

            self.prior = load_prior(cfg.prior)
            if self.prior.num_codes != int(manifest["codebook_size"]):
                raise CodepriorError(
                    f"{cfg.prior}: prior covers {self.prior.num_codes} codes but {cfg.codes} has "
                    f"codebook_size {manifest['codebook_size']}"
                )
            check_prior_for_shards(self.prior, cfg.prior, manifest, cfg.codes)
        self.prior_hash = self.prior.sha256() if self.prior is not None else None
        self.obj = self.obj.prepare(cfg, manifest, self.prior, self.info.device)  # per-run tables (snce, levels)
        note = self.obj.describe()
        if note:
            self._say(f"train: {note}")

        G, A, W = cfg.global_batch, cfg.grad_accum, self.info.world_size
        if G % (W * A):
            raise CodepriorError(
                f"train: --global-batch {G} must be divisible by world size x --grad-accum = {W} x {A}"
            )
        # TrainConfig.validate: --epochs is given when --max-steps is not
        epochs = cast(float, cfg.epochs)
        self.total = (
            int(cfg.max_steps) if cfg.max_steps is not None else max(1, math.ceil(float(epochs) * len(self.ds) / G))
        )

    def _setup_resume(self) -> tuple[dict[str, Any] | None, Path | None]:
        """The checkpoint to resume from (checked against this run), or a clean run directory for a fresh run."""
        cfg, info, run = self.cfg, self.info, self.run
        ckpt: dict[str, Any] | None = None
        ckpt_path: Path | None = None
        if cfg.resume:
            ckpt_path = find_latest_checkpoint(run) if cfg.resume == "auto" else Path(cfg.resume)
            if ckpt_path is not None:
                ckpt = load_checkpoint(ckpt_path)
                changed = check_resume(ckpt, ckpt_path, cfg, self.prior_hash, self.manifest)
                note = "; changed: " + ", ".join(f"{k} {a} -> {b}" for k, a, b in changed) if changed else ""
                self._say(f"train: resuming from step {int(ckpt['steps'])} of {ckpt_path}{note}")
            else:
                self._say(f"train: --resume: no checkpoint in {run / CKPT_DIR}; starting at step 0")
        elif D.broadcast_object(find_latest_checkpoint(run) is not None, info) and not cfg.overwrite:
            # rank 0 decides for all ranks; the broadcast is the left operand, so every rank still takes part in it
            raise CodepriorError(
                f"{run}: already holds checkpoints; pass --resume to continue or --overwrite to start over"
            )
        if not cfg.resume and cfg.overwrite and info.is_main:
            shutil.rmtree(run / CKPT_DIR, ignore_errors=True)
            for name in ("metrics.csv", "eval.jsonl", "summary.json", "model.pt"):
                (run / name).unlink(missing_ok=True)
            shutil.rmtree(run / "tb", ignore_errors=True)
        D.barrier(info)
        return ckpt, ckpt_path

    def _setup_model(self, ckpt: dict[str, Any] | None, ckpt_path: Path | None) -> None:
        """Model (+ EMA), wrapper (DDP/FSDP/compile), AdamW and schedule, resumed state and per-rank RNG."""
        cfg, info = self.cfg, self.info
        seed_everything(cfg.seed)  # identical initial weights on every rank
        self.model = model = build_model(cfg, self.obj, self.manifest, self.prior, ckpt.get("config") if ckpt else None)
        if ckpt is not None:
            load_state_dict_strict(model, ckpt["model"], str(ckpt_path))
        model.to(info.device)
        self.prov = training_provenance(
            cfg.objective, model.config.vocab_size, self.manifest, self.prior, cfg.codes, cfg.prior
        )
        self.ema: GPT | RefineModel | None = None
        if cfg.ema:
            self.ema = copy.deepcopy(model).eval().requires_grad_(False)
            if ckpt is not None and ckpt.get("ema") is not None:
                load_state_dict_strict(self.ema, ckpt["ema"], str(ckpt_path))
        self.use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and info.device.type == "cuda")
        wrapped = D.wrap_model(model, info, fsdp=cfg.fsdp, bf16=self.use_bf16)
        # torch.compile of a module returns an OptimizedModule (an nn.Module); its stub says only "a callable"
        self.wrapped: nn.Module = cast(nn.Module, torch.compile(wrapped)) if cfg.compile else wrapped
        self.opt = torch.optim.AdamW(
            param_groups(model, self.wrapped, cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            fused=info.device.type == "cuda",
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, cfg, self.total))
        self.step, self.samples = 0, 0
        if ckpt is not None:
            D.load_optimizer_state_dict(self.wrapped, self.opt, ckpt["optimizer"])
            self.sched.load_state_dict(ckpt["scheduler"])
            self.step, self.samples = int(ckpt["steps"]), int(ckpt["data"]["samples_seen"])
            apply_resumed_settings(self.opt, self.sched, cfg, self.step, self.total)
        rngs = ckpt.get("rng") if ckpt else None
        if ckpt and rngs and info.rank < len(rngs) and int(ckpt["trainer"]["world_size"]) == info.world_size:
            set_rng_state(rngs[info.rank])
        else:
            seed_everything(
                cfg.seed + 100_003 * info.rank + 7_919 * self.step
            )  # per-rank streams (dropout, class dropout)
        self.ttc = self.prior.token_to_cluster.to(info.device) if self.prior is not None else None
        self.k = self.prior.k if self.prior is not None else None

    def _setup_logging(self) -> None:
        """config.json, the metric sinks, the sample stream and the running sums of the logged metrics."""
        cfg, info, run = self.cfg, self.info, self.run
        if info.is_main:
            run.mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                run / "config.json",
                {
                    "train": cfg.to_dict(),
                    "model": unwrapped_config(self.model),
                    "prior_sha256": self.prior_hash,
                    "provenance": self.prov,
                    "data": {
                        k_: self.manifest.get(k_)
                        for k_ in ("grid", "seq_len", "codebook_size", "num_classes", "n_aug", "dataset")
                    },
                    "train_samples": len(self.ds),
                    "val_samples": len(self.val) if self.val is not None else 0,
                    "world_size": info.world_size,
                    "total_steps": self.total,
                },
            )
        self.logger = RunLogger(
            cfg, run, self.step if cfg.resume and self.step else None, info, loss_parts=self.obj.loss_parts
        )
        self.stream = SampleStream(len(self.ds), cfg.seed)
        self.stop = min(self.total, cfg.stop_at_step) if cfg.stop_at_step is not None else self.total
        self.last: dict[str, Any] = {}
        self.loss_sum = torch.zeros((), device=info.device, dtype=torch.float64)
        self.finite: list[torch.Tensor] = []  # per step since the last log: is the loss sum still finite (no sync)
        self.parts_sum: dict[str, torch.Tensor] = {}
        self.n_since, self.t_log = 0, time.perf_counter()

    def autocast(self) -> Any:
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    # -------------------------------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        """Train from the current step to ``stop``; then the final model (when finished) and the summary."""
        cfg, step_total = self.cfg, self.total
        bar = progress(
            total=step_total, initial=self.step, desc=f"train {cfg.objective}", disable=None if cfg.progress else True
        )
        self.wrapped.train()
        while self.step < self.stop:
            row = self.train_step()
            bar.update(1)
            if row:
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            step = self.step
            if self.val is not None and ((cfg.val_every and step % cfg.val_every == 0) or step == step_total):
                row.update(self.validate())
                self.t_log = time.perf_counter()  # validation time is not training throughput
            if row:
                self.last.update(row)
                self.logger.log(step, row)
            if self.eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == step_total):
                self.evaluate()
                self.t_log = time.perf_counter()
            if step % cfg.ckpt_every == 0 or step == self.stop:
                self.save_checkpoint()
                self.t_log = time.perf_counter()
        bar.close()
        return self.finish()

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over the next global batch (micro-batches, clip, AdamW, schedule, EMA); returns the
        logged train metrics on logging steps, else ``{}``."""
        cfg, info, G, A = self.cfg, self.info, self.cfg.global_batch, self.cfg.grad_accum
        gidx, gep = self.stream.take(self.samples, G)
        micro_idx = D.rank_slice(gidx, info.rank, info.world_size, A)
        micro_ep = D.rank_slice(gep, info.rank, info.world_size, A)
        last: tuple[Any, Any, dict[str, Any]] = (None, None, {})
        log_now = (self.step + 1) % cfg.log_every == 0 or self.step + 1 == self.stop
        for a, (mi, me) in enumerate(zip(micro_idx, micro_ep)):
            codes, labels = gather(self.ds, mi, me)
            codes = codes.to(info.device, non_blocking=True)
            labels = labels.to(info.device, non_blocking=True)
            emb = gather_embeddings(self.ds, mi, me).to(info.device) if self.obj.needs_embeddings else None
            with D.no_sync(self.wrapped, a < A - 1), self.autocast():
                loss, parts, logits = self.obj.forward(
                    self.wrapped,
                    codes,
                    labels,
                    self.ttc,
                    self.k,
                    cfg.lam,
                    want_cluster_logits=log_now and a == A - 1,
                    loss_chunk=cfg.loss_chunk,
                    embeddings=emb,
                )
                (loss / A).backward()
            self.loss_sum += loss.detach().double() / A
            for name in self.obj.loss_parts:
                if name in parts:
                    self.parts_sum[name] = (
                        self.parts_sum.get(name, torch.zeros_like(self.loss_sum)) + parts[name].double() / A
                    )
            last = (None if logits is None else logits.detach(), codes, parts)
        self.finite.append(torch.isfinite(self.loss_sum))  # read at the next log or checkpoint, not here
        gn = self._clip()
        lr_now = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self._update_ema()
        self.step += 1
        self.samples += G
        self.n_since += 1
        return self._train_row(*last, gn, lr_now) if log_now else {}

    def _clip(self) -> torch.Tensor:
        if self.cfg.grad_clip <= 0:
            return torch.zeros(())
        inner = getattr(self.wrapped, "_orig_mod", self.wrapped)
        if D.is_fsdp(inner):
            return cast("FSDP", inner).clip_grad_norm_(self.cfg.grad_clip)
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
            pe.lerp_(pm.detach(), 1.0 - self.cfg.ema)
        for be, bm in zip(self.ema.buffers(), self.model.buffers()):
            be.copy_(bm)

    def _train_row(
        self,
        logits: torch.Tensor | None,
        codes: torch.Tensor,
        parts: dict[str, torch.Tensor],
        gn: torch.Tensor,
        lr_now: float,
    ) -> dict[str, Any]:
        """Train metrics averaged over the steps since the last log (and over ranks); resets the sums."""
        info, zero = self.info, torch.zeros_like(self.loss_sum)
        red = torch.stack([self.loss_sum, *(self.parts_sum.get(n_, zero) for n_ in self.obj.loss_parts)])
        D.all_reduce_sum(red, info)
        red = red / (info.world_size * self.n_since)
        if not math.isfinite(float(red[0])):
            self._nonfinite(float(red[0]))
        dt = time.perf_counter() - self.t_log
        mets = self.obj.metrics(logits, codes, self.ttc, self.k, parts.get("cluster_logits"), parts.get("token_pred"))
        row = {
            "epoch": self.samples / len(self.ds),
            "samples": self.samples,
            "loss": float(red[0]),
            **{n_: float(red[1 + i]) for i, n_ in enumerate(self.obj.loss_parts) if n_ in self.parts_sum},
            **mets,
            "grad_norm": float(gn),
            "lr": lr_now,
            "tokens_per_s": self.cfg.global_batch * self.ds.seq_len * self.n_since / dt,
            "time": time.time(),
        }
        self.loss_sum.zero_()
        self.finite.clear()
        self.parts_sum = {}
        self.n_since, self.t_log = 0, time.perf_counter()
        return row

    # -------------------------------------------------------------------------------------------- evaluation
    def validate(self) -> dict[str, float]:
        """Validation loss and accuracies over the held-out split (:func:`validation_loss`)."""
        return validation_loss(self.wrapped, self.val, self.cfg, self.obj, self.info, self.ttc, self.k, self.autocast)

    def evaluate(self) -> None:
        """The ``eval_fn`` callback on rank 0 with the EMA (else the bare) model in eval mode; results logged."""
        if D.is_fsdp(getattr(self.wrapped, "_orig_mod", self.wrapped)):
            return
        if self.info.is_main:
            target = self.ema if self.ema is not None else self.model
            was = target.training
            target.eval()
            assert self.eval_fn is not None  # fit() calls evaluate() only with an eval_fn
            res = dict(self.eval_fn(self.step, target) or {})
            target.train(was)
            self.logger.log_eval(self.step, res, self.run)
            self.last.update({f"eval_{k}": v for k, v in res.items() if isinstance(v, (int, float))})
        D.barrier(self.info)

    # -------------------------------------------------------------------------------------------- checkpoints
    def _record(self) -> dict[str, Any]:
        """What every saved file names: the settings, the model config, the objective, the prior and provenance."""
        return {
            "args": self.cfg.to_dict(),
            "config": unwrapped_config(self.model),
            "objective": self.cfg.objective,
            "prior_sha256": self.prior_hash,
            "provenance": self.prov,
        }

    def _say(self, msg: str) -> None:
        if self.info.is_main:
            print(msg, file=sys.stderr, flush=True)

    def _nonfinite(self, value: float | None) -> None:
        """Stop the run: the loss (``value``; None: the weights) went NaN / inf (:func:`nonfinite_error`)."""
        raise nonfinite_error(self.run, self.step, [bool(f) for f in self.finite], value)

    def _check_finite(self) -> None:
        """Before a checkpoint or the final model is written: the loss since the last log and the weights are finite
        (one reduction over the parameters, all ranks agree: NaN / inf propagate through the sums)."""
        weights = torch.zeros_like(self.loss_sum)
        for p in self.wrapped.parameters():
            weights += p.detach().sum(dtype=torch.float64)
        tot = torch.stack([self.loss_sum, weights])
        D.all_reduce_sum(tot, self.info)
        if not math.isfinite(float(tot[0])):
            self._nonfinite(float(tot[0]))
        if not math.isfinite(float(tot[1])):
            self._nonfinite(None)

    def save_checkpoint(self) -> None:
        """Resumable checkpoint, LlamaGen layout plus trainer state; full state dicts, written atomically by rank 0.
        Non-finite weights or loss stop the run before anything is written (:meth:`_check_finite`)."""
        cfg, info, step = self.cfg, self.info, self.step
        self._check_finite()
        sd = D.full_model_state_dict(self.wrapped)
        osd = D.full_optimizer_state_dict(self.wrapped, self.opt)
        rngs = D.all_gather_objects(rng_state(), info)
        if info.is_main:
            rec = self._record()
            assert sd is not None  # the main rank holds the full state dict
            path = self.run / CKPT_DIR / f"{step:07d}.pt"
            extras = {
                "scheduler": self.sched.state_dict(),
                "rng": rngs,
                "data": {"samples_seen": self.samples, "global_batch": cfg.global_batch, "seed": cfg.seed},
                "prior_sha256": rec["prior_sha256"],
                "objective": rec["objective"],
                "provenance": rec["provenance"],
                "trainer": {"version": TRAINER_VERSION, "world_size": info.world_size, "time": time.time()},
            }
            ema = (
                {k: v.detach().cpu().clone() for k, v in self.ema.state_dict().items()}
                if self.ema is not None
                else None
            )
            ck = checkpoint_dict(
                sd, rec["config"], optimizer=osd, steps=step, args=rec["args"], ema=ema, extras=extras, source=str(path)
            )
            torch_save_atomic(ck, path)
            self.saved = True
            if cfg.keep_ckpts:
                prune_checkpoints(self.run / CKPT_DIR, cfg.keep_ckpts)
        D.barrier(info)

    def finish(self) -> dict[str, Any]:
        """The final ``model.pt`` (when all steps are done) and ``summary.json``; returns the summary."""
        info, step, total, run = self.info, self.step, self.total, self.run
        summary = {
            "step": step,
            "total_steps": total,
            "finished": step >= total,
            "objective": self.cfg.objective,
            "run_dir": str(run),
            "prior_sha256": self.prior_hash,
            "world_size": info.world_size,
            **{k_: v for k_, v in self.last.items() if k_ not in ("time",)},
        }
        if step >= total:
            self._check_finite()
            sd = D.full_model_state_dict(self.wrapped)
            if info.is_main:
                rec = self._record()
                assert sd is not None  # the main rank holds the full state dict
                extras = {k_: rec[k_] for k_ in ("objective", "prior_sha256", "provenance")}
                ema = self.ema.state_dict() if self.ema is not None else None
                final = checkpoint_dict(
                    sd,
                    rec["config"],
                    steps=step,
                    args=rec["args"],
                    ema=ema,
                    extras=extras,
                    source=str(run / "model.pt"),
                )
                torch_save_atomic(final, run / "model.pt")
                summary["model"] = str(run / "model.pt")
        if info.is_main:
            write_json_atomic(run / "summary.json", summary)
        self.logger.close()
        D.barrier(info)
        return summary


def unwrapped_config(model: nn.Module) -> dict[str, Any]:
    return cast("GPT | RefineModel", D.unwrap_model(model)).config.to_dict()
