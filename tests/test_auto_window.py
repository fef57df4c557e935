"""The cost-aware Jacobi window (``--window auto``): the exact rule keeps the AR distribution when the window changes
between passes (chi-square over every sequence); the choice falls back to plain AR when measured costs say no window
pays, picks a larger window when passes are cheap, follows the acceptance and re-chooses as the batch shrinks; the
per-device cost cache; the settings, CLI and pipeline accept ``auto``."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_gpt
from scipy import stats
from test_speculative import _chi_square, _enumerated_ar, chi2_model, gens, sequence_counts

from codeprior.decoding import AutoWindow, DecoderSettings, PassCosts, jacobi_generate
from codeprior.decoding import jacobi as J
from codeprior.decoding import window as Wn
from codeprior.errors import CodepriorError


def costs_of(jacobi: dict[int, float], ar: float | None = 1.0):
    return lambda batch: PassCosts(dict(jacobi), ar)


class Schedule(AutoWindow):
    """A window that changes at every pass as a function of what was accepted so far (as the real choice is)."""

    def __init__(self, offset: int) -> None:
        super().__init__(costs_of({1: 1.0}))
        self.offset, self.calls, self.seen = offset, 0, set()

    def start(self, batch: int, seq_len: int) -> int:
        self.window = 1 + self.offset % 4
        return self.window

    def choose(self, batch: int, seq_len: int) -> int:
        w = 1 + (self.offset + self.calls + sum(self.stats.accepted)) % 4
        self.calls += 1
        self.seen.add(w)
        return w


@pytest.mark.parametrize("kw,init", [({}, "random"), (dict(cfg_scale=2.0, temperature=0.8, top_k=3), "repeat")])
def test_exact_rule_keeps_ar_distribution_when_the_window_changes_between_passes(kw, init):
    """Chi-square over all 4**3 sequences (false-alarm rate 1e-3), windows 1..4 growing and shrinking mid-sample."""
    model = chi2_model()
    _, prob = _enumerated_ar(model, 1, 3, **kw)
    N, parts, passes, seen = 6000, [], [], set()
    for k in range(6):  # six batches, each with its own window schedule
        sched = Schedule(k)
        codes, p = jacobi_generate(
            model, torch.ones(N // 6, dtype=torch.long), 3, generator=gens(range(k * N, k * N + N // 6)),
            window=sched, init=init, **kw,
        )  # fmt: skip
        parts.append(codes)
        passes.append(p)
        seen |= sched.seen
    assert seen == {1, 2, 3, 4}  # every window was used after the first pass
    assert torch.cat(passes).float().mean() < 3  # drafts were accepted
    codes = torch.cat(parts)
    counts = sequence_counts(codes)
    support = prob > 0
    assert counts[~support].sum() == 0
    chi2, dof = _chi_square(counts[support], prob[support].double() * N)
    assert dof >= 15 and chi2 < stats.chi2.ppf(1 - 1e-3, dof), (chi2, dof)


def test_changing_window_sampler_check_rejects_a_wrong_sampler():
    """Companion: the same statistic rejects draws from a slightly wrong distribution (so the test has power)."""
    model = chi2_model()
    _, prob = _enumerated_ar(model, 1, 3)
    _, wrong = _enumerated_ar(model, 1, 3, temperature=1.15)
    N = 6000
    draws = torch.multinomial(wrong, N, replacement=True, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=64).double()
    chi2, dof = _chi_square(counts, prob.double() * N)
    assert chi2 > stats.chi2.ppf(1 - 1e-3, dof)


def test_auto_falls_back_to_plain_ar_when_no_window_pays():
    model = tiny_gpt()
    labels = torch.tensor([0, 3, 4, 1])
    # a pass of W positions costs W AR tokens: even if every draft were accepted no window would pay
    pol = AutoWindow(costs_of({w: 1.05 * w for w in Wn.WINDOWS}, ar=1.0))
    got, passes = jacobi_generate(model, labels, 15, cfg_scale=2.0, generator=gens(range(4)), window=pol)
    want = model.generate(labels, 15, cfg_scale=2.0, generator=gens(range(4)))
    assert torch.equal(got, want) and passes.tolist() == [15] * 4
    assert pol.window == 0 and pol.ar_samples == 4 and pol.usage == {1: 60}
    assert pol.summary()["choices"] == [[4, 0]]


def test_auto_picks_a_larger_window_when_passes_are_cheap():
    model = tiny_gpt()
    labels = torch.tensor([0, 3, 4, 1])
    cheap = AutoWindow(costs_of(dict.fromkeys(Wn.WINDOWS, 1.0), ar=1.0))  # a pass of any window costs one token
    dear = AutoWindow(costs_of({w: 1.0 + 0.3 * (w - 1) for w in Wn.WINDOWS}, ar=1.0))
    _, p_cheap = jacobi_generate(model, labels, 15, generator=gens(range(4)), window=cheap)
    _, p_dear = jacobi_generate(model, labels, 15, generator=gens(range(4)), window=dear)
    assert cheap.choices[0][1] == 12  # the largest candidate inside the 15-token sequence
    assert max(cheap.usage) >= 8 and 0 < dear.choices[0][1] <= 3
    assert p_cheap.float().mean() < p_dear.float().mean()  # larger windows: fewer passes
    assert sum(cheap.usage.values()) == int(p_cheap.sum()) and sum(dear.usage.values()) == int(p_dear.sum())


def test_choice_follows_acceptance_and_cost_and_rechooses_as_the_batch_shrinks():
    costs = {w: 1.0 + 0.15 * (w - 1) for w in Wn.WINDOWS}
    low, high = AutoWindow(costs_of(costs)), AutoWindow(costs_of(costs))
    low.stats.update([1000] * 31, [100] * 31)  # 10% of the drafts accepted
    high.stats.update([1000] * 31, [950] * 31)  # 95%
    assert low.start(8, 256) == 0  # nothing pays: plain AR
    assert high.start(8, 256) >= 8
    # dear passes at batch 8, cheap ones once samples have left: the choice grows as the batch shrinks
    pol = AutoWindow(lambda b: PassCosts({w: (1.0 + (0.3 if b > 4 else 0.01) * (w - 1)) for w in Wn.WINDOWS}, 1.0))
    w8 = pol.start(8, 256)
    assert 0 < w8 <= 3 and pol.choose(3, 256) > w8
    assert [b for b, _ in pol.choices] == [8, 3]
    fixed = AutoWindow(pol.costs, fixed=True)  # compiled, fixed shapes: the first choice stays
    w = fixed.start(8, 256)
    assert fixed.choose(3, 256) == w


def test_expected_tokens_and_cost_smoothing():
    assert Wn.expected_tokens([0.5] * 3, 1) == 1.0
    assert Wn.expected_tokens([0.5] * 3, 4) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    pol = AutoWindow(costs_of({1: 1.0, 2: 3.0, 4: 2.0}))  # noisy timings: window 2 measured dearer than 4
    assert pol._costs(1).jacobi == {1: 1.0, 2: 2.0, 4: 2.0}
    assert [Wn.batch_bucket(b) for b in (1, 5, 7, 100, 5000)] == [1, 6, 8, 96, 1024]


def test_cost_cache_is_measured_once_and_read_back(tmp_path, monkeypatch):
    path = tmp_path / "costs.json"
    monkeypatch.setenv("CODEPRIOR_WINDOW_COSTS", str(path))
    monkeypatch.setattr(J, "_MEASURED", {})
    model = tiny_gpt()
    labels = torch.tensor([0, 1])
    pol = J.auto_window(model, 15, generator=gens([0, 1]), cfg_scale=2.0)
    codes, _ = jacobi_generate(model, labels, 15, cfg_scale=2.0, generator=gens([0, 1]), window=pol)
    entries = json.loads(path.read_text())  # batch 2, then batch 1 once a sample had finished
    assert 1 <= len(entries) <= 2 and pol.choices[0][0] == 2
    key = next(k for k in entries if k.endswith("|batch 2"))
    entry = entries[key]
    assert "cfg True" in key and "vocab 48" in key and "rule exact_rule" in key
    assert "1" in entry["jacobi"] and entry["ar"] > 0
    # a new process (empty memory) reads the file instead of measuring
    monkeypatch.setattr(J, "_MEASURED", {})
    monkeypatch.setattr(J, "measure_pass_costs", lambda *a, **k: pytest.fail("measured again"))
    pol2 = J.auto_window(model, 15, generator=gens([0, 1]), cfg_scale=2.0)
    again, _ = jacobi_generate(model, labels, 15, cfg_scale=2.0, generator=gens([0, 1]), window=pol2)
    assert torch.equal(codes, again) and pol2.choices == pol.choices  # same costs, same choices, same codes
    # a damaged cache is measured again and rewritten
    path.write_text("{not json")
    monkeypatch.setattr(J, "_MEASURED", {})
    monkeypatch.setattr(J, "measure_pass_costs", lambda *a, **k: PassCosts({1: 1.0, 2: 1.0}, 1.0))
    J.auto_window(model, 15, generator=gens([0, 1]), cfg_scale=2.0).costs(2)
    assert json.loads(path.read_text())[key]["jacobi"] == {"1": 1.0, "2": 1.0}


def test_measured_costs_cover_the_windows_and_ar():
    pc = J.measure_pass_costs(tiny_gpt(), 2, 15, (1, 2, 4), rounds=1, cfg_scale=2.0)
    assert set(pc.jacobi) <= {1, 2, 4} and 1 in pc.jacobi and pc.ar is not None and pc.ar > 0
    assert all(t > 0 for t in pc.jacobi.values())


def test_window_setting_cli_and_pipeline_accept_auto(tmp_path):
    assert DecoderSettings().window == "auto" and DecoderSettings(window="8").window == 8
    assert DecoderSettings(window="AUTO").window == "auto"
    for bad in (0, "abc", 2.5, True):
        with pytest.raises(CodepriorError, match="--window"):
            DecoderSettings(window=bad)
    import argparse

    from codeprior.commands import sample

    ap = argparse.ArgumentParser()
    sample.register(ap.add_subparsers())
    base = ["sample", "--ckpt", "a", "--tokenizer", "b", "--num-samples", "1", "--out", str(tmp_path)]
    assert ap.parse_args(base).window == "auto"
    assert ap.parse_args([*base, "--window", "auto"]).window == "auto"
    assert ap.parse_args([*base, "--window", "6"]).window == 6
    with pytest.raises(SystemExit):
        ap.parse_args([*base, "--window", "0"])
    import yaml

    from codeprior.pipeline import load_config

    cfg = tmp_path / "cfg.yaml"
    for w in ("auto", 4):
        cfg.write_text(yaml.safe_dump({"sample": {"decoder": {"decoder": "sjd", "window": w}}}))
        assert DecoderSettings.coerce(load_config(cfg).sample.decoder).window == w
    cfg.write_text(yaml.safe_dump({"sample": {"decoder": {"decoder": "sjd"}}}))
    assert DecoderSettings.coerce(load_config(cfg).sample.decoder).window == "auto"  # the default


def test_window_usage_recorded_by_generate_codes():
    from codeprior.sample import SampleSettings, generate_codes

    model = tiny_gpt()
    windows: dict[int, int] = {}
    passes: list[torch.Tensor] = []
    s = SampleSettings(cfg_scale=2.0, seed=3, decoder=DecoderSettings("sjd", "exact"))
    generate_codes(model, torch.tensor([0, 1, 2]), torch.arange(3), s, passes=passes, windows=windows)
    total = int(torch.cat(passes).sum())
    assert sum(k for w, k in windows.items() if w) == total  # sample-passes per window add up to the passes
    assert set(windows) <= {0, *Wn.WINDOWS}


class HandOver(AutoWindow):
    """Speculative passes at window 1 + offset % 4 for ``k`` passes, then a hand-over to plain AR decoding."""

    def __init__(self, offset: int, k: int) -> None:
        super().__init__(costs_of({1: 1.0}))
        self.offset, self.k, self.calls = offset, k, 0

    def start(self, batch: int, seq_len: int) -> int:
        self.window = 1 + self.offset % 4
        return self.window

    def choose(self, batch: int, seq_len: int) -> int:
        self.calls += 1
        return 0 if self.calls > self.k else self.window


@pytest.mark.parametrize("kw", [{}, dict(cfg_scale=2.0, temperature=0.8, top_k=3)])
def test_exact_rule_keeps_ar_distribution_across_a_hand_over_to_plain_ar(kw, monkeypatch):
    """Chi-square over all 4**3 sequences: samples handed over to AR after 0, 1 or 2 speculative passes, at one
    or several distinct positions (one AR call per position)."""
    monkeypatch.setattr(J, "HANDOFF_GROUPS", 3)
    model = chi2_model()
    _, prob = _enumerated_ar(model, 1, 3, **kw)
    N, parts, passes, used = 6000, [], [], 0
    for k in range(6):
        pol = HandOver(k, k % 3)
        codes, p = jacobi_generate(
            model, torch.ones(N // 6, dtype=torch.long), 3, generator=gens(range(k * N, k * N + N // 6)),
            window=pol, **kw,
        )  # fmt: skip
        parts.append(codes)
        passes.append(p)
        used += pol.usage.get(1, 0)
        assert sum(pol.usage.values()) == int(p.sum())
    assert used > 0  # plain AR passes were run
    counts = sequence_counts(torch.cat(parts))
    support = prob > 0
    assert counts[~support].sum() == 0
    chi2, dof = _chi_square(counts[support], prob[support].double() * N)
    assert dof >= 15 and chi2 < stats.chi2.ppf(1 - 1e-3, dof), (chi2, dof)


def test_hand_over_before_the_first_pass_is_plain_ar_draw_for_draw():
    """Handed over at once, a sample's codes are GPT.generate's with the same generator (the AR continuation of
    an empty prefix); handed over later, the passes add up and the codes are reproducible from the generator."""
    model = tiny_gpt()
    label = torch.tensor([3])
    got, passes = jacobi_generate(model, label, 15, cfg_scale=2.0, generator=gens([7]), window=HandOver(1, 0))
    assert torch.equal(got, model.generate(label, 15, cfg_scale=2.0, generator=gens([7])))
    assert passes.tolist() == [15]
    pol = HandOver(3, 2)  # two passes at window 4, then AR
    got, passes = jacobi_generate(model, label, 15, cfg_scale=2.0, generator=gens([7]), window=pol)
    assert 2 < int(passes[0]) < 15 and pol.usage[4] == 2 and pol.usage[1] == int(passes[0]) - 2
    again, _ = jacobi_generate(model, label, 15, cfg_scale=2.0, generator=gens([7]), window=HandOver(3, 2))
    assert torch.equal(again, got)


def test_choice_hands_over_to_ar_when_acceptance_collapses():
    """An optimistic start picks a window; once the drafts are seen to be rejected no window beats an AR token
    and the choice is 0 (hand over), recorded once; compiled (fixed) decoding never hands over."""
    costs = costs_of({w: 1.0 + 0.3 * (w - 1) for w in Wn.WINDOWS}, ar=1.0)
    pol, fixed = AutoWindow(costs), AutoWindow(costs, fixed=True)
    for p in (pol, fixed):
        p.stats.update([4] * 31, [4] * 31)  # believes nearly every draft is accepted
        assert p.start(2, 256) > 1
        p.stats.update([1000] * 31, [50] * 31)  # then sees 5% accepted
    assert pol.choose(2, 256) == 0 and pol.choose(2, 256) == 0
    assert pol.choices[-1] == (2, 0) and len(pol.choices) == 2
    assert fixed.choose(2, 256) == fixed.choices[0][1] > 1
