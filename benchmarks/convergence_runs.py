"""The run-side pieces of benchmarks/convergence.py, shared with prior_study.py, study_geometry.py and
speculative.py: the inputs (a pipeline run's tokenizer, codes and classifier, or a subset of them), the priors, the
pipeline's FID hook and the resumable training runs (``result.json`` when finished)."""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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
                "num_images": min(2000, b["test_images"] or 10000),
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
    from codeprior.pipeline import read_stage_manifest, run_pipeline

    run_dir = run_dir.resolve()

    def done(stage: str) -> dict | None:
        m = read_stage_manifest(run_dir / stage)
        return m if m and m.get("status") == "done" else None

    if not all(done(s) for s in ("tokenizer", "tokenize", "classifier")):
        data_dir = None
        if b["train_images"] or b["test_images"]:
            data_dir = make_subset(run_dir / "data-subset", "fashion-mnist", b["train_images"], b["test_images"])
        log(f"convergence: producing tokenizer, codes and classifier in {run_dir} (pipeline stages up to classifier)")
        for stage in ("tokenize", "classifier"):  # each with only the stages it needs (no GPT training)
            run_pipeline(base_config(b, data_dir, device, 0), run_dir, until=stage, log=log)
    tok, codes, cls = done("tokenizer"), done("tokenize"), done("classifier")
    if not (tok and codes and cls):
        raise CodepriorError(f"{run_dir}: pipeline stages tokenizer / tokenize / classifier did not finish")
    cm = cls["metrics"]
    data_cfg = (done("data") or {}).get("config") or {}

    def path(v: str | None) -> str | None:  # records store paths inside the run folder relative to it
        return str(run_dir / v) if v and not Path(v).is_absolute() else v

    return {
        "vq": path(tok["metrics"]["checkpoint"]),
        "vq_config": (tok.get("config") or {}).get("model") if (tok.get("config") or {}).get("checkpoint") else None,
        "codes": path(codes["metrics"]["codes"]),
        "classifier": path(cm.get("checkpoint")),
        "reference_features": path(cm["reference_features"]),
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
    from codeprior.priors.extract import extract
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
        "nearest_k": 5,
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
    settings: dict[str, Any] | None = None,
) -> Any:
    """The trainer's config of one benchmark run: the trainer's defaults (codeprior.train.config) plus the settings
    this benchmark changes (from_dict: a misspelt key is an error); ``settings``: the objective's own (snce_k, ...)."""
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
            **(settings or {}),
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
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One (variant, seed) training run with the FID hook of ``spec`` (:func:`fid_spec`); ``result.json`` when
    finished (reused on rerun). ``settings``: the objective's own trainer settings (recorded in the result)."""
    from codeprior.train.trainer import find_latest_checkpoint, train
    from codeprior.utils.io import write_json_atomic

    d = Path(args.out) / "runs" / name / f"seed{seed}"
    if (d / "result.json").is_file():
        return json.loads((d / "result.json").read_text())
    refine = str(run_refine(args, b, inputs, priors, prior, seed, log)) if objective == "coarse" and prior else None
    prior_path = priors[prior]["path"] if prior else None
    cfg = _train_config(args, b, inputs, d / "train", objective, prior_path, seed, settings=settings)
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
        "settings": settings or {},
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
