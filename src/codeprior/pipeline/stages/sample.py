"""Stages ``sample-<run>``: class-balanced samples of a trained run, and its FID-vs-step curve over the snapshots."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from codeprior.curves import fid_curve
from codeprior.decoding import ACCEPT_RULES, DecoderSettings
from codeprior.models import load_gpt, load_refine
from codeprior.pipeline.config import PipelineConfig, VariantConfig
from codeprior.pipeline.engine import StageContext
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.registry import Build, StageDef, outputs_of
from codeprior.pipeline.stages.classifier import ClassifierOutputs
from codeprior.pipeline.stages.common import load_vq
from codeprior.pipeline.stages.data import FILES as DATA_FILES
from codeprior.pipeline.stages.data import DataOutputs
from codeprior.pipeline.stages.priors import PriorsOutputs
from codeprior.pipeline.stages.tokenize import TokenizeOutputs
from codeprior.pipeline.stages.tokenizer import checkpoint_of
from codeprior.pipeline.stages.train import TrainOutputs, refine_stage_name, variant_runs
from codeprior.report import Doc, ReportSection, fmt, record
from codeprior.sample import SampleSettings, sample_to_dir
from codeprior.train.objective_traits import TRAITS
from codeprior.utils.io import write_json_atomic

__all__ = ["STAGE", "FILES", "SampleOutputs", "run", "sample_settings", "eval_spec"]


class FILES:
    """What the stage writes in ``RUN/sample-<run>/`` (the first two as :func:`codeprior.sample.sample_to_dir` names
    them)."""

    samples = "samples.npz"  # arr_0 uint8 NHWC + labels (the ADM evaluator's layout)
    grid = "grid.png"  # sample.grid_per_class samples per class, one row per class
    meta = "samples.json"  # the settings, the decoder's forward passes and accepted tokens per pass
    curve = "curve.json"  # {"step", "fid", "class_match"} over the training's snapshots
    chunks = "chunks"  # finished sample chunks while sampling (codeprior.sample.sample_to_dir), removed at the end


@dataclass(frozen=True)
class SampleOutputs(StageOutputs):
    """The samples of one run and the settings that drew them."""

    samples: Path
    curve_fid: float | None  # FID at the last snapshot
    num_samples: int
    images_per_s: float | None  # None when resumed (part of the samples came from an earlier attempt)
    coarse_to_fine: bool
    cfg_scale: float
    temperature: float
    top_k: int
    top_p: float
    seed: int
    refine_temperature: float
    refine_top_k: int
    refine_mode: str
    tau1: float | None  # coarse-to-fine only: sample.coarse_temperature
    tau2: float | None  # sample.refine_temperature
    decoder: dict[str, Any] = field(default_factory=dict)  # codeprior.decoding.DecoderSettings (samples.json)
    forward_passes: int | None = None  # model forward passes over all samples (AR: one per token)
    accepted_per_pass: float | None = None  # mean tokens accepted per pass (AR: 1)


def sample_settings(cfg: PipelineConfig, prior_files: dict[str, Any] | None = None) -> SampleSettings:
    """The sampling settings of the runs (``sample:`` and the run's seed; a coarse GPT samples at
    ``sample.coarse_temperature``); a decoder's ``prior`` names one of ``priors.methods``, resolved to its file
    through ``prior_files`` (the priors stage's outputs)."""
    settings = cfg.sample.settings(seed=cfg.seed)
    dec = settings.decoder
    if dec.prior is not None and prior_files is not None:
        settings.decoder = replace(dec, prior=str(prior_files[dec.prior]))
    return settings


def _prior_files(ctx: StageContext) -> dict[str, Any] | None:
    return PriorsOutputs.from_manifest(ctx.upstream["priors"]).files if "priors" in ctx.upstream else None


def eval_spec(cfg: PipelineConfig, ctx: StageContext, device: str, refine_stage: str | None) -> dict[str, Any]:
    """What :func:`codeprior.curves.make_fid_fn` needs (FID of a model's samples), as plain data."""
    cm = ClassifierOutputs.from_manifest(ctx.upstream["classifier"])
    refine = TrainOutputs.from_manifest(ctx.upstream[refine_stage]).checkpoint if refine_stage else None
    return {
        "classifier": str(cm.checkpoint) if cm.checkpoint else None,
        "inception_weights": cfg.classifier.inception_weights,
        "reference_features": str(cm.reference_features),
        "vq": str(checkpoint_of(ctx)),
        "vq_config": cfg.tokenizer.model if cfg.tokenizer.checkpoint else None,
        "refine": str(refine) if refine else None,
        "num": cfg.train.eval_samples,
        "batch_size": cfg.sample.batch_size,
        "settings": asdict(sample_settings(cfg, _prior_files(ctx))),
        "grid": list(TokenizeOutputs.from_manifest(ctx.upstream["tokenize"]).grid),
        "device": device,
    }


def run(
    cfg: PipelineConfig, ctx: StageContext, device: str, variant: VariantConfig, refine_stage: str | None, run_name: str
) -> SampleOutputs:
    """Sample ``sample.num_samples`` images of ``train-<run_name>`` (through the refine model for coarse runs)."""
    trained = TrainOutputs.from_manifest(ctx.upstream[f"train-{run_name}"])
    refine_path = str(TrainOutputs.from_manifest(ctx.upstream[refine_stage]).checkpoint) if refine_stage else None
    gpt = load_gpt(str(trained.checkpoint), device=device)
    vq = load_vq(cfg, checkpoint_of(ctx), device)
    refine = load_refine(refine_path, device=device) if refine_path else None
    settings = sample_settings(cfg, _prior_files(ctx))
    grid = TokenizeOutputs.from_manifest(ctx.upstream["tokenize"]).grid
    t0 = time.perf_counter()
    npz = sample_to_dir(
        gpt,
        vq,
        ctx.dir,
        cfg.sample.num_samples,
        settings,
        refine=refine,
        grid=grid,
        batch_size=cfg.sample.batch_size,
        grid_per_class=cfg.sample.grid_per_class,
        extra_meta={
            "variant": variant.name,
            "run": run_name,
            "checkpoint": str(trained.checkpoint),
            "refine": refine_path,
        },
    )
    dt = time.perf_counter() - t0
    assert npz is not None  # the pipeline samples in one process (rank 0), which assembles samples.npz
    curve: dict[str, list] = {"step": [], "fid": [], "class_match": []}
    if cfg.train.eval_samples > 0:
        ctx.log(
            f"[{ctx.name}] FID vs step over the snapshots of train-{run_name} ({cfg.train.eval_samples} samples each)"
        )
        curve = fid_curve(eval_spec(cfg, ctx, device, refine_stage), trained.checkpoint.parent, device, log=ctx.log)
    write_json_atomic(ctx.dir / FILES.curve, curve)
    meta = json.loads((ctx.dir / FILES.meta).read_text())
    ctf = refine is not None
    recorded = asdict(settings)  # as earlier runs recorded them: temperature is the GPT's, tau1 / tau2 the stages'
    recorded["temperature"] = settings.stage1_temperature(ctf)
    del recorded["coarse_temperature"]
    return SampleOutputs(
        samples=Path(npz).resolve(),
        curve_fid=curve["fid"][-1] if curve["fid"] else None,
        num_samples=cfg.sample.num_samples,
        images_per_s=cfg.sample.num_samples / dt if not ctx.resume else None,
        coarse_to_fine=ctf,
        **recorded,
        tau1=settings.coarse_temperature if ctf else None,
        tau2=settings.refine_temperature if ctf else None,
        forward_passes=meta.get("forward_passes"),
        accepted_per_pass=meta.get("accepted_per_pass"),
    )


def report_samples(doc: Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    """The report's samples section: each sample stage's settings and grid."""
    names = [n for n in manifests if n.startswith("sample-")]
    if not doc.section("Samples", "samples", names, missing="No sampling stage run."):
        return
    data = record(manifests, "data", DataOutputs)
    if data is not None and data.class_names:
        doc.p("One row per class, top to bottom: " + ", ".join(data.class_names) + ".")
    doc.image(
        run_dir / "data" / DATA_FILES.examples_png, "Real test images, for comparison", optional=True, pixels=True
    )
    shown = ("cfg_scale", "temperature", "top_k", "top_p", "tau1", "tau2", "refine_mode", "num_samples", "images_per_s")
    for n in names:
        met = SampleOutputs.from_manifest(manifests[n]).to_metrics()
        settings = ", ".join(f"{k} {fmt(v)}" for k, v in met.items() if k in shown)
        dec = met.get("decoder") or {}
        if dec.get("decoder", "ar") != "ar":
            settings += (
                f"; decoder {dec['decoder']} (accept {dec.get('accept')}, window {dec.get('window')}): "
                f"{fmt(met.get('accepted_per_pass'))} tokens per forward pass, "
                f"{fmt(met.get('forward_passes'))} passes"
            )
        doc.h(3, n[len("sample-") :], n)
        if settings:
            doc.p(settings)
        doc.image(
            run_dir / n / FILES.grid,
            f"{n[len('sample-') :]}: samples per class (one row per class)",
            pixels=True,
        )


Run = tuple[VariantConfig, str]  # variant, run name


def _refine_stage(cfg: PipelineConfig, v: VariantConfig) -> str | None:
    """The refine model's stage a variant samples through (coarse-to-fine), else None."""
    return refine_stage_name(cfg, v.prior) if TRAITS[v.objective].needs_refine and v.prior is not None else None


def _deps(b: Build, r: Run) -> tuple[str, ...]:
    v, run_name = r
    rs = _refine_stage(b.cfg, v)
    dec = DecoderSettings.coerce(b.cfg.sample.decoder)
    uses_prior = dec.speculative and ACCEPT_RULES[dec.accept].needs_prior
    return (
        ("tokenizer", "tokenize", "classifier", f"train-{run_name}")
        + ((rs,) if rs else ())
        + (("priors",) if uses_prior else ())
    )


def _config(b: Build, _: Run) -> dict:
    # plain AR leaves the decoder out of the fingerprint, so runs made before it existed keep theirs
    speculative = DecoderSettings.coerce(b.cfg.sample.decoder).speculative
    shown = {k: v for k, v in b.slices["sample"].items() if k != "decoder" or speculative}
    return {**shown, "eval_samples": b.cfg.train.eval_samples, **b.seed}


STAGE = StageDef(
    "sample",
    run=lambda b, ctx, r: run(b.cfg, ctx, b.device, r[0], _refine_stage(b.cfg, r[0]), r[1]),
    config=_config,
    deps=_deps,
    instances=lambda cfg: [(f"sample-{name}", (v, name)) for v, name, _ in variant_runs(cfg)],
    description="per-class grid and .npz of samples; FID vs step over the training's snapshots",
    outputs=outputs_of(FILES),
    report=(ReportSection(80, report_samples),),
)
