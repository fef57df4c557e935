"""Output paths checked before any work: never onto or into an input, never under a regular file, in an unwritable
folder or with a name that is not UTF-8.

Every command declares its outputs and inputs once with :func:`declare_paths`; :func:`codeprior.cli.main` calls
:func:`check_paths` after argument parsing and before the command runs, so a bad ``--out`` costs no minutes of
clustering, tokenising or training and leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from codeprior.errors import CodepriorError

Kind = Literal["file", "dir"]


@dataclass(frozen=True)
class PathRoles:
    """Which arguments name outputs (dest -> (kind, label)) and inputs (dest -> label) of a command."""

    outputs: dict[str, tuple[Kind, str]] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)


def show(path: str | os.PathLike) -> str:
    """A path as printable text (undecodable bytes as ``\\xNN``), for error messages."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _label(parser: argparse.ArgumentParser, dest: str) -> str:
    for a in parser._actions:
        if a.dest == dest:
            return (
                "/".join(a.option_strings)
                if a.option_strings
                else (a.metavar if isinstance(a.metavar, str) else dest.upper())
            )
    raise KeyError(f"{parser.prog}: no argument {dest!r}")  # a programming error, not a user error


def declare_paths(
    parser: argparse.ArgumentParser, *, outputs: dict[str, Kind] | None = None, inputs: Iterable[str] = ()
) -> None:
    """Record on ``parser`` which of its arguments are outputs (``{dest: "file" | "dir"}``) and inputs (dests)."""
    roles = PathRoles(
        {d: (k, _label(parser, d)) for d, k in (outputs or {}).items()}, {d: _label(parser, d) for d in inputs}
    )
    parser.set_defaults(path_roles=roles)


def _values(v: Any) -> list[str]:
    if v is None or v is False or v == "":  # "" = not given (a command fills in its default later)
        return []
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v if x is not None]
    return [str(v)]


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output(
    path: str | os.PathLike,
    kind: Kind = "file",
    *,
    label: str = "--out",
    inputs: Mapping[str, Iterable[str]] | None = None,
) -> Path:
    """Refuse ``path`` as an output before any work: a non-UTF-8 name; equal to, or inside, an input (``inputs``:
    label -> paths); an existing folder where a file goes (or the reverse); under a regular file; in a folder that
    cannot be written. Returns the path."""
    p = Path(path)
    try:
        str(p).encode("utf-8")
    except UnicodeEncodeError:
        raise CodepriorError(f"{show(p)}: {label}: the name is not valid UTF-8; choose another name") from None
    target = p.resolve()
    for in_label, values in (inputs or {}).items():
        for v in values:
            src = Path(v)
            if not src.exists():
                continue
            src = src.resolve()
            if target == src:
                raise CodepriorError(f"{show(p)}: {label} is also the input {in_label}; refusing to overwrite an input")
            if src.is_dir() and _inside(target, src):
                raise CodepriorError(
                    f"{show(p)}: {label} is inside the input folder {in_label} {show(v)}; choose an output outside it"
                )
    if p.exists():
        if kind == "file" and p.is_dir():
            raise CodepriorError(f"{show(p)}: {label}: is a directory, expected a file name")
        if kind == "dir" and not p.is_dir():
            raise CodepriorError(f"{show(p)}: {label}: is a file, expected a folder")
        if not os.access(p, os.W_OK):
            raise CodepriorError(f"{show(p)}: {label}: not writable")
        if kind == "file" and not p.is_file():
            return p  # a device, FIFO or stream (/dev/null, /dev/stdout): written through, its folder is not touched
    probe = target if kind == "dir" and p.is_dir() else target.parent
    while not probe.exists():  # nearest existing ancestor: where the folders would be created
        probe = probe.parent
    if not probe.is_dir():
        raise CodepriorError(f"{show(p)}: {label}: cannot be created, {show(probe)} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CodepriorError(f"{show(p)}: {label}: cannot be written, folder {show(probe)} is not writable")
    return p


def check_paths(args: argparse.Namespace) -> None:
    """Check every output a command declared (:func:`declare_paths`) against its inputs and the file system."""
    roles: PathRoles | None = getattr(args, "path_roles", None)
    if roles is None:
        return
    inputs = {label: _values(getattr(args, dest, None)) for dest, label in roles.inputs.items()}
    seen: dict[Path, str] = {}
    for dest, (kind, label) in roles.outputs.items():
        for v in _values(getattr(args, dest, None)):
            check_output(v, kind, label=label, inputs=inputs)
            key = Path(v).resolve()
            if key in seen:
                raise CodepriorError(f"{show(v)}: {label} and {seen[key]} name the same file")
            seen[key] = label
