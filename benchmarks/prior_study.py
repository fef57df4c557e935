"""Prior study (issue 15): where does DCPE beat k-means, across compression rates, paradigms and codebook geometry?

A sweep built on ``benchmarks/convergence.py``'s pieces (the same runs, FID hook and resumable ``result.json``):

* compression rates 2, 4, 8, 16 (k = N / rate clusters of the tokenizer's N codes);
* priors k-means, DCPE and balanced k-means (only where k divides N) on the L2-normalised codebook;
* both paradigms: ``cluster-ce`` (token CE + cluster CE) and ``coarse`` (cluster ids, then a refine model);
* one token baseline shared by every rate (``OUT/baseline/``), whose final FID is every ratio's target;
* raw versus L2-normalised clustering (k-means and DCPE, both paradigms) at the rate where the two partitions
  agree least (adjusted Rand index, measured here; ``OUT/rate-R-raw/``);
* issue 27 (``benchmarks/study_objectives.py``, ``OUT/objectives/``): SNCE (a 1-seed K/tau sweep, then the best
  setting with both embedding sources on every seed) and hierarchical cluster-CE (DCPE and k-means levels at rates
  2, 4, 8), against the token baseline and the best existing cell. Finished runs are reused, so extending a
  finished study runs only these.

The demo's training recipe (``src/codeprior/configs/demo.yaml``): GPT-tiny, batch 32, lr 2e-3, 50 warm-up steps
then cosine decay, dropout 0, sampling CFG 3.0. Geometry per rate and prior (``OUT/geometry.json``, resumable):
the prior quality row (``codeprior.priors.quality``), the substitution test (``codeprior.evaluate.substitution``)
and the codebook's density disparity (spread of each code's k-NN distance). Layout of ``--out``::

    settings.json  agreement.json  geometry.json  summary.json
    baseline/runs/token/seed<S>/          the shared token baseline (convergence.py layout)
    rate-<R>/{priors,refine,runs}/        one convergence.py folder per rate (rate-<R>-raw: raw-row priors)

Examples::

    python -m benchmarks.prior_study --plan                          # cells, runs, estimated minutes
    python -m benchmarks.prior_study --part 1/2 & python -m benchmarks.prior_study --part 2/2   # 2 processes
    python -m benchmarks.prior_study --report-only                   # tables, plot, docs/study.md
    python -m benchmarks.prior_study --budget tiny --run-dir RUN --out /tmp/ps --doc-dir /tmp/ps/doc   # smoke

Rerunning the same command resumes (finished runs are skipped, interrupted ones resume from their checkpoint).
Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import convergence_runs as R
from benchmarks import convergence_summary as CS
from benchmarks import study_objectives as O  # issue 27's cells (SNCE, hierarchical cluster-CE)
from benchmarks._common import ROOT, SMOKE_HELP, machine, start_smoke, update_doc_section, write_result
from benchmarks.prior_study_doc import METHODS, PARADIGMS, RATES, markdown, plot_heatmap, plot_ratios
from benchmarks.study_geometry import folder_of, geometry_table, partition_agreement
from codeprior import verdict as V

NUM_CODES = 4096  # the demo tokenizer's codebook (the plan is printed for it before the codes are read)
STEPS_PER_S = {"token": 2.8, "cluster-ce": 2.8, "coarse": 4.2, "refine": 4.2}  # per process, 2 x 1 thread, batch 32
STEPS_PER_S.update({"snce": 2.8, "hier-cluster-ce": 2.0})  # estimates: study_objectives.STEPS_PER_S
EVAL_S_250 = 13.0  # one 250-sample FID evaluation (measured 10-15 s)
_RECIPE = dict(
    model="GPT-tiny", batch=32, lr=2e-3, warmup=50, schedule="cosine", dropout=0.0, refine_model="Refine-tiny"
)
BUDGETS: dict[str, dict[str, Any]] = {
    # ~2 h wall on 2 CPU cores with two processes (estimate from STEPS_PER_S; `--plan` prints it)
    "default": dict(
        _RECIPE,
        steps=800,
        eval_every=200,
        fid_samples=250,
        refine_steps=150,
        rates=list(RATES),
        seeds3_rates=[2, 8],  # 3 seeds for k-means and DCPE (both paradigms) at these rates, 1 seed elsewhere
        seeds=3,
        raw_methods=["kmeans", "dcpe"],
        sub_images=300,
        sub_draws=2,
    ),
    # smoke test: a few steps, 1 seed, rates 8 and 16, 40 FID samples
    "tiny": dict(
        _RECIPE,
        steps=12,
        eval_every=6,
        fid_samples=40,
        refine_steps=6,
        rates=[8, 16],
        seeds3_rates=[],
        seeds=1,
        raw_methods=["kmeans", "dcpe"],
        sub_images=60,
        sub_draws=1,
        snce_sweep=[[8, 1.0], [32, 0.25]],  # 2 of study_objectives.SWEEP's settings
    ),
}
for _b in BUDGETS.values():  # keys convergence.py's helpers read but the study does not vary
    _b.update(train_images=0, test_images=0, tokenizer_steps=360, tokenizer_batch=32, tokenize_flip=False)
    _b.update(classifier_epochs=3)


# ------------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class Run:
    """One training run: ``folder`` (relative to ``--out``) holds it in convergence.py's layout."""

    folder: str
    variant: str
    objective: str
    prior: str | None
    seed: int
    rate: int | None
    normalize: bool
    settings: tuple[tuple[str, Any], ...] = ()  # issue-27 cells: ("snce", (source, K, tau multiple)) or ()

    @property
    def key(self) -> str:
        return f"{self.folder}/{self.variant}/seed{self.seed}"


