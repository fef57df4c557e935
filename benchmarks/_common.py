"""Shared benchmark plumbing: machine description, median timing, JSON results, and docs/benchmarks.md sections.

Each benchmark owns one section of ``docs/benchmarks.md`` between ``<!-- BEGIN name -->`` and
``<!-- END name -->`` and rewrites only that section, so benchmarks can be re-run independently.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"

sys.path.insert(0, str(ROOT / "src"))


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
    path = RESULTS / f"{name}.json"
    write_json_atomic(path, data)
    return path


def update_doc_section(name: str, markdown: str, doc: Path = DOC) -> None:
    """Replace (or append) the ``name`` section of ``doc`` (default docs/benchmarks.md)."""
    from codeprior.utils.io import write_text_atomic

    doc.parent.mkdir(parents=True, exist_ok=True)
    text = (
        doc.read_text()
        if doc.exists()
        else "# Benchmarks\n\nEvery figure below was produced by the command named beside it.\n"
    )
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    write_text_atomic(doc, text)
