"""The prior study's results section of docs/study.md and its two plots (benchmarks/prior_study.py writes them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import study_objectives as O

#: the study's axes: compression rates, priors and paradigms (benchmarks/prior_study.py plans its cells from them)
RATES = (2, 4, 8, 16)
METHODS = ("kmeans", "dcpe", "balanced-kmeans")
PARADIGMS = ("cluster-ce", "coarse")
#: the regime the study is meant for: the token baseline's class match at least this
CLASS_MATCH_FLOOR = 0.6


def _f(v: Any, sd: Any = None, fmt: str = "{:.2f}") -> str:
    if v is None:
        return "-"
    return fmt.format(v) + (f" ± {fmt.format(sd)}" if sd is not None else "")


def plot_heatmap(summary: dict[str, Any], path: Path) -> Path | None:
    """Final-FID gap DCPE - k-means per (paradigm, rate); blue = DCPE lower; each cell labelled with the verdict."""
    from codeprior.report_figures import plt_agg, save_fig

    vs = [v for v in summary["verdicts"] if v["gap"] is not None]
    if not vs:
        return None
    rates = sorted({v["rate"] for v in summary["verdicts"]})
    plt = plt_agg()
    import numpy as np

    grid = np.full((len(PARADIGMS), len(rates)), np.nan)
    for v in vs:
        grid[PARADIGMS.index(v["paradigm"]), rates.index(v["rate"])] = v["gap"]
    lim = float(np.nanmax(np.abs(grid))) or 1.0
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(rates), 2.6))
    im = ax.imshow(grid, cmap="coolwarm", vmin=-lim, vmax=lim)
    for v in summary["verdicts"]:
        i, j = PARADIGMS.index(v["paradigm"]), rates.index(v["rate"])
        txt = "-" if v["gap"] is None else f"{v['gap']:+.3g}\n{v['winner']}"
        ax.text(j, i, txt, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(rates)), [f"rate {r}" for r in rates])
    ax.set_yticks(range(len(PARADIGMS)), PARADIGMS)
    ax.set_title("final FID: DCPE - k-means (negative: DCPE better)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return save_fig(fig, path)


def plot_ratios(summary: dict[str, Any], path: Path) -> Path | None:
    """Small multiples, one panel per paradigm: steps to the baseline's final FID (ratio, seed mean ± sd) against the
    compression rate, one line per prior (normalised rows; raw-row cells as open markers)."""
    from codeprior.report_figures import plt_agg, save_fig

    cells = [c for c in summary["cells"] if c["prior"] and c.get("ratio") is not None]
    if not cells:
        return None
    plt = plt_agg()
    fig, axes = plt.subplots(1, len(PARADIGMS), figsize=(4.2 * len(PARADIGMS), 3.2), sharey=True, squeeze=False)
    colors = dict(zip(METHODS, ("tab:blue", "tab:green", "tab:purple")))  # the same colour per prior in every panel
    for ax, par in zip(axes[0], PARADIGMS):
        for m in METHODS:
            for norm in (True, False):
                pts = sorted(
                    (c["rate"], c["ratio"], c["ratio_sd"] or 0.0)
                    for c in cells
                    if c["paradigm"] == par and c["prior"] == m and c["normalize"] == norm
                )
                if pts:
                    r, v, e = zip(*pts)
                    ax.errorbar(
                        r,
                        v,
                        yerr=e,
                        marker="o" if norm else "s",
                        mfc=None if norm else "none",
                        capsize=3,
                        color=colors[m],
                        ls="-" if norm else "none",
                        label=m + ("" if norm else " (raw)"),
                    )
        ax.axhline(1.0, color="k", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        rates = sorted({c["rate"] for c in summary["cells"] if c["rate"]})
        ax.set_xticks(rates, [str(r) for r in rates])
        ax.set_xlabel("compression rate N / k")
        ax.set_title(par, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("steps to baseline's final FID / baseline's")
    labelled = [ax for ax in axes[0] if ax.get_legend_handles_labels()[0]]
    labelled[0].legend(fontsize=7)  # cells is non-empty, so some panel has a line
    return save_fig(fig, path)


def markdown(summary: dict[str, Any], geo: dict[str, Any], agree: dict[str, Any], meta: dict[str, Any]) -> str:
    """The generated results section of docs/study.md."""
    b, base = meta["budget"], summary["baseline"]
    lines = [
        f"`{meta['command']}` ({meta['machine']}; {meta['date']}; {meta['run_minutes']:.0f} min of run time summed "
        f"over finished runs). {b['model']}, {b['steps']} steps, batch {b['batch']}, lr {b['lr']}, {b['warmup']} "
        f"warm-up steps then {b['schedule']}, dropout {b['dropout']}; FID every {b['eval_every']} steps on "
        f"{b['fid_samples']} samples (CFG {meta['cfg_scale']}); coarse runs sample through {b['refine_model']} "
        f"trained {b['refine_steps']} steps per prior and seed. {meta['codes_desc']}.",
        "",
    ]
    if base:
        bc: dict[str, Any] = next((c for c in summary["cells"] if c["prior"] is None), {})
        cm = bc.get("class_match")
        regime = (
            ""
            if cm is None or cm >= CLASS_MATCH_FLOOR
            else f" **Below the intended regime (class match < {CLASS_MATCH_FLOOR}).**"
        )
        lines += [
            f"Token baseline (seeds {base['seeds']}): final FID {_f(bc.get('fid'), bc.get('fid_sd'))}, class match "
            f"{_f(cm, bc.get('class_match_sd'), '{:.3f}')}; it reaches its own final seed-mean FID "
            f"({_f(base['target_fid'])}) at step {_f(base['steps'], None, '{:.0f}')}.{regime}",
            "",
        ]
    lines += [
        "| rate | prior | paradigm | geometry | seeds | steps to baseline FID (ratio) | reached | final FID | precision "
        "| recall | class match |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["cells"]:
        if c["prior"] is None or c.get("variant_group"):  # the issue-27 cells have their own table
            continue
        geo_s = "normalised" if c["normalize"] else "raw"
        if not c.get("n"):
            lines.append(
                f"| {c['rate']} | {c['prior']} | {c['paradigm']} | {geo_s} | 0/{len(c['planned_seeds'])} | not run | | | | | |"
            )
            continue
        lines.append(
            f"| {c['rate']} | {c['prior']} | {c['paradigm']} | {geo_s} | {c['n']}/{len(c['planned_seeds'])} | "
            f"{'<= ' if c.get('upper_bound') else ''}{_f(c['ratio'], c['ratio_sd'])} | {c['reached']} | {_f(c['fid'], c['fid_sd'])} | "
            f"{_f(c['precision'], c['precision_sd'], '{:.3f}')} | {_f(c['recall'], c['recall_sd'], '{:.3f}')} | "
            f"{_f(c['class_match'], c['class_match_sd'], '{:.3f}')} |"
        )
    lines += ["", "**Verdict (DCPE vs k-means, final FID, 2-SE rule of `codeprior.verdict.differs`).**", ""]
    for v in summary["verdicts"]:
        say = {
            "dcpe": "DCPE wins",
            "kmeans": "k-means wins",
            "noise": "inside the noise",
            "one seed": "one seed each: no spread, not ranked",
            "missing": "not run yet",
        }[v["winner"]]
        lines.append(
            f"- rate {v['rate']}, {v['paradigm']}: {say}" + ("" if v["gap"] is None else f" (gap {v['gap']:+.3g}).")
        )
    lines += ["", f"![DCPE - k-means final FID per rate and paradigm](img/{meta['plot_name']})", ""]
    lines += [f"![steps to the baseline's final FID per rate, prior and paradigm](img/{meta['ratio_plot_name']})", ""]
    lines += ["**Geometry.** Density disparity of the codebook (distance of each code to its k-th nearest code):"]
    for name, d in geo["density"].items():
        lines.append(f"- {name}: k={d['k']}, median {d['median']:.4f}, CV {d['cv']:.3f}, p90/p10 {d['p90_p10']:.2f}")
    lines += [
        "",
        "| prior | size max | singleton clusters % | intra-cluster pair dist | NN in same cluster % | substitution FID "
        "(vs recon) | codes changed % |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, g in sorted(geo["priors"].items(), key=lambda kv: (kv[1]["rate"], not kv[1]["normalize"], kv[0])):
        q, s = g["quality"], g["substitution"]
        lines.append(
            f"| {key} | {q['size max']} | {q['singleton clusters %']:.1f} | {_f(q['intra-cluster mean pair dist'], None, '{:.4f}')} "
            f"| {_f(q['nearest neighbour in same cluster %'], None, '{:.1f}')} | "
            f"{_f(s['fid_vs_recon']['mean'], s['fid_vs_recon']['std'], '{:.3g}')} | {100 * s['changed_share']['mean']:.1f} |"
        )
    ari = agree.get("ari", {})
    lines += ["", "**Raw vs L2-normalised.** Adjusted Rand index between the two partitions:"]
    for rate, per in ari.items():
        lines.append(f"- rate {rate}: " + ", ".join(f"{m} {v:.3f}" for m, v in per.items()))
    lines.append(f"The lowest mean agreement is at rate {agree.get('raw_rate')}: that rate's `raw` rows above.")
    if any(c.get("variant_group") for c in summary["cells"]):
        lines += ["", O.markdown(summary, meta.get("snce_mass", {}), meta.get("snce_best"))]
    if meta.get("missing"):
        lines += ["", f"Not finished yet (rerun the command to resume): {len(meta['missing'])} runs."]
    return "\n".join(lines)
