"""SNCE's ``encoder`` source (issue 27): `codeprior tokenize --store-embeddings` stores the encoder's output beside
the codes (float16, aligned with them per augmentation), the reader hands out the same samples' rows, and
`codeprior train --objective snce --snce-source encoder` trains on them (the codebook found through the manifest)."""

import numpy as np
import torch
import torch.nn.functional as F

from codeprior.cli import main
from codeprior.data.codes import CodeShards, read_manifest
from codeprior.utils.io import load_checkpoint


def _vq(path):
    from codeprior.models import save_vq
    from codeprior.models.vq import VQModel, get_vq_config

    torch.manual_seed(0)
    vq = VQModel(get_vq_config("VQ-fmnist", codebook_size=16, ch=16, z_channels=16, norm_groups=4, ch_mult=[1, 2, 2]))
    save_vq(vq, path)
    return vq.eval()


def _tokenize(tmp_path, out, *extra):
    args = ["tokenize", "--tokenizer", str(tmp_path / "vq.pt"), "--data", "fashion-mnist"]
    args += ["--data-dir", str(tmp_path / "idx"), "--out", str(out), "--batch-size", "16", *extra]
    assert main(args) == 0


def _train(tmp_path, codes, *extra):
    return main(
        [
            "train",
            "--codes",
            str(codes),
            "--out",
            str(tmp_path / "run"),
            "--objective",
            "snce",
            "--snce-k",
            "4",
            "--max-steps",
            "2",
            "--global-batch",
            "8",
            "--no-tensorboard",
            "--no-progress",
            "--threads",
            "1",
            "--model-override",
            "n_layer=1",
            "--model-override",
            "dim=32",
            "--model-override",
            "n_head=2",
            "--overwrite",
            *extra,
        ]
    )


def test_store_embeddings_then_train_on_them(tmp_path, make_idx_dataset, no_system_data, capsys):
    data = make_idx_dataset(tmp_path / "idx", n_train=24, n_test=8)
    vq = _vq(tmp_path / "vq.pt")
    _tokenize(tmp_path, tmp_path / "plain")
    _tokenize(tmp_path, tmp_path / "emb", "--store-embeddings")
    m = read_manifest(tmp_path / "emb")
    assert m["embeddings"] == {"dim": 8, "dtype": "float16"} and "embeddings" not in read_manifest(tmp_path / "plain")
    plain, emb = CodeShards(tmp_path / "plain", "train", aug=0), CodeShards(tmp_path / "emb", "train", aug=0)
    np.testing.assert_array_equal(plain.codes, emb.codes)  # storing embeddings leaves the codes as they were
    assert not (tmp_path / "plain" / "train" / "embeddings.npy").exists()
    stored = np.load(tmp_path / "emb" / "train" / "embeddings.npy")
    assert stored.dtype == np.float16 and stored.shape == (24, 2, 49, 8)
    x = torch.from_numpy(data["train"][0]).float().div(127.5).sub(1)[:, None]  # [N, 1, 28, 28] in [-1, 1]
    with torch.no_grad():
        for a, img in enumerate((x, x.flip(-1))):  # the original, then its mirror: the codes' augmentation order
            f = vq.encode_features(img).flatten(2).transpose(1, 2)  # [N, 49, 8]
            np.testing.assert_allclose(stored[:, a].astype(np.float32), f.numpy(), rtol=2e-3, atol=2e-3)
    # the reader: the rows of the samples and augmentations batch() draws; each row quantises to its code
    rnd = CodeShards(tmp_path / "emb", "train", aug="random", seed=3)
    rnd.set_epoch(5)
    idx = np.arange(24)
    codes, _ = rnd.batch(idx)
    z = rnd.batch_embeddings(idx).float()
    cb = F.normalize(vq.quantize.embedding.weight.detach(), dim=-1)
    nearest = torch.cdist(F.normalize(z, dim=-1).reshape(-1, 8), cb).argmin(1).reshape(24, 49)
    assert float((nearest == codes).float().mean()) > 0.98  # float16 rounding may flip a near-tie
    # training reads them (the codebook comes from the tokenizer the manifest names)
    assert _train(tmp_path, tmp_path / "emb", "--snce-source", "encoder") == 0
    assert "source encoder" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run" / "model.pt")["args"]["snce_source"] == "encoder"
    # shards without embeddings: a one-line refusal
    assert _train(tmp_path, tmp_path / "plain", "--snce-source", "encoder") == 2
    err = capsys.readouterr().err
    assert "no stored embeddings" in err and "--store-embeddings" in err and err.strip().count("\n") == 0
