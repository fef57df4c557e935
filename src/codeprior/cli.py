"""`codeprior <subcommand>`: the console entry point.

Subcommands live in :mod:`codeprior.commands` (one module each, discovered automatically).
User errors (:class:`CodepriorError`) print one line and exit with code 2, never a traceback. So does a command
whose optional dependencies are not installed: it names the extra to install (:mod:`codeprior.utils.extras`), and
so does a full, failing or read-only disk (ENOSPC, EDQUOT, EIO, EROFS: :func:`codeprior.utils.io.disk_error`).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from codeprior import __version__
from codeprior.errors import CodepriorError
from codeprior.utils.argtypes import Parser, apply_runtime_flags
from codeprior.utils.extras import missing_extra_error, require_extra
from codeprior.utils.paths import check_paths


def build_parser() -> argparse.ArgumentParser:
    import codeprior.commands as commands

    parser = Parser(
        prog="codeprior",
        description="Codebook priors for discrete-token autoregressive image generation: extract a prior "
        "(DCPE / k-means / balanced k-means) from a VQ codebook, train LlamaGen-compatible GPTs with it, "
        "sample, evaluate and report.",
    )
    parser.add_argument("--version", action="version", version=f"codeprior {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"codeprior.commands.{info.name}")
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    what = " ".join(["codeprior", args.command] + ([args.prior_action] if getattr(args, "prior_action", None) else []))
    try:
        if getattr(args, "needs_extra", None):
            require_extra(what, args.needs_extra)  # before any work: a missing package costs one line, not a run
        check_paths(args)  # outputs against inputs and the file system, before any work
        apply_runtime_flags(args)
        rc = args.func(args)
    except CodepriorError as e:
        print(f"codeprior: error: {e}", file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:  # an extra-only package reached on a path no declaration covers
        err = missing_extra_error(what, e)
        if err is None:
            raise
        print(f"codeprior: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("codeprior: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full, failing or read-only disk at a write no command wrapped: one line too
        from codeprior.utils.io import disk_error  # here, not at the top: it imports torch

        err = disk_error(e, guess_full=False)
        if err is None:
            raise  # anything else is a bug: its traceback is wanted
        print(f"codeprior: error: {err}", file=sys.stderr)
        return err.exit_code
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
