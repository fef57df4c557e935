"""A full disk or a failing write is one line naming the file (exit 2), leaves no temporary or half-written file, and
a rerun with space resumes: the main commands on a tiny tmpfs (root only), and injected ENOSPC/EIO/EROFS for the
writers that are hard to fill."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN_FLAGS, write_tiny_codes

from codeprior.cli import main
from codeprior.errors import CodepriorError
from codeprior.utils.lock import LOCK_NAME

N = 16  # codebook size of the tiny tokenizer


def _vq():
    from codeprior.models.vq import VQModel, get_vq_config

    torch.manual_seed(0)
    cfg = get_vq_config(
        "VQ-fmnist", codebook_size=N, ch=16, z_channels=16, norm_groups=4, ch_mult=[1, 2, 2], image_size=12
    )
    return VQModel(cfg).eval()


TRAIN = TINY_TRAIN_FLAGS


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny tokenizer, an IDX data dir, shards of the tokenizer's codebook, a one-step GPT, a codebook .npy."""
    from conftest import _write_idx_dataset

    from codeprior.models import save_vq

    root = tmp_path_factory.mktemp("inputs")
    vq = _vq()
    save_vq(vq, root / "vq.pt")
    g = np.random.default_rng(0)
    _write_idx_dataset(
        root / "fm",
        {
            s: (g.integers(0, 256, (n, 28, 28), dtype=np.uint8), g.integers(0, 10, n).astype(np.uint8))
            for s, n in (("train", 12), ("test", 5))
        },
    )
    write_tiny_codes(root / "codes", vq, g)
    assert main(["train", "--codes", str(root / "codes"), *TRAIN, "--out", str(root / "run")]) == 0
    np.save(root / "cb.npy", g.standard_normal((32, 4)).astype(np.float32))
    return root


