"""How a pipeline config section is made: the strict pydantic base (:class:`_Section`: unknown keys refused, renamed
keys read with a deprecation line), sections that keep keys added later out of the dump and the hashes while unset
(:class:`_Optional`), and sections generated from a settings record (:func:`embeds`, :func:`record_section`), plus
the path types that resolve against the config's folder. The sections themselves are in
:mod:`codeprior.pipeline.config`, which re-exports these names."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    create_model,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from codeprior.errors import deprecated
from codeprior.utils.settings import default_of, old_keys

__all__ = ["FilePath", "DirPath", "embeds", "record_section"]


def _existing(kind: str) -> AfterValidator:
    """A validator resolving a path against the config's folder (``context["base"]``) and checking it exists."""

    def check(value: str, info: ValidationInfo) -> str:
        p = Path(os.path.expanduser(value))
        if not p.is_absolute():
            p = Path((info.context or {}).get("base") or Path.cwd()) / p
        if kind == "file" and not p.is_file():
            raise PydanticCustomError("no_such_path", "no such file: {value}", {"value": value})
        if kind == "dir" and not p.is_dir():
            raise PydanticCustomError("no_such_path", "no such directory: {value}", {"value": value})
        return str(p.resolve())

    return AfterValidator(check)


FilePath = Annotated[str, _existing("file")]
DirPath = Annotated[str, _existing("dir")]


class _Section(BaseModel):
    """Strict types (no "10" for 10, no 1 for true), finite numbers, unknown keys rejected.

    ``old_keys``: renamed keys (old -> new), read with a deprecation line for one release and hashed under their old
    names (:func:`fingerprint_dict`: runs made before the rename keep their stage fingerprints). ``_LATER``: keys
    added after runs were made, left out of fingerprints (and, in :class:`_Optional` sections, of the dump) while
    at their default, for the same reason.
    ``hash_given``: fingerprints hash the keys a config gives, not the defaults of the others (``sample.decoder``).
    ``record``: the settings record the section embeds (:func:`embeds`).
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    old_keys: ClassVar[dict[str, str]] = {}
    _LATER: ClassVar[tuple[str, ...]] = ()
    hash_given: ClassVar[bool] = False
    record: ClassVar[type | None] = None

    if not typing.TYPE_CHECKING:  # mypy reads the new names only

        def __getattr__(self, name: str) -> Any:
            """A renamed key's old name still reads it in Python for one release (with a deprecation line)."""
            new = type(self).old_keys.get(name)
            if new is None:
                return super().__getattr__(name)
            deprecated(f"{type(self).__name__}.{name}", f"{type(self).__name__}.{new}")
            return getattr(self, new)

        def __setattr__(self, name: str, value: Any) -> None:
            new = type(self).old_keys.get(name)
            if new is not None:
                deprecated(f"{type(self).__name__}.{name}", f"{type(self).__name__}.{new}")
            super().__setattr__(new or name, value)


S = TypeVar("S", bound=_Section)


def _record_fields(record: type, exclude: Iterable[str], nested: Mapping[str, type[_Section]]) -> dict[str, Any]:
    """The pydantic field definitions of a settings record's fields (its defaults and help; ``nested``: fields that
    are records themselves, as their sections)."""
    hints = typing.get_type_hints(record)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        if f.name in exclude:
            continue
        if f.name in nested:
            sec = nested[f.name]
            out[f.name] = (sec, Field(default_factory=sec, description=(sec.__doc__ or "").split("\n")[0]))
            continue
        tp = f.metadata.get("schema_type") or hints[f.name]
        out[f.name] = (tp, Field(default=default_of(f), description=f.metadata["help"]))
    return out


def embeds(
    record: type,
    *,
    exclude: Iterable[str] = (),
    nested: Mapping[str, type[_Section]] | None = None,
    added: Iterable[str] = (),
) -> Callable[[type[S]], type[S]]:
    """Class decorator: the section gains every field of the settings ``record`` (a dataclass of
    :func:`codeprior.utils.settings.setting` fields) after its own: same names, defaults and help as the record's
    flags, and the record's old spellings as its ``old_keys``. ``section.settings(**rest)`` builds the record."""
    exclude, nested = tuple(exclude), dict(nested or {})

    def wrap(cls: type[S]) -> type[S]:
        new = create_model(
            cls.__name__,
            __base__=cls,
            __module__=cls.__module__,
            __doc__=cls.__doc__,
            **_record_fields(record, exclude, nested),
        )
        new.__qualname__ = cls.__qualname__
        new.old_keys = {**cls.old_keys, **{o: n for o, n in old_keys(record).items() if n not in exclude}}
        new._LATER = tuple(cls._LATER) + tuple(added)
        new.record = record
        return new

    return wrap


def _record_values(section: _Section) -> dict[str, Any]:
    """The values of the record fields of an embedding section (nested sections as records)."""
    record = type(section).record
    assert record is not None
    out = {}
    for f in dataclasses.fields(record):
        if f.name in type(section).model_fields:
            v = getattr(section, f.name)
            out[f.name] = v.settings() if isinstance(v, _RecordSection) else v
    return out


class _Optional(_Section):
    """A section with settings added after runs existed (``_LATER``): while at their default (unset) they stay out
    of the dump, so the stage hashes of configs that do not use them are what they were."""

    @model_serializer(mode="wrap")
    def _drop_unset_later(self, handler: SerializerFunctionWrapHandler) -> Any:
        d = handler(self)
        fields = type(self).model_fields
        return {
            k: v
            for k, v in d.items()
            if not (k in self._LATER and v == fields[k].get_default(call_default_factory=True))
        }


class _Embedding(_Optional):
    """A section that embeds a settings record (:func:`embeds`): its record fields are generated, so static type
    checkers read them as ``Any`` (the record, from ``settings()``, is typed)."""

    if typing.TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...


class _RecordSection(_Embedding):
    """A section generated from a settings record (:func:`record_section`)."""

    def settings(self, **rest: Any) -> Any:
        """The settings record of this section (``rest``: the record's fields the section leaves out)."""
        record = type(self).record
        assert record is not None
        return record(**_record_values(self), **rest)


def record_section(record: type, name: str, **kw: Any) -> type[_RecordSection]:
    """A section holding exactly the fields of ``record`` (:func:`embeds` on an empty class named ``name``)."""
    base = type(name, (_RecordSection,), {"__doc__": record.__doc__, "__module__": __name__})
    return embeds(record, **kw)(base)
