"""Stage ``report``: ``RUN/report.html`` and ``RUN/report.md`` from every other stage's outputs, with the report
sections the registered stages declare (:func:`write_run_report`, also behind ``codeprior report RUN``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from codeprior import report
from codeprior.errors import CodepriorError
from codeprior.pipeline.config import PipelineConfig
from codeprior.pipeline.engine import StageContext
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.registry import StageDef, report_sections
from codeprior.pipeline.run_folder import read_stage_manifest

__all__ = ["STAGE", "FILES", "ReportOutputs", "run", "load_manifests", "write_run_report"]


class FILES:
    """What :func:`codeprior.report.write_report` writes in the run folder itself (figures go to ``RUN/report/``)."""

    html = report.HTML  # self-contained: figures embedded as base64
    markdown = report.MARKDOWN  # figures linked by relative path
    results_md = report.RESULTS_MD  # the results table and verdict (what the README quotes)
    results_json = report.RESULTS_JSON  # the numbers behind it (docs/results/<run>.json keeps a copy)
    figures = report.FIGURES


@dataclass(frozen=True)
class ReportOutputs(StageOutputs):
    """Where the report is."""

    html: Path
    markdown: Path


def load_manifests(run_dir: str | os.PathLike) -> dict[str, dict]:
    """Every stage manifest of a run, in the order the stages started."""
    run_dir = Path(run_dir)
    out = []
    for d in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        m = read_stage_manifest(d)  # carries its folder: records resolve paths stored relative to the run folder
        if isinstance(m, dict) and "stage" in m:
            out.append(m)
    out.sort(key=lambda m: (m.get("started", ""), m.get("stage", "")))
    return {m["stage"]: m for m in out}


def write_run_report(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, title: str | None = None
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` of a run folder with the sections of every registered stage; return
    their paths. ``title`` defaults to the run's name (the report stage's config), else the folder's name."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CodepriorError(f"{run_dir}: no such run directory")
    manifests = load_manifests(run_dir)
    if not manifests:
        raise CodepriorError(f"{run_dir}: no stage manifests found (not a pipeline run folder?)")
    title = title or (manifests.get("report", {}).get("config") or {}).get("name")
    return report.write_report(run_dir, manifests, report_sections(), out_dir, title)


def run(cfg: PipelineConfig, ctx: StageContext) -> ReportOutputs:
    """Write the report of ``ctx.run_dir``."""
    html_path, md_path = write_run_report(ctx.run_dir, title=cfg.name)
    return ReportOutputs(html=html_path.resolve(), markdown=md_path.resolve())


STAGE = StageDef(
    "report",
    run=lambda b, ctx, _: run(b.cfg, ctx),
    config=lambda b, _: {"name": b.cfg.name},
    deps=lambda b, _: b.names,  # every stage before it
    description="report.html and report.md",
    outputs=("*.png",),  # the report's figures (RUN/report/ is the stage's folder)
    run_outputs=(FILES.html, FILES.markdown, FILES.results_md, FILES.results_json),  # in the run folder itself
)
