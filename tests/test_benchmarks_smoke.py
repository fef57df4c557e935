"""Benchmarks cannot rot unseen: every benchmark runs its ``--smoke`` mode (its real code path at tiny sizes, in
seconds, on tiny random models and images built in a temporary folder), writes its result there and leaves
benchmarks/results/ and docs/ alone; and every ``from codeprior... import NAME`` in them (at the top or inside a
function, where an import fails only when that part runs) names something that exists. Two benchmarks once
imported a trainer helper removed in a refactor, and nothing noticed."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from doc_snippets import ROOT

MODULES = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")
# the benchmarks (a command each); the others are their shared pieces
RUNNABLE = sorted(p.stem for p in MODULES if 'if __name__ == "__main__"' in p.read_text())
# gpu_check's --smoke is its --dry-run, which tests/test_gpu_check.py runs and checks part by part
COVERED_ELSEWHERE = {"gpu_check": "tests/test_gpu_check.py"}
# over ~20 s on 2 cores: the study trains 17 runs (the tiny budget's cells) however few their steps
SLOW = {"prior_study"}


def _snapshot() -> dict[str, float]:
    """mtime of every file a real run writes: benchmarks/results/, docs/*.md and docs/img/."""
    files = [
        *(ROOT / "benchmarks" / "results").glob("*"),
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "docs/img").glob("*"),
    ]
    return {str(p): p.stat().st_mtime for p in files}


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory) -> Path:
    """One tiny pipeline run for every smoke run that needs one (they copy it: ``CODEPRIOR_SMOKE_RUN``)."""
    from benchmarks._smoke import SHARED_STAGES, tiny_run

    root = tmp_path_factory.mktemp("smoke-run")
    tiny_run(root, until=SHARED_STAGES)
    return root


def test_every_benchmark_has_a_smoke_mode():
    assert len(RUNNABLE) >= 16, RUNNABLE
    for name in RUNNABLE:
        assert '"--smoke"' in (ROOT / "benchmarks" / f"{name}.py").read_text(), f"{name}: no --smoke mode"
    for name, test in COVERED_ELSEWHERE.items():
        assert (ROOT / test).is_file() and name in RUNNABLE


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in RUNNABLE if n not in COVERED_ELSEWHERE],
)
def test_smoke(name: str, tmp_path: Path, shared_run: Path) -> None:
    before = _snapshot()
    env = dict(
        os.environ,
        CODEPRIOR_SMOKE_RUN=str(shared_run),
        CODEPRIOR_SMOKE_DIR=str(tmp_path / "smoke"),
        CODEPRIOR_NO_PROGRESS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        OMP_NUM_THREADS="1",
    )
    p = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = list((tmp_path / "smoke" / "results").glob("*.json")) + list((tmp_path / "smoke").glob("*.json"))
    assert results, f"{name} --smoke wrote no result under {tmp_path / 'smoke'}"
    for r in results:
        assert json.loads(r.read_text())
    assert _snapshot() == before, f"{name} --smoke touched benchmarks/results or docs/"


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_benchmark_imports_resolve(path: Path) -> None:
    importlib.import_module(f"benchmarks.{path.stem}")  # top level; `if __name__ == "__main__"` keeps the work out
    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] in ("codeprior", "benchmarks")
        ):
            target = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(target, alias.name):
                    try:  # a submodule imported by name
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        missing.append(f"line {node.lineno}: from {node.module} import {alias.name}")
    assert not missing, f"{path.name}: {missing}"
