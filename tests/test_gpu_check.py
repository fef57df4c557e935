"""benchmarks/gpu_check.py --dry-run: every part of the prepared GPU check runs on CPU at tiny sizes (so the script
cannot rot between the rare sessions that have a GPU), and its docs section renders from the JSON it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["dry_run"] is True
    for part in ("device", "tests_fast", "train", "pass_cost", "decode", "tests_slow"):
        assert "error" not in data[part] and "skipped" not in data[part], (part, data[part])
    runs = data["train"]["runs"]
    assert set(runs) == {"token", "cluster-ce", "coarse"} and all(r["loss_finite"] for r in runs.values())
    assert set(data["pass_cost"]["ms"]["1"]) == {"1", "4"}
    decoders = {(r["batch"], r["decoder"]) for r in data["decode"]["rows"]}
    names = ("AR", "AR bf16 weights", "SJD auto", "SJD w4")
    assert decoders == {(b, n) for b in (1, 2) for n in names}
    assert all(r["images_per_s"] > 0 for r in data["decode"]["rows"])
    assert data["tests_fast"]["rc"] == 0 and data["tests_slow"]["rc"] == 0  # test_gpu.py collects

    from benchmarks import gpu_check

    assert "has not run on a GPU" in gpu_check.render(data)  # a dry run never poses as a GPU result
    real = json.loads((ROOT / "benchmarks" / "results" / "gpu_check.json").read_text())
    text = gpu_check.render(real)
    assert real["device"]["gpu"] in text and "| token |" in text
