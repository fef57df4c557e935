"""Optional dependencies ("extras"): which packages each one provides and a one-line error when one is missing.

``pip install codeprior`` is the core (priors, objectives, models, checkpoints, decoding and the commands built on
them); the pipeline, the report and the sample-quality metrics need more (``pyproject.toml``,
``[project.optional-dependencies]``). A command that needs an extra declares it with :func:`needs_extra`;
:func:`codeprior.cli.main` calls :func:`require_extra` before the command runs, so a missing package costs one line
and exit 2 ("codeprior evaluate needs the 'eval' extra: pip install 'codeprior[eval]' (missing: prdc)"), not an
ImportError traceback halfway through the work.

Only the standard library is imported here: the check runs before any command and must not slow `codeprior --help`.
"""

from __future__ import annotations

import argparse
import importlib.util

from codeprior.errors import CodepriorError

__all__ = [
    "DISTRIBUTIONS",
    "EXTRAS",
    "extra_providing",
    "missing_extra_error",
    "missing_modules",
    "needs_extra",
    "require_extra",
]

#: Extra name -> the import names of the packages it installs (pyproject.toml lists the distributions; the test
#: tests/test_light_core.py checks the two agree). ``all`` is every command's extra.
EXTRAS: dict[str, tuple[str, ...]] = {
    "eval": ("torchmetrics", "prdc"),
    "tensorboard": ("tensorboard",),
}
EXTRAS["pipeline"] = EXTRAS["eval"] + EXTRAS["tensorboard"] + ("matplotlib", "yaml", "pydantic")
EXTRAS["all"] = EXTRAS["pipeline"]

#: Import name -> distribution name where they differ (what ``pip install`` takes).
DISTRIBUTIONS: dict[str, str] = {"yaml": "pyyaml"}


def missing_modules(modules: tuple[str, ...] | list[str]) -> list[str]:
    """The top-level modules of ``modules`` that cannot be imported (looked up, not imported: no import cost)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a finder refusing the name, or a module with no spec
            found = False
        if not found:
            missing.append(name)
    return missing


def extra_providing(module: str) -> str | None:
    """The smallest extra that installs top-level ``module`` (e.g. ``"matplotlib"`` -> ``"pipeline"``), or None."""
    top = module.split(".")[0]
    for extra, modules in EXTRAS.items():  # ordered smallest first
        if top in modules:
            return extra
    return None


def _message(what: str, extra: str, missing: list[str]) -> str:
    names = ", ".join(DISTRIBUTIONS.get(m, m) for m in missing)
    return f"{what} needs the '{extra}' extra: pip install 'codeprior[{extra}]' (missing: {names})"


def require_extra(what: str, extra: str) -> None:
    """Raise :class:`CodepriorError` naming ``extra`` and its missing packages when any of them is not installed.

    ``what`` names the caller in the message (``"codeprior pipeline"``).
    """
    missing = missing_modules(EXTRAS[extra])
    if missing:
        raise CodepriorError(_message(what, extra, missing))


def missing_extra_error(what: str, err: ModuleNotFoundError) -> CodepriorError | None:
    """The one-line error for an import of an extra-only package that failed inside ``what``; None when the missing
    module belongs to no extra (a real bug or a broken install, which keeps its traceback)."""
    name = err.name or ""
    extra = extra_providing(name)
    if extra is None:
        return None
    return CodepriorError(_message(what, extra, [name.split(".")[0]]))


def needs_extra(parser: argparse.ArgumentParser, extra: str) -> None:
    """Declare that the command parsed by ``parser`` needs ``extra`` (checked by the CLI before it runs)."""
    if extra not in EXTRAS:
        raise KeyError(f"{parser.prog}: unknown extra {extra!r}")  # a programming error, not a user error
    parser.set_defaults(needs_extra=extra)
