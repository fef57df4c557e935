"""The codeprior stages of a config (:func:`build_stages`) and the run itself (:func:`run_pipeline`)."""

from __future__ import annotations

import json
import os
import platform
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from codeprior import __version__, runtime
from codeprior.decoding import ACCEPT_RULES, DecoderSettings
from codeprior.errors import CodepriorError
from codeprior.evaluate_settings import SPLIT_REFERENCES
from codeprior.pipeline.config import IDX_DATASETS, PRIOR_METHODS, PipelineConfig, VariantConfig, fingerprint_dict
from codeprior.pipeline.engine import Stage, StageContext, StageResult, plan_run, run_stages
from codeprior.pipeline.stages import (
    classifier,
    data,
    evaluate,
    priors,
    report,
    sample,
    substitution,
    tokenize,
    tokenizer,
    tokenizer_eval,
    train,
)
from codeprior.pipeline.validation import check_values
from codeprior.train.objective_traits import TRAITS
from codeprior.utils.io import sha256_file

__all__ = ["environment", "outputs_of", "build_stages", "run_inputs", "run_pipeline"]


def environment(device: str) -> dict[str, Any]:
    """Python/torch versions, CPU cores and the device, recorded in every manifest (and shown in the report)."""
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "codeprior": __version__,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "platform": platform.platform(terse=True),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _classifier_inputs(cfg: PipelineConfig) -> dict[str, str]:
    """Hashes of the classifier / Inception weights a config gives (the classifier stage's external inputs)."""
    given = (("checkpoint", cfg.classifier.checkpoint), ("inception", cfg.classifier.inception_weights))
    return {k: sha256_file(v) for k, v in given if v}


def outputs_of(files: type, *extra: str) -> tuple[str, ...]:
    """The top-level names a stage writes in its folder: the first component of each name in its ``FILES`` class
    (``run/model.pt`` -> ``run``), and ``extra`` patterns (``*.safetensors``). What a redo of the stage may remove."""
    names = [v for k, v in vars(files).items() if not k.startswith("_") and isinstance(v, str)]
    return tuple(dict.fromkeys([Path(n).parts[0] for n in names] + list(extra)))


OUTPUTS = {
    "data": outputs_of(data.FILES),
    "tokenizer": outputs_of(tokenizer.FILES),
    "priors": outputs_of(priors.FILES, *(priors.FILES.prior(m) for m in PRIOR_METHODS)),
    "tokenize": outputs_of(tokenize.FILES),
    "train": outputs_of(train.FILES),
    "classifier": outputs_of(classifier.FILES),
    "tokenizer-eval": outputs_of(tokenizer_eval.FILES),
    "substitution": outputs_of(substitution.FILES),
    "sample": outputs_of(sample.FILES),
    "evaluate": outputs_of(evaluate.FILES),
    "report": ("*.png",),  # the report's figures (RUN/report/ is the stage's folder)
}
#: what the report stage writes in the run folder itself
REPORT_RUN_OUTPUTS = (report.FILES.html, report.FILES.markdown, report.FILES.results_md, report.FILES.results_json)


def _run_relative(obj: Any, run_dir: Path | None) -> Any:
    """A config slice with every absolute path inside ``run_dir`` written as ``$RUN/<relative>``: an input kept in
    the run folder leaves the fingerprints unchanged when the folder moves (paths elsewhere are as they were)."""
    if run_dir is None:
        return obj
    if isinstance(obj, dict):
        return {k: _run_relative(v, run_dir) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_run_relative(v, run_dir) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj):
        try:
            return "$RUN/" + Path(obj).relative_to(run_dir).as_posix()
        except ValueError:
            return obj
    return obj


