"""Refine model (CTF's auxiliary model): fine codes of every position from ``[class, coarse ids]`` in one pass.

Stage 2 of coarse-to-fine generation. The coarse AR model samples a sequence of cluster ids; this model reads
the whole coarse sequence (and the class) and predicts each position's fine code at once. It reuses the GPT's
trunk (:class:`codeprior.models.gpt.TransformerBase`: same blocks, 2-D RoPE, LlamaGen key names), with
``tok_embeddings`` over the k cluster ids and the ``output`` head over the N codes.

* ``causal=False`` (default): bidirectional attention, each position sees the whole coarse sequence (CTF).
* ``restrict=True`` (default): position ``i``'s logits are ``-inf`` outside the members of cluster ``coarse[i]``
  (mask from ``token_to_cluster``), so the prediction is always consistent with the coarse id.
* ``causal=True, restrict=False`` reproduces DCPE's released refine net (position ``i`` sees class and coarse
  ids ``0..i``; unrestricted output).

Logits are position-aligned: ``forward(coarse, labels)[:, i]`` predicts fine code ``i``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from codeprior.decoding.settings import REFINE_MODES
from codeprior.errors import CodepriorError
from codeprior.models.gpt import GPTConfig, TransformerBase, _check_inputs, sample_logits
from codeprior.models.gpt_config import _resolve_config
from codeprior.models.sampling import NonFiniteLogits

__all__ = ["RefineConfig", "RefineModel", "REFINE_CONFIGS", "get_refine_config"]

SAMPLE_MODES = REFINE_MODES  # the one list, in codeprior.decoding.settings (torch-free, for CLI choices)
_GATHER_RATIO = 8  # gather the head rows of the members when the largest cluster is <= vocab / 8 ...
_GATHER_ELEMS = 1 << 24  # ... in chunks of positions holding at most this many gathered weights


@dataclass
class RefineConfig(GPTConfig):
    """:class:`GPTConfig` plus the coarse vocabulary and the attention/restriction switches.

    ``vocab_size`` is the number of fine codes N (output head), ``coarse_vocab_size`` the number of clusters k
    (input embedding). Class dropout defaults to 0: stage 2 is not sampled with guidance.
    """

    coarse_vocab_size: int = 512
    causal: bool = False
    restrict: bool = True
    class_dropout_prob: float = 0.0

    kind = "refine"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.coarse_vocab_size <= 0:
            raise CodepriorError(f"RefineConfig: coarse_vocab_size must be positive, got {self.coarse_vocab_size}")
        if self.coarse_vocab_size > self.vocab_size:
            raise CodepriorError(
                f"RefineConfig: coarse_vocab_size={self.coarse_vocab_size} exceeds vocab_size={self.vocab_size}"
            )


#: Named refine configs. ``Refine-L`` is the size of CTF's 343M auxiliary model (GPT-L trunk).
REFINE_CONFIGS: dict[str, RefineConfig] = {
    "Refine-tiny": RefineConfig(dim=128, n_layer=2, n_head=4, multiple_of=64),
    "Refine-S": RefineConfig(dim=256, n_layer=6, n_head=8, multiple_of=64),
    "Refine-B": RefineConfig(dim=768, n_layer=12, n_head=12),
    "Refine-L": RefineConfig(dim=1024, n_layer=24, n_head=16),
}


def get_refine_config(name_or_cfg: str | RefineConfig | dict[str, Any], **overrides: Any) -> RefineConfig:
    """A :class:`RefineConfig` from a registry name, a config or a plain dict, with field overrides
    (``grid=(h, w)`` alone also sets ``block_size``)."""
    return _resolve_config(name_or_cfg, REFINE_CONFIGS, RefineConfig, overrides)


def _as_mapping(obj: Any) -> torch.Tensor | None:
    if obj is None:
        return None
    t = getattr(obj, "token_to_cluster", obj)  # a codeprior Prior or a tensor
    return torch.as_tensor(t)


class RefineModel(TransformerBase):
    """``model(coarse [B, L], labels [B]) -> fine logits [B, L, N]`` (float32).

    ``token_to_cluster`` (a LongTensor [N] or a :class:`codeprior.priors.Prior`; also accepted as ``prior=``)
    is stored as the persistent buffer ``token_to_cluster`` so checkpoints carry it. It is required when
    ``config.restrict`` is true and for ``sample(mode="random-member")``.
    """

    config: RefineConfig
    token_to_cluster: torch.Tensor  # a buffer (nn.Module's attribute lookup alone would type it Tensor | Module)

    def __init__(self, config: RefineConfig, token_to_cluster: Any = None, *, prior: Any = None) -> None:
        if not isinstance(config, RefineConfig):
            raise CodepriorError(f"RefineModel: expected a RefineConfig, got {type(config).__name__}")
        if token_to_cluster is not None and prior is not None:
            raise CodepriorError("RefineModel: pass token_to_cluster or prior, not both")
        super().__init__(config, config.coarse_vocab_size, config.vocab_size)
        self.register_buffer("token_to_cluster", torch.full((config.vocab_size,), -1, dtype=torch.long))
        mapping = _as_mapping(token_to_cluster if token_to_cluster is not None else prior)
        if mapping is not None:
            self.set_token_to_cluster(mapping)
        elif config.restrict:
            raise CodepriorError("RefineModel: restrict=True needs token_to_cluster (the prior's code -> cluster map)")

    # -- prior ----------------------------------------------------------------------------------------

    @property
    def has_prior(self) -> bool:
        return bool((self.token_to_cluster >= 0).all())

    def set_token_to_cluster(self, mapping: torch.Tensor) -> None:
        """Install and validate the code -> cluster map ([N] ints in 0..k-1, every cluster used)."""
        c = self.config
        mapping = torch.as_tensor(mapping)
        if mapping.dim() != 1 or mapping.shape[0] != c.vocab_size or mapping.dtype.is_floating_point:
            raise CodepriorError(
                f"RefineModel: token_to_cluster must be an integer tensor [{c.vocab_size}], got {mapping.dtype} {tuple(mapping.shape)}"
            )
        self.check_mapping(mapping)
        self.token_to_cluster.copy_(mapping.to(self.token_to_cluster.device, torch.long))

    def check_mapping(self, mapping: torch.Tensor | None = None) -> None:
        c = self.config
        m = self.token_to_cluster if mapping is None else mapping
        if int(m.min()) < 0 or int(m.max()) >= c.coarse_vocab_size:
            raise CodepriorError(f"RefineModel: token_to_cluster values must be in 0..{c.coarse_vocab_size - 1}")
        if int(torch.bincount(m.long().cpu(), minlength=c.coarse_vocab_size).eq(0).sum()):
            raise CodepriorError("RefineModel: token_to_cluster leaves some clusters empty")

    def member_mask(self, coarse: torch.Tensor) -> torch.Tensor:
        """Bool [B, L, N]: code n is a member of cluster ``coarse[b, i]``."""
        if not self.has_prior:
            raise CodepriorError("RefineModel: no token_to_cluster map installed")
        return self.token_to_cluster.view(1, 1, -1) == coarse.unsqueeze(-1)

    # -- forward / sample -----------------------------------------------------------------------------

    def _check(self, coarse: torch.Tensor, labels: torch.Tensor) -> None:
        _check_inputs(coarse, labels, self.config.num_classes, "coarse")
        if coarse.shape[1] > self.config.block_size:
            raise CodepriorError(
                f"refine model: sequence length {coarse.shape[1]} > block_size {self.config.block_size}"
            )

    def forward(self, coarse: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Fine-code logits [B, L, N]; restricted to each position's cluster when ``config.restrict``."""
        self._check(coarse, labels)
        logits = self.output(self._hidden(coarse, labels)).float()
        if self.config.restrict:
            logits = logits.masked_fill(~self.member_mask(coarse), float("-inf"))
        return logits

    @torch.no_grad()
    def sample(
        self,
        coarse: torch.Tensor,
        labels: torch.Tensor,
        temperature: float = 1.1,
        top_k: int = 0,
        mode: str = "sample",
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Fine codes [B, L] for a coarse sequence.

        ``mode="sample"``: draw from the (restricted) logits with temperature/top-k (CTF: temperature 1.1,
        top-k all); ``"argmax"``: the most likely code (DCPE release); ``"random-member"``: a uniformly random
        member of each position's cluster (no network). ``generator`` as in
        :func:`codeprior.models.gpt.sample_logits` (a list = one generator per sample).
        """
        if mode not in SAMPLE_MODES:
            raise CodepriorError(f"refine sampling: mode must be one of {', '.join(SAMPLE_MODES)}, got {mode!r}")
        device = self.token_to_cluster.device
        coarse = torch.as_tensor(coarse).to(device=device, dtype=torch.long)
        labels = torch.as_tensor(labels).to(device=device, dtype=torch.long)
        self._check(coarse, labels)
        if coarse.numel() and (int(coarse.min()) < 0 or int(coarse.max()) >= self.config.coarse_vocab_size):
            raise CodepriorError(f"refine sampling: coarse ids must be in 0..{self.config.coarse_vocab_size - 1}")
        c = self.config
        if mode == "random-member" or c.restrict:
            # Work over each position's cluster members only (padded to the largest cluster): the same
            # distribution as the masked [B, L, N] logits, without softmax and CDF over all N codes.
            members, valid = self._members_of(coarse)
            if mode == "random-member":
                logits = torch.zeros(members.shape, device=device).masked_fill(~valid, float("-inf"))
            else:
                logits = _finite(self._member_logits(coarse, labels, members)).masked_fill(~valid, float("-inf"))
            pick = logits.argmax(-1) if mode == "argmax" else sample_logits(logits, temperature, top_k, 1.0, generator)
            return members.gather(-1, pick.unsqueeze(-1)).squeeze(-1)
        logits = _finite(self._in_eval(self.forward, coarse, labels))
        if mode == "argmax":
            return logits.argmax(-1)
        return sample_logits(logits, temperature, top_k, 1.0, generator)

    def _hidden(self, coarse: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, dim] of the L code positions (the class prefix dropped)."""
        c = self.config
        return self.forward_hidden(self.embed(coarse, labels), causal=c.causal)[:, c.cls_token_num :]

    def _in_eval(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` with the model in eval mode (dropout off), restoring the previous mode."""
        was_training = self.training
        self.eval()
        try:
            return fn(*args)
        finally:
            self.train(was_training)

    def _member_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``table`` [k, S] (codes of each cluster in ascending order, padded with 0) and ``valid`` [k, S];
        S = the largest cluster. Cached until ``token_to_cluster`` changes (in place or by loading weights)."""
        if not self.has_prior:
            raise CodepriorError("RefineModel: no token_to_cluster map installed")
        t2c = self.token_to_cluster
        key = (t2c.device, t2c.data_ptr(), t2c._version)
        cached = getattr(self, "_table_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        k = self.config.coarse_vocab_size
        order = torch.argsort(t2c, stable=True)  # codes grouped by cluster, ascending within a cluster
        sizes = torch.bincount(t2c, minlength=k)
        starts = torch.cumsum(sizes, 0) - sizes
        cl = t2c[order]
        table = torch.zeros(k, int(sizes.max()), dtype=torch.long, device=t2c.device)
        valid = torch.zeros(table.shape, dtype=torch.bool, device=t2c.device)
        pos = torch.arange(t2c.numel(), device=t2c.device) - starts[cl]
        table[cl, pos] = order
        valid[cl, pos] = True
        self._table_cache = (key, table, valid)
        return table, valid

    def _members_of(self, coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Member codes [B, L, S] of each position's cluster and their validity mask."""
        table, valid = self._member_table()
        return table[coarse], valid[coarse]

    def _member_logits(self, coarse: torch.Tensor, labels: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
        """Logits [B, L, S] of each position's member codes (float32).

        When clusters are small next to the vocabulary, only the members' rows of the output head are used (in
        chunks of positions, so the gathered weights stay under ~``_GATHER_ELEMS`` elements); otherwise the full
        head is computed and the members' columns are gathered.
        """
        h = self._in_eval(self._hidden, coarse, labels)
        B, L, S = members.shape
        W = self.output.weight
        if W.shape[0] < S * _GATHER_RATIO:
            return self.output(h).float().gather(-1, members)
        hf, mf = h.reshape(B * L, 1, -1), members.reshape(B * L, S)
        rows = max(1, _GATHER_ELEMS // max(S * W.shape[1], 1))
        out = torch.empty(B * L, S, device=h.device, dtype=torch.float32)
        for i in range(0, B * L, rows):
            w = W[mf[i : i + rows]].to(hf.dtype)  # [r, S, d]
            out[i : i + rows] = torch.bmm(hf[i : i + rows], w.transpose(1, 2)).squeeze(1).float()
        return out.view(B, L, S)


def _finite(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` [B, L, V] unchanged, or :class:`NonFiniteLogits` naming the first position with NaN / inf (one
    check per batch: the refine model draws every position in one pass)."""
    bad = ~torch.isfinite(logits.sum(-1)).all(0)  # per position; a sum is finite iff its terms are
    if bool(bad.any()):
        raise NonFiniteLogits(
            f"refine sampling: non-finite logits (nan/inf) at token {int(bad.nonzero()[0])}", stage="refine"
        )
    return logits
