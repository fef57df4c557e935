"""Pieces of benchmarks/prior_study.py (and study_geometry.py): the plan and its split over processes, the summary and DCPE-vs-k-means
verdict on synthetic result.json files, density disparity, the settings check, and a tiny smoke run."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import prior_study as P
from benchmarks import study_geometry as G
from codeprior.errors import CodepriorError

ROOT = Path(__file__).resolve().parents[1]


def test_plan_cells_seeds_balanced_and_shared_baseline():
    b = dict(P.BUDGETS["default"])
    cells = P.plan_cells(b, 4096, raw_rate=4)
    base = [c for c in cells if c["prior"] is None]
    assert len(base) == 1 and base[0]["seeds"] == [0, 1, 2]  # one shared baseline for every rate
    for c in cells[1:]:
        many = c["rate"] in (2, 8) and c["prior"] in ("kmeans", "dcpe") and c["normalize"]
        assert c["seeds"] == ([0, 1, 2] if many else [0])
    assert {(c["rate"], c["paradigm"]) for c in cells if c["prior"] == "balanced-kmeans"} == {
        (r, p) for r in (2, 4, 8, 16) for p in P.PARADIGMS
    }
    raw = [c for c in cells if not c["normalize"]]
    assert {(c["rate"], c["prior"], c["paradigm"]) for c in raw} == {
        (4, m, p) for m in ("kmeans", "dcpe") for p in P.PARADIGMS
    }
    # 1000 codes: rate 16 -> k = 62 does not divide 1000, so no balanced k-means there; rate 8 -> k = 125 does
    odd = P.plan_cells(b, 1000, raw_rate=None)
    bal = {c["rate"] for c in odd if c["prior"] == "balanced-kmeans"}
    assert bal == {2, 4, 8} and all(c["normalize"] for c in odd)
    runs = P.plan_runs(cells)
    assert sum(r.folder == "baseline" for r in runs) == 3
    assert {r.folder for r in runs if not r.normalize} == {"rate-4-raw"}


@pytest.mark.parametrize("n", [1, 2, 3])
def test_parts_cover_every_run_exactly_once_and_deterministically(n):
    b = dict(P.BUDGETS["default"])
    runs = P.plan_runs(P.plan_cells(b, 4096, raw_rate=8))
    parts = P.split_runs(runs, b, n)
    keys = [r.key for p in parts for r in p]
    assert sorted(keys) == sorted(r.key for r in runs) and len(set(keys)) == len(keys)
    assert [[r.key for r in p] for p in P.split_runs(list(reversed(runs)), b, n)] == [[r.key for r in p] for p in parts]
    loads = [sum(P.run_cost(r, b) for r in p) for p in parts]
    assert max(loads) - min(loads) <= max(P.run_cost(r, b) for r in runs)
    assert P.parse_part("2/3") == (2, 3)
    with pytest.raises(argparse.ArgumentTypeError):
        P.parse_part("3/2")


def _write_run(out: Path, folder: str, variant: str, seed: int, curve: dict[int, float], cm: float = 0.7) -> None:
    d = out / folder / "runs" / variant / f"seed{seed}"
    d.mkdir(parents=True)
    final = {"fid": curve[max(curve)], "precision": 0.5, "recall": 0.4, "class_match": cm, "is_mean": 2.0}
    (d / "result.json").write_text(
        json.dumps({"seed": seed, "curve": {str(k): v for k, v in curve.items()}, "final": final})
    )


def test_summary_and_verdict_on_synthetic_runs(tmp_path):
    b = dict(P.BUDGETS["default"], rates=[2, 8], seeds3_rates=[2, 8])
    cells = [c for c in P.plan_cells(b, 4096, None) if c["prior"] in (None, "kmeans", "dcpe")]
    for s in range(3):
        _write_run(tmp_path, "baseline", "token", s, {200: 40.0 + s, 400: 30.0 + s, 800: 20.0 + s})  # target 21
        # rate 2, cluster-ce: DCPE clearly better (final 10 +- 1 vs 20 +- 1) and reaches the target sooner
        _write_run(tmp_path, "rate-2", "cluster-ce-dcpe", s, {200: 30.0, 400: 15.0 + s, 800: 10.0 + s})
        _write_run(tmp_path, "rate-2", "cluster-ce-kmeans", s, {200: 40.0, 400: 30.0, 800: 20.0 + s})
        # rate 8, cluster-ce: gap 0.5 with seed spread 5: inside the noise
        _write_run(tmp_path, "rate-8", "cluster-ce-dcpe", s, {200: 40.0, 400: 30.0, 800: 20.0 + 5 * s})
        _write_run(tmp_path, "rate-8", "cluster-ce-kmeans", s, {200: 40.0, 400: 30.0, 800: 20.5 + 5 * s})
    summ = P.summarize_study(tmp_path, cells)
    assert summ["baseline"]["target_fid"] == pytest.approx(21.0)
    assert summ["baseline"]["steps"] == pytest.approx(800.0)  # the mean curve 41, 31, 21 first reaches 21 at 800
    v = {(x["rate"], x["paradigm"]): x for x in summ["verdicts"]}
    assert v[(2, "cluster-ce")]["winner"] == "dcpe" and v[(2, "cluster-ce")]["gap"] == pytest.approx(-10.0)
    assert v[(8, "cluster-ce")]["winner"] == "noise"
    assert v[(2, "coarse")]["winner"] == "missing"
    row = next(c for c in summ["cells"] if c["rate"] == 2 and c["prior"] == "dcpe" and c["paradigm"] == "cluster-ce")
    # seed s of DCPE: 30 @ 200 -> 15+s @ 400 crosses 21 at 200 + 200 * 9 / (15 - s)
    want = [(200 + 200 * 9 / (15 - s)) / 800 for s in range(3)]
    assert row["ratio"] == pytest.approx(sum(want) / 3) and row["ratio_sd"] > 0 and row["reached"] == "3/3"
    assert row["upper_bound"] is False  # first evaluation (30) above the target (21)
    assert row["n"] == 3 and row["fid"] == pytest.approx(11.0) and row["class_match"] == pytest.approx(0.7)
    geo = {"density": {"normalised": {"k": 5, "median": 0.1, "cv": 0.2, "p90_p10": 1.5}}, "priors": {}}
    meta = {
        "command": "python -m benchmarks.prior_study",
        "machine": "test",
        "date": "today",
        "run_minutes": 1.0,
        "budget": b,
        "cfg_scale": 3.0,
        "codes_desc": "codes",
        "plot_name": "prior_study.png",
        "ratio_plot_name": "prior_study_ratios.png",
        "missing": [],
    }
    md = P.markdown(summ, geo, {"ari": {"2": {"kmeans": 0.5}}, "raw_rate": 2}, meta)
    assert "rate 2, cluster-ce: DCPE wins (gap -10)" in md and "rate 8, cluster-ce: inside the noise" in md
    assert "CV 0.200" in md and "not run" in md
    assert P.plot_heatmap(summ, tmp_path / "img" / "h.png").is_file()
    assert P.plot_ratios(summ, tmp_path / "img" / "r.png").is_file()


def test_density_disparity_known_spread():
    even = torch.stack([torch.arange(400.0) % 20, torch.arange(400.0) // 20], 1)  # a square lattice: every 2nd-NN at 1
    d = G.density_disparity(even, normalize=False, k=2)
    assert d["cv"] == pytest.approx(0.0, abs=1e-9) and d["p90_p10"] == pytest.approx(1.0)
    assert d["median"] == pytest.approx(1.0)
    # half the codes 100x denser than the other half: CV near 1, p90/p10 near 100
    mixed = torch.cat([even[:200] * 0.01, even[200:] + 1000.0])
    m = G.density_disparity(mixed, normalize=False, k=2)
    assert m["p90_p10"] == pytest.approx(100.0, rel=1e-6) and m["cv"] > 0.9


def test_settings_mismatch_refused(tmp_path):
    p = tmp_path / "settings.json"
    P.check_settings(p, {"budget": {"steps": 10}, "cfg_scale": 3.0})
    P.check_settings(p, {"budget": {"steps": 10}, "cfg_scale": 3.0})  # same settings: accepted
    with pytest.raises(CodepriorError, match="budget"):
        P.check_settings(p, {"budget": {"steps": 20}, "cfg_scale": 3.0})


@pytest.mark.slow
def test_smoke_tiny_budget(tmp_path, fmnist_idx, tiny_pipeline):
    """The whole study at the tiny budget on a pipeline run built here (300 Fashion-MNIST images, 10 tokenizer steps):
    every cell finishes, the plots and the doc section are written, the geometry has both density views."""
    from codeprior.pipeline import config_from_dict, run_pipeline

    fmnist_idx(tmp_path / "data")
    cfg = config_from_dict(tiny_pipeline(tmp_path / "data"), "tiny.yaml")
    run = tmp_path / "run"
    for stage in ("tokenize", "classifier"):  # only what the study reads: no GPT training
        run_pipeline(cfg, run, until=stage, log=lambda msg: None)
    assert not (run / "train-token").exists()
    out, doc = tmp_path / "ps", tmp_path / "doc"
    cmd = [sys.executable, "-m", "benchmarks.prior_study", "--budget", "tiny", "--run-dir", str(run)]
    cmd += ["--out", str(out), "--doc-dir", str(doc), "--threads", "1", "--device", "cpu", "--no-progress"]
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    subprocess.run(cmd, check=True, env=env, timeout=900, cwd=ROOT)
    summ = json.loads((out / "summary.json").read_text())
    assert not summ["meta"]["missing"] and (doc / "img" / "prior_study.png").is_file()
    assert (doc / "img" / "prior_study_ratios.png").is_file()
    assert "<!-- BEGIN study -->" in (doc / "study.md").read_text()
    assert set(summ["geometry"]["density"]) == {"normalised", "raw"}
    new = [c for c in summ["summary"]["cells"] if c.get("variant_group") == "objectives"]  # issue 27's cells
    assert {c["variant"] for c in new} >= {"snce-code-best", "snce-encoder-best", "hier-cluster-ce-dcpe"}
    assert all(c["n"] == 1 for c in new) and summ["meta"]["snce_best"] is not None
    assert set(summ["meta"]["snce_mass"]) == {"8", "16"}
    assert "SNCE and hierarchical cluster-CE (issue 27)" in (doc / "study.md").read_text()


def test_issue27_cells_plan_and_reuse_of_a_finished_study(tmp_path, capsys):
    from benchmarks import study_objectives as O

    b = dict(P.BUDGETS["default"])
    new = O.plan_cells(b)
    sweep = [c for c in new if c["variant"].startswith("snce-code-k")]
    assert 1 <= len(sweep) <= 6 and all(c["seeds"] == [0] for c in sweep)
    assert all(c["seeds"] == [0, 1, 2] for c in new if c not in sweep)
    assert {c["variant"] for c in new if c not in sweep} == {
        "snce-code-best",
        "snce-encoder-best",
        "hier-cluster-ce-dcpe",
        "hier-cluster-ce-kmeans",
    }
    cells = [c for c in P.plan_cells(b, 4096, None) if c["prior"] in (None, "dcpe") and c["rate"] in (None, 2)] + new
    runs = P.plan_runs(cells)
    # a finished study with the same recipe: its baseline and rate-2 DCPE cells stand in for the missing runs
    old_cells = [
        {"rate": None, "prior": None, "paradigm": "token", "normalize": True, "seeds": [0, 1, 2], "n": 3, "fid": 20.0},
        {
            "rate": 2,
            "prior": "dcpe",
            "paradigm": "cluster-ce",
            "normalize": True,
            "seeds": [0, 1, 2],
            "n": 3,
            "fid": 12.0,
            "fid_sd": 0.1,
        },
        {
            "rate": 2,
            "prior": "dcpe",
            "paradigm": "coarse",
            "normalize": True,
            "seeds": [0, 1, 2],
            "n": 3,
            "fid": 15.0,
            "fid_sd": 0.1,
        },
    ]
    res = {"meta": {"budget": b}, "summary": {"cells": old_cells, "baseline": {"target_fid": 20.0, "steps": 800}}}
    (tmp_path / "ps.json").write_text(json.dumps(res))
    reuse = O.load_reuse(tmp_path / "ps.json", b)
    done = O.reused_runs(runs, reuse, tmp_path)
    assert done == {r.key for r in runs if r.folder in ("baseline", "rate-2")}
    plan = P.format_plan(cells, b, done=done)
    assert "(to run: none, finished)" in plan and f"{len(runs) - len(done)} runs to do" in plan
    # new runs: SNCE (3 seeds, better than the best old cell beyond the noise) and one seed of hier (not ranked)
    for s in range(3):
        _write_run(tmp_path, "objectives", "snce-code-best", s, {400: 15.0, 800: 10.0 + 0.1 * s})
    _write_run(tmp_path, "objectives", "hier-cluster-ce-dcpe", 0, {400: 30.0, 800: 18.0})
    summ = P.summarize_study(tmp_path, cells, reuse)
    assert summ["baseline"]["target_fid"] == 20.0
    rows = {(c["folder"], c["variant"]): c for c in summ["cells"]}
    assert rows[("rate-2", "cluster-ce-dcpe")]["reused"] and rows[("rate-2", "cluster-ce-dcpe")]["fid"] == 12.0
    assert rows[("objectives", "snce-code-best")]["ratio"] == pytest.approx(0.5)  # 20 reached at step 400 of 800
    v = {x["variant"]: x for x in summ["objective_verdicts"]}
    assert v["snce-code-best"]["winner"] == "better" and v["snce-code-best"]["against"] == "cluster-ce-dcpe rate 2"
    assert v["hier-cluster-ce-dcpe"]["winner"] == "one seed" and v["snce-encoder-best"]["winner"] == "missing"
    md = O.markdown(summ, {"2": {"dcpe": 0.4}}, (32, 1.0))
    assert "K = 32, tau = 1 x" in md and "snce-code-best: better" in md and "rate 2: dcpe 40.0%" in md
    # another recipe is not reused
    assert O.load_reuse(tmp_path / "ps.json", dict(b, steps=10)) is None
    assert "recipe differs in steps" in capsys.readouterr().out
    # the best setting waits for the whole sweep, then takes the lowest final FID
    assert O.best_setting(tmp_path, b) is None
    for i, (k, m) in enumerate(O.SWEEP):
        _write_run(tmp_path, "objectives", O.sweep_label(k, m), 0, {800: 30.0 - i if (k, m) != (32, 0.25) else 5.0})
    assert O.best_setting(tmp_path, b) == (32, 0.25)
