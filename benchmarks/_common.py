"""Shared benchmark plumbing: machine description, median timing, JSON results, and docs/benchmarks.md sections.

Each benchmark owns one section of ``docs/benchmarks.md`` between ``<!-- BEGIN name -->`` and
``<!-- END name -->`` and rewrites only that section, so benchmarks can be re-run independently.
Benchmarks are the package ``benchmarks``: run one from the repository root as ``python -m benchmarks.NAME``.
``start_smoke`` sends results and doc sections to a temporary folder (each benchmark's ``--smoke`` mode).
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
SMOKE_HELP = "tiny sizes, temporary files, seconds: checks that the benchmark runs (CI runs it)"
_OUT: dict[str, Path] = {"results": RESULTS, "doc": DOC}  # where write_result / update_doc_section write


def command(name: str, argv: list[str] | None = None) -> str:
    """The command line that ran benchmark ``name`` (``python -m benchmarks.NAME ARGS``), for results and docs."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m benchmarks." + name, *args]).strip()


def worker_command(name: str, *args: str) -> list[str]:
    """argv to run benchmark ``name`` in a fresh interpreter (run it with ``cwd=ROOT``)."""
    return [sys.executable, "-m", f"benchmarks.{name}", *args]


def start_smoke() -> Path:
    """Send results and doc sections to a new temporary folder (a ``--smoke`` run never touches benchmarks/results
    or docs/); return the folder."""
    given = os.environ.get("CODEPRIOR_SMOKE_DIR")  # a test's folder, to look at what the run wrote
    tmp = Path(given) if given else Path(tempfile.mkdtemp(prefix="codeprior-smoke-"))
    tmp.mkdir(parents=True, exist_ok=True)
    _OUT["results"], _OUT["doc"] = tmp / "results", tmp / "benchmarks.md"
    return tmp


def smoke_dir() -> Path | None:
    """The temporary folder of a ``--smoke`` run (None in a real run)."""
    return None if _OUT["results"] == RESULTS else _OUT["results"].parent


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def median_time(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, list[float], Any]:
    """Run ``fn`` ``repeats`` times; return (median seconds, all times, last result)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def load_note(before: float | None, after: float | None = None) -> str:
    """One sentence on the machine's load during a run, from 1-minute load averages (None: not recorded)."""
    vals = [v for v in (before, after) if v is not None]
    if not vals:
        return "The machine's load was not recorded."
    cores = os.cpu_count() or 1
    parts = ([f"{before:.1f} before"] if before is not None else []) + (
        [f"{after:.1f} after"] if after is not None else []
    )
    what = f"1-minute load average {' and '.join(parts)} the run"
    # the run's own processes raise the load "after"; other jobs show in the load "before" (or "after" if far above)
    if (before is not None and before > 0.75 * cores) or (after is not None and after > 1.5 * cores):
        return (
            f"{what} on {cores} cores: a shared, loaded machine, so absolute times are inflated and single rounds vary; "
            "quote the ratios."
        )
    return f"{what} on {cores} cores: the machine was otherwise idle."


def write_result(name: str, data: dict[str, Any]) -> Path:
    from codeprior.utils.io import write_json_atomic

    data = {"benchmark": name, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), **data}
    path = _OUT["results"] / f"{name}.json"
    write_json_atomic(path, data)
    return path


def update_doc_section(name: str, markdown: str, doc: Path | None = None, title: str | None = None) -> None:
    """Replace (or append) the ``name`` section of ``doc`` (default docs/benchmarks.md; ``title``: the heading a new
    doc starts with)."""
    from codeprior.utils.io import write_text_atomic

    doc = doc or DOC
    if smoke_dir() is not None:  # a --smoke run writes a copy of the doc into its temporary folder
        doc = _OUT["doc"].parent / doc.name
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = (
        doc.read_text()
        if doc.exists()
        else (title or "# Benchmarks\n\nEvery figure below was produced by the command named beside it.") + "\n"
    )
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    write_text_atomic(doc, text)


def run_records(run_dir: Path) -> dict[str, Any]:
    """The records of a pipeline run's finished stages, found by what each stage wrote (``read_stage_manifest``
    and the stage records), not by folder names: ``tokenizer`` (TokenizerOutputs or None), ``priors``
    (PriorsOutputs or None), ``variants`` (variant name -> TrainOutputs of its first seed) and ``refines``
    (prior -> the refine model's TrainOutputs)."""
    from codeprior.pipeline import PriorsOutputs, TokenizerOutputs, TrainOutputs, read_stage_manifest

    found = [read_stage_manifest(d) for d in sorted(run_dir.iterdir()) if d.is_dir()] if run_dir.is_dir() else []
    done = [m for m in found if m and m.get("status") == "done"]
    out: dict[str, Any] = {"tokenizer": None, "priors": None, "variants": {}, "refines": {}}
    first_seed: dict[str, int] = {}
    for m in done:
        if _is_record(m, TokenizerOutputs):
            out["tokenizer"] = TokenizerOutputs.from_manifest(m)
        elif _is_record(m, PriorsOutputs):
            out["priors"] = PriorsOutputs.from_manifest(m)
        elif _is_record(m, TrainOutputs):
            rec, conf = TrainOutputs.from_manifest(m), m.get("config") or {}
            if rec.objective == "refine" and rec.prior:
                out["refines"][rec.prior] = rec
            elif "variant" in conf:
                name, seed = conf["variant"]["name"], rec.seed
                if name not in first_seed or seed < first_seed[name]:
                    first_seed[name], out["variants"][name] = seed, rec
    return out


def _is_record(manifest: dict[str, Any], record: type) -> bool:
    """Whether a stage manifest's metrics are a ``record``: every field it declares is there (those that may be
    None may be left out, as a given tokenizer's record leaves out its training steps)."""
    import dataclasses
    import typing

    metrics, hints = manifest.get("metrics") or {}, typing.get_type_hints(record)
    return all(f.name in metrics or type(None) in typing.get_args(hints[f.name]) for f in dataclasses.fields(record))
