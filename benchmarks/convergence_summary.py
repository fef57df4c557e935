"""The summary half of benchmarks/convergence.py: seed-aggregated FID curves, the steps-to-baseline-FID headline,
the plot and the ``convergence`` section of docs/benchmarks.md, all computed from the runs' ``result.json`` files.

The interpolation and the ratio's denominator are :mod:`codeprior.verdict`'s (the demo report's), so a ratio
means the same here, in the prior study and in a pipeline report.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codeprior import verdict as V

BASELINE = "token"
PAPER_RATIO = 0.58  # DCPE paper, LlamaGen-B on ImageNet


def steps_to_reach(steps: Sequence[float], fids: Sequence[float], target: float) -> tuple[float | None, bool]:
    """First step at which the FID curve reaches ``target`` (FID <= target), linearly interpolated between the two
    evaluations that bracket the crossing (:func:`codeprior.verdict.steps_to_reach`; missing or NaN evaluations
    are skipped). Returns ``(step, bounded)``: ``(None, False)`` when never reached; ``bounded`` is True when the
    first evaluation is already at or below ``target`` (the crossing happened at or before ``steps[0]``, so
    ``steps[0]`` is an upper bound)."""
    if len(steps) != len(fids):
        raise ValueError(f"steps and fids differ in length ({len(steps)} vs {len(fids)})")
    pts = [(s, float(f)) for s, f in zip(steps, fids) if f is not None and not math.isnan(f)]
    s = V.steps_to_reach([p[0] for p in pts], [p[1] for p in pts], target)
    return s, s is not None and pts[0][1] <= target


def aggregate_curves(curves: Sequence[dict[int, float]]) -> dict[str, list[Any]]:
    """Seed curves ``{step: fid}`` -> ``{"step", "mean", "std", "n"}`` over the steps every seed has."""
    if not curves:
        return {"step": [], "mean": [], "std": [], "n": []}
    common = sorted(set.intersection(*(set(c) for c in curves)))
    mean = [statistics.fmean(c[s] for c in curves) for s in common]
    std = [statistics.stdev([c[s] for c in curves]) if len(curves) > 1 else 0.0 for s in common]
    return {"step": common, "mean": mean, "std": std, "n": [len(curves)] * len(common)}


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def headline(agg: dict[str, dict[str, list[float]]], baseline: str = BASELINE) -> dict[str, dict[str, Any]]:
    """Steps each variant's seed-mean FID curve needs to reach the baseline's final seed-mean FID, and the ratio to
    the baseline's own (computed the same way, so the baseline's ratio is 1 by construction)."""
    base = agg[baseline]
    if not base["step"]:
        return {}
    target = base["mean"][-1]
    base_steps, _ = steps_to_reach(base["step"], base["mean"], target)
    out = {}
    for name, a in agg.items():
        if not a["step"]:
            continue
        s, bounded = steps_to_reach(a["step"], a["mean"], target)
        out[name] = {
            "target_fid": target,
            "steps": s,
            "upper_bound": bounded,
            "ratio": (s / base_steps) if (s is not None and base_steps) else None,
        }
    return out


def collect(out: Path, variants: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Finished ``result.json`` files per variant (seed order)."""
    res: dict[str, list[dict[str, Any]]] = {}
    for name in variants:
        files = sorted((out / "runs" / name).glob("seed*/result.json"), key=lambda p: int(p.parent.name[4:]))
        res[name] = [json.loads(p.read_text()) for p in files]
    return res


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Seed-aggregated curves, final metrics (mean, std, n) and the steps-to-baseline-FID headline."""
    agg: dict[str, dict[str, Any]] = {}
    finals: dict[str, Any] = {}
    for name, runs in results.items():
        agg[name] = aggregate_curves([{int(s): float(f) for s, f in r["curve"].items()} for r in runs])
        finals[name] = {}
        for key in ("fid", "is_mean", "precision", "recall", "density", "coverage", "class_match"):
            m, s, n = mean_std([r["final"].get(key) for r in runs])
            finals[name][key] = {"mean": m, "std": s, "n": n}
        for key in ("val_loss", "val_token_loss"):
            m, s, n = mean_std([r["train"].get(key) for r in runs])
            finals[name][key] = {"mean": m, "std": s, "n": n}
        finals[name]["seeds"] = [r["seed"] for r in runs]
    head = headline(agg) if agg.get(BASELINE, {}).get("step") else {}
    return {"curves": agg, "final": finals, "headline": head}


def plot(summary: dict[str, Any], path: Path, title: str) -> Path:
    """FID vs step, seed mean with a +-1 std band per variant; dashed line at the baseline's final FID."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for name, a in summary["curves"].items():
        if not a["step"]:
            continue
        lo = [m - s for m, s in zip(a["mean"], a["std"])]
        hi = [m + s for m, s in zip(a["mean"], a["std"])]
        style = "-" if name == BASELINE else ("--" if name.startswith("coarse") else "-.")
        (line,) = ax.plot(
            a["step"],
            a["mean"],
            style,
            marker="o",
            ms=3,
            lw=2 if name == BASELINE else 1.4,
            label=f"{name} (n={a['n'][0]})",
        )
        ax.fill_between(a["step"], lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    head = summary.get("headline") or {}
    if BASELINE in head:
        ax.axhline(head[BASELINE]["target_fid"], color="k", ls=":", lw=1, label="baseline final FID")
    ax.set_xlabel("training step")
    ax.set_ylabel("FID (classifier features)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from codeprior.utils.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _pm(d: dict[str, Any], fmt: str = "{:.2f}") -> str:
    if d.get("mean") is None:
        return "-"
    s = fmt.format(d["mean"])
    return s + (f" ± {fmt.format(d['std'])}" if d.get("n", 0) > 1 else "")


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    """The ``convergence`` section of docs/benchmarks.md."""
    b, fe = meta["budget"], meta.get("feature_extractor") or {}
    head = summary.get("headline") or {}
    k_note = ", and is the demo pipeline's compression rate 8" if meta["num_codes"] // meta["k"] == 8 else ""
    lines = [
        "## Convergence: does a codebook prior speed up AR training?",
        "",
        f"`{meta['command']}` (budget **{meta['budget_name']}**; {meta['machine']}; {meta['date']}; "
        f"{meta['run_minutes']:.0f} min of run time summed over the finished runs, {meta.get('elapsed_minutes', 0):.0f} min "
        f"from the first run's start to the last one's end){' ' + meta['note'] if meta.get('note') else ''}",
        "",
        f"Setup: {b['model']} trained {b['steps']} steps at batch {b['batch']} (AdamW, lr {b['lr']}, constant after "
        f"{b['warmup']} warmup steps) on the {meta['codes_desc']}; seeds {meta['seeds_run']} (seed = initial weights "
        f"+ data order). Priors: balanced k-means, k-means and DCPE on the L2-normalised codebook, all with "
        f"k = {meta['k']} of {meta['num_codes']} codes ({meta['num_codes'] // meta['k']} codes per cluster on "
        f"average; k divides the codebook, as balanced k-means requires{k_note}). "
        f"`coarse-*` sample through a {b['refine_model']} refine model trained {b['refine_steps']} steps once per "
        f"prior and seed (this extra training is not counted in the steps). FID every {b['eval_every']} steps with "
        f"the pipeline's FID hook (`codeprior.curves.make_fid_fn`) on {b['fid_samples']} class-balanced samples "
        f"(same labels and sampling seed at every evaluation; CFG "
        f"{meta['cfg_scale']}, temperature {meta['temperature']}, refine temperature {meta['refine_temperature']}) "
        f"against {meta.get('num_reference')} test images, on **in-project classifier features** "
        f"({fe.get('num_features')}-d penultimate layer of the Fashion-MNIST classifier, test accuracy "
        f"{(fe.get('test_accuracy') or float('nan')):.4f}), not Inception: compare the numbers with each other only. "
        f"{meta['tokenizer_desc']}",
        "",
        "| variant | seeds | final FID | IS | precision | recall | class match | val token CE | steps to baseline's "
        "final FID | ratio to baseline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in summary["final"].items():
        if not f["seeds"]:
            lines.append(f"| {name} | 0 | not run | | | | | | | |")
            continue
        h = head.get(name, {})
        if h.get("steps") is None:
            steps_s, ratio_s = "not reached", "-"
        else:
            steps_s = ("<= " if h["upper_bound"] else "") + f"{h['steps']:.0f}"
            ratio_s = (
                ("<= " if h["upper_bound"] else "") + f"**{h['ratio']:.2f}**" if h.get("ratio") is not None else "-"
            )
        if name.startswith("coarse"):
            vl = _pm(f["val_loss"], "{:.3f}") + " (cluster CE)"
        else:
            vl = _pm(f.get("val_token_loss") or f["val_loss"], "{:.3f}")
        lines.append(
            f"| {name} | {len(f['seeds'])} | {_pm(f['fid'])} | {_pm(f['is_mean'])} | "
            f"{_pm(f['precision'], '{:.3f}')} | {_pm(f['recall'], '{:.3f}')} | "
            f"{_pm(f['class_match'], '{:.3f}')} | {vl} | {steps_s} | {ratio_s} |"
        )
    lines += [
        "",
        "Mean ± std over seeds. Steps to the baseline's final FID: first crossing of the seed-mean FID curve below "
        "the baseline's final seed-mean FID, linearly interpolated between evaluations (`<=` when the first "
        "evaluation is already below it); the ratio divides by the baseline's own crossing step found the same way "
        f"(the DCPE paper reports {PAPER_RATIO} for LlamaGen-B on ImageNet). Val token CE: held-out token "
        "cross-entropy at the end (for `coarse-*`, which predict clusters only, the held-out cluster CE instead, "
        "not comparable with the others).",
        "",
        f"![FID vs training step, seed mean ± std](img/{meta['plot_name']})",
        "",
        "**Reading.** " + interpretation(summary),
    ]
    if meta.get("missing"):
        lines += ["", f"Not finished in this invocation (rerun the command to resume): {', '.join(meta['missing'])}."]
    return "\n".join(lines)


def interpretation(summary: dict[str, Any]) -> str:
    """Plain statements generated from the numbers (no hand-written conclusions)."""
    head = summary.get("headline") or {}
    if BASELINE not in head:
        return "The baseline has not finished, so there is no headline yet."
    out = []
    faster = [n for n, h in head.items() if n != BASELINE and h.get("ratio") is not None and h["ratio"] < 1]
    slower = [n for n, h in head.items() if n != BASELINE and h.get("ratio") is not None and h["ratio"] >= 1]
    never = [n for n, h in head.items() if n != BASELINE and h.get("steps") is None]
    if faster:
        out.append(
            "Reach the baseline's final FID in fewer steps: "
            + ", ".join(f"{n} ({head[n]['ratio']:.2f}x)" for n in faster)
            + "."
        )
    if slower:
        out.append("Need as many or more steps: " + ", ".join(f"{n} ({head[n]['ratio']:.2f}x)" for n in slower) + ".")
    if never:
        out.append("Never reach it within the budget: " + ", ".join(never) + ".")
    fin = summary["final"]
    base = fin[BASELINE]["fid"]
    if base.get("std") is not None and base.get("n", 0) > 1:
        overlap = [
            n
            for n, f in fin.items()
            if n != BASELINE
            and f["fid"].get("mean") is not None
            and abs(f["fid"]["mean"] - base["mean"]) <= (f["fid"].get("std") or 0) + base["std"]
        ]
        if overlap:
            out.append(
                "Final FIDs within one seed std of the baseline's (not distinguishable at this seed count): "
                + ", ".join(overlap)
                + "."
            )
    n_seeds = min((len(f["seeds"]) for f in fin.values() if f["seeds"]), default=0)
    n_evals = len(summary["curves"][BASELINE]["step"])
    if n_seeds < 3 or n_evals < 6:
        out.append(
            f"With {n_seeds} seed(s) and {n_evals} evaluations per run these ratios are rough estimates "
            "(read them together with the seed spread in the plot); a larger budget is the real test."
        )
    return " ".join(out)


def print_table(summary: dict[str, Any]) -> None:
    head = summary.get("headline") or {}
    print(f"{'variant':<28} {'seeds':>5} {'final FID':>16} {'steps to base FID':>18} {'ratio':>6}")
    for name, f in summary["final"].items():
        h = head.get(name, {})
        steps = "not run" if not f["seeds"] else "not reached" if h.get("steps") is None else f"{h['steps']:.0f}"
        ratio = "-" if h.get("ratio") is None else f"{h['ratio']:.2f}"
        print(f"{name:<28} {len(f['seeds']):>5} {_pm(f['fid']):>16} {steps:>18} {ratio:>6}")
