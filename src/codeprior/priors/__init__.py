"""Codebook priors: :class:`Prior`, and the extractors (``dcpe``, ``kmeans``, ``balanced-kmeans``).

``codeprior.priors.extract.extract(codebook, method, k, normalize=True, seed=0) -> Prior`` runs any of them;
``prior_quality`` and ``format_table`` (in :mod:`codeprior.priors.quality`) measure and compare priors; the
exporters in :mod:`codeprior.priors.export` write IAR's and DCPE's file formats.
"""

from __future__ import annotations

from codeprior.priors.methods import METHODS
from codeprior.utils.lazy import lazy_exports

__all__ = ["METHODS", "Prior", "load_prior"]  # extract: from codeprior.priors.extract (its module shares the name)
_HOME = {"Prior": "prior", "load_prior": "prior"}  # loaded on first use: the package imports no numpy or torch

__getattr__, __dir__ = lazy_exports("codeprior.priors", _HOME, globals(), __all__)
