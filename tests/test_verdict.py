"""The verdict: seed summaries, steps to the baseline's FID, and sentences that follow the numbers."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from codeprior.verdict import (
    collect,
    differs,
    mean_curve,
    results_markdown,
    step_ratios,
    steps_to_reach,
    summarize,
    verdict,
)


def _rows(fids: dict[str, list[float]]) -> list[dict]:
    prior = {"token": None, "coarse-kmeans": "kmeans", "coarse-dcpe": "dcpe"}
    return [
        {
            "variant": v,
            "run": v if k == 0 else f"{v}-seed{k}",
            "seed": k,
            "objective": "token" if v == "token" else "coarse",
            "prior": prior[v],
            "fid": f,
            "class_match": 0.8,
        }
        for v, fs in fids.items()
        for k, f in enumerate(fs)
    ]


def test_summarize_means_and_sample_sd():
    s = {r["variant"]: r for r in summarize(_rows({"token": [10.0, 12.0, 14.0], "coarse-dcpe": [9.0]}))}
    assert s["token"]["n"] == 3 and s["token"]["fid"] == 12.0
    assert s["token"]["fid_sd"] == pytest.approx(statistics.stdev([10, 12, 14]))
    assert s["coarse-dcpe"]["fid_sd"] is None and s["coarse-dcpe"]["kid"] is None


def test_steps_to_reach_interpolates_and_misses():
    assert steps_to_reach([100, 200, 300], [30.0, 20.0, 10.0], 15.0) == pytest.approx(250.0)
    assert steps_to_reach([100, 200], [12.0, 8.0], 15.0) == 100.0  # already below at the first evaluation
    assert steps_to_reach([100, 200], [30.0, 20.0], 15.0) is None


def test_mean_curve_uses_common_steps():
    steps, vals = mean_curve([{"step": [1, 2, 3], "fid": [10, 8, 6]}, {"step": [2, 3], "fid": [6, 4]}])
    assert steps == [2, 3] and vals == [7.0, 5.0]


def test_step_ratio_against_the_baseline_final_fid():
    curves = {
        "token": [{"step": [100, 200], "fid": [20.0, 10.0]}],
        "coarse-dcpe": [{"step": [100, 200], "fid": [15.0, 5.0]}],
        "coarse-kmeans": [{"step": [100, 200], "fid": [30.0, 12.0]}],
    }
    r = step_ratios(curves)
    assert r["coarse-dcpe"] == pytest.approx(150 / 200)  # 15 -> 5 crosses 10 half-way
    assert r["coarse-kmeans"] is None


def test_step_ratio_divides_by_the_baseline_own_crossing():
    # the baseline dips to 8 at step 200 and ends at 10: it first reaches 10 at step 150, not at its last step
    curves = {
        "token": [{"step": [100, 200, 300], "fid": [12.0, 8.0, 10.0]}],
        "coarse-dcpe": [{"step": [100, 200, 300], "fid": [14.0, 12.0, 10.0]}],
    }
    r = step_ratios(curves)
    assert r["coarse-dcpe"] == pytest.approx(300 / 150)


def test_differs_is_a_two_standard_error_rule():
    a = {"fid": 10.0, "fid_sd": 1.0, "n": 4}
    assert differs(a, {"fid": 12.5, "fid_sd": 1.0, "n": 4}) is True  # gap 2.5 > 2 * 0.707
    assert differs(a, {"fid": 11.0, "fid_sd": 1.0, "n": 4}) is False
    assert differs(a, {"fid": 20.0, "fid_sd": None, "n": 1}) is None


def test_verdict_with_one_seed_does_not_rank_noise():
    s = summarize(_rows({"token": [12.0], "coarse-kmeans": [10.0], "coarse-dcpe": [9.5]}))
    text = verdict(s, {"coarse-kmeans": 0.7, "coarse-dcpe": 0.6})
    assert "as a share of the baseline's own steps to it: 0.70x for coarse-kmeans, 0.60x for coarse-dcpe." in text
    assert "DCPE is lower by 0.50 FID" in text and "may be noise" in text
    assert "beyond" not in text


def test_verdict_with_seeds_says_where_the_spread_decides():
    rng = np.random.default_rng(0)
    rows = _rows(
        {
            "token": list(20 + rng.normal(0, 0.3, 3)),
            "coarse-kmeans": list(15 + rng.normal(0, 0.3, 3)),
            "coarse-dcpe": list(15.1 + rng.normal(0, 0.3, 3)),
        }
    )
    text = verdict(summarize(rows), {"coarse-kmeans": 0.5, "coarse-dcpe": None})
    assert "coarse-dcpe did not reach it" in text
    assert text.count("(beyond the seed spread)") == 2
    assert "DCPE and k-means do not differ beyond the seed spread" in text
    assert "over 3 training seeds" in text


def test_collect_and_markdown_from_a_run_folder(tmp_path):
    run = tmp_path / "run"
    rows = _rows({"token": [12.0, 13.0], "coarse-dcpe": [9.0, 9.5]})
    (run / "evaluate").mkdir(parents=True)
    (run / "evaluate" / "metrics.json").write_text(
        json.dumps({"rows": rows, "seeds": 2, "num_samples": 1000, "feature_accuracy": 0.915})
    )
    for r in rows:
        d = run / f"train-{r['run']}"
        d.mkdir()
        (d / "curves.json").write_text(json.dumps({"eval": {"step": [100, 200], "fid": [r["fid"] * 2, r["fid"]]}}))
        (d / "manifest.json").write_text(json.dumps({"metrics": {"steps": 200}}))
    res = collect(run)
    assert res["steps"] == 200 and len(res["curves"]["token"]) == 2
    md = results_markdown(res)
    assert "| token | token | – | 12.50 ± 0.71 |" in md
    assert "| coarse-dcpe | coarse | dcpe | 9.25 ± 0.35 |" in md
    assert "mean ± standard deviation over 2 training seeds" in md and "(test accuracy 91.5%)" in md
    assert md.rstrip().endswith(res["verdict"])
    assert collect(tmp_path / "nothing") == {}
