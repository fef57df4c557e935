"""AR decoding in small steps (codeprior.decoding.ar): the codes of the earlier single-loop ``GPT.generate``, bit for
bit (that loop is kept below as the reference), the compiled fixed-shape step, and weight-only bf16 / int8."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pytest
import torch
from helpers import tiny_gpt

from codeprior.decoding.ar import StaticDecodeStep, guided_logits, make_caches
from codeprior.errors import CodepriorError
from codeprior.models.gpt import GPT, KVCache
from codeprior.models.sampling import NonFiniteLogits, cfg_scale_at, sample_logits


@torch.no_grad()
def reference_generate(
    self: GPT,
    labels: torch.Tensor,
    seq_len: int,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: Any = None,
    cfg_schedule: Any = None,
    logits_processor: Any = None,
) -> torch.Tensor:
    """``GPT.generate``'s loop as it was before the split (commit b3c03da), argument checks left out."""
    c = self.config
    B = labels.shape[0]
    use_cfg = cfg_scale != 1.0 or cfg_schedule is not None
    cond = torch.cat([labels, torch.full_like(labels, c.num_classes)]) if use_cfg else labels
    B2 = cond.shape[0]
    n_pos = c.cls_token_num + seq_len - 1
    caches = [KVCache(B2, c.kv_heads, n_pos, c.head_dim) for _ in self.layers]
    out = torch.empty(B, seq_len, dtype=torch.long)
    h = self.cls_embedding(cond, train=False).to(self.tok_embeddings.weight.dtype)
    hidden = self.forward_hidden(h, causal=True, caches=caches, start=0)
    for i in range(seq_len):
        logits = self.output(hidden[:, -1]).float()
        if use_cfg:
            cond_l, uncond_l = logits.split(B, dim=0)
            s = cfg_scale_at(i, seq_len, cfg_scale, cfg_schedule)
            logits = uncond_l + s * (cond_l - uncond_l)
        if logits_processor is not None:
            logits = logits_processor(logits, i, out[:, :i])
        tok = sample_logits(logits, temperature, top_k, top_p, generator)
        out[:, i] = tok
        if i + 1 < seq_len:
            x = tok.repeat(B2 // B) if use_cfg else tok
            hidden = self.forward_hidden(
                self.tok_embeddings(x[:, None]), causal=True, caches=caches, start=c.cls_token_num + i
            )
    return out


def gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


SETTINGS: list[dict[str, Any]] = [
    {},
    dict(cfg_scale=2.0),
    dict(cfg_scale=3.0, temperature=0.7, top_k=10),
    dict(temperature=1.3, top_p=0.8),
    dict(cfg_scale=2.0, cfg_schedule="linear"),
    dict(cfg_scale=1.5, cfg_schedule=lambda i, n: 1.0 + i / n),
    dict(cfg_scale=2.0, temperature=0.0),
]


@pytest.mark.parametrize("kw", SETTINGS)
def test_split_decoding_gives_the_earlier_codes_bit_for_bit(kw: dict[str, Any]) -> None:
    model = tiny_gpt(seed=3)
    labels = torch.tensor([0, 2, 1, 2])
    ref = reference_generate(model, labels, 15, generator=gens([5, 6, 7, 8]), **kw)
    new = model.generate(labels, 15, generator=gens([5, 6, 7, 8]), **kw)
    assert torch.equal(ref, new)
    # a shared generator and a shorter sequence too
    ref = reference_generate(model, labels, 7, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(ref, model.generate(labels, 7, generator=torch.Generator().manual_seed(1), **kw))


def test_logits_processor_sees_the_guided_logits_and_the_prefix() -> None:
    model = tiny_gpt(seed=4)
    labels = torch.tensor([1, 0])
    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def proc(logits: torch.Tensor, i: int, prefix: torch.Tensor) -> torch.Tensor:
        seen.append((i, logits.clone(), prefix.clone()))
        return logits.index_fill(-1, torch.tensor([0]), -float("inf"))  # token 0 is never drawn

    ref_seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def ref_proc(logits: torch.Tensor, i: int, prefix: torch.Tensor) -> torch.Tensor:
        ref_seen.append((i, logits.clone(), prefix.clone()))
        return logits.index_fill(-1, torch.tensor([0]), -float("inf"))

    codes = model.generate(labels, 15, cfg_scale=2.0, generator=gens([1, 2]), logits_processor=proc)
    ref = reference_generate(model, labels, 15, cfg_scale=2.0, generator=gens([1, 2]), logits_processor=ref_proc)
    assert torch.equal(codes, ref) and (codes != 0).all() and len(seen) == 15
    for (i, lg, pre), (j, rlg, rpre) in zip(seen, ref_seen):
        assert i == j and torch.equal(lg, rlg) and torch.equal(pre, rpre) and pre.shape == (2, i)


def test_guided_logits_mixes_the_halves() -> None:
    cond, uncond = torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, -1.0]])
    out = guided_logits(torch.cat([cond, uncond]), 1, 2.0)
    assert torch.equal(out, torch.tensor([[0.0, 7.0]]))  # uncond + 2 (cond - uncond)
    assert torch.equal(guided_logits(torch.cat([cond, uncond]), 1, 1.0), cond)


