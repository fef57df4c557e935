"""Convergence benchmark: does a codebook prior make AR training converge faster?

Same model, data, steps and seeds for six variants:

* ``token``: the baseline (token cross-entropy over the whole codebook);
* ``cluster-ce-{balanced-kmeans,kmeans,dcpe}``: token CE + cluster CE (IAR's objective) with each prior;
* ``coarse-{kmeans,dcpe}``: the GPT predicts cluster ids only; images come out through a refine model trained
  once per (prior, seed) with ``objective="refine"`` (coarse-to-fine, as in DCPE).

Every run calls the pipeline's FID hook (``codeprior.curves.make_fid_fn``, decoding on the codes' grid) every
``--eval-every`` steps (the same ``--fid-samples`` class-balanced samples with a fixed sampling seed at every
evaluation, FID on the in-project classifier's features against the test split); the last evaluation also measures
IS and precision / recall / density / coverage. The headline is the number of
steps each variant needs to reach the baseline's final FID (linear interpolation on the seed-mean FID curve), as a
ratio to the baseline's.

Layout of ``--out`` (default ``runs/convergence/<budget>``)::

    settings.json                     what the runs were made with (a rerun with other settings is refused)
    priors/<method>.safetensors       priors (same k) extracted from the tokenizer's codebook
    refine/<prior>/seed<S>/train/     refine model runs (trainer run dirs), result.json when finished
    runs/<variant>/seed<S>/train/     GPT runs (trainer run dirs), result.json when finished
    summary.json                      curves, final metrics, steps-to-baseline-FID; also benchmarks/results/

A rerun skips runs with a result.json and resumes interrupted trainings from their newest checkpoint (the trainer's
``resume="auto"``). The tokenizer, code shards and feature classifier come from a pipeline run folder
(``--run-dir``, stages ``tokenizer``, ``tokenize`` and ``classifier``); when it lacks them, they are produced there
by :func:`codeprior.pipeline.run_pipeline` (``until="classifier"``).

Usage::

    python benchmarks/convergence.py                      # default budget (3 seeds; ~3 h on 2 idle CPU cores)
    python benchmarks/convergence.py --budget quick       # 2 seeds, 240 steps (~40 min on 2 cores)
    python benchmarks/convergence.py --model GPT-B --steps 20000 --device cuda --codes DIR --vq VQ.pt ...

Not run in CI.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import ROOT, machine, update_doc_section, write_result
from convergence_summary import collect, markdown, plot, print_table, summarize

VARIANTS: tuple[tuple[str, str, str | None], ...] = (
    ("token", "token", None),
    ("cluster-ce-balanced-kmeans", "cluster-ce", "balanced-kmeans"),
    ("cluster-ce-kmeans", "cluster-ce", "kmeans"),
    ("cluster-ce-dcpe", "cluster-ce", "dcpe"),
    ("coarse-kmeans", "coarse", "kmeans"),
    ("coarse-dcpe", "coarse", "dcpe"),
)

# Budgets: sizes of every knob; command-line flags override single values.
BUDGETS: dict[str, dict[str, Any]] = {
    # ~3 h on 2 idle CPU cores (estimate): 3 seeds x (6 GPT runs + 2 refine runs), full Fashion-MNIST.
    "default": dict(
        seeds=3,
        model="GPT-tiny",
        steps=600,
        batch=64,
        lr=1e-3,
        warmup=30,
        eval_every=100,
        fid_samples=1000,
        refine_model="Refine-tiny",
        refine_steps=600,
        train_images=0,
        test_images=0,
        tokenizer_steps=700,
        tokenizer_batch=64,
        tokenize_flip=True,
        classifier_epochs=2,
    ),
    # ~40 min on 2 idle CPU cores with two processes (see docs/convergence.md): 2 seeds, 240 steps at batch 32,
    # FID every 60 steps on 500 samples, a 10k-image train / 2k-image test subset, a briefly trained tokenizer.
    "quick": dict(
        seeds=2,
        model="GPT-tiny",
        steps=240,
        batch=32,
        lr=1e-3,
        warmup=20,
        eval_every=60,
        fid_samples=500,
        refine_model="Refine-tiny",
        refine_steps=240,
        train_images=10000,
        test_images=2000,
        tokenizer_steps=80,
        tokenizer_batch=32,
        tokenize_flip=False,
        classifier_epochs=2,
    ),
}
K_DEFAULT = 512  # 4096 / 8 codes per cluster: divides the codebook (balanced k-means) and matches the demo's k


# ------------------------------------------------------------------------------------------------ small pieces
def check_settings(path: Path, rec: dict[str, Any], what: str) -> None:
    """Write the settings record ``path`` on the first call; refuse a later call whose settings differ (``what``
    names the runs in the message: "FILE: <what> made with other settings (keys); use another --out")."""
    from codeprior.errors import CodepriorError
    from codeprior.utils.io import write_json_atomic

    if path.is_file():
        old = json.loads(path.read_text())
        if old != rec:
            diff = sorted(k for k in set(old) | set(rec) if old.get(k) != rec.get(k))
            raise CodepriorError(f"{path}: {what} made with other settings ({', '.join(diff)}); use another --out")
    else:
        write_json_atomic(path, rec)


def read_eval_log(path: Path) -> dict[int, dict[str, Any]]:
    """``eval.jsonl`` -> ``{step: record}``; a step logged twice (an evaluation repeated after a resume) keeps the
    last record."""
    out: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                out[int(rec["step"])] = rec
    return out


def _write_idx(path: Path, array: Any) -> None:
    """Write a uint8 array as a gzipped IDX file (magic 0x08 = unsigned byte)."""
    import numpy as np

    from codeprior.utils.io import atomic_path

    a = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    with atomic_path(path) as tmp, gzip.open(tmp, "wb", compresslevel=1) as f:
        f.write(header + a.tobytes())


def make_subset(
    out: Path, dataset: str, train_images: int, test_images: int, seed: int = 0, data_dir: str | None = None
) -> Path:
    """Class-stratified subset of an IDX dataset written as IDX files in ``out`` (a ``data_dir`` for the pipeline)."""
    import numpy as np

    from codeprior.data.images import load_idx

    names = {"train": "train", "test": "t10k"}
    for split, n in (("train", train_images), ("test", test_images)):
        img_p, lab_p = out / f"{names[split]}-images-idx3-ubyte.gz", out / f"{names[split]}-labels-idx1-ubyte.gz"
        if img_p.is_file() and lab_p.is_file():
            continue
        x, y = load_idx(dataset, split, data_dir)
        if n and n < len(y):
            rng = np.random.default_rng(seed)
            classes = np.unique(y)
            per = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
            idx = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:m] for c, m in zip(classes, per)]))
            x, y = x[idx], y[idx]
        _write_idx(img_p, x)
        _write_idx(lab_p, y.astype(np.uint8))
    return out


# ------------------------------------------------------------------------------------------------ inputs
def base_config(b: dict[str, Any], data_dir: Path | None, device: str, seed: int) -> Any:
    """Pipeline config for the stages the benchmark needs (tokenizer, tokenize, classifier)."""
    from codeprior.pipeline import config_from_dict

    return config_from_dict(
        {
            "name": "convergence-base",
            "seed": seed,
            "device": device,
            "data": {"dataset": "fashion-mnist", "data_dir": str(data_dir) if data_dir else None},
            "tokenizer": {
                "model": "VQ-fmnist",
                "schedule": "demo",
                "steps": b["tokenizer_steps"],
                "batch_size": b["tokenizer_batch"],
                "num_recon": 16,
                "eval_images": min(2000, b["test_images"] or 10000),
            },
            "tokenize": {"batch_size": 500, "flip": b["tokenize_flip"]},
            "classifier": {"epochs": b["classifier_epochs"], "use_cache": False},
        },
        src="benchmarks/convergence.py",
    )


def prepare_base(run_dir: Path, b: dict[str, Any], device: str, log: Any = print) -> dict[str, Any]:
    """Tokenizer checkpoint, code shards, classifier and its reference features from a pipeline run folder,
    running the pipeline's first stages there when they are missing."""
    from codeprior.errors import CodepriorError
    from codeprior.pipeline import read_manifest, run_pipeline

    run_dir = run_dir.resolve()

    def done(stage: str) -> dict | None:
        m = read_manifest(run_dir / stage)
        return m if m and m.get("status") == "done" else None

    if not all(done(s) for s in ("tokenizer", "tokenize", "classifier")):
        data_dir = None
        if b["train_images"] or b["test_images"]:
            data_dir = make_subset(run_dir / "data-subset", "fashion-mnist", b["train_images"], b["test_images"])
        log(f"convergence: producing tokenizer, codes and classifier in {run_dir} (pipeline stages up to classifier)")
        run_pipeline(base_config(b, data_dir, device, 0), run_dir, until="classifier", log=log)
    tok, codes, cls = done("tokenizer"), done("tokenize"), done("classifier")
    if not (tok and codes and cls):
        raise CodepriorError(f"{run_dir}: pipeline stages tokenizer / tokenize / classifier did not finish")
    cm = cls["metrics"]
    data_cfg = (done("data") or {}).get("config") or {}
    return {
        "vq": tok["metrics"]["checkpoint"],
        "vq_config": (tok.get("config") or {}).get("model") if (tok.get("config") or {}).get("checkpoint") else None,
        "codes": codes["metrics"]["codes"],
        "classifier": cm.get("checkpoint"),
        "reference_features": cm["reference_features"],
        "feature_extractor": cm.get("feature_extractor"),
        "reference": cm.get("reference"),
        "num_reference": cm.get("num_reference"),
        "data_dir": data_cfg.get("data_dir"),
        "tokenizer_metrics": {k: v for k, v in tok["metrics"].items() if isinstance(v, (int, float, str))},
    }


