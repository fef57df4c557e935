"""`codeprior tokenizer train|eval`: train a small LlamaGen-compatible VQ tokenizer, or evaluate one."""

from __future__ import annotations

import argparse
import json
import sys

from codeprior.errors import deprecated
from codeprior.utils.argtypes import (
    HelpFormatter,
    add_runtime_flags,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
    threads_int,
)
from codeprior.utils.paths import declare_paths
from codeprior.utils.settings import add_old_flags


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter, HelpFormatter):
    """Defaults in the option help, the epilog's examples as written."""


_TRAIN_EPILOG = """\
examples:
  codeprior tokenizer train --data fashion-mnist --schedule demo --threads 1 --out runs/vq
  codeprior tokenizer train --data fashion-mnist --out runs/vq --resume      (continue from the newest checkpoint)
"""

_EVAL_EPILOG = """\
examples:
  codeprior tokenizer eval --tokenizer runs/vq/tokenizer.pt --split test --grid recon.png --json tok.json
  codeprior tokenizer eval --tokenizer vq_ds16_c2i.pt --vq-model VQ-16 --data /data/imagenet --split val
  codeprior tokenizer eval --tokenizer vq.pt --data fashion-mnist --rfid --json tok.json   (+ rFID, accuracy)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tokenizer",
        help="train or evaluate a VQ tokenizer (LlamaGen VQModel architecture and checkpoint layout)",
        description="Train a LlamaGen-compatible VQ tokenizer on Fashion-MNIST / MNIST / an image folder, or report "
        "codebook usage, MSE and PSNR of a tokenizer checkpoint. See docs/tokenizer.md.",
        epilog=_TRAIN_EPILOG + "\n" + _EVAL_EPILOG,
        formatter_class=HelpFormatter,
    )
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    from codeprior.models.vq_config import VQ_CONFIGS  # the registries without torch: --help stays light
    from codeprior.tokenizer_settings import SCHEDULES

    t = sub.add_parser(
        "train",
        help="train a tokenizer (writes OUT/tokenizer.pt, checkpoints, recon_grid.png, metrics.json)",
        description="Reconstruction (MSE [+ L1]) + codebook + commitment loss, AdamW with warm-up and cosine decay, "
        "dead-code restarts. Checkpoints every --ckpt-every steps in LlamaGen's vq_train layout; --resume continues "
        "exactly. Ends with test-split codebook usage / MSE / PSNR (printed as JSON, saved to OUT/metrics.json). "
        "Schedules: "
        + "; ".join(f"{k}: {v['steps']} steps x batch {v['batch_size']}" for k, v in SCHEDULES.items())
        + ". On a shared / oversubscribed CPU use --threads 1 (two OpenMP threads fighting for cores run ~10x slower).",
        epilog=_TRAIN_EPILOG,
        formatter_class=HelpFormatter,
    )
    t.add_argument(
        "--data",
        default="fashion-mnist",
        help="fashion-mnist (default), mnist, or an image folder (train/ and val/, one sub-folder per class)",
    )
    t.add_argument("--data-dir", default=None, help="folder holding the IDX files (default /usr/share/datasets/NAME)")
    add_old_flags(
        t,
        t.add_argument(
            "--vq-model",
            dest="config",
            default="VQ-fmnist",
            choices=sorted(VQ_CONFIGS),
            help="VQ model config (default VQ-fmnist; the pipeline's tokenizer.model)",
        ),
        ["--config"],
    )
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument(
        "--schedule",
        default="full",
        choices=sorted(SCHEDULES),
        help="named step/batch/lr schedule (default full); the options below override it",
    )
    t.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the schedule's)")
    t.add_argument("--batch-size", type=positive_int, default=None, help="images per step (default: the schedule's)")
    t.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (default: the schedule's)")
    t.add_argument(
        "--l1-weight", type=nonneg_float, default=None, help="weight of an extra L1 reconstruction term (default 0)"
    )
    t.add_argument("--ckpt-every", type=positive_int, default=None, help="steps between checkpoints (default 500)")
    t.add_argument(
        "--restart-every",
        type=nonneg_int,
        default=None,
        help="steps between dead-code restarts (default: the schedule's)",
    )
    t.add_argument("--seed", type=seed_int, default=0, help="seed of init, batch order and restarts (default 0)")
    t.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    t.add_argument("--threads", type=threads_int, default=None, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT/checkpoints")
    t.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation and reconstruction grid")
    declare_paths(t, outputs={"out": "dir"}, inputs=("data", "data_dir"))
    t.set_defaults(func=run_train)

    e = sub.add_parser(
        "eval",
        help="codebook usage, MSE, PSNR (--rfid: reconstruction FID, classifier accuracy) of a tokenizer (JSON)",
        description=EVAL_DESCRIPTION,
        epilog=_EVAL_EPILOG,
        formatter_class=_DefaultsFormatter,
    )
    add_eval_flags(e)
    e.set_defaults(func=run_eval)


EVAL_DESCRIPTION = (
    "Round-trip real images through a VQ tokenizer (encode, decode) and measure what is lost: codebook usage "
    "(fraction of entries used at least once), code perplexity, MSE and PSNR (on the [0, 1] pixel scale like every "
    "codeprior command, reconstructions clamped; PSNR is the mean per-image PSNR, as the pipeline reports it). "
    "With --rfid (or --classifier) also the reconstruction FID on the in-project classifier's features and the "
    "classifier's accuracy on originals vs reconstructions (the pipeline's tokenizer-eval numbers; needs the 'eval' "
    "extra). The result is printed as JSON."
)


def add_eval_flags(e: argparse.ArgumentParser) -> None:
    """The flags of the tokenizer evaluation (``tokenizer eval``, and its deprecated alias ``evaluate-tokenizer``)."""
    e.add_argument("--tokenizer", required=True, help="tokenizer checkpoint (ours, or LlamaGen's with --vq-model)")
    add_old_flags(
        e,
        e.add_argument(
            "--vq-model",
            dest="config",
            default=None,
            help="VQ config name for files without a config entry (LlamaGen's)",
        ),
        ["--config"],
    )
    e.add_argument("--data", default="fashion-mnist", help="fashion-mnist, mnist, or an image folder")
    e.add_argument("--data-dir", default=None, help="folder holding the IDX files (default /usr/share/datasets/NAME)")
    e.add_argument("--split", default="test", help="train or test (image folders: train or val)")
    add_old_flags(
        e,
        e.add_argument("--num-images", type=nonneg_int, default=0, metavar="N", help="first N images (0: all)"),
        ["--num"],
    )
    e.add_argument("--batch-size", type=positive_int, default=500)
    e.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    e.add_argument("--grid", default=None, help="also write a reconstructions grid PNG here")
    e.add_argument(
        "--rfid",
        action="store_true",
        help="also the reconstruction FID and the classifier's accuracy on originals vs reconstructions",
    )
    e.add_argument(
        "--classifier",
        metavar="CKPT",
        help="feature classifier checkpoint of --rfid (implies it; default: the cached one, trained on first use)",
    )
    e.add_argument(
        "--seed",
        type=seed_int,
        default=0,
        help="no effect (nothing here is random): evaluate-tokenizer's command lines still run",
    )
    add_old_flags(
        e,
        e.add_argument("--json", dest="out", default=None, metavar="PATH", help="also write the JSON here"),
        ["--out"],
    )
    add_runtime_flags(e)
    declare_paths(e, outputs={"out": "file", "grid": "file"}, inputs=("tokenizer", "data", "data_dir", "classifier"))


def _summary(res: dict) -> dict:
    return {k: v for k, v in res.items() if k not in ("history", "config", "settings")}


def run_train(args: argparse.Namespace) -> int:
    from codeprior.tokenizer_train import train_tokenizer  # --threads: applied by codeprior.cli.main
    from codeprior.utils.lock import folder_lock

    with folder_lock(args.out):  # one writer per tokenizer run folder
        res = train_tokenizer(
            args.data,
            args.data_dir,
            args.config,
            args.out,
            schedule=args.schedule,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            resume=args.resume,
            evaluate=not args.no_eval,
            l1_weight=args.l1_weight,
            ckpt_every=args.ckpt_every,
            restart_every=args.restart_every,
        )
    json.dump(_summary(res), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from codeprior.tokenizer_train import eval_tokenizer
    from codeprior.utils.io import write_json_atomic

    extractor = None
    if args.rfid or args.classifier:
        from codeprior.utils.extras import require_extra

        require_extra("codeprior tokenizer eval --rfid", "eval")
        from codeprior.commands.evaluate import _check_classifier_arg
        from codeprior.evaluate.metrics import make_extractor

        _check_classifier_arg(args)

        extractor = make_extractor("classifier", data=args.data, data_dir=args.data_dir, classifier=args.classifier)
    res = eval_tokenizer(
        args.tokenizer,
        args.data,
        args.data_dir,
        args.split,
        args.config,
        args.batch_size,
        args.device,
        args.grid,
        num_images=args.num_images,
        extractor=extractor,
    )
    if args.out:
        write_json_atomic(args.out, res)
    json.dump(res, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def run_evaluate_tokenizer(args: argparse.Namespace) -> int:
    """The deprecated ``codeprior evaluate-tokenizer``: ``tokenizer eval --rfid`` (one deprecation line)."""
    deprecated("codeprior evaluate-tokenizer", "codeprior tokenizer eval --rfid")
    return run_eval(args)