def build_stages(cfg: PipelineConfig, device: str, run_dir: str | os.PathLike | None = None) -> list[Stage]:
    """The stages of a config, in order, each with its config slice (what its fingerprint hashes), deps and the
    names it writes (``Stage.outputs``); paths inside ``run_dir`` enter the slices relative to it."""
    # the slices come from fingerprint_dict: renamed keys hash under their old names (finished stages stay valid)
    c = _run_relative(fingerprint_dict(cfg), Path(run_dir).resolve() if run_dir is not None else None)
    seed = {"seed": cfg.seed}
    tokenizer_checkpoint = cfg.tokenizer.checkpoint
    stages: list[Stage] = [
        Stage(
            "data",
            lambda ctx: data.run(cfg, ctx),
            (),
            c["data"],
            inputs=lambda: data.dataset_fingerprint(cfg.data),
            description="check the dataset, record sizes and hash",
            outputs=OUTPUTS["data"],
        ),
        Stage(
            "tokenizer",
            lambda ctx: tokenizer.run(cfg, ctx, device),
            ("data",),
            {**c["tokenizer"], **seed},
            inputs=(lambda: {"checkpoint": sha256_file(tokenizer_checkpoint)}) if tokenizer_checkpoint else None,
            description="reuse the given VQ checkpoint" if tokenizer_checkpoint else "train the VQ tokenizer",
            outputs=OUTPUTS["tokenizer"],
        ),
        Stage(
            "priors",
            lambda ctx: priors.run(cfg, ctx),
            ("tokenizer",),
            {**c["priors"], **seed},
            description=f"extract {', '.join(cfg.priors.methods)} priors (same k) and their quality",
            outputs=outputs_of(priors.FILES, *(priors.FILES.prior(m) for m in PRIOR_METHODS)),  # methods as now
        ),
        Stage(
            "tokenize",
            lambda ctx: tokenize.run(cfg, ctx, device),
            ("data", "tokenizer"),
            c["tokenize"],
            description="pre-tokenise train and test splits into code shards",
            outputs=OUTPUTS["tokenize"],
        ),
    ]
    # Order = scheduling priority under jobs > 1 (ready stages start in list order): the AR trainings need only the
    # codes and the prior, so they come first; the classifier and the refine models train beside them.
    for v, run_name, tseed in train.variant_runs(cfg):
        prior = v.prior if TRAITS[v.objective].needs_prior else train.metric_prior(cfg)

        def run_train(ctx: StageContext, v: VariantConfig = v, prior: str | None = prior, tseed: int = tseed) -> Any:
            return train.run(
                cfg,
                ctx,
                device,
                objective=v.objective,
                prior=prior,
                lam=v.lam,
                seed=tseed,
                settings=v.trainer_settings(),
            )

        stages.append(
            Stage(
                f"train-{run_name}",
                run_train,
                ("data", "tokenizer", "tokenize", "priors"),
                {"variant": v.model_dump(), "train": train.shared_train(c), "metric_prior": prior, "seed": tseed},
                description=f"train {cfg.train.model}, objective {v.objective}"
                + (f" with {v.prior}" if v.prior else "")
                + (f", seed {tseed}" if cfg.train.seeds > 1 else ""),
                outputs=OUTPUTS["train"],
            )
        )
    stages.append(
        Stage(
            "classifier",
            lambda ctx: classifier.run(cfg, ctx, device),
            ("data",),
            {**c["classifier"], **seed},
            inputs=lambda: _classifier_inputs(cfg),
            description="feature extractor for FID/KID/IS/PRDC (in-project classifier)",
            outputs=OUTPUTS["classifier"],
        )
    )
    refine_of: dict[str, str] = {}
    for prior in train.coarse_priors(cfg):
        name = train.refine_stage_name(cfg, prior)
        refine_of[prior] = name

        def run_refine(ctx: StageContext, prior: str = prior) -> Any:
            return train.run(cfg, ctx, device, objective="refine", prior=prior)

        stages.append(
            Stage(
                name,
                run_refine,
                ("tokenize", "priors"),
                {"refine": c["refine"], "prior": prior, "train": train.shared_train(c), **seed},
                description=f"refine model (fine codes from {prior} clusters)",
                outputs=OUTPUTS["train"],
            )
        )
    stages.append(
        Stage(
            "tokenizer-eval",
            lambda ctx: tokenizer_eval.run(cfg, ctx, device),
            ("data", "tokenizer", "classifier"),
            {"eval_images": cfg.tokenizer.num_images},  # hashed under its old name: finished runs stay finished
            description="tokenizer round trip: rFID, PSNR, classifier accuracy on reconstructions",
            outputs=OUTPUTS["tokenizer-eval"],
        )
    )
    if cfg.substitution.enabled:
        stages.append(
            Stage(
                "substitution",
                lambda ctx: substitution.run(cfg, ctx, device),
                ("data", "tokenizer", "priors", "classifier"),
                {**c["substitution"], **seed},
                description="prior substitution test (random cluster member per code)",
                outputs=OUTPUTS["substitution"],
            )
        )
    # plain AR leaves the decoder out of the fingerprint, so runs made before it existed keep theirs
    dec = DecoderSettings.coerce(cfg.sample.decoder)
    sample_slice = {k: v for k, v in c["sample"].items() if k != "decoder" or dec.speculative}
    uses_prior = dec.speculative and ACCEPT_RULES[dec.accept].needs_prior
    for v, run_name, _ in train.variant_runs(cfg):
        rs = refine_of.get(v.prior) if TRAITS[v.objective].needs_refine and v.prior is not None else None

        def run_sample(ctx: StageContext, v: VariantConfig = v, rs: str | None = rs, run_name: str = run_name) -> Any:
            return sample.run(cfg, ctx, device, v, rs, run_name)

        stages.append(
            Stage(
                f"sample-{run_name}",
                run_sample,
                ("tokenizer", "tokenize", "classifier", f"train-{run_name}")
                + ((rs,) if rs else ())
                + (("priors",) if uses_prior else ()),
                {**sample_slice, "eval_samples": cfg.train.eval_samples, **seed},
                description="per-class grid and .npz of samples; FID vs step over the training's snapshots",
                outputs=OUTPUTS["sample"],
            )
        )
    stages.append(
        Stage(
            "evaluate",
            lambda ctx: evaluate.run(cfg, ctx, device),
            ("data", "classifier") + tuple(f"sample-{r}" for _, r, _ in train.variant_runs(cfg)),
            {**c["evaluate"], "variants": [v.model_dump() for v in cfg.train.variants], **seed}
            | ({"seeds": cfg.train.seeds} if cfg.train.seeds > 1 else {}),
            description="metrics of every variant on classifier features",
            outputs=OUTPUTS["evaluate"],
        )
    )
    stages.append(
        Stage(
            "report",
            lambda ctx: report.run(cfg, ctx),
            tuple(s.name for s in stages),
            {"name": cfg.name},
            description="report.html and report.md",
            outputs=OUTPUTS["report"],
            run_outputs=REPORT_RUN_OUTPUTS,
        )
    )
    return stages


