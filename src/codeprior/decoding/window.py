"""The cost-aware Jacobi window (``--window auto``): pick, pass by pass, the window that maximises the expected
accepted tokens per second, or plain AR decoding when no window pays.

Two inputs:

* **Pass costs** (:class:`PassCosts`): the wall time of one speculative pass at each candidate window
  (:data:`WINDOWS`, the model, the acceptance rule, top-k/top-p and the draft draws included) and of one token of
  plain AR decoding (``GPT.generate``), for this model, batch, device, dtype and sampling arguments. Measured once
  (:func:`codeprior.decoding.jacobi.measure_pass_costs`, interleaved rounds, the minimum kept) and stored in a small
  JSON cache (:func:`cost_cache_path`: ``$CODEPRIOR_WINDOW_COSTS``, else ``window-costs.json`` under
  ``$CODEPRIOR_CACHE`` / ``~/.cache/codeprior``; written atomically) keyed by device name, threads, model shape,
  batch bucket (:func:`batch_bucket`), dtype, torch version and the sampling arguments that change a pass's work.
* **Acceptance** (:class:`AcceptanceStats`): per draft slot ``j`` the chance that its draft is accepted once the
  drafts before it were, counted over this decoding's passes and shrunk toward the pooled rate, which itself
  starts at a prior guess. A window ``W`` then yields ``E(W) = 1 + sum_{k<W} prod_{j<k} a_j`` tokens per pass.

:class:`AutoWindow` chooses ``argmax_W E(W) / cost(W)`` at the start (plain AR unless a window promises
START_MARGIN more than ``1 / cost_AR``: the whole batch then runs ``GPT.generate``; so it does when window 1 is the
best: the same draws, cheaper), and again before every pass as the statistics grow and as finished
samples leave the batch (the costs of the smaller batch). When, mid-decoding, no window beats an AR token any
more, the unfinished samples are handed over to plain AR decoding from their accepted prefixes (a window-1
speculative pass does an AR step's work with more bookkeeping). Windows change between passes without changing the
output distribution of the exact rule: dropped drafts are simply not verified, and the drafts of added slots are
initialised as new positions always are (docs/sampling.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "WINDOWS",
    "AcceptanceStats",
    "AutoWindow",
    "PassCosts",
    "batch_bucket",
    "cost_cache_path",
    "expected_tokens",
    "load_costs",
    "max_window",
    "store_costs",
]

#: candidate windows (those above the sequence length or ``max_window`` are dropped)
WINDOWS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
#: a switch of window must promise at least this much more throughput (no flapping on noise)
SWITCH_MARGIN = 0.02
#: speculative decoding must promise this much more than plain AR at the start: a window-1 pass reached later costs
#: a little more than a GPT.generate token, and the prior guess of the acceptance may be optimistic
START_MARGIN = 0.10
#: drafts verified at slot 0 before a decoding may hand its samples over to plain AR: a few first-pass rejections
#: (of fresh, uniformly drawn drafts) are no verdict
HANDOFF_EVIDENCE = 4


def max_window(seq_len: int) -> int:
    """The largest candidate window for a sequence of ``seq_len`` tokens (what ``--window auto`` allocates)."""
    return max(w for w in WINDOWS if w <= max(1, seq_len))


def expected_tokens(alphas: list[float], window: int) -> float:
    """Expected tokens per pass of a window: ``1 + sum_{k=1}^{W-1} prod_{j<k} alphas[j]`` (slot j accepted once
    slots before it were; the pass always yields one token)."""
    e, run = 1.0, 1.0
    for j in range(window - 1):
        run *= alphas[j]
        e += run
    return e


@dataclass
class AcceptanceStats:
    """Per-slot draft acceptance counts of one decoding, with a prior: the pooled rate starts at ``prior`` with
    the weight of ``prior_weight`` drafts; a slot's rate is shrunk toward the pooled one with ``slot_weight``."""

    prior: float = 0.5
    prior_weight: float = 8.0
    slot_weight: float = 4.0
    tested: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)

    def update(self, tested: list[int], accepted: list[int]) -> None:
        """Add one pass's counts: ``tested[j]`` drafts verified at slot j, ``accepted[j]`` of them accepted."""
        grow = len(tested) - len(self.tested)
        if grow > 0:
            self.tested += [0] * grow
            self.accepted += [0] * grow
        for j, (t, a) in enumerate(zip(tested, accepted)):
            self.tested[j] += int(t)
            self.accepted[j] += int(a)

    def pooled(self) -> float:
        return (sum(self.accepted) + self.prior * self.prior_weight) / (sum(self.tested) + self.prior_weight)

    def alphas(self, n: int) -> list[float]:
        """Acceptance rates of slots ``0 .. n-1`` (slots never verified take the pooled rate)."""
        pool = self.pooled()
        out = []
        for j in range(n):
            t = self.tested[j] if j < len(self.tested) else 0
            a = self.accepted[j] if j < len(self.accepted) else 0
            out.append((a + self.slot_weight * pool) / (t + self.slot_weight))
        return out


