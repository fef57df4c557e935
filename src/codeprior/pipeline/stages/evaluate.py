"""Stage ``evaluate``: FID / KID / IS / PRDC / class match of every run's samples against the reference."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from codeprior.evaluate import evaluate_images, load_samples_npz
from codeprior.pipeline.config import PipelineConfig
from codeprior.pipeline.engine import StageContext
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.registry import Build, StageDef, outputs_of
from codeprior.pipeline.stages.classifier import ClassifierOutputs
from codeprior.pipeline.stages.common import describe_features, extractor, reference
from codeprior.pipeline.stages.data import FILES as DATA_FILES
from codeprior.pipeline.stages.data import DataOutputs
from codeprior.pipeline.stages.sample import FILES as SAMPLE_FILES
from codeprior.pipeline.stages.sample import SampleOutputs
from codeprior.pipeline.stages.train import variant_runs
from codeprior.report import FEATURE_NOTE, Doc, ReportSection, fmt, read_json, record
from codeprior.report_figures import class_comparison, fid_vs_step
from codeprior.utils.io import write_json_atomic
from codeprior.verdict import collect, mean_curve, results_note, results_table, summarize

__all__ = ["STAGE", "FILES", "EvaluateOutputs", "run"]


class FILES:
    """What the stage writes in ``RUN/evaluate/``."""

    metrics = "metrics.json"  # feature extractor, reference, "rows" (one per run), "summary" (per variant), results


@dataclass(frozen=True)
class EvaluateOutputs(StageOutputs):
    """One metrics row per run, and the features they were measured on."""

    rows: list[dict]
    feature_extractor: str
    feature_accuracy: float | None


def run(cfg: PipelineConfig, ctx: StageContext, device: str) -> EvaluateOutputs:
    """Measure the samples of every run on the classifier stage's features."""
    cm = ClassifierOutputs.from_manifest(ctx.upstream["classifier"])
    ext = extractor(cfg, cm.checkpoint)
    ref, ref_name = reference(cfg)
    rows, full = [], {}
    for v, run_name, seed in variant_runs(cfg):
        samples = SampleOutputs.from_manifest(ctx.upstream[f"sample-{run_name}"]).samples
        images, labels = load_samples_npz(str(samples))
        res = evaluate_images(
            images,
            labels,
            ref,
            ext,
            data=cfg.data.dataset,
            data_dir=cfg.data.data_dir,
            **cfg.evaluate.settings(seed=cfg.seed).metric_kwargs(),
        )
        full[run_name] = res
        rows.append(
            {
                "variant": v.name,
                "run": run_name,
                "seed": seed,
                "objective": v.objective,
                "prior": v.prior,
                "fid": res.get("fid"),
                "kid": res.get("kid_mean"),
                "kid_std": res.get("kid_std"),
                "is": res.get("is_mean"),
                "is_std": res.get("is_std"),
                "precision": res.get("precision"),
                "recall": res.get("recall"),
                "density": res.get("density"),
                "coverage": res.get("coverage"),
                "class_match": res.get("class_match"),
                "num_samples": res.get("num_samples"),
            }
        )
    desc = cm.feature_extractor
    features, accuracy = describe_features(desc), desc.get("test_accuracy")
    out = {
        "feature_extractor": features,
        "feature_accuracy": accuracy,
        "feature_details": desc,
        "reference": ref_name,
        "num_reference": int(len(ref)),
        "num_samples": cfg.sample.num_samples,
        "seeds": cfg.train.seeds,
        "rows": rows,
        "summary": summarize(rows),
        "results": full,
    }
    write_json_atomic(ctx.dir / FILES.metrics, out)
    return EvaluateOutputs(rows=rows, feature_extractor=features, feature_accuracy=accuracy)


