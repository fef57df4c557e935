"""Progress bars (tqdm), shown on stderr; silenced on non-zero ranks or with CODEPRIOR_NO_PROGRESS=1."""

from __future__ import annotations

import os
from typing import Any, Iterable

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, *, disable: bool | None = None, **kw: Any) -> tqdm:
    if disable is None:
        disable = os.environ.get("CODEPRIOR_NO_PROGRESS") == "1" or int(os.environ.get("RANK", "0")) != 0
    kw.setdefault("dynamic_ncols", True)
    kw.setdefault("leave", False)
    return tqdm(iterable, disable=disable, **kw)
