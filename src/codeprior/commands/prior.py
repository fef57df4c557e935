"""``codeprior prior``: extract a codebook prior, and its sub-actions (``codeprior prior inspect ...``).

``codeprior prior CODEBOOK --method ... --out PRIOR`` takes a codebook path as its first word, so argparse
sub-parsers cannot be used for the sub-actions (they would swallow CODEBOOK). Instead the ``prior`` parser
dispatches on its first word: if it names a registered sub-action, the rest of the command line goes to
that action's own parser. Other modules add sub-actions with :func:`register_action`, e.g. from their own
``commands/<name>.py``::

    from codeprior.commands.prior import register_action

    def register(subparsers):  # called by codeprior.cli like every command module
        register_action("substitute", help="...", configure=add_my_arguments, run=my_run)

A codebook file literally named like a sub-action can still be given as ``./inspect``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codeprior.errors import CodepriorError, note
from codeprior.priors.methods import METHODS
from codeprior.utils.argtypes import Parser, positive_int, rate_float, seed_int
from codeprior.utils.paths import declare_paths

if TYPE_CHECKING:
    from codeprior.priors.prior import Prior


@dataclass
class SubAction:
    """A ``codeprior prior <name> ...`` sub-action: ``configure(parser)`` adds its arguments, ``run(args)`` runs it."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    description: str | None = None
    epilog: str | None = None


#: Registered sub-actions of ``codeprior prior`` (name -> SubAction). Extend with :func:`register_action`.
SUB_ACTIONS: dict[str, SubAction] = {}


def register_action(
    name: str,
    *,
    help: str,
    configure: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int | None],
    description: str | None = None,
    epilog: str | None = None,
) -> None:
    """Add ``codeprior prior NAME ...``. ``configure`` adds arguments to a fresh parser; ``run(args) -> int | None``."""
    SUB_ACTIONS[name] = SubAction(name, help, configure, run, description, epilog)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


class _DispatchingParser(Parser):
    """The ``prior`` parser: hands the command line to a sub-action's parser when its first word names one."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        if args and args[0] in SUB_ACTIONS:
            return _action_parser(self.prog, SUB_ACTIONS[args[0]]).parse_known_args(args[1:], namespace)
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        text = super().format_help()
        if SUB_ACTIONS:
            width = max(len(n) for n in SUB_ACTIONS)
            lines = [f"  {self.prog} {n.ljust(width)}  {a.help}" for n, a in sorted(SUB_ACTIONS.items())]
            text += "\nsub-actions (see `{} ACTION --help`):\n{}\n".format(self.prog, "\n".join(lines))
        return text


def _action_parser(prog: str, action: SubAction) -> argparse.ArgumentParser:
    p = Parser(
        prog=f"{prog} {action.name}",
        description=action.description or action.help,
        epilog=action.epilog,
        formatter_class=_Formatter,
    )
    action.configure(p)
    p.set_defaults(func=action.run, prior_action=action.name)
    return p


# ------------------------------------------------------------------------------------------------
# codeprior prior CODEBOOK ...
# ------------------------------------------------------------------------------------------------

_EXTRACT_DESCRIPTION = """\
Extract a codebook prior: a partition of the VQ codebook into k clusters of similar codes.

