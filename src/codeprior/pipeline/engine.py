"""The stage engine of ``codeprior pipeline``: stages, manifests, fingerprints, skip / resume / force, and jobs.

The engine is generic: it knows nothing of codeprior's stages (``codeprior.pipeline.stages``).

A run is a folder ``RUN/`` with one sub-folder per stage holding its outputs and a ``manifest.json``. The manifest is
also the stage's record of what it owns: the names it declares (``Stage.outputs``) and every entry it wrote
(``files``); a redo removes only those, and a file the record does not name (a user's file, an input the config
points to) is never deleted: :func:`check_run_folder` refuses it before any stage runs, or leaves an input where it
is (:mod:`codeprior.pipeline.run_folder`). Paths of a stage's outputs inside the run folder are stored relative to it (records:
:mod:`codeprior.pipeline.outputs`), so a moved run folder keeps working. A stage is
skipped when its manifest says ``done`` and its fingerprint (config slice, external inputs, upstream run ids) is
unchanged, resumed when the manifest says ``running`` / ``failed`` / ``interrupted`` with the same fingerprint, and
redone otherwise; ``force`` redoes the named stages and everything downstream.

``jobs > 1`` runs independent stages at the same time, each in its own forked process with ``threads`` torch
threads. A stage's result depends on its inputs and its thread count only, so a run with ``jobs: 2, threads: 1``
gives the same files as ``jobs: 1, threads: 1`` (tested); on a 2-core machine two one-thread stages at once finish
sooner than one two-thread stage after the other, because these small models do not scale to two threads
(docs/benchmarks.md#demo-recipe).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
import typing
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any, cast

import torch

from codeprior import __version__
from codeprior.errors import CodepriorError
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.run_folder import (
    MANIFEST,
    check_run_folder,
    clear_own,
    owns,
    read_stage_manifest,
    record_of,
    written,
)
from codeprior.utils.io import disk_error, write_json_atomic

__all__ = [
    "MANIFEST",
    "Outputs",
    "Stage",
    "StageContext",
    "StageResult",
    "read_stage_manifest",
    "record_of",
    "owns",
    "check_run_folder",
    "fingerprint",
    "downstream_closure",
    "check_stages",
    "decide",
    "plan_stages",
    "plan_run",
    "run_stages",
]


@dataclass
class StageContext:
    """What a running stage sees: its folder, the run folder, whether to resume, and upstream manifests."""

    name: str
    dir: Path
    run_dir: Path
    resume: bool
    upstream: dict[str, dict]
    config: Any = None
    log: Callable[[str], None] = print
    inputs: dict[str, str] = field(default_factory=dict)

    def stage_dir(self, name: str) -> Path:
        """Folder of an upstream stage (only declared dependencies may be read)."""
        if name not in self.upstream:
            raise KeyError(f"stage {self.name!r} did not declare {name!r} as a dependency")
        return self.run_dir / name


class Outputs(typing.Protocol):
    """What a stage may return instead of a metrics dict: a record that turns itself into the manifest's metrics."""

    def to_metrics(self) -> dict[str, Any]: ...


@dataclass
class Stage:
    """One pipeline step. ``run(ctx)`` writes its outputs under ``ctx.dir`` and returns a metrics dict or an
    :class:`Outputs` record (stored as the manifest's ``metrics``)."""

    name: str
    run: Callable[[StageContext], dict | Outputs | None]
    deps: tuple[str, ...] = ()
    config: Any = None
    inputs: Callable[[], dict[str, str]] | None = None
    description: str = ""
    threads: int | None = None  # torch threads of this stage (None: the run's); part of what decides its result
    outputs: tuple[str, ...] = ()  # names (fnmatch patterns) the stage writes in its folder: what a redo may remove
    run_outputs: tuple[str, ...] = ()  # names it writes in the run folder itself (the report's files)


@dataclass
class StageResult:
    name: str
    action: str  # "ran" | "resumed" | "skipped"
    manifest: dict


def canonical(obj: Any) -> str:
    """Sorted-key compact JSON: the text every fingerprint hashes."""
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def fingerprint(config: Any, inputs: dict[str, str], upstream: Mapping[str, str | None]) -> str:
    """Hash deciding whether a finished stage is still valid: its config, external inputs and upstream run ids."""
    return hashlib.sha256(canonical({"config": config, "inputs": inputs, "upstream": upstream}).encode()).hexdigest()


def downstream_closure(stages: list[Stage], names: typing.Iterable[str]) -> set[str]:
    """``names`` plus every stage that depends on them, directly or not."""
    out = set(names)
    for s in stages:  # stages are in topological order
        if any(d in out for d in s.deps):
            out.add(s.name)
    return out


