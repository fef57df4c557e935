"""Codebook priors: :class:`Prior`, and the extractors (``dcpe``, ``kmeans``, ``balanced-kmeans``)."""

from codeprior.priors.prior import Prior, load_prior

__all__ = ["Prior", "load_prior"]
