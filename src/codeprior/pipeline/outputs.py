"""The base of every stage's typed outputs record (``TokenizeOutputs``, ``TrainOutputs``, ...).

A record is what a stage returns and what its manifest stores as ``metrics`` (plain JSON: paths as strings, tuples
as lists, in field order; a path inside the run folder relative to it, so a moved run folder keeps working; older
manifests' absolute paths read as they are), so a skipped stage's record is re-loaded from its manifest exactly as a fresh run's.
Downstream stages and the report read records (``TokenizeOutputs.from_manifest(ctx.upstream["tokenize"]).grid``)
instead of indexing free-form dicts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["StageOutputs"]

T = TypeVar("T", bound="StageOutputs")


def _plain(v: Any, base: Path | None = None) -> Any:
    """JSON-ready view of a field value; a path inside ``base`` (the run folder) relative to it."""
    if isinstance(v, Path):
        if base is not None and v.is_absolute():
            with contextlib.suppress(ValueError):
                return v.resolve().relative_to(base.resolve()).as_posix()
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x, base) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x, base) for k, x in v.items()}
    return v


def _path(v: str, base: Path | None, stage: str | None = None) -> Path:
    """A stored path: relative ones are inside the run folder ``base`` (when known). An older record's absolute
    path into its own stage folder that no longer exists (the run folder was moved) is found in ``base``."""
    p = Path(v)
    if base is None:
        return p
    if not p.is_absolute():
        return base / p
    if stage and stage in p.parts and not p.exists():
        i = len(p.parts) - 1 - p.parts[::-1].index(stage)
        moved = base.joinpath(*p.parts[i:])
        if moved.exists():
            return moved
    return p


def _typed(tp: Any, v: Any, base: Path | None = None, stage: str | None = None) -> Any:
    """A manifest value back as the field's type (``Path``, ``tuple``, ``dict[str, Path]``); others unchanged."""
    if v is None:
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    if tp is Path:
        return _path(v, base, stage)
    if typing.get_origin(tp) is tuple:
        return tuple(v)
    if typing.get_origin(tp) is dict and typing.get_args(tp)[1] is Path:
        return {k: _path(x, base, stage) for k, x in v.items()}
    return v


@dataclasses.dataclass(frozen=True)
class StageOutputs:
    """A stage's outputs record: serialised into its manifest's ``metrics`` and re-loaded from it."""

    def to_metrics(self, base: Path | None = None) -> dict[str, Any]:
        """The record as its manifest's ``metrics`` (plain JSON data, field order); paths inside ``base`` (the run
        folder) relative to it."""
        return {f.name: _plain(getattr(self, f.name), base) for f in dataclasses.fields(self)}

    @classmethod
    def from_metrics(cls: type[T], metrics: Mapping[str, Any], base: Path | None = None, stage: str | None = None) -> T:
        """The record from a manifest's ``metrics`` (relative paths: inside ``base``, the run folder; ``stage``:
        the stage that wrote it); fields it lacks (a partial or hand-made run) read as None."""
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _typed(hints[f.name], metrics.get(f.name), base, stage) for f in dataclasses.fields(cls)})

    @classmethod
    def from_manifest(cls: type[T], manifest: Mapping[str, Any] | None) -> T:
        """The record from a stage manifest (``ctx.upstream[name]`` or ``read_stage_manifest(RUN/name)``); its relative
        paths resolve against the run folder it was read from (``"_dir"``, set by ``read_stage_manifest``)."""
        m = manifest or {}
        base = Path(m["_dir"]).parent if m.get("_dir") else None
        return cls.from_metrics(m.get("metrics") or {}, base, m.get("stage"))
