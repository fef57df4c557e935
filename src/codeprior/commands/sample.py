"""`codeprior sample`: class-conditional samples (CFG; coarse-to-fine with --refine) to a grid PNG and an ADM .npz."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, cast

from codeprior.decoding.settings import (  # torch-free records and registries
    ACCEPT_RULES,
    add_sampling_flags,
    sampling_from_namespace,
)
from codeprior.errors import CodepriorError, note
from codeprior.utils.argtypes import add_device_flag, add_image_size_flag, add_runtime_flags, positive_int
from codeprior.utils.memory import add_memory_flag
from codeprior.utils.paths import declare_paths
from codeprior.utils.settings import add_old_flags

if TYPE_CHECKING:
    from codeprior.models.gpt import GPT
    from codeprior.models.refine import RefineModel
    from codeprior.models.vq import VQModel

EPILOG = """\
examples (paths as `codeprior demo` writes them under runs/demo):
  codeprior sample --ckpt runs/demo/train-token/run/model.pt \\
      --tokenizer runs/demo/tokenizer/train/tokenizer.pt --num-samples 1000 --cfg-scale 2.0 --out samples/token
  # coarse-to-fine (CTF / DCPE): a coarse GPT over cluster ids + a refine model
  codeprior sample --ckpt runs/demo/train-coarse-dcpe/run/model.pt --refine runs/demo/train-refine-dcpe/run/model.pt \\
      --prior runs/demo/priors/dcpe.safetensors --tokenizer runs/demo/tokenizer/train/tokenizer.pt \\
      --num-samples 50 --per-class --cfg-scale 2.0 --coarse-temperature 1.1 --refine-temperature 1.1 \\
      --out samples/ctf
  # speculative Jacobi decoding (docs/sampling.md): automatic window, acceptance by cluster mass under a prior
  codeprior sample --ckpt runs/demo/train-token/run/model.pt --tokenizer runs/demo/tokenizer/train/tokenizer.pt \\
      --decoder sjd --accept prior --prior runs/demo/priors/dcpe.safetensors --num-samples 100 \\
      --out samples/sjd
  # 50k samples for the ADM evaluator on 8 GPUs (identical images for any number of processes)
  torchrun --nproc_per_node 8 -m codeprior sample --ckpt c2i_B_256.pt --model GPT-B \\
      --tokenizer vq_ds16_c2i.pt --vq-model VQ-16 --num-samples 50 --per-class --cfg-scale 2.0 --out samples/B
  # a released 384-px GPT (a bare state dict: nothing in it says the grid)
  codeprior sample --ckpt c2i_L_384.pt --model GPT-L --image-size 384 \\
      --tokenizer vq_ds16_c2i.pt --vq-model VQ-16 --num-samples 8 --out samples/L384

The code grid: a checkpoint written by codeprior or by LlamaGen's train_c2i.py says it (its config, or its args'
image_size / downsample_size); for one that does not, --image-size / the tokenizer's downsampling, else the
tokenizer's own image size (a note says which). A --model, --vq-model or --image-size that contradicts what
the files say, or a tokenizer with another downsampling than the GPT's args, is refused before sampling.