@dataclass
class PassCosts:
    """Seconds per speculative pass at each window (``jacobi``) and per token of plain AR decoding (``ar``; None
    when unknown: the start then never chooses AR over a window-1 pass)."""

    jacobi: dict[int, float]
    ar: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"jacobi": {str(w): s for w, s in sorted(self.jacobi.items())}, "ar": self.ar}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PassCosts:
        return cls({int(w): float(s) for w, s in d["jacobi"].items()}, None if d.get("ar") is None else float(d["ar"]))


CostSource = Callable[[int], PassCosts]


class AutoWindow:
    """Chooses the window of each pass from measured pass costs and the running acceptance statistics.

    ``costs(batch)`` gives the :class:`PassCosts` of a batch of that many samples. ``fixed`` (the compiled,
    fixed-shape step) keeps the first choice for the whole decoding. ``usage`` counts sample-passes per window
    (``ar_samples``: samples decoded by plain AR); ``choices`` lists (batch, window) at every change."""

    def __init__(
        self,
        costs: CostSource,
        *,
        max_window: int = max(WINDOWS),
        stats: AcceptanceStats | None = None,
        fixed: bool = False,
    ) -> None:
        self.costs = costs
        self.max_window = int(max_window)
        self.stats = stats or AcceptanceStats()
        self.fixed = fixed
        self.window: int | None = None
        self.usage: dict[int, int] = {}
        self.ar_samples = 0
        self.choices: list[tuple[int, int]] = []
        self._cache: dict[int, PassCosts] = {}

    def candidates(self, seq_len: int) -> list[int]:
        return [w for w in WINDOWS if w <= min(self.max_window, seq_len)]

    def _costs(self, batch: int) -> PassCosts:
        if batch not in self._cache:  # a larger window never costs less: noise in the timings is smoothed away
            pc = self.costs(batch)
            smooth, low = {}, math.inf
            for w in sorted(pc.jacobi, reverse=True):
                low = min(low, pc.jacobi[w])
                smooth[w] = low
            self._cache[batch] = PassCosts(smooth, pc.ar)
        return self._cache[batch]

    def rates(self, batch: int, seq_len: int) -> dict[int, float]:
        """Expected tokens per second of each measured candidate window at this batch."""
        pc = self._costs(batch)
        ws = [w for w in self.candidates(seq_len) if w in pc.jacobi]
        alphas = self.stats.alphas(max(ws, default=1))
        return {w: expected_tokens(alphas, w) / max(pc.jacobi[w], 1e-12) for w in ws}

    def start(self, batch: int, seq_len: int) -> int:
        """The first window, or 0 for plain AR decoding of the whole batch (no window beats it)."""
        rates = self.rates(batch, seq_len)
        ar = self._costs(batch).ar
        best = max(rates, key=lambda w: rates[w]) if rates else 1
        # window 1 is AR decoding draw for draw, and GPT.generate is the cheaper way to run it
        beats_ar = ar is None or rates[best] > (1 + START_MARGIN) / ar
        self.window = best if best > 1 and beats_ar else 0
        self.choices.append((batch, self.window))
        return self.window

    def choose(self, batch: int, seq_len: int) -> int:
        """The window of the next pass (the current one unless another promises more than SWITCH_MARGIN), or 0
        when plain AR decoding is now at least as fast as every window (the decoder then hands the unfinished
        samples over to it)."""
        assert self.window is not None and self.window > 0, "start() chose plain AR decoding"
        if self.fixed:
            return self.window
        rates = self.rates(batch, seq_len)
        best = max(rates, key=lambda w: rates[w])
        ar = self._costs(batch).ar
        seen = self.stats.tested[0] if self.stats.tested else 0
        if ar is not None and seen >= HANDOFF_EVIDENCE and (best == 1 or rates[best] <= 1.0 / ar):
            if not self.choices or self.choices[-1] != (batch, 0):
                self.choices.append((batch, 0))
            return 0
        cur = rates.get(self.window, 0.0)
        if best != self.window and rates[best] > cur * (1 + SWITCH_MARGIN):
            self.window = best
            self.choices.append((batch, best))
        return self.window

    def record(self, window: int, samples: int) -> None:
        self.usage[window] = self.usage.get(window, 0) + int(samples)

    def summary(self) -> dict[str, Any]:
        """What ``samples.json`` and the benchmark record: sample-passes per window, AR samples, the choices and
        the final acceptance rates of the first slots."""
        return {
            "passes_by_window": {str(w): n for w, n in sorted(self.usage.items())},
            "ar_samples": self.ar_samples,
            "choices": [list(c) for c in self.choices],
            "acceptance": [round(a, 4) for a in self.stats.alphas(min(8, max(len(self.stats.tested), 1)))],
        }


