"""``codeprior evaluate``, ``codeprior prior substitute`` and the deprecated ``codeprior evaluate-tokenizer``.

``evaluate-tokenizer`` is ``codeprior tokenizer eval --rfid`` (commands/tokenizer.py: its flags and code), kept one
release with a deprecation line.

``prior substitute`` is a sub-action of the ``prior`` command (owned by commands/prior.py); it is added
here through :func:`codeprior.commands.prior.register_action`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from codeprior.errors import CodepriorError
from codeprior.evaluate_settings import EvaluateSettings  # torch-free: the flags of `codeprior evaluate`
from codeprior.utils.argtypes import add_runtime_flags, positive_int
from codeprior.utils.extras import needs_extra
from codeprior.utils.memory import add_memory_flag
from codeprior.utils.paths import declare_paths
from codeprior.utils.settings import add_flags, add_old_flags, from_namespace

_EVAL_DESCRIPTION = """\
Evaluate generated samples against a reference set: FID, KID, an Inception-style score, precision /
recall / density / coverage (k=5) and, when the samples carry labels, the share classified as their
intended class.

Features come from the in-project classifier (trained on the dataset's train split, cached; its test
accuracy is printed with every result). With --inception-weights the standard Inception-v3 FID / IS are
computed as well (needs torch-fidelity and the pt_inception-2015-12-05 weights file; nothing is downloaded).

SAMPLES.npz holds arr_0 (uint8 [N, H, W, C], the ADM evaluator layout) and optionally labels [N].
"""

_EVAL_EPILOG = """\
examples:
  codeprior evaluate samples.npz --reference test-split --data fashion-mnist --json metrics.json
  codeprior evaluate samples.npz --reference ref.npz --classifier clf.pt
  codeprior evaluate samples.npz --inception-weights pt_inception-2015-12-05-6726825d.pth

exit status: 0 on success, 2 on bad input (one line on stderr naming the file).
"""

_TOK_EPILOG = """\
examples:
  codeprior tokenizer eval --rfid --tokenizer vq.pt --data fashion-mnist --num-images 10000 --json tok.json
"""

_SUB_EPILOG = """\
Replaces every code of real images' token grids by a uniformly random member of its cluster, decodes,
and reports FID / MSE against the untouched reconstructions (and FID against the originals), as mean
and std over --draws draws. Lower is better: the prior groups codes the decoder treats alike.

examples:
  codeprior prior substitute dcpe.safetensors kmeans.safetensors --tokenizer vq.pt --data fashion-mnist
  codeprior prior substitute dcpe.safetensors --tokenizer vq.pt --draws 10 --num-images 5000 --json sub.json
