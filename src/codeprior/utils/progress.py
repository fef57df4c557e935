"""Progress bars (tqdm), shown on stderr; silenced on non-zero ranks or with CODEPRIOR_NO_PROGRESS=1.

Under ``jobs > 1`` the pipeline's stage processes set CODEPRIOR_PROGRESS_POSITION (one terminal line per running
stage) and CODEPRIOR_PROGRESS_PREFIX (the stage name), so concurrent bars do not overwrite each other.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, *, disable: bool | None = None, **kw: Any) -> tqdm:
    if disable is None:
        disable = os.environ.get("CODEPRIOR_NO_PROGRESS") == "1" or int(os.environ.get("RANK", "0")) != 0
    kw.setdefault("dynamic_ncols", True)
    kw.setdefault("leave", False)
    if "CODEPRIOR_PROGRESS_POSITION" in os.environ:
        kw.setdefault("position", int(os.environ["CODEPRIOR_PROGRESS_POSITION"]))
    prefix = os.environ.get("CODEPRIOR_PROGRESS_PREFIX")
    if prefix:
        kw["desc"] = prefix + str(kw.get("desc") or "")
    return tqdm(iterable, disable=disable, **kw)
