"""Sampling: balanced labels, per-sample reproducibility, world-size invariance, resume, coarse-to-fine, CLI."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import TINY_TRAIN_FLAGS

from codeprior.evaluate.metrics import load_samples_npz as load_npz_samples
from codeprior.models.gpt import GPT, get_gpt_config
from codeprior.models.refine import RefineModel, get_refine_config
from codeprior.models.vq import VQModel, get_vq_config
from codeprior.sample import SampleSettings, balanced_labels, sample_to_dir

V, C, GRID = 64, 3, (3, 3)


def _models(seed=0, coarse_k=None):
    torch.manual_seed(seed)
    vocab = coarse_k or V
    gpt = GPT(
        get_gpt_config(
            "GPT-tiny",
            dim=32,
            n_layer=1,
            n_head=2,
            vocab_size=vocab,
            num_classes=C,
            block_size=GRID[0] * GRID[1],
            grid=GRID,
        )
    )
    # The head is zero-initialised (uniform logits); give it weights so guidance and temperature matter.
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    vq = VQModel(
        get_vq_config(
            "VQ-fmnist", codebook_size=V, ch=16, z_channels=16, norm_groups=4, ch_mult=[1, 2, 2], image_size=12
        )
    )
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
    assert (
        sample_to_dir(gpt, vq, tmp_path / "two", 10, s, grid=GRID, batch_size=4, chunk_size=4, rank=1, world_size=2)
        is None
    )
    two = sample_to_dir(gpt, vq, tmp_path / "two", 10, s, grid=GRID, batch_size=4, chunk_size=4, rank=0, world_size=2)
    a, la = load_npz_samples(ref)
    b, lb = load_npz_samples(two)
    assert a.shape == (10, 12, 12, 1) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    # Another seed gives other images; the same seed with a different batch size gives per-sample equal codes.
    other = sample_to_dir(
        gpt, vq, tmp_path / "seed", 10, SampleSettings(cfg_scale=2.0, seed=8), grid=GRID, batch_size=4
    )
    assert not np.array_equal(a, load_npz_samples(other)[0])
    assert (tmp_path / "one" / "grid.png").stat().st_size > 0


def test_per_sample_codes_do_not_depend_on_batch_size():
    from codeprior.sample import generate_codes

    gpt, _ = _models()
    s = SampleSettings(cfg_scale=1.5, temperature=1.0, top_k=20, seed=3)
    labels = torch.tensor([0, 1, 2, 0, 1])
    full = generate_codes(gpt, labels, torch.arange(5), s)
    parts = torch.cat(
        [generate_codes(gpt, labels[i : i + 2], torch.arange(i, min(i + 2, 5)), s) for i in range(0, 5, 2)]
    )
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
    refine = RefineModel(
        get_refine_config(
            "Refine-tiny",
            dim=32,
            n_layer=1,
            n_head=2,
            vocab_size=V,
            coarse_vocab_size=k,
            num_classes=C,
            block_size=GRID[0] * GRID[1],
            grid=GRID,
        ),
        t2c,
    ).eval()
    torch.nn.init.normal_(refine.output.weight, std=0.5)
    labels = torch.tensor([0, 1, 2, 1])
    for mode in ("sample", "argmax", "random-member"):
        s = SampleSettings(seed=0, refine_mode=mode)
        fine = generate_codes(gpt, labels, torch.arange(4), s, refine=refine)
        coarse = gpt.generate(
            labels,
            9,
            cfg_scale=s.cfg_scale,
            generator=__import__("codeprior.sample", fromlist=["x"]).sample_generators(0, range(4)),
        )
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


def test_speculative_decoding_records_passes_and_keeps_world_size_invariance(tmp_path):
    import json

    from codeprior.decoding import DecoderSettings

    gpt, vq = _models()
    s = SampleSettings(cfg_scale=2.0, seed=7, decoder=DecoderSettings("sjd", "exact", window=4))
    ref = sample_to_dir(gpt, vq, tmp_path / "one", 10, s, grid=GRID, batch_size=4, chunk_size=4)
    assert (
        sample_to_dir(gpt, vq, tmp_path / "two", 10, s, grid=GRID, batch_size=3, chunk_size=4, rank=1, world_size=2)
        is None
    )
    two = sample_to_dir(gpt, vq, tmp_path / "two", 10, s, grid=GRID, batch_size=3, chunk_size=4, rank=0, world_size=2)
    assert np.array_equal(load_npz_samples(ref)[0], load_npz_samples(two)[0])
    meta = json.loads((tmp_path / "one" / "samples.json").read_text())
    assert meta["decoder"]["decoder"] == "sjd" and meta["decoder"]["window"] == 4
    assert meta["forward_passes"] < 10 * 9 and meta["accepted_per_pass"] > 1.0
    assert meta["windows"] == {"passes_by_window": {"4": meta["forward_passes"]}, "ar_samples": 0}
    assert meta == json.loads((tmp_path / "two" / "samples.json").read_text())  # counts do not depend on batching
    ar = sample_to_dir(gpt, vq, tmp_path / "ar", 10, SampleSettings(cfg_scale=2.0, seed=7), grid=GRID, batch_size=4)
    ar_meta = json.loads((ar.parent / "samples.json").read_text())
    assert ar_meta["forward_passes"] == 90 and ar_meta["accepted_per_pass"] == 1.0
    assert "decoder" not in ar_meta["fingerprint"]["settings"]  # AR folders keep the fingerprint of earlier versions
    # window 1 is AR decoding: the same images
    w1 = SampleSettings(cfg_scale=2.0, seed=7, decoder=DecoderSettings("sjd", window=1))
    one = sample_to_dir(gpt, vq, tmp_path / "w1", 10, w1, grid=GRID, batch_size=4)
    assert np.array_equal(load_npz_samples(one)[0], load_npz_samples(ar)[0])


def test_speculative_prior_and_latent_rules_through_sample_to_dir(tmp_path):
    from codeprior.decoding import DecoderSettings
    from codeprior.errors import CodepriorError
    from codeprior.priors import Prior
    from codeprior.utils.io import sha256_tensor

    gpt, vq = _models()
    cb = vq.quantize.embedding.weight
    Prior(torch.arange(V) % 8, {"codebook_sha256": sha256_tensor(cb)}).save(tmp_path / "prior.safetensors")
    Prior(torch.arange(V // 2) % 8, {}).save(tmp_path / "small.safetensors")
    for accept, prior in (("prior", tmp_path / "prior.safetensors"), ("latent", None), ("gsd", None)):
        dec = DecoderSettings("sjd", accept, window=5, prior=str(prior) if prior else None)
        npz = sample_to_dir(gpt, vq, tmp_path / accept, 4, SampleSettings(seed=2, decoder=dec), grid=GRID, batch_size=4)
        assert load_npz_samples(npz)[0].shape[0] == 4
    bad = SampleSettings(seed=2, decoder=DecoderSettings("sjd", "prior", prior=str(tmp_path / "small.safetensors")))
    with pytest.raises(CodepriorError, match="prior covers 32 codes but the codebook has 64"):
        sample_to_dir(gpt, vq, tmp_path / "bad", 4, bad, grid=GRID, batch_size=4)


def test_sample_cli_speculative_flags(tmp_path, capsys):
    import json

    from codeprior.cli import main
    from codeprior.data.codes import write_code_shards
    from codeprior.models import save_vq
    from codeprior.priors import Prior
    from codeprior.utils.io import sha256_tensor

    _, vq = _models()
    save_vq(vq, tmp_path / "vq.pt")
    cb_sha = sha256_tensor(vq.quantize.embedding.weight)
    g = np.random.default_rng(0)
    meta = {
        "grid": list(GRID),
        "codebook_size": V,
        "num_classes": C,
        "n_aug": 1,
        "codebook_sha256": cb_sha,
        "tokenizer_sha256": "a" * 64,
    }
    write_code_shards(tmp_path / "codes", "train", g.integers(0, V, (12, 1, 9)), g.integers(0, C, 12), meta)
    assert (
        main(
            [
                "train",
                "--codes",
                str(tmp_path / "codes"),
                *TINY_TRAIN_FLAGS,
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    Prior(torch.arange(V) % 8, {"codebook_sha256": cb_sha}).save(tmp_path / "prior.safetensors")
    Prior(torch.arange(V // 2) % 8, {}).save(tmp_path / "small.safetensors")
    base = [
        "sample",
        "--ckpt",
        str(tmp_path / "run" / "model.pt"),
        "--tokenizer",
        str(tmp_path / "vq.pt"),
        "--num-samples",
        "3",
        "--device",
        "cpu",
        "--no-progress",
        "--decoder",
        "sjd",
        "--window",
        "4",
        "--draft-init",
        "repeat",
    ]
    assert (
        main([*base, "--accept", "prior", "--prior", str(tmp_path / "prior.safetensors"), "--out", str(tmp_path / "s")])
        == 0
    )
    rec = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert (
        rec["decoder"]["accept"] == "prior" and rec["decoder"]["draft_init"] == "repeat" and rec["forward_passes"] >= 9
    )
    capsys.readouterr()
    assert (
        main(
            [*base, "--accept", "prior", "--prior", str(tmp_path / "small.safetensors"), "--out", str(tmp_path / "bad")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prior covers 32 codes but the codebook has 64" in err[0]
    assert main([*base, "--accept", "prior", "--out", str(tmp_path / "none")]) == 2
    assert "--accept prior needs --prior" in capsys.readouterr().err

    # the spellings of earlier releases sample the same images, with one deprecation line each
    common = ["sample", "--ckpt", str(tmp_path / "run" / "model.pt"), "--tokenizer", str(tmp_path / "vq.pt")]
    common += ["--device", "cpu", "--no-progress", "--seed", "4"]
    new = ["--num-samples", "3", "--cfg-scale", "1.5", "--gsd-neighbors", "3"]
    old = ["--num", "3", "--cfg", "1.5", "--gsd-neighbors", "3"]
    for flags, out in ((new, "new"), (old, "old")):
        capsys.readouterr()
        assert main([*common, *flags, "--decoder", "sjd", "--accept", "gsd", "--out", str(tmp_path / out)]) == 0
        warned = [ln for ln in capsys.readouterr().err.splitlines() if "is deprecated, use" in ln]
        assert len(warned) == (2 if out == "old" else 0), warned
    with np.load(tmp_path / "new" / "samples.npz") as a, np.load(tmp_path / "old" / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])
    rec = json.loads((tmp_path / "new" / "samples.json").read_text())
    assert rec["cfg_scale"] == 1.5 and rec["decoder"]["gsd_neighbors"] == 3


def test_speculative_coarse_to_fine_stays_in_clusters_and_window_one_equals_ar():
    from codeprior.decoding import DecoderSettings
    from codeprior.sample import generate_codes

    k = 8
    t2c = torch.arange(V) % k
    gpt, _ = _models(coarse_k=k)
    rc = get_refine_config(
        "Refine-tiny",
        dim=32,
        n_layer=1,
        n_head=2,
        vocab_size=V,
        coarse_vocab_size=k,
        num_classes=C,
        block_size=GRID[0] * GRID[1],
        grid=GRID,
    )
    refine = RefineModel(rc, t2c).eval()
    torch.nn.init.normal_(refine.output.weight, std=0.5)
    labels = torch.tensor([0, 1, 2, 1])
    ar = generate_codes(gpt, labels, torch.arange(4), SampleSettings(seed=4), refine=refine)
    w1 = SampleSettings(seed=4, decoder=DecoderSettings("sjd", "gsd", window=1))
    # the refine stage sees the generators in the same state as after AR decoding
    assert torch.equal(generate_codes(gpt, labels, torch.arange(4), w1, refine=refine), ar)
    passes: list = []
    s = SampleSettings(seed=4, decoder=DecoderSettings("sjd", "gsd", window=6))
    fine = generate_codes(gpt, labels, torch.arange(4), s, refine=refine, passes=passes)
    assert fine.max() < V and (passes[0] < 9).all()
    assert torch.equal(generate_codes(gpt, labels[2:], torch.arange(2, 4), s, refine=refine), fine[2:])