def extract_priors(
    vq_path: str,
    out: Path,
    k: int,
    methods: Sequence[str],
    log: Any = print,
    progress: bool = True,
    normalize: bool = True,
) -> dict[str, dict]:
    """One prior file per method (same k), extracted once from the tokenizer's codebook (L2-normalised rows unless
    ``normalize=False``: the raw rows, as DCPE's release clusters them)."""
    from codeprior.codebook import load_codebook
    from codeprior.priors import extract
    from codeprior.priors.prior import load_prior

    cb = load_codebook(vq_path)
    info = {}
    for m in methods:
        path = out / f"{m}.safetensors"
        if path.is_file():
            p = load_prior(path, codebook=cb)
        else:
            log(f"convergence: extracting the {m} prior (k={k}) from {vq_path}")
            p = extract(cb, m, k, normalize=normalize, seed=0, progress=progress, source=vq_path)
            out.mkdir(parents=True, exist_ok=True)
            p.save(path)
        sizes = p.cluster_sizes()
        info[m] = {
            "path": str(path.resolve()),
            "k": p.k,
            "sha256": p.sha256(),
            "max_size": int(sizes.max()),
            "singletons": int((sizes == 1).sum()),
            "seconds": p.metadata.get("seconds"),
            "normalize": bool(p.metadata.get("normalize", normalize)),
        }
    return info