def upstream_closure(stages: list[Stage], name: str) -> set[str]:
    """``name`` plus every stage it depends on, directly or not."""
    deps = {s.name: s.deps for s in stages}
    out, todo = set(), [name]
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            todo.extend(deps[n])
    return out


def check_stages(stages: list[Stage]) -> None:
    seen: set[str] = set()
    for s in stages:
        if s.name in seen:
            raise ValueError(f"duplicate stage {s.name!r}")
        for d in s.deps:
            if d not in seen:
                raise ValueError(f"stage {s.name!r} depends on {d!r}, which does not come before it")
        seen.add(s.name)


def decide(s: Stage, old: dict | None, upstream: Mapping[str, str | None] | None, forced: bool = False) -> str:
    """The one place a stage's fate is decided: ``"run"`` (no record), ``"redo"`` (forced, an upstream stage reruns:
    ``upstream`` None, or the fingerprint of its config, inputs and ``upstream`` run ids changed), ``"skip"`` (same
    fingerprint, ``done``) or ``"resume"`` (same fingerprint, ``running`` / ``failed`` / ``interrupted``)."""
    if old is None:
        return "run"
    if forced or upstream is None:
        return "redo"
    if old.get("fingerprint") != fingerprint(s.config, s.inputs() if s.inputs else {}, upstream):
        return "redo"
    return "skip" if old.get("status") == "done" else "resume"


def plan_stages(
    stages: list[Stage], run_dir: str | os.PathLike, force: typing.Iterable[str] = ()
) -> list[tuple[str, str]]:
    """What :func:`run_stages` does, decided before anything runs (:func:`decide` for each stage, in order):
    ``[(stage, "skip"|"run"|"resume"|"redo")]``.

    Upstream stages that would rerun make their dependants rerun too (they get new run ids).
    """
    run_dir = Path(run_dir)
    check_stages(stages)
    forced = downstream_closure(stages, force)
    rerun: set[str] = set()
    plan = []
    for s in stages:
        old = read_stage_manifest(run_dir / s.name)
        changed = any(d in rerun for d in s.deps)
        ups = None if changed else {d: (read_stage_manifest(run_dir / d) or {}).get("run_id") for d in s.deps}
        action = decide(s, old, ups, s.name in forced)
        if action != "skip":
            rerun.add(s.name)
        plan.append((s.name, action))
    return plan


