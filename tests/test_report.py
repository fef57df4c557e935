"""The report: built from a fabricated minimal run folder (manifests + the files the stages document)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codeprior.errors import CodepriorError
from codeprior.pipeline.stages.evaluate import metrics_table_text
from codeprior.pipeline.stages.report import write_run_report as write_report

VARIANTS = [("token", "token", None), ("cluster-ce-dcpe", "cluster-ce", "dcpe"), ("coarse-dcpe", "coarse", "dcpe")]


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8)).save(path)


def _manifest(run: Path, stage: str, metrics: dict, seconds: float, config: dict | None = None) -> None:
    (run / stage).mkdir(parents=True, exist_ok=True)
    (run / stage / "manifest.json").write_text(
        json.dumps(
            {
                "stage": stage,
                "status": "done",
                "metrics": metrics,
                "seconds": seconds,
                "attempts": 1,
                "config": config or {},
                "description": f"the {stage} stage",
                "started": f"2026-01-01T00:00:{seconds:02.0f}",
                "environment": {"python": "3.11.7", "torch": "2.13.0", "cpu_cores": 2, "device": "cpu"},
            }
        )
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    _manifest(
        run,
        "data",
        {
            "dataset": "fashion-mnist",
            "num_classes": 10,
            "class_names": [f"c{i}" for i in range(10)],
            "channels": 1,
            "image_size": 28,
            "train_size": 60000,
            "test_size": 10000,
            "sha256": "ab" * 32,
        },
        1,
    )
    _manifest(
        run,
        "tokenizer",
        {"source": "trained here", "codebook_size": 4096, "grid": [7, 7], "codebook_usage": 0.87, "test_psnr": 24.5},
        2,
    )
    _png(run / "tokenizer" / "reconstructions.png", 0)
    _manifest(run, "priors", {"k": 512}, 3)
    (run / "priors" / "quality.json").write_text(
        json.dumps(
            {
                "k": 512,
                "rows": {
                    "kmeans": {
                        "name": "kmeans",
                        "size max": 31,
                        "nearest neighbour in same cluster %": 61.5,
                        "clusters of size 1": 3,
                    },
                    "dcpe": {"name": "dcpe", "size max": 412, "nearest neighbour in same cluster %": 83.25},
                },
            }
        )
    )
    (run / "priors" / "sizes.json").write_text(
        json.dumps({"kmeans": [8] * 500 + [1] * 12, "dcpe": [1] * 300 + [40] * 212})
    )
    _manifest(run, "substitution", {}, 4)
    (run / "substitution" / "substitution.json").write_text(
        json.dumps(
            {"rows": [{"prior": "kmeans", "mse": 0.0123, "fid": 4.5}, {"prior": "dcpe", "mse": 0.0099, "fid": 3.25}]}
        )
    )
    for i, (name, obj, prior) in enumerate(VARIANTS):
        _manifest(
            run,
            f"train-{name}",
            {"objective": obj, "prior": prior, "steps": 100, "final_loss": 5.0 - i, "final_fid": 30.0 - i},
            5 + i,
        )
        steps = list(range(10, 101, 10))
        (run / f"train-{name}" / "curves.json").write_text(
            json.dumps(
                {
                    "train": {
                        "step": steps,
                        "loss": [6 - s / 100 - i for s in steps],
                        "cluster_acc": [0.1 + s / 1000 for s in steps],
                        **({"token_acc": [0.05 + s / 2000 for s in steps]} if obj != "coarse" else {}),
                    },
                    "eval": {"step": [50, 100], "fid": [40.0 - i, 30.0 - i]},
                }
            )
        )
        _manifest(run, f"sample-{name}", {"num_samples": 100, "cfg_scale": 2.0, "temperature": 1.0}, 10 + i)
        _png(run / f"sample-{name}" / "grid.png", 10 + i)
    _manifest(run, "evaluate", {}, 20)
    (run / "evaluate" / "metrics.json").write_text(
        json.dumps(
            {
                "feature_extractor": "codeprior classifier (fashion-mnist)",
                "feature_accuracy": 0.912,
                "reference": "test split",
                "num_samples": 100,
                "rows": [
                    {
                        "variant": n,
                        "objective": o,
                        "prior": p,
                        "fid": 12.345 + i,
                        "kid": 0.0042,
                        "is": 7.5,
                        "precision": 0.61,
                        "recall": 0.4,
                        "class_match": 0.8,
                    }
                    for i, (n, o, p) in enumerate(VARIANTS)
                ],
            }
        )
    )
    return run


def test_report_has_every_section_and_image(run_dir):
    html_path, md_path = write_report(run_dir)
    assert html_path == run_dir / "report.html" and md_path == run_dir / "report.md"
    html = html_path.read_text()
    for anchor in ("results", "metrics", "tokenizer", "priors", "substitution", "training", "samples", "timings"):
        assert f'id="{anchor}"' in html, anchor
    imgs = re.findall(r'<img(?: class="px")? alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    # FID vs step (results), reconstructions, cluster-size histogram, loss / accuracy curves, 3 sample grids
    assert len(imgs) == 1 + 1 + 1 + 2 + 3, [a for a, _ in imgs]
    assert all(len(b) > 100 for _, b in imgs)
    assert 'src="report/' not in html and 'src="/' not in html  # self-contained
    # the figures the report drew exist and are real PNGs
    for f in ("cluster_sizes.png", "loss.png", "accuracy.png", "fid_vs_step.png"):
        with Image.open(run_dir / "report" / f) as im:
            assert im.format == "PNG" and im.size[0] > 200
    # numbers from the fabricated outputs appear; the metrics name the feature extractor and its accuracy
    assert "13.35" in html and "4.20" in html  # FID of run 2; KID x 1e3
    assert "codeprior classifier (fashion-mnist) (test accuracy 91.20%)" in html
    assert "83.25" in html and "412" in html  # prior quality table
    assert "3.25" in html  # substitution FID
    assert "c0, c1" in html  # class order of the sample grids
    md = md_path.read_text()
    for rel in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (run_dir / rel).is_file(), rel
    assert "| token | token | – | 12.35 |" in md


def test_metrics_table_text_names_features(run_dir):
    text = metrics_table_text(run_dir)
    assert text.splitlines()[0].startswith("| run | objective | prior | FID | KID x1e3 | IS | precision | recall |")
    assert "coverage" not in text.splitlines()[0]  # columns nobody reported are left out
    assert "test accuracy 91.20%" in text and "not with published Inception-based numbers" in text


def test_partial_run_reports_missing_stages(run_dir, tmp_path):
    import shutil

    for d in ("substitution", "evaluate", "sample-token", "sample-cluster-ce-dcpe", "sample-coarse-dcpe"):
        shutil.rmtree(run_dir / d)
    (run_dir / "tokenizer" / "reconstructions.png").unlink()
    html = write_report(run_dir)[0].read_text()
    assert html.count("Stage not run.") == 2  # metrics, substitution
    assert "No sampling stage run." in html
    assert "image missing: reconstructions.png" in html
    assert "(no metrics" in metrics_table_text(run_dir)


def test_report_errors(tmp_path):
    with pytest.raises(CodepriorError, match="no such run directory"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CodepriorError, match="no stage manifests"):
        write_report(tmp_path / "empty")


def test_report_cli(run_dir, capsys):
    from codeprior.cli import main

    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out and "| cluster-ce-dcpe | cluster-ce | dcpe |" in out
    assert (run_dir / "report.html").is_file()
    assert main(["report", str(run_dir / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
