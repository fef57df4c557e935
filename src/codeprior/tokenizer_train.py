"""Train and evaluate a small LlamaGen-compatible VQ tokenizer (``codeprior tokenizer train|eval``).

Objective: reconstruction (MSE, optionally + L1) + codebook loss + commitment loss (beta from the config) +
optional entropy loss, AdamW with linear warm-up and cosine decay. No perceptual / GAN term: LPIPS needs
pretrained VGG weights that do not exist offline, and an adversarial term on 28x28 grey images costs more
CPU time than it returns within a minutes-long budget (see docs/tokenizer.md).

Dead-code restart: every ``restart_every`` steps, codebook rows that were not selected since the last restart are
re-seeded from the current batch's (normalised) encoder outputs plus a little noise, and their AdamW moments are
reset. Without it most of a 4096-entry codebook stays dead; with it the test-split usage goes above 80%.

Determinism and exact resume: the batch order is a function of (seed, epoch), the restarts of (seed, step), and
the only other state (model, optimizer, the usage counts since the last restart, the global RNG state) is in every
checkpoint, so ``--resume`` continues bit-for-bit where the interrupted run was (same thread count assumed).

Run directory ``OUT``::

    OUT/checkpoints/{step:07d}.pt   LlamaGen vq_train layout {"model", "optimizer", "steps", "args", "config", ...}
    OUT/tokenizer.pt                final weights {"model", "steps", "args", "config"} (what ``--tokenizer`` takes)
    OUT/recon_grid.png              test images (odd rows) over their reconstructions (even rows)
    OUT/metrics.json                settings, timings, train curve, test usage / MSE / PSNR
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from codeprior.errors import CodepriorError
from codeprior.models.vq import VQConfig, VQModel, get_vq_config
from codeprior.runtime import resolve_device
from codeprior.tokenizer_settings import TrainSettings, make_settings  # the settings and schedules: no torch
from codeprior.train.checkpoint import CKPT_DIR, find_latest_checkpoint, prune_checkpoints
from codeprior.train.optim import decay_param_groups, warmup_cosine
from codeprior.utils.io import load_checkpoint, sha256_file, write_json_atomic
from codeprior.utils.progress import progress

# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------


def load_images_uint8(spec: str, split: str, data_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """All images of a dataset split as one uint8 tensor [N, C, H, W] (held in memory: small datasets only)."""
    from codeprior.data import images as img

    if spec in img.IDX_DATASETS:
        x, _ = img.load_idx(spec, split, data_dir)
        return torch.as_tensor(np.asarray(x)).unsqueeze(1).contiguous()
    ds = img.build_image_dataset(spec, split, data_dir)
    out = [
        ((ds[i][0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        for i in progress(range(len(ds)), desc=f"load {split}")
    ]
    if not out:
        raise CodepriorError(f"{spec}: the {split} split has no images")
    return torch.stack(out)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float in [-1, 1] (float input passes through)."""
    return x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float()


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of training batch ``step``: epoch-wise permutations seeded by (seed, epoch), last partial batch dropped."""
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise CodepriorError(f"tokenizer train: --batch-size {batch_size} exceeds the {n} training images")
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)[pos * batch_size : (pos + 1) * batch_size]


# --------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB (peak 1) from an MSE on the [0, 1] pixel scale, the scale every codeprior command reports."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(1.0 / mse)


@torch.no_grad()
def code_usage(counts: torch.Tensor) -> dict[str, Any]:
    """``codebook_usage`` (fraction of entries used at least once), ``codes_used``, ``codebook_size`` and the
    ``perplexity`` (effective codebook size) of a code histogram ``counts`` [codebook_size]."""
    p = counts.double() / counts.sum().clamp(min=1)
    ent = float(-(p[p > 0] * p[p > 0].log()).sum())
    return {
        "codebook_usage": float((counts > 0).sum()) / counts.numel(),
        "codes_used": int((counts > 0).sum()),
        "codebook_size": int(counts.numel()),
        "perplexity": math.exp(ent),
    }


def reconstruction_stats(
    model: VQModel, images: torch.Tensor, batch_size: int = 500, desc: str = "eval"
) -> dict[str, Any]:
    """Codebook usage, MSE and PSNR of ``decode(encode(x))`` over ``images`` (uint8 or float [N, C, H, W]): the
    training run's test-split numbers (``codeprior.evaluate.evaluate_tokenizer`` is the tokenizer evaluation, with
    reconstruction FID).

    MSE is on the [0, 1] pixel scale (as ``tokenizer eval`` and ``tokenize check`` report it), with the
    reconstruction clamped; ``psnr`` is the PSNR of that MSE (what training logs) and ``psnr_per_image`` the mean
    per-image PSNR, ``tokenizer eval``'s and the pipeline's definition (:func:`~codeprior.evaluate.
    tokenizer_eval.per_image_mse_psnr`). Usage is the fraction of codebook entries used at least once over the whole
    set. Also returns the code histogram's perplexity (effective codebook size).
    """
    from codeprior.evaluate.tokenizer_eval import per_image_mse_psnr

    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    counts = torch.zeros(model.config.codebook_size, dtype=torch.long)
    se, n_pix, psnr_sum = 0.0, 0, 0.0
    for s in progress(range(0, len(images), batch_size), desc=desc):
        x = to_float(images[s : s + batch_size]).to(dev)
        codes = model.encode_codes(x)
        counts += torch.bincount(codes.flatten().cpu(), minlength=counts.numel())
        rec = model.decode_codes(codes).clamp(-1, 1)
        se += float(((rec - x) ** 2).sum(dtype=torch.float64))
        n_pix += x.numel()
        psnr_sum += float(per_image_mse_psnr(rec, x)[1].sum(dtype=torch.float64))
    model.train(was_training)
    mse = se / max(n_pix, 1) / 4.0  # [-1, 1] -> [0, 1] scale
    return {
        "images": int(len(images)),
        **code_usage(counts),
        "mse": mse,
        "psnr": psnr_from_mse(mse),
        "psnr_per_image": psnr_sum / max(len(images), 1),
    }


@torch.no_grad()
def save_recon_grid(model: VQModel, images: torch.Tensor, path: str | os.PathLike, n: int = 32, nrow: int = 16) -> Path:
    """PNG grid: rows of originals followed by rows of their reconstructions (``nrow`` per row)."""
    from codeprior.data.images import save_image_grid

    was_training = model.training
    model.eval()
    x = to_float(images[:n]).to(next(model.parameters()).device)
    rec = model.decode_codes(model.encode_codes(x)).clamp(-1, 1).cpu()
    x = x.cpu()
    model.train(was_training)
    rows = []
    for s in range(0, len(x), nrow):
        rows += [x[s : s + nrow], rec[s : s + nrow]]
    return save_image_grid(torch.cat(rows), path, nrow=nrow)


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at the last step (the trainer's
    :func:`codeprior.train.optim.warmup_cosine`)."""
    return warmup_cosine(step, s.warmup_steps, s.steps, s.min_lr_ratio, peak=s.lr)