# Columns of the metrics table: (key in evaluate/metrics.json rows, header, format, lower is better?)
METRIC_COLUMNS = [
    ("fid", "FID", "{:.2f}"),
    ("kid", "KID x1e3", "{:.2f}"),
    ("is", "IS", "{:.2f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("density", "density", "{:.3f}"),
    ("coverage", "coverage", "{:.3f}"),
    ("class_match", "class match", "{:.3f}"),
]


def metrics_rows(run_dir: str | os.PathLike) -> tuple[list[str], list[list[str]], dict]:
    """Header and rows of the metrics table from ``RUN/evaluate/metrics.json`` (plus the file's contents)."""
    res = read_json(Path(run_dir) / "evaluate" / FILES.metrics)
    if not isinstance(res, dict) or not res.get("rows"):
        return [], [], {}
    present = [c for c in METRIC_COLUMNS if any(r.get(c[0]) is not None for r in res["rows"])]
    header = ["run", "objective", "prior"] + [c[1] for c in present]
    rows = []
    for r in res["rows"]:
        vals = []
        for key, _, form in present:
            v = r.get(key)
            if key == "kid" and isinstance(v, (int, float)):
                v = v * 1e3
            vals.append(fmt(v, form))
        rows.append(
            [str(r.get("run", r.get("variant"))), str(r.get("objective", "")), str(r.get("prior") or "–")] + vals
        )
    return header, rows, res


def feature_note(res: dict) -> str:
    """What the metrics were measured on (the features, the reference, how many samples)."""
    fe = res.get("feature_extractor", "in-project classifier")
    acc = res.get("feature_accuracy")
    acc_s = f" (test accuracy {acc:.2%})" if isinstance(acc, (int, float)) else ""
    return (
        f"Features: {fe}{acc_s}; reference: {res.get('reference', 'test split')}, "
        f"{fmt(res.get('num_samples'))} samples per run. {FEATURE_NOTE}"
    )


def metrics_table_text(run_dir: str | os.PathLike) -> str:
    """The metrics table as Markdown plus the feature-extractor note (printed at the end of a pipeline run)."""
    header, rows, res = metrics_rows(run_dir)
    if not rows:
        return "(no metrics: the evaluate stage has not run)"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + feature_note(res)


def _comparison_groups(run_dir: Path, res: dict) -> list[tuple[str, Any, Any]]:
    """(title, images, labels): the real test images, then the first seed's samples of every variant."""
    groups = []
    real = run_dir / "data" / DATA_FILES.examples_npz
    if real.is_file():
        with np.load(real) as z:
            groups.append(("real images", z["arr_0"], z["labels"]))
    for row in res.get("summary", []):
        npz = run_dir / f"sample-{row['variant']}" / SAMPLE_FILES.samples
        if npz.is_file():
            with np.load(npz) as z:
                groups.append((str(row["variant"]), z["arr_0"], z["labels"]))
    return groups


def report_results(doc: Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    """The answer first: FID vs step for every variant, the verdict, the results table, samples side by side."""
    res = collect(run_dir)
    if not doc.section("Did the prior help?", "results", res, missing="The evaluate stage has not run yet."):
        return
    doc.results = res  # results.md and results.json
    base = mean_curve(res["curves"].get("token", []))[1]
    fig = fid_vs_step(res["curves"], doc.fig_dir / "fid_vs_step.png", target=base[-1] if base else None)
    if fig is not None:
        doc.image(
            fig,
            "FID against training step, every variant (mean over seeds; band: min to max over seeds). "
            "Each point samples train.eval_samples images, so the curve is noisier than the table.",
        )
    doc.p("Verdict: " + res["verdict"], cls="note")
    doc.table(*results_table(res))
    doc.p(results_note(res))
    data = record(manifests, "data", DataOutputs)
    classes = (data.class_names if data is not None else None) or [str(i) for i in range(10)]
    grid = class_comparison(_comparison_groups(run_dir, res), classes, doc.fig_dir / "comparison.png")
    if grid is not None:
        doc.image(
            grid,
            "The same classes side by side: real test images, then each variant's samples (first "
            "seed), one row per class, upscaled 3x",
        )


def report_metrics(doc: Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    """The report's metrics table."""
    header, rows, res = metrics_rows(run_dir)
    if not doc.section("Metrics", "metrics", rows):
        return
    doc.table(header, rows)
    doc.p(feature_note(res), cls="note")


def _config(b: Build, _: None) -> dict:
    cfg = b.cfg
    return {**b.slices["evaluate"], "variants": [v.model_dump() for v in cfg.train.variants], **b.seed} | (
        {"seeds": cfg.train.seeds} if cfg.train.seeds > 1 else {}
    )


STAGE = StageDef(
    "evaluate",
    run=lambda b, ctx, _: run(b.cfg, ctx, b.device),
    config=_config,
    deps=lambda b, _: ("data", "classifier") + tuple(f"sample-{r}" for _, r, _ in variant_runs(b.cfg)),
    description="metrics of every variant on classifier features",
    outputs=outputs_of(FILES),
    report=(ReportSection(20, report_results), ReportSection(30, report_metrics)),
)
