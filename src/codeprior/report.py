"""The run report: ``RUN/report.html`` (self-contained, images embedded as base64) and ``RUN/report.md``.

The report reads only what the stages left in the run folder (``RUN/<stage>/manifest.json``, whose ``metrics`` it
reads as the stages' outputs records, and the files each stage names in its ``FILES``), so it can be regenerated at
any time with ``codeprior report RUN`` and never re-runs anything. Missing stages show as "not run" rather than
failing: a partial run still reports.

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
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from codeprior.errors import CodepriorError
from codeprior.pipeline.engine import read_stage_manifest
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.stages import data as data_stage
from codeprior.pipeline.stages import evaluate as evaluate_stage
from codeprior.pipeline.stages import priors as priors_stage
from codeprior.pipeline.stages import report as report_stage
from codeprior.pipeline.stages import sample as sample_stage
from codeprior.pipeline.stages import substitution as substitution_stage
from codeprior.pipeline.stages import tokenizer as tokenizer_stage
from codeprior.pipeline.stages import train as train_stage
from codeprior.pipeline.stages.classifier import ClassifierOutputs
from codeprior.pipeline.stages.data import DataOutputs
from codeprior.pipeline.stages.sample import SampleOutputs
from codeprior.pipeline.stages.tokenize import TokenizeOutputs
from codeprior.pipeline.stages.tokenizer import TokenizerOutputs
from codeprior.pipeline.stages.tokenizer_eval import TokenizerEvalOutputs
from codeprior.pipeline.stages.train import TrainOutputs
from codeprior.report_figures import class_comparison, fid_vs_step
from codeprior.report_figures import plt_agg as _plt
from codeprior.report_figures import save_fig as _save_fig
from codeprior.utils.io import write_json_atomic, write_text_atomic
from codeprior.verdict import collect, mean_curve, results_markdown, results_note, results_table

R = TypeVar("R", bound=StageOutputs)

FEATURE_NOTE = (
    "FID, KID, IS and precision/recall here are computed on the features of a classifier trained in this project "
    "on the dataset's train split (no Inception weights offline): they compare runs with each other, not with "
    "published Inception-based numbers."
)

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


# --------------------------------------------------------------------------------------------------- reading
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


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


def _record(manifests: dict[str, dict], stage: str, cls: type[R]) -> R | None:
    """The outputs record of ``stage``, or None when it has not run (no manifest, or no metrics yet)."""
    m = manifests.get(stage)
    return cls.from_manifest(m) if m and m.get("metrics") else None


def _fmt(v: Any, fmt: str = "{:.4g}") -> str:
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


class _Doc:
    """Builds the Markdown and HTML versions side by side from the same calls."""

    def __init__(self, run_dir: Path, fig_dir: Path, md_base: Path) -> None:
        self.run_dir = run_dir
        self.md_base = md_base
        self.fig_dir = fig_dir
        self.md: list[str] = []
        self.html: list[str] = []
        self.sections: list[tuple[str, str]] = []

    def h(self, level: int, text: str, anchor: str | None = None) -> None:
        anchor = anchor or text.lower().replace(" ", "-")
        if level == 2:
            self.sections.append((anchor, text))
        self.md.append(f"\n{'#' * level} {text}\n")
        self.html.append(f'<h{level} id="{html.escape(anchor)}">{html.escape(text)}</h{level}>')

    def p(self, text: str, cls: str = "") -> None:
        self.md.append(f"\n{text}\n")
        c = f' class="{cls}"' if cls else ""
        self.html.append(f"<p{c}>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        if not rows:
            self.p("(no data)")
            return
        cells = [[_fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]
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


# --------------------------------------------------------------------------------------------------- sections
def _section_overview(doc: _Doc, manifests: dict[str, dict]) -> None:
    data = _record(manifests, "data", DataOutputs)
    cm = _record(manifests, "classifier", ClassifierOutputs)
    if cm is not None and cm.features:
        acc = cm.test_accuracy
        doc.p(
            f"Feature extractor for every FID/KID/IS/PRDC number: {cm.features}"
            + (f", test accuracy {acc:.2%}." if isinstance(acc, (int, float)) else ".")
        )
    if data is not None:
        size = "?" if data.image_size is None else data.image_size
        doc.table(
            ["dataset", "classes", "image size", "train images", "test images", "sha256"],
            [
                [
                    str(data.dataset),
                    data.num_classes,
                    f"{'?' if data.channels is None else data.channels}x{size}x{size}",
                    data.train_size,
                    data.test_size,
                    str(data.sha256 or "")[:16],
                ]
            ],
        )


def _section_tokenizer(doc: _Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    doc.h(2, "Tokenizer", "tokenizer")
    if not manifests.get("tokenizer"):
        doc.p("Stage not run.")
        return
    tok = TokenizerOutputs.from_manifest(manifests["tokenizer"])
    cells = {k: getattr(tok, k) for k in ("source", "model", "codebook_size", "grid", "steps")}
    cells = {k: "x".join(map(str, v)) if isinstance(v, tuple) else v for k, v in cells.items() if v is not None}
    doc.table([k.replace("_", " ") for k in cells], [list(cells.values())])
    tk = _record(manifests, "tokenize", TokenizeOutputs)
    if tk is not None:
        doc.p(
            "Pre-tokenised code shards: "
            + ", ".join(
                f"{k.replace('_', ' ')} {_fmt(v)}"
                for k, v in tk.to_metrics().items()
                if not isinstance(v, (dict, list))
            )
        )
    ev = _record(manifests, "tokenizer-eval", TokenizerEvalOutputs)
    if ev is not None:
        cols = [
            ("num_images", "test images"),
            ("rfid", "rFID"),
            ("mse", "MSE"),
            ("psnr", "PSNR (dB)"),
            ("codebook_usage", "codebook usage"),
            ("accuracy_originals", "classifier acc. originals"),
            ("accuracy_reconstructions", "classifier acc. reconstructions"),
        ]
        cols = [(k, h) for k, h in cols if getattr(ev, k) is not None]
        doc.table([h for _, h in cols], [[getattr(ev, k) for k, _ in cols]])
        doc.p(
            "Round trip through the tokenizer on held-out images: rFID on the same features as the metrics below, "
            "and whether the classifier still recognises the reconstructions."
        )
    doc.image(
        run_dir / "tokenizer" / tokenizer_stage.FILES.reconstructions,
        "Test images (odd rows) and their reconstructions through the tokenizer (even rows)",
    )


def _size_hist(sizes_by_method: dict[str, list[int]], path: Path) -> Path:
    """One panel per prior, shared axes: clusters per size, power-of-two bins on a log x axis."""
    plt = _plt()
    n = len(sizes_by_method)
    mx = max((max(v) for v in sizes_by_method.values() if v), default=1)
    edges = [2**i for i in range(int(math.ceil(math.log2(mx + 1))) + 1)]
    if edges[-1] <= mx:
        edges.append(edges[-1] * 2)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), squeeze=False, sharex=True, sharey=True)
    for ax, (method, sizes) in zip(axes[0], sizes_by_method.items()):
        ax.hist(sizes, bins=edges, color="#4477aa", edgecolor="white", linewidth=0.5)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.7)
        singles = sum(1 for x in sizes if x == 1)
        ax.set_title(f"{method}: k={len(sizes)}, max {max(sizes) if sizes else 0}, {singles} singletons", fontsize=9)
        ax.set_xlabel("cluster size (codes)")
    axes[0][0].set_ylabel("clusters")
    fig.tight_layout()
    return _save_fig(fig, path)


def _scalar_keys(rows: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """Keys with scalar values across ``rows`` (dicts), in first-seen order: the columns of a results table."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if k not in keys and k not in skip and not isinstance(v, (list, dict))]
    return keys


