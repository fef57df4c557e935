"""``codeprior classifier train|info``: the in-project feature classifier used by the metrics."""

from __future__ import annotations

import argparse
import json
import sys

from codeprior.classifier_settings import ClassifierConfig
from codeprior.utils.paths import declare_paths
from codeprior.utils.settings import add_flags, from_namespace

_DESCRIPTION = """\
Train (or inspect) the small CNN whose penultimate features replace Inception features for
FID / KID / precision-recall, and whose logits give the Inception-style score and class match.

It trains on the dataset's train split and is tested on its test split (>= 90% on Fashion-MNIST).
The checkpoint stores its test accuracy, config hash and a hash of the data, and is cached: a file
whose config and data match is reused instead of retrained (use --force to retrain).
"""

_EPILOG = """\
examples:
  codeprior classifier train --data fashion-mnist            # -> ~/.cache/codeprior/classifier-fashion-mnist.pt
  codeprior classifier train --data fashion-mnist --out clf.pt --epochs 12
  codeprior classifier info clf.pt
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "classifier",
        help="train / inspect the feature classifier behind FID, KID, IS, PRDC",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="classifier_action", metavar="ACTION")
    t = sub.add_parser(
        "train",
        help="train the classifier on the train split (cached)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--data", default="fashion-mnist", help="dataset: fashion-mnist or mnist (default: fashion-mnist)")
    t.add_argument(
        "--data-dir", metavar="DIR", help="directory holding the IDX files (default: /usr/share/datasets/<name>)"
    )
    t.add_argument(
        "--out",
        metavar="CKPT",
        help="checkpoint path (default: ~/.cache/codeprior/classifier-<data>.pt; "
        "$CODEPRIOR_CACHE overrides the folder)",
    )
    add_flags(t, ClassifierConfig)
    t.add_argument("--force", action="store_true", help="retrain even if a matching checkpoint exists")
    t.add_argument("--json", metavar="PATH", help="also write the checkpoint summary as JSON")
    declare_paths(t, outputs={"out": "file", "json": "file"}, inputs=("data_dir",))
    t.set_defaults(func=run_train)
    i = sub.add_parser(
        "info",
        help="print a classifier checkpoint's accuracy, config and hashes",
        epilog="examples:\n  codeprior classifier info ~/.cache/codeprior/classifier-fashion-mnist.pt\n"
        "  codeprior classifier info runs/demo/classifier/classifier.pt\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("ckpt", metavar="CKPT", help="classifier checkpoint")
    i.set_defaults(func=run_info)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _summary(loaded) -> dict:
    d = loaded.describe()
    d.update(loaded.extras)
    d["config"] = loaded.model.config.to_dict()
    return d


def run_train(args: argparse.Namespace) -> int:
    from codeprior.evaluate import classifier as clf
    from codeprior.utils.io import write_json_atomic

    config = from_namespace(clf.ClassifierConfig, args, where="classifier train")
    out = args.out or clf.default_classifier_path(args.data)
    loaded = clf.get_classifier(
        args.data, args.data_dir, out, config, force=args.force, log=lambda m: print(m, file=sys.stderr, flush=True)
    )
    print(
        f"classifier: {out}: test accuracy {loaded.test_accuracy:.4f} on {loaded.dataset} "
        f"({loaded.model.config.feature_dim}-d features)"
    )
    if args.json:
        write_json_atomic(args.json, _summary(loaded))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from codeprior.evaluate.classifier import load_classifier

    print(json.dumps(_summary(load_classifier(args.ckpt)), indent=2))
    return 0
