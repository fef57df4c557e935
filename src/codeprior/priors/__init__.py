"""Codebook priors: :class:`Prior`, and the extractors (``dcpe``, ``kmeans``, ``balanced-kmeans``).

``extract(codebook, method, k, normalize=True, seed=0) -> Prior`` runs any of them; ``prior_quality`` and
``format_table`` (in :mod:`codeprior.priors.quality`) measure and compare priors; the exporters in
:mod:`codeprior.priors.export` write IAR's and DCPE's file formats.
"""

from codeprior.priors.extract import METHODS, extract
from codeprior.priors.prior import Prior, load_prior

__all__ = ["METHODS", "Prior", "extract", "load_prior"]
