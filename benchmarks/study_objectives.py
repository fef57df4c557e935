"""Issue 27's cells of the prior study (benchmarks/prior_study.py): SNCE and hierarchical cluster-CE on the study's
recipe, against its token baseline and its best existing cells (cluster-CE and coarse at rates 2 and 8).

* SNCE, ``code`` source: a 1-seed sweep of :data:`SWEEP` (K, tau as a multiple of the codebook's own scale, the
  median squared distance from a code to its nearest other code), then the sweep's best setting (lowest final FID)
  on every seed, for both embedding sources (``encoder``: shards re-tokenised here with ``--store-embeddings``, their
  codes checked equal to the study's). The best cells wait for the whole sweep: a run reached before it finished is
  left for the next invocation (listed as missing).
* hier-cluster-ce with DCPE and with k-means levels at :data:`LEVEL_RATES` (one multi-level prior file each), every
  level weighted 1 (``--lam``), every seed.
* Geometry: how much of the static SNCE target's mass falls outside the target's DCPE / k-means cluster, per rate.

Layout under the study folder: ``objectives/{runs,priors,codes-emb}/`` (convergence.py's run layout).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks import convergence_runs as R
from codeprior import verdict as V

FOLDER = "objectives"
#: (K, tau multiple of the codebook's scale): at most 6 settings, one seed each
SWEEP: tuple[tuple[int, float], ...] = ((8, 1.0), (32, 1.0), (128, 1.0), (32, 0.25), (32, 4.0), (128, 0.25))
LEVEL_RATES = (2, 4, 8)
LEVEL_METHODS = ("dcpe", "kmeans")
#: steps per second per process (estimates for --plan: snce costs what token does; hier-cluster-ce runs one fused
#: cluster-CE pass per level, 1.96x token's step at V = 16384, less at the demo's 4096 codes)
STEPS_PER_S = {"snce": 2.8, "hier-cluster-ce": 2.0}


def sweep_label(k: int, mult: float, source: str = "code") -> str:
    return f"snce-{source}-k{k}-t{mult:g}"


def plan_cells(b: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue-27 cells: the SNCE sweep (1 seed), the best setting per source and hier-cluster-ce (every seed)."""
    full = list(range(b["seeds"]))
    cells: list[dict[str, Any]] = []
    for k, m in b.get("snce_sweep", SWEEP):
        k, m = int(k), float(m)
        cells.append(_cell("snce", sweep_label(k, m), [0], snce=("code", k, m)))
    for src in ("code", "encoder"):
        cells.append(_cell("snce", f"snce-{src}-best", full, snce=(src, None, None)))
    for method in LEVEL_METHODS:
        cells.append(_cell("hier-cluster-ce", f"hier-cluster-ce-{method}", full, prior=method, rate=LEVEL_RATES[0]))
    return cells


def _cell(paradigm: str, variant: str, seeds: list[int], **kw: Any) -> dict[str, Any]:
    return dict(
        rate=kw.get("rate"),
        prior=kw.get("prior"),
        paradigm=paradigm,
        normalize=True,
        seeds=seeds,
        folder=FOLDER,
        variant=variant,
        snce=kw.get("snce"),
    )


def auto_tau(vq: str) -> float:
    """The codebook's own SNCE temperature scale (``--snce-tau 0`` picks ``AUTO_TAU_SCALE`` times it)."""
    from codeprior.codebook import load_codebook
    from codeprior.train.snce import AUTO_TAU_SCALE, neighbour_table

    return neighbour_table(load_codebook(vq), 2).tau / AUTO_TAU_SCALE


def best_setting(out: Path, b: dict[str, Any]) -> tuple[int, float] | None:
    """The sweep's (K, tau multiple) with the lowest final FID, or None while a sweep run is unfinished."""
    fids = {}
    for k, m in ((int(k), float(m)) for k, m in b.get("snce_sweep", SWEEP)):
        p = out / FOLDER / "runs" / sweep_label(k, m) / "seed0" / "result.json"
        if not p.is_file():
            return None
        fids[(k, m)] = json.loads(p.read_text())["final"].get("fid")
    done = {s: f for s, f in fids.items() if f is not None}
    return min(done, key=lambda s: (done[s], s)) if done else None


