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

    python -m benchmarks.convergence                      # default budget (3 seeds; ~3 h on 2 idle CPU cores)
    python -m benchmarks.convergence --budget quick       # 2 seeds, 240 steps (~40 min on 2 cores)
    python -m benchmarks.convergence --model GPT-B --steps 20000 --device cuda --codes DIR --vq VQ.pt ...

The command line and the budgets are here; the inputs, priors, FID hook and training runs in
``convergence_runs.py`` (shared with the other training benchmarks), the summary, plot and doc section in
``convergence_summary.py``. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, SMOKE_HELP, machine, smoke_dir, start_smoke, update_doc_section, write_result
from benchmarks.convergence_runs import check_settings, extract_priors, fid_spec, prepare_base, run_variant
from benchmarks.convergence_summary import collect, markdown, plot, print_table, summarize

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


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.convergence",
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
    g3.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; a 5-step tokenizer on random images")
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
        from codeprior.pipeline import read_stage_manifest

        demo = ROOT / "runs" / "demo"
        ok = all(
            (read_stage_manifest(demo / s) or {}).get("status") == "done"
            for s in ("tokenizer", "tokenize", "classifier")
        )
        run_dir = demo if ok else ROOT / "runs" / "convergence" / f"base-{args.budget}"
    return prepare_base(Path(run_dir), b, device)


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from codeprior.errors import CodepriorError
    from codeprior.utils.io import write_json_atomic

    args = parse_args(argv)
    if args.smoke:  # a variant per paradigm, 1 seed, 2 steps of batch 8, k = 8, FID of 20 samples, on a tiny run
        from benchmarks._smoke import tiny_run

        tmp = start_smoke()
        args.run_dir, args.out, args.budget = (
            str(tiny_run(tmp, until=("tokenize", "classifier"))),
            str(tmp / "out"),
            "quick",
        )
        args.seeds, args.steps, args.batch, args.eval_every, args.refine_steps, args.k = 1, 2, 8, 2, 2, 8
        args.fid_samples, args.sample_batch, args.threads, args.device, args.no_progress = 20, 20, 1, "cpu", True
        args.report_only, args.variants = False, ["token", "cluster-ce-dcpe", "coarse-dcpe"]  # one per paradigm
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
            coarse_temperature=args.temperature,  # this benchmark's --temperature is every GPT's, coarse too
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
    cmd = "python -m benchmarks.convergence " + " ".join(
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
            (smoke_dir() or ROOT / "docs") / "img" / "convergence.png",
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
