"""Read the code blocks of a Markdown page, so tests can execute what the docs tell a user to type.

Two kinds of block are read: a section's ``bash`` block (one ``codeprior`` command per line, ``\\`` continuations
joined, ``#`` comments dropped) and named Python snippets (a fenced ``python`` block right after an HTML comment
``<!-- snippet: NAME -->``).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def section(path: Path, heading: str) -> str:
    """The text under the Markdown heading ``heading`` (any level) up to the next heading of the same level."""
    text = path.read_text()
    m = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.M)
    if m is None:
        raise AssertionError(f"{path}: no heading {heading!r}")
    level = len(m.group(1))
    rest = text[m.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def code_blocks(text: str, lang: str) -> list[str]:
    """The bodies of the fenced blocks of language ``lang``, in order."""
    return re.findall(rf"^```{re.escape(lang)}\n(.*?)^```", text, re.M | re.S)


def commands(block: str) -> list[list[str]]:
    """The command lines of a shell block as argv lists (continuations joined, comments dropped)."""
    out = []
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            out.append(argv)
    return out


def codeprior_argv(argv: list[str]) -> list[str]:
    """``codeprior ARGS`` or ``torchrun ... -m codeprior ARGS`` -> ARGS (the launcher is the test's business)."""
    if argv[0] == "codeprior":
        return argv[1:]
    if argv[0] == "torchrun" and "codeprior" in argv:
        i = argv.index("codeprior")
        assert argv[i - 1] == "-m", argv
        return argv[i + 1 :]
    raise AssertionError(f"not a codeprior command: {' '.join(argv)}")


def snippets(path: Path) -> dict[str, str]:
    """``{name: code}`` for every ``<!-- snippet: name -->`` followed by a fenced ``python`` block."""
    text = path.read_text()
    found = re.findall(r"<!-- snippet: ([\w-]+) -->\s*\n```python\n(.*?)^```", text, re.M | re.S)
    names = [n for n, _ in found]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise AssertionError(f"{path}: snippet names used twice: {dup}")
    return dict(found)