methods:
  dcpe             exact average-linkage (UPGMA) clustering, Euclidean, cut at exactly k clusters
                   (DCPE; unequal sizes, many singletons at rate 2). The codebook is split into the
                   components below a certified height above the cut, each clustered exactly on its own
                   (every core); small codebooks take the full matrix, structureless ones the exact
                   sparse algorithm. Same partition whichever runs; it prints which and why.
  kmeans           k-means++ and Lloyd to convergence (CTF's prior); scikit-learn.
  balanced-kmeans  k clusters of exactly N/k codes (IAR's prior); needs k to divide N.

The codebook is a LlamaGen VQ checkpoint (.pt: {"model": state_dict} or a bare state dict with
quantize.embedding.weight), a .safetensors file (tensor "codebook" or the LlamaGen key) or a .npy array.
"""

_EXTRACT_EPILOG = """\
examples:
  # DCPE's released setting: compression rate 2 on the raw checkpoint vectors
  codeprior prior vq_ds16_c2i.pt --method dcpe --compression-rate 2 --raw --out dcpe.safetensors
  # CTF-style k-means prior with 512 clusters, on L2-normalised codes (the default)
  codeprior prior codebook.npy --method kmeans --k 512 --seed 0 --out kmeans512.safetensors
  # IAR-style balanced prior, handed to IAR: its mapping, its reordered VQ checkpoint, its --cluster-size
  codeprior prior vq.pt --method balanced-kmeans --k 128 --out bal128.safetensors --export-iar mapping.pt \
      --export-iar-vq vq_iar.pt
  # compare priors on geometry
  codeprior prior inspect dcpe.safetensors kmeans512.safetensors --codebook vq.pt --json quality.json

exit status: 0 on success, 2 on bad input (one line on stderr naming the file).
"""


def _add_extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("codebook", metavar="CODEBOOK", help="codebook file: LlamaGen .pt/.pth, .safetensors or .npy")
    p.add_argument("--method", required=True, choices=list(METHODS), help="clustering method")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--k", type=positive_int, metavar="K", help="number of clusters")
    size.add_argument(
        "--compression-rate", type=rate_float, metavar="R", help="k = round(N / R) (DCPE's setting: R = 2)"
    )
    size.add_argument(
        "--rates",
        type=rate_float,
        nargs="+",
        metavar="R",
        help="a multi-level prior (for --objective hier-cluster-ce): one level per compression rate, increasing "
        "(e.g. 2 4 8), each a coarsening of the one before; dcpe: one dendrogram cut at each rate, kmeans: each "
        "level clusters the previous level's centroids",
    )
    geom = p.add_mutually_exclusive_group()
    geom.add_argument(
        "--normalize",
        dest="normalize",
        action="store_true",
        default=True,
        help="cluster L2-normalised codes (what the quantizer compares) [default]",
    )
    geom.add_argument(
        "--raw",
        dest="normalize",
        action="store_false",
        help="cluster the stored vectors as they are (the official DCPE setting)",
    )
    p.add_argument(
        "--seed", type=seed_int, default=0, help="seed for kmeans / balanced-kmeans initialisation (default: 0)"
    )
    p.add_argument("--out", required=True, metavar="PRIOR", help="output prior file (.safetensors)")
    p.add_argument(
        "--export-iar",
        metavar="FILE",
        help="also write IAR's mapping[old_id] = new_id permutation (torch.save; equal sizes only, so "
        "--method balanced-kmeans) and print IAR's --cluster-size (N/k)",
    )
    p.add_argument(
        "--export-iar-vq",
        metavar="FILE",
        help="with --export-iar: also write CODEBOOK (a whole VQ checkpoint, not a bare codebook) with its codebook "
        "rows reordered by the mapping, the --vq-ckpt IAR's sampler decodes with (every other entry kept)",
    )
    p.add_argument("--export-dcpe", metavar="FILE", help="also write DCPE's idx_to_cluster LongTensor (torch.save)")
    p.add_argument(
        "--dcpe-backend",
        choices=("auto", "full", "split", "sparse"),
        default="auto",
        help="dcpe (all exact, same partition): full distance matrix, split (components below the cut height, "
        "on every core) or the sparse algorithm; auto: full up to 2048 codes, else split, which hands over to "
        "sparse when its components exceed the memory budget (env CODEPRIOR_DCPE_MAX_BYTES, default 60%% of "
        "available RAM)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    declare_paths(
        p,
        outputs={"out": "file", "export_iar": "file", "export_iar_vq": "file", "export_dcpe": "file"},
        inputs=("codebook",),
    )


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _check_iar_export(args: argparse.Namespace, n: int, k: int) -> None:
    """Before any clustering: refuse an IAR hand-off that cannot work (unequal clusters, a bare codebook)."""
    if args.export_iar_vq and not args.export_iar:
        raise CodepriorError(
            f"{args.export_iar_vq}: --export-iar-vq needs --export-iar (IAR trains on codes mapped through the "
            "mapping and decodes with the reordered VQ checkpoint: one is useless without the other)"
        )
    if args.export_iar and not METHODS[args.method].equal_sizes and k not in (1, n):
        size = str(n // k) if n % k == 0 else f"{n / k:.2f}, not an integer"
        raise CodepriorError(
            f"{args.export_iar}: IAR export needs equal cluster sizes (IAR reshapes its logits to [k, N/k]; "
            f"--cluster-size N/k = {size}) and --method {args.method} gives clusters of unequal sizes; "
            "--method balanced-kmeans gives k clusters of exactly N/k codes"
        )
    if args.export_iar_vq:
        from codeprior.priors.export import check_iar_vq_source

        check_iar_vq_source(args.codebook)


def _export_iar(args: argparse.Namespace, prior: Prior, out: Path) -> None:
    """Write IAR's mapping (and reordered VQ checkpoint) and print the flags IAR's scripts take."""
    from codeprior.priors.export import export_iar, export_iar_vq, iar_cluster_size

    try:
        export_iar(prior, args.export_iar)
    except CodepriorError as e:
        raise CodepriorError(f"{args.export_iar}: {e} (the prior itself was written to {out})") from None
    print(f"IAR mapping -> {args.export_iar}")
    flags = (
        f"--cluster-size {iar_cluster_size(prior)} --codebook-size {prior.num_codes} --mapping-path {args.export_iar}"
    )
    if args.export_iar_vq:
        try:
            export_iar_vq(prior, args.codebook, args.export_iar_vq)
        except CodepriorError as e:
            raise CodepriorError(f"{e} (the prior and the mapping were written)") from None
        print(f"IAR VQ checkpoint (codebook rows reordered by the mapping) -> {args.export_iar_vq}")
        flags += f" --vq-ckpt {args.export_iar_vq}"
    print(f"IAR: {flags}")


def _level_ks(args: argparse.Namespace, n: int) -> list[int]:
    """Clusters per level of ``--rates`` (empty without it): increasing rates, strictly decreasing k, and a
    method that builds nested levels; one-line errors before any clustering."""
    from codeprior.codebook import k_from_compression_rate, validate_k

    if not args.rates:
        return []
    if any(b <= a for a, b in zip(args.rates, args.rates[1:])):
        raise CodepriorError(f"--rates: give increasing compression rates (finest level first), got {args.rates}")
    if len(args.rates) > 1 and args.method not in ("dcpe", "kmeans"):
        raise CodepriorError(f"--rates: nested levels are built for dcpe and kmeans, not {args.method}")
    if len(args.rates) > 1 and (args.export_iar or args.export_dcpe):
        raise CodepriorError("--rates: the IAR / DCPE exports take one partition; extract it with --compression-rate")
    ks = [validate_k(k_from_compression_rate(n, r, args.codebook), n, args.method, args.codebook) for r in args.rates]
    if any(b >= a for a, b in zip(ks, ks[1:])):
        raise CodepriorError(f"--rates {args.rates}: levels of {ks} clusters on {n} codes; each must have fewer")
    return ks


def run_extract(args: argparse.Namespace) -> int:
    """Extract, write and report a prior. NumPy all the way for .npy / .safetensors codebooks: torch is imported
    only to read a .pt checkpoint (``weights_only=True``) or for the IAR / DCPE exports."""
    import numpy as np

    from codeprior.codebook import k_from_compression_rate, load_codebook_array, validate_k
    from codeprior.priors.extract import extract_labels
    from codeprior.priors.prior import write_prior_file

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CodepriorError(f"{out}: the prior file must end in .safetensors")
    if out.exists() and out.is_dir():
        raise CodepriorError(f"{out}: is a directory")
    cb = load_codebook_array(args.codebook)
    n = cb.shape[0]
    level_ks = _level_ks(args, n)
    if args.k is not None:
        k = args.k
    else:
        k = level_ks[0] if level_ks else k_from_compression_rate(n, args.compression_rate, args.codebook)
    k = validate_k(k, n, args.method, args.codebook)
    _check_iar_export(args, n, k)
    geometry = "L2-normalised" if args.normalize else "raw"
    backend, reason = args.dcpe_backend, ""
    if args.method == "dcpe":
        from codeprior.priors.dcpe import choose_backend

        backend, reason = choose_backend(n, cb.shape[1], args.dcpe_backend)
        _log(f"dcpe: {backend} backend: {reason}")
    _log(f"{args.method}: {n} x {cb.shape[1]} codes ({geometry}) -> {k} clusters ...")
    t0 = time.perf_counter()
    labels, metadata = extract_labels(
        cb,
        args.method,
        k,
        normalize=args.normalize,
        seed=args.seed,
        progress=not args.no_progress,
        source=args.codebook,
        dcpe_backend=args.dcpe_backend,  # dcpe_labels makes the same choice as printed above
    )
    fit = metadata.get("backend") or {}
    if args.method == "dcpe" and fit.get("backend") != backend:  # split handed over at run time: say so
        _log(f"dcpe: {fit.get('backend')} backend: {fit.get('reason')}")
    if args.method == "dcpe" and args.dcpe_backend == "auto":  # record that auto chose it
        fit["reason"] = f"auto: {fit.get('reason', reason)}"
    if fit.get("converged") is False:  # recorded in the metadata too; say it where the user looks
        _log(
            f"codeprior: warning: {args.method} stopped after {fit.get('iterations')} iterations without converging "
            f"(the partition is usable but not a fixed point; another --seed may converge)"
        )
    coarser: list = []
    if len(level_ks) > 1:
        from codeprior.priors.extract import coarser_levels

        _log(f"{args.method}: coarser levels k = {', '.join(map(str, level_ks[1:]))} ...")
        coarser = coarser_levels(
            cb,
            args.method,
            labels,
            level_ks[1:],
            normalize=args.normalize,
            seed=args.seed,
            progress=not args.no_progress,
            source=args.codebook,
            dcpe_backend=args.dcpe_backend,
        )
        metadata["rates"] = list(args.rates)
        metadata["level_ks"] = level_ks
    write_prior_file(out, labels, metadata, coarser)
    if coarser:
        print(f"{args.method}: levels k = {', '.join(map(str, level_ks))} (rates {', '.join(map(str, args.rates))})")
    sizes = np.bincount(labels, minlength=k)
    singletons = int((sizes == 1).sum())
    print(
        f"{args.method}: {k} clusters (sizes {int(sizes.min())}..{int(sizes.max())}, {singletons} singletons) "
        f"in {time.perf_counter() - t0:.2f} s -> {out}"
    )
    if args.export_iar or args.export_dcpe:
        import torch

        from codeprior.priors.prior import Prior

        prior = Prior(torch.from_numpy(labels), metadata)
        if args.export_iar:
            _export_iar(args, prior, out)
        if args.export_dcpe:
            from codeprior.priors.export import export_dcpe

            export_dcpe(prior, args.export_dcpe)
            print(f"DCPE idx_to_cluster -> {args.export_dcpe}")
    return 0


# ------------------------------------------------------------------------------------------------
# codeprior prior inspect PRIOR [PRIOR ...] --codebook CB
# ------------------------------------------------------------------------------------------------

_INSPECT_EPILOG = """\
metrics (on the geometry each prior was extracted on, unless --normalize/--raw overrides it):
  size min/median/max/mean, singleton shares, histogram   cluster sizes
  intra-cluster mean pair dist       mean distance over all pairs of codes sharing a cluster (compactness)
  mean dist to nearest other-cluster code                 separation of each code from other clusters
  nearest neighbour in same cluster %                     agreement with the codebook's local geometry

examples:
  codeprior prior inspect dcpe.safetensors --codebook vq.pt
  codeprior prior inspect dcpe.safetensors kmeans.safetensors bal.safetensors --codebook vq.pt --json q.json
"""


def _add_inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("priors", nargs="+", metavar="PRIOR", help="prior file(s) (.safetensors)")
    p.add_argument("--codebook", required=True, metavar="CB", help="the codebook the priors were extracted from")
    p.add_argument("--json", metavar="PATH", help="also write all metrics (and the priors' metadata) as JSON")
    geom = p.add_mutually_exclusive_group()
    geom.add_argument(
        "--normalize",
        dest="normalize",
        action="store_const",
        const=True,
        default=None,
        help="measure on L2-normalised codes (default: what each prior used)",
    )
    geom.add_argument(
        "--raw",
        dest="normalize",
        action="store_const",
        const=False,
        help="measure on the stored vectors (default: what each prior used)",
    )
    p.add_argument(
        "--allow-codebook-mismatch",
        action="store_true",
        help="inspect a prior even if it was extracted from a different codebook",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    declare_paths(p, outputs={"json": "file"}, inputs=("priors", "codebook"))


def _column_names(paths: list[str]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [str(p) for p in paths]


def run_inspect(args: argparse.Namespace) -> int:
    from codeprior.codebook import load_codebook
    from codeprior.priors.prior import load_prior
    from codeprior.priors.quality import format_table, prior_quality, quality_row
    from codeprior.utils.io import write_json_atomic

    cb = load_codebook(args.codebook)
    names = _column_names(args.priors)
    # every prior is read and checked before any is measured: a bad last file costs a line, not minutes
    priors = [load_prior(path, cb, allow_mismatch=args.allow_codebook_mismatch) for path in args.priors]
    geometries = {path: bool(p.metadata.get("normalize", True)) for path, p in zip(args.priors, priors)}
    if args.normalize is None and len(set(geometries.values())) > 1:
        note(
            "the priors were extracted on different geometries ("
            + ", ".join(f"{path}: {'L2-normalised' if g else 'raw'}" for path, g in geometries.items())
            + "): each column is measured on its own; --normalize or --raw measures all on one"
        )
    results: list[dict[str, Any]] = []
    rows = []
    for path, name, prior in zip(args.priors, names, priors):
        if cb.shape[0] >= 4096:
            _log(f"inspect: {path} ...")
        q = prior_quality(prior, cb, normalize=args.normalize, progress=not args.no_progress)
        results.append({"path": str(path), "name": name, "metadata": prior.metadata, "quality": q})
        rows.append(quality_row(q, name))
    print(f"codebook: {args.codebook} ({cb.shape[0]} x {cb.shape[1]})")
    print(format_table(rows))
    if args.json:
        write_json_atomic(
            args.json,
            {"codebook": str(args.codebook), "num_codes": int(cb.shape[0]), "dim": int(cb.shape[1]), "priors": results},
        )
        print(f"metrics -> {args.json}")
    return 0


register_action(
    "inspect",
    help="quality report of one or more priors (side by side)",
    description="Measure priors on the codebook geometry and print them side by side.",
    epilog=_INSPECT_EPILOG,
    configure=_add_inspect_args,
    run=run_inspect,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prior",
        help="extract a codebook prior (dcpe / kmeans / balanced-kmeans); `prior inspect` to compare priors",
        description=_EXTRACT_DESCRIPTION,
        epilog=_EXTRACT_EPILOG,
        formatter_class=_Formatter,
    )
    p.__class__ = _DispatchingParser  # dispatch `prior inspect ...` (see module docstring)
    _add_extract_args(p)
    p.set_defaults(func=run_extract)
