"""The run report: ``RUN/report.html`` (self-contained, images embedded as base64) and ``RUN/report.md``.

The report assembles the sections it is given (:class:`ReportSection`; each stage declares its own next to the
stage, :mod:`codeprior.pipeline.stages`) from the stages' manifests (whose ``metrics`` the sections read as the
stages' outputs records) and the files each stage names in its ``FILES``. It imports no stage, and it can be
regenerated at any time with ``codeprior report RUN`` without re-running anything. Missing stages show as "not run"
rather than failing: a partial run still reports.

Figures are drawn with matplotlib's Agg backend (no display needed) into ``RUN/report/``; the Markdown file links
them by relative path, the HTML file embeds them.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from codeprior.utils.io import write_json_atomic, write_text_atomic
from codeprior.verdict import results_markdown

if TYPE_CHECKING:  # the stages' records, for the annotations only: the report imports nothing of the pipeline
    from codeprior.pipeline.outputs import StageOutputs

__all__ = [
    "HTML",
    "MARKDOWN",
    "RESULTS_MD",
    "RESULTS_JSON",
    "FIGURES",
    "FEATURE_NOTE",
    "Doc",
    "ReportSection",
    "fmt",
    "read_json",
    "record",
    "scalar_keys",
    "write_report",
]

R = TypeVar("R", bound="StageOutputs")

HTML = "report.html"  # self-contained: figures embedded as base64
MARKDOWN = "report.md"  # figures linked by relative path
RESULTS_MD = "results.md"  # the results table and verdict (what the README quotes)
RESULTS_JSON = "results.json"  # the numbers behind it (docs/results/<run>.json keeps a copy)
FIGURES = "report"  # RUN/report/: the figures

FEATURE_NOTE = (
    "FID, KID, IS and precision/recall here are computed on the features of a classifier trained in this project "
    "on the dataset's train split (no Inception weights offline): they compare runs with each other, not with "
    "published Inception-based numbers."
)


# --------------------------------------------------------------------------------------------------- reading
def read_json(path: Path) -> Any:
    """A JSON file's contents, or None when it is missing or unreadable (a partial run still reports)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def record(manifests: dict[str, dict], stage: str, cls: type[R]) -> R | None:
    """The outputs record of ``stage``, or None when it has not run (no manifest, or no metrics yet)."""
    m = manifests.get(stage)
    return cls.from_manifest(m) if m and m.get("metrics") else None


def fmt(v: Any, fmt: str = "{:.4g}") -> str:
    """A table cell: ``fmt`` for numbers (``{:.4g}``: integers as they are, large values without decimals)."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int) and fmt == "{:.4g}":
        return str(v)
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if fmt == "{:.4g}" and abs(v) >= 1e4:
            return f"{v:.0f}"
        try:
            return fmt.format(v)
        except (ValueError, TypeError):
            return str(v)
    return str(v)


def scalar_keys(rows: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """Keys with scalar values across ``rows`` (dicts), in first-seen order: the columns of a results table."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if k not in keys and k not in skip and not isinstance(v, (list, dict))]
    return keys


