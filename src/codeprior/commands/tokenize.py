"""`codeprior tokenize`: pre-tokenise an image dataset into code shards; `codeprior tokenize check`: round trip."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from codeprior.tokenize_settings import TokenizeSettings  # torch-free: the record behind the flags
from codeprior.utils.argtypes import (
    HelpFormatter,
    add_device_flag,
    add_image_size_flag,
    add_runtime_flags,
    classes_int,
    codebook_int,
    positive_int,
    threads_int,
    workers_int,
)
from codeprior.utils.paths import declare_paths
from codeprior.utils.settings import add_flags, add_old_flags, from_namespace

EPILOG = """\
examples:
  codeprior tokenize --tokenizer runs/vq/tokenizer.pt --data fashion-mnist --out codes/fmnist
  codeprior tokenize --tokenizer vq_ds16_c2i.pt --vq-model VQ-16 --data /data/imagenet --image-size 256 --out codes/in256
  torchrun --nproc_per_node 8 -m codeprior tokenize --tokenizer vq_ds16_c2i.pt --vq-model VQ-16 \\
      --data /data/imagenet --device cuda --out codes/in256
  codeprior tokenize check codes/fmnist --tokenizer runs/vq/tokenizer.pt --out roundtrip.png
  codeprior tokenize import-llamagen /data/imagenet_code_c2i_flip_ten_crop --tokenizer vq_ds16_c2i.pt --out codes/in384

A killed run resumes where it stopped when started again with the same arguments.
Output: OUT/manifest.json, OUT/{split}/codes.npy [N, n_aug, h*w] and OUT/{split}/labels.npy (see docs/data.md).
"""


_STDOUT = "<stdout>"  # `--json` without a PATH (earlier releases' switch)


class _JsonPath(argparse.Action):
    """``--json PATH`` (``-``: stdout), as every command's; ``--json`` alone, the switch of earlier releases, prints
    to stdout with a deprecation line."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        if values == _STDOUT:
            from codeprior.errors import deprecated

            deprecated("tokenize check --json without a PATH", "--json - (stdout) or --json PATH")
            values = "-"
        setattr(namespace, self.dest, values)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tokenize",
        # --tokenizer/--data/--out cannot be argparse-required (the `check` action has its own), so say it here
        usage="%(prog)s --tokenizer CKPT --data DATA --out DIR [options]\n"
        "       %(prog)s check DIR --tokenizer CKPT [options]\n"
        "       %(prog)s import-llamagen CODE_DIR --out DIR [options]",
        help="encode an image dataset into memory-mapped code shards (resumable, torchrun-aware)",
        description="Encode every image of a dataset with a VQ tokenizer (the original and, by default, its "
        "horizontal flip) and write memory-mapped code shards plus a manifest for training.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # `tokenize check ... --n` must reach the check parser, not match --no-flip here
    )
    p.add_argument("--tokenizer", metavar="CKPT", help="VQ tokenizer checkpoint (codeprior or LlamaGen .pt)")
    p.add_argument(
        "--vq-model",
        metavar="NAME",
        default=None,
        help="VQ config for checkpoints that do not store one (LlamaGen's: VQ-16 or VQ-8)",
    )
    p.add_argument(
        "--data",
        metavar="DATA",
        help="fashion-mnist, mnist, or an image folder (root/<class>/<img>, with optional train/ and val/ subfolders)",
    )
    p.add_argument("--data-dir", metavar="DIR", help="directory with the IDX files (default /usr/share/datasets/NAME)")
    p.add_argument("--out", metavar="DIR", help="output directory for the shards")
    add_old_flags(
        p,
        p.add_argument(
            "--split",
            metavar="LIST",
            help="split(s) to encode, comma-separated (default: train,test for IDX datasets; the train/val/test "
            "subfolders present for image folders)",
        ),
        ["--splits"],
    )
    add_flags(p, TokenizeSettings, only=("flip", "batch_size"))  # codeprior.tokenize_settings (the pipeline's too)
    add_image_size_flag(p, "resize/center-crop to this size (default 28 for IDX data, 256 for folders)")
    add_flags(p, TokenizeSettings, only=("limit",))
    p.add_argument(
        "--num-workers", type=threads_int, default=2, metavar="N", help="image-loading workers for folders (default 2)"
    )
    add_device_flag(p, "where the encoder runs")
    p.add_argument("--overwrite", action="store_true", help="replace splits already tokenised with other settings")
    add_flags(p, TokenizeSettings, only=("store_embeddings",))
    add_runtime_flags(p)
    declare_paths(p, outputs={"out": "dir"}, inputs=("tokenizer", "data", "data_dir"))
    p.set_defaults(func=run)

    # prog=p.prog: not the custom usage
    sub = p.add_subparsers(dest="tokenize_command", metavar="{check,import-llamagen}", prog=p.prog)
    c = sub.add_parser(
        "check",
        help="decode a few stored code grids next to the original images (round-trip check)",
        description="Decode stored codes back to images, compare with the originals and a fresh encoding, and "
        "write a grid (rows of originals, each followed by the decoded codes).",
        epilog="examples:\n  codeprior tokenize check codes/fmnist --tokenizer runs/vq/tokenizer.pt --out roundtrip.png\n"
        "  codeprior tokenize check codes/in256 --tokenizer vq_ds16_c2i.pt --vq-model VQ-16 --split val "
        "--num-images 8 --json check.json\n",
        formatter_class=HelpFormatter,
    )
    c.add_argument("dir", metavar="DIR", help="shard directory written by `codeprior tokenize`")
    c.add_argument("--tokenizer", metavar="CKPT", required=True, help="the VQ tokenizer checkpoint used for the shards")
    c.add_argument(
        "--vq-model",
        metavar="NAME",
        default=None,
        help="VQ config for checkpoints that do not store one (LlamaGen's: VQ-16 or VQ-8)",
    )
    c.add_argument("--split", default=None, help="split to check (default test if present)")
    add_old_flags(
        c,
        c.add_argument(
            "--num-images", dest="n", type=positive_int, default=16, metavar="N", help="number of images (default 16)"
        ),
        ["--n", "--num"],
    )
    c.add_argument("--out", metavar="PNG", default=None, help="write the comparison grid here")
    c.add_argument("--data-dir", metavar="DIR", help="directory with the IDX files, if not the default")
    add_device_flag(c, "where the tokenizer runs")
    c.add_argument(
        "--json",
        metavar="PATH",
        nargs="?",
        const=_STDOUT,
        action=_JsonPath,
        help="also write the result as JSON to PATH (- for stdout)",
    )
    declare_paths(c, outputs={"out": "file", "json": "file"}, inputs=("dir", "tokenizer", "data_dir"))
    c.set_defaults(func=run_check)
    register_import(sub)


