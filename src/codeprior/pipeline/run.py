"""The codeprior stages of a config (:func:`build_stages`) and the run itself (:func:`run_pipeline`)."""

from __future__ import annotations

import json
import os
import platform
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from codeprior import __version__, runtime
from codeprior.errors import CodepriorError
from codeprior.evaluate_settings import SPLIT_REFERENCES
from codeprior.pipeline.config import IDX_DATASETS, PipelineConfig, fingerprint_dict
from codeprior.pipeline.engine import Stage, StageResult, plan_run, run_stages
from codeprior.pipeline.registry import STAGE_DEFS, Build, outputs_of
from codeprior.pipeline.stages import report, train  # the package registers the built-in stages
from codeprior.pipeline.stages.evaluate import metrics_table_text
from codeprior.pipeline.validation import check_values

__all__ = ["environment", "outputs_of", "build_stages", "run_inputs", "run_pipeline"]


def environment(device: str) -> dict[str, Any]:
    """Python/torch versions, CPU cores and the device, recorded in every manifest (and shown in the report)."""
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "codeprior": __version__,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "platform": platform.platform(terse=True),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _run_relative(obj: Any, run_dir: Path | None) -> Any:
    """A config slice with every absolute path inside ``run_dir`` written as ``$RUN/<relative>``: an input kept in
    the run folder leaves the fingerprints unchanged when the folder moves (paths elsewhere are as they were)."""
    if run_dir is None:
        return obj
    if isinstance(obj, dict):
        return {k: _run_relative(v, run_dir) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_run_relative(v, run_dir) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj):
        try:
            return "$RUN/" + Path(obj).relative_to(run_dir).as_posix()
        except ValueError:
            return obj
    return obj


def build_stages(cfg: PipelineConfig, device: str, run_dir: str | os.PathLike | None = None) -> list[Stage]:
    """The stages of a config, in order: every registered declaration (:data:`~codeprior.pipeline.registry.STAGE_DEFS`)
    expanded, each stage with its config slice (what its fingerprint hashes), deps and the names it writes
    (``Stage.outputs``); paths inside ``run_dir`` enter the slices relative to it."""
    # the slices come from fingerprint_dict: renamed keys hash under their old names (finished stages stay valid)
    c = _run_relative(fingerprint_dict(cfg), Path(run_dir).resolve() if run_dir is not None else None)
    stages: list[Stage] = []
    for decl in STAGE_DEFS.values():
        stages += decl.stages(Build(cfg, device, c, tuple(s.name for s in stages)))
    return stages


def _check_overrides(
    cfg: PipelineConfig, src: str, names: list[str], force: typing.Sequence[str], until: str | None
) -> None:
    for f in list(force) + ([until] if until else []):
        if f not in names:
            raise CodepriorError(f"no such stage: {f} (stages: {', '.join(names)})")
    for name in cfg.stage_threads:
        if name not in names:
            raise CodepriorError(f"{src}: stage_threads: no such stage {name!r} (stages: {', '.join(names)})")


def run_inputs(cfg: PipelineConfig, config_file: str | os.PathLike | None = None) -> dict[str, str]:
    """The files and folders a run reads (what -> path): never deleted, and refused where a stage would rewrite
    them (:func:`codeprior.pipeline.engine.check_run_folder`)."""
    given = {
        "the config file": config_file,
        "data.data_dir": cfg.data.data_dir,
        "data.dataset": cfg.data.dataset if cfg.data.dataset not in IDX_DATASETS else None,
        "tokenizer.checkpoint": cfg.tokenizer.checkpoint,
        "classifier.checkpoint": cfg.classifier.checkpoint,
        "classifier.inception_weights": cfg.classifier.inception_weights,
        "evaluate.reference": cfg.evaluate.reference if cfg.evaluate.reference not in SPLIT_REFERENCES else None,
    }
    return {k: str(v) for k, v in given.items() if v}


def run_pipeline(
    cfg: PipelineConfig,
    out: str | os.PathLike,
    *,
    force: typing.Sequence[str] = (),
    until: str | None = None,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    config_file: str | os.PathLike | None = None,
) -> list[StageResult]:
    """Run (or with ``dry_run`` only plan) every stage of ``cfg`` in ``out``; print the report path and metrics.

    ``--dry-run`` and a run share every check before the first stage: the config's values (again, after the
    command line's overrides), the stage names, and the run folder (foreign files, inputs inside it: ``config_file``
    is one of them).
    """
    src = str(config_file) if config_file is not None else "<config>"
    check_values(cfg, src)  # the command line may have overridden threads / jobs since the config was loaded
    if cfg.threads == 0:  # 0 = torch's default, as every command's --threads: the same as leaving it unset
        cfg.threads = None
    dev = runtime.resolve_device(cfg.device, where="device")  # checked here; recorded as the config names it,
    device = dev.type if cfg.device == "auto" else str(dev)  # so `auto` -> `cuda` lets each rank pick its GPU
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    stages = build_stages(cfg, device, out)
    _check_overrides(cfg, src, [s.name for s in stages], force, until)
    for s in stages:
        s.threads = cfg.stage_threads.get(s.name)
    out = Path(out)
    inputs = run_inputs(cfg, config_file)
    plan = plan_run(stages, out, force, until, inputs)
    if dry_run:
        for name, action in plan:
            log(f"{action:>6}  {name}")
        return []
    env = environment(device)
    log(
        f"codeprior pipeline '{cfg.name}' -> {out} ({len(stages)} stages; device {device}, "
        f"{env['cpu_cores']} cores, torch {env['torch']})"
    )
    jobs = cfg.jobs if device == "cpu" else 1  # forked stage processes cannot share a CUDA context
    if jobs != cfg.jobs:
        log(f"jobs: {cfg.jobs} -> 1 on {device} (parallel stages are for the CPU)")
    results = run_stages(
        stages,
        out,
        force=force,
        until=until,
        config=cfg,
        log=log,
        environment=env,
        jobs=jobs,
        threads=cfg.threads,
        inputs=inputs,
    )
    if any(r.name == "report" for r in results):
        log("")
        log(metrics_table_text(out))
        if (out / report.FILES.results_md).is_file():  # the report stage wrote the table and the verdict
            log("")
            log((out / report.FILES.results_md).read_text())
        log(f"\nreport: {(out / report.FILES.html).resolve()}\n        {(out / report.FILES.markdown).resolve()}")
    return results


def _main(argv: list[str]) -> int:
    """``python -m codeprior.pipeline train-worker SPEC.json``: the entry point torchrun launches on every rank."""
    if len(argv) != 2 or argv[0] != "train-worker":
        print("usage: python -m codeprior.pipeline train-worker SPEC.json", file=sys.stderr)
        return 2
    try:
        train.train_worker(json.loads(Path(argv[1]).read_text()))
    except CodepriorError as e:
        print(f"codeprior: error: {e}", file=sys.stderr)
        return 2
    return 0