def test_non_finite_logits_and_bad_arguments_raise() -> None:
    model = tiny_gpt(seed=1)
    with torch.no_grad():
        model.output.weight[3, 0] = float("nan")
    with pytest.raises(NonFiniteLogits, match="token 0"):
        model.generate(torch.tensor([0]), 5)
    with pytest.raises(CodepriorError, match="seq_len"):
        tiny_gpt().generate(torch.tensor([0]), 16)


def test_static_step_gives_the_eager_logits() -> None:
    """The fixed-shape step (what compile captures) over whole masked buffers = the prefix-view pass, to rounding."""
    model = tiny_gpt(seed=2)
    cond = torch.tensor([0, 1, 2, 2])
    step = StaticDecodeStep(model, 4, 15)
    caches = make_caches(model, 4, 15)
    with torch.no_grad():
        h = model.cls_embedding(cond, train=False)
        eager = model.output(model.forward_hidden(h, caches=caches, start=0)[:, -1]).float()
        static = step(h, torch.zeros(4, 1, dtype=torch.long))
        torch.testing.assert_close(static, eager, rtol=1e-5, atol=1e-5)
        for i in range(6):
            x = torch.randint(0, model.config.vocab_size, (4,), generator=torch.Generator().manual_seed(i))
            e = model.forward_hidden(model.tok_embeddings(x[:, None]), caches=caches, start=1 + i)
            s = step(model.tok_embeddings(x[:, None]), torch.full((4, 1), 1 + i))
            torch.testing.assert_close(s, model.output(e[:, -1]).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(cfg_scale=2.0), dict(cfg_scale=2.0, cfg_schedule="linear", top_k=8)])
def test_compiled_decoding_gives_the_eager_codes(kw: dict[str, Any]) -> None:
    """``compile=True`` (torch.compile of the fixed-shape step; tens of seconds to compile on 2 CPU cores), fp32:
    the same codes as eager over several seeds; the second call reuses the compiled step."""
    from codeprior.decoding import ar

    model = tiny_gpt(seed=5)
    labels = torch.tensor([0, 1, 2])
    for seeds in ([1, 2, 3], [4, 5, 6]):
        eager = model.generate(labels, 15, generator=gens(seeds), **kw)
        comp = model.generate(labels, 15, generator=gens(seeds), compile=True, **kw)
        assert torch.equal(eager, comp)
    assert len(ar._COMPILED[model]) == 1


