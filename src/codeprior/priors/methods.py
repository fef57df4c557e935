"""The names of the prior extractors: the one registry every CLI choice, config check and report reads.

Torch- and numpy-free, so ``codeprior prior --help`` and config validation need neither; the implementations are
in :mod:`codeprior.priors.extract`.
"""

METHODS = ("dcpe", "kmeans", "balanced-kmeans")
