"""Codebook priors: :class:`Prior`, and the extractors (``dcpe``, ``kmeans``, ``balanced-kmeans``).

``extract(codebook, method, k, normalize=True, seed=0) -> Prior`` runs any of them; ``prior_quality`` and
``format_table`` (in :mod:`codeprior.priors.quality`) measure and compare priors; the exporters in
:mod:`codeprior.priors.export` write IAR's and DCPE's file formats.
"""

from __future__ import annotations

import importlib
from typing import Any

from codeprior.priors.methods import METHODS

__all__ = ["METHODS", "Prior", "extract", "load_prior"]
_LAZY = {
    "extract": "codeprior.priors.extract",
    "Prior": "codeprior.priors.prior",
    "load_prior": "codeprior.priors.prior",
}


def __getattr__(name: str) -> Any:
    """The Prior class and its loader load on first use: the package itself imports no numpy or torch."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'codeprior.priors' has no attribute {name!r}")