def test_int8_quantisation_is_per_channel_symmetric_and_the_matmul_dequantises() -> None:
    from codeprior.decoding.weights import Int8Linear, quantize_int8

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=False)
    with torch.no_grad():
        lin.weight[3] *= 100.0  # one loud channel must not coarsen the others
        lin.weight[5] = 0.0
    q, scale = quantize_int8(lin.weight)
    assert q.dtype == torch.int8 and q.abs().max() == 127 and (q[5] == 0).all()
    w = lin.weight.detach()
    assert torch.allclose(scale, w.abs().amax(1).clamp(min=1e-12) / 127)
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7).all()  # round to nearest
    x = torch.randn(3, 5, 64)
    ref = (x.double() @ (q.double() * scale.double()[:, None]).T).float()  # dequantised, independently
    out = Int8Linear(lin)(x)
    assert out.shape == (3, 5, 48) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))  # bf16 activations


@pytest.mark.parametrize("fmt", ["bf16", "int8"])
def test_cast_weights_replaces_every_linear_and_keeps_the_logits_close(fmt: str) -> None:
    from codeprior.decoding.weights import cast_weights

    ref = tiny_gpt(seed=3)
    model = cast_weights(tiny_gpt(seed=3), fmt)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert model.tok_embeddings.weight.dtype == torch.float32  # embeddings (and the KV cache) stay fp32
    wdtype = torch.bfloat16 if fmt == "bf16" else torch.int8
    assert all(model.state_dict()[f"{n}.weight"].dtype == wdtype for n in ("output", "layers.0.attention.wqkv"))
    codes, labels = torch.randint(0, model.config.vocab_size, (4, 15)), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        a, b = ref(codes, labels), model(codes, labels)
    assert (a - b).abs().max() < 0.05 * a.abs().max() and (a - b).abs().max() > 0  # close, and not fp32 itself
    greedy = model.generate(labels, 15, cfg_scale=2.0, temperature=0.0)
    assert greedy.shape == (4, 15) and greedy.max() < model.config.vocab_size
    assert cast_weights(ref, "fp32") is ref and isinstance(ref.output, torch.nn.Linear)
    with pytest.raises(CodepriorError, match="--weights"):
        cast_weights(ref, "fp8")


def test_sample_cli_weights_flag_is_recorded_and_tells_folders_apart(tmp_path: Any, capsys: Any) -> None:
    import json

    from helpers import TINY_TRAIN_FLAGS

    from codeprior.cli import main
    from codeprior.commands import sample as sample_cmd
    from codeprior.data.codes import write_code_shards
    from codeprior.decoding.weights import WEIGHT_FORMATS
    from codeprior.models import save_vq
    from codeprior.models.vq import VQModel, get_vq_config
    from codeprior.utils.io import sha256_tensor

    torch.manual_seed(0)
    vq = VQModel(
        get_vq_config(
            "VQ-fmnist", codebook_size=64, ch=16, z_channels=16, norm_groups=4, ch_mult=[1, 2, 2], image_size=12
        )  # fmt: skip
    ).eval()
    save_vq(vq, tmp_path / "vq.pt")
    meta = {"grid": [3, 3], "codebook_size": 64, "num_classes": 3, "n_aug": 1, "tokenizer_sha256": "a" * 64,
            "codebook_sha256": sha256_tensor(vq.quantize.embedding.weight)}  # fmt: skip
    g = np.random.default_rng(0)
    write_code_shards(tmp_path / "codes", "train", g.integers(0, 64, (12, 1, 9)), g.integers(0, 3, 12), meta)
    assert main(["train", "--codes", str(tmp_path / "codes"), *TINY_TRAIN_FLAGS, "--out", str(tmp_path / "run")]) == 0
    base = ["sample", "--ckpt", str(tmp_path / "run" / "model.pt"), "--tokenizer", str(tmp_path / "vq.pt"),
            "--num-samples", "3", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main([*base, "--weights", "int8", "--out", str(tmp_path / "s")]) == 0
    rec = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert rec["weights"] == "int8"
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "s")]) == 2  # fp32 weights into an int8 folder: refused
    assert "model weights" in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    sample_cmd.register(parser.add_subparsers())
    action = next(a for a in parser._subparsers._group_actions[0].choices["sample"]._actions if a.dest == "weights")
    assert tuple(action.choices) == WEIGHT_FORMATS  # the CLI's choices are the module's list
