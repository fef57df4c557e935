"""Acceptance rules for speculative Jacobi decoding.

A rule maps the current distributions ``p`` [B, J, V], the draft distributions ``q`` [B, J, V] and the draft
tokens ``x`` [B, J] to acceptance probabilities [B, J]. Every rule has the form ``min(1, P(x) / Q(x))``:

* ``exact`` (SJD; Teng et al. 2024): ``P = p(x)``, ``Q = q(x)``; with the residual draw on rejection the output
  distribution is exactly the AR sampling distribution.
* ``gsd`` (Grouped Speculative Decoding; So et al. 2025): ``P = p(G)``, ``Q = q(G)`` over a dynamic group G of x:
  the tokens ranked next to x in ``p`` (up to ``neighbors`` on each side), kept when ``|p(y) - p(x)| <= prob_gap``
  and ``||e_y - e_x||^2 < embed_dist`` in the AR model's input embedding table (released defaults 7, 0.15, 0.5).
* ``latent`` (LANTERN; Jang et al. 2025): ``P = p(x)`` plus the mass of x's k nearest codes in the VQ codebook,
  nearest first, as long as the added mass (the total-variation distance between the relaxed and the true
  target) stays <= delta (k = 10, delta = 3.0 in the LANTERN++ scripts; a delta >= 1 never binds); ``Q = q(x)``.
* ``prior`` (ours): ``P = p(C)``, ``Q = q(C)`` with C the cluster of x under a codebook prior (DCPE, k-means,
  balanced k-means); x is kept.

The relaxed rules draw the replacement after a rejection from ``norm(max(0, p - q))`` like SJD. Their output
is no longer exactly the AR distribution; ``prior`` accepts at least as often as ``exact`` in expectation
(``sum_C min(p(C), q(C)) >= sum_x min(p(x), q(x))``), ``latent`` pointwise.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from codeprior.decoding.settings import ACCEPT_RULES, DecoderSettings
from codeprior.errors import CodepriorError
from codeprior.models.gpt import GPT

Rule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = [
    "GroupRule",
    "LatentRule",
    "PriorRule",
    "build_exact",
    "build_gsd",
    "build_latent",
    "build_prior",
    "build_rule",
    "exact_rule",
    "latent_neighbors",
]


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """min(1, num / den), 0 where den is 0 (a draft of zero draft probability is never proposed)."""
    return torch.where(den > 0, num / den.clamp(min=1e-30), torch.zeros_like(num)).clamp(max=1.0)


def exact_rule(p: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """SJD's acceptance probability min(1, p(x) / q(x))."""
    i = x.unsqueeze(-1)
    return _ratio(p.gather(-1, i).squeeze(-1), q.gather(-1, i).squeeze(-1))


