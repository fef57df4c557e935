"""Sample quality of speculative decoding against AR (``benchmarks/speculative.py --quality``): cells, summary, verdict,
frontier plot, markdown.

A cell is one (setting, sampling seed): ``num`` class-balanced samples drawn through the pipeline's FID hook
(:func:`codeprior.curves.make_fid_fn`, full metrics: FID, precision, recall, density, coverage, class match, on the
in-project classifier's features) with the setting's acceptance rule, plus each sample's number of model passes.
Cells are written one JSON file each under ``OUT/quality/`` as they finish, so an interrupted run resumes.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from codeprior import verdict as V

METRICS = ("fid", "precision", "recall", "density", "coverage", "class_match")
FID_TOLERANCE = 0.05  # the issue's target: the best relaxed rule keeps FID within 5% of AR's
PASS_TARGET = 0.4  # ... with at most 0.4x AR's forward passes


def cell_path(out: Path, model: str, setting: str, seed: int) -> Path:
    return out / "quality" / f"{model}--{setting}--seed{seed}.json"


def run_cell(
    spec: dict[str, Any], gpt: Any, settings: Any, rule: Any, seed: int, record: dict[str, Any]
) -> dict[str, Any]:
    """Metrics and pass counts of one (setting, seed) cell; ``record`` (the cell's identity) is copied in."""
    import time

    from codeprior.curves import make_fid_fn

    s = asdict(settings)
    s["seed"] = int(seed)
    fid = make_fid_fn({**spec, "settings": s})
    passes: list[torch.Tensor] = []
    t0 = time.perf_counter()
    res = fid(gpt, full=True, rule=rule, passes=passes)
    p = torch.cat(passes).double()
    L = gpt.config.block_size
    return {
        **record,
        "seed": int(seed),
        "num": int(spec["num"]),
        "seconds": time.perf_counter() - t0,
        "passes_per_sample": float(p.mean()),
        "passes_max": int(p.max()),
        "accepted_per_pass": float(L / p.mean()),
        **{m: float(res[m]) for m in METRICS if m in res},
    }


def summarize(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, setting): mean / sd over seeds of every metric and of the passes per sample."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        by.setdefault((c["model"], c["setting"]), []).append(c)
    rows = []
    for (model, setting), cs in by.items():
        row: dict[str, Any] = {"model": model, "setting": setting, "n": len(cs), "seeds": sorted(c["seed"] for c in cs)}
        for m in (*METRICS, "passes_per_sample"):
            vals = [float(c[m]) for c in cs if m in c]
            row[m] = statistics.fmean(vals) if vals else None
            row[f"{m}_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
        rows.append(row)
    for row in rows:  # ratios against the same model's AR row
        ar = next((r for r in rows if r["model"] == row["model"] and r["setting"] == "ar"), None)
        if ar and ar["passes_per_sample"] and ar["fid"]:
            row["pass_ratio"] = row["passes_per_sample"] / ar["passes_per_sample"]
            row["fid_ratio"] = row["fid"] / ar["fid"]
            row["fid_differs_from_ar"] = V.differs(row, ar) if row is not ar else False
    return rows


def _pm(row: dict[str, Any], key: str, fmt: str) -> str:
    v, sd = row.get(key), row.get(f"{key}_sd")
    if v is None:
        return "-"
    return format(v, fmt) + (f" ± {format(sd, fmt)}" if sd is not None else "")


def label(setting: str, priors: dict[str, dict[str, Any]]) -> str:
    """'sjd-prior-dcpe' -> 'sjd prior (dcpe, k = 512)'."""
    if setting.startswith("sjd-prior-"):
        name = setting[len("sjd-prior-") :]
        k = (priors.get(name) or {}).get("k")
        return f"sjd prior ({name}" + (f", k = {k})" if k else ")")
    return setting.replace("-", " ")


def quality_table(rows: Sequence[dict[str, Any]], priors: dict[str, dict[str, Any]]) -> str:
    head = (
        "| model | decoder | passes per sample | passes vs AR | FID | FID vs AR | precision | recall | class match |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        differs = r.get("fid_differs_from_ar")
        mark = "" if r["setting"] == "ar" or differs is None else (" (beyond spread)" if differs else " (in spread)")
        lines.append(
            f"| {r['model']} | {label(r['setting'], priors)} | {_pm(r, 'passes_per_sample', '.1f')} | "
            f"{r.get('pass_ratio', 1.0):.2f}x | {_pm(r, 'fid', '.2f')} | {r.get('fid_ratio', 1.0):.3f}{mark} | "
            f"{_pm(r, 'precision', '.3f')} | {_pm(r, 'recall', '.3f')} | {_pm(r, 'class_match', '.3f')} |"
        )
    return head + "\n".join(lines) + "\n"


def _compare(a: dict[str, Any], b: dict[str, Any], key: str, lower_better: bool = True) -> str:
    """'fewer' / 'more' / 'same within the spread' (for passes), or 'better' / 'worse' / ... (for FID)."""
    d = V.differs(a, b, key)
    if d is None:
        return "not ranked (one seed)"
    if not d:
        return "within the seed spread"
    better = (a[key] < b[key]) == lower_better
    if key == "passes_per_sample":
        return "fewer passes" if better else "more passes"
    return "better" if better else "worse"


def verdict(rows: Sequence[dict[str, Any]], model: str = "token") -> list[str]:
    """Sentences: targets (exact within AR's spread; best relaxed rule <= 0.4x passes, FID within 5%) and whether
    the DCPE prior beats k-means, LANTERN's neighbours and GSD's groups (2-SE rule on passes and on FID)."""
    by = {r["setting"]: r for r in rows if r["model"] == model}
    out: list[str] = []
    ar, ex = by.get("ar"), by.get("sjd-exact")
    if ar and ex:
        d = V.differs(ex, ar)
        where = "not ranked (one seed; target: within the seed spread)"
        if d is not None:
            where = f"{'beyond' if d else 'within'} the seed spread (target: within)"
        out.append(
            f"`exact` (SJD): {ex['pass_ratio']:.2f}x AR's passes, FID {ex['fid']:.2f} vs AR's {ar['fid']:.2f}: {where}."
        )
    relaxed = [r for s, r in by.items() if s not in ("ar", "sjd-exact") and r.get("pass_ratio") is not None]
    ok = [r for r in relaxed if r["fid_ratio"] <= 1 + FID_TOLERANCE]
    if relaxed:
        if ok:
            best = min(ok, key=lambda r: r["pass_ratio"])
            met = "met" if best["pass_ratio"] <= PASS_TARGET else "not met"
            out.append(
                f"Fewest passes with FID within {FID_TOLERANCE:.0%} of AR's: `{best['setting']}` at "
                f"{best['pass_ratio']:.2f}x AR's passes (FID {best['fid_ratio']:.3f}x AR's); target <= "
                f"{PASS_TARGET}x: {met}."
            )
        else:
            out.append(f"No relaxed rule keeps FID within {FID_TOLERANCE:.0%} of AR's: the target is not met.")
    dcpe = by.get("sjd-prior-dcpe")
    if dcpe:
        for other, name in (
            ("sjd-prior-kmeans", "the k-means prior"),
            ("sjd-latent", "LANTERN's latent neighbours"),
            ("sjd-gsd", "GSD's groups"),
        ):
            o = by.get(other)
            if o is None:
                continue
            out.append(
                f"DCPE prior vs {name}: {_compare(dcpe, o, 'passes_per_sample')} "
                f"({dcpe['passes_per_sample']:.1f} vs {o['passes_per_sample']:.1f} per sample), FID "
                f"{_compare(dcpe, o, 'fid')} ({dcpe['fid']:.2f} vs {o['fid']:.2f})."
            )
    return out


def verdict_all(rows: Sequence[dict[str, Any]]) -> list[str]:
    """:func:`verdict` for every model in ``rows``; sentences about a model other than ``token`` name it."""
    out: list[str] = []
    for model in dict.fromkeys(r["model"] for r in rows):
        out += [s if model == "token" else f"{model}: {s}" for s in verdict(rows, model)]
    return out


def frontier_plot(rows: Sequence[dict[str, Any]], priors: dict[str, dict[str, Any]], path: Path) -> Path:
    """FID against forward passes per sample (mean ± sd over seeds), one marker per decoder, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from codeprior.utils.io import atomic_path

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.0), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for r in (r for r in rows if r["model"] == model):
            ax.errorbar(
                r["passes_per_sample"],
                r["fid"],
                xerr=r.get("passes_per_sample_sd") or 0,
                yerr=r.get("fid_sd") or 0,
                fmt="o",
                capsize=3,
                label=label(r["setting"], priors),
            )
        ar = next((r for r in rows if r["model"] == model and r["setting"] == "ar"), None)
        if ar:
            ax.axhline(ar["fid"] * (1 + FID_TOLERANCE), color="grey", ls=":", lw=1, label="AR FID + 5%")
            ax.axvline(ar["passes_per_sample"] * PASS_TARGET, color="grey", ls="--", lw=1, label="0.4x AR passes")
        ax.set_xlabel("model forward passes per sample")
        ax.set_ylabel("FID (classifier features)")
        ax.set_title(f"{model}: quality vs passes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def merge_cells(prev: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``new`` plus the cells of ``prev`` for models ``new`` did not measure (``--merge``: a ``--models coarse``
    run keeps the token model's cells). A kept model must have the same sample count per cell: its rows are
    compared with the new ones in one table."""
    measured = {c["model"] for c in new}
    nums = {c["num"] for c in new if "num" in c}
    kept = [c for c in prev if c["model"] not in measured]
    odd = sorted({c["model"] for c in kept if nums and c.get("num") not in nums})
    if odd:
        raise ValueError(f"kept cells of {', '.join(odd)} have another sample count than this run's {sorted(nums)}")
    return [*kept, *new]


def run_quality(
    out: Path,
    models: dict[str, dict[str, Any]],
    seeds: Sequence[int],
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Every (model, setting, seed) cell, skipping the finished ones; returns all cells.

    ``models[name]`` = {"gpt", "spec" (FID-hook spec with num / batch / refine), "settings" {setting: SampleSettings},
    "rules" {setting: rule}}."""
    import json

    from codeprior.utils.io import write_json_atomic

    cells = []
    for seed in seeds:  # seed-major: a partial run has every setting at the first seeds
        for mname, m in models.items():
            for setting, settings in m["settings"].items():
                path = cell_path(out, mname, setting, seed)
                if path.is_file():
                    cells.append(json.loads(path.read_text()))
                    continue
                rec = {"model": mname, "setting": setting, "decoder": asdict(settings.decoder)}
                c = run_cell(m["spec"], m["gpt"], settings, m["rules"][setting], seed, rec)
                write_json_atomic(path, c)
                log(
                    f"quality {mname} {setting} seed {seed}: FID {c['fid']:.2f}, class match {c['class_match']:.3f}, "
                    f"{c['passes_per_sample']:.1f} passes/sample, {c['seconds']:.0f} s"
                )
                cells.append(c)
    return cells