def plan_run(
    stages: list[Stage],
    run_dir: str | os.PathLike,
    force: typing.Iterable[str] = (),
    until: str | None = None,
    inputs: Mapping[str, str] = {},
) -> list[tuple[str, str]]:
    """:func:`plan_stages` of the stages a run executes (``until``: that stage and what it needs), after
    :func:`check_run_folder`: what ``--dry-run`` prints and what :func:`run_stages` checks before any work."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CodepriorError(f"--out {run_dir}: not a folder")
    plan = plan_stages(stages, run_dir, force)
    if until is not None:
        needed = upstream_closure(stages, until)
        plan = [(n, a) for n, a in plan if n in needed]
    check_run_folder(stages, run_dir, dict(plan), inputs)
    return plan


class _Run:
    """The bookkeeping of one :func:`run_stages` call: manifests in, manifests out."""

    def __init__(
        self,
        run_dir: Path,
        actions: Mapping[str, str],
        config: Any,
        log: Callable[[str], None],
        environment: dict[str, Any] | None,
    ) -> None:
        self.run_dir, self.actions, self.config, self.log = run_dir, actions, config, log
        self.environment = environment or {}
        self.manifests: dict[str, dict] = {}
        self.results: list[StageResult] = []
        self._t0: dict[str, float] = {}  # stage -> perf_counter() when it started
        self._foreign: dict[str, set[str]] = {}  # stage -> entries of its folder it does not own (inputs left there)

    def start(self, s: Stage) -> tuple[dict, StageContext] | None:
        """Skip ``s`` (returns None) or write its ``running`` manifest and return it with the stage's context, as
        the plan decided (:func:`plan_stages`: upstream stages the plan skips keep their run ids, so the fingerprint
        is the one the plan compared)."""
        d = self.run_dir / s.name
        old = record_of(d, s.name) if d.is_dir() else None
        action = self.actions[s.name]
        # the manifest of the same work (fingerprint unchanged, not forced): skipped when done, else resumed
        same = old if action in ("skip", "resume") else None
        if same is not None and action == "skip":
            self.log(f"[{s.name}] up to date, skipped ({same.get('seconds', 0):.1f} s when it ran)")
            self.manifests[s.name] = same
            self.results.append(StageResult(s.name, "skipped", same))
            return None
        inputs = s.inputs() if s.inputs else {}
        upstream = {dep: self.manifests[dep]["run_id"] for dep in s.deps}
        fp = fingerprint(s.config, inputs, upstream)
        resume = same is not None
        if not resume:
            clear_own(s, d, old)
        d.mkdir(parents=True, exist_ok=True)
        self._foreign[s.name] = {e for e in os.listdir(d) if not owns(s, same, e)}
        previous = float(same.get("seconds", 0.0)) if same is not None else 0.0
        manifest = {
            "stage": s.name,
            "status": "running",
            "description": s.description,
            "fingerprint": fp,
            "config": s.config,
            "inputs": inputs,
            "upstream": upstream,
            "metrics": {},
            "seconds": previous,
            "attempts": (int(same.get("attempts", 0)) + 1) if same is not None else 1,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "codeprior_version": __version__,
            "environment": self.environment,
            "files": written(s, d, self._foreign[s.name]),  # what it owns here (the declared outputs besides)
        }
        write_json_atomic(d / MANIFEST, manifest)
        self.log(f"[{s.name}] {'resuming' if resume else 'running'}{': ' + s.description if s.description else ''}")
        ctx = StageContext(
            s.name, d, self.run_dir, resume, {dep: self.manifests[dep] for dep in s.deps}, self.config, self.log, inputs
        )
        manifest["_dir"] = str(d.absolute())
        self._t0[s.name] = time.perf_counter()
        return manifest, ctx

    def finish(
        self, s: Stage, manifest: dict, metrics: dict | None, error: str | None = None, interrupted: bool = False
    ) -> None:
        """Write the final manifest of ``s``: ``done`` with its metrics, or ``failed`` / ``interrupted``."""
        previous = manifest["seconds"]  # seconds of earlier attempts (start() wrote them)
        manifest["seconds"] = previous + time.perf_counter() - self._t0.pop(s.name)
        d = self.run_dir / s.name
        manifest["files"] = written(s, d, self._foreign[s.name])
        on_disk = {k: v for k, v in manifest.items() if not k.startswith("_")}
        if error is not None or interrupted:
            on_disk.update(status="interrupted" if interrupted else "failed", error=error or "KeyboardInterrupt")
            write_json_atomic(d / MANIFEST, on_disk)
            return
        on_disk.update(
            status="done", metrics=metrics or {}, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), run_id=uuid.uuid4().hex
        )
        write_json_atomic(d / MANIFEST, on_disk)
        manifest.update(on_disk)
        self.manifests[s.name] = manifest
        self.results.append(StageResult(s.name, "resumed" if manifest["attempts"] > 1 else "ran", manifest))
        self.log(f"[{s.name}] done in {manifest['seconds'] - previous:.1f} s")


def _metrics(result: dict | Outputs | None, run_dir: Path) -> dict:
    """A stage's return value as the plain dict its manifest stores (a record's paths in ``run_dir`` relative)."""
    if result is None:
        return {}
    if isinstance(result, StageOutputs):
        return result.to_metrics(base=run_dir)
    return result.to_metrics() if hasattr(result, "to_metrics") else result


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:500] if str(e) else type(e).__name__


def run_stages(
    stages: list[Stage],
    run_dir: str | os.PathLike,
    *,
    force: typing.Iterable[str] = (),
    until: str | None = None,
    config: Any = None,
    log: Callable[[str], None] = print,
    environment: dict[str, Any] | None = None,
    jobs: int = 1,
    threads: int | None = None,
    inputs: Mapping[str, str] = {},
) -> list[StageResult]:
    """Run ``stages`` under ``run_dir`` with skip / resume / force semantics (module docstring).

    ``until`` runs only the named stage and the stages it depends on, directly or not (in list order). A stage that
    raises leaves a manifest with ``status: failed`` (``interrupted`` on Ctrl-C) and the error re-raises; the next
    call resumes it. ``jobs > 1`` runs up to ``jobs`` ready stages at once in forked processes with ``threads``
    torch threads each (the machine's cores / jobs when None); stages already running finish before an error
    re-raises. Before any stage runs, :func:`plan_run` checks the run folder (``inputs``: files the run reads,
    never deleted).
    """
    run_dir = Path(run_dir)
    force = list(force)
    check_stages(stages)
    names = [s.name for s in stages]
    for f in force:
        if f not in names:
            raise CodepriorError(f"--force {f}: no such stage (stages: {', '.join(names)})")
    if until is not None and until not in names:
        raise CodepriorError(f"--until {until}: no such stage (stages: {', '.join(names)})")
    if jobs < 1:
        raise CodepriorError(f"jobs: must be >= 1, got {jobs}")
    plan = dict(plan_run(stages, run_dir, force, until, inputs))  # skip / resume / redo, decided once
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(run_dir, plan, config, log, environment)
    todo = list(stages)
    if until is not None:
        needed = upstream_closure(stages, until)
        todo = [s for s in stages if s.name in needed]
    if jobs == 1:
        for s in todo:
            started = run.start(s)
            if started is None:
                continue
            manifest, ctx = started
            try:
                with _torch_threads(s.threads):
                    metrics = _metrics(s.run(ctx), run_dir)
            except BaseException as e:
                with contextlib.suppress(CodepriorError):  # a full disk must not hide the stage's own error
                    run.finish(s, manifest, None, _error_text(e), interrupted=isinstance(e, KeyboardInterrupt))
                raise
            run.finish(s, manifest, metrics)
        return run.results
    _run_parallel(run, todo, jobs, threads or max(1, (os.cpu_count() or 1) // jobs))
    return run.results


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run a serial stage with its own thread count (``Stage.threads``), then restore the run's."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- jobs > 1
def _child(s: Stage, ctx: StageContext, threads: int, slot: int, conn: Any) -> None:
    """Body of a forked stage process: run the stage with ``threads`` torch threads, send back the outcome."""
    code = 0
    try:
        torch.set_num_threads(threads)
        os.environ["CODEPRIOR_PROGRESS_POSITION"] = str(slot)
        os.environ["CODEPRIOR_PROGRESS_PREFIX"] = f"[{s.name}] "
        metrics = _metrics(s.run(ctx), ctx.run_dir)
        conn.send(("done", metrics, None))
    except KeyboardInterrupt:
        conn.send(("interrupted", None, "KeyboardInterrupt"))
        code = 1
    except BaseException as e:  # the parent writes the failed manifest and re-raises
        e = disk_error(e, guess_full=False) or e  # a full or failing disk is one line, like a CodepriorError
        if not isinstance(e, CodepriorError):
            traceback.print_exc()
        conn.send(("codeprior-error" if isinstance(e, CodepriorError) else "failed", str(e), _error_text(e)))
        code = 1
    finally:
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no atexit handlers of the parent's state in the child


def _run_parallel(run: _Run, todo: list[Stage], jobs: int, threads: int) -> None:
    """Schedule ``todo`` over forked processes, ready stages first in list order, within ``jobs * threads`` cores.

    A stage takes ``Stage.threads`` cores (default ``threads``); one wider than what is free waits until it fits
    (or runs alone), so that a stage of several threads is never oversubscribed.
    """
    capacity = jobs * threads
    ctx_mp = mp.get_context("fork")
    pending = list(todo)
    running: dict[Any, tuple[Stage, dict, Any, int]] = {}  # conn -> (stage, manifest, process, slot)
    first_error: BaseException | None = None
    failed: set[str] = set()

    def launch() -> None:
        progress = True
        while progress and first_error is None:
            progress = False
            for s in list(pending):
                if any(d in failed for d in s.deps):
                    pending.remove(s)
                    failed.add(s.name)
                    continue
                if not all(d in run.manifests for d in s.deps):
                    continue
                need = s.threads or threads
                used = sum(v[0].threads or threads for v in running.values())
                if running and used + need > capacity:
                    return
                pending.remove(s)
                progress = True
                started = run.start(s)
                if started is None:
                    break  # a skipped stage may make others ready: rescan in list order
                manifest, ctx = started
                slot = min(set(range(capacity + 1)) - {v[3] for v in running.values()})
                recv, send = ctx_mp.Pipe(duplex=False)
                sys.stdout.flush()
                sys.stderr.flush()
                proc = ctx_mp.Process(target=_child, args=(s, ctx, need, slot, send), daemon=False)
                proc.start()
                send.close()
                running[recv] = (s, manifest, proc, slot)
                break

    try:
        launch()
        while running:
            for conn in cast("list[Connection]", mp_wait(list(running))):  # running's keys are Pipe ends
                s, manifest, proc, _ = running.pop(conn)
                try:
                    status, payload, err = conn.recv()
                except EOFError:
                    status, payload, err = "failed", None, f"process died (exit code {proc.exitcode})"
                proc.join()
                if status == "done":
                    run.finish(s, manifest, payload)
                    continue
                with contextlib.suppress(CodepriorError):  # a full disk must not hide the stage's own error
                    run.finish(s, manifest, None, err, interrupted=status == "interrupted")
                failed.add(s.name)
                if first_error is None:
                    if status == "codeprior-error":
                        first_error = CodepriorError(payload)
                    elif status == "interrupted":
                        first_error = KeyboardInterrupt()
                    else:
                        first_error = CodepriorError(f"stage {s.name} failed: {err} (traceback above)")
            if first_error is None:
                launch()
            if (
                not running
                and pending
                and first_error is None
                and not any(all(d in run.manifests for d in s.deps) for s in pending)
            ):
                break  # nothing can become ready (a dependency failed)
    except KeyboardInterrupt:
        for s, manifest, proc, _ in running.values():
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
            run.finish(s, manifest, None, interrupted=True)
        raise
    if first_error is not None:
        raise first_error
