"""Benchmarks cannot rot unseen: every benchmark module imports, and every ``from codeprior... import NAME`` in
them (at the top or inside a function, where an import fails only when that part runs) names something that
exists. Two benchmarks once imported a trainer helper removed in a refactor, and nothing noticed."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys

import pytest
from doc_snippets import ROOT

BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_imports_resolve(path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))  # benchmarks import their siblings (_common, ...)
    spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # top-level imports; `if __name__ == "__main__"` keeps the work out
    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "codeprior":
            target = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(target, alias.name):
                    try:  # a submodule imported by name
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        missing.append(f"line {node.lineno}: from {node.module} import {alias.name}")
    assert not missing, f"{path.name}: {missing}"
