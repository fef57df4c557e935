"""User-facing errors: one line, naming the file and the problem; the CLI turns them into exit code 2."""

from __future__ import annotations


class CodepriorError(Exception):
    """An error caused by the user's input (bad file, bad option). Printed as one line; exit code 2."""

    exit_code = 2