class Disk:
    """A mounted tmpfs: ``fill(leave)`` leaves about ``leave`` bytes free, ``free()`` gives the space back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler.bin"

    def fill(self, leave: int = 0) -> None:
        block = b"\0" * (1 << 16)
        with open(self.filler, "ab", buffering=0) as f:  # unbuffered: nothing left to flush at close
            try:
                while f.write(block):
                    pass
            except OSError as e:
                assert e.errno == errno.ENOSPC
        if leave:
            os.truncate(self.filler, max(0, self.filler.stat().st_size - leave))

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def leftovers(self) -> list[str]:
        """Temporary or partial files anywhere on the disk."""
        return [
            str(p.relative_to(self.path))
            for p in self.path.rglob("*")
            if p.name.endswith((".tmp", ".partial.npy")) or p.name.startswith(".tmp") or p.name == LOCK_NAME
        ]


@pytest.fixture
def disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield Disk(d)
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def _full(capsys, argv: list[str], where: Path) -> str:
    """Run ``argv``: exit 2 and one line naming a path on the disk."""
    capsys.readouterr()
    rc = main(argv)
    text = capsys.readouterr().err
    err = [line for line in text.splitlines() if line.startswith("codeprior:")]  # not the progress lines
    assert rc == 2 and len(err) == 1 and err[0].startswith("codeprior: error: ") and "Traceback" not in text, text
    assert str(where) in err[0] and ("No space left" in err[0] or "disk is full" in err[0] or "needs" in err[0])
    print(err[0])
    return err[0]


PAGE = 4096  # room for the lock file's record (one tmpfs page)


def test_prior_on_a_full_disk(inputs, disk, capsys):
    out = disk.path / "p.safetensors"
    argv = ["prior", str(inputs / "cb.npy"), "--method", "kmeans", "--k", "4", "--out", str(out)]
    disk.fill()
    _full(capsys, argv, out)
    assert not out.exists() and disk.leftovers() == []
    disk.free()
    assert main(argv) == 0 and out.is_file()
    disk.fill()
    q = disk.path / "q.json"
    _full(capsys, ["prior", "inspect", str(out), "--codebook", str(inputs / "cb.npy"), "--json", str(q)], q)
    assert not q.exists() and disk.leftovers() == []


def test_tokenize_refuses_before_the_memmap_with_bytes_needed(inputs, disk, capsys):
    out = disk.path / "codes"
    argv = ["tokenize", "--tokenizer", str(inputs / "vq.pt"), "--data", "fashion-mnist"]
    argv += ["--data-dir", str(inputs / "fm"), "--image-size", "12", "--batch-size", "8", "--out", str(out)]
    disk.fill(PAGE)
    line = _full(capsys, argv, out)
    assert "needs" in line and "bytes" in line and "free" in line, line
    assert disk.leftovers() == []
    disk.free()
    assert main(argv) == 0
    assert (out / "train" / "codes.npy").is_file() and (out / "test" / "codes.npy").is_file()


def test_train_failing_before_its_first_checkpoint_leaves_no_run_folder(inputs, disk, capsys):
    out = disk.path / "run"
    argv = ["train", "--codes", str(inputs / "codes"), *TRAIN, "--out", str(out)]
    disk.fill(PAGE)
    _full(capsys, argv, out)
    assert not out.exists() and disk.leftovers() == []
    disk.free()
    assert main(argv) == 0 and (out / "model.pt").is_file()


def test_train_resumes_after_a_full_disk(inputs, disk, capsys):
    out = disk.path / "run"
    argv = ["train", "--codes", str(inputs / "codes"), *TRAIN, "--ckpt-every", "1", "--out", str(out)]
    assert main(argv) == 0
    first = sorted(p.name for p in (out / "checkpoints").iterdir())
    rows = (out / "metrics.csv").read_text()
    more = [*argv, "--max-steps", "2", "--resume"]
    disk.fill()
    _full(capsys, more, out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == first  # the checkpoint it resumes from stays
    assert (out / "metrics.csv").read_text() == rows  # and the rows logged before it
    assert disk.leftovers() == []
    disk.free()
    capsys.readouterr()
    assert main(more) == 0
    assert "step=2" in capsys.readouterr().out
    assert (out / "checkpoints" / "0000002.pt").is_file()


def test_sample_on_a_full_disk_then_resumes(inputs, disk, capsys):
    out = disk.path / "s"
    argv = ["sample", "--ckpt", str(inputs / "run" / "model.pt"), "--tokenizer", str(inputs / "vq.pt")]
    argv += ["--num-samples", "4", "--batch-size", "2", "--chunk-size", "2", "--device", "cpu", "--no-progress"]
    argv += ["--out", str(out)]
    disk.fill(PAGE)
    _full(capsys, argv, out)
    assert disk.leftovers() == []
    disk.free()
    assert main(argv) == 0 and (out / "samples.npz").is_file()


def test_pipeline_on_a_full_disk_then_resumes(disk, capsys, tiny_pipeline, make_idx_dataset, tmp_path):
    import yaml

    make_idx_dataset(tmp_path / "fm", n_train=20, n_test=10)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_pipeline(tmp_path / "fm")))
    out = disk.path / "run"
    argv = ["pipeline", str(cfg), "--out", str(out), "--until", "data"]
    disk.fill(PAGE)
    _full(capsys, argv, out)
    assert disk.leftovers() == []
    disk.free()
    assert main(argv) == 0 and (out / "data" / "manifest.json").is_file()


# ------------------------------------------------------------------------------------------- injected failures
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS])
def test_torch_save_failure_is_one_line_and_leaves_no_temp(tmp_path, monkeypatch, code):
    from codeprior.utils import io

    def boom(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", boom)  # io imports torch where it saves
    with pytest.raises(CodepriorError, match=f"m.pt: cannot write: {os.strerror(code)}"):
        io.torch_save_atomic({"a": 1}, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_error_without_errno_on_a_full_disk_is_named(tmp_path, monkeypatch):
    """torch.save and safetensors report ENOSPC as their own errors: blamed on the disk only when it is full."""
    from codeprior.utils import io

    def boom(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", boom)  # io imports torch where it saves
    with pytest.raises(RuntimeError, match="unexpected pos"):  # a disk with room: not the disk's fault
        io.torch_save_atomic({"a": 1}, tmp_path / "m.pt")
    monkeypatch.setattr(io, "free_bytes", lambda p: 512)
    with pytest.raises(CodepriorError, match=r"m.pt: cannot write: the disk is full \(512 bytes free there"):
        io.torch_save_atomic({"a": 1}, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_read_only_folder_at_the_temp_file(tmp_path, monkeypatch):
    from codeprior.utils import io

    def ro(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / ".x.json.tmp"))

    monkeypatch.setattr(io.tempfile, "mkstemp", ro)
    with pytest.raises(CodepriorError, match="cannot write: Read-only file system"):
        io.write_json_atomic(tmp_path / "x.json", {})


def test_memmap_reservation_failure_removes_the_partial_files(tmp_path, monkeypatch):
    from codeprior.data import codes

    def nospace(fd, off, n):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(codes.os, "posix_fallocate", nospace)
    meta = {"grid": [2, 2], "codebook_size": 8, "num_classes": 2, "n_aug": 1}
    with pytest.raises(CodepriorError, match=r"codes.partial.npy: cannot write: No space left .*needs \d+ bytes"):
        codes.ShardWriter(tmp_path, "train", 10, meta, chunk_size=4)
    assert list((tmp_path / "train").iterdir()) == []


def test_memmap_files_are_reserved_up_front(tmp_path):
    """Every block of the partial shards is allocated at creation (no sparse holes to fill under the memmap)."""
    from codeprior.data import codes

    meta = {"grid": [16, 16], "codebook_size": 300, "num_classes": 2, "n_aug": 2}
    w = codes.ShardWriter(tmp_path, "train", 64, meta, chunk_size=16)
    st = os.stat(tmp_path / "train" / codes.PARTIAL_CODES)
    assert st.st_blocks * 512 >= st.st_size
    del w


def test_tensorboard_failure_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from types import SimpleNamespace

    from torch.utils.tensorboard import SummaryWriter

    from codeprior.train.logger import RunLogger

    cfg = SimpleNamespace(tensorboard=True, wandb=None)
    log = RunLogger(cfg, tmp_path, None, SimpleNamespace(is_main=True))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    with pytest.raises(CodepriorError, match=r"tb: cannot write: No space left on device"):
        log.log(1, {"loss": 1.0})
    log.abandon()


def test_cli_turns_disk_oserrors_into_one_line_and_keeps_others(monkeypatch, capsys, tmp_path):
    import codeprior.commands.tokenizer as tc

    def full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.json"))

    def other(args):
        raise FileNotFoundError(errno.ENOENT, "nope", "y")

    argv = ["tokenizer", "eval", "--tokenizer", str(tmp_path / "t.pt"), "--data", "fashion-mnist"]
    monkeypatch.setattr(tc, "run_eval", full)  # the parser is built per call: it picks the stand-in up
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"codeprior: error: {tmp_path / 'x.json'}: cannot write: No space")
    monkeypatch.setattr(tc, "run_eval", other)
    with pytest.raises(FileNotFoundError):  # not the disk's: never swallowed
        main(argv)


def test_forked_stage_disk_error_is_one_line(tmp_path, capsys):
    from codeprior.pipeline.engine import Stage, run_stages

    def full(ctx):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(ctx.dir / "big.npz"))

    stages = [Stage("a", full), Stage("b", lambda ctx: {})]
    with pytest.raises(CodepriorError, match=r"a/big.npz: cannot write: No space left on device"):
        run_stages(stages, tmp_path, jobs=2, threads=1, log=lambda _m: None)
    assert "Traceback" not in capsys.readouterr().err


def test_stage_error_is_not_hidden_by_a_failed_manifest_write(tmp_path, monkeypatch):
    """The disk fills in a stage, then again when its failed manifest is written: the stage's own error is raised
    (the manifest stays `running`, so the rerun resumes)."""
    from codeprior.pipeline import engine

    real = engine.write_json_atomic

    def write(path, obj):
        if obj.get("status") == "failed":
            raise CodepriorError(f"{path}: cannot write: No space left on device")
        real(path, obj)

    def full(ctx):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(ctx.dir / "big.npz"))

    monkeypatch.setattr(engine, "write_json_atomic", write)
    with pytest.raises(OSError) as e:
        engine.run_stages([engine.Stage("a", full)], tmp_path, log=lambda _m: None)
    assert e.value.filename == str(tmp_path / "a" / "big.npz")
    assert engine.read_stage_manifest(tmp_path / "a")["status"] == "running"


def test_failed_train_removes_only_what_it_wrote(inputs, tmp_path, monkeypatch, capsys):
    """A train that fails before its first checkpoint: a folder it created is gone; in a folder that was there,
    the user's file stays and only the trainer's files go. A run with a checkpoint keeps everything."""
    from codeprior.train.trainer import Trainer

    def crash(self):
        raise CodepriorError("simulated failure in the first step")

    monkeypatch.setattr(Trainer, "train_step", crash)
    argv = ["train", "--codes", str(inputs / "codes"), *TRAIN, "--out"]
    assert main([*argv, str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main([*argv, str(tmp_path / "mine")]) == 2
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    monkeypatch.undo()
    run = tmp_path / "run"
    assert main([*argv, str(run), "--ckpt-every", "1"]) == 0
    monkeypatch.setattr(Trainer, "train_step", crash)
    assert main([*argv, str(run), "--max-steps", "2", "--resume"]) == 2
    assert (run / "checkpoints" / "0000001.pt").is_file() and (run / "config.json").is_file()