IMPORT_EPILOG = """\
examples:
  codeprior tokenize import-llamagen /data/imagenet_code_c2i_flip_ten_crop --tokenizer vq_ds16_c2i.pt --out codes/in384
  codeprior tokenize import-llamagen /data/codes/imagenet256_codes --codebook-size 16384 --num-classes 1000 \\
      --out codes/in256
  codeprior tokenize import-llamagen /data/codes_val/imagenet_val256_codes --split val --out codes/in256

CODE_DIR is LlamaGen's --code-path or the {dataset}{SIZE}_codes folder in it; {i}.npy holds [1, n_aug, L] codes and
the _labels folder beside it [1] labels. Every augmentation is kept (n_aug 10 for --ten-crop, 2 otherwise).
A killed import resumes where it stopped when started again with the same arguments (see docs/data.md).
"""


def register_import(sub: Any) -> None:
    """The `tokenize import-llamagen` subcommand (LlamaGen / IAR / DCPE code folders -> code shards)."""
    m = sub.add_parser(
        "import-llamagen",
        help="turn LlamaGen's extract_codes_c2i.py folders ({i}.npy codes + labels) into code shards",
        description="Stream the one-file-per-image code folders written by LlamaGen's extract_codes_c2i.py (and "
        "the same script in IAR and DCPE) into one split of memory-mapped code shards, keeping every augmentation. "
        "Bounded memory, resumable, atomic.",
        epilog=IMPORT_EPILOG,
        formatter_class=HelpFormatter,
    )
    m.add_argument("code_dir", metavar="CODE_DIR", help="LlamaGen's --code-path, or its {dataset}{SIZE}_codes folder")
    m.add_argument("--out", metavar="DIR", required=True, help="shard directory to write (new, empty, or shards)")
    m.add_argument("--split", default="train", help="split name to write (default train; `train` needs one)")
    m.add_argument(
        "--tokenizer",
        metavar="CKPT",
        default=None,
        help="the VQ checkpoint the codes came from: its file and codebook hashes are recorded, its size is the "
        "vocabulary",
    )
    m.add_argument(
        "--codebook-size",
        type=codebook_int,
        default=None,
        metavar="N",
        help="vocabulary (default: the tokenizer's, else the largest code + 1); codes >= N are refused",
    )
    m.add_argument(
        "--num-classes",
        type=classes_int,
        default=None,
        metavar="N",
        help="class count (default: the largest label + 1; ImageNet: 1000)",
    )
    m.add_argument(
        "--num-images",
        type=positive_int,
        default=None,
        metavar="N",
        help="import files 0..N-1 only (drops the DistributedSampler padding a multi-GPU extraction appends)",
    )
    m.add_argument(
        "--chunk-size", type=positive_int, default=1024, metavar="N", help="files per resumable chunk (default 1024)"
    )
    m.add_argument("--workers", type=workers_int, default=4, metavar="N", help="threads reading files (default 4)")
    m.add_argument("--overwrite", action="store_true", help="replace a split imported from other input or settings")
    declare_paths(m, outputs={"out": "dir"}, inputs=("code_dir", "tokenizer"))
    m.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    from codeprior.data.llamagen_import import import_llamagen
    from codeprior.utils.lock import folder_lock

    with folder_lock(args.out):  # one writer per shard folder, as `tokenize`
        import_llamagen(
            args.code_dir,
            args.out,
            split=args.split,
            tokenizer=args.tokenizer,
            codebook_size=args.codebook_size,
            num_classes=args.num_classes,
            num_images=args.num_images,
            chunk_size=args.chunk_size,
            workers=args.workers,
            overwrite=args.overwrite,
        )
    return 0


