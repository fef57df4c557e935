"""The run folder is codeprior's: each stage's record (its ``manifest.json``) of what it owns, and the checks that a
run deletes or overwrites nothing else.

A stage owns its manifest, the names it declares (``Stage.outputs``, from its ``FILES``) and the entries its record
lists as written (``files``); temporaries of those (``.<name>.<random>.tmp``, :func:`codeprior.utils.io.atomic_path`)
too. :func:`check_run_folder` runs before any stage (and for ``--dry-run``): it refuses a foreign entry in the folder
of a stage that will run, an input inside what such a stage writes, and a run-level file (the report's) that the
stage has no record of. A redo removes only what the stage owns (:func:`clear_own`).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from codeprior.errors import CodepriorError

if TYPE_CHECKING:  # engine.py imports this module; the Stage type is only needed for the annotations
    from codeprior.pipeline.engine import Stage

__all__ = ["MANIFEST", "read_stage_manifest", "record_of", "owns", "check_run_folder", "clear_own", "written"]

MANIFEST = "manifest.json"


def read_stage_manifest(stage_dir: str | os.PathLike) -> dict | None:
    """The manifest of a stage folder, or None when absent or unreadable (then the stage is redone).

    The dict read carries ``"_dir"``, the folder it was read from (never written back), against which its records
    resolve the paths they store relative to the run folder (:meth:`StageOutputs.from_manifest`).
    """
    p = Path(stage_dir) / MANIFEST
    try:
        m = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(m, dict):
        m["_dir"] = str(Path(stage_dir).absolute())
    return m if isinstance(m, dict) else None


def record_of(stage_dir: str | os.PathLike, name: str) -> dict | None:
    """The stage's own record (its manifest, naming stage ``name``), or None when there is no manifest; a
    ``manifest.json`` that is not this stage's record is refused (one line naming it): nothing in that folder is
    known to be codeprior's."""
    p = Path(stage_dir) / MANIFEST
    if not p.exists() and not p.is_symlink():
        return None
    m = read_stage_manifest(stage_dir)
    if m is None or m.get("stage") != name:
        raise CodepriorError(
            f"{p}: not the record of stage {name} (unreadable, or another file); codeprior does not touch a folder "
            "it has no record of: move it away or choose another --out"
        )
    return m


def _plain_name(name: str) -> str:
    """The file an atomic write's temporary ``.<name>.<random>.tmp`` (``codeprior.utils.io.atomic_path``) is for."""
    if name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3:
        return name[1:-4].rsplit(".", 1)[0]
    return name


def owns(s: Stage, record: dict | None, name: str) -> bool:
    """Whether entry ``name`` of ``s``'s folder is the stage's own (its manifest, a name it declares in
    ``Stage.outputs``, or one its record lists as written; temporaries of those too). Without a record: nothing."""
    if record is None:
        return False
    name = _plain_name(name)
    patterns = (MANIFEST, *s.outputs, *(record.get("files") or []))
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _within(p: Path, folder: Path) -> bool:
    return p == folder or folder in p.parents


def check_run_folder(
    stages: list[Stage], run_dir: str | os.PathLike, actions: Mapping[str, str], inputs: Mapping[str, str] = {}
) -> None:
    """Refuse, before any stage runs, a run folder in which a stage that will run would delete or overwrite what is
    not its own: for each stage whose ``actions`` entry is not ``skip``, every entry of its folder must be its own
    (:func:`owns`) or an input; an input (``inputs``: what -> path, e.g. the config file) must not lie in an entry
    that such a stage writes; and the files a stage writes in the run folder itself must be its own.

    An input inside the run folder that no stage writes (``RUN/tokenizer/vq.pt``, ``RUN/my.yaml``) is read where it
    is and left alone; a folder input that holds the run folder (the run would change the input) is refused.
    """
    run_dir = Path(run_dir).absolute()
    real_run = run_dir.resolve()
    ins = {what: Path(p).resolve() for what, p in inputs.items() if p}
    for what, p in ins.items():
        if p.is_dir() and _within(real_run, p):
            raise CodepriorError(f"--out {run_dir}: lies inside {what} {p} (the run would write into an input)")
    for s in stages:
        if actions.get(s.name, "skip") == "skip":
            continue
        d = run_dir / s.name
        if not d.exists() and not d.is_symlink():
            for n in s.run_outputs:
                _check_run_output(s, run_dir / n, None, ins)
            continue
        if not d.is_dir():
            raise CodepriorError(f"{d}: not a folder (stage {s.name} writes its outputs there): move it away")
        record = record_of(d, s.name)
        real_d = d.resolve()
        for what, p in ins.items():
            if p == real_d:
                raise CodepriorError(f"{what} {p}: is the folder of stage {s.name}, which this run writes")
        for e in sorted(os.listdir(d)):
            real_e = (d / e).resolve()
            holds = [what for what, p in ins.items() if _within(p, real_e) or _within(real_e, p)]
            if owns(s, record, e):
                if holds:
                    raise CodepriorError(
                        f"{holds[0]} {ins[holds[0]]}: lies in {d / e}, which stage {s.name} writes and this run "
                        f"{'resumes' if actions[s.name] == 'resume' else 'redoes'}: copy it out of the run folder"
                    )
            elif not holds:
                raise CodepriorError(
                    f"{d / e}: not written by stage {s.name} (no record of it), and the stage "
                    f"{'resumes' if actions[s.name] == 'resume' else 'runs'} in this folder: move it away "
                    "(codeprior deletes only its own files)"
                )
        for n in s.run_outputs:
            _check_run_output(s, run_dir / n, record, ins)


def _check_run_output(s: Stage, path: Path, record: dict | None, ins: Mapping[str, Path]) -> None:
    """A file ``s`` writes in the run folder itself: refused when it is an input, or exists without ``s``'s record."""
    if not path.exists() and not path.is_symlink():
        return
    for what, p in ins.items():
        if _within(p, path.resolve()):
            raise CodepriorError(f"{what} {p}: is {path}, which stage {s.name} writes: copy it out of the run folder")
    if record is None:
        raise CodepriorError(
            f"{path}: not written by stage {s.name} (no record of it), which writes this file: move it away"
        )


def clear_own(s: Stage, d: Path, record: dict | None) -> None:
    """Remove what ``s`` owns in its folder (its record's names, the names it declares), nothing else; the
    manifest goes last, so an interrupted clear still has the record of what is left."""
    d.mkdir(parents=True, exist_ok=True)
    names = [e for e in sorted(os.listdir(d)) if owns(s, record, e) and e != MANIFEST]
    for e in names + ([MANIFEST] if MANIFEST in os.listdir(d) and record is not None else []):
        p = d / e
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def written(s: Stage, d: Path, foreign: set[str]) -> list[str]:
    """The entries of ``d`` the stage wrote: everything but its manifest, its temporaries and the inputs left there."""
    try:
        names = os.listdir(d)
    except OSError:
        return []
    return sorted(e for e in names if e != MANIFEST and e not in foreign and _plain_name(e) == e)
