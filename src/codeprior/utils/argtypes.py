"""Argument types for every ``codeprior`` subcommand, and the parser class that prints argparse errors as one line.

Every numeric flag uses one of these types, so ``nan``, ``inf``, zero or negative values where they make no sense,
and words where a number is expected, stop at argument parsing with exit code 2 (never a traceback, never a
silently absurd setting such as ``--compression-rate inf`` -> k = 1). ``tests/test_cli_args.py`` walks every
subcommand's numeric flags to keep it so.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line, like every other codeprior error:
    ``codeprior: error: train: argument --lr: expected a finite number > 0, got 'nan' (see `codeprior train --help`)``.
    """

    def error(self, message: str) -> NoReturn:
        where = f"{self.prog.split(' ', 1)[1]}: " if " " in self.prog else ""
        print(f"codeprior: error: {where}{message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-line descriptions; keeps text that has its own line breaks (examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip("\n"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    if kind is int and abs(value) > MAX_INT:  # torch's int64: larger ones overflow inside torch (a traceback)
        raise argparse.ArgumentTypeError(f"expected an integer of at most {MAX_INT}, got {text!r}")
    return value


def _bounded(
    kind: type, lo: float | None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False, name: str
) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        v = _number(text, kind)
        bad = (lo is not None and (v <= lo if lo_open else v < lo)) or (
            hi is not None and (v >= hi if hi_open else v > hi)
        )
        if bad:
            what = "an integer" if kind is int else "a finite number"
            raise argparse.ArgumentTypeError(f"expected {what} {name}, got {text!r}")
        return v

    parse.__name__ = f"{kind.__name__} {name}"  # argparse names the type in its own messages
    return parse


#: the largest integer any flag takes (torch's int64)
MAX_INT = 2**63 - 1
#: seeds: numpy's range (the trainer derives per-epoch and per-rank seeds from it, which must stay in torch's)
MAX_SEED = 2**32 - 1
#: CPU threads and worker processes: more than any machine has (torch accepts 10**5 and then crashes)
MAX_THREADS = 1024
#: image side in pixels: far above any tokenizer's input (PIL overflows at 2**31)
MAX_IMAGE_SIZE = 16384
#: codebook size: code shards store codes as at most uint32
MAX_CODEBOOK = 2**32
#: class count: code shards store labels as at most int32
MAX_CLASSES = 2**31 - 1

#: integers
positive_int = _bounded(int, 0, lo_open=True, name="> 0")
nonneg_int = _bounded(int, 0, name=">= 0")
any_int = _bounded(int, None, name="")
seed_int = _bounded(int, 0, MAX_SEED, name=f"in 0..{MAX_SEED}")
threads_int = _bounded(int, 0, MAX_THREADS, name=f"in 0..{MAX_THREADS}")  # 0 = torch's default
image_size_int = _bounded(int, 1, MAX_IMAGE_SIZE, name=f"in 1..{MAX_IMAGE_SIZE}")
workers_int = _bounded(int, 1, MAX_THREADS, name=f"in 1..{MAX_THREADS}")  # threads or processes, at least one
codebook_int = _bounded(int, 1, MAX_CODEBOOK, name=f"in 1..{MAX_CODEBOOK}")
classes_int = _bounded(int, 1, MAX_CLASSES, name=f"in 1..{MAX_CLASSES}")
#: floats (always finite)
positive_float = _bounded(float, 0.0, lo_open=True, name="> 0")
nonneg_float = _bounded(float, 0.0, name=">= 0")
finite_float = _bounded(float, None, name="")
unit_float = _bounded(float, 0.0, 1.0, name="in [0, 1]")  # probabilities, ratios
open_unit_float = _bounded(float, 0.0, 1.0, hi_open=True, name="in [0, 1)")  # EMA decay, dropout
top_p_float = _bounded(float, 0.0, 1.0, lo_open=True, name="in (0, 1]")
rate_float = _bounded(float, 1.0, name=">= 1")  # compression rate N / k

#: every type above (the CLI test asserts that no numeric flag uses a bare int / float)
NUMERIC_TYPES = (
    positive_int,
    nonneg_int,
    any_int,
    seed_int,
    threads_int,
    image_size_int,
    workers_int,
    codebook_int,
    classes_int,
    positive_float,
    nonneg_float,
    finite_float,
    unit_float,
    open_unit_float,
    top_p_float,
    rate_float,
)


def add_image_size_flag(p: argparse.ArgumentParser, help: str) -> None:
    """``--image-size PX`` (LlamaGen's flag name), spelled, typed and shown the same in every command that takes
    it; ``help`` says what it does there (tokenize: the size images are resized to; sample: the grid a GPT file
    that does not say one is sampled at)."""
    p.add_argument("--image-size", type=image_size_int, default=None, metavar="PX", help=help)


#: the one help text of ``--device`` (every command, TrainConfig and the pipeline's ``device``)
DEVICE_HELP = "auto (cuda when available), cpu, cuda or cuda:N"
#: the one help text of ``--threads`` (every command, TrainConfig and the pipeline's ``threads``)
THREADS_HELP = "CPU threads for torch (0 = torch's default)"


def add_device_flag(p: argparse.ArgumentParser, what: str = "") -> None:
    """``--device``, spelled, defaulted (``auto``) and explained the same in every command that runs a model;
    ``what`` says what runs on it there (``codeprior.runtime.resolve_device`` reads the value)."""
    p.add_argument("--device", default="auto", metavar="DEVICE", help=(f"{what}: " if what else "") + DEVICE_HELP)


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """``--threads N`` and ``--no-progress``, spelled and applied (:func:`apply_runtime_flags`) the same everywhere."""
    p.add_argument("--threads", type=threads_int, default=0, metavar="N", help=THREADS_HELP)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def apply_runtime_flags(args: argparse.Namespace) -> None:
    """Called by ``codeprior.cli.main`` before every command."""
    if getattr(args, "progress", True) is False:
        import os

        os.environ["CODEPRIOR_NO_PROGRESS"] = "1"
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(int(args.threads))