def embedding_codes(out: Path, inputs: dict[str, Any], device: str) -> str:
    """The study's shards re-tokenised with the encoder's outputs stored (once); their codes must equal the study's."""
    import numpy as np

    from codeprior.data.codes import CodeShards, read_manifest
    from codeprior.errors import CodepriorError
    from codeprior.models import load_vq
    from codeprior.tokenize import tokenize_dataset

    dst = out / FOLDER / "codes-emb"
    m = read_manifest(inputs["codes"])
    vq = load_vq(inputs["vq"], config=inputs.get("vq_config")).to(device).eval()
    tokenize_dataset(
        vq,
        m["dataset"],
        dst,
        splits=sorted(m["splits"]),
        data_dir=m.get("data_dir"),
        flip=int(m["n_aug"]) == 2,
        image_size=m.get("image_size"),
        tokenizer_path=inputs["vq"],
        limit=m.get("limit"),
        device=device,
        store_embeddings=True,
        log=lambda _msg: None,
    )
    for split in m["splits"]:
        if not np.array_equal(CodeShards(dst, split, aug=0).codes, CodeShards(inputs["codes"], split, aug=0).codes):
            raise CodepriorError(f"{dst}: re-tokenised {split} codes differ from {inputs['codes']}'s")
    return str(dst)


