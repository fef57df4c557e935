"""The FID hook shared by the pipeline and the convergence benchmark (codeprior.curves.make_fid_fn): the same
samples at every evaluation, IS / PRDC only at full evaluations, and decoding on the spec's (non-square) grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_gpt

from benchmarks import convergence_runs as R
from codeprior.models.gpt import GPT
from codeprior.sample import SampleSettings
from codeprior.utils.io import torch_save_atomic

N = 64  # codebook size
TINY = {"dim": 32, "n_layer": 1, "n_head": 2}


def _gpt(grid: tuple[int, int]) -> GPT:
    return tiny_gpt(None, 0.5, vocab_size=N, num_classes=10, grid=grid, **TINY)


def test_convergence_hook_same_samples_each_eval_and_full_metrics_at_the_end(fid_inputs):
    spec = R.fid_spec(fid_inputs, SampleSettings(cfg_scale=2.0, seed=0), 24, 10, "cpu", [7, 7])
    assert spec["grid"] == [7, 7] and spec["refine"] is None and spec["settings"]["cfg_scale"] == 2.0
    hook = R.eval_hook(spec, total=8)
    gpt = _gpt((7, 7))
    mid, end = hook(4, gpt), hook(8, gpt)
    assert sorted(mid) == ["class_match", "eval_seconds", "fid"]
    assert sorted(end) == [
        "class_match",
        "coverage",
        "density",
        "eval_seconds",
        "fid",
        "is_mean",
        "is_std",
        "precision",
        "recall",
    ]
    # a fixed sampling seed: the same model gives the same samples, hence the same FID, at every evaluation
    assert end["fid"] == pytest.approx(mid["fid"], rel=1e-9) and end["class_match"] == mid["class_match"]
    assert mid["fid"] > 0 and 0 <= mid["class_match"] <= 1 and 1 <= end["is_mean"] <= 10
    assert all(0 <= end[k] <= 1 for k in ("precision", "recall", "coverage"))


def test_hook_decodes_on_the_specs_grid(fid_inputs, monkeypatch):
    """A 4x7 code grid (not square) decodes to 16x28 images; a stand-in extractor records what it is given."""
    import codeprior.evaluate as ev

    seen = []

    class Recorder:
        def extract(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            seen.append(images.shape)
            flat = torch.from_numpy(images.reshape(len(images), -1)[:, :16].astype(np.float32))
            return flat, torch.zeros(len(images), 10)

    monkeypatch.setattr(ev, "make_extractor", lambda *a, **k: Recorder())
    torch_save_atomic({"features": torch.randn(30, 16) * 50 + 128}, Path(fid_inputs["reference_features"]))
    spec = R.fid_spec(fid_inputs, SampleSettings(seed=0), 12, 12, "cpu", (4, 7))
    res = R.eval_hook(spec, total=100)(1, _gpt((4, 7)))
    assert seen == [(12, 16, 28, 1)]
    assert np.isfinite(res["fid"]) and res["class_match"] == pytest.approx(2 / 12)  # argmax 0: labels 0 of 12
