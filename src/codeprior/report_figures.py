"""The report's figures: FID against step for every variant, samples side by side per class, cluster sizes and
training curves.

They read only run outputs (curves from :func:`codeprior.verdict.collect`, ``sample-<run>/samples.npz``,
``data/examples.npz``, the priors' sizes, the trainings' curves); matplotlib draws with the Agg backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from codeprior.verdict import mean_curve


def plt_agg() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_fig(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    from codeprior.utils.io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt_agg().close(fig)
    return path


def fid_vs_step(curves: dict[str, list[dict]], path: Path, target: float | None = None) -> Path | None:
    """Every variant's FID-vs-step curve (mean over seeds, band = min..max over seeds) in one plot."""
    plt = plt_agg()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    drawn = False
    for i, (name, runs) in enumerate(curves.items()):
        steps, mean = mean_curve(runs)
        if not steps:
            continue
        color = f"C{i}"
        label = name + (f" ({len(runs)} seeds)" if len(runs) > 1 else "")
        ax.plot(
            steps,
            mean,
            marker="o",
            markersize=3,
            color=color,
            label=label,
            linewidth=2.2 if name == "token" else 1.6,
            linestyle="--" if name == "token" else "-",
        )
        if len(runs) > 1:
            per = [dict(zip(r["step"], r["fid"])) for r in runs]
            lo = [min(p[s] for p in per if s in p) for s in steps]
            hi = [max(p[s] for p in per if s in p) for s in steps]
            ax.fill_between(steps, lo, hi, color=color, alpha=0.15, linewidth=0)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if target is not None and math.isfinite(target):
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label="token baseline's final FID")
    ax.set_xlabel("training step")
    ax.set_ylabel("FID (classifier features; lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_fig(fig, path)


def _tile(images: np.ndarray, cols: int, scale: int) -> np.ndarray:
    """[n, H, W, C] uint8 -> one row of ``cols`` images, each upscaled ``scale`` times (nearest neighbour)."""
    h, w, c = images.shape[1:]
    row = np.full((h, cols * w + (cols - 1), c), 255, np.uint8)
    for j, im in enumerate(images[:cols]):
        row[:, j * (w + 1) : j * (w + 1) + w] = im
    return row.repeat(scale, 0).repeat(scale, 1)


def class_comparison(
    groups: Sequence[tuple[str, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    path: Path,
    per_class: int = 6,
    scale: int = 3,
) -> Path | None:
    """One row per class; column groups: real images first, then each variant's samples of that class.

    ``groups`` holds ``(title, images [N, H, W, C] uint8, labels [N])``; the first ``per_class`` images of each
    class are shown, upscaled ``scale`` times so that 28x28 images can be seen.
    """
    groups = [g for g in groups if len(g[1])]
    if not groups:
        return None
    plt = plt_agg()
    n_cls = len(class_names)
    panels = []
    for title, images, labels in groups:
        rows = []
        for c in range(n_cls):
            sel = images[np.asarray(labels) == c][:per_class]
            if len(sel) < per_class:  # pad a class with few samples with white
                pad = np.full((per_class - len(sel), *images.shape[1:]), 255, np.uint8)
                sel = np.concatenate([sel, pad]) if len(sel) else pad
            rows.append(_tile(sel, per_class, scale))
        gap = np.full((scale * 2, rows[0].shape[1], rows[0].shape[2]), 255, np.uint8)
        panel = np.concatenate([x for r in rows for x in (r, gap)][:-1])
        panels.append((title, panel.squeeze(-1) if panel.shape[-1] == 1 else panel))
    h, w = panels[0][1].shape[:2]
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * w / 90 + 1.2, h / 90 + 0.6), squeeze=False)
    for i, (ax, (title, panel)) in enumerate(zip(axes[0], panels)):
        ax.imshow(panel, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=11)
        ax.set_xticks([])
        step = h / n_cls
        ax.set_yticks([step * (c + 0.5) for c in range(n_cls)])
        ax.set_yticklabels(class_names if i == 0 else [""] * n_cls, fontsize=9)
        ax.tick_params(length=0)
        for s in ax.spines.values():
            s.set_visible(False)
    fig.tight_layout()
    return save_fig(fig, path, dpi=90)


def size_hist(sizes_by_method: dict[str, list[int]], path: Path) -> Path:
    """One panel per prior, shared axes: clusters per size, power-of-two bins on a log x axis."""
    plt = plt_agg()
    n = len(sizes_by_method)
    mx = max((max(v) for v in sizes_by_method.values() if v), default=1)
    edges = [2**i for i in range(int(math.ceil(math.log2(mx + 1))) + 1)]
    if edges[-1] <= mx:
        edges.append(edges[-1] * 2)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), squeeze=False, sharex=True, sharey=True)
    for ax, (method, sizes) in zip(axes[0], sizes_by_method.items()):
        ax.hist(sizes, bins=edges, color="#4477aa", edgecolor="white", linewidth=0.5)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.7)
        singles = sum(1 for x in sizes if x == 1)
        ax.set_title(f"{method}: k={len(sizes)}, max {max(sizes) if sizes else 0}, {singles} singletons", fontsize=9)
        ax.set_xlabel("cluster size (codes)")
    axes[0][0].set_ylabel("clusters")
    fig.tight_layout()
    return save_fig(fig, path)


def plot_curves(
    curves: dict[str, dict],
    key: str,
    section: str,
    ylabel: str,
    path: Path,
    extra: tuple[str, str] | None = None,
    primary: str | None = None,
) -> Path | None:
    """``key`` of ``section`` against step, one line per variant (``extra``: a second key, dashed); None: no data."""
    plt = plt_agg()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    drawn = False
    for i, (variant, c) in enumerate(curves.items()):
        part = c.get(section, {})
        xs, ys = part.get("step", []), part.get(key, [])
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None and isinstance(y, (int, float)) and math.isfinite(y)]
        color = f"C{i}"
        if pts:
            ax.plot(
                *zip(*pts),
                label=variant if not extra else f"{variant}: {primary or ylabel}",
                color=color,
                marker="o" if section == "eval" else None,
                markersize=3,
            )
            drawn = True
        if extra:
            ys2 = part.get(extra[0], [])
            pts2 = [(x, y) for x, y in zip(xs, ys2) if isinstance(y, (int, float)) and math.isfinite(y)]
            if pts2:
                ax.plot(*zip(*pts2), label=f"{variant}: {extra[1]}", color=color, linestyle="--")
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_fig(fig, path)
