"""The base of every stage's typed outputs record (``TokenizeOutputs``, ``TrainOutputs``, ...).

A record is what a stage returns and what its manifest stores as ``metrics`` (plain JSON: paths as strings, tuples
as lists, in field order), so a skipped stage's record is re-loaded from its manifest exactly as a fresh run's.
Downstream stages and the report read records (``TokenizeOutputs.from_manifest(ctx.upstream["tokenize"]).grid``)
instead of indexing free-form dicts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["StageOutputs"]

T = TypeVar("T", bound="StageOutputs")


def _plain(v: Any) -> Any:
    """JSON-ready view of a field value."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _typed(tp: Any, v: Any) -> Any:
    """A manifest value back as the field's type (``Path``, ``tuple``, ``dict[str, Path]``); others unchanged."""
    if v is None:
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    if tp is Path:
        return Path(v)
    if typing.get_origin(tp) is tuple:
        return tuple(v)
    if typing.get_origin(tp) is dict and typing.get_args(tp)[1] is Path:
        return {k: Path(x) for k, x in v.items()}
    return v


@dataclasses.dataclass(frozen=True)
class StageOutputs:
    """A stage's outputs record: serialised into its manifest's ``metrics`` and re-loaded from it."""

    def to_metrics(self) -> dict[str, Any]:
        """The record as its manifest's ``metrics`` (plain JSON data, field order)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_metrics(cls: type[T], metrics: Mapping[str, Any]) -> T:
        """The record from a manifest's ``metrics``; fields it lacks (a partial or hand-made run) read as None."""
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _typed(hints[f.name], metrics.get(f.name)) for f in dataclasses.fields(cls)})

    @classmethod
    def from_manifest(cls: type[T], manifest: Mapping[str, Any] | None) -> T:
        """The record from a stage manifest (``ctx.upstream[name]`` or ``read_manifest(RUN/name)``)."""
        return cls.from_metrics((manifest or {}).get("metrics") or {})
