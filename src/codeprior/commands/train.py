"""`codeprior train` (GPT: token / cluster-ce / coarse objectives) and `codeprior train-refine` (refine model).

Both run the same loop (:func:`codeprior.train.trainer.train`); under ``torchrun`` they train with DDP (or FSDP
with ``--fsdp``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from codeprior.errors import CodepriorError
from codeprior.utils.argtypes import nonneg_float, nonneg_int, open_unit_float, positive_float, positive_int, unit_float
from codeprior.utils.paths import declare_paths

EPILOG_TRAIN = """examples:
  codeprior train --codes codes/fmnist --model GPT-tiny --objective token --max-steps 2000 --out runs/token
  codeprior train --codes codes/fmnist --prior dcpe.safetensors --objective cluster-ce --max-steps 2000 --out runs/ce
  codeprior train --codes codes/fmnist --prior dcpe.safetensors --objective coarse --max-steps 2000 --out runs/coarse
  torchrun --nproc-per-node 2 -m codeprior train ...        (DDP; add --fsdp for large models)
  codeprior train ... --out runs/ce --resume                 (continue from the newest checkpoint)
"""

EPILOG_REFINE = """examples:
  codeprior train-refine --codes codes/fmnist --prior dcpe.safetensors --model Refine-tiny --max-steps 2000 --out runs/refine
  codeprior train-refine ... --causal --no-restrict          (DCPE's released variant: causal, unrestricted)
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and output")
    g.add_argument("--codes", required=True, metavar="DIR", help="code-shard directory (from `codeprior tokenize`); "
                   "its 'test' split is the validation set when present")
    g.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (checkpoints, metrics.csv, tb/, model.pt)")
    g.add_argument("--aug", default="random", help="'random' (one of the stored augmentations per sample and epoch) "
                   "or a fixed augmentation index (default: random)")
    g.add_argument("--val-split", default="test", help="held-out split used for validation loss (default: test)")

    g = p.add_argument_group("optimisation (LlamaGen defaults)")
    g.add_argument("--global-batch", type=positive_int, default=64, help="samples per optimizer step over all ranks (default: 64)")
    g.add_argument("--grad-accum", type=positive_int, default=1, help="micro-steps per optimizer step (default: 1)")
    g.add_argument("--max-steps", type=positive_int, default=None, help="optimizer steps to train for")
    g.add_argument("--epochs", type=positive_float, default=None, help="alternatively, epochs of the train split")
    g.add_argument("--lr", type=positive_float, default=1e-4, help="peak learning rate (default: 1e-4)")
    g.add_argument("--weight-decay", type=nonneg_float, default=0.05, help="AdamW weight decay on 2-D parameters (default: 0.05)")
    g.add_argument("--beta1", type=open_unit_float, default=0.9)
    g.add_argument("--beta2", type=open_unit_float, default=0.95)
    g.add_argument("--grad-clip", type=nonneg_float, default=1.0, help="max global gradient norm, 0 = off (default: 1.0)")
    g.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                   help="learning-rate schedule after warmup (default: constant, as LlamaGen)")
    g.add_argument("--warmup-steps", type=nonneg_int, default=0, help="linear warmup steps (default: 0)")
    g.add_argument("--min-lr-ratio", type=unit_float, default=0.0, help="cosine floor as a fraction of --lr (default: 0)")
    g.add_argument("--ema", type=open_unit_float, default=0.0, metavar="DECAY", help="keep an EMA of the weights (e.g. 0.9999); 0 = off")

    g = p.add_argument_group("model")
    g.add_argument("--dropout", type=open_unit_float, default=None, help="token/residual/FFN dropout (model default: 0.1)")
    g.add_argument("--class-dropout", type=open_unit_float, default=None,
                   help="probability of replacing the label by the null class, for CFG (GPT default 0.1, refine 0)")
    g.add_argument("--drop-path", type=open_unit_float, default=None, help="stochastic depth rate")
    g.add_argument("--model-override", action="append", default=[], metavar="KEY=VALUE",
                   help="any model config field, JSON value (e.g. --model-override n_layer=2); repeatable")

    g = p.add_argument_group("runtime")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--fsdp", action="store_true", help="shard the model with FSDP (block-level auto-wrap; under torchrun)")
    g.add_argument("--threads", type=nonneg_int, default=0, help="CPU threads for torch (default: 0 = torch's default)")
    g.add_argument("--seed", type=nonneg_int, default=0, help="seed for weights, data order and augmentations (default: 0)")

    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--log-every", type=positive_int, default=10, help="log train metrics every N steps (default: 10)")
    g.add_argument("--val-every", type=nonneg_int, default=0, help="validation loss every N steps (default: 0 = at the end)")
    g.add_argument("--val-batches", type=nonneg_int, default=0, help="cap validation at N batches (default: 0 = whole split)")
    g.add_argument("--ckpt-every", type=positive_int, default=1000, help="write a resumable checkpoint every N steps (default: 1000)")
    g.add_argument("--keep-ckpts", type=nonneg_int, default=0, help="keep only the newest N checkpoints (default: 0 = all)")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", help="do not write TensorBoard events")
    g.add_argument("--wandb", default=None, metavar="PROJECT", help="also log to Weights & Biases (needs wandb)")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="continue from CKPT, or (no value) from the newest checkpoint in RUN_DIR if any")
    g.add_argument("--overwrite", action="store_true", help="start over in a RUN_DIR that already holds checkpoints")
    g.add_argument("--stop-after-steps", dest="stop_at_step", type=positive_int, default=None, metavar="STEP",
                   help="stop this invocation at global step STEP (a checkpoint is written; continue with --resume)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help="train a GPT on code shards (token / cluster-ce / coarse objective)",
        description="Train a LlamaGen-compatible class-conditional GPT on pre-tokenised codes. Objectives: token "
        "(LlamaGen CE), cluster-ce (token CE + lam * CE over cluster log-sum-exp logits; any partition), coarse "
        "(the GPT's vocabulary is the prior's k clusters). Runs under torchrun for DDP/FSDP.",
        epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="GPT-tiny", help="GPT config name (GPT-tiny, GPT-S, GPT-B, GPT-L, ...; default GPT-tiny)")
    p.add_argument("--objective", choices=("token", "cluster-ce", "coarse"), default="token", help="training objective")
    p.add_argument("--prior", default=None, metavar="PRIOR",
                   help="prior .safetensors; needed for cluster-ce and coarse; with token it adds cluster accuracy")
    p.add_argument("--lam", type=nonneg_float, default=1.0, help="weight of the cluster CE term (default: 1.0, as IAR)")
    _add_common(p)
    declare_paths(p, outputs={"out": "dir"}, inputs=("codes", "prior"))
    p.set_defaults(func=run, task="gpt")

    r = subparsers.add_parser(
        "train-refine", help="train the coarse-to-fine refine model (fine codes from the coarse sequence)",
        description="Train the refine model: from [class, cluster ids of every position] predict every fine code in "
        "one pass (bidirectional and restricted to each cluster's members by default). CE on the ground-truth codes.",
        epilog=EPILOG_REFINE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--model", default="Refine-tiny", help="refine config name (Refine-tiny, Refine-S, Refine-B, Refine-L)")
    r.add_argument("--prior", required=True, metavar="PRIOR", help="prior .safetensors (the coarse vocabulary)")
    r.add_argument("--causal", action="store_true", help="causal attention (DCPE's released variant)")
    r.add_argument("--no-restrict", dest="restrict", action="store_false",
                   help="do not restrict logits to the members of each position's cluster")
    _add_common(r)
    declare_paths(r, outputs={"out": "dir"}, inputs=("codes", "prior"))
    r.set_defaults(func=run, task="refine")


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise CodepriorError(f"--model-override: expected KEY=VALUE, got {it!r}")
        key, val = it.split("=", 1)
        try:
            out[key.strip()] = json.loads(val)
        except json.JSONDecodeError:
            out[key.strip()] = val
    return out


def config_from_args(args: argparse.Namespace) -> Any:
    from codeprior.train.trainer import TrainConfig

    over = _parse_overrides(args.model_override)
    if args.task == "refine":
        over.setdefault("causal", bool(args.causal))
        over.setdefault("restrict", bool(args.restrict))
    aug: Any = args.aug
    return TrainConfig(
        codes=args.codes, out=args.out, model=args.model,
        objective="refine" if args.task == "refine" else args.objective, prior=args.prior,
        lam=getattr(args, "lam", 1.0), global_batch=args.global_batch, grad_accum=args.grad_accum,
        max_steps=args.max_steps, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, beta1=args.beta1,
        beta2=args.beta2, grad_clip=args.grad_clip, schedule=args.schedule, warmup_steps=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio, ema=args.ema, dropout=args.dropout, class_dropout=args.class_dropout,
        drop_path=args.drop_path, model_overrides=over, aug=aug, val_split=args.val_split, device=args.device,
        precision=args.precision, compile=args.compile, fsdp=args.fsdp, seed=args.seed, threads=args.threads, log_every=args.log_every,
        val_every=args.val_every, val_batches=args.val_batches, ckpt_every=args.ckpt_every,
        keep_ckpts=args.keep_ckpts, tensorboard=args.tensorboard, wandb=args.wandb, resume=args.resume,
        overwrite=args.overwrite, stop_at_step=args.stop_at_step, progress=args.progress,
    )


def run(args: argparse.Namespace) -> int:
    from codeprior.train.trainer import train

    summary = train(config_from_args(args))
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        keys = [k for k in ("step", "loss", "token_acc", "cluster_acc", "val_loss", "val_token_acc", "val_cluster_acc")
                if k in summary]
        print(" ".join(f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}" for k in keys))
        print(f"run: {summary['run_dir']}")
    return 0
