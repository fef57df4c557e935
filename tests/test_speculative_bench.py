"""Pieces of benchmarks/speculative.py's quality part (speculative_quality.py): cells through the FID hook with the
decoder's rule, resuming, the summary against AR, and the verdict's sentences on synthetic cells."""

from __future__ import annotations

import pytest
from helpers import tiny_gpt

from benchmarks import convergence_runs as R
from benchmarks import speculative_quality as Q
from codeprior.curves import make_fid_fn
from codeprior.decoding import DecoderSettings
from codeprior.models import load_vq
from codeprior.sample import SampleSettings, decoder_rule


def test_quality_cells_follow_the_decoder_and_resume(fid_inputs, tmp_path, monkeypatch):
    gpt, vq = (
        tiny_gpt(None, 0.5, vocab_size=64, num_classes=10, grid=(7, 7), dim=32, n_layer=1, n_head=2),
        load_vq(fid_inputs["vq"]),
    )
    settings = {
        "ar": SampleSettings(cfg_scale=2.0),
        "sjd-exact-w1": SampleSettings(cfg_scale=2.0, decoder=DecoderSettings("sjd", "exact", window=1)),
        "sjd-exact": SampleSettings(cfg_scale=2.0, decoder=DecoderSettings("sjd", "exact", window=4)),
    }
    spec = R.fid_spec(fid_inputs, settings["ar"], 20, 20, "cpu", [7, 7])
    models = {
        "token": {
            "gpt": gpt,
            "spec": spec,
            "settings": settings,
            "rules": {k: decoder_rule(s, gpt, vq) for k, s in settings.items()},
        }
    }
    cells = Q.run_quality(tmp_path, models, [0, 1], log=lambda _m: None)
    assert len(cells) == 6 and len(list((tmp_path / "quality").glob("*.json"))) == 6
    by = {(c["setting"], c["seed"]): c for c in cells}
    # window 1 is AR draw for draw: the same samples, hence the same metrics, at each seed
    for seed in (0, 1):
        assert by[("sjd-exact-w1", seed)]["fid"] == pytest.approx(by[("ar", seed)]["fid"], rel=1e-9)
        assert by[("ar", seed)]["passes_per_sample"] == 49 == by[("sjd-exact-w1", seed)]["passes_per_sample"]
        assert by[("sjd-exact", seed)]["passes_per_sample"] < 49  # several tokens per pass on this model
    assert by[("ar", 0)]["fid"] != by[("ar", 1)]["fid"]  # the seed reaches the sampler
    # the AR cell equals the FID hook called directly with that seed
    direct = make_fid_fn({**spec, "settings": {**spec["settings"], "seed": 1}})(gpt, full=True)
    assert by[("ar", 1)]["fid"] == pytest.approx(direct["fid"], rel=1e-9)
    assert by[("ar", 1)]["precision"] == pytest.approx(direct["precision"])
    # rerunning resumes: no cell is computed again
    monkeypatch.setattr(Q, "run_cell", lambda *a, **k: pytest.fail("a finished cell was recomputed"))
    again = Q.run_quality(tmp_path, models, [0, 1], log=lambda _m: None)
    assert again == cells
    rows = {r["setting"]: r for r in Q.summarize(cells)}
    assert rows["ar"]["n"] == 2 and rows["ar"]["pass_ratio"] == 1.0 and rows["sjd-exact"]["pass_ratio"] < 1
    assert (
        rows["sjd-exact-w1"]["fid_ratio"] == pytest.approx(1.0) and rows["sjd-exact-w1"]["fid_differs_from_ar"] is False
    )


def _cells(setting: str, fid: list[float], passes: list[float], model: str = "token") -> list[dict]:
    return [
        {"model": model, "setting": setting, "seed": s, "fid": f, "passes_per_sample": p, "class_match": 0.8}
        for s, (f, p) in enumerate(zip(fid, passes, strict=True))
    ]


def test_summary_and_verdict_on_synthetic_cells():
    cells = (
        _cells("ar", [10.0, 10.2, 9.8], [49, 49, 49])
        + _cells("sjd-exact", [10.1, 10.3, 9.9], [26.0, 26.5, 27.0])
        + _cells("sjd-gsd", [11.5, 11.6, 11.4], [14.0, 14.2, 13.8])  # fewest passes, but FID 15% worse
        + _cells("sjd-latent", [10.3, 10.4, 10.2], [18.0, 18.5, 19.0])  # 0.38x passes, FID +3%
        + _cells("sjd-prior-dcpe", [10.2, 10.5, 10.1], [21.0, 21.4, 20.6])
        + _cells("sjd-prior-kmeans", [10.2, 10.4, 10.0], [23.0, 23.4, 22.6])
    )
    rows = Q.summarize(cells)
    by = {r["setting"]: r for r in rows}
    assert by["sjd-gsd"]["fid_ratio"] == pytest.approx(11.5 / 10.0) and by["sjd-gsd"]["fid_differs_from_ar"]
    assert by["sjd-exact"]["fid_differs_from_ar"] is False
    assert by["sjd-latent"]["pass_ratio"] == pytest.approx(18.5 / 49)
    v = Q.verdict(rows)
    assert v[0].startswith("`exact` (SJD): 0.54x") and "within the seed spread" in v[0]
    assert "`sjd-latent` at 0.38x" in v[1] and ": met." in v[1]  # gsd is faster but outside the 5% FID band
    dk, dl, dg = v[2:5]
    assert dk.startswith("DCPE prior vs the k-means prior: fewer passes") and "FID within the seed spread" in dk
    assert dl.startswith("DCPE prior vs LANTERN's latent neighbours: more passes")
    assert dg.startswith("DCPE prior vs GSD's groups: more passes") and "FID better" in dg
    table = Q.quality_table(rows, {"dcpe": {"k": 512}})
    assert "| token | sjd prior (dcpe, k = 512) | 21.0 ± 0.4 | 0.43x |" in table
    assert "1.150 (beyond spread)" in table and "1.010 (in spread)" in table


