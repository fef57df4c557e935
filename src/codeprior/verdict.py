"""Did the prior help? Seed means and spreads, steps to the baseline's FID, and a one-sentence verdict.

Everything here is computed from the numbers a run wrote (``evaluate/metrics.json`` rows and the FID-vs-step curves
of the training stages), so the report, the README's results table and the tests read the same figures.

Two numbers are *different beyond the seed spread* when their gap exceeds twice the standard error of the gap
(``2 * sqrt(s1^2 / n1 + s2^2 / n2)``, about a 95% two-sided test); with one seed per variant no spread is measured
and the verdict says so instead of ranking noise.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METRICS = ("fid", "kid", "is", "precision", "recall", "density", "coverage", "class_match")
BASELINE = "token"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def summarize(rows: Sequence[dict]) -> list[dict]:
    """One row per variant (first-seen order): ``n`` seeds and ``<metric>`` mean / ``<metric>_sd`` (None if n=1)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(str(r["variant"]), []).append(r)
    out = []
    for name, rs in by.items():
        row: dict[str, Any] = {
            "variant": name,
            "objective": rs[0].get("objective"),
            "prior": rs[0].get("prior"),
            "n": len(rs),
        }
        for m in METRICS:
            vals = [float(r[m]) for r in rs if _finite(r.get(m))]
            row[m] = statistics.fmean(vals) if vals else None
            row[f"{m}_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
        out.append(row)
    return out


def mean_curve(curves: Sequence[dict], key: str = "fid") -> tuple[list[int], list[float]]:
    """Mean of several runs' eval curves (``{"step": [...], key: [...]}``) at the steps all of them evaluated."""
    series = []
    for c in curves:
        pts = {int(s): float(v) for s, v in zip(c.get("step", []), c.get(key, [])) if _finite(v)}
        if pts:
            series.append(pts)
    if not series:
        return [], []
    steps = sorted(set.intersection(*(set(p) for p in series)))
    return steps, [statistics.fmean(p[s] for p in series) for s in steps]


def steps_to_reach(steps: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """First step at which the curve is at or below ``target``, linearly interpolated between evaluations."""
    prev: tuple[float, float] | None = None
    for s, v in zip(steps, values):
        if v <= target:
            if prev is None or prev[1] == v:
                return float(s)
            s0, v0 = prev
            return s0 + (s - s0) * (v0 - target) / (v0 - v)
        prev = (s, v)
    return None


def differs(a: dict, b: dict, key: str = "fid") -> bool | None:
    """Whether two summary rows differ in ``key`` beyond the seed spread; None when a spread is missing."""
    if not (_finite(a.get(key)) and _finite(b.get(key))):
        return None
    sa, sb = a.get(f"{key}_sd"), b.get(f"{key}_sd")
    if sa is None or sb is None:
        return None
    se = math.sqrt(sa**2 / a["n"] + sb**2 / b["n"])
    return abs(a[key] - b[key]) > 2 * se


def step_ratios(curves: dict[str, list[dict]], baseline: str = BASELINE) -> dict[str, float | None]:
    """For every variant: steps to the baseline's final (mean-curve) FID as a fraction of the steps the baseline
    itself needs to reach it (its own first crossing: the last step unless its curve dipped below its final FID
    earlier, in which case a late rise of the baseline's curve does not count in the others' favour)."""
    bs, bv = mean_curve(curves.get(baseline, []))
    if not bs:
        return {}
    target = bv[-1]
    total = steps_to_reach(bs, bv, target) or float(bs[-1])
    out = {}
    for name, cs in curves.items():
        if name == baseline:
            continue
        s, v = mean_curve(cs)
        reached = steps_to_reach(s, v, target) if s else None
        out[name] = None if reached is None else reached / total
    return out


def below_baseline(curves: dict[str, list[dict]], baseline: str = BASELINE) -> dict[str, list[int]]:
    """For every variant: ``[k, n]``, its mean curve below the baseline's at k of the n evaluations both made."""
    bs, bv = mean_curve(curves.get(baseline, []))
    base = dict(zip(bs, bv))
    out = {}
    for name, cs in curves.items():
        if name == baseline:
            continue
        common = [(s, v) for s, v in zip(*mean_curve(cs)) if s in base]
        out[name] = [sum(v < base[s] for s, v in common), len(common)]
    return out


def _fmt_fid(r: dict) -> str:
    sd = r.get("fid_sd")
    return f"{r['fid']:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")


def verdict(
    summary: Sequence[dict],
    ratios: dict[str, float | None],
    baseline: str = BASELINE,
    below: dict[str, list[int]] | None = None,
) -> str:
    """A few sentences answering "did the prior help, and did DCPE help more than k-means?".

    ``ratios``: :func:`step_ratios`; ``below``: :func:`below_baseline` (both read off the FID-vs-step curves).
    """
    rows = {r["variant"]: r for r in summary if _finite(r.get("fid"))}
    base = rows.get(baseline)
    if base is None:
        return "No token baseline was evaluated, so there is nothing to compare against."
    others = [r for n, r in rows.items() if n != baseline]
    if not others:
        return f"Only the token baseline was evaluated (FID {_fmt_fid(base)})."
    n_seeds = min(r["n"] for r in rows.values())
    parts = []
    reach = [(r["variant"], ratios.get(r["variant"])) for r in others]
    got = [f"{x:.2f}x for {n}" for n, x in reach if x is not None]
    missed = [n for n, x in reach if x is None]
    if got:
        parts.append(
            "Steps to reach the token baseline's final FID, as a share of the baseline's own steps to it: "
            + ", ".join(got)
            + (f"; {', '.join(missed)} did not reach it" if missed else "")
            + "."
        )
    elif missed:
        parts.append(
            f"On the FID-vs-step curves no prior variant reached the token baseline's final FID ({', '.join(missed)})."
        )
    if below:
        parts.append(
            "Below the baseline's curve at "
            + ", ".join(f"{k} of {n} evaluations ({name})" for name, (k, n) in below.items() if n)
            + "."
        )
    finals = []
    for r in others:
        d = differs(r, base)
        tag = "" if d is None else (" (beyond the seed spread)" if d else " (within the seed spread)")
        finals.append(f"{r['variant']} {_fmt_fid(r)}{tag}")
    parts.append(f"Final FID: token {_fmt_fid(base)}, " + ", ".join(finals) + ".")
    dcpe = [r for r in others if r.get("prior") == "dcpe"]
    km = {r.get("objective"): r for r in others if r.get("prior") == "kmeans"}
    for r in dcpe:
        k = km.get(r.get("objective"))
        if k is None:
            continue
        d = differs(r, k)
        better = "DCPE" if r["fid"] < k["fid"] else "k-means"
        if d is None:
            parts.append(
                f"{r['objective']}: {better} is lower by {abs(r['fid'] - k['fid']):.2f} FID, from one "
                "seed each: no spread is measured, so this ranking may be noise (the full preset runs "
                "several seeds)."
            )
        elif d:
            parts.append(f"{r['objective']}: {better} beats the other prior beyond the seed spread.")
        else:
            parts.append(f"{r['objective']}: DCPE and k-means do not differ beyond the seed spread.")
    if n_seeds > 1:
        parts.append(f"Mean ± standard deviation over {n_seeds} training seeds.")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------- a run's results
def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def collect(run_dir: str | os.PathLike) -> dict:
    """The comparison of a pipeline run: per-variant summary, FID-vs-step curves, step ratios and the verdict.

    Reads ``evaluate/metrics.json`` and every AR run's ``sample-<run>/curve.json`` (FID over its snapshots).
    Empty dict when the evaluate stage has not run.
    """
    run_dir = Path(run_dir)
    metrics = _read(run_dir / "evaluate" / "metrics.json")
    if not isinstance(metrics, dict) or not metrics.get("rows"):
        return {}
    rows = metrics["rows"]
    summary = metrics.get("summary") or summarize(rows)
    curves: dict[str, list[dict]] = {}
    steps = None
    for r in rows:
        run = r.get("run", r["variant"])
        m = _read(run_dir / f"train-{run}" / "manifest.json") or {}
        steps = (m.get("metrics") or {}).get("steps", steps)
        curve = _read(run_dir / f"sample-{run}" / "curve.json")  # measured over the training's snapshots
        if not (isinstance(curve, dict) and curve.get("fid")):  # runs made before the curve moved there
            curve = (_read(run_dir / f"train-{run}" / "curves.json") or {}).get("eval")
        if isinstance(curve, dict) and curve.get("fid"):
            curves.setdefault(str(r["variant"]), []).append(curve)
    ratios = step_ratios(curves)
    below = below_baseline(curves)
    for row in summary:
        row["steps_ratio"] = ratios.get(row["variant"], 1.0 if row["variant"] == BASELINE else None)
    return {
        "summary": summary,
        "ratios": ratios,
        "below": below,
        "curves": curves,
        "verdict": verdict(summary, ratios, below=below),
        "seeds": metrics.get("seeds", 1),
        "num_samples": metrics.get("num_samples"),
        "steps": steps,
        "feature_extractor": metrics.get("feature_extractor"),
        "feature_accuracy": metrics.get("feature_accuracy"),
    }


#: Columns of the results table: (summary key, header, format).
RESULT_COLUMNS = (
    ("fid", "FID", "{:.2f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("class_match", "class match", "{:.3f}"),
)


def _cell(row: dict, key: str, fmt: str) -> str:
    v = row.get(key)
    if not _finite(v):
        return "–"
    sd = row.get(f"{key}_sd")
    return fmt.format(v) + (f" ± {fmt.format(sd)}" if sd is not None else "")


def results_table(res: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows (formatted cells) of the results table: one row per variant."""
    head = ["run", "objective", "prior"] + [h for _, h, _ in RESULT_COLUMNS] + ["steps to baseline FID"]
    rows = []
    for r in res["summary"]:
        ratio = r.get("steps_ratio")
        rows.append(
            [str(r["variant"]), str(r.get("objective") or ""), str(r.get("prior") or "–")]
            + [_cell(r, k, f) for k, _, f in RESULT_COLUMNS]
            + ["–" if ratio is None else f"{ratio:.2f}x"]
        )
    return head, rows


def results_note(res: dict) -> str:
    """What the table's numbers are: samples, steps, seeds, features."""
    acc = res.get("feature_accuracy")
    seeds = res.get("seeds", 1)
    return (
        f"{res.get('num_samples')} samples per run, {res.get('steps')} training steps, "
        + (f"mean ± standard deviation over {seeds} training seeds" if seeds > 1 else "one training seed")
        + "; the table's FID etc. on the features of the in-project classifier"
        + (f" (test accuracy {acc:.1%})" if _finite(acc) else "")
        + ", not Inception; the curves behind the "
        "step ratios use the smaller train.eval_samples per point."
    )


def results_markdown(res: dict) -> str:
    """The results table + verdict as Markdown: what the report shows first and the README quotes verbatim."""
    if not res:
        return "(no results: the evaluate stage has not run)\n"
    head, rows = results_table(res)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + results_note(res) + "\n\n**Verdict.** " + res["verdict"] + "\n"


def readme_markers(block: str = "demo") -> tuple[str, str]:
    """The README markers of a results block: ``<!-- NAME-results:begin -->`` ... ``end``; NAME is the run's name."""
    return f"<!-- {block}-results:begin -->", f"<!-- {block}-results:end -->"


README_BEGIN, README_END = readme_markers()


def readme_block(readme_text: str, block: str = "demo") -> str | None:
    """The text between the README's markers of ``block``, or None when the markers are missing."""
    begin, end = readme_markers(block)
    if begin not in readme_text or end not in readme_text:
        return None
    return readme_text.split(begin, 1)[1].split(end, 1)[0].strip("\n") + "\n"


def update_readme(readme: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """Put ``RUN/results.md`` between the README's markers of the run (``<!-- RUN-results:begin -->``, RUN the
    run folder's name: ``demo``, ``demo-full``); keep ``RUN/results.json`` as docs/results/RUN.json.

    The README's numbers are then a run's output, and ``tests/test_readme_results.py`` re-renders every block from
    its kept JSON to check that nobody edited them by hand.
    """
    from codeprior.errors import CodepriorError
    from codeprior.utils.io import write_json_atomic, write_text_atomic

    readme, run_dir = Path(readme), Path(run_dir)
    block = run_dir.resolve().name
    res = _read(run_dir / "results.json")
    if not isinstance(res, dict) or not res.get("summary"):
        raise CodepriorError(f"{run_dir / 'results.json'}: missing or empty (run the report stage first)")
    text = readme.read_text()
    begin, end = readme_markers(block)
    if readme_block(text, block) is None:
        raise CodepriorError(f"{readme}: no {begin} ... {end} block to replace")
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    write_text_atomic(readme, f"{head}{begin}\n{results_markdown(res)}{end}{tail}")
    kept = readme.parent / "docs" / "results" / f"{block}.json"
    write_json_atomic(kept, res)
    return kept
