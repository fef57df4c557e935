"""Sampling: CFG and coarse-to-fine generation, decoded to images, exported for the ADM evaluator.

Reproducibility contract: sample ``i`` draws all its randomness from its own ``torch.Generator`` seeded from
``(seed, i)``, so the images are identical whatever the batch size and however many processes share the work.
Work is split in fixed chunks of global sample indices (``chunk_size``); chunk ``c`` goes to rank ``c % world``
and is written atomically to ``DIR/chunks/``, so an interrupted run resumes by skipping finished chunks. Rank 0
then assembles ``samples.npz`` (``arr_0`` uint8 NHWC, ``labels`` int64: the ADM evaluator's layout) and a grid
PNG. No pickled ``all_gather_object`` of images: ranks communicate through the chunk files and one barrier.

Coarse-to-fine (CTF / DCPE): stage 1 draws cluster ids with the coarse GPT (CFG on cluster logits, temperature
``coarse_temperature``); stage 2 the fine codes with the refine model (``refine_temperature``, top-k; or ``argmax``,
or ``random-member`` as in DCPE's release). CTF's defaults: 1.1 for both.

Decoding (``SampleSettings.decoder``, :class:`codeprior.decoding.DecoderSettings`): plain AR, or speculative Jacobi
decoding with an acceptance rule (exact / gsd / latent / prior; docs/sampling.md). Each sample's number of model
passes is kept in its chunk; ``samples.json`` records the decoder settings, the passes and the mean accepted tokens
per pass. AR sampling (the default) is unchanged: its fingerprint and codes are those of earlier versions.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from codeprior.decoding.settings import (  # noqa: F401  (REFINE_MODES, SampleSettings: re-exported)
    ACCEPT_RULES,
    REFINE_MODES,
    DecoderSettings,
    SampleSettings,
)
from codeprior.decoding.window import max_window
from codeprior.errors import CodepriorError
from codeprior.models.sampling import NonFiniteLogits
from codeprior.utils.io import atomic_path, write_json_atomic
from codeprior.utils.progress import progress

if TYPE_CHECKING:  # annotations only: the models are imported by the callers
    from codeprior.models.gpt import GPT
    from codeprior.models.refine import RefineModel
    from codeprior.models.vq import VQModel


def balanced_labels(num: int, num_classes: int) -> torch.Tensor:
    """Class labels for ``num`` samples, balanced as the ADM protocol expects (num / num_classes each, sorted)."""
    if num < 1 or num_classes < 1:
        raise CodepriorError(f"sampling: need num >= 1 and num_classes >= 1 (got {num}, {num_classes})")
    return torch.arange(num, dtype=torch.long) * num_classes // num


def sample_generators(
    seed: int, indices: Sequence[int] | torch.Tensor, device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """One generator per global sample index, seeded from (seed, index) only."""
    gens = []
    for i in torch.as_tensor(indices).tolist():
        state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(i)]).generate_state(2, dtype=np.uint32)
        g = torch.Generator(device=device)
        g.manual_seed(int(state[0]) << 32 | int(state[1]))
        gens.append(g)
    return gens


def codes_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Decoder output [B, C, H, W] in [-1, 1] -> uint8 NHWC."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


@torch.no_grad()
def generate_codes(
    gpt: GPT,
    labels: torch.Tensor,
    indices: Sequence[int] | torch.Tensor,
    settings: SampleSettings,
    *,
    refine: RefineModel | None = None,
    rule: Any = None,
    passes: list[torch.Tensor] | None = None,
    windows: dict[int, int] | None = None,
) -> torch.Tensor:
    """Codes [B, L] for ``labels`` [B]; sample ``indices[j]`` seeds row ``j``. With ``refine``, ``gpt`` is a
    coarse model (vocabulary = clusters) and the refine model turns its cluster ids into fine codes.

    With a speculative ``settings.decoder``, ``rule`` is its acceptance rule (built from the settings when None;
    ``latent`` and ``prior`` need it built with the codebook / prior, see :func:`decoder_rule`). ``passes`` (a
    list) receives each sample's number of model passes (the GPT stage; AR: L); ``windows`` (a dict) adds the
    speculative sample-passes per window (key 0: samples that ``--window auto`` decoded by plain AR)."""
    gens = sample_generators(settings.seed, indices)
    seq_len = gpt.config.block_size
    sampling: dict[str, Any] = dict(
        cfg_scale=settings.cfg_scale,
        temperature=settings.stage1_temperature(coarse=refine is not None),
        top_k=settings.top_k,
        top_p=settings.top_p,
        generator=gens,
    )
    dec = settings.decoder
    if dec.speculative:
        from codeprior.decoding import auto_window, build_rule, jacobi_generate

        if rule is None:
            rule = build_rule(dec, gpt, coarse=refine is not None)
        window: Any = dec.window
        if window == "auto":
            window = auto_window(gpt, seq_len, rule=rule, init=dec.draft_init, compile=dec.compile, **sampling)
        codes, n_pass = jacobi_generate(
            gpt, labels, seq_len, window=window, rule=rule, init=dec.draft_init, compile=dec.compile, **sampling
        )
        if windows is not None:
            used = window.usage if dec.window == "auto" else {int(window): int(n_pass.sum())}
            for w, k in used.items():
                windows[w] = windows.get(w, 0) + k
            if dec.window == "auto":
                windows[0] = windows.get(0, 0) + window.ar_samples
    else:
        codes = gpt.generate(labels, seq_len, compile=dec.compile, **sampling)
        n_pass = torch.full((codes.shape[0],), seq_len, dtype=torch.long)
    if passes is not None:
        passes.append(n_pass.cpu())
    if refine is None:
        return codes
    return refine.sample(
        codes,
        labels,
        temperature=settings.refine_temperature,
        top_k=settings.refine_top_k,
        mode=settings.refine_mode,
        generator=gens,
    )


def decoder_rule(settings: SampleSettings, gpt: GPT, vq: VQModel, coarse: bool = False) -> Any:
    """The acceptance rule of a speculative decoder (None for AR): ``latent`` takes the tokenizer's codebook,
    ``prior`` loads ``settings.decoder.prior`` and checks it against that codebook and the model's vocabulary."""
    dec = settings.decoder
    if not dec.speculative:
        return None
    from codeprior.decoding import build_rule

    codebook = vq.quantize.embedding.weight.detach().cpu()
    t2c = None
    if ACCEPT_RULES[dec.accept].needs_prior and not coarse:
        from codeprior.priors import load_prior

        assert dec.prior is not None  # DecoderSettings requires a prior file for accept="prior"
        t2c = load_prior(dec.prior, codebook).token_to_cluster
    return build_rule(dec, gpt, codebook=codebook, token_to_cluster=t2c, coarse=coarse)