def run(args: argparse.Namespace) -> int:
    from codeprior.errors import CodepriorError
    from codeprior.utils.lock import folder_lock

    missing = [f"--{k}" for k in ("tokenizer", "data", "out") if not getattr(args, k)]
    if missing:
        raise CodepriorError(f"tokenize: {', '.join(missing)} required (see `codeprior tokenize --help`)")
    with folder_lock(args.out):  # one writer per shard folder (rank 0 holds it under torchrun)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from codeprior.runtime import resolve_device
    from codeprior.tokenize import dist_info, load_tokenizer, tokenize_dataset

    splits = [s.strip() for s in args.split.split(",") if s.strip()] if args.split else None
    device = resolve_device(args.device)
    vq = load_tokenizer(args.tokenizer, config=args.vq_model, device=device)
    rank, _ = dist_info()
    log = print if rank == 0 else (lambda _msg: None)
    manifest = tokenize_dataset(
        vq,
        args.data,
        args.out,
        splits=splits,
        data_dir=args.data_dir,
        **asdict(from_namespace(TokenizeSettings, args, where="tokenize")),  # flip, batch_size, limit, store_embeddings
        image_size=args.image_size,
        tokenizer_path=args.tokenizer,
        overwrite=args.overwrite,
        num_workers=args.num_workers,
        device=device,
        log=log,
    )
    if rank == 0:
        sizes = ", ".join(f"{s}: {v['n']}" for s, v in manifest["splits"].items())
        print(
            f"{args.out}: grid {manifest['grid'][0]}x{manifest['grid'][1]}, codebook {manifest['codebook_size']} "
            f"({manifest['dtype']}), n_aug {manifest['n_aug']}, splits {sizes}"
        )
    return 0


def run_check(args: argparse.Namespace) -> int:
    from codeprior.runtime import resolve_device
    from codeprior.tokenize import check_shards, load_tokenizer

    device = resolve_device(args.device)
    vq = load_tokenizer(args.tokenizer, config=args.vq_model, device=device)
    res = check_shards(
        args.dir,
        vq,
        split=args.split,
        n=args.n,
        out=args.out,
        data_dir=args.data_dir,
        tokenizer_path=args.tokenizer,
        device=device,
    )
    if args.json == "-":
        print(json.dumps(res, indent=2))
    else:
        if args.json:
            from codeprior.utils.io import write_json_atomic

            write_json_atomic(args.json, res)
        line = (
            f"{args.dir} [{res['split']}]: {res['n']} images, code agreement {res['code_agreement']:.4f}"
            + (f", flip agreement {res['flip_agreement']:.4f}" if "flip_agreement" in res else "")
            + f", labels {'match' if res['labels_match'] else 'DIFFER'}, decoded PSNR {res['psnr']:.2f} dB"
        )
        print(line)
        if res.get("tokenizer_matches") is False:
            print("warning: the tokenizer file's SHA-256 differs from the one recorded in the manifest")
        if "grid" in res:
            print(f"wrote {res['grid']} (rows: originals, then decoded codes)")
    ok = res["code_agreement"] >= 0.99 and res["labels_match"]
    if not ok:
        print("codeprior: the stored codes do not match this tokenizer and dataset (agreement < 0.99 or labels differ)")
    return 0 if ok else 1