def make_optimizer(model: VQModel, s: TrainSettings) -> torch.optim.AdamW:
    """AdamW; weight decay (if any) only on conv weights, never on norms, biases or the codebook."""
    groups = decay_param_groups(
        model.named_parameters(), s.weight_decay, lambda name, p: p.dim() >= 2 and name != "quantize.embedding.weight"
    )
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2))


@torch.no_grad()
def restart_dead_codes(
    model: VQModel,
    optimizer: torch.optim.Optimizer,
    usage_counts: torch.Tensor,
    feats: torch.Tensor,
    generator: torch.Generator,
    noise: float,
) -> int:
    """Re-seed codebook rows with zero usage from ``feats`` [M, D] (normalised encoder outputs); returns how many.

    Distinct features are drawn without replacement while there are enough, plus Gaussian noise of std ``noise``
    so duplicates separate. The rows' AdamW moments are zeroed so stale statistics do not drag them back.
    """
    dead = torch.nonzero(usage_counts == 0).flatten()
    if dead.numel() == 0 or feats.numel() == 0:
        return 0
    m = feats.shape[0]
    if dead.numel() <= m:
        pick = torch.randperm(m, generator=generator)[: dead.numel()]
    else:
        pick = torch.randint(0, m, (dead.numel(),), generator=generator)
    new = feats[pick.to(feats.device)] + noise * torch.randn(dead.numel(), feats.shape[1], generator=generator).to(
        feats.device
    )
    if model.config.codebook_l2_norm:
        new = F.normalize(new, dim=-1)
    weight = model.quantize.embedding.weight
    dead = dead.to(weight.device)
    weight[dead] = new.to(weight.dtype)
    state = optimizer.state.get(weight, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][dead] = 0
    return int(dead.numel())


