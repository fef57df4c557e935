"""``jobs > 1``: independent stages run at the same time in forked processes, with the serial run's results."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from codeprior.errors import CodepriorError
from codeprior.pipeline.engine import Stage, read_stage_manifest, run_stages


def quiet(msg: str) -> None:
    pass


def diamond(tmp_path: Path, fail: str | None = None, sleep: float = 0.0) -> list[Stage]:
    """a -> (b, c) -> d. Each stage writes its pid, its time span, torch's thread count and a value from upstream."""

    def body(name: str):
        def run(ctx):
            import torch

            t0 = time.time()
            time.sleep(sleep)
            if name == fail:
                raise CodepriorError(f"{name}: bad input")
            if name == "boom" or (fail == "crash" and name == "b"):
                raise RuntimeError("unexpected")
            up = sum(json.loads((ctx.stage_dir(d) / "out.json").read_text())["value"] for d in sorted(ctx.upstream))
            g = torch.Generator().manual_seed(len(name))
            value = up + float(torch.randn(3, generator=g).sum())
            (ctx.dir / "out.json").write_text(
                json.dumps(
                    {"value": value, "pid": os.getpid(), "span": [t0, time.time()], "threads": torch.get_num_threads()}
                )
            )
            return {"value": value}

        return run

    return [
        Stage("a", body("a"), (), {"x": 1}),
        Stage("b", body("b"), ("a",), {}),
        Stage("c", body("c"), ("a",), {}),
        Stage("d", body("d"), ("b", "c"), {}),
    ]


def _out(run: Path, name: str) -> dict:
    return json.loads((run / name / "out.json").read_text())


def test_parallel_runs_independent_stages_at_once_with_serial_results(tmp_path):
    run_stages(diamond(tmp_path), tmp_path / "serial", log=quiet)
    res = run_stages(diamond(tmp_path, sleep=0.5), tmp_path / "par", log=quiet, jobs=2, threads=1)
    assert sorted(r.name for r in res) == ["a", "b", "c", "d"]
    b, c = _out(tmp_path / "par", "b"), _out(tmp_path / "par", "c")
    assert b["pid"] != c["pid"] != os.getpid()
    assert b["span"][0] < c["span"][1] and c["span"][0] < b["span"][1], "b and c must overlap in time"
    assert b["threads"] == c["threads"] == 1
    for s in "abcd":
        assert _out(tmp_path / "par", s)["value"] == _out(tmp_path / "serial", s)["value"]
        m = read_stage_manifest(tmp_path / "par" / s)
        assert m["status"] == "done" and m["metrics"]["value"] == _out(tmp_path / "par", s)["value"]
    # a second call skips everything, in parallel mode too
    again = run_stages(diamond(tmp_path), tmp_path / "par", log=quiet, jobs=2)
    assert [r.action for r in again] == ["skipped"] * 4


def test_parallel_error_lets_the_sibling_finish_and_skips_dependants(tmp_path):
    with pytest.raises(CodepriorError, match="c: bad input"):
        run_stages(diamond(tmp_path, fail="c", sleep=0.3), tmp_path / "run", log=quiet, jobs=2)
    assert read_stage_manifest(tmp_path / "run" / "b")["status"] == "done"
    failed = read_stage_manifest(tmp_path / "run" / "c")
    assert failed["status"] == "failed" and "bad input" in failed["error"]
    assert read_stage_manifest(tmp_path / "run" / "d") is None
    # the next call resumes the failed stage and finishes the run
    res = run_stages(diamond(tmp_path), tmp_path / "run", log=quiet, jobs=2)
    assert {r.name: r.action for r in res} == {"a": "skipped", "b": "skipped", "c": "resumed", "d": "ran"}


def test_parallel_unexpected_exception_is_reported_with_the_stage_name(tmp_path):
    with pytest.raises(CodepriorError, match="stage b failed: RuntimeError: unexpected"):
        run_stages(diamond(tmp_path, fail="crash"), tmp_path / "run", log=quiet, jobs=2)
    assert read_stage_manifest(tmp_path / "run" / "b")["status"] == "failed"


def test_parallel_until_and_bad_jobs(tmp_path):
    res = run_stages(diamond(tmp_path), tmp_path / "run", log=quiet, jobs=2, until="c")
    assert sorted(r.name for r in res) == ["a", "c"]  # c needs a only: b, listed before it, is not run
    with pytest.raises(CodepriorError, match="jobs"):
        run_stages(diamond(tmp_path), tmp_path / "run2", log=quiet, jobs=0)


def test_a_wide_stage_runs_alone_with_its_threads(tmp_path):
    stages = diamond(tmp_path, sleep=0.3)
    stages[1].threads = 2  # b takes both cores: c must not run beside it
    run_stages(stages, tmp_path / "par", log=quiet, jobs=2, threads=1)
    b, c = _out(tmp_path / "par", "b"), _out(tmp_path / "par", "c")
    assert b["threads"] == 2 and c["threads"] == 1
    assert b["span"][1] <= c["span"][0] or c["span"][1] <= b["span"][0], "b must run alone"
    serial = diamond(tmp_path)
    serial[1].threads = 2
    run_stages(serial, tmp_path / "serial", log=quiet)
    assert _out(tmp_path / "serial", "b")["threads"] == 2
    assert _out(tmp_path / "serial", "d")["value"] == _out(tmp_path / "par", "d")["value"]