def plan_cells(b: dict[str, Any], num_codes: int, raw_rate: int | None) -> list[dict[str, Any]]:
    """The cells (rate, prior, paradigm, normalize, seeds), the shared baseline first."""
    full = list(range(b["seeds"]))
    cells: list[dict[str, Any]] = [dict(rate=None, prior=None, paradigm="token", normalize=True, seeds=full)]
    for rate in b["rates"]:
        k = num_codes // rate
        for m in METHODS:
            if m == "balanced-kmeans" and (num_codes % rate or num_codes % k):
                continue  # balanced k-means needs equal-size clusters: k must divide N
            for par in PARADIGMS:
                many = rate in b["seeds3_rates"] and m != "balanced-kmeans"
                cells.append(dict(rate=rate, prior=m, paradigm=par, normalize=True, seeds=full if many else [0]))
    if raw_rate is not None:
        for m in b["raw_methods"]:
            for par in PARADIGMS:
                cells.append(dict(rate=raw_rate, prior=m, paradigm=par, normalize=False, seeds=[0]))
    return cells


def plan_runs(cells: Sequence[dict[str, Any]]) -> list[Run]:
    """Every (cell, seed) as a :class:`Run`."""
    out = []
    for c in cells:
        for s in c["seeds"]:
            if c.get("variant"):  # issue-27 cells (study_objectives)
                sets = (("snce", tuple(c["snce"])),) if c.get("snce") else ()
                out.append(Run(c["folder"], c["variant"], c["paradigm"], c["prior"], s, c["rate"], True, sets))
            elif c["prior"] is None:
                out.append(Run("baseline", "token", "token", None, s, None, True))
            else:
                name = f"{c['paradigm']}-{c['prior']}"
                out.append(
                    Run(
                        folder_of(c["rate"], c["normalize"]),
                        name,
                        c["paradigm"],
                        c["prior"],
                        s,
                        c["rate"],
                        c["normalize"],
                    )
                )
    return out


