"""Stages ``train-<run>`` (one AR run per variant and seed) and ``train-refine[-<prior>]`` (the refine models).

Each runs the trainer in ``RUN/<stage>/run/`` (in-process, or under ``torchrun`` on every rank); GPT runs keep weight
snapshots every ``train.eval_every`` steps for the FID-vs-step curve their sample stage measures
(:mod:`codeprior.curves`).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codeprior.curves import snapshot_fn
from codeprior.errors import CodepriorError
from codeprior.pipeline.config import PipelineConfig, TorchrunConfig, VariantConfig
from codeprior.pipeline.engine import StageContext
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.registry import Build, StageDef, outputs_of
from codeprior.pipeline.stages.priors import PriorsOutputs
from codeprior.pipeline.stages.tokenize import TokenizeOutputs
from codeprior.report import FEATURE_NOTE, Doc, ReportSection, fmt, read_json
from codeprior.report_figures import plot_curves
from codeprior.train.objective_traits import TRAITS
from codeprior.train.trainer import TrainConfig as TrainerConfig
from codeprior.train.trainer import train
from codeprior.utils.io import load_checkpoint, write_json_atomic

__all__ = [
    "FILES",
    "TrainOutputs",
    "run",
    "variant_runs",
    "refine_stage_name",
    "metric_prior",
    "coarse_priors",
    "shared_train",
    "train_config_dict",
    "read_curves",
    "torchrun_command",
    "train_worker",
]


class FILES:
    """What the stage writes in ``RUN/<stage>/`` (``run/`` is the trainer's own run folder)."""

    run = "run"
    spec = "train_spec.json"  # the trainer settings (what torchrun's workers read)
    curves = "curves.json"  # {"train": {column: [...]}, "eval": {key: [...]}}
    model = "run/model.pt"
    summary = "run/summary.json"
    metrics_csv = "run/metrics.csv"
    eval_jsonl = "run/eval.jsonl"


@dataclass(frozen=True)
class TrainOutputs(StageOutputs):
    """A finished training run: its final model and last logged numbers."""

    objective: str
    prior: str | None  # the prior the objective uses (None for token)
    cluster_acc_prior: str | None  # the prior cluster accuracy is logged with (every run, so runs compare)
    model: str
    checkpoint: Path
    steps: int | None
    final_loss: float | None
    final_token_acc: float | None
    final_cluster_acc: float | None
    val_loss: float | None
    tokens_per_s: float | None
    params: int
    world_size: int | None
    seed: int


def metric_prior(cfg: PipelineConfig) -> str:
    """The prior used to log cluster accuracy for every run (so runs compare): the first variant's prior."""
    for v in cfg.train.variants:
        if v.prior:
            return v.prior
    return cfg.priors.methods[0]


def coarse_priors(cfg: PipelineConfig) -> list[str]:
    """The priors of the coarse variants, in order (each needs a refine model)."""
    out: list[str] = []
    for v in cfg.train.variants:
        if TRAITS[v.objective].needs_refine and v.prior not in out:
            assert v.prior is not None  # validate_config: variants whose objective needs a prior name it
            out.append(v.prior)
    return out


def variant_runs(cfg: PipelineConfig) -> list[tuple[VariantConfig, str, int]]:
    """``(variant, run name, training seed)`` of every AR run: ``<name>`` for the first seed, ``<name>-seedK`` after."""
    return [
        (v, v.name if k == 0 else f"{v.name}-seed{k}", cfg.seed + k)
        for v in cfg.train.variants
        for k in range(cfg.train.seeds)
    ]


def refine_stage_name(cfg: PipelineConfig, prior: str) -> str:
    """``train-refine`` when one prior needs a refine model, else ``train-refine-<prior>``."""
    return "train-refine" if len(coarse_priors(cfg)) == 1 else f"train-refine-{prior}"


def shared_train(c: dict) -> dict:
    """The training settings every run shares (the torchrun launch settings do not change the result)."""
    return {k: v for k, v in c["train"].items() if k not in ("variants", "torchrun", "keep_ckpts")}


def train_config_dict(
    cfg: PipelineConfig,
    ctx: StageContext,
    device: str,
    *,
    objective: str,
    model: str,
    prior_file: str | None,
    lam: float,
    steps: int,
    batch: int,
    lr: float,
    seed: int | None = None,
) -> dict:
    """The trainer settings (:class:`codeprior.train.trainer.TrainConfig` fields) of one run of the pipeline."""
    t, traits = cfg.train, TRAITS[objective]
    codes = TokenizeOutputs.from_manifest(ctx.upstream["tokenize"])
    return {
        "codes": str(codes.codes),
        "val_split": codes.val_split,
        "out": str(ctx.dir / FILES.run),
        "model": model,
        "objective": objective,
        "prior": prior_file,
        "lam": lam,
        "global_batch": batch,
        "grad_accum": t.grad_accum,
        "max_steps": steps,
        "lr": lr,
        "weight_decay": t.weight_decay,
        "schedule": "cosine",
        "warmup_steps": min(t.warmup_steps, max(0, steps - 1)),
        "ema": t.ema if traits.ema else 0.0,
        "dropout": t.dropout,
        "device": device,
        "precision": t.precision,
        "compile": t.compile,
        "loss_chunk": t.loss_chunk if traits.loss_chunk else 0,
        "fsdp": t.fsdp,
        "seed": cfg.seed if seed is None else seed,
        "log_every": max(1, min(100, steps // 200)),
        "val_every": 0,
        "val_batches": t.val_batches,
        "eval_every": t.eval_every if traits.eval_samples else 0,
        "ckpt_every": min(t.ckpt_every, steps),
        "keep_ckpts": t.keep_ckpts,
        "tensorboard": True,
        "resume": "auto" if ctx.resume else None,
        "overwrite": True,
        "progress": True,
    }


TRAIN_COLUMNS = (
    "step",
    "loss",
    "token_loss",
    "cluster_loss",
    "token_acc",
    "cluster_acc",
    "lr",
    "tokens_per_s",
    "val_loss",
    "val_token_acc",
    "val_cluster_acc",
)


def read_curves(run: Path) -> dict:
    """``metrics.csv`` + ``eval.jsonl`` of a trainer run -> ``{"train": {col: [...]}, "eval": {key: [...]}}``."""
    train_: dict[str, list] = {}
    csv_path = run / Path(FILES.metrics_csv).name
    if csv_path.is_file():
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        for c in TRAIN_COLUMNS:
            vals = [float(r[c]) if r.get(c) not in (None, "") else None for r in rows]
            if any(v is not None for v in vals):
                train_[c] = vals
    ev: dict[str, list] = {}
    jl = run / Path(FILES.eval_jsonl).name
    if jl.is_file():
        by_step: dict[int, dict] = {}  # a resumed run may evaluate a step twice: keep the latest record
        for line in jl.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                by_step[int(rec["step"])] = rec
        recs = [by_step[k] for k in sorted(by_step)]
        keys = sorted({k for r in recs for k, v in r.items() if isinstance(v, (int, float))})
        ev = {k: [r.get(k) for r in recs] for k in keys}
    return {"train": train_, "eval": ev}


def run(
    cfg: PipelineConfig,
    ctx: StageContext,
    device: str,
    *,
    objective: str,
    prior: str | None,
    lam: float = 1.0,
    seed: int | None = None,
    settings: dict[str, Any] | None = None,
) -> TrainOutputs:
    """One trainer run (GPT variant or, with ``objective="refine"``, the refine model) in ``ctx.dir/run``.

    ``seed`` is the training seed (default: the run's); ``settings``: the variant's objective settings
    (:meth:`~codeprior.pipeline.config.VariantConfig.trainer_settings`).
    """
    traits = TRAITS[objective]
    is_refine = traits.model_kind == "refine"
    r = cfg.refine
    prior_file = str(PriorsOutputs.from_manifest(ctx.upstream["priors"]).files[prior]) if prior else None
    tc = train_config_dict(
        cfg,
        ctx,
        device,
        objective=objective,
        model=r.model if is_refine else cfg.train.model,
        prior_file=prior_file,
        lam=lam,
        steps=r.max_steps if is_refine else cfg.train.max_steps,
        batch=r.global_batch if is_refine else cfg.train.global_batch,
        lr=r.lr if is_refine else cfg.train.lr,
        seed=cfg.seed if seed is None else seed,
    )
    if is_refine:
        tc["model_overrides"] = {"causal": r.causal, "restrict": r.restrict}
    tc.update(settings or {})
    spec = {"train": tc, "snapshots": traits.eval_samples and cfg.train.eval_samples > 0}
    write_json_atomic(ctx.dir / FILES.spec, spec)
    tr = cfg.train.torchrun
    if tr is not None and (tr.nproc_per_node > 1 or tr.nnodes > 1):
        cmd = torchrun_command(tr, ctx.dir / FILES.spec)
        ctx.log(f"[{ctx.name}] launching: {' '.join(cmd)}")
        rc = subprocess.call(cmd)
        if rc != 0:
            raise CodepriorError(f"{ctx.name}: torchrun exited with code {rc} (see the output above)")
        summary = json.loads((ctx.dir / FILES.summary).read_text())
    else:
        summary = train_worker(spec)
    if not summary.get("finished", False):
        raise CodepriorError(
            f"{ctx.name}: training stopped at step {summary.get('step')} of {summary.get('total_steps')}"
        )
    write_json_atomic(ctx.dir / FILES.curves, read_curves(ctx.dir / FILES.run))
    sd = load_checkpoint(ctx.dir / FILES.model)["model"]
    params = int(sum(v.numel() for k, v in sd.items() if hasattr(v, "numel") and "token_to_cluster" not in k))
    return TrainOutputs(
        objective=objective,
        prior=prior if traits.needs_prior else None,
        cluster_acc_prior=prior,
        model=tc["model"],
        checkpoint=(ctx.dir / FILES.model).resolve(),
        steps=summary.get("step"),
        final_loss=summary.get("loss"),
        final_token_acc=summary.get("token_acc"),
        final_cluster_acc=summary.get("cluster_acc"),
        val_loss=summary.get("val_loss"),
        tokens_per_s=summary.get("tokens_per_s"),
        params=params,
        world_size=summary.get("world_size"),
        seed=tc["seed"],
    )


def torchrun_command(tr: TorchrunConfig, spec_path: str | os.PathLike) -> list[str]:
    """The ``torchrun`` command running :func:`train_worker` on ``spec_path`` (``python -m codeprior.pipeline``)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={tr.nproc_per_node}",
        f"--nnodes={tr.nnodes}",
    ]
    if tr.nnodes > 1:
        cmd += [f"--node_rank={tr.node_rank}", f"--master_addr={tr.master_addr}", f"--master_port={tr.master_port}"]
    else:
        cmd += ["--standalone"]
    return cmd + ["-m", "codeprior.pipeline", "train-worker", str(spec_path)]


def train_worker(spec: dict[str, Any]) -> dict:
    """Run the trainer from a spec (in-process, or on every rank under torchrun); rank 0 keeps the snapshots."""
    tc = TrainerConfig.from_dict(spec["train"])
    eval_fn = None
    if spec.get("snapshots") and int(os.environ.get("RANK", "0")) == 0:
        eval_fn = snapshot_fn(tc.out)
    return train(tc, eval_fn=eval_fn)


Run = tuple[VariantConfig, str, int]  # variant, run name, training seed (variant_runs)


def _variant_prior(cfg: PipelineConfig, v: VariantConfig) -> str:
    """The prior a run trains with (its objective's), else the one its cluster accuracy is logged with."""
    if TRAITS[v.objective].needs_prior:
        assert v.prior is not None  # validate_config: variants whose objective needs a prior name it
        return v.prior
    return metric_prior(cfg)


def _run_variant(b: Build, ctx: StageContext, r: Run) -> TrainOutputs:
    v, _, tseed = r
    prior = _variant_prior(b.cfg, v)
    return run(
        b.cfg, ctx, b.device, objective=v.objective, prior=prior, lam=v.lam, seed=tseed, settings=v.trainer_settings()
    )


def _variant_config(b: Build, r: Run) -> dict:
    v, _, tseed = r
    return {
        "variant": v.model_dump(),
        "train": shared_train(b.slices),
        "metric_prior": _variant_prior(b.cfg, v),
        "seed": tseed,
    }


def _variant_description(b: Build, r: Run) -> str:
    v, _, tseed = r
    cfg = b.cfg
    return (
        f"train {cfg.train.model}, objective {v.objective}"
        + (f" with {v.prior}" if v.prior else "")
        + (f", seed {tseed}" if cfg.train.seeds > 1 else "")
    )


def report_training(doc: Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    """The report's training section: every train stage's final numbers and curves."""
    names = [n for n in manifests if n.startswith("train-")]
    if not doc.section("Training curves", "training", names, missing="No training stage run."):
        return
    curves = {}
    for n in names:
        c = read_json(run_dir / n / FILES.curves)
        if isinstance(c, dict):
            curves[n[len("train-") :]] = c
    rows = []
    for n in names:
        t = TrainOutputs.from_manifest(manifests[n])
        cfg = manifests[n].get("config", {}) or {}
        objective = t.objective if t.objective is not None else cfg.get("objective", "")
        prior = t.prior if t.prior is not None else cfg.get("prior", "")
        rows.append(
            [
                n[len("train-") :],
                str(objective),
                str(prior or "–"),
                t.steps,
                t.final_loss,
                t.final_token_acc,
                t.final_cluster_acc,
                t.params,
                fmt(manifests[n].get("seconds"), "{:.1f}"),
            ]
        )
    doc.table(
        ["run", "objective", "prior", "steps", "final loss", "token acc", "cluster acc", "parameters", "seconds"], rows
    )
    doc.p(
        "Loss is each run's own objective (the coarse run's is over cluster ids, so its scale differs); token "
        "accuracy is next-code accuracy (for the coarse run: after its refine model, where logged), cluster accuracy "
        "is whether the predicted code falls in the target's cluster and is logged for every objective so runs "
        "compare. FID vs step is the first figure of the report. " + FEATURE_NOTE
    )
    figs = [
        ("loss", "train", "training loss", "loss.png", None),
        ("cluster_acc", "train", "accuracy (training batch)", "accuracy.png", ("token_acc", "token accuracy")),
    ]
    for key, section, ylabel, fname, extra in figs:
        p = plot_curves(curves, key, section, ylabel, doc.fig_dir / fname, extra, primary="cluster accuracy")
        if p is not None:
            doc.image(p, f"{ylabel} vs step, every run")
        else:
            doc.p(f"({ylabel}: no data logged)")


#: one AR run per variant and seed; the trainings need only the codes and the prior, so they come before the
#: classifier (the order is the scheduling priority under jobs > 1)
STAGE = StageDef(
    "train",
    run=_run_variant,
    config=_variant_config,
    deps=("data", "tokenizer", "tokenize", "priors"),
    instances=lambda cfg: [(f"train-{r[1]}", r) for r in variant_runs(cfg)],
    description=_variant_description,
    outputs=outputs_of(FILES),
    report=(ReportSection(70, report_training),),
)

#: one refine model per prior of the coarse variants (it trains beside the classifier)
REFINE_STAGE = StageDef(
    "train-refine",
    run=lambda b, ctx, prior: run(b.cfg, ctx, b.device, objective="refine", prior=prior),
    config=lambda b, prior: {"refine": b.slices["refine"], "prior": prior, "train": shared_train(b.slices), **b.seed},
    deps=("tokenize", "priors"),
    instances=lambda cfg: [(refine_stage_name(cfg, p), p) for p in coarse_priors(cfg)],
    description=lambda b, prior: f"refine model (fine codes from {prior} clusters)",
    outputs=outputs_of(FILES),
)