def sample_memory(
    gpt: GPT,
    vq: VQModel,
    num: int,
    settings: SampleSettings,
    *,
    batch_size: int,
    chunk_size: int | None = None,
    refine: RefineModel | None = None,
    grid: tuple[int, int] | None = None,
) -> tuple[int, int, tuple[int, int, int]]:
    """Estimated bytes (kept on the host, working set on the model's device) and the image shape (H, W, C).

    Host: the images of ``samples.npz`` twice (the loaded chunks and their concatenation) and the labels, plus one
    chunk being assembled. Working set of one batch: the KV caches (batch x layers x 2 x heads x positions x
    head_dim x dtype size, doubled by CFG; the speculative decoder adds its window to the positions), the logits and
    window buffers ([batch, window, vocab] floats), the refine model's logits and the VQ decoder's activations."""
    c = gpt.config
    L = c.block_size
    gh, gw = grid if grid is not None else (int(math.isqrt(L)), L // max(1, int(math.isqrt(L))))
    f = vq.config.downsample_factor
    H, W_, C = gh * f, gw * f, int(vq.config.in_channels)
    px = H * W_ * C
    b = max(1, min(int(batch_size), int(num)))
    chunk = max(b, min(int(chunk_size or batch_size), int(num)))
    host = 2 * num * px + 3 * 8 * num + 2 * chunk * px
    b2 = 2 * b if settings.cfg_scale != 1.0 else b
    item = gpt.tok_embeddings.weight.element_size()
    dec = settings.decoder
    win = (max_window(L) if dec.window == "auto" else int(dec.window)) if dec.speculative else 1
    pos = c.cls_token_num + L + (win if dec.speculative else 0)
    kv = b2 * c.n_layer * 2 * c.kv_heads * pos * c.head_dim * item
    logits = 6 * b2 * win * c.vocab_size * 4 + (2 * b * win * c.vocab_size * 4 if dec.speculative else 0)
    attn = b2 * c.n_head * win * pos * 4 + 4 * b2 * win * c.dim * 4
    work = kv + logits + attn
    if refine is not None:
        work += 3 * b * L * refine.config.vocab_size * 4 + 4 * b * (c.cls_token_num + L) * refine.config.dim * 4
    work += 3 * b * vq.config.ch * max(vq.config.dec_ch_mult) * H * W_ * 4
    return host, work, (H, W_, C)


def check_sample_memory(
    gpt: GPT,
    vq: VQModel,
    num: int,
    settings: SampleSettings,
    *,
    batch_size: int,
    chunk_size: int | None = None,
    refine: RefineModel | None = None,
    grid: tuple[int, int] | None = None,
    ignore: bool = False,
) -> None:
    """Refuse before any work when :func:`sample_memory`'s estimate exceeds the free memory (host, and the model's
    CUDA device); ``ignore`` (``--ignore-memory-check``) skips it."""
    from codeprior.utils.memory import check_memory

    if ignore:
        return
    host, work, (H, W_, C) = sample_memory(
        gpt, vq, num, settings, batch_size=batch_size, chunk_size=chunk_size, refine=refine, grid=grid
    )
    device = gpt.tok_embeddings.weight.device
    dec = settings.decoder
    what = f"sample: {num} samples of {H}x{W_}x{C} (batch {batch_size}"
    what += f", window {dec.window})" if dec.speculative else ")"
    hint = "lower --num (or split it over several --out folders) or --batch-size" + (
        " or --window" if dec.speculative else ""
    )
    if device.type == "cuda":
        check_memory(work, what, hint=hint, device=device)
        check_memory(host, what, hint=hint)
    else:
        check_memory(host + work, what, hint=hint)


def _decode(vq: VQModel, codes: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    dev = vq.quantize.embedding.weight.device
    return codes_to_uint8(vq.decode_codes(codes.to(dev).view(codes.shape[0], *grid)))


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def sample_to_dir(
    gpt: GPT,
    vq: VQModel,
    out_dir: str | os.PathLike,
    num: int,
    settings: SampleSettings,
    *,
    labels: torch.Tensor | None = None,
    refine: RefineModel | None = None,
    grid: tuple[int, int] | None = None,
    batch_size: int = 64,
    chunk_size: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    grid_per_class: int = 8,
    extra_meta: dict[str, Any] | None = None,
    overwrite: bool = False,
    keep_chunks: bool = False,
    ignore_memory: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path | None:
    """Draw ``num`` samples into ``out_dir`` (chunks, then ``samples.npz`` + ``grid.png`` + ``samples.json``).

    ``rank``/``world_size`` default to the initialised process group (or 0/1). Returns the npz path on the rank
    that assembled it (rank 0), else None. Re-running skips chunks already written (resume) and finished samples;
    chunks or samples of other weights or settings (:func:`sample_fingerprint`) are refused, or with ``overwrite``
    removed first. ``chunks/`` is deleted once ``samples.npz`` is written unless ``keep_chunks``.

    Before any work the memory estimate (:func:`check_sample_memory`) is checked unless ``ignore_memory``. ``log``
    (rank 0) receives one line saying what happened: finished samples reused, a resume (chunks already done), or
    the samples written.
    """
    if rank is None or world_size is None:
        rank, world_size = _dist_info()
    out_dir = Path(out_dir)
    num_classes = gpt.config.num_classes
    check_sample_memory(
        gpt,
        vq,
        num,
        settings,
        batch_size=batch_size,
        chunk_size=chunk_size,
        refine=refine,
        grid=grid,
        ignore=ignore_memory,
    )
    if labels is None:
        labels = balanced_labels(num, num_classes)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != (num,):
        raise CodepriorError(f"sampling: got {labels.numel()} labels for {num} samples")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise CodepriorError(f"sampling: labels must be in 0..{num_classes - 1}")
    L = gpt.config.block_size
    if grid is None:
        side = int(math.isqrt(L))
        if side * side != L:
            raise CodepriorError(f"sampling: cannot infer the code grid of {L} tokens; pass grid=(h, w)")
        grid = (side, side)
    if grid[0] * grid[1] != L:
        raise CodepriorError(f"sampling: grid {grid} does not hold {L} tokens")
    if refine is not None and refine.config.coarse_vocab_size != gpt.config.vocab_size:
        raise CodepriorError(
            f"sampling: coarse GPT has vocabulary {gpt.config.vocab_size} but the refine model expects "
            f"{refine.config.coarse_vocab_size} clusters"
        )
    chunk_size = int(chunk_size or batch_size)
    rule = decoder_rule(settings, gpt, vq, coarse=refine is not None)
    chunks_dir = out_dir / "chunks"
    fp = sample_fingerprint(gpt, vq, refine, labels, settings, grid, chunk_size)
    state = _existing_state(out_dir, fp, overwrite)
    say = log if log is not None and rank == 0 else (lambda _msg: None)
    if state == "done":
        say(
            f"{out_dir / 'samples.npz'}: already finished with this model and settings; reused it (--overwrite to redo)"
        )
        return out_dir / "samples.npz" if rank == 0 else None
    _barrier(world_size)  # every rank has read the old state before rank 0 changes it
    if rank == 0:
        if state == "stale":  # overwrite: start clean
            shutil.rmtree(chunks_dir, ignore_errors=True)
            for name in ("samples.npz", "samples.json", "grid.png"):
                (out_dir / name).unlink(missing_ok=True)
        chunks_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(chunks_dir / FINGERPRINT, fp)
    _barrier(world_size)
    n_chunks = math.ceil(num / chunk_size)
    mine = [c for c in range(n_chunks) if c % world_size == rank]
    todo = [c for c in mine if not (chunks_dir / f"{c:06d}.npz").exists()]
    done = sum((chunks_dir / f"{c:06d}.npz").exists() for c in range(n_chunks)) if rank == 0 else 0
    if done:
        say(f"{chunks_dir}: resuming, {done} of {n_chunks} chunks already sampled")
    gpt.eval()
    vq.eval()
    if refine is not None:
        refine.eval()
    bar = progress(total=sum(min(chunk_size, num - c * chunk_size) for c in todo), desc="sampling", unit="img")
    for c in todo:
        lo, hi = c * chunk_size, min(num, (c + 1) * chunk_size)
        parts: list[np.ndarray] = []
        passes: list[torch.Tensor] = []
        windows: dict[int, int] = {}
        for b in range(lo, hi, batch_size):
            idx = torch.arange(b, min(hi, b + batch_size))
            try:
                codes = generate_codes(
                    gpt, labels[idx], idx, settings, refine=refine, rule=rule, passes=passes, windows=windows
                )
            except NonFiniteLogits as e:
                raise NonFiniteLogits(f"{e} of samples {int(idx[0])}..{int(idx[-1])}", e.stage) from None
            parts.append(_decode(vq, codes, grid))
            bar.update(len(idx))
        with atomic_path(chunks_dir / f"{c:06d}.npz") as tmp, open(tmp, "wb") as f:
            used = np.zeros(max(windows, default=0) + 1, dtype=np.int64)
            used[list(windows)] = list(windows.values())
            np.savez(
                f,
                images=np.concatenate(parts),
                labels=labels[lo:hi].numpy(),
                passes=torch.cat(passes).numpy(),
                window_passes=used,
            )
    bar.close()
    _barrier(world_size)
    if rank != 0:
        return None
    loaded = [np.load(chunks_dir / f"{c:06d}.npz") for c in range(n_chunks)]
    images = np.concatenate([z["images"] for z in loaded])
    passes_all = np.concatenate([z["passes"] for z in loaded]) if all("passes" in z for z in loaded) else None
    npz = out_dir / "samples.npz"
    with atomic_path(npz) as tmp, open(tmp, "wb") as f:
        np.savez(f, arr_0=images, labels=labels.numpy())
    save_class_grid(images, labels.numpy(), out_dir / "grid.png", per_class=grid_per_class)
    meta = {
        "num": num,
        "grid": list(grid),
        "coarse_to_fine": refine is not None,
        **asdict(settings),
        **decoding_stats(passes_all, L),
    }
    if settings.decoder.speculative:
        meta["windows"] = window_stats([z["window_passes"] for z in loaded if "window_passes" in z], len(loaded))
    write_json_atomic(out_dir / "samples.json", {**meta, **(extra_meta or {}), "fingerprint": fp})
    if not keep_chunks:
        shutil.rmtree(chunks_dir, ignore_errors=True)
    say(f"wrote {num} samples to {npz} and {out_dir / 'grid.png'}")
    return npz


FINGERPRINT = "fingerprint.json"


def decoding_stats(passes: np.ndarray | None, seq_len: int) -> dict[str, Any]:
    """Model forward passes (summed over samples; each sample's count is independent of the batching) and the
    mean number of tokens accepted per pass; None when some chunk predates the count."""
    if passes is None or len(passes) == 0:
        return {"forward_passes": None, "forward_passes_per_sample": None, "accepted_per_pass": None}
    total = int(passes.sum())
    return {
        "forward_passes": total,
        "forward_passes_per_sample": total / len(passes),
        "accepted_per_pass": seq_len * len(passes) / total,
    }


def window_stats(per_chunk: list[np.ndarray], n_chunks: int) -> dict[str, Any] | None:
    """The windows speculative decoding used (``samples.json``): sample-passes per window and the samples that
    ``--window auto`` decoded by plain AR; None when some chunk predates the record."""
    if len(per_chunk) != n_chunks:
        return None
    total = np.zeros(max((len(u) for u in per_chunk), default=1), dtype=np.int64)
    for u in per_chunk:
        total[: len(u)] += u
    return {
        "passes_by_window": {str(w): int(k) for w, k in enumerate(total) if w and k},
        "ar_samples": int(total[0]),
    }


def _barrier(world_size: int) -> None:
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def weights_sha256(*models: torch.nn.Module | None) -> str:
    """Hash of the models' state dicts (names, dtypes, shapes and bytes), in order; None entries count as absent."""
    h = hashlib.sha256()
    for m in models:
        h.update(b"|model|" if m is not None else b"|none|")
        for name, t in sorted((m.state_dict() if m is not None else {}).items()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sample_fingerprint(
    gpt: torch.nn.Module,
    vq: torch.nn.Module,
    refine: torch.nn.Module | None,
    labels: torch.Tensor,
    settings: SampleSettings,
    grid: tuple[int, int],
    chunk_size: int,
) -> dict[str, Any]:
    """What decides the images of a sample folder: the weights, the labels, the settings and the chunking."""
    return {
        "weights_sha256": weights_sha256(gpt, refine, vq),
        "labels_sha256": hashlib.sha256(labels.numpy().astype(np.int64).tobytes()).hexdigest(),
        "num": int(labels.numel()),
        "grid": list(grid),
        "chunk_size": int(chunk_size),
        "settings": _settings_key(settings, coarse=refine is not None),
    }


def _settings_key(settings: SampleSettings, coarse: bool) -> dict[str, Any]:
    """The settings as fingerprinted, in the form earlier versions wrote (their folders resume): ``temperature`` is
    the GPT's (``coarse_temperature`` for a coarse GPT), AR decoding leaves the decoder out, and the decoder's
    ``draft_init`` is keyed ``init``."""
    d = asdict(settings)
    d["temperature"] = settings.stage1_temperature(coarse)
    d.pop("coarse_temperature")
    if not settings.decoder.speculative:
        d.pop("decoder")
    else:
        d["decoder"] = {("init" if k == "draft_init" else k): v for k, v in d["decoder"].items()}
    return d


def _fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    names = {"weights_sha256": "model weights", "labels_sha256": "labels"}
    diff = [names.get(k, k) for k in new if k != "settings" and old.get(k) != new[k]]
    old_s = old.get("settings") or {}
    diff += [k for k, v in new["settings"].items() if old_s.get(k) != v]
    return ", ".join(diff) or "format"


def _existing_state(out_dir: Path, fp: dict[str, Any], overwrite: bool) -> str:
    """``done`` (finished with this fingerprint), ``fresh``/``resume`` (nothing, or matching chunks), or ``stale``
    (another model or other settings, with ``overwrite``); without ``overwrite`` a mismatch is an error."""
    import json

    from codeprior.provenance import warn_unchecked

    meta_path, chunks = out_dir / "samples.json", out_dir / "chunks"
    old: dict[str, Any] | None = None
    where = out_dir
    fp_path = chunks / FINGERPRINT
    try:
        if fp_path.is_file():
            old, where = json.loads(fp_path.read_text()), fp_path
        elif meta_path.is_file() and (out_dir / "samples.npz").is_file():
            old, where = json.loads(meta_path.read_text()).get("fingerprint"), meta_path
    except (OSError, ValueError):
        old = {}
    if old is None:
        if chunks.is_dir() and any(chunks.glob("*.npz")):
            warn_unchecked(
                str(chunks),
                "chunks without a fingerprint (an older run)",
                "whether they came from the same model and settings",
            )
            return "resume"
        return "fresh"
    if old == fp:
        return "done" if where == meta_path else "resume"
    if overwrite:
        return "stale"
    raise CodepriorError(
        f"{where}: {out_dir} holds samples of another model or other settings (differs in: "
        f"{_fingerprint_diff(old, fp)}); pass --overwrite to start clean, or choose another --out"
    )


def save_class_grid(images: np.ndarray, labels: np.ndarray, path: str | os.PathLike, per_class: int = 8) -> Path:
    """One row per class with up to ``per_class`` samples (uint8 NHWC input)."""
    from codeprior.data.images import save_image_grid

    rows = []
    for cls in np.unique(labels):
        sel = images[labels == cls][:per_class]
        pad = np.full((per_class - len(sel),) + images.shape[1:], 255, dtype=np.uint8)
        rows.append(np.concatenate([sel, pad]))
    tiles = torch.from_numpy(np.concatenate(rows)).permute(0, 3, 1, 2)
    return save_image_grid(tiles, path, nrow=per_class)