# ------------------------------------------------------------------------------------------------ evaluation
def fid_spec(
    inputs: dict[str, Any], settings: Any, num: int, batch: int, device: str, grid: Sequence[int], prdc_max: int = 5000
) -> dict[str, Any]:
    """The spec of the pipeline's FID hook (:func:`codeprior.curves.make_fid_fn`): ``num`` class-balanced samples
    with a fixed sampling seed, decoded on the codes' ``grid``, classifier features, FID and class match against the
    cached reference features (IS and PRDC too at ``full`` evaluations). A coarse run adds its ``refine`` model."""
    from dataclasses import asdict

    return {
        "classifier": inputs["classifier"],
        "inception_weights": None,
        "reference_features": inputs["reference_features"],
        "vq": inputs["vq"],
        "vq_config": inputs.get("vq_config"),
        "refine": None,
        "num": int(num),
        "batch_size": int(batch),
        "settings": asdict(settings),
        "grid": [int(g) for g in grid],
        "device": device,
        "prdc_k": 5,
        "prdc_max": prdc_max,
    }


def eval_hook(spec: dict[str, Any], total: int) -> Any:
    """A trainer ``eval_fn``: the FID hook of ``spec`` (full metrics at step ``total``), timed as ``eval_seconds``."""
    from codeprior.curves import make_fid_fn

    fid = make_fid_fn(spec)

    def evaluate(step: int, model: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        res = fid(model, full=step == total)
        res["eval_seconds"] = time.perf_counter() - t0
        return res

    return evaluate


# ------------------------------------------------------------------------------------------------ runs
def _train_config(
    args: argparse.Namespace,
    b: dict[str, Any],
    inputs: dict[str, Any],
    out: Path,
    objective: str,
    prior: str | None,
    seed: int,
    refine: bool = False,
) -> Any:
    """The trainer's config of one benchmark run: the trainer's defaults (codeprior.train.config) plus the settings
    this benchmark changes (from_dict: a misspelt key is an error)."""
    from codeprior.train.config import TrainConfig

    steps = b["refine_steps"] if refine else b["steps"]
    return TrainConfig.from_dict(
        {
            "codes": inputs["codes"],
            "out": str(out),
            "model": b["refine_model"] if refine else b["model"],
            "objective": objective,
            "prior": prior,
            "global_batch": b["batch"],
            "max_steps": steps,
            "lr": b["lr"],
            "warmup_steps": min(b["warmup"], steps - 1),
            "schedule": b.get("schedule", "constant"),
            "dropout": b.get("dropout"),
            "seed": seed,
            "device": args.device,
            "threads": args.threads,
            "eval_every": 0 if refine else b["eval_every"],
            "ckpt_every": b["eval_every"],
            "keep_ckpts": 2,
            "tensorboard": False,
            "resume": "auto",
            "progress": not args.no_progress,
        }
    )


def run_refine(
    args: argparse.Namespace,
    b: dict[str, Any],
    inputs: dict[str, Any],
    priors: dict[str, dict],
    prior: str,
    seed: int,
    log: Any = print,
) -> Path:
    """Train (or reuse) the refine model of ``prior`` for ``seed``; returns its model.pt."""
    from codeprior.train.trainer import train
    from codeprior.utils.io import write_json_atomic

    d = Path(args.out) / "refine" / prior / f"seed{seed}"
    if (d / "result.json").is_file():
        return Path(json.loads((d / "result.json").read_text())["model"])
    log(f"convergence: refine model for {prior}, seed {seed}")
    t0 = time.perf_counter()
    summary = train(_train_config(args, b, inputs, d / "train", "refine", priors[prior]["path"], seed, refine=True))
    if not summary.get("finished"):
        raise RuntimeError(f"{d}: refine training stopped at step {summary.get('step')}")
    write_json_atomic(
        d / "result.json",
        {
            "prior": prior,
            "seed": seed,
            "model": summary["model"],
            "summary": summary,
            "seconds": time.perf_counter() - t0,
        },
    )
    return Path(summary["model"])


def run_variant(
    args: argparse.Namespace,
    b: dict[str, Any],
    inputs: dict[str, Any],
    priors: dict[str, dict],
    spec: dict[str, Any],
    name: str,
    objective: str,
    prior: str | None,
    seed: int,
    log: Any = print,
) -> dict[str, Any]:
    """One (variant, seed) training run with the FID hook of ``spec`` (:func:`fid_spec`); ``result.json`` when
    finished (reused on rerun)."""
    from codeprior.train.trainer import find_latest_checkpoint, train
    from codeprior.utils.io import write_json_atomic

    d = Path(args.out) / "runs" / name / f"seed{seed}"
    if (d / "result.json").is_file():
        return json.loads((d / "result.json").read_text())
    refine = str(run_refine(args, b, inputs, priors, prior, seed, log)) if objective == "coarse" else None
    cfg = _train_config(args, b, inputs, d / "train", objective, priors[prior]["path"] if prior else None, seed)
    if find_latest_checkpoint(d / "train") is None:  # fresh start: drop evaluations of an attempt without checkpoint
        (d / "train" / "eval.jsonl").unlink(missing_ok=True)
    total = int(cfg.max_steps)
    log(f"convergence: {name}, seed {seed} ({total} steps, FID every {cfg.eval_every})")
    t0 = time.perf_counter()
    summary = train(cfg, eval_fn=eval_hook({**spec, "refine": refine}, total))
    if not summary.get("finished"):
        raise RuntimeError(f"{d}: training stopped at step {summary.get('step')}")
    evals = read_eval_log(d / "train" / "eval.jsonl")
    final = evals.get(total, {})
    result = {
        "variant": name,
        "objective": objective,
        "prior": prior,
        "seed": seed,
        "steps": total,
        "curve": {str(s): r["fid"] for s, r in sorted(evals.items())},
        "class_match_curve": {str(s): r.get("class_match") for s, r in sorted(evals.items())},
        "final": {
            k: final.get(k)
            for k in ("fid", "is_mean", "is_std", "precision", "recall", "density", "coverage", "class_match")
        },
        "train": {
            k: summary.get(k)
            for k in (
                "loss",
                "token_loss",
                "cluster_loss",
                "token_acc",
                "cluster_acc",
                "val_loss",
                "val_token_loss",
                "val_token_acc",
                "val_cluster_acc",
                "tokens_per_s",
            )
        },
        "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in evals.values()),
        "seconds_this_invocation": time.perf_counter() - t0,
    }
    write_json_atomic(d / "result.json", result)
    return result


# ------------------------------------------------------------------------------------------------ summary


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python benchmarks/convergence.py",
        description="Convergence benchmark: token baseline vs cluster-CE (balanced k-means, k-means, DCPE) vs "
        "coarse-to-fine (k-means, DCPE), same model, data, steps and seeds; FID every M steps; the headline is the "
        "steps each variant needs to reach the baseline's final FID. Resumable: rerun the same command.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--budget",
        choices=sorted(BUDGETS),
        default="default",
        help="size preset: default (3 seeds, 600 steps, ~3 h on 2 idle CPU cores) or quick (2 seeds, 240 "
        "steps, 10k-image subset, ~40 min)",
    )
    p.add_argument("--out", help="benchmark folder (default: runs/convergence/<budget>)")
    p.add_argument(
        "--run-dir",
        help="pipeline run folder with the tokenizer, tokenize and classifier stages "
        "(default: runs/demo when it has them, else runs/convergence/base-<budget>, produced if missing)",
    )
    g = p.add_argument_group("overrides of the budget (scale up on GPUs)")
    g.add_argument("--seeds", type=int, help="number of seeds (0, 1, ..., N-1)")
    g.add_argument("--model", help="GPT config name (GPT-tiny, GPT-S, GPT-B, ...)")
    g.add_argument("--steps", type=int, help="training steps of every GPT run")
    g.add_argument("--batch", type=int, help="global batch size")
    g.add_argument("--lr", type=float, help="learning rate (constant after warmup)")
    g.add_argument("--eval-every", type=int, help="FID every M steps (and at the end)")
    g.add_argument("--fid-samples", type=int, help="samples per FID evaluation")
    g.add_argument("--refine-model", help="refine model config for the coarse variants (Refine-tiny, Refine-S, ...)")
    g.add_argument("--refine-steps", type=int, help="refine model training steps")
    g.add_argument("--k", type=int, default=K_DEFAULT, help="clusters per prior (must divide the codebook size)")
    g.add_argument(
        "--variants",
        nargs="+",
        choices=[v[0] for v in VARIANTS],
        help="run only these variants (the summary covers every finished run; the headline needs token)",
    )
    g.add_argument(
        "--only-seeds",
        nargs="+",
        type=int,
        metavar="S",
        help="run only these seeds (e.g. to split the work over processes sharing --out)",
    )
    g.add_argument("--device", help="training and sampling device (cpu, cuda, cuda:N; default: cuda when available)")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    g2 = p.add_argument_group("inputs other than the run folder's (e.g. a real tokenizer's codes)")
    g2.add_argument("--codes", help="code shards folder (codeprior tokenize output)")
    g2.add_argument("--vq", help="VQ tokenizer checkpoint matching --codes")
    g2.add_argument("--vq-config", help="VQ config name for a LlamaGen checkpoint (e.g. VQ-16)")
    g2.add_argument("--classifier", help="feature classifier checkpoint (codeprior classifier train)")
    g2.add_argument(
        "--reference-features",
        help="reference features .pt ({'features': [N, D]}) as written by the pipeline's classifier stage",
    )
    g3 = p.add_argument_group("sampling for the FID hook")
    g3.add_argument("--cfg-scale", type=float, default=2.0)
    g3.add_argument("--temperature", type=float, default=1.0, help="GPT sampling temperature (all variants)")
    g3.add_argument("--refine-temperature", type=float, default=1.0, help="refine model temperature (coarse-*)")
    g3.add_argument("--sample-batch", type=int, default=500)
    g3.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: summarise the finished runs into docs/benchmarks.md and the plot",
    )
    g3.add_argument("--no-doc", action="store_true", help="do not touch docs/benchmarks.md")
    g3.add_argument("--note", default="", help="a sentence added to the doc section (e.g. how the work was split)")
    g3.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def canonical_args(argv: list[str]) -> list[str]:
    """The command line that reproduces the results: drops flags that only split or re-summarise the work."""
    out, skip = [], False
    for a in argv:
        if a in ("--only-seeds", "--variants", "--note"):
            skip = True
            continue
        if a.startswith("--"):
            skip = False
            if a in ("--report-only", "--no-progress", "--no-doc"):
                continue
        if not skip:
            out.append(a)
    return out


