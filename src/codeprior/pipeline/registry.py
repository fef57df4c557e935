"""The stage registry: each stage module declares its stage (:class:`StageDef`: its name, dependencies, the config
slice its fingerprint hashes and its report sections) and :mod:`codeprior.pipeline.stages` registers the built-in
ones in pipeline order; :func:`codeprior.pipeline.run.build_stages` expands the registered declarations, and the
report stage hands their sections to :func:`codeprior.report.write_report`.

Adding a stage is one module under ``pipeline/stages/`` declaring ``STAGE = StageDef(...)`` plus its registration
(:func:`register_stage`; a test registers a toy stage in the test alone: ``tests/test_stage_registration.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codeprior.pipeline.config import PipelineConfig
from codeprior.pipeline.engine import Stage, StageContext
from codeprior.report import ReportSection

__all__ = [
    "Build",
    "StageDef",
    "ReportSection",
    "STAGE_DEFS",
    "register_stage",
    "unregister_stage",
    "report_sections",
    "outputs_of",
]


def outputs_of(files: type, *extra: str) -> tuple[str, ...]:
    """The top-level names a stage writes in its folder: the first component of each name in its ``FILES`` class
    (``run/model.pt`` -> ``run``), and ``extra`` patterns (``*.safetensors``). What a redo of the stage may remove."""
    names = [v for k, v in vars(files).items() if not k.startswith("_") and isinstance(v, str)]
    return tuple(dict.fromkeys([Path(n).parts[0] for n in names] + list(extra)))


@dataclass(frozen=True)
class Build:
    """What a declaration sees while :func:`~codeprior.pipeline.run.build_stages` expands it."""

    cfg: PipelineConfig
    device: str
    #: the config's fingerprint view (:func:`~codeprior.pipeline.config.fingerprint_dict`), paths inside the run
    #: folder written ``$RUN/...``: what the stages' config slices are cut from
    slices: dict[str, Any]
    #: the names of the stages expanded before this declaration's (the report depends on all of them)
    names: tuple[str, ...] = ()

    @property
    def seed(self) -> dict[str, int]:
        """The run's seed, as the slices of the stages whose result depends on it carry it."""
        return {"seed": self.cfg.seed}


Deps = tuple[str, ...] | Callable[[Build, Any], tuple[str, ...]]
Text = str | Callable[[Build, Any], str]


@dataclass(frozen=True)
class StageDef:
    """The declaration of a stage (or of a family of stages, one per ``instances`` entry: ``train-<run>``).

    ``run(build, ctx, params)`` does the work; ``config(build, params)`` is the config slice its fingerprint hashes
    (change it and the stage and everything downstream redo); ``deps`` the stages it reads; ``instances(cfg)`` the
    ``(stage name, params)`` it expands to (None: one stage named ``name``, params None; an empty list: none, e.g.
    a disabled stage); ``inputs(cfg)`` the hashes of external files it reads (part of the fingerprint);
    ``outputs`` what it writes in its folder (what a redo may remove) and ``run_outputs`` in the run folder itself;
    ``report`` its sections of the report (:class:`codeprior.report.ReportSection`: a rank and a render function).
    """

    name: str
    run: Callable[[Build, StageContext, Any], Any]
    config: Callable[[Build, Any], Any]
    deps: Deps = ()
    instances: Callable[[PipelineConfig], Sequence[tuple[str, Any]]] | None = None
    inputs: Callable[[PipelineConfig], dict[str, str]] | None = None
    description: Text = ""
    outputs: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()
    run_outputs: tuple[str, ...] = ()
    report: tuple[ReportSection, ...] = ()

    def stages(self, b: Build) -> list[Stage]:
        """The engine's stages this declaration expands to under ``b``."""
        cfg, decl = b.cfg, self
        todo = self.instances(cfg) if self.instances is not None else [(self.name, None)]
        out = []
        for name, params in todo:

            def run(ctx: StageContext, params: Any = params) -> Any:
                return decl.run(b, ctx, params)

            def inputs() -> dict[str, str]:
                assert decl.inputs is not None
                return decl.inputs(cfg)

            out.append(
                Stage(
                    name,
                    run,
                    self.deps(b, params) if callable(self.deps) else self.deps,
                    self.config(b, params),
                    inputs=inputs if self.inputs is not None else None,
                    description=self.description(b, params) if callable(self.description) else self.description,
                    outputs=self.outputs() if callable(self.outputs) else self.outputs,
                    run_outputs=self.run_outputs,
                )
            )
        return out


#: the registered stage declarations, in pipeline order (which is also the scheduling priority under ``jobs > 1``)
STAGE_DEFS: dict[str, StageDef] = {}


def register_stage(decl: StageDef, *, before: str | None = None) -> None:
    """Add a stage declaration at the end of the pipeline, or just ``before`` a registered one (``"report"``)."""
    if decl.name in STAGE_DEFS:
        raise ValueError(f"stage {decl.name!r} is already registered")
    if before is None:
        STAGE_DEFS[decl.name] = decl
        return
    if before not in STAGE_DEFS:
        raise ValueError(f"no registered stage {before!r} (stages: {', '.join(STAGE_DEFS)})")
    items = list(STAGE_DEFS.items())
    i = [n for n, _ in items].index(before)
    STAGE_DEFS.clear()
    STAGE_DEFS.update(items[:i] + [(decl.name, decl)] + items[i:])


def unregister_stage(name: str) -> None:
    """Remove a registered declaration (tests that register a toy stage)."""
    del STAGE_DEFS[name]


def report_sections() -> list[ReportSection]:
    """The report sections of every registered stage, in registration order (the report sorts them by rank)."""
    return [section for decl in STAGE_DEFS.values() for section in decl.report]
