"""The README's demo results are a run's output: re-rendered from the kept results.json, they must match exactly."""

from __future__ import annotations

import json
from pathlib import Path

from codeprior.verdict import readme_block, results_markdown, verdict

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_block_is_rendered_from_the_kept_run():
    res = json.loads((ROOT / "docs" / "results" / "demo.json").read_text())
    block = readme_block((ROOT / "README.md").read_text())
    assert block is not None, "README.md lost its <!-- demo-results:begin/end --> block"
    assert block == results_markdown(res), (
        "README results differ from docs/results/demo.json: run `codeprior report runs/demo --update-readme README.md`"
    )
    # the verdict is computed from the numbers, not typed
    assert res["verdict"] == verdict(res["summary"], res["ratios"], below=res.get("below"))


def test_update_readme_round_trip(tmp_path):
    from codeprior.verdict import update_readme

    res = json.loads((ROOT / "docs" / "results" / "demo.json").read_text())
    run = tmp_path / "myrun"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(res))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- demo-results:begin -->\nold table\n<!-- demo-results:end -->\nrest\n")
    kept = update_readme(readme, run)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old table" not in text
    assert readme_block(text) == results_markdown(res)
    assert kept == tmp_path / "docs" / "results" / "myrun.json" and json.loads(kept.read_text()) == res
