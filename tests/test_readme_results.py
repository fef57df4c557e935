"""The README's demo results are a run's output: re-rendered from the kept results.json, they must match exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codeprior.verdict import readme_block, results_markdown, verdict

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kept", sorted((ROOT / "docs" / "results").glob("*.json")), ids=lambda p: p.stem)
def test_readme_results_block_is_rendered_from_the_kept_run(kept):
    res = json.loads(kept.read_text())
    block = readme_block((ROOT / "README.md").read_text(), kept.stem)
    assert block is not None, f"README.md lost its <!-- {kept.stem}-results:begin/end --> block"
    assert block == results_markdown(res), (
        f"README results differ from docs/results/{kept.name}: run "
        f"`codeprior report runs/{kept.stem} --update-readme README.md`"
    )
    # the verdict is computed from the numbers, not typed
    assert res["verdict"] == verdict(res["summary"], res["ratios"], below=res.get("below"))


def test_the_demo_block_is_kept():
    assert (ROOT / "docs" / "results" / "demo.json").is_file()


def test_update_readme_round_trip(tmp_path):
    from codeprior.verdict import update_readme

    res = json.loads((ROOT / "docs" / "results" / "demo.json").read_text())
    run = tmp_path / "myrun"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(res))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- myrun-results:begin -->\nold table\n<!-- myrun-results:end -->\nrest\n")
    kept = update_readme(readme, run)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old table" not in text
    assert readme_block(text, "myrun") == results_markdown(res)
    assert kept == tmp_path / "docs" / "results" / "myrun.json" and json.loads(kept.read_text()) == res