def budget_from_args(args: argparse.Namespace) -> dict[str, Any]:
    b = dict(BUDGETS[args.budget])
    for key in ("seeds", "model", "steps", "batch", "lr", "eval_every", "fid_samples", "refine_model", "refine_steps"):
        v = getattr(args, key)
        if v is not None:
            b[key] = v
    return b


def _resolve_inputs(args: argparse.Namespace, b: dict[str, Any], device: str) -> dict[str, Any]:
    from codeprior.errors import CodepriorError

    explicit = (args.codes, args.vq, args.classifier, args.reference_features)
    if all(explicit):
        return {
            "codes": args.codes,
            "vq": args.vq,
            "vq_config": args.vq_config,
            "classifier": args.classifier,
            "reference_features": args.reference_features,
            "feature_extractor": None,
            "tokenizer_metrics": {},
        }
    if any(explicit):
        raise CodepriorError(
            "convergence: give all of --codes, --vq, --classifier, --reference-features, or none "
            "(then they come from --run-dir)"
        )
    run_dir = args.run_dir
    if run_dir is None:
        from codeprior.pipeline import read_manifest

        demo = ROOT / "runs" / "demo"
        ok = all(
            (read_manifest(demo / s) or {}).get("status") == "done" for s in ("tokenizer", "tokenize", "classifier")
        )
        run_dir = demo if ok else ROOT / "runs" / "convergence" / f"base-{args.budget}"
    return prepare_base(Path(run_dir), b, device)


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from codeprior.errors import CodepriorError
    from codeprior.utils.io import write_json_atomic

    args = parse_args(argv)
    b = budget_from_args(args)
    args.out = str(Path(args.out) if args.out else ROOT / "runs" / "convergence" / args.budget)
    out = Path(args.out)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.device = device
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in VARIANTS if not args.variants or v[0] in args.variants]
    inputs = _resolve_inputs(args, b, device)
    from codeprior.data.codes import CodeShards
    from codeprior.sample import SampleSettings

    manifest = CodeShards(inputs["codes"], "train", aug=0).manifest
    num_codes = int(manifest["codebook_size"])
    if num_codes % args.k:
        raise CodepriorError(f"--k {args.k}: must divide the codebook size {num_codes} (balanced k-means)")
    settings_rec = {
        "budget": b,
        "k": args.k,
        "codes": str(Path(inputs["codes"]).resolve()),
        "vq": str(Path(inputs["vq"]).resolve()),
        "cfg_scale": args.cfg_scale,
        "temperature": args.temperature,
        "refine_temperature": args.refine_temperature,
    }
    check_settings(out / "settings.json", settings_rec, f"the runs in {out} were")
    methods = sorted({v[2] for v in VARIANTS if v[2]})
    priors = extract_priors(inputs["vq"], out / "priors", args.k, methods, progress=not args.no_progress)
    seeds = list(range(b["seeds"]))
    missing: list[str] = []
    if not args.report_only:
        settings = SampleSettings(
            cfg_scale=args.cfg_scale,
            temperature=args.temperature,
            seed=0,
            refine_temperature=args.refine_temperature,
            refine_mode="sample",
        )
        spec = fid_spec(inputs, settings, b["fid_samples"], args.sample_batch, device, manifest["grid"])
        for seed in (
            args.only_seeds if args.only_seeds is not None else seeds
        ):  # seed-major: a partial benchmark is still a full comparison at fewer seeds
            for name, objective, prior in variants:
                run_variant(args, b, inputs, priors, spec, name, objective, prior, seed)
    results = collect(out, [v[0] for v in VARIANTS])
    for name, _, _ in VARIANTS:
        have = {r["seed"] for r in results[name]}
        missing += [f"{name}/seed{s}" for s in seeds if s not in have]
    summary = summarize(results)
    fe = inputs.get("feature_extractor") or {}
    if not fe and inputs.get("classifier"):
        from codeprior.evaluate.classifier import load_classifier

        fe = load_classifier(inputs["classifier"]).describe()
    tm = inputs.get("tokenizer_metrics") or {}
    tok_desc = (
        f"Tokenizer: VQ-fmnist trained {tm.get('steps')} steps here (test PSNR {tm.get('test_psnr', float('nan')):.1f} dB, "
        f"codebook usage {tm.get('test_codebook_usage', float('nan')):.2f}); the tokenizer's reconstructions "
        "bound every variant's FID the same way."
        if tm.get("steps")
        else ""
    )
    n_train = len(CodeShards(inputs["codes"], "train", aug=0))
    cmd = "python benchmarks/convergence.py " + " ".join(
        canonical_args(list(argv) if argv is not None else sys.argv[1:])
    )
    run_seconds = sum(r.get("seconds_this_invocation", 0.0) for rs in results.values() for r in rs)
    run_seconds += sum(
        json.loads(p.read_text()).get("seconds", 0.0) for p in (out / "refine").glob("*/seed*/result.json")
    )
    starts = [p.stat().st_mtime for p in out.glob("*/*/seed*/train/config.json")]
    ends = [p.stat().st_mtime for p in out.glob("*/*/seed*/result.json")]
    elapsed = (max(ends) - min(starts)) / 60 if starts and ends else 0.0
    meta = {
        "command": cmd.strip(),
        "budget_name": args.budget,
        "budget": b,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "run_minutes": run_seconds / 60,
        "elapsed_minutes": elapsed,
        "note": args.note,
        "k": args.k,
        "num_codes": num_codes,
        "seeds_run": sorted({r["seed"] for rs in results.values() for r in rs}),
        "codes_desc": f"{manifest.get('dataset', 'dataset')} code shards ({n_train} training images, "
        f"{'x'.join(str(g) for g in manifest['grid'])} codes, codebook {num_codes})",
        "feature_extractor": fe,
        "num_reference": None,
        "cfg_scale": args.cfg_scale,
        "temperature": args.temperature,
        "refine_temperature": args.refine_temperature,
        "tokenizer_desc": tok_desc,
        "missing": missing,
        "plot_name": "convergence.png",
    }
    from codeprior.utils.io import load_checkpoint

    meta["num_reference"] = int(len(load_checkpoint(inputs["reference_features"])["features"]))
    payload = {"meta": meta, "priors": priors, "summary": summary, "runs": results}
    write_json_atomic(out / "summary.json", payload)
    if not args.no_doc:
        plot(
            summary,
            ROOT / "docs" / "img" / "convergence.png",
            f"{b['model']}, {b['steps']} steps, batch {b['batch']}, k={args.k}; mean ± std over seeds",
        )
        write_result("convergence", {k: v for k, v in payload.items() if k != "runs"})
        update_doc_section("convergence", markdown(summary, meta))
    print_table(summary)
    return 0


if __name__ == "__main__":
    from codeprior.errors import CodepriorError

    try:
        sys.exit(main())
    except CodepriorError as e:
        print(f"convergence: error: {e}", file=sys.stderr)
        sys.exit(2)