class GroupRule:
    """GSD's dynamic groups: rank neighbours of x in p, filtered by probability gap and embedding distance."""

    def __init__(self, embedding: torch.Tensor, neighbors: int = 7, prob_gap: float = 0.15, embed_dist: float = 0.5):
        self.emb = embedding.detach().float()
        self.neighbors, self.prob_gap, self.embed_dist = int(neighbors), float(prob_gap), float(embed_dist)

    def __call__(self, p: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        V = p.shape[-1]
        px = p.gather(-1, x.unsqueeze(-1))  # [B, J, 1]
        qx = q.gather(-1, x.unsqueeze(-1))
        if self.neighbors == 0:
            return _ratio(px.squeeze(-1), qx.squeeze(-1))
        order = torch.argsort(p, dim=-1, descending=True, stable=True)  # tokens by current probability
        ids = torch.arange(V, device=p.device)
        # rank of x in that order: tokens above it, ties broken by index (the stable sort's order)
        rank = ((p > px) | ((p == px) & (ids < x.unsqueeze(-1)))).sum(-1, keepdim=True)  # [B, J, 1]
        off = torch.arange(-self.neighbors, self.neighbors + 1, device=p.device)
        off = off[off != 0]
        r = rank + off  # [B, J, 2n]
        inside = (r >= 0) & (r < V)
        y = order.gather(-1, r.clamp(0, V - 1))
        emb = self.emb.to(p.device)
        d2 = (emb[y] - emb[x].unsqueeze(-2)).pow(2).sum(-1)
        keep = inside & ((p.gather(-1, y) - px).abs() <= self.prob_gap) & (d2 < self.embed_dist)
        keep = keep.to(p.dtype)
        P = px.squeeze(-1) + (p.gather(-1, y) * keep).sum(-1)
        Q = qx.squeeze(-1) + (q.gather(-1, y) * keep).sum(-1)
        return _ratio(P, Q)


def latent_neighbors(codebook: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [V, k] of each code's k nearest other codes in the VQ codebook (Euclidean, nearest first)."""
    cb = codebook.detach().float().cpu()
    k = min(int(k), cb.shape[0] - 1)
    d = torch.cdist(cb, cb)
    d.fill_diagonal_(float("inf"))
    return torch.topk(d, k, dim=-1, largest=False).indices


class LatentRule:
    """LANTERN: p(x) raised by the mass of x's latent neighbours, the added mass capped at delta."""

    def __init__(self, codebook: torch.Tensor, k: int = 10, delta: float = 3.0):
        self.nn = latent_neighbors(codebook, k)
        self.delta = float(delta)

    def __call__(self, p: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        i = x.unsqueeze(-1)
        px, qx = p.gather(-1, i).squeeze(-1), q.gather(-1, i).squeeze(-1)
        if self.nn.shape[1] == 0:
            return _ratio(px, qx)
        nb = self.nn.to(p.device)[x]  # [B, J, k]
        cum = p.gather(-1, nb).cumsum(-1)
        added = torch.where(cum <= self.delta, cum, torch.zeros_like(cum)).amax(-1)  # longest prefix within delta
        return _ratio(px + added, qx)


class PriorRule:
    """Cluster mass under a codebook prior: min(1, p(C(x)) / q(C(x)))."""

    def __init__(self, token_to_cluster: torch.Tensor):
        self.t2c = torch.as_tensor(token_to_cluster, dtype=torch.long)
        self.k = int(self.t2c.max()) + 1

    def __call__(self, p: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t2c = self.t2c.to(p.device)
        idx = t2c.expand_as(p)
        pc = torch.zeros(*p.shape[:-1], self.k, dtype=p.dtype, device=p.device).scatter_add_(-1, idx, p)
        qc = torch.zeros_like(pc).scatter_add_(-1, idx, q)
        c = t2c[x].unsqueeze(-1)
        return _ratio(pc.gather(-1, c).squeeze(-1), qc.gather(-1, c).squeeze(-1))


def build_exact(
    settings: DecoderSettings, model: GPT, *, codebook: torch.Tensor | None, token_to_cluster: torch.Tensor | None
) -> Rule:
    """``exact``: SJD's rule."""
    return exact_rule


def build_gsd(
    settings: DecoderSettings, model: GPT, *, codebook: torch.Tensor | None, token_to_cluster: torch.Tensor | None
) -> Rule:
    """``gsd``: groups in the AR model's input embedding table."""
    return GroupRule(
        model.tok_embeddings.weight, settings.gsd_neighbors, settings.gsd_prob_gap, settings.gsd_embed_dist
    )


def build_latent(
    settings: DecoderSettings, model: GPT, *, codebook: torch.Tensor | None, token_to_cluster: torch.Tensor | None
) -> Rule:
    """``latent``: LANTERN's neighbours in the tokenizer's codebook."""
    V = model.config.vocab_size
    if codebook is None:
        raise CodepriorError("sampling: --accept latent needs the tokenizer's codebook")
    if codebook.shape[0] != V:
        raise CodepriorError(
            f"sampling: --accept latent: the codebook has {codebook.shape[0]} codes but the model's vocabulary is {V}"
        )
    return LatentRule(codebook, settings.latent_k, settings.latent_delta)


def build_prior(
    settings: DecoderSettings, model: GPT, *, codebook: torch.Tensor | None, token_to_cluster: torch.Tensor | None
) -> Rule:
    """``prior``: cluster mass under the prior's partition."""
    V = model.config.vocab_size
    if token_to_cluster is None:
        raise CodepriorError("sampling: --accept prior needs a prior file (--prior)")
    if token_to_cluster.numel() != V:
        raise CodepriorError(
            f"sampling: --accept prior: the prior covers {token_to_cluster.numel()} codes but the "
            f"model's vocabulary is {V}"
        )
    return PriorRule(token_to_cluster)


def build_rule(
    settings: DecoderSettings,
    model: GPT,
    *,
    codebook: torch.Tensor | None = None,
    token_to_cluster: torch.Tensor | None = None,
    coarse: bool = False,
) -> Rule:
    """The acceptance rule of ``settings`` for ``model`` (its builder in :data:`ACCEPT_RULES` checks its inputs)."""
    a = settings.accept
    entry = ACCEPT_RULES[a]
    if coarse and entry.codes_only:
        usable = " or ".join(n for n, r in ACCEPT_RULES.items() if not r.codes_only)
        raise CodepriorError(
            f"sampling: --accept {a} needs a token model; a coarse model's vocabulary is cluster ids (use {usable})"
        )
    module, function = entry.build.split(":")
    build = getattr(importlib.import_module(module), function)
    return build(settings, model, codebook=codebook, token_to_cluster=token_to_cluster)