def _section_priors(doc: _Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    doc.h(2, "Codebook priors", "priors")
    m = manifests.get("priors")
    if not m:
        doc.p("Stage not run.")
        return
    quality = _read_json(run_dir / "priors" / priors_stage.FILES.quality) or {}
    rows_by_method: dict[str, dict] = quality.get("rows", {}) if isinstance(quality, dict) else {}
    if rows_by_method:  # one column per prior, one line per metric (the layout of `codeprior prior inspect`)
        keys = _scalar_keys(rows_by_method.values(), skip=("name",))
        doc.table(
            ["metric"] + list(rows_by_method),
            [
                [k] + [row.get(k, 0 if k.startswith("clusters of size") else None) for row in rows_by_method.values()]
                for k in keys
            ],
        )
    doc.p(
        "Geometry of each partition of the tokenizer's codebook (same k for every method): cluster sizes, mean "
        "intra-cluster distance, distance to the nearest code of another cluster, and the share of codes whose "
        "nearest neighbour lies in their own cluster."
    )
    sizes = _read_json(run_dir / "priors" / priors_stage.FILES.sizes) or {}
    if sizes:
        doc.image(_size_hist(sizes, doc.fig_dir / "cluster_sizes.png"), "Cluster-size histograms (log count)")


def _section_substitution(doc: _Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    doc.h(2, "Prior substitution test", "substitution")
    m = manifests.get("substitution")
    if not m:
        doc.p("Stage not run.")
        return
    res = _read_json(run_dir / "substitution" / substitution_stage.FILES.result) or {}
    rows = res.get("rows", [])
    if rows:
        keys = _scalar_keys(rows)
        doc.table([k.replace("_", " ") for k in keys], [[r.get(k) for k in keys] for r in rows])
    doc.p(
        "Every code of a test image is replaced by a random member of its cluster; the decoded images are "
        "compared with the untouched reconstructions (averaged over several draws). A prior whose clusters hold "
        "interchangeable codes damages the images least. " + (res.get("note") or "")
    )
    doc.image(
        run_dir / "substitution" / substitution_stage.FILES.examples,
        "Originals (first row), reconstructions (second row), then one substitution per prior in the "
        "order of the table (one row each)",
        optional=True,
    )


def _plot_curves(
    curves: dict[str, dict],
    key: str,
    section: str,
    ylabel: str,
    path: Path,
    extra: tuple[str, str] | None = None,
    primary: str | None = None,
) -> Path | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    drawn = False
    for i, (variant, c) in enumerate(curves.items()):
        part = c.get(section, {})
        xs, ys = part.get("step", []), part.get(key, [])
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None and isinstance(y, (int, float)) and math.isfinite(y)]
        color = f"C{i}"
        if pts:
            ax.plot(
                *zip(*pts),
                label=variant if not extra else f"{variant}: {primary or ylabel}",
                color=color,
                marker="o" if section == "eval" else None,
                markersize=3,
            )
            drawn = True
        if extra:
            ys2 = part.get(extra[0], [])
            pts2 = [(x, y) for x, y in zip(xs, ys2) if isinstance(y, (int, float)) and math.isfinite(y)]
            if pts2:
                ax.plot(*zip(*pts2), label=f"{variant}: {extra[1]}", color=color, linestyle="--")
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_fig(fig, path)


def _comparison_groups(run_dir: Path, res: dict) -> list[tuple[str, Any, Any]]:
    """(title, images, labels): the real test images, then the first seed's samples of every variant."""
    groups = []
    real = run_dir / "data" / data_stage.FILES.examples_npz
    if real.is_file():
        with np.load(real) as z:
            groups.append(("real images", z["arr_0"], z["labels"]))
    for row in res.get("summary", []):
        npz = run_dir / f"sample-{row['variant']}" / sample_stage.FILES.samples
        if npz.is_file():
            with np.load(npz) as z:
                groups.append((str(row["variant"]), z["arr_0"], z["labels"]))
    return groups


def _section_results(doc: _Doc, run_dir: Path, manifests: dict[str, dict]) -> dict:
    """The answer first: FID vs step for every variant, the verdict, the results table, samples side by side."""
    doc.h(2, "Did the prior help?", "results")
    res = collect(run_dir)
    if not res:
        doc.p("The evaluate stage has not run yet.")
        return res
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
    data = _record(manifests, "data", DataOutputs)
    classes = (data.class_names if data is not None else None) or [str(i) for i in range(10)]
    grid = class_comparison(_comparison_groups(run_dir, res), classes, doc.fig_dir / "comparison.png")
    if grid is not None:
        doc.image(
            grid,
            "The same classes side by side: real test images, then each variant's samples (first "
            "seed), one row per class, upscaled 3x",
        )
    return res


def _section_training(doc: _Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    doc.h(2, "Training curves", "training")
    names = [n for n in manifests if n.startswith("train-")]
    if not names:
        doc.p("No training stage run.")
        return
    curves = {}
    for n in names:
        c = _read_json(run_dir / n / train_stage.FILES.curves)
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
                _fmt(manifests[n].get("seconds"), "{:.1f}"),
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
        p = _plot_curves(curves, key, section, ylabel, doc.fig_dir / fname, extra, primary="cluster accuracy")
        if p is not None:
            doc.image(p, f"{ylabel} vs step, every run")
        else:
            doc.p(f"({ylabel}: no data logged)")


def _section_samples(doc: _Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    doc.h(2, "Samples", "samples")
    names = [n for n in manifests if n.startswith("sample-")]
    if not names:
        doc.p("No sampling stage run.")
        return
    data = _record(manifests, "data", DataOutputs)
    if data is not None and data.class_names:
        doc.p("One row per class, top to bottom: " + ", ".join(data.class_names) + ".")
    doc.image(
        run_dir / "data" / data_stage.FILES.examples_png, "Real test images, for comparison", optional=True, pixels=True
    )
    shown = ("cfg_scale", "temperature", "top_k", "top_p", "tau1", "tau2", "refine_mode", "num_samples", "images_per_s")
    for n in names:
        met = SampleOutputs.from_manifest(manifests[n]).to_metrics()
        settings = ", ".join(f"{k} {_fmt(v)}" for k, v in met.items() if k in shown)
        dec = met.get("decoder") or {}
        if dec.get("decoder", "ar") != "ar":
            settings += (
                f"; decoder {dec['decoder']} (accept {dec.get('accept')}, window {dec.get('window')}): "
                f"{_fmt(met.get('accepted_per_pass'))} tokens per forward pass, "
                f"{_fmt(met.get('forward_passes'))} passes"
            )
        doc.h(3, n[len("sample-") :], n)
        if settings:
            doc.p(settings)
        doc.image(
            run_dir / n / sample_stage.FILES.grid,
            f"{n[len('sample-') :]}: samples per class (one row per class)",
            pixels=True,
        )


def metrics_rows(run_dir: str | os.PathLike) -> tuple[list[str], list[list[str]], dict]:
    """Header and rows of the metrics table from ``RUN/evaluate/metrics.json`` (plus the file's contents)."""
    res = _read_json(Path(run_dir) / "evaluate" / evaluate_stage.FILES.metrics)
    if not isinstance(res, dict) or not res.get("rows"):
        return [], [], {}
    present = [c for c in METRIC_COLUMNS if any(r.get(c[0]) is not None for r in res["rows"])]
    header = ["run", "objective", "prior"] + [c[1] for c in present]
    rows = []
    for r in res["rows"]:
        vals = []
        for key, _, fmt in present:
            v = r.get(key)
            if key == "kid" and isinstance(v, (int, float)):
                v = v * 1e3
            vals.append(_fmt(v, fmt))
        rows.append(
            [str(r.get("run", r.get("variant"))), str(r.get("objective", "")), str(r.get("prior") or "–")] + vals
        )
    return header, rows, res


def feature_note(res: dict) -> str:
    fe = res.get("feature_extractor", "in-project classifier")
    acc = res.get("feature_accuracy")
    acc_s = f" (test accuracy {acc:.2%})" if isinstance(acc, (int, float)) else ""
    return (
        f"Features: {fe}{acc_s}; reference: {res.get('reference', 'test split')}, "
        f"{_fmt(res.get('num_samples'))} samples per run. {FEATURE_NOTE}"
    )


def metrics_table_text(run_dir: str | os.PathLike) -> str:
    """The metrics table as Markdown plus the feature-extractor note (printed at the end of a pipeline run)."""
    header, rows, res = metrics_rows(run_dir)
    if not rows:
        return "(no metrics: the evaluate stage has not run)"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + feature_note(res)


def _section_metrics(doc: _Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    doc.h(2, "Metrics", "metrics")
    header, rows, res = metrics_rows(run_dir)
    if not rows:
        doc.p("Stage not run.")
        return
    doc.table(header, rows)
    doc.p(feature_note(res), cls="note")


def _section_timings(doc: _Doc, manifests: dict[str, dict]) -> None:
    doc.h(2, "Timings and environment", "timings")
    rows = [
        [n, m.get("status", ""), _fmt(m.get("seconds"), "{:.1f}"), m.get("attempts"), m.get("description", "")]
        for n, m in manifests.items()
    ]
    total = sum(float(m.get("seconds") or 0) for m in manifests.values())
    rows.append(["total", "", _fmt(total, "{:.1f}"), "", ""])
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
    run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, title: str | None = None
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` for a run folder; return their paths.

    ``out_dir`` (default: the run folder) receives the two files; figures go to ``RUN/report/``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CodepriorError(f"{run_dir}: no such run directory")
    manifests = load_manifests(run_dir)
    if not manifests:
        raise CodepriorError(f"{run_dir}: no stage manifests found (not a pipeline run folder?)")
    out = Path(out_dir) if out_dir is not None else run_dir
    doc = _Doc(run_dir, run_dir / report_stage.FILES.figures, out)
    name = title or (manifests.get("report", {}).get("config") or {}).get("name") or run_dir.name
    doc.md.append(f"# codeprior report: {name}\n")
    doc.html.append(f"<h1>codeprior report: {html.escape(str(name))}</h1>")
    doc.p(
        f"Run folder {run_dir.resolve()}; generated {time.strftime('%Y-%m-%d %H:%M')}. Every number below is read "
        "from the stages' manifests and outputs."
    )
    _section_overview(doc, manifests)
    res = _section_results(doc, run_dir, manifests)
    _section_metrics(doc, run_dir, manifests)
    _section_tokenizer(doc, run_dir, manifests)
    _section_priors(doc, run_dir, manifests)
    _section_substitution(doc, run_dir, manifests)
    _section_training(doc, run_dir, manifests)
    _section_samples(doc, run_dir, manifests)
    _section_timings(doc, manifests)

    nav = "<nav>" + "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in doc.sections) + "</nav>"
    body = doc.html[0] + nav + "".join(doc.html[1:])
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>codeprior report: {html.escape(str(name))}"
        f"</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )
    html_path, md_path = out / report_stage.FILES.html, out / report_stage.FILES.markdown
    write_text_atomic(html_path, page)
    write_text_atomic(md_path, "\n".join(doc.md) + "\n")
    if res:  # the README quotes results.md; results.json is what docs/results/ keeps of a run
        write_text_atomic(out / report_stage.FILES.results_md, results_markdown(res))
        write_json_atomic(out / report_stage.FILES.results_json, res)
    return html_path, md_path
