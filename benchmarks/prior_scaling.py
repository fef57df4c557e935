"""Scaling of codebook-prior extraction with the codebook size N: sparse exact average linkage (DCPE) vs
the full-matrix average linkage (fastcluster) vs k-means (faiss), time and peak memory.

Every (method, N, repeat) runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own.
The sparse and full-matrix partitions are compared (adjusted Rand index) in the same run.

    .venv/bin/python -m benchmarks.prior_scaling                       # full sweep (long)
    .venv/bin/python -m benchmarks.prior_scaling --sizes 4096 16384 --repeats 3

Writes benchmarks/results/prior_scaling.json, docs/img/prior_scaling.png and the ``prior_scaling`` section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common

METHODS = ("sparse", "full", "kmeans")
LABELS = {
    "sparse": "sparse exact average linkage (this work)",
    "full": "full-matrix average linkage (fastcluster)",
    "kmeans": "k-means (faiss, 20 iterations)",
}


def synthetic_codebook(n: int, d: int, seed: int, dup_frac: float = 0.02) -> np.ndarray:
    """24 anisotropic Gaussian blobs with scales differing by 100x (dense and sparse regions), plus duplicate rows."""
    from codeprior.priors.synthetic import mixed_density_codebook

    return mixed_density_codebook(n, d, seed, n_blobs=24, dup_frac=dup_frac)


def worker(
    method: str, n: int, d: int, rate: int, seed: int, labels_out: str | None, rates: tuple[int, ...] = ()
) -> None:
    """Run one method once in this process; print one JSON line with seconds and peak RSS."""
    import resource

    X = synthetic_codebook(n, d, seed)
    k = n // rate
    info: dict[str, Any] = {}
    import fastcluster

    from codeprior.priors.dcpe import cut_exact
    from codeprior.priors.dcpe_sparse import sparse_average_linkage
    from codeprior.priors.quality import same_partition

    if method == "exact":  # one full-matrix dendrogram, cut at every rate; the sparse method at each rate
        from sklearn.metrics import adjusted_rand_score

        Z = fastcluster.linkage(X, "average")
        out = {}
        for r in rates:
            t0 = time.perf_counter()
            got = sparse_average_linkage(X, n // r, progress=False)
            sec = time.perf_counter() - t0
            ref = cut_exact(Z, n, n // r)
            out[str(r)] = {
                "ari": float(adjusted_rand_score(ref, got)),
                "identical": bool(same_partition(ref, got)),
                "sparse_seconds": sec,
            }
        print(json.dumps({"rates": out}))
        return
    if method == "kmeans":
        import faiss  # the bench extra: only the k-means baseline needs it
    t0, c0 = time.perf_counter(), time.process_time()  # imports stay outside the timed region
    if method == "sparse":
        labels = sparse_average_linkage(X, k, progress=False, stats=info)
    elif method == "full":
        labels = cut_exact(fastcluster.linkage(X, "average"), n, k)
    elif method == "kmeans":
        km = faiss.Kmeans(d, k, niter=20, seed=seed, verbose=False, max_points_per_centroid=1 << 30)
        Xf = np.ascontiguousarray(X, dtype=np.float32)
        km.train(Xf)
        labels = km.index.search(Xf, 1)[1].reshape(-1)
    else:
        raise SystemExit(f"unknown method {method}")
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    if labels_out:
        np.save(labels_out, np.asarray(labels, dtype=np.int64))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    keep = {k_: v for k_, v in info.items() if isinstance(v, (int, float, bool))}
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_mb": peak_mb, "stats": keep}))


_SPAWNED: list[list[str]] = []  # the worker commands run so far


def _in_process(w: list[str], method: str) -> dict[str, Any] | None:
    """A worker run in this process (``--smoke``): its printed JSON, or None when k-means lacks faiss."""
    import contextlib
    import io

    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            out = w[5] if len(w) > 5 and w[5] != "-" else None
            worker(w[0], int(w[1]), int(w[2]), int(w[3]), int(w[4]), out, tuple(int(r) for r in w[6:]))
    except ModuleNotFoundError as e:
        if method == "kmeans" and e.name == "faiss":
            print(f"  {method}: {e}", flush=True)
            return None
        raise
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def run_one(method: str, n: int, args: argparse.Namespace, labels_out: str | None) -> dict[str, Any] | None:
    cmd = _common.worker_command(
        "prior_scaling", "--worker", method, str(n), str(args.dim), str(args.rate), str(args.seed)
    )
    cmd.append(labels_out or "-")
    cmd += [str(r) for r in args.exact_rates]
    if args.smoke and _SPAWNED:  # --smoke: one worker process checks the command, the others run in this process
        return _in_process(cmd[cmd.index("--worker") + 1 :], method)
    _SPAWNED.append(cmd)
    env = dict(os.environ, CODEPRIOR_NO_PROGRESS="1", PYTHONPATH=str(_common.ROOT / "src"))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=_common.ROOT)
    except subprocess.TimeoutExpired:
        print(f"  {method} N={n}: timed out after {args.timeout} s", flush=True)
        return None
    if p.returncode != 0:
        print(f"  {method} N={n}: failed ({p.returncode}): {p.stderr.strip().splitlines()[-1:]}", flush=True)
        if args.smoke and not (method == "kmeans" and "No module named 'faiss'" in p.stderr):
            raise SystemExit(f"prior_scaling --smoke: the {method} worker failed")
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, marker in zip(METHODS, "os^"):
        pts = sorted((r["n"], r["seconds"], r["peak_rss_mb"]) for r in rows if r["method"] == method)
        if not pts:
            continue
        ns, ts, ms = zip(*pts)
        ax_t.plot(ns, ts, marker=marker, label=LABELS[method])
        ax_m.plot(ns, [m / 1024 for m in ms], marker=marker, label=LABELS[method])
    for ax, ylab in ((ax_t, "time [s] (median)"), (ax_m, "peak RSS [GB]")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("codebook size N (k = N / rate)")
        ax.set_ylabel(ylab)
        ax.grid(True, which="both", alpha=0.3)
    ax_m.axhline(8, color="grey", ls="--", lw=1)
    ax_t.axhline(300, color="grey", ls="--", lw=1)
    ax_t.legend(fontsize=8)
    fig.suptitle("Codebook prior extraction: time and memory vs N")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536, 131072, 262144])
    ap.add_argument("--dim", type=int, default=8, help="code dimension (LlamaGen: 8)")
    ap.add_argument("--rate", type=int, default=2, help="compression rate: k = N / rate (DCPE release: 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="runs per (method, N); the median is reported")
    ap.add_argument("--big-repeats", type=int, default=1, help="runs per (method, N) for N > --big-from")
    ap.add_argument("--big-from", type=int, default=65536, help="sizes above this use --big-repeats")
    ap.add_argument("--full-max", type=int, default=32768, help="largest N for the full-matrix method (N^2/2 doubles)")
    ap.add_argument("--kmeans-max", type=int, default=65536, help="largest N for k-means with k = N / rate")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per subprocess")
    ap.add_argument(
        "--exact-rates",
        type=int,
        nargs="*",
        default=[2, 4, 16],
        help="rates of the exactness check against the full matrix, at every N <= --full-max",
    )
    ap.add_argument(
        "--republish",
        action="store_true",
        help="rewrite the docs section and plot from benchmarks/results/prior_scaling.json (no runs)",
    )
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true", help=_common.SMOKE_HELP)
    args = ap.parse_args()
    if args.smoke:  # N = 256, one run per method, the exactness check at rate 2
        _common.start_smoke()
        args.sizes, args.repeats, args.exact_rates, args.republish = [256], 1, [2], False
    if args.republish:
        res = json.loads((_common.ROOT / "benchmarks" / "results" / "prior_scaling.json").read_text())
        saved = argparse.Namespace(**{**vars(args), **res["args"]})
        publish(res["rows"], saved, res["command"], {int(n): v for n, v in res.get("exactness", {}).items()})
        return
    if args.worker:
        w = args.worker
        out = w[5] if len(w) > 5 and w[5] != "-" else None
        worker(w[0], int(w[1]), int(w[2]), int(w[3]), int(w[4]), out, tuple(int(r) for r in w[6:]))
        return

    from sklearn.metrics import adjusted_rand_score

    env = " ".join(f"{v}={os.environ[v]}" for v in ("OMP_NUM_THREADS",) if v in os.environ)
    command = (env + " " if env else "") + "python -m benchmarks.prior_scaling " + " ".join(sys.argv[1:])
    rows: list[dict[str, Any]] = []
    exact: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            reps = args.repeats if n <= args.big_from else args.big_repeats
            labels: dict[str, str] = {}
            for method in METHODS:
                if (method == "full" and n > args.full_max) or (method == "kmeans" and n > args.kmeans_max):
                    continue
                runs = []
                for r in range(reps):
                    out = os.path.join(tmp, f"{method}_{n}.npy") if r == 0 and method != "kmeans" else None
                    res = run_one(method, n, args, out)
                    if res is None:
                        break
                    runs.append(res)
                    if out:
                        labels[method] = out
                if not runs:
                    continue
                row = {
                    "method": method,
                    "n": n,
                    "k": n // args.rate,
                    "seconds": statistics.median(x["seconds"] for x in runs),
                    "all_seconds": [x["seconds"] for x in runs],
                    "cpu_seconds": statistics.median(x["cpu_seconds"] for x in runs),
                    "peak_rss_mb": max(x["peak_rss_mb"] for x in runs),
                    "stats": runs[0]["stats"],
                }
                rows.append(row)
                print(
                    f"{method:7s} N={n:7d} {row['seconds']:8.2f} s  (cpu {row['cpu_seconds']:.2f} s) {row['peak_rss_mb']:8.0f} MB",
                    flush=True,
                )
            if "sparse" in labels and "full" in labels:
                ari = adjusted_rand_score(np.load(labels["full"]), np.load(labels["sparse"]))
                for row in rows:
                    if row["n"] == n and row["method"] == "sparse":
                        row["ari_vs_full"] = ari
                print(f"        N={n:7d} ARI(sparse, full) = {ari:.6f}", flush=True)
            if args.exact_rates and n <= args.full_max:
                res = run_one("exact", n, args, None)
                if res is not None:
                    exact[n] = res["rates"]
                    print(
                        f"        N={n:7d} exactness: "
                        + ", ".join(f"rate {r}: ARI {v['ari']:.6f}" for r, v in res["rates"].items()),
                        flush=True,
                    )
            publish(rows, args, command, exact)  # after every size, so a long sweep leaves results as it goes


def publish(
    rows: list[dict[str, Any]], args: argparse.Namespace, command: str, exact: dict[int, dict[str, Any]]
) -> None:
    by = {(r["method"], r["n"]): r for r in rows}
    smoke = _common.smoke_dir()
    png = (smoke or _common.ROOT / "docs") / "img" / "prior_scaling.png"
    plot(rows, png)
    _common.write_result(
        "prior_scaling",
        {
            "command": command,
            "args": {k: v for k, v in vars(args).items() if k != "worker"},
            "rows": rows,
            "exactness": {str(n): v for n, v in exact.items()},
        },
    )

    lines = [
        "## Prior extraction scaling (sparse exact DCPE)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {_common.machine()} (absolute times depend on the machine's load; the ratios are from one run)  ",
        f"Data: synthetic {args.dim}-D codebook, 24 anisotropic Gaussian blobs with scales differing by 100x, 2% duplicate "
        f"rows; k = N / {args.rate}. Median of {args.repeats} runs (N <= {args.big_from}) / {args.big_repeats} (larger); each run "
        "in its own process; peak = max RSS of that process.",
        "",
        "| N | k | sparse s (cpu s) | sparse peak MB | full-matrix s (cpu s) | full peak MB | sparse / full time | ARI sparse vs full | k-means s | k-means peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda r, key, f: f.format(r[key]) if r else "n/a"  # noqa: E731
    for n in sorted({r["n"] for r in rows}):
        s, f, km = by.get(("sparse", n)), by.get(("full", n)), by.get(("kmeans", n))
        ratio = f"{s['seconds'] / f['seconds']:.2f}" if s and f else "n/a"
        ari = f"{s['ari_vs_full']:.4f}" if s and "ari_vs_full" in s else "n/a"
        lines.append(
            f"| {n} | {n // args.rate} | {fmt(s, 'seconds', '{:.2f}')} ({fmt(s, 'cpu_seconds', '{:.2f}')}) | "
            f"{fmt(s, 'peak_rss_mb', '{:.0f}')} | {fmt(f, 'seconds', '{:.2f}')} ({fmt(f, 'cpu_seconds', '{:.2f}')}) | "
            f"{fmt(f, 'peak_rss_mb', '{:.0f}')} | {ratio} | {ari} | "
            f"{fmt(km, 'seconds', '{:.2f}')} | {fmt(km, 'peak_rss_mb', '{:.0f}')} |"
        )
    lines += [
        "",
        f"Full-matrix average linkage is run up to N = {args.full_max} (its condensed matrix needs 4 N^2 bytes); "
        f"k-means with k = N / {args.rate} costs N k D per iteration and is run up to N = {args.kmeans_max}.",
        "",
        "![prior scaling](img/prior_scaling.png)",
    ]
    if exact:
        rates = [str(r) for r in args.exact_rates]
        lines += [
            "",
            "Exactness: the sparse partition against the full-matrix dendrogram (fastcluster) cut after N - k merges, "
            "k = N / rate, on the same data (one run; the sparse time of each cut in parentheses).",
            "",
            "| N | " + " | ".join(f"rate {r}: ARI (s)" for r in rates) + " |",
            "|---|" + "---|" * len(rates),
        ]
        for n in sorted(exact):
            cells = [
                f"{exact[n][r]['ari']:.4f}{'' if exact[n][r]['identical'] else ' (not identical)'} "
                f"({exact[n][r]['sparse_seconds']:.2f})"
                if r in exact[n]
                else "n/a"
                for r in rates
            ]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    _common.update_doc_section("prior_scaling", "\n".join(lines))
    print("wrote", png, "and docs/benchmarks.md section prior_scaling")


if __name__ == "__main__":
    main()
