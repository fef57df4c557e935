"""User-facing errors: one line, naming the file and the problem; the CLI turns them into exit code 2."""

from __future__ import annotations


class CodepriorError(Exception):
    """An error caused by the user's input (bad file, bad option). Printed as one line; exit code 2."""

    exit_code = 2


_noted: set[str] = set()


def note(message: str) -> None:
    """Print ``codeprior: note: MESSAGE`` on stderr once per process (rank 0 only under torchrun): something the
    user should know but that is not an error, such as a value codeprior had to assume."""
    import os
    import sys

    if message in _noted or os.environ.get("RANK", "0") != "0":
        return
    _noted.add(message)
    print(f"codeprior: note: {message}", file=sys.stderr, flush=True)


def deprecated(old: str, new: str) -> None:
    """Print ``codeprior: warning: OLD is deprecated, use NEW (...)`` on stderr (rank 0 only): an old spelling of a
    setting (a flag or a config key) that keeps working for one release."""
    import os
    import sys

    if os.environ.get("RANK", "0") != "0":
        return
    print(
        f"codeprior: warning: {old} is deprecated, use {new} (the old spelling goes in the next release)",
        file=sys.stderr,
        flush=True,
    )
