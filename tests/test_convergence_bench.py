"""Pieces of benchmarks/convergence.py and convergence_summary.py: steps-to-target interpolation, seed aggregation,
the headline ratio, eval-log de-duplication after a resume, the IDX subset writer and the generated markdown."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import convergence as C
from benchmarks import convergence_runs as R
from benchmarks import convergence_summary as CS


def test_steps_to_reach_interpolates_first_crossing():
    steps, fids = [100, 200, 300, 400], [50.0, 30.0, 10.0, 20.0]
    s, bounded = CS.steps_to_reach(steps, fids, 20.0)
    assert s == pytest.approx(250.0) and not bounded  # halfway between 30 @ 200 and 10 @ 300
    s, _ = CS.steps_to_reach(steps, fids, 10.0)
    assert s == pytest.approx(300.0)  # exactly hit: the evaluation step itself
    assert CS.steps_to_reach(steps, fids, 5.0) == (None, False)  # never reached
    assert CS.steps_to_reach(steps, fids, 60.0) == (100.0, True)  # already below at the first evaluation


def test_aggregate_curves_mean_std_on_common_steps():
    a = {10: 4.0, 20: 2.0, 30: 1.0}
    b = {10: 6.0, 20: 4.0}  # this seed lacks step 30 (unfinished): only common steps are aggregated
    agg = CS.aggregate_curves([a, b])
    assert agg["step"] == [10, 20]
    assert agg["mean"] == pytest.approx([5.0, 3.0])
    assert agg["std"] == pytest.approx([math.sqrt(2.0), math.sqrt(2.0)])  # sample std of (4, 6)
    assert agg["n"] == [2, 2]
    one = CS.aggregate_curves([a])
    assert one["std"] == [0.0, 0.0, 0.0]


def test_headline_ratio_to_baseline():
    agg = {
        "token": {"step": [100, 200, 300, 400], "mean": [40.0, 30.0, 25.0, 20.0], "std": [0] * 4, "n": [2] * 4},
        "fast": {"step": [100, 200, 300, 400], "mean": [30.0, 20.0, 15.0, 12.0], "std": [0] * 4, "n": [2] * 4},
        "slow": {"step": [100, 200, 300, 400], "mean": [60.0, 50.0, 40.0, 35.0], "std": [0] * 4, "n": [2] * 4},
    }
    h = CS.headline(agg)
    assert h["token"]["target_fid"] == 20.0 and h["token"]["ratio"] == pytest.approx(1.0)
    assert h["fast"]["steps"] == pytest.approx(200.0) and h["fast"]["ratio"] == pytest.approx(0.5)
    assert h["slow"]["steps"] is None and h["slow"]["ratio"] is None


def test_summarize_seed_mean_and_markdown_reports_not_reached():
    def run(seed, curve, fid):
        return {
            "seed": seed,
            "curve": {str(k): v for k, v in curve.items()},
            "final": {"fid": fid, "is_mean": 2.0, "precision": 0.5, "recall": 0.4, "class_match": 0.6},
            "train": {"val_loss": 5.0},
        }

    results = {
        "token": [run(0, {50: 40.0, 100: 22.0}, 22.0), run(1, {50: 44.0, 100: 18.0}, 18.0)],
        "cluster-ce-dcpe": [run(0, {50: 30.0, 100: 20.0}, 20.0), run(1, {50: 30.0, 100: 10.0}, 10.0)],
        "coarse-dcpe": [run(0, {50: 90.0, 100: 80.0}, 80.0)],
    }
    summ = CS.summarize(results)
    assert summ["final"]["token"]["fid"]["mean"] == pytest.approx(20.0)
    assert summ["curves"]["token"]["mean"] == pytest.approx([42.0, 20.0])
    # cluster-ce mean curve (30, 15) crosses 20 at 50 + (30-20)/(30-15)*50
    assert summ["headline"]["cluster-ce-dcpe"]["steps"] == pytest.approx(50 + 10 / 15 * 50)
    assert summ["headline"]["cluster-ce-dcpe"]["ratio"] == pytest.approx((50 + 10 / 15 * 50) / 100)
    meta = {
        "budget": dict(C.BUDGETS["quick"]),
        "budget_name": "quick",
        "command": "python -m benchmarks.convergence",
        "machine": "test",
        "date": "today",
        "run_minutes": 1.0,
        "k": 512,
        "num_codes": 4096,
        "seeds_run": [0, 1],
        "codes_desc": "codes",
        "feature_extractor": {"num_features": 256, "test_accuracy": 0.9},
        "num_reference": 2000,
        "cfg_scale": 2.0,
        "temperature": 1.0,
        "refine_temperature": 1.0,
        "tokenizer_desc": "",
        "missing": ["coarse-dcpe/seed1"],
        "plot_name": "convergence.png",
    }
    md = CS.markdown(summ, meta)
    assert "| coarse-dcpe | 1 | 80.00 |" in md and "not reached" in md
    assert "**0.83**" in md  # cluster-ce-dcpe ratio
    assert "coarse-dcpe/seed1" in md and "test accuracy 0.9000" in md


def test_read_eval_log_keeps_last_record_per_step(tmp_path):
    p = tmp_path / "eval.jsonl"
    lines = [{"step": 40, "fid": 9.0}, {"step": 80, "fid": 8.0}, {"step": 80, "fid": 7.5}]  # 80 redone after resume
    p.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    log = R.read_eval_log(p)
    assert sorted(log) == [40, 80] and log[80]["fid"] == 7.5
    assert R.read_eval_log(tmp_path / "missing.jsonl") == {}


def test_subset_is_stratified_idx_readable_by_codeprior(tmp_path):
    from codeprior.data.images import load_idx

    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    y_tr = np.repeat(np.arange(10), 30)
    x_tr = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    R._write_idx(src / "train-images-idx3-ubyte.gz", x_tr)
    R._write_idx(src / "train-labels-idx1-ubyte.gz", y_tr.astype(np.uint8))
    R._write_idx(src / "t10k-images-idx3-ubyte.gz", x_tr[:50])
    R._write_idx(src / "t10k-labels-idx1-ubyte.gz", y_tr[:50].astype(np.uint8))
    out = R.make_subset(tmp_path / "sub", "fashion-mnist", 100, 0, data_dir=str(src))
    x, y = load_idx("fashion-mnist", "train", out)
    assert x.shape == (100, 28, 28) and np.bincount(y).tolist() == [10] * 10
    # every subset image is one of the source images with its own label
    lookup = {x_tr[i].tobytes(): y_tr[i] for i in range(len(x_tr))}
    assert all(lookup[x[i].tobytes()] == y[i] for i in range(len(x)))
    xt, _ = load_idx("fashion-mnist", "test", out)
    assert np.array_equal(xt, x_tr[:50])  # 0 = keep the whole split


def test_canonical_args_drops_work_splitting_flags():
    argv = [
        "--budget",
        "quick",
        "--only-seeds",
        "0",
        "1",
        "--variants",
        "token",
        "cluster-ce-dcpe",
        "--threads",
        "1",
        "--report-only",
        "--no-progress",
    ]
    assert C.canonical_args(argv) == ["--budget", "quick", "--threads", "1"]