def _check_overrides(
    cfg: PipelineConfig, src: str, names: list[str], force: typing.Sequence[str], until: str | None
) -> None:
    for f in list(force) + ([until] if until else []):
        if f not in names:
            raise CodepriorError(f"no such stage: {f} (stages: {', '.join(names)})")
    for name in cfg.stage_threads:
        if name not in names:
            raise CodepriorError(f"{src}: stage_threads: no such stage {name!r} (stages: {', '.join(names)})")


def run_inputs(cfg: PipelineConfig, config_file: str | os.PathLike | None = None) -> dict[str, str]:
    """The files and folders a run reads (what -> path): never deleted, and refused where a stage would rewrite
    them (:func:`codeprior.pipeline.engine.check_run_folder`)."""
    given = {
        "the config file": config_file,
        "data.data_dir": cfg.data.data_dir,
        "data.dataset": cfg.data.dataset if cfg.data.dataset not in IDX_DATASETS else None,
        "tokenizer.checkpoint": cfg.tokenizer.checkpoint,
        "classifier.checkpoint": cfg.classifier.checkpoint,
        "classifier.inception_weights": cfg.classifier.inception_weights,
        "evaluate.reference": cfg.evaluate.reference if cfg.evaluate.reference not in SPLIT_REFERENCES else None,
    }
    return {k: str(v) for k, v in given.items() if v}


def run_pipeline(
    cfg: PipelineConfig,
    out: str | os.PathLike,
    *,
    force: typing.Sequence[str] = (),
    until: str | None = None,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    config_file: str | os.PathLike | None = None,
) -> list[StageResult]:
    """Run (or with ``dry_run`` only plan) every stage of ``cfg`` in ``out``; print the report path and metrics.

    ``--dry-run`` and a run share every check before the first stage: the config's values (again, after the
    command line's overrides), the stage names, and the run folder (foreign files, inputs inside it: ``config_file``
    is one of them).
    """
    src = str(config_file) if config_file is not None else "<config>"
    check_values(cfg, src)  # the command line may have overridden threads / jobs since the config was loaded
    if cfg.threads == 0:  # 0 = torch's default, as every command's --threads: the same as leaving it unset
        cfg.threads = None
    dev = runtime.resolve_device(cfg.device, where="device")  # checked here; recorded as the config names it,
    device = dev.type if cfg.device == "auto" else str(dev)  # so `auto` -> `cuda` lets each rank pick its GPU
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    stages = build_stages(cfg, device, out)
    _check_overrides(cfg, src, [s.name for s in stages], force, until)
    for s in stages:
        s.threads = cfg.stage_threads.get(s.name)
    out = Path(out)
    inputs = run_inputs(cfg, config_file)
    plan = plan_run(stages, out, force, until, inputs)
    if dry_run:
        for name, action in plan:
            log(f"{action:>6}  {name}")
        return []
    env = environment(device)
    log(
        f"codeprior pipeline '{cfg.name}' -> {out} ({len(stages)} stages; device {device}, "
        f"{env['cpu_cores']} cores, torch {env['torch']})"
    )
    jobs = cfg.jobs if device == "cpu" else 1  # forked stage processes cannot share a CUDA context
    if jobs != cfg.jobs:
        log(f"jobs: {cfg.jobs} -> 1 on {device} (parallel stages are for the CPU)")
    results = run_stages(
        stages,
        out,
        force=force,
        until=until,
        config=cfg,
        log=log,
        environment=env,
        jobs=jobs,
        threads=cfg.threads,
        inputs=inputs,
    )
    if any(r.name == "report" for r in results):
        # imported here: codeprior.report imports codeprior.pipeline (the stages' records), a cycle at import time
        from codeprior.report import metrics_table_text

        log("")
        log(metrics_table_text(out))
        if (out / report.FILES.results_md).is_file():  # the report stage wrote the table and the verdict
            log("")
            log((out / report.FILES.results_md).read_text())
        log(f"\nreport: {(out / report.FILES.html).resolve()}\n        {(out / report.FILES.markdown).resolve()}")
    return results


def _main(argv: list[str]) -> int:
    """``python -m codeprior.pipeline train-worker SPEC.json``: the entry point torchrun launches on every rank."""
    if len(argv) != 2 or argv[0] != "train-worker":
        print("usage: python -m codeprior.pipeline train-worker SPEC.json", file=sys.stderr)
        return 2
    try:
        train.train_worker(json.loads(Path(argv[1]).read_text()))
    except CodepriorError as e:
        print(f"codeprior: error: {e}", file=sys.stderr)
        return 2
    return 0
