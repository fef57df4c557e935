"""Adding a stage is one module plus its registration: a toy stage, declared and registered in this test alone,
expands in ``build_stages``, runs (and skips, and redoes) through ``run_pipeline`` and adds its section to the report."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from codeprior.errors import CodepriorError
from codeprior.pipeline import config_from_dict, demo_config, read_stage_manifest, run_pipeline
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.registry import STAGE_DEFS, Build, StageDef, register_stage, unregister_stage
from codeprior.pipeline.run import build_stages
from codeprior.pipeline.stages.data import DataOutputs
from codeprior.report import Doc, ReportSection, record

CALLS: list[str] = []


# ------------------------------------------------------------------ the toy stage (what a new stage module would hold)
class FILES:
    """What the toy stage writes in ``RUN/toy-<k>/``."""

    counts = "counts.json"


@dataclass(frozen=True)
class ToyOutputs(StageOutputs):
    """The toy's record: how many train images per class it counted."""

    per_class: float
    factor: int


def run_toy(b: Build, ctx, factor: int) -> ToyOutputs:
    """Read the data stage's record (a declared dependency) and write one file."""
    CALLS.append(ctx.name)
    data = DataOutputs.from_manifest(ctx.upstream["data"])
    per_class = data.train_size / data.num_classes
    (ctx.dir / FILES.counts).write_text(json.dumps({"per_class": per_class, "factor": factor}))
    return ToyOutputs(per_class=per_class, factor=factor)


def report_toy(doc: Doc, run_dir, manifests: dict[str, dict]) -> None:
    doc.h(2, "Toy counts", "toy")
    for name in (n for n in manifests if n.startswith("toy-")):
        toy = record(manifests, name, ToyOutputs)
        doc.p(f"{name}: {toy.per_class:g} train images per class, factor {toy.factor}" if toy else "Stage not run.")


TOY = StageDef(
    "toy",
    run=run_toy,
    config=lambda b, factor: {"factor": factor, "data": b.slices["data"], **b.seed},  # what its fingerprint hashes
    deps=("data",),
    instances=lambda cfg: [(f"toy-{k}", k) for k in (1, 2)],  # a family, as train-<run>
    description=lambda b, factor: f"count the classes (factor {factor})",
    outputs=(FILES.counts,),
    report=(ReportSection(55, report_toy),),  # after the priors, before the substitution test
)


@pytest.fixture
def toy_stage():
    """Register the toy before the report for one test; unregister it afterwards (the registry is as before)."""
    before = list(STAGE_DEFS)
    CALLS.clear()
    register_stage(TOY, before="report")
    yield
    unregister_stage("toy")
    assert list(STAGE_DEFS) == before


def _cfg(tmp_path, tiny_pipeline, seed: int = 0):
    return config_from_dict({**tiny_pipeline(tmp_path / "data"), "seed": seed}, "tiny.yaml")


def test_unregistered_toy_is_not_a_stage(tmp_path):
    """Without the registration there is no toy stage (so the tests below depend on it)."""
    assert not any(s.name.startswith("toy") for s in build_stages(demo_config(), "cpu"))
    with pytest.raises(CodepriorError, match="no such stage: toy-1"):
        run_pipeline(demo_config(), tmp_path / "run", until="toy-1", dry_run=True, log=lambda s: None)


def test_registered_toy_expands_before_the_report(toy_stage):
    stages = {s.name: s for s in build_stages(demo_config(), "cpu")}
    names = list(stages)
    assert names[-3:] == ["toy-1", "toy-2", "report"]
    assert stages["toy-2"].deps == ("data",) and stages["toy-2"].config["factor"] == 2
    assert {"toy-1", "toy-2"} <= set(stages["report"].deps)  # the report reads every stage before it
    assert stages["toy-1"].description == "count the classes (factor 1)"
    with pytest.raises(ValueError, match="already registered"):
        register_stage(TOY)


def test_toy_stage_runs_skips_and_reports(tmp_path, toy_stage, fmnist_idx, tiny_pipeline, capsys):
    from codeprior.cli import main

    fmnist_idx(tmp_path / "data", n_train=200, n_test=60)
    run = tmp_path / "run"
    res = run_pipeline(_cfg(tmp_path, tiny_pipeline), run, until="toy-2", log=lambda s: None)
    assert [(r.name, r.action) for r in res] == [("data", "ran"), ("toy-2", "ran")]  # only what toy-2 needs
    m = read_stage_manifest(run / "toy-2")
    assert m["status"] == "done" and m["config"]["factor"] == 2 and m["files"] == [FILES.counts]
    assert m["metrics"] == {"per_class": 20.0, "factor": 2}  # 200 train images, 10 classes
    assert CALLS == ["toy-2"]

    res = run_pipeline(_cfg(tmp_path, tiny_pipeline), run, until="toy-2", log=lambda s: None)
    assert [r.action for r in res] == ["skipped", "skipped"] and CALLS == ["toy-2"]
    res = run_pipeline(_cfg(tmp_path, tiny_pipeline, seed=1), run, until="toy-2", log=lambda s: None)
    assert [r.action for r in res] == ["skipped", "ran"]  # its config slice holds the seed, the data stage's not
    assert CALLS == ["toy-2", "toy-2"]

    # the report shows the section the toy declared, where its rank puts it
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert "## Toy counts" in md and "toy-2: 20 train images per class, factor 2" in md
    assert md.index("## Codebook priors") < md.index("## Toy counts") < md.index("## Prior substitution test")
