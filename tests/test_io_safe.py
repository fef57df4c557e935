"""Writes that respect what is there (atomic_path: devices, FIFOs, symlinks) and one writer per output folder
(utils/lock.py): a second process is refused naming the holder, a stale lock is taken over."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from codeprior.cli import main
from codeprior.errors import CodepriorError
from codeprior.utils.io import write_json_atomic, write_target, write_text_atomic
from codeprior.utils.lock import LOCK_NAME, folder_lock, lock_holder

SRC = str(Path(__file__).resolve().parents[1] / "src")


# ------------------------------------------------------------------------------------------- item 2: atomic_path
def _read_fifo(path: Path, box: list[bytes]) -> threading.Thread:
    def reader() -> None:
        with open(path, "rb") as f:
            box.append(f.read())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    return t


def test_fifo_is_written_through_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    box: list[bytes] = []
    t = _read_fifo(fifo, box)
    write_json_atomic(fifo, {"a": 1})
    t.join(10)
    assert json.loads(box[0]) == {"a": 1}
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temp file beside it


def test_cli_json_to_a_fifo(tmp_path, capsys):
    """`prior inspect --json FIFO`: the folder check lets a FIFO through and the JSON arrives in it."""
    np.save(tmp_path / "cb.npy", np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32))
    prior = tmp_path / "p.safetensors"
    assert main(["prior", str(tmp_path / "cb.npy"), "--method", "kmeans", "--k", "4", "--out", str(prior)]) == 0
    fifo = tmp_path / "q.json"
    os.mkfifo(fifo)
    box: list[bytes] = []
    t = _read_fifo(fifo, box)
    assert main(["prior", "inspect", str(prior), "--codebook", str(tmp_path / "cb.npy"), "--json", str(fifo)]) == 0
    t.join(10)
    assert json.loads(box[0])
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_device_node_is_written_through(tmp_path):
    """A private copy of /dev/null (char 1:3) in tmp_path: written through, still a device afterwards."""
    dev = tmp_path / "null"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    assert write_target(dev) is None
    write_text_atomic(dev, "x" * 100)
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]


def test_dev_null_and_stdout_are_written_through():
    assert write_target("/dev/stdout") is None and write_target("/dev/fd/1") is None
    if not os.access("/dev/null", os.W_OK):
        pytest.skip("/dev/null is not writable here")
    assert write_target("/dev/null") is None  # checked first: never write a real /dev node unless written through
    write_json_atomic("/dev/null", {"a": 1})
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_symlink_target_is_replaced_and_the_link_stays(tmp_path):
    real = tmp_path / "real" / "README.md"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "README.md"
    link.symlink_to(real)
    write_text_atomic(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new"
    assert not list(tmp_path.rglob("*.tmp"))


def test_dangling_symlink_creates_its_target_or_is_refused(tmp_path):
    """Decided: like the shell's `>`, a dangling link's target is created (atomically) when its folder exists;
    a target in a missing folder is a one-line error (no folders are created through a link)."""
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "target.json")
    write_json_atomic(link, [1])
    assert link.is_symlink() and json.loads((tmp_path / "target.json").read_text()) == [1]
    bad = tmp_path / "bad.json"
    bad.symlink_to(tmp_path / "nowhere" / "t.json")
    with pytest.raises(CodepriorError, match="bad.json: is a symbolic link to .*whose folder does not exist"):
        write_json_atomic(bad, [1])
    assert not (tmp_path / "nowhere").exists()


def test_update_readme_edits_the_file_a_symlink_points_to(tmp_path):
    from codeprior.verdict import update_readme

    root = Path(__file__).resolve().parents[1]
    res = json.loads((root / "docs" / "results" / "demo.json").read_text())
    run = tmp_path / "myrun"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(res))
    real = tmp_path / "repo" / "README.md"
    real.parent.mkdir()
    real.write_text("intro\n<!-- myrun-results:begin -->\nold\n<!-- myrun-results:end -->\n")
    link = tmp_path / "README.md"
    link.symlink_to(real)
    update_readme(link, run)
    assert link.is_symlink()
    assert "old" not in real.read_text() and real.read_text().startswith("intro\n")


# ------------------------------------------------------------------------------------------- item 3: one writer
HOLD = """
import sys, time
from codeprior.utils.lock import folder_lock
with folder_lock(sys.argv[1], "codeprior pipeline demo.yaml --out X"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process holding the lock of a folder; yields (folder, its pid); ends it after the test."""
    procs: list[subprocess.Popen] = []

    def start(folder: Path) -> int:
        p = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": SRC},
        )
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        return p.pid

    yield start
    for p in procs:
        p.communicate("", timeout=30)


def _one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("codeprior: error: "), err
    return err[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--ckpt", "{d}/m.pt", "--tokenizer", "{d}/vq.pt", "--num-samples", "1", "--out", "{out}"],
        ["train", "--codes", "{d}/codes", "--max-steps", "1", "--out", "{out}"],
        ["train-refine", "--codes", "{d}/codes", "--prior", "{d}/p.safetensors", "--max-steps", "1", "--out", "{out}"],
        ["tokenize", "--tokenizer", "{d}/vq.pt", "--data", "fashion-mnist", "--out", "{out}"],
        ["tokenize", "import-llamagen", "{d}/cp", "--out", "{out}"],
        ["tokenizer", "train", "--data", "fashion-mnist", "--out", "{out}"],
        ["pipeline", "{d}/c.yaml", "--out", "{out}"],
    ],
    ids=lambda a: "-".join(a[:2]) if a[0] == "tokenizer" or a[1] == "import-llamagen" else a[0],
)
def test_second_writer_on_the_same_out_is_refused(tmp_path, capsys, holder, argv):
    out = tmp_path / "out"
    (tmp_path / "c.yaml").write_text("name: x\n")
    pid = holder(out)
    err = _one_line_error(capsys, [a.format(d=tmp_path, out=out) for a in argv])
    assert f"{out}: in use by another codeprior process (pid {pid}: codeprior pipeline demo.yaml" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written beside the holder's lock


def test_lock_is_released_and_removed_after_the_command(tmp_path):
    out = tmp_path / "out"
    with folder_lock(out, "first"):
        assert lock_holder(out)["pid"] == os.getpid()
    assert not out.exists()  # the lock made the folder and nothing else was written: removed again
    with folder_lock(tmp_path / "a" / "b" / "c", "nested"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # every folder it made
    out.mkdir()
    with folder_lock(out, "second") as path:
        (out / "result.txt").write_text("kept")
        assert path.name == LOCK_NAME
    assert sorted(p.name for p in out.iterdir()) == ["result.txt"]


def test_stale_lock_is_taken_over_with_a_note(tmp_path, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": gone.pid, "command": "codeprior train --out out"}) + "\n")
    capsys.readouterr()
    rc = main(["train", "--codes", str(tmp_path / "nocodes"), "--max-steps", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 2, err
    assert err[0] == (
        f"codeprior: note: {out / LOCK_NAME}: took over the lock left by pid {gone.pid}: codeprior train --out out, "
        "which is no longer running"
    )
    assert err[1].startswith("codeprior: error: ") and "nocodes" in err[1]  # the command's own check ran
    assert sorted(p.name for p in out.iterdir()) == []  # the stale file went with the lock


def test_stale_lock_note_names_the_dead_holder(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": gone.pid, "command": "codeprior sample"}))
    notes: list[str] = []
    with folder_lock(tmp_path, "now", note=notes.append):
        assert lock_holder(tmp_path)["command"] == "now"
    assert len(notes) == 1 and f"took over the lock left by pid {gone.pid}: codeprior sample" in notes[0]


def test_torchrun_ranks_above_zero_take_no_lock(tmp_path, monkeypatch, holder):
    pid = holder(tmp_path)
    monkeypatch.setenv("RANK", "1")
    with folder_lock(tmp_path, "rank 1"):  # rank 0 of its launch holds it: no second lock, no refusal
        assert lock_holder(tmp_path)["pid"] == pid


def test_forked_stage_jobs_share_the_parents_lock(tmp_path):
    """jobs: 2 forks stage processes while the pipeline holds its lock: they run, and the lock is released after."""
    from codeprior.pipeline.engine import Stage, run_stages

    def write(ctx):
        (ctx.dir / "out.txt").write_text(ctx.name)
        return {"pid": os.getpid()}

    stages = [Stage("a", write), Stage("b", write), Stage("c", write, deps=("a", "b"))]
    t0 = time.perf_counter()
    with folder_lock(tmp_path / "run", "pipeline"):
        res = run_stages(stages, tmp_path / "run", jobs=2, threads=1, log=lambda _m: None)
    assert time.perf_counter() - t0 < 60
    assert {r.name for r in res} == {"a", "b", "c"} and all(r.manifest["metrics"]["pid"] != os.getpid() for r in res)
    assert not (tmp_path / "run" / LOCK_NAME).exists()
