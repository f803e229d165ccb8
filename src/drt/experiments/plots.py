"""Every figure drt draws: the report's Pareto plots and training curves (PNG bytes), and the analyses'
line panels (PCN spectra, k and overlap over training) and CKA heatmaps (PNG files).

Uses matplotlib's object API (no pyplot, no global state, no display needed); matplotlib is imported
inside the functions, so importing drt does not load it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from drt.analysis.cka_analysis import check_names

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn
    from matplotlib.figure import Figure

AXES = (("params_trainable", "trainable parameters", True),
        ("flops_effective", "effective forward FLOPs / sample", True),
        ("train_time", "measured training time (s)", False))


@dataclass(frozen=True)
class Point:
    """One method/budget: its table number, label, method, mean/std of test accuracy and of each cost."""

    number: int
    label: str
    method: str
    acc: tuple[float, float]
    costs: dict[str, tuple[float, float]]


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[bool]:
    """True where no other point has x <= and y >= with one strictly better (lower cost, higher accuracy)."""
    out = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        dominated = any(xj <= x and yj >= y and (xj < x or yj > y)
                        for j, (xj, yj) in enumerate(zip(xs, ys, strict=True)) if j != i)
        out.append(not dominated)
    return out


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _colours(methods: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(dict.fromkeys(methods))}


def pareto_png(points: Sequence[Point], title: str) -> bytes:
    """Test accuracy (%) against each cost in ``AXES``; error bars = std over seeds; front drawn as a step line."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(13, 4.2))
    colours = _colours([p.method for p in points])
    for ax, (key, name, log) in zip(fig.subplots(1, len(AXES)), AXES, strict=True):
        pts = [p for p in points if key in p.costs]
        xs = [p.costs[key][0] for p in pts]
        ys = [100 * p.acc[0] for p in pts]
        front = pareto_front(xs, ys)
        for p, x, y, on in zip(pts, xs, ys, front, strict=True):
            c = colours[p.method]
            ax.errorbar(x, y, xerr=p.costs[key][1] or None, yerr=100 * p.acc[1] or None, fmt="o", ms=7,
                        color=c, mfc=c if on else "white", mec=c, ecolor=c, elinewidth=1, capsize=2, zorder=3)
            ax.annotate(str(p.number), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        fx, fy = np.array(sorted((x, y) for x, y, on in zip(xs, ys, front, strict=True) if on)).reshape(-1, 2).T
        ax.step(fx, fy, where="post", color="black", lw=1.2, alpha=0.6, zorder=2)
        if log and xs and min(xs) > 0:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(name)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker="o", ls="", color=c, label=m) for m, c in colours.items()]
    handles.append(Line2D([], [], color="black", alpha=0.6, label="Pareto front (filled markers)"))
    rows = -(-len(handles) // 6)
    fig.subplots_adjust(bottom=0.16 + 0.06 * rows)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), bbox_to_anchor=(0.5, 0.0),
               frameon=False)
    fig.suptitle(title)
    return _png(fig)


def curves_png(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str, xlabel: str = "epoch",
               targets: Sequence[float] = ()) -> bytes:
    """Test accuracy per epoch (or against another x): one line per method/budget (mean over seeds), band = ± std.

    ``curves``: (label, x, accuracy of shape (seeds, epochs)) triples; ``targets``: accuracies drawn as dashed
    lines (the time-to-accuracy targets).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 4.2))
    ax = fig.subplots()
    for label, epochs, acc in curves:
        mean, std = 100 * acc.mean(0), 100 * acc.std(0)
        (line,) = ax.plot(epochs, mean, marker="o", ms=3, label=label)
        if acc.shape[0] > 1:
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    for t in targets:
        ax.axhline(100 * t, color="0.4", ls="--", lw=0.8)
    if xlabel == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(title)
    return _png(fig)


def line_panels(path: Path, panels: list[dict[str, Any]], title: str = "") -> Path:
    """PNG of side-by-side line panels: each {series: {label: (xs, ys)}, xlabel, ylabel, title, logx, logy,
    hlines, ylim, xint (integer x ticks)}. Matplotlib's Figure API (Agg), no pyplot state."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5.2 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, p in zip(axes, panels, strict=True):
        n = len(p["series"])
        colors = [colormaps["viridis"](i / max(n - 1, 1)) for i in range(n)] if n > 10 else [None] * n
        for (label, (xs, ys)), c in zip(p["series"].items(), colors, strict=True):
            ax.plot(xs, ys, marker="o" if len(xs) <= 12 else None, ms=3, lw=1.2, label=label, color=c)
        for y in p.get("hlines", ()):
            ax.axhline(y, ls="--", lw=0.8, color="grey")
        ax.set(xlabel=p["xlabel"], ylabel=p["ylabel"], title=p.get("title", ""))
        if p.get("logx"):
            ax.set_xscale("log")
        if p.get("logy"):
            ax.set_yscale("log")
        if p.get("xint"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if p.get("ylim"):
            ax.set_ylim(*p["ylim"])
        ax.grid(alpha=0.3)
        if n:
            ax.legend(fontsize=6 if n > 8 else 8, ncol=2 if n > 12 else 1)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110, format="png")
    return path


def cka_heatmap(
    matrix: Tensor,
    names_a: Sequence[str],
    names_b: Sequence[str] | None,
    path: str | Path,
    title: str = "Linear CKA",
) -> Path:
    """Write a PNG heatmap of ``matrix`` (rows ``names_a``, columns ``names_b``) to ``path``; returns it."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

    names_b = list(names_a if names_b is None else names_b)
    check_names(matrix, names_a, names_b)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    side = 2.5 + 0.35 * max(len(names_a), len(names_b))
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.subplots()
    m = matrix.detach().cpu().double().numpy()
    im = ax.imshow(m, vmin=min(0.0, float(m.min())), vmax=1.0, cmap="magma", origin="lower")
    ax.set_xticks(range(len(names_b)), names_b, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names_a)), names_a, fontsize=7)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="CKA")
    fig.savefig(path, dpi=120, format="png")
    return path