def test_verdict_says_when_no_relaxed_rule_keeps_quality_and_when_one_seed_cannot_rank():
    cells = _cells("ar", [10.0, 10.1], [49, 49]) + _cells("sjd-latent", [12.0, 12.2], [15.0, 15.5])
    cells += _cells("sjd-prior-dcpe", [11.0], [20.0]) + _cells("sjd-prior-kmeans", [11.1], [21.0])
    v = Q.verdict(Q.summarize(cells))
    assert any("No relaxed rule keeps FID within 5% of AR's" in s for s in v)
    assert any(s.startswith("DCPE prior vs the k-means prior: not ranked (one seed)") for s in v)


def test_merge_keeps_other_models_cells_and_their_commands():
    from benchmarks import speculative as S

    token = _cells("ar", [10.0, 10.2, 9.8], [49] * 3) + _cells("sjd-exact", [10.1, 10.3, 9.9], [26.0] * 3)
    for c in token:
        c["num"] = 2000
    prev = {
        "timing": [{"batch": 1}],
        "quality": {"cells": token},
        "parts": {"timing": {"command": "t"}, "quality": {"command": "q-token"}},  # before parts named models
    }
    coarse = _cells("ar", [12.0, 12.4, 11.8], [49] * 3, "coarse-dcpe") + _cells(
        "sjd-gsd", [12.1, 12.3, 12.0], [20.0] * 3, "coarse-dcpe"
    )
    for c in coarse:
        c["num"] = 2000
    res = {"quality": {"cells": coarse}, "parts": {S.quality_part(coarse): {"command": "q-coarse"}}}
    S.merge_previous(res, prev)
    assert res["timing"] == [{"batch": 1}] and res["parts"]["timing"] == {"command": "t"}
    assert res["parts"]["quality (token)"] == {"command": "q-token"}
    assert res["parts"]["quality (coarse-dcpe)"] == {"command": "q-coarse"}
    assert res["quality"]["cells"] == token + coarse
    # measuring the token model again replaces its cells and its command, and keeps the coarse ones
    again = _cells("ar", [11.0, 11.2, 10.8], [49] * 3)
    for c in again:
        c["num"] = 2000
    prev2 = {**res, "quality": dict(res["quality"])}
    res2 = {"quality": {"cells": again}, "parts": {"quality (token)": {"command": "q-token-2"}}}
    S.merge_previous(res2, prev2)
    assert res2["quality"]["cells"] == coarse + again
    assert res2["parts"]["quality (token)"] == {"command": "q-token-2"}
    assert res2["parts"]["quality (coarse-dcpe)"] == {"command": "q-coarse"}
    # the rows compare each model with its own AR, and the verdict names the coarse model
    rows = Q.summarize(res["quality"]["cells"])
    gsd = next(r for r in rows if r["model"] == "coarse-dcpe" and r["setting"] == "sjd-gsd")
    assert gsd["pass_ratio"] == pytest.approx(20 / 49) and gsd["fid_ratio"] == pytest.approx(12.1 / 12.0, rel=0.02)
    v = Q.verdict_all(rows)
    assert v[0].startswith("`exact` (SJD)") and any(s.startswith("coarse-dcpe: Fewest passes") for s in v)
    # cells of another sample count cannot share the table
    for c in coarse:
        c["num"] = 500
    with pytest.raises(ValueError, match="token"):
        Q.merge_cells(token, coarse)


def test_exact_sentence_with_one_seed_says_it_cannot_rank():
    cells = _cells("ar", [10.0], [49]) + _cells("sjd-exact", [10.1], [21.0])
    v = Q.verdict(Q.summarize(cells))
    assert v[0] == (
        "`exact` (SJD): 0.43x AR's passes, FID 10.10 vs AR's 10.00: not ranked (one seed; target: within the seed spread)."
    )


def test_random_presets_are_valid_shapes_and_their_section_says_random_weights(tmp_path):
    from benchmarks import speculative as S
    from codeprior.models.gpt import get_gpt_config
    from codeprior.models.vq import get_vq_config

    for gpt_name, vq_name, side, classes in S.RANDOM_PRESETS.values():
        vq = get_vq_config(vq_name)
        cfg = get_gpt_config(gpt_name, vocab_size=vq.codebook_size, num_classes=classes, grid=(side, side))
        assert cfg.block_size == side * side
    assert S.RANDOM_PRESETS["gpt-b"][:3] == ("GPT-B", "VQ-16", 16)  # LlamaGen's 256-px GPT-B: 256 codes
    run = S.random_models(tmp_path, "tiny")
    assert run["gpt"].config.block_size == 49 and run["priors"][0].is_file()
    res = {
        "benchmark": "speculative-gpu",
        "machine": "m",
        "device": "cuda",
        "date": "d",
        "random_weights": "gpt-b",
        "random_model": "GPT-B",
        "params": 111_000_000,
        "run_dir": None,
        "seq_len": 256,
        "vocab": 16384,
        "window": 16,
        "init": "random",
        "cfg_scale": 3.0,
        "temperature": 1.0,
        "threads": 1,
        "priors": {},
    }
    md = S.markdown(res, "cmd")
    assert "device cuda" in md and "**random weights** (GPT-B, 111M parameters" in md and "Run: `None`" not in md
