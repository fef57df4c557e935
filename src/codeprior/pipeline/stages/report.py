"""Stage ``report``: ``RUN/report.html`` and ``RUN/report.md`` from every other stage's outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from codeprior.pipeline.config import PipelineConfig
from codeprior.pipeline.engine import StageContext
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.registry import StageDef

__all__ = ["STAGE", "FILES", "ReportOutputs", "run"]


class FILES:
    """What :func:`codeprior.report.write_report` writes in the run folder itself (figures go to ``RUN/report/``)."""

    html = "report.html"  # self-contained: figures embedded as base64
    markdown = "report.md"  # figures linked by relative path
    results_md = "results.md"  # the results table and verdict (what the README quotes)
    results_json = "results.json"  # the numbers behind it (docs/results/<run>.json keeps a copy)
    figures = "report"


@dataclass(frozen=True)
class ReportOutputs(StageOutputs):
    """Where the report is."""

    html: Path
    markdown: Path


def run(cfg: PipelineConfig, ctx: StageContext) -> ReportOutputs:
    """Write the report of ``ctx.run_dir``."""
    # imported here, not at the top: codeprior.report reads the stages' records and file names, so it imports
    # codeprior.pipeline, which imports this module
    from codeprior.report import write_report

    html_path, md_path = write_report(ctx.run_dir, title=cfg.name)
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
