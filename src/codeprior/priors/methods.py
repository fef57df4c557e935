"""The prior extractors by name: the one registry every CLI choice, config check and report reads.

Torch- and numpy-free, so ``codeprior prior --help`` and config validation need neither. Each name maps to a
:class:`PriorMethod`: the ``module:function`` that computes its cluster labels (imported only when a prior is
extracted) and whether it needs ``k`` distinct codebook rows. The function is called as
``fn(X, k, seed=..., progress=..., backend=...)`` on the geometry-prepared codebook ``X`` [N, D] (float64) and
returns ``(labels [N] in 0..k-1, details dict)``. Adding a method: one module with that function, plus
:func:`register_method` (here for a built-in, or from your own module before the CLI or pipeline runs).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PriorMethod", "METHODS", "register_method", "unregister_method"]


@dataclass(frozen=True)
class PriorMethod:
    """One extractor: ``labels`` is ``"module:function"``; ``distinct_codes``: k must not exceed the codebook's
    distinct rows (identical codes cannot be told apart by a partition of the geometry); ``equal_sizes``: every
    cluster has N/k codes, so k must divide N."""

    name: str
    labels: str
    distinct_codes: bool = True
    equal_sizes: bool = False


#: every prior method by name, in the order the CLI lists them (a live mapping: ``in``, iteration and
#: ``", ".join(METHODS)`` see methods registered after import)
METHODS: dict[str, PriorMethod] = {}


def register_method(method: PriorMethod) -> PriorMethod:
    """Add ``method`` to :data:`METHODS`."""
    METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove ``name`` from :data:`METHODS` (tests that register a toy method undo it with this)."""
    METHODS.pop(name, None)


register_method(PriorMethod("dcpe", "codeprior.priors.dcpe:labels_for_registry"))
register_method(PriorMethod("kmeans", "codeprior.priors.kmeans:labels_for_registry"))
register_method(PriorMethod("balanced-kmeans", "codeprior.priors.balanced_kmeans:labels_for_registry", False, True))