"""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", default="fashion-mnist", help="dataset the classifier / reference come from (default: fashion-mnist)"
    )
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the IDX files")
    p.add_argument(
        "--classifier",
        metavar="CKPT",
        help="feature classifier checkpoint (default: the cached one, trained on first use)",
    )
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    add_flags(p, EvaluateSettings, only=("seed", "batch_size"))
    add_runtime_flags(p)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="FID / KID / IS / precision-recall of samples (.npz)",
        description=_EVAL_DESCRIPTION,
        epilog=_EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("samples", metavar="SAMPLES.npz", help="samples: arr_0 uint8 [N, H, W, C], optional labels")
    add_flags(p, EvaluateSettings, only=("reference",))
    _add_common(p)
    p.add_argument(
        "--inception-weights",
        metavar="PATH",
        help="also compute standard Inception FID / IS from this pt_inception-2015-12-05 file",
    )
    add_flags(p, EvaluateSettings, only=("kid_subsets", "kid_subset_size", "nearest_k", "prdc_max"))
    add_memory_flag(p)
    declare_paths(p, outputs={"json": "file"}, inputs=("samples", "reference", "classifier", "inception_weights"))
    p.set_defaults(func=run_evaluate)
    needs_extra(p, "eval")

    from codeprior.commands import tokenizer as tc

    t = subparsers.add_parser(
        "evaluate-tokenizer",
        help="deprecated: `codeprior tokenizer eval --rfid` (same flags)",
        description="Deprecated (goes in the next release): `codeprior tokenizer eval --rfid`, which this runs. "
        + tc.EVAL_DESCRIPTION,
        epilog=_TOK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tc.add_eval_flags(t)
    t.set_defaults(func=tc.run_evaluate_tokenizer, rfid=True)
    needs_extra(t, "eval")

    from codeprior.commands.prior import register_action

    register_action(
        "substitute",
        help="substitution test: swap codes within clusters, measure FID / MSE",
        description="Prior substitution test (see below).",
        epilog=_SUB_EPILOG,
        configure=_add_substitute_args,
        run=run_substitute,
    )


def _write_json(path: str | None, obj: Any) -> None:
    if path:
        from codeprior.utils.io import write_json_atomic

        write_json_atomic(path, obj)
        print(f"results -> {path}")


def _check_classifier_arg(args: argparse.Namespace) -> None:
    """An explicitly given --classifier must exist: only the default (no --classifier) trains one on first use."""
    if args.classifier and not Path(args.classifier).is_file():
        raise CodepriorError(
            f"{args.classifier}: --classifier: no such file (omit --classifier to use the cached {args.data} "
            "classifier, trained on first use, or make one with `codeprior classifier train`)"
        )


def _check_evaluate_memory(args: argparse.Namespace) -> None:
    """Refuse before any work when the samples and the reference will not fit (docs/checks.md, memory)."""
    from codeprior.evaluate.metrics import evaluate_memory, npz_shape
    from codeprior.utils.memory import check_memory, fmt_bytes

    shape = npz_shape(args.samples)
    if shape is None or args.ignore_memory_check:
        return  # unreadable: load_samples_npz says why
    if args.reference in ("test-split", "train-split"):
        from codeprior.evaluate.classifier import load_split

        try:
            ref_shape: tuple[int, ...] | None = load_split(args.data, args.reference.split("-")[0], args.data_dir)[
                0
            ].shape
        except CodepriorError:
            ref_shape = None  # said in its turn, after the samples
    else:
        ref_shape = npz_shape(args.reference)
    need = evaluate_memory(shape, ref_shape or shape, args.prdc_max)
    what = f"evaluate: {args.samples} holds {shape[0]} images of {'x'.join(map(str, shape[1:]))} ({fmt_bytes(need)})"
    check_memory(need, what, hint="evaluate a part of the samples, or lower --prdc-max")


def run_evaluate(args: argparse.Namespace) -> int:
    from codeprior.evaluate.metrics import (
        check_labels,
        evaluate_images,
        format_table,
        load_samples_npz,
        make_extractor,
    )

    _check_classifier_arg(args)
    if args.inception_weights:  # fail fast, before minutes of classifier work
        from codeprior.evaluate.inception import InceptionFeatures

        inception = InceptionFeatures(args.inception_weights)
    _check_evaluate_memory(args)
    images, labels = load_samples_npz(args.samples)
    classifier = args.classifier or _classifier_of_run(args.samples)
    if classifier is None:
        _log(
            f"evaluate: no --classifier given and {args.samples} is not in a pipeline run with one: using the cached "
            f"{args.data} classifier, trained now on its train split if missing (minutes on a CPU)"
        )
    extractor = make_extractor("classifier", data=args.data, data_dir=args.data_dir, classifier=classifier)
    if labels is not None:
        check_labels(labels, extractor.num_classes, args.samples, f"the classifier {extractor.describe().get('path')}")
    settings = from_namespace(EvaluateSettings, args, where="evaluate")
    common = {
        "reference": settings.reference,
        "data": args.data,
        "data_dir": args.data_dir,
        **settings.metric_kwargs(),
    }
    result = evaluate_images(images, labels, feature=extractor, **common)
    result["samples"] = str(args.samples)
    print(format_table(result))
    if args.inception_weights:
        inc = evaluate_images(images, labels, feature=inception, **common)
        inc.pop("class_match", None)  # Inception's 1008 ImageNet classes are not the dataset's labels
        result["inception"] = inc
        print(format_table(inc))
    _write_json(args.json, result)
    return 0


def _classifier_of_run(samples: str) -> str | None:
    """The classifier of the pipeline run the samples came from (``RUN/sample-NAME/samples.npz`` -> the record of
    ``RUN/classifier/``, read as the pipeline reads it), or None."""
    from codeprior.pipeline import ClassifierOutputs, read_stage_manifest

    stage = Path(samples).resolve().parent.parent / "classifier"
    m = read_stage_manifest(stage)
    if not m or m.get("status") != "done":
        return None
    path = ClassifierOutputs.from_manifest(m).checkpoint  # relative paths resolve against the run folder
    if not path or not Path(path).is_file():
        return None
    _log(f"evaluate: using the run's classifier {path} (from {stage / 'manifest.json'}); --classifier overrides it")
    return str(path)


def _load_vq(path: str) -> Any:
    from codeprior.models import load_vq

    return load_vq(path)


def _split_images(args: argparse.Namespace, split: str):
    from codeprior.evaluate.classifier import load_split

    images, labels = load_split(args.data, split, args.data_dir)
    if args.num_images:
        images, labels = images[: args.num_images], labels[: args.num_images]
    return images, labels


def _add_substitute_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "priors", nargs="+", metavar="PRIOR", help="prior file(s) (.safetensors) for the tokenizer's codebook"
    )
    p.add_argument("--tokenizer", required=True, metavar="VQ.pt", help="VQ checkpoint the priors were extracted from")
    p.add_argument("--split", default="test", choices=("train", "test"), help="images to encode (default: test)")
    add_old_flags(
        p,
        p.add_argument(
            "--num-images",
            type=positive_int,
            default=2000,
            metavar="N",
            help="first N images of the split (default: 2000)",
        ),
        ["--num"],
    )
    p.add_argument("--draws", type=positive_int, default=5, help="random substitutions averaged (default: 5)")
    p.add_argument(
        "--allow-codebook-mismatch",
        action="store_true",
        help="use a prior even if it was extracted from a different codebook",
    )
    _add_common(p)
    declare_paths(p, outputs={"json": "file"}, inputs=("priors", "tokenizer", "classifier"))
    needs_extra(p, "eval")


def run_substitute(args: argparse.Namespace) -> int:
    from codeprior.codebook import load_codebook
    from codeprior.evaluate.metrics import make_extractor
    from codeprior.evaluate.substitution import format_substitution_table, substitution_reference, substitution_test
    from codeprior.priors.prior import load_prior

    _check_classifier_arg(args)
    codebook = load_codebook(args.tokenizer)
    priors = [(p, load_prior(p, codebook, allow_mismatch=args.allow_codebook_mismatch)) for p in args.priors]
    vq = _load_vq(args.tokenizer)
    images, _ = _split_images(args, args.split)
    extractor = make_extractor("classifier", data=args.data, data_dir=args.data_dir, classifier=args.classifier)
    stems = [Path(p).stem for p, _ in priors]
    names = stems if len(set(stems)) == len(stems) else [str(p) for p, _ in priors]
    results = []
    ref = substitution_reference(vq, images, extractor, batch_size=args.batch_size)  # shared by every prior
    for name, (path, prior) in zip(names, priors):
        _log(f"substitute: {path} (k={prior.k}) ...")
        r = substitution_test(
            vq,
            prior.token_to_cluster,
            images,
            extractor,
            draws=args.draws,
            seed=args.seed,
            batch_size=args.batch_size,
            reference=ref,
        )
        r.update(prior=str(path), method=prior.metadata.get("method"))
        results.append((name, r))
    print(format_substitution_table(results))
    _write_json(
        args.json,
        {
            "tokenizer": str(args.tokenizer),
            "data": args.data,
            "split": args.split,
            "priors": [dict(name=n, **r) for n, r in results],
        },
    )
    return 0