def level_prior(out: Path, vq: str, method: str) -> dict[str, dict]:
    """The multi-level ``method`` prior at :data:`LEVEL_RATES` (extracted once), as ``{method: {"path": ...}}``."""
    import torch

    from codeprior.codebook import k_from_compression_rate, load_codebook
    from codeprior.priors.extract import coarser_levels, extract
    from codeprior.priors.prior import Prior, load_prior

    path = out / FOLDER / "priors" / f"{method}-levels.safetensors"
    cb = load_codebook(vq)
    if not path.is_file():
        n = int(cb.shape[0])
        ks = [k_from_compression_rate(n, r) for r in LEVEL_RATES]
        p = extract(cb, method, ks[0], normalize=True, seed=0, progress=False, source=vq)
        coarser = coarser_levels(cb.numpy(), method, p.token_to_cluster.numpy(), ks[1:], seed=0, progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(p.metadata, rates=list(LEVEL_RATES))
        Prior(p.token_to_cluster, meta, [torch.from_numpy(c) for c in coarser]).save(path)
    p = load_prior(path, codebook=cb)
    return {method: {"path": str(path.resolve()), "k": p.k, "level_ks": p.level_ks}}


def run(
    r: Any, args: argparse.Namespace, b: dict[str, Any], inputs: dict[str, Any], spec: dict[str, Any], out: Path
) -> bool:
    """Train one issue-27 run (``r``: a prior_study Run); False when it has to wait for the sweep."""
    ns = argparse.Namespace(
        out=str(out / FOLDER), device=args.device, threads=args.threads, no_progress=args.no_progress
    )
    if r.objective == "hier-cluster-ce":
        R.run_variant(
            ns, b, inputs, level_prior(out, inputs["vq"], r.prior), spec, r.variant, r.objective, r.prior, r.seed
        )
        return True
    src, k, mult = dict(r.settings)["snce"]
    if k is None:
        best = best_setting(out, b)
        if best is None:
            print(f"prior_study: {r.key} waits for the SNCE sweep (rerun once it has finished)")
            return False
        k, mult = best
    run_inputs = dict(inputs, codes=embedding_codes(out, inputs, args.device)) if src == "encoder" else inputs
    settings = {"snce_k": k, "snce_tau": mult * auto_tau(inputs["vq"]), "snce_source": src, "codebook": inputs["vq"]}
    R.run_variant(ns, b, run_inputs, {}, spec, r.variant, "snce", None, r.seed, settings=settings)
    return True


def snce_mass_outside(vq: str, study_out: Path, rates: list[int], k: int = 32) -> dict[str, dict[str, float]]:
    """Mean share of the static SNCE target (K = ``k``, the default tau) outside the target's cluster, for each
    DCPE / k-means prior the study extracted (``rate-R/priors``), by rate."""
    from codeprior.codebook import load_codebook
    from codeprior.priors.prior import load_prior
    from codeprior.train.snce import neighbour_table

    table = neighbour_table(load_codebook(vq), k)
    res: dict[str, dict[str, float]] = {}
    for rate in rates:
        for m in LEVEL_METHODS:
            p = study_out / f"rate-{rate}" / "priors" / f"{m}.safetensors"
            if p.is_file():
                ttc = load_prior(p).token_to_cluster
                outside = (ttc[table.index] != ttc[:, None]).float()
                res.setdefault(str(rate), {})[m] = float((table.weight * outside).sum(1).mean())
    return res


def verdicts(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each issue-27 cell against the best existing cell (lowest final FID among cluster-ce / coarse at rates 2 and
    8, DCPE or k-means), 2-SE rule on final FID: ``better`` / ``worse`` / ``noise`` / ``one seed`` / ``missing``."""
    old = [
        c
        for c in summary["cells"]
        if not c.get("variant_group")
        and c.get("rate") in (2, 8)
        and c.get("paradigm") in ("cluster-ce", "coarse")
        and c.get("prior") in LEVEL_METHODS
        and c.get("normalize")
        and c.get("fid") is not None
    ]
    best = min(old, key=lambda c: c["fid"]) if old else None
    out = []
    for c in summary["cells"]:
        if c.get("variant_group") != FOLDER or len(c.get("planned_seeds", [])) < 2:
            continue
        v: dict[str, Any] = {"variant": c["variant"], "against": None, "winner": "missing", "gap": None}
        if best is not None and c.get("n") and c.get("fid") is not None:
            v["against"] = f"{best['paradigm']}-{best['prior']} rate {best['rate']}"
            v["gap"] = c["fid"] - best["fid"]
            diff = V.differs(c, best, "fid")
            v["winner"] = (
                "one seed" if diff is None else ("noise" if not diff else ("better" if v["gap"] < 0 else "worse"))
            )
        out.append(v)
    return out


def markdown(summary: dict[str, Any], mass: dict[str, dict[str, float]], best: tuple[int, float] | None) -> str:
    """The issue-27 part of the study's results section."""

    def f(v: Any, sd: Any = None) -> str:
        return "-" if v is None else f"{v:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")

    lines = [
        "**SNCE and hierarchical cluster-CE (issue 27).** "
        + (
            f"SNCE sweep best: K = {best[0]}, tau = {best[1]:g} x the codebook's scale."
            if best
            else "SNCE sweep unfinished."
        ),
        "",
        "| variant | seeds | steps to baseline FID (ratio) | reached | final FID | precision | recall | class match |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["cells"]:
        if c.get("variant_group") != FOLDER:
            continue
        if not c.get("n"):
            lines.append(f"| {c['variant']} | 0/{len(c['planned_seeds'])} | not run | | | | | |")
            continue
        lines.append(
            f"| {c['variant']} | {c['n']}/{len(c['planned_seeds'])} | {'<= ' if c.get('upper_bound') else ''}"
            f"{f(c.get('ratio'), c.get('ratio_sd'))} | {c['reached']} | {f(c['fid'], c.get('fid_sd'))} | "
            f"{f(c.get('precision'), c.get('precision_sd'))} | {f(c.get('recall'), c.get('recall_sd'))} | "
            f"{f(c.get('class_match'), c.get('class_match_sd'))} |"
        )
    lines += ["", "Against the best existing cell (final FID, 2-SE rule):", ""]
    for v in summary.get("objective_verdicts", []):
        gap = "" if v["gap"] is None else f" (gap {v['gap']:+.3g} vs {v['against']})"
        lines.append(f"- {v['variant']}: {v['winner']}{gap}")
    if mass:
        lines += ["", "Share of the static SNCE target (K = 32, the default tau) outside the target's cluster:", ""]
        for rate, per in mass.items():
            lines.append(f"- rate {rate}: " + ", ".join(f"{m} {100 * s:.1f}%" for m, s in per.items()))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ reuse
def cell_key(c: dict[str, Any]) -> tuple[str, str]:
    """``(folder, variant)`` of a plan cell or a summary row (rows of older studies carry neither)."""
    if c.get("variant") and c.get("folder"):
        return c["folder"], c["variant"]
    if c.get("prior") is None:
        return "baseline", "token"
    return f"rate-{c['rate']}" + ("" if c.get("normalize", True) else "-raw"), f"{c['paradigm']}-{c['prior']}"


def load_reuse(path: Path, b: dict[str, Any]) -> dict[str, Any] | None:
    """A finished study's results (``benchmarks/results/prior_study.json``) to stand in for runs that are not in
    the study folder: ``{"cells": {(folder, variant): row}, "baseline": ...}``; None (with the reason printed) when
    the file is absent or was made with another recipe."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    old = dict(data.get("meta", {}).get("budget", {}))
    same = ("model", "steps", "batch", "lr", "warmup", "schedule", "dropout", "eval_every", "fid_samples")
    diff = [k for k in same if old.get(k) != b.get(k)]
    if diff:
        print(f"prior_study: not reusing {path}: its recipe differs in {', '.join(diff)}")
        return None
    summ = data.get("summary", {})
    return {
        "cells": {cell_key(c): c for c in summ.get("cells", [])},
        "baseline": summ.get("baseline"),
        "path": str(path),
    }


def reused_runs(runs: list[Any], reuse: dict[str, Any] | None, out: Path) -> set[str]:
    """Keys of the runs a reused study already holds (its cell lists that seed) and the study folder does not."""
    if not reuse:
        return set()
    skip = set()
    for r in runs:
        row = reuse["cells"].get((r.folder, r.variant))
        here = (out / r.folder / "runs" / r.variant / f"seed{r.seed}" / "result.json").is_file()
        if row and r.seed in (row.get("seeds") or []) and not here:
            skip.add(r.key)
    return skip
