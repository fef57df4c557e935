"""The README's CPU walkthrough, run as written on a small stand-in for Fashion-MNIST, so it cannot drift.

Stand-ins: the IDX files are random images (80 train, 40 test) in a temporary data root, and the step / image /
sample counts are cut (150 tokenizer steps -> 3, --limit 6000 -> 32, 300 training steps -> 3, 10 samples per class
-> 1). Every command, flag and other value is the README's, in its order, each reading what the one before wrote.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from doc_snippets import ROOT, code_blocks, codeprior_argv, commands, section

from codeprior.cli import main
from codeprior.data import images as im

CUTS = {"--steps": ("150", "3"), "--limit": ("6000", "32"), "--max-steps": ("300", "3"), "--num-samples": ("10", "1")}


def walkthrough_commands() -> list[list[str]]:
    blocks = code_blocks(section(ROOT / "README.md", "Five minutes on a CPU: the commands one by one"), "bash")
    assert len(blocks) == 1, "the walkthrough is one bash block"
    out = []
    for argv in (codeprior_argv(a) for a in commands(blocks[0])):
        for flag, (readme, cut) in CUTS.items():
            if flag in argv:
                i = argv.index(flag) + 1
                assert argv[i] == readme, f"README changed {flag} to {argv[i]}: update CUTS"
                argv[i] = cut
        out.append(argv)
    return out


def test_walkthrough_runs_as_written(tmp_path, monkeypatch, make_idx_dataset, capsys):
    make_idx_dataset(tmp_path / "datasets" / "fashion-mnist", n_train=80, n_test=40)
    monkeypatch.setattr(im, "DEFAULT_DATA_ROOT", tmp_path / "datasets")
    monkeypatch.chdir(tmp_path)
    cmds = walkthrough_commands()
    assert [c[0] for c in cmds] == ["tokenizer", "tokenize", "prior", "prior", "prior", "train", "sample", "sample"]
    for argv in cmds:
        capsys.readouterr()
        assert main(argv) in (0, None), argv
    walk = tmp_path / "walk"
    manifest = json.loads((walk / "codes" / "manifest.json").read_text())
    assert manifest["limit"] == 32 and manifest["splits"] == {"test": {"n": 32}, "train": {"n": 32}}
    assert (walk / "gpt" / "model.pt").is_file()
    for out in ("samples", "samples-sjd"):
        npz = np.load(walk / out / "samples.npz")
        assert npz["arr_0"].shape == (10, 28, 28, 1) and sorted(npz["labels"].tolist()) == list(range(10))
        assert (walk / out / "grid.png").is_file()
    sjd = json.loads((walk / "samples-sjd" / "samples.json").read_text())
    assert "passes" in json.dumps(sjd)


@pytest.mark.parametrize("flag", sorted(CUTS))
def test_walkthrough_cuts_match_the_readme(flag):
    """Each cut replaces a value the README really has (a renamed flag would make the test run the full size)."""
    raw = " ".join(
        " ".join(c)
        for c in commands(
            code_blocks(section(ROOT / "README.md", "Five minutes on a CPU: the commands one by one"), "bash")[0]
        )
    )
    assert f"{flag} {CUTS[flag][0]}" in raw