Sample i depends only on (--seed, i): any batch size split over any number of processes gives the same images.
Finished chunks are kept until samples.npz is written, so an interrupted run continues where it stopped; a
folder holding chunks or samples of another model or other settings is refused (--overwrite starts clean).
Checked before sampling (docs/checks.md): a coarse checkpoint needs --refine, and the tokenizer must have the
codebook the checkpoint was trained on.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="sample images from a trained GPT (CFG, coarse-to-fine) into a grid and an ADM .npz",
        description="Sample class-conditional images with a static KV cache and classifier-free guidance. "
        "Writes OUT/samples.npz (arr_0 uint8 NHWC + labels, the ADM evaluator layout), OUT/grid.png "
        "(one row per class) and OUT/samples.json (settings).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ckpt", required=True, help="GPT checkpoint (codeprior or LlamaGen layout)")
    add_old_flags(
        p,
        p.add_argument(
            "--model",
            default=None,
            help="GPT config name for checkpoints without a stored config (e.g. GPT-B; as train --model)",
        ),
        ["--gpt-model"],
    )
    p.add_argument("--tokenizer", required=True, help="VQ tokenizer checkpoint used to decode codes")
    p.add_argument(
        "--vq-model", default=None, help="VQ config name for checkpoints without a stored config (e.g. VQ-16)"
    )
    add_image_size_flag(
        p,
        "image size the GPT was trained at (LlamaGen's --image-size): the code grid is this / the tokenizer's "
        "downsampling; for checkpoints that do not say their grid (checked against those that do)",
    )
    p.add_argument("--refine", default=None, help="refine-model checkpoint: --ckpt is then a coarse (cluster) GPT")
    p.add_argument(
        "--prior",
        default=None,
        help="prior file; checked against the refine model's cluster map, and the clusters of --accept prior",
    )
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    add_old_flags(
        p,
        p.add_argument(
            "--num-samples",
            type=positive_int,
            required=True,
            metavar="N",
            help="number of samples (per class with --per-class)",
        ),
        ["--num"],
    )
    p.add_argument("--per-class", action="store_true", help="--num-samples is per class (ADM protocol: 50 per class)")
    p.add_argument(
        "--labels", default=None, help="comma-separated class labels to cycle through instead of balanced labels"
    )
    add_sampling_flags(p)  # --cfg-scale, --temperature, ..., the decoding group (codeprior.decoding.settings)
    g = next(g for g in p._action_groups if g.title == "decoding (docs/sampling.md)")
    g.add_argument(
        "--weights",
        default="fp32",
        choices=["fp32", "bf16", "int8"],
        help="GPT weights for sampling: fp32 (default, as trained), bf16 or int8 (per-channel, weight-only: "
        "faster where decoding is memory-bound; docs/sampling.md)",
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="samples per forward (per process)")
    p.add_argument(
        "--chunk-size", type=positive_int, default=None, help="samples per resumable chunk file (default: batch size)"
    )
    add_device_flag(p, "where the models run")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start clean when OUT holds chunks or samples of another model or other settings",
    )
    p.add_argument("--keep-chunks", action="store_true", help="keep OUT/chunks/ after samples.npz is written")
    add_memory_flag(p)
    add_runtime_flags(p)
    declare_paths(p, outputs={"out": "dir"}, inputs=("ckpt", "tokenizer", "refine", "prior"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from codeprior.utils.lock import folder_lock

    with folder_lock(args.out):  # one writer per sample folder (rank 0 holds it under torchrun)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch  # here, not at the top: `codeprior sample --help` needs no torch

    from codeprior.models import load_gpt, load_refine, load_vq
    from codeprior.models.sampling import NonFiniteLogits
    from codeprior.provenance import check_sampling
    from codeprior.runtime import destroy_process_group, init_process_group, resolve_device
    from codeprior.sample import check_sample_memory, sample_to_dir

    device = resolve_device(args.device)
    created = init_process_group(device)
    try:
        vq = load_vq(args.tokenizer, args.vq_model, flag="--vq-model").to(device)
        fallback, why = _fallback_grid(args, vq)
        gpt = load_gpt(args.ckpt, args.model, use_ema=args.ema, device=device, default_grid=fallback, flag="--model")
        _check_grid(args, gpt, vq, fallback, why)
        refine = load_refine(args.refine, use_ema=args.ema, device=device) if args.refine else None
        check_sampling(gpt, args.ckpt, vq, args.tokenizer, refine, args.refine)
        if args.weights != "fp32":
            from codeprior.decoding.weights import cast_weights

            gpt = cast_weights(gpt, args.weights)
        if args.prior:
            _check_prior(args.prior, vq, refine)
        C = gpt.config.num_classes
        pool: list[int] | None = None
        if args.labels:
            try:
                pool = [int(x) for x in args.labels.split(",") if x.strip()]
            except ValueError:
                raise CodepriorError(f"--labels: expected comma-separated integers, got {args.labels!r}") from None
            if not pool or min(pool) < 0 or max(pool) >= C:
                raise CodepriorError(f"--labels: classes must be in 0..{C - 1}")
            num = args.num_samples * (len(pool) if args.per_class else 1)
        else:
            num = args.num_samples * C if args.per_class else args.num_samples
        settings = sampling_from_namespace(args, prior=args.prior if ACCEPT_RULES[args.accept].needs_prior else None)
        grid = cast("tuple[int, int]", tuple(gpt.config.grid_hw))
        check_sample_memory(
            gpt,
            vq,
            num,
            settings,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            refine=refine,
            grid=grid,
            ignore=args.ignore_memory_check,
        )
        labels = None  # built only after the memory check: --num-samples may be huge
        if pool is not None:
            t = torch.tensor(pool)
            labels = t.repeat_interleave(args.num_samples) if args.per_class else t.repeat(-(-num // len(pool)))[:num]
        try:
            sample_to_dir(
                gpt,
                vq,
                args.out,
                num,
                settings,
                labels=labels,
                refine=refine,
                grid=grid,
                batch_size=args.batch_size,
                chunk_size=args.chunk_size,
                overwrite=args.overwrite,
                keep_chunks=args.keep_chunks,
                extra_meta={
                    "ckpt": str(args.ckpt),
                    "tokenizer": str(args.tokenizer),
                    "refine": args.refine,
                    "weights": args.weights,
                    "provenance": getattr(gpt, "provenance", None),
                },
                ignore_memory=True,  # checked above, before the labels were built
                log=print,
            )
        except NonFiniteLogits as e:  # name the checkpoint that produced them
            raise CodepriorError(f"{args.refine if e.stage == 'refine' else args.ckpt}: {e}") from None
    finally:
        destroy_process_group(created)
    return 0


def _check_prior(path: str, vq: VQModel, refine: RefineModel | None) -> None:
    import torch

    from codeprior.priors import load_prior

    prior = load_prior(path, vq.quantize.embedding.weight.detach().cpu())
    if (
        refine is not None
        and refine.has_prior
        and not torch.equal(refine.token_to_cluster.cpu(), prior.token_to_cluster)
    ):
        raise CodepriorError(f"{path}: the refine model was trained with a different prior")


def _fallback_grid(args: argparse.Namespace, vq: VQModel) -> tuple[tuple[int, int], str]:
    """The grid for a GPT file that does not say its own, and where it comes from: ``--image-size`` over the
    tokenizer's downsampling, else the tokenizer's image size."""
    ds = vq.config.downsample_factor
    if args.image_size:
        if args.image_size % ds:
            raise CodepriorError(
                f"--image-size {args.image_size}: not a multiple of the downsampling {ds} of {args.tokenizer}"
            )
        side = args.image_size // ds
        return (side, side), f"--image-size {args.image_size} / the downsampling {ds} of {args.tokenizer}"
    side = vq.config.grid_size()
    origin = (vq.checkpoint_info or {}).get("config", "its config")
    return (side, side), f"the image size {vq.config.image_size} of {args.tokenizer} ({origin}) / its downsampling {ds}"


def _check_grid(args: argparse.Namespace, gpt: GPT, vq: VQModel, flag_grid: tuple[int, int], why: str) -> None:
    """Say once which grid was assumed for a file that does not say it; refuse a --image-size, or a tokenizer
    downsampling, that contradicts a file that does."""
    info = gpt.checkpoint_info or {"grid": None, "image_size": None, "downsample_size": None}
    h, w = gpt.config.grid_hw
    if info["grid"] is None:
        note(f"{args.ckpt}: the file does not say its code grid; assumed {h}x{w} from {why} (say it with --image-size)")
        return
    if args.image_size and tuple(flag_grid) != (h, w):
        raise CodepriorError(
            f"--image-size {args.image_size} gives a {flag_grid[0]}x{flag_grid[1]} grid with {args.tokenizer}, but "
            f"{args.ckpt} holds a {h}x{w} grid, from {info['grid']}; drop --image-size"
        )
    size, ds_gpt, ds = info["image_size"], info["downsample_size"], vq.config.downsample_factor
    if ds_gpt and ds_gpt != ds:
        raise CodepriorError(
            f"{args.ckpt}: a {h}x{w} grid ({size}-px images, downsample_size {ds_gpt} in its args), but "
            f"{args.tokenizer} downsamples by {ds} ({size // ds}x{size // ds} codes at {size} px); "
            "use the tokenizer the GPT was trained with"
        )
