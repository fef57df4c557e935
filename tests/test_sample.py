"""Sampling: balanced labels, per-sample reproducibility, world-size invariance, resume, coarse-to-fine, CLI."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from codeprior.models.gpt import GPT, get_gpt_config
from codeprior.models.refine import RefineModel, get_refine_config
from codeprior.models.vq import VQModel, get_vq_config
from codeprior.evaluate.metrics import load_samples_npz as load_npz_samples
from codeprior.sample import SampleSettings, balanced_labels, sample_to_dir

V, C, GRID = 64, 3, (3, 3)


def _models(seed=0, coarse_k=None):
    torch.manual_seed(seed)
    vocab = coarse_k or V
    gpt = GPT(get_gpt_config("GPT-tiny", dim=32, n_layer=1, n_head=2, vocab_size=vocab, num_classes=C,
                             block_size=GRID[0] * GRID[1], grid=GRID))
    # The head is zero-initialised (uniform logits); give it weights so guidance and temperature matter.
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    vq = VQModel(get_vq_config("VQ-fmnist", codebook_size=V, ch=16, z_channels=16, norm_groups=4,
                               ch_mult=[1, 2, 2], image_size=12))
    return gpt.eval(), vq.eval()


def test_balanced_labels():
    lab = balanced_labels(10, 5)
    assert torch.bincount(lab).tolist() == [2] * 5
    assert torch.equal(lab, lab.sort().values)
    assert torch.bincount(balanced_labels(7, 3), minlength=3).tolist() in ([3, 2, 2], [2, 3, 2], [2, 2, 3])


def test_samples_independent_of_batching_and_world_size(tmp_path):
    gpt, vq = _models()
    s = SampleSettings(cfg_scale=2.0, temperature=1.0, seed=7)
    ref = sample_to_dir(gpt, vq, tmp_path / "one", 10, s, grid=GRID, batch_size=4, chunk_size=4)
    # Same chunks, different process layout: rank 1 then rank 0 of a 2-process run.
    assert sample_to_dir(gpt, vq, tmp_path / "two", 10, s, grid=GRID, batch_size=4, chunk_size=4, rank=1, world_size=2) is None
    two = sample_to_dir(gpt, vq, tmp_path / "two", 10, s, grid=GRID, batch_size=4, chunk_size=4, rank=0, world_size=2)
    a, la = load_npz_samples(ref)
    b, lb = load_npz_samples(two)
    assert a.shape == (10, 12, 12, 1) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    # Another seed gives other images; the same seed with a different batch size gives per-sample equal codes.
    other = sample_to_dir(gpt, vq, tmp_path / "seed", 10, SampleSettings(cfg_scale=2.0, seed=8), grid=GRID, batch_size=4)
    assert not np.array_equal(a, load_npz_samples(other)[0])
    assert (tmp_path / "one" / "grid.png").stat().st_size > 0


def test_per_sample_codes_do_not_depend_on_batch_size():
    from codeprior.sample import generate_codes

    gpt, _ = _models()
    s = SampleSettings(cfg_scale=1.5, temperature=1.0, top_k=20, seed=3)
    labels = torch.tensor([0, 1, 2, 0, 1])
    full = generate_codes(gpt, labels, torch.arange(5), s)
    parts = torch.cat([generate_codes(gpt, labels[i:i + 2], torch.arange(i, min(i + 2, 5)), s) for i in range(0, 5, 2)])
    assert torch.equal(full, parts)


def test_resume_skips_finished_chunks(tmp_path):
    gpt, vq = _models()
    s = SampleSettings(seed=1)
    sample_to_dir(gpt, vq, tmp_path, 8, s, grid=GRID, batch_size=4, keep_chunks=True)
    chunk = tmp_path / "chunks" / "000000.npz"
    mtime = chunk.stat().st_mtime_ns
    (tmp_path / "chunks" / "000001.npz").unlink()  # as if killed before the second chunk and the assembly
    (tmp_path / "samples.npz").unlink()
    (tmp_path / "samples.json").unlink()
    out = sample_to_dir(gpt, vq, tmp_path, 8, s, grid=GRID, batch_size=4, keep_chunks=True)
    assert chunk.stat().st_mtime_ns == mtime
    assert load_npz_samples(out)[0].shape[0] == 8
    (tmp_path / "samples.npz").unlink()  # killed during the assembly: assembled again from the chunks
    assert sample_to_dir(gpt, vq, tmp_path, 8, s, grid=GRID, batch_size=4) == out
    assert not (tmp_path / "chunks").exists()  # removed once samples.npz is written
    # finished: the same call is a no-op; another model or other settings are refused, or start clean
    npz_mtime = out.stat().st_mtime_ns
    assert sample_to_dir(gpt, vq, tmp_path, 8, s, grid=GRID, batch_size=4) == out
    assert out.stat().st_mtime_ns == npz_mtime
    other_gpt, _ = _models(seed=1)
    from codeprior.errors import CodepriorError

    with pytest.raises(CodepriorError, match="another model or other settings .*model weights"):
        sample_to_dir(other_gpt, vq, tmp_path, 8, s, grid=GRID, batch_size=4)
    with pytest.raises(CodepriorError, match="differs in: seed"):
        sample_to_dir(gpt, vq, tmp_path, 8, SampleSettings(seed=2), grid=GRID, batch_size=4)
    assert sample_to_dir(other_gpt, vq, tmp_path, 8, s, grid=GRID, batch_size=4, overwrite=True) == out


def test_stale_chunks_of_another_model_are_never_mixed(tmp_path):
    from codeprior.errors import CodepriorError

    gpt, vq = _models()
    s = SampleSettings(seed=1)
    sample_to_dir(gpt, vq, tmp_path, 8, s, grid=GRID, batch_size=4, keep_chunks=True)
    for name in ("samples.npz", "samples.json", "chunks/000001.npz"):
        (tmp_path / name).unlink()  # interrupted: one chunk of the first model left
    other, _ = _models(seed=1)
    with pytest.raises(CodepriorError, match="fingerprint.json: .* holds samples of another model"):
        sample_to_dir(other, vq, tmp_path, 8, s, grid=GRID, batch_size=4)
    assert not (tmp_path / "samples.npz").exists()
    fresh = sample_to_dir(other, vq, tmp_path, 8, s, grid=GRID, batch_size=4, overwrite=True)
    ref = sample_to_dir(other, vq, tmp_path / "ref", 8, s, grid=GRID, batch_size=4)
    assert np.array_equal(load_npz_samples(fresh)[0], load_npz_samples(ref)[0])


def test_coarse_to_fine_codes_stay_in_their_cluster(tmp_path):
    from codeprior.sample import generate_codes

    k = 8
    t2c = torch.arange(V) % k
    gpt, vq = _models(coarse_k=k)
    refine = RefineModel(get_refine_config("Refine-tiny", dim=32, n_layer=1, n_head=2, vocab_size=V, coarse_vocab_size=k,
                                           num_classes=C, block_size=GRID[0] * GRID[1], grid=GRID), t2c).eval()
    torch.nn.init.normal_(refine.output.weight, std=0.5)
    labels = torch.tensor([0, 1, 2, 1])
    for mode in ("sample", "argmax", "random-member"):
        s = SampleSettings(seed=0, refine_mode=mode)
        fine = generate_codes(gpt, labels, torch.arange(4), s, refine=refine)
        coarse = gpt.generate(labels, 9, cfg_scale=s.cfg_scale, generator=__import__("codeprior.sample", fromlist=["x"]).sample_generators(0, range(4)))
        assert torch.equal(t2c[fine], coarse), mode
    npz = sample_to_dir(gpt, vq, tmp_path, 6, SampleSettings(), refine=refine, grid=GRID, batch_size=3)
    assert load_npz_samples(npz)[0].shape[0] == 6


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        gpt, vq = _models()
        sample_to_dir(gpt, vq, out, 9, SampleSettings(seed=5), grid=GRID, batch_size=2)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_real_two_process_run_matches_one_process(tmp_path):
    gpt, vq = _models()
    one = sample_to_dir(gpt, vq, tmp_path / "one", 9, SampleSettings(seed=5), grid=GRID, batch_size=2)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2, join=True)
    a = load_npz_samples(one)[0]
    b = load_npz_samples(tmp_path / "two" / "samples.npz")[0]
    assert np.array_equal(a, b)


def test_bad_npz(tmp_path):
    from codeprior.errors import CodepriorError

    f = tmp_path / "x.npz"
    np.savez(f, images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(CodepriorError, match="arr_0"):
        load_npz_samples(f)
    with pytest.raises(CodepriorError, match="no such"):
        load_npz_samples(tmp_path / "missing.npz")