def _ckpt_dir(out: Path) -> Path:
    return out / CKPT_DIR


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The highest-step ``OUT/checkpoints/NNNNNNN.pt``, or None (the trainer's :func:`find_latest_checkpoint`)."""
    return find_latest_checkpoint(out)


def _check_images(images: torch.Tensor, cfg: VQConfig) -> None:
    if images.dim() != 4 or images.shape[1] != cfg.in_channels:
        raise CodepriorError(
            f"tokenizer train: images {tuple(images.shape)} do not match the config's {cfg.in_channels} channel(s)"
        )
    if images.shape[-1] % cfg.downsample_factor or images.shape[-2] % cfg.downsample_factor:
        raise CodepriorError(
            f"tokenizer train: image size {tuple(images.shape[-2:])} is not divisible by the downsample "
            f"factor {cfg.downsample_factor} of this config"
        )


def _resume(
    ck: Path,
    cfg: VQConfig,
    settings: TrainSettings,
    model: VQModel,
    optimizer: torch.optim.Optimizer,
) -> tuple[torch.Tensor, int, list[dict[str, float]], float]:
    """Load checkpoint ``ck`` into ``model`` / ``optimizer`` and the global RNG (config and settings must match);
    returns (usage counts since the last restart, step, history, training seconds so far)."""
    from codeprior.models.checkpoint import load_state_dict_strict

    state = load_checkpoint(ck)
    stored = {k: v for k, v in (state.get("config") or {}).items() if k != "kind"}
    if stored and get_vq_config(stored) != cfg:
        raise CodepriorError(f"{ck}: was trained with a different VQ config; resume with the same --config")
    old = state.get("args") or {}
    for key in ("steps", "batch_size", "lr", "seed", "warmup_steps", "restart_every"):
        if key in old and old[key] != getattr(settings, key):
            raise CodepriorError(
                f"{ck}: was run with {key}={old[key]}, now {getattr(settings, key)}; resume with the same settings"
            )
    load_state_dict_strict(model, state["model"], str(ck))
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_state"])
    return (
        state["usage_counts"].clone(),
        int(state["steps"]),
        list(state.get("history", [])),
        float(state.get("train_seconds", 0.0)),
    )


def _step(
    model: VQModel, optimizer: torch.optim.Optimizer, x: torch.Tensor, settings: TrainSettings, out: Path, step: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """One optimizer step on batch ``x``: (loss, loss terms, code indices, normalised encoder outputs)."""
    recon, losses, idx, feats = model.forward_with_codes(x)
    rec_loss = losses["recon"] + (settings.l1_weight * F.l1_loss(recon, x) if settings.l1_weight else 0.0)
    loss = rec_loss + settings.codebook_weight * losses["codebook"] + losses["commit"] + losses["entropy"]
    if not torch.isfinite(loss):
        raise CodepriorError(f"{out}: loss became {float(loss)} at step {step}; lower --lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if settings.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
    optimizer.step()
    return loss, losses, idx, feats


def _record(
    model: VQModel, step: int, settings: TrainSettings, run_loss: dict[str, float], run_n: int, codes_per_step: int
) -> dict[str, float]:
    """The history entry of a logging step: mean losses since the last one, PSNR, codebook usage of the window."""
    used = model.quantize.codebook_used
    window = used if step * codes_per_step >= used.numel() else used[-(step + 1) * codes_per_step :]
    return {
        "step": step + 1,
        "lr": lr_at(step, settings),
        **{k: v / run_n for k, v in run_loss.items() if k != "restarted"},
        "restarted": run_loss["restarted"],
        "psnr": psnr_from_mse(run_loss["recon"] / run_n / 4.0),  # recon loss is on [-1, 1]
        "window_usage": float(torch.unique(window.long()).numel()) / model.config.codebook_size,
    }


def train_vq(
    out_dir: str | os.PathLike,
    config: VQConfig | str,
    train_images: torch.Tensor,
    test_images: torch.Tensor | None,
    settings: TrainSettings,
    *,
    resume: bool = False,
    device: str | torch.device | None = "cpu",
    dataset: str = "",
    extra_args: dict[str, Any] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train a :class:`VQModel` on ``train_images`` (uint8/float [N, C, H, W], kept on the CPU; batches move to
    ``device``); write the run directory; return the metrics (also written to ``out_dir/metrics.json``).

    With ``resume=True`` the latest checkpoint in ``out_dir/checkpoints`` is loaded (config and settings must
    match) and training continues from its step; without it an existing run directory is refused.
    """
    from codeprior.models.checkpoint import save_vq

    settings.validate()
    out = Path(out_dir)
    cfg = get_vq_config(config)
    _check_images(train_images, cfg)
    args = {**dataclasses.asdict(settings), "dataset": dataset, **(extra_args or {})}

    dev = resolve_device(device, where="tokenizer train: --device")
    torch.manual_seed(settings.seed)
    model = VQModel(cfg).to(dev).train()
    optimizer = make_optimizer(model, settings)
    usage_counts = torch.zeros(cfg.codebook_size, dtype=torch.long)
    history: list[dict[str, float]] = []
    start, elapsed_before = 0, 0.0
    ck = latest_checkpoint(out)
    if ck is not None and not resume:
        raise CodepriorError(
            f"{out}: already holds checkpoints ({ck.name}); pass --resume to continue or pick another --out"
        )
    if ck is not None:
        usage_counts, start, history, elapsed_before = _resume(ck, cfg, settings, model, optimizer)
        print(f"tokenizer train: resuming from step {start} of {ck}", file=sys.stderr, flush=True)
    elif resume:
        print(f"tokenizer train: --resume: no checkpoint in {out}; starting at step 0", file=sys.stderr, flush=True)

    n = len(train_images)
    restart_stop = int(settings.restart_until * settings.steps)
    t0 = time.perf_counter()
    run_loss = {"loss": 0.0, "recon": 0.0, "codebook": 0.0, "commit": 0.0, "restarted": 0}
    run_n = 0
    bar = progress(total=settings.steps, initial=start, desc="tokenizer", unit="step")

    def checkpoint(step: int) -> None:
        _ckpt_dir(out).mkdir(parents=True, exist_ok=True)
        save_vq(
            model,
            _ckpt_dir(out) / f"{step:07d}.pt",
            optimizer=optimizer,
            steps=step,
            args=args,
            usage_counts=usage_counts.clone(),
            rng_state=torch.get_rng_state(),
            history=history,
            train_seconds=elapsed_before + time.perf_counter() - t0,
        )
        prune_checkpoints(_ckpt_dir(out), settings.keep_checkpoints)

    for step in range(start, settings.steps):
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, settings)
        x = to_float(train_images[batch_indices(n, settings.batch_size, step, settings.seed)]).to(dev)
        loss, losses, idx, feats = _step(model, optimizer, x, settings, out, step)
        usage_counts += torch.bincount(idx.flatten().cpu(), minlength=cfg.codebook_size)
        restarted = 0
        if (step + 1) % settings.restart_every == 0:
            if step + 1 <= restart_stop:
                gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + 7919 * (step + 1))
                restarted = restart_dead_codes(model, optimizer, usage_counts, feats, gen, settings.restart_noise)
            usage_counts.zero_()

        run_n += 1
        for k in ("recon", "codebook", "commit"):
            run_loss[k] += float(losses[k].detach())
        run_loss["loss"] += float(loss.detach())
        run_loss["restarted"] += restarted
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            rec = _record(model, step, settings, run_loss, run_n, idx.numel())
            history.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['psnr']:.2f}", usage=f"{rec['window_usage']:.2f}")
            if on_step is not None:
                on_step(step + 1, rec)
            run_loss = dict.fromkeys(run_loss, 0.0)
            run_n = 0
        bar.update(1)
        if (step + 1) % settings.ckpt_every == 0 and step + 1 < settings.steps:
            checkpoint(step + 1)
    bar.close()
    train_seconds = elapsed_before + time.perf_counter() - t0
    if start < settings.steps or (last := latest_checkpoint(out)) is None or int(last.stem) != settings.steps:
        checkpoint(settings.steps)
    return _finish(model, out, cfg, settings, args, test_images, n, start, t0, train_seconds, dev, history)


def _finish(
    model: VQModel,
    out: Path,
    cfg: VQConfig,
    settings: TrainSettings,
    args: dict[str, Any],
    test_images: torch.Tensor | None,
    n: int,
    start: int,
    t0: float,
    train_seconds: float,
    dev: torch.device,
    history: list[dict[str, float]],
) -> dict[str, Any]:
    """Write ``tokenizer.pt``, evaluate on the test images (+ ``recon_grid.png``) and ``metrics.json``."""
    from codeprior.models.checkpoint import save_vq

    model.eval()
    final = out / "tokenizer.pt"
    save_vq(model, final, steps=settings.steps, args=args)
    result: dict[str, Any] = {
        "config": cfg.to_dict(),
        "settings": args,
        "train_images": int(n),
        "train_seconds": round(train_seconds, 1),
        "steps_per_second": round((settings.steps - start) / max(time.perf_counter() - t0, 1e-9), 3),
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "checkpoint": str(final),
        "tokenizer_sha256": sha256_file(final),
        "history": history,
    }
    if test_images is not None and len(test_images):
        t1 = time.perf_counter()
        result["test"] = reconstruction_stats(model, test_images, settings.eval_batch_size, desc="eval test")
        result["eval_seconds"] = round(time.perf_counter() - t1, 1)
        save_recon_grid(model, test_images, out / "recon_grid.png")
    write_json_atomic(out / "metrics.json", result)
    return result


def train_tokenizer(
    dataset: str = "fashion-mnist",
    data_dir: str | os.PathLike | None = None,
    model: str | VQConfig = "VQ-fmnist",
    out: str | os.PathLike = "runs/tokenizer",
    *,
    schedule: str = "full",
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    resume: bool = False,
    evaluate: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Load ``dataset`` (train + test splits), train the ``model`` config with a named schedule, return the metrics.

    The returned dict (also ``out/metrics.json``) has ``checkpoint`` (``out/tokenizer.pt``), ``train_seconds``,
    ``steps_per_second`` and, with ``evaluate``, ``test`` = usage / MSE / PSNR on the test split.
    """
    s = make_settings(schedule, steps=steps, batch_size=batch_size, lr=lr, seed=seed, **settings)
    cfg = get_vq_config(model)
    train = load_images_uint8(dataset, "train", data_dir)
    test = load_images_uint8(dataset, "test", data_dir) if evaluate else None
    extra = {
        "data_dir": str(data_dir) if data_dir else None,
        "model": model if isinstance(model, str) else "custom",
        "schedule": schedule,
    }
    return train_vq(out, cfg, train, test, s, resume=resume, device=device, dataset=dataset, extra_args=extra)


def eval_tokenizer(
    tokenizer: str | os.PathLike,
    dataset: str = "fashion-mnist",
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
    config: str | None = None,
    batch_size: int = 500,
    device: str | None = "auto",
    grid: str | os.PathLike | None = None,
    *,
    num_images: int = 0,
    extractor: Any = None,
) -> dict[str, Any]:
    """The tokenizer evaluation of ``codeprior tokenizer eval``: usage / perplexity / MSE / PSNR of a tokenizer
    checkpoint (ours or LlamaGen's, ``config`` naming the latter) on a split (its first ``num_images``; 0: all).

    With a feature ``extractor`` (:func:`codeprior.evaluate.metrics.make_extractor`) also what the classifier sees
    of the round trip (:func:`codeprior.evaluate.tokenizer_eval.feature_metrics`: reconstruction FID, its accuracy
    on originals vs reconstructions), as the pipeline's tokenizer-eval stage reports it.
    """
    from codeprior.models.checkpoint import load_vq

    model = load_vq(tokenizer, config=config, device=resolve_device(device, where="tokenizer eval: --device"))
    labels = None
    if extractor is not None:
        from codeprior.evaluate.classifier import load_split

        raw, labels = load_split(dataset, split, str(data_dir) if data_dir is not None else None)
        images = torch.as_tensor(raw).unsqueeze(1).contiguous() if raw.ndim == 3 else torch.as_tensor(raw)
    else:
        images = load_images_uint8(dataset, split, data_dir)
    if num_images:
        images = images[:num_images]
        labels = labels[:num_images] if labels is not None else None
    if images.shape[1] != model.config.in_channels:
        raise CodepriorError(
            f"{tokenizer}: expects {model.config.in_channels}-channel images, {dataset} has {images.shape[1]}"
        )
    t0 = time.perf_counter()
    res: dict[str, Any] = {"tokenizer": str(tokenizer), "dataset": dataset, "split": split}
    if extractor is None:
        res.update(reconstruction_stats(model, images, batch_size, desc=f"eval {split}"))
        # the CLI reports PSNR as the pipeline does: the mean per-image PSNR
        res["psnr"] = res.pop("psnr_per_image")
    else:  # one round trip, kept in memory for the classifier (as the pipeline's tokenizer-eval stage does)
        from codeprior.evaluate.tokenizer_eval import feature_metrics, mse_psnr, round_trip

        x, codes, recon = round_trip(model, images, batch_size)
        mse, psnr = mse_psnr(recon, x)
        counts = torch.bincount(codes.flatten(), minlength=model.config.codebook_size)
        res.update(images=int(len(images)), **code_usage(counts), mse=mse, psnr=psnr)
        res.update(feature_metrics(images, recon, labels, extractor))
    res["seconds"] = round(time.perf_counter() - t0, 1)
    if grid:
        save_recon_grid(model, images, grid)
        res["grid"] = str(grid)
    return res