def run_cost(r: Run, b: dict[str, Any]) -> float:
    """Estimated seconds of one run (training at STEPS_PER_S, FID evaluations, a coarse run's refine model)."""
    evals = -(-b["steps"] // b["eval_every"])
    sec = b["steps"] / STEPS_PER_S[r.objective] + evals * EVAL_S_250 * b["fid_samples"] / 250
    if r.objective == "coarse":
        sec += b["refine_steps"] / STEPS_PER_S["refine"]
    return sec


def split_runs(runs: Sequence[Run], b: dict[str, Any], n: int) -> list[list[Run]]:
    """Deterministic split over ``n`` processes: longest run first onto the least-loaded part; every run lands in
    exactly one part (a coarse run and its refine model together). Each part runs seed-major."""
    parts: list[list[Run]] = [[] for _ in range(n)]
    load = [0.0] * n
    for r in sorted(runs, key=lambda r: (-run_cost(r, b), r.key)):
        i = min(range(n), key=lambda j: (load[j], j))
        parts[i].append(r)
        load[i] += run_cost(r, b)
    return [sorted(p, key=lambda r: (r.seed, r.rate or 0, r.key)) for p in parts]


def parse_part(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise argparse.ArgumentTypeError(f"--part: expected i/n with 1 <= i <= n, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def format_plan(
    cells: Sequence[dict[str, Any]], b: dict[str, Any], parts: int = 2, done: set[str] | frozenset[str] = frozenset()
) -> str:
    """The printed plan: one line per cell, then runs and estimated minutes per part; ``done``: keys of runs already
    finished (reused), left out of the runs and minutes."""
    runs = [r for r in plan_runs(cells) if r.key not in done]
    lines = [f"{'rate':>5} {'prior':<16} {'paradigm':<11} {'geometry':<11} seeds"]
    for c in cells:
        geo = "normalised" if c["normalize"] else "raw"
        rate = "-" if c["rate"] is None else (c["rate"] or "auto")
        what = c.get("variant") or c["prior"] or "token"
        left = [r.seed for r in runs if (r.folder, r.variant) == O.cell_key(c)]
        note = "" if left == list(c["seeds"]) else f" (to run: {left or 'none, finished'})"
        lines.append(f"{rate:>5} {what:<16} {c['paradigm']:<11} {geo:<11} {c['seeds']}{note}")
    split = split_runs(runs, b, parts)
    total = sum(run_cost(r, b) for r in runs) / 60
    lines.append(f"{len(cells)} cells, {len(runs)} runs to do ({b['steps']} steps each), ~{total:.0f} min of run time")
    for i, p in enumerate(split, 1):
        lines.append(f"  part {i}/{parts}: {len(p)} runs, ~{sum(run_cost(r, b) for r in p) / 60:.0f} min")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ summary
def _curve(r: dict[str, Any]) -> tuple[list[int], list[float]]:
    pts = sorted((int(s), float(f)) for s, f in r["curve"].items() if f is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def summarize_study(out: Path, cells: Sequence[dict[str, Any]], reuse: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every finished run summarised per cell: final metrics (``codeprior.verdict.summarize``), steps to the shared
    baseline's final seed-mean FID (per seed, as a ratio to the baseline's own crossing step) and, per rate and
    paradigm, the DCPE-vs-k-means verdict (2-SE rule on final FID). ``reuse`` (study_objectives.load_reuse): a
    finished study's rows stand in for cells with no runs in ``out``."""
    base_runs = CS.collect(out / "baseline", ["token"])["token"]
    rows: list[dict[str, Any]] = []
    base: dict[str, Any] | None = None if base_runs or not reuse else reuse.get("baseline")
    if base_runs:
        steps, mean = V.mean_curve([dict(zip(("step", "fid"), _curve(r))) for r in base_runs])
        target = mean[-1] if mean else None
        base_steps = V.steps_to_reach(steps, mean, target) if target is not None else None
        base = {"target_fid": target, "steps": base_steps, "seeds": [r["seed"] for r in base_runs]}
    cells_out = []
    for c in cells:
        folder = c.get("folder") or ("baseline" if c["prior"] is None else folder_of(c["rate"], c["normalize"]))
        name = c.get("variant") or ("token" if c["prior"] is None else f"{c['paradigm']}-{c['prior']}")
        runs = CS.collect(out / folder, [name])[name]
        old = (reuse or {}).get("cells", {}).get((folder, name)) if not runs else None
        if old:
            row = {**old, "folder": folder, "variant": name, "variant_group": c.get("folder"), "reused": True}
            row["planned_seeds"] = list(c["seeds"])
            cells_out.append(row)
            rows.append(row)
            continue
        per = [{"variant": name, **(r["final"] or {}), "is": r["final"].get("is_mean")} for r in runs]
        row = V.summarize(per)[0] if per else {"variant": name, "n": 0}
        ratios, bounded = [], False
        if base and base["steps"]:
            for r in runs:
                steps, fids = _curve(r)
                s = V.steps_to_reach(steps, fids, base["target_fid"])
                ratios.append(None if s is None else s / base["steps"])
                bounded |= bool(fids) and fids[0] <= base["target_fid"]  # reached by the first evaluation
        got = [x for x in ratios if x is not None]
        row.update(
            rate=c["rate"],
            prior=c["prior"],
            paradigm=c["paradigm"],
            normalize=c["normalize"],
            planned_seeds=list(c["seeds"]),
            seeds=[r["seed"] for r in runs],
            ratio=statistics.fmean(got) if got else None,
            ratio_sd=statistics.stdev(got) if len(got) > 1 else None,
            reached=f"{len(got)}/{len(ratios)}",
            upper_bound=bounded,
            folder=folder,
            variant=name,
            variant_group=c.get("folder"),
        )
        cells_out.append(row)
        rows.append(row)
    verdicts = []
    for rate in sorted({c["rate"] for c in cells if c["rate"]}):
        for par in PARADIGMS:
            pick = {
                r["prior"]: r
                for r in rows
                if r["rate"] == rate and r["paradigm"] == par and r["normalize"] and not r["variant_group"]
            }
            verdicts.append(dcpe_vs_kmeans(rate, par, pick.get("dcpe"), pick.get("kmeans")))
    out_ = {"baseline": base, "cells": cells_out, "verdicts": verdicts}
    out_["objective_verdicts"] = O.verdicts(out_)
    return out_


def dcpe_vs_kmeans(rate: int, paradigm: str, d: dict | None, k: dict | None) -> dict[str, Any]:
    """``dcpe`` / ``kmeans`` (lower final FID, beyond 2 SE of the seed spread), ``noise`` (inside it), ``one seed``
    (no spread measured) or ``missing``."""
    out: dict[str, Any] = {"rate": rate, "paradigm": paradigm}
    if not d or not k or not d.get("n") or not k.get("n") or d.get("fid") is None or k.get("fid") is None:
        return {**out, "winner": "missing", "gap": None}
    gap = d["fid"] - k["fid"]
    diff = V.differs(d, k, "fid")
    winner = "one seed" if diff is None else ("noise" if not diff else ("dcpe" if gap < 0 else "kmeans"))
    return {**out, "winner": winner, "gap": gap}


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.prior_study",
        description="Prior study: k-means vs DCPE vs balanced k-means at compression rates 2-16, cluster-CE and "
        "coarse-to-fine, one shared token baseline, geometry per rate, raw vs normalised clustering. Resumable.",
        epilog="examples:\n  %(prog)s --plan\n  %(prog)s --part 1/2 --threads 1 &  %(prog)s --part 2/2 --threads 1\n"
        "  %(prog)s --report-only\n  %(prog)s --budget tiny --run-dir RUN --out /tmp/ps --doc-dir /tmp/ps/doc",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--budget", choices=sorted(BUDGETS), default="default", help="size preset (default: default)")
    p.add_argument("--out", help="study folder (default: runs/prior_study/<budget>)")
    p.add_argument("--run-dir", help="pipeline run folder with tokenizer, tokenize, classifier (default: runs/demo)")
    p.add_argument("--steps", type=int, help="override the budget's steps per GPT run")
    p.add_argument("--raw-rate", type=int, help="rate of the raw-vs-normalised cells (default: lowest ARI)")
    p.add_argument("--plan", action="store_true", help="print the cells, runs and estimated minutes; run nothing")
    p.add_argument("--part", type=parse_part, help="run only part i of n (e.g. 1/2), a deterministic split")
    p.add_argument("--report-only", action="store_true", help="train nothing: rebuild tables, plot and doc")
    p.add_argument("--no-doc", action="store_true", help="write no doc, plot or benchmarks/results JSON")
    p.add_argument("--doc-dir", help="write study.md, img/ and prior_study.json here instead of docs/")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; the tiny budget at 2 steps on random images")
    p.add_argument(
        "--reuse",
        default=str(ROOT / "benchmarks" / "results" / "prior_study.json"),
        help="a finished study's results whose cells stand in for runs missing from --out (same recipe only; "
        "default: benchmarks/results/prior_study.json)",
    )
    p.add_argument("--no-reuse", action="store_true", help="reuse no earlier results: run every cell")
    return p.parse_args(argv)


def _run_args(args: argparse.Namespace, device: str) -> argparse.Namespace:
    return argparse.Namespace(device=device, threads=args.threads, no_progress=args.no_progress)


def budget_of(args: argparse.Namespace) -> dict[str, Any]:
    b = dict(BUDGETS[args.budget])
    if args.steps:
        b["steps"] = args.steps
    return b


def check_settings(path: Path, rec: dict[str, Any]) -> None:
    """Write ``settings.json`` on the first call; refuse when a later call's settings differ."""
    R.check_settings(path, rec, "the study was")


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from codeprior.data.codes import CodeShards
    from codeprior.sample import SampleSettings
    from codeprior.utils.io import write_json_atomic

    args = parse_args(argv)
    if args.smoke:  # the tiny budget at 2 steps per run on a tiny run; study, plots and doc in a temporary folder
        from benchmarks._smoke import tiny_run

        tmp = start_smoke()
        args.run_dir, args.out, args.doc_dir = (
            str(tiny_run(tmp, until=("tokenize", "classifier"))),
            str(tmp / "out"),
            str(tmp),
        )
        args.budget, args.steps, args.device, args.threads, args.no_progress = "tiny", 2, "cpu", 1, True
        args.plan = args.report_only = args.no_doc = False
        args.part = None
    b = budget_of(args)
    if args.plan:
        plan = plan_cells(b, NUM_CODES, args.raw_rate or 0) + O.plan_cells(b)
        reuse = None if args.no_reuse else O.load_reuse(Path(args.reuse), b)
        if reuse:
            old_raw = next((c["rate"] for c in reuse["cells"].values() if c.get("normalize") is False), None)
            plan = plan_cells(b, NUM_CODES, args.raw_rate or old_raw or 0) + O.plan_cells(b)
            print(f"(reusing the finished cells of {reuse['path']})")
        out = Path(args.out or ROOT / "runs" / "prior_study" / args.budget).resolve()
        print(format_plan(plan, b, done=O.reused_runs(plan_runs(plan), reuse, out)))
        print(
            "(raw-vs-normalised rate: "
            + (
                str(args.raw_rate)
                if args.raw_rate
                else "chosen at run time by the lowest ARI between raw and normalised partitions"
            )
            + ")"
        )
        return 0
    out = Path(args.out or ROOT / "runs" / "prior_study" / args.budget).resolve()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir or ROOT / "runs" / "demo")
    inputs = R.prepare_base(run_dir, b, device)
    manifest = CodeShards(inputs["codes"], "train", aug=0).manifest
    n = int(manifest["codebook_size"])
    rec = {
        "budget": b,
        "codes": str(Path(inputs["codes"]).resolve()),
        "vq": str(Path(inputs["vq"]).resolve()),
        "cfg_scale": args.cfg_scale,
        "raw_rate": args.raw_rate,
    }
    check_settings(out / "settings.json", rec)
    agree = partition_agreement(out, inputs["vq"], b["rates"], b["raw_methods"], n)
    cells = plan_cells(b, n, args.raw_rate or agree["raw_rate"]) + O.plan_cells(b)
    runs = plan_runs(cells)
    reuse = None if args.no_reuse else O.load_reuse(Path(args.reuse), b)
    reused = O.reused_runs(runs, reuse, out)
    runs_left = [r for r in runs if r.key not in reused]
    todo = runs_left if not args.part else split_runs(runs_left, b, args.part[1])[args.part[0] - 1]
    if not args.report_only:
        settings = SampleSettings(
            cfg_scale=args.cfg_scale, temperature=1.0, coarse_temperature=1.0, seed=0, refine_mode="sample"
        )
        spec = R.fid_spec(inputs, settings, b["fid_samples"], 250, device, manifest["grid"])
        for r in todo:
            if r.folder == O.FOLDER:
                O.run(r, _run_args(args, device), b, inputs, spec, out)
                continue
            ns = argparse.Namespace(
                out=str(out / r.folder), device=device, threads=args.threads, no_progress=args.no_progress
            )
            priors = {}
            if r.prior:
                assert r.rate is not None  # a prior's run has its rate
                priors = R.extract_priors(
                    inputs["vq"],
                    out / r.folder / "priors",
                    n // r.rate,
                    [r.prior],
                    progress=False,
                    normalize=r.normalize,
                )
            R.run_variant(ns, b, inputs, priors, spec, r.variant, r.objective, r.prior, r.seed)
    geo = geometry_table(out, inputs, b, cells, compute=not args.part or args.part[0] == 1)
    summary = summarize_study(out, cells, reuse)
    done = {(c["folder"], c["variant"]): c["seeds"] for c in summary["cells"]}
    missing = [r.key for r in runs_left if r.seed not in done[(r.folder, r.variant)]]
    run_s = sum(
        json.loads(p.read_text()).get("seconds_this_invocation", 0.0) for p in out.glob("*/runs/*/seed*/result.json")
    )
    run_s += sum(json.loads(p.read_text()).get("seconds", 0.0) for p in out.glob("*/refine/*/seed*/result.json"))
    argv_l = list(argv) if argv is not None else sys.argv[1:]
    keep = [
        a
        for i, a in enumerate(argv_l)
        if a not in ("--report-only", "--no-progress") and a != "--part" and (i == 0 or argv_l[i - 1] != "--part")
    ]
    meta = {
        "command": ("python -m benchmarks.prior_study " + " ".join(keep)).strip(),
        "budget_name": args.budget,
        "budget": b,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "run_minutes": run_s / 60,
        "cfg_scale": args.cfg_scale,
        "num_codes": n,
        "codes_desc": f"{manifest.get('dataset', 'dataset')} codes, {'x'.join(map(str, manifest['grid']))} grid, codebook {n}",
        "missing": missing,
        "plot_name": "prior_study.png",
        "ratio_plot_name": "prior_study_ratios.png",
        "snce_mass": O.snce_mass_outside(inputs["vq"], out, b["rates"]),
        "snce_best": O.best_setting(out, b),
    }
    payload = {"meta": meta, "agreement": agree, "geometry": geo, "summary": summary}
    write_json_atomic(out / "summary.json", payload)
    if not args.no_doc:
        doc_dir = Path(args.doc_dir) if args.doc_dir else ROOT / "docs"
        plot_heatmap(summary, doc_dir / "img" / meta["plot_name"])
        plot_ratios(summary, doc_dir / "img" / meta["ratio_plot_name"])
        if args.doc_dir:
            write_json_atomic(doc_dir / "prior_study.json", payload)
        else:
            write_result("prior_study", payload)
        update_doc_section("study", markdown(summary, geo, agree, meta), doc_dir / "study.md", title="# Prior study")
    print(f"prior_study: {len(runs) - len(missing)}/{len(runs)} runs finished; summary in {out / 'summary.json'}")
    for v in summary["verdicts"]:
        print(
            f"  rate {v['rate']:>3} {v['paradigm']:<11} {v['winner']}"
            + ("" if v["gap"] is None else f" ({v['gap']:+.3g})")
        )
    return 0


if __name__ == "__main__":
    from codeprior.errors import CodepriorError

    try:
        sys.exit(main())
    except CodepriorError as e:
        print(f"prior_study: error: {e}", file=sys.stderr)
        sys.exit(2)
