"""Settings records: one dataclass per concern whose fields carry their default, help text, CLI flag and checks.

A record is the one definition of its settings (:class:`codeprior.train.config.TrainConfig` for training,
:class:`codeprior.decoding.settings.SampleSettings` / :class:`~codeprior.decoding.settings.DecoderSettings` for
sampling, :class:`codeprior.tokenize_settings.TokenizeSettings`, :class:`codeprior.evaluate.settings.EvaluateSettings`):
commands generate their flags from it (:func:`add_flags`, :func:`from_namespace`), the pipeline generates its config
section from it (:func:`codeprior.pipeline.config.embeds`), and both read the same defaults and help. A setting is
spelled ``name_with_underscores`` in records and YAML and ``--name-with-dashes`` on the command line (``flag=`` only
where the flag is a switch such as ``--no-tensorboard``).

Renamed settings list their old spellings (``old_flags=("--cfg",)``, ``old_keys=("tau1",)``): they keep working
for one release and print one line on stderr (:func:`codeprior.errors.deprecated`); the help shows only the name.

No torch, numpy or pydantic here: ``codeprior --help`` builds every command's flags from these records.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field, field, fields
from typing import Any

from codeprior.errors import CodepriorError, deprecated

__all__ = [
    "setting",
    "record_fields",
    "default_of",
    "flag_of",
    "field_infos",
    "defaults",
    "old_keys",
    "rename_old_keys",
    "add_flags",
    "add_old_flags",
    "from_namespace",
    "from_dict",
    "check_record",
]


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    group: str | None = None,
    argtype: Callable | None = None,
    flag: str | None = None,
    cli: bool = True,
    old_flags: tuple[str, ...] = (),
    old_keys: tuple[str, ...] = (),
    schema_type: Any = None,
    **argparse_kw: Any,
) -> Any:
    """A record field with its help text and CLI spelling (``cli=False``: no flag, Python API / config only).

    ``group=None`` puts the flag at the top of the command; ``argtype`` is the flag's type from
    :mod:`codeprior.utils.argtypes` (and the bound a config value is checked against); ``argparse_kw`` passes the
    rest to ``add_argument`` (``choices`` -- a registry is read when the parser is built --, ``metavar``,
    ``nargs``/``const``, ``action``). ``old_flags`` / ``old_keys``: spellings of earlier releases, still accepted
    on the command line / in configs and dicts, with a deprecation line. ``schema_type``: the type a pipeline
    config's schema gives the key where it is not the field's annotation (``Any`` where the argument type checks it).
    """
    meta = {
        "help": help,
        "group": group,
        "type": argtype,
        "flag": flag,
        "cli": cli,
        "old_flags": tuple(old_flags),
        "old_keys": tuple(old_keys),
        "schema_type": schema_type,
        "argparse": argparse_kw,
    }
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------------------ introspection
def record_fields(cls: type) -> list[Field]:
    """The fields of a record class (or instance) declared with :func:`setting`."""
    return [f for f in fields(cls) if "help" in f.metadata]


def default_of(f: Field) -> Any:
    """A field's default (``MISSING`` for a required one); factories are called."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def flag_of(f: Field) -> str:
    """The CLI flag of a field: its ``flag=`` or ``--field-name``."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def field_infos(cls: type) -> list[dict[str, Any]]:
    """Every setting as ``{"name", "default", "help", "flag"}`` (``default`` absent for required ones, ``flag``
    None for settings without one)."""
    out = []
    for f in record_fields(cls):
        d = {"name": f.name, "help": f.metadata["help"], "flag": flag_of(f) if f.metadata["cli"] else None}
        if default_of(f) is not MISSING:
            d["default"] = default_of(f)
        out.append(d)
    return out


def defaults(cls: type) -> dict[str, Any]:
    """``{name: default}`` of every setting that has one."""
    return {f["name"]: f["default"] for f in field_infos(cls) if "default" in f}


def old_keys(cls: type) -> dict[str, str]:
    """``{old key: setting}`` for every renamed setting of ``cls``."""
    return {old: f.name for f in record_fields(cls) for old in f.metadata["old_keys"]}


def rename_old_keys(
    d: Mapping[str, Any], renamed: Mapping[str, str], where: str, *, warn: bool = True
) -> dict[str, Any]:
    """``d`` with old keys replaced by their settings' names (``renamed``: old -> new), one deprecation line each
    (``where``: the file / section prefix, e.g. ``cfg.yaml: sample.``). An old and a new spelling together are an
    error: the value would be ambiguous."""
    out = dict(d)
    for old, new in renamed.items():
        if old not in out:
            continue
        if new in out:
            raise CodepriorError(f"{where}{old}: give {new} or its old spelling {old}, not both")
        if warn:
            deprecated(f"{where}{old}", f"{where.rsplit(': ', 1)[-1]}{new}")
        out[new] = out.pop(old)
    return out


# ------------------------------------------------------------------------------------------------ CLI
def _deprecated_action(base: type[argparse.Action], new: str) -> type[argparse.Action]:
    class Deprecated(base):  # type: ignore[valid-type,misc]
        def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
            if option_string is not None and option_string not in self.option_strings:
                deprecated(option_string, new)
            super().__call__(parser, namespace, values, option_string)

    Deprecated.__name__ = base.__name__
    return Deprecated


def add_old_flags(p: argparse.ArgumentParser, action: argparse.Action, old: Iterable[str]) -> argparse.Action:
    """Make ``old`` spellings parse as ``action`` (one deprecation line when used), hidden from ``--help``, whose
    usage and help name only the action's own flag. Returns the action."""
    old = [o for o in old if o not in action.option_strings]
    taken = [o for o in old if o in p._option_string_actions]
    if taken:  # a programming error: the old spelling would silently replace another flag
        raise ValueError(f"{p.prog}: old spelling {taken[0]} of {action.option_strings[0]} is another flag")
    if old:
        action.__class__ = _deprecated_action(type(action), action.option_strings[0])
        for o in old:
            p._option_string_actions[o] = action  # parsed, not listed
    return action