# ------------------------------------------------------------------------------------------------------------
# the per-device cost cache
# ------------------------------------------------------------------------------------------------------------

_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def batch_bucket(batch: int) -> int:
    """The measured batch size standing for ``batch`` (nearest on a log scale; batches above 1024 use 1024)."""
    b = max(1, int(batch))
    return min(_BUCKETS, key=lambda x: (abs(math.log(x / b)), x))


def cost_cache_path() -> Path | None:
    """``$CODEPRIOR_WINDOW_COSTS`` (``off``: no disk cache), else ``window-costs.json`` in the codeprior cache
    folder (``$CODEPRIOR_CACHE``, ``$XDG_CACHE_HOME/codeprior`` or ``~/.cache/codeprior``)."""
    env = os.environ.get("CODEPRIOR_WINDOW_COSTS")
    if env:
        return None if env.lower() == "off" else Path(env)
    from codeprior.evaluate.classifier import default_cache_dir

    return default_cache_dir() / "window-costs.json"


def device_name(device: Any) -> str:
    """The device a pass runs on: the GPU's name, else the CPU model and torch's thread count."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{dev.type}:{cpu}:{torch.get_num_threads()} threads"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # missing or damaged: measured again, rewritten
        return {}


def load_costs(key: str) -> PassCosts | None:
    path = cost_cache_path()
    entry = _read(path).get(key) if path is not None else None
    try:
        return PassCosts.from_json(entry) if entry else None
    except (KeyError, TypeError, ValueError):
        return None


def store_costs(key: str, costs: PassCosts) -> None:
    """Add one entry to the cache (read, update, atomic replace; a cache that cannot be written is skipped)."""
    from codeprior.errors import CodepriorError
    from codeprior.utils.io import write_json_atomic

    path = cost_cache_path()
    if path is None:
        return
    data = _read(path)
    data[key] = costs.to_json()
    with contextlib.suppress(CodepriorError, OSError):
        write_json_atomic(path, data)