class Doc:
    """Builds the Markdown and HTML versions side by side from the same calls."""

    def __init__(self, run_dir: Path, fig_dir: Path, md_base: Path) -> None:
        self.run_dir = run_dir
        self.md_base = md_base
        self.fig_dir = fig_dir
        self.md: list[str] = []
        self.html: list[str] = []
        self.sections: list[tuple[str, str]] = []
        self.results: dict = {}  # the verdict's results (the evaluate stage's section sets them): results.md / .json

    def h(self, level: int, text: str, anchor: str | None = None) -> None:
        anchor = anchor or text.lower().replace(" ", "-")
        if level == 2:
            self.sections.append((anchor, text))
        self.md.append(f"\n{'#' * level} {text}\n")
        self.html.append(f'<h{level} id="{html.escape(anchor)}">{html.escape(text)}</h{level}>')

    def section(self, text: str, anchor: str, ran: Any, missing: str = "Stage not run.") -> bool:
        """A section's heading; when ``ran`` is empty (its stage has not run) the ``missing`` line, and False."""
        self.h(2, text, anchor)
        if not ran:
            self.p(missing)
        return bool(ran)

    def p(self, text: str, cls: str = "") -> None:
        self.md.append(f"\n{text}\n")
        c = f' class="{cls}"' if cls else ""
        self.html.append(f"<p{c}>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        if not rows:
            self.p("(no data)")
            return
        cells = [[fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]
        self.md.append("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        self.md.extend("| " + " | ".join(r) + " |" for r in cells)
        self.md.append("")
        th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells)
        self.html.append(f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>")

    def image(self, path: Path, caption: str, optional: bool = False, pixels: bool = False) -> None:
        """Embed a PNG; ``pixels`` shows a small image grid full width with crisp, unsmoothed pixels."""
        if not path.is_file():
            if not optional:
                self.p(f"({caption}: image missing: {path.name})")
            return
        rel = os.path.relpath(path, self.md_base)
        self.md.append(f"\n![{caption}]({rel})\n")
        data = base64.b64encode(path.read_bytes()).decode()
        cls = ' class="px"' if pixels else ""
        self.html.append(
            f'<figure><img{cls} alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )


#: a section's body: ``render(doc, run_dir, manifests)`` adds its headings, tables and figures to ``doc``
Render = Callable[[Doc, Path, dict[str, dict]], None]


@dataclass(frozen=True)
class ReportSection:
    """A part of the report a stage declares (``StageDef.report``): the report shows the sections it is given in
    ``rank`` order (ties in the order given), then the timings of every stage."""

    rank: int
    render: Render


# --------------------------------------------------------------------------------------------------- sections
def _section_timings(doc: Doc, manifests: dict[str, dict]) -> None:
    doc.h(2, "Timings and environment", "timings")
    rows = [
        [n, m.get("status", ""), fmt(m.get("seconds"), "{:.1f}"), m.get("attempts"), m.get("description", "")]
        for n, m in manifests.items()
    ]
    total = sum(float(m.get("seconds") or 0) for m in manifests.values())
    rows.append(["total", "", fmt(total, "{:.1f}"), "", ""])
    doc.table(["stage", "status", "seconds", "attempts", "what"], rows)
    env: dict[str, Any] = {}
    for m in manifests.values():
        env.update(m.get("environment") or {})
    if env:
        doc.table(list(env), [[str(v) for v in env.values()]])


_CSS = """
body{font-family:system-ui,-apple-system,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;image-rendering:pixelated}img.px{width:100%}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
.note{background:#fff8e1;padding:.5em .8em;border-left:4px solid #f0b400}nav a{margin-right:1em}
"""


def write_report(
    run_dir: str | os.PathLike,
    manifests: dict[str, dict],
    sections: Sequence[ReportSection],
    out_dir: str | os.PathLike | None = None,
    title: str | None = None,
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` of a run folder from its stage ``manifests`` (stage -> manifest, in
    the order the stages started) and the ``sections`` the stages declare; return their paths.

    ``out_dir`` (default: the run folder) receives the two files; figures go to ``RUN/report/``; ``title``
    (default: the folder's name) heads the report.
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    doc = Doc(run_dir, run_dir / FIGURES, out)
    name = title or run_dir.name
    doc.md.append(f"# codeprior report: {name}\n")
    doc.html.append(f"<h1>codeprior report: {html.escape(str(name))}</h1>")
    doc.p(
        f"Run folder {run_dir.resolve()}; generated {time.strftime('%Y-%m-%d %H:%M')}. Every number below is read "
        "from the stages' manifests and outputs."
    )
    for section in sorted(sections, key=lambda s: s.rank):
        section.render(doc, run_dir, manifests)
    _section_timings(doc, manifests)
    res = doc.results

    nav = "<nav>" + "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in doc.sections) + "</nav>"
    body = doc.html[0] + nav + "".join(doc.html[1:])
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>codeprior report: {html.escape(str(name))}"
        f"</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )
    html_path, md_path = out / HTML, out / MARKDOWN
    write_text_atomic(html_path, page)
    write_text_atomic(md_path, "\n".join(doc.md) + "\n")
    if res:  # the README quotes results.md; results.json is what docs/results/ keeps of a run
        write_text_atomic(out / RESULTS_MD, results_markdown(res))
        write_json_atomic(out / RESULTS_JSON, res)
    return html_path, md_path