def add_flags(
    p: argparse.ArgumentParser,
    cls: type,
    *,
    skip: Iterable[str] = (),
    only: Iterable[str] | None = None,
    override: Mapping[str, Mapping[str, Any]] | None = None,
    groups: Iterable[str] = (),
    group: str | None = None,
) -> dict[str, argparse.Action]:
    """Add one flag per field of the record ``cls`` to ``p`` and return them by field name.

    ``skip``: fields the command does not take; ``only``: the fields it takes (others skipped); ``override``:
    per-field argparse changes for this command (another default or help); ``groups``: argument groups created
    first, in this order (a field's ``group`` metadata picks one; new titles are added after them); ``group``: the
    title of the group for fields without one (default: the top of the command). Help ends with the default where
    there is one. Old spellings (``old_flags``) parse too, with a deprecation line.
    """
    override = override or {}
    skip = set(skip)
    keep = set(only) if only is not None else None
    made: dict[str | None, Any] = {g: p.add_argument_group(g) for g in groups}
    out: dict[str, argparse.Action] = {}
    for f in record_fields(cls):
        m = f.metadata
        if not m["cli"] or f.name in skip or (keep is not None and f.name not in keep):
            continue
        kw: dict[str, Any] = {"dest": f.name, **m["argparse"]}
        if "choices" in kw and kw["choices"] is not None:
            kw["choices"] = list(kw["choices"])  # a registry as it is now (toy entries registered by a test count)
        default = default_of(f)
        if isinstance(default, bool) and "action" not in kw:
            kw["action"] = "store_false" if default else "store_true"
        elif kw.get("action") == "append":
            kw["default"] = []
        elif default is not MISSING:
            kw["default"] = default
        if m["type"] is not None:
            kw["type"] = m["type"]
        kw.update(override.get(f.name, {}))
        help_ = kw.pop("help", m["help"])
        shown = kw.get("default")
        if shown is not None and not isinstance(shown, (bool, list)) and not kw.get("required"):
            help_ += f" (default: {shown})"
        title = m["group"] or group
        if title not in made:
            made[title] = p.add_argument_group(title) if title else p
        action = made[title].add_argument(flag_of(f), help=help_, **kw)
        out[f.name] = add_old_flags(p, action, m["old_flags"])
    return out


def from_namespace(cls: type, args: argparse.Namespace, *, where: str, **fixed: Any) -> Any:
    """The record ``cls`` of parsed flags (from :func:`add_flags`); ``fixed`` sets fields the command does not
    expose or computes itself. Fields neither parsed nor fixed take their defaults."""
    d = {f.name: getattr(args, f.name) for f in record_fields(cls) if f.name not in fixed and hasattr(args, f.name)}
    return from_dict(cls, {**d, **fixed}, where=where)


def from_dict(cls: type, d: Mapping[str, Any], *, where: str, warn: bool = True) -> Any:
    """The record of a dict of settings (a config, a JSON file); a key that is not a setting is a one-line error
    naming it; old spellings are renamed (with a deprecation line unless ``warn=False``: files written by earlier
    versions read silently)."""
    d = rename_old_keys(d, old_keys(cls), f"{where}: ", warn=warn)
    names = [f.name for f in fields(cls) if f.init]
    unknown = [k for k in d if k not in names]
    if unknown:
        raise CodepriorError(f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(names))})")
    missing = [f.name for f in fields(cls) if f.init and f.name not in d and default_of(f) is MISSING]
    if missing:
        raise CodepriorError(f"{where}: missing setting {missing[0]!r}")
    return cls(**d)


# ------------------------------------------------------------------------------------------------ checks
def check_record(record: Any, where: str) -> None:
    """The checks a record's fields declare: ``choices`` (a registry, read now) and the argument type's bounds
    (``nan``, a negative count...), as the CLI would refuse them: ``<where>: --flag: <the CLI's words>``. ``None``
    (an unset optional setting) is not checked."""
    for f in record_fields(record):
        value = getattr(record, f.name)
        if value is None:
            continue
        m = f.metadata
        choices = m["argparse"].get("choices")
        if choices is not None and value not in choices:
            raise CodepriorError(f"{where}: {flag_of(f)} must be one of {', '.join(map(str, choices))}, got {value!r}")
        if m["type"] is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise CodepriorError(f"{where}: {flag_of(f)}: expected a number, got {value!r}")
            try:
                m["type"](value if isinstance(value, str) else repr(value))
            except argparse.ArgumentTypeError as e:
                raise CodepriorError(f"{where}: {flag_of(f)}: {e}") from None
