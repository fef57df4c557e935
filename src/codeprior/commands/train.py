"""`codeprior train` (GPT: token / cluster-ce / coarse objectives) and `codeprior train-refine` (refine model).

Both run the same loop (:func:`codeprior.train.trainer.train`); under ``torchrun`` they train with DDP (or FSDP
with ``--fsdp``). Their flags are generated from :class:`codeprior.train.config.TrainConfig` (help text, defaults,
types); only train-refine's ``--causal`` / ``--no-restrict`` (model overrides) are written here.
"""

from __future__ import annotations

import argparse
from typing import Any

from codeprior.train.config import add_config_flags
from codeprior.train.objective_traits import gpt_objectives  # no torch: --help stays light
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


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a GPT on code shards (token / cluster-ce / coarse objective)",
        description="Train a LlamaGen-compatible class-conditional GPT on pre-tokenised codes. Objectives: token "
        "(LlamaGen CE), cluster-ce (token CE + lam * CE over cluster log-sum-exp logits; any partition), coarse "
        "(the GPT's vocabulary is the prior's k clusters). Runs under torchrun for DDP/FSDP.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flags(p, override={"objective": {"choices": gpt_objectives()}})
    declare_paths(p, outputs={"out": "dir"}, inputs=("codes", "prior"))
    p.set_defaults(func=run, task="gpt")

    r = subparsers.add_parser(
        "train-refine",
        help="train the coarse-to-fine refine model (fine codes from the coarse sequence)",
        description="Train the refine model: from [class, cluster ids of every position] predict every fine code in "
        "one pass (bidirectional and restricted to each cluster's members by default). CE on the ground-truth codes.",
        epilog=EPILOG_REFINE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flags(
        r,
        skip=("objective", "lam", "loss_chunk", "level_weights", "snce_k", "snce_tau", "snce_source", "codebook"),
        override={
            "model": {
                "default": "Refine-tiny",
                "help": "refine config name (Refine-tiny, Refine-S, Refine-B, Refine-L)",
            },
            "prior": {"required": True, "help": "prior .safetensors (the coarse vocabulary)"},
        },
    )
    r.add_argument("--causal", action="store_true", help="causal attention (DCPE's released variant)")
    r.add_argument(
        "--no-restrict",
        dest="restrict",
        action="store_false",
        help="do not restrict logits to the members of each position's cluster",
    )
    declare_paths(r, outputs={"out": "dir"}, inputs=("codes", "prior"))
    r.set_defaults(func=run, task="refine")


def config_from_args(args: argparse.Namespace) -> Any:
    """The trainer's config from parsed ``train`` / ``train-refine`` flags."""
    from codeprior.train.config import config_from_namespace

    if args.task != "gpt":  # train-refine: the task is its objective (the command has no --objective flag)
        return config_from_namespace(
            args, objective=args.task, model_overrides={"causal": bool(args.causal), "restrict": bool(args.restrict)}
        )
    return config_from_namespace(args)


def run(args: argparse.Namespace) -> int:
    from codeprior.train.trainer import train
    from codeprior.utils.lock import folder_lock

    with folder_lock(args.out):  # one writer per run folder (rank 0 holds it under torchrun)
        summary = train(config_from_args(args))
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        keys = [
            k
            for k in ("step", "loss", "token_acc", "cluster_acc", "val_loss", "val_token_acc", "val_cluster_acc")
            if k in summary
        ]
        print(" ".join(f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}" for k in keys))
        print(f"run: {summary['run_dir']}")
    return 0
