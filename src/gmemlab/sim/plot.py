"""Plots of simulated runs (``gmemlab run/compare --plot``; PNG, SVG or PDF by extension), drawn with Agg.

Per policy: stage-2 bytes per leaf level and cumulative splits/merges over the simulated timeline (wall
time: the boot critical path, then runtime seconds). Below, the three time results side by side, never
summed: the boot critical path by segment, CPU time by category (log scale) and the data-plane overhead,
each with its assumed part hatched. The title names every ``--set`` override.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..level import HUGE_LEVELS, LEVELS, Level
from ..output import PLOT_FORMATS, check_output, save_figure
from .costs import CATEGORIES
from .run import RunResult
from .sensitivity import FIGURE_NAMES, FIGURES, Sensitivity

COLORS = {Level.PG_4K: "#d62728", Level.PG_2M: "#ff7f0e", Level.PG_1G: "#2ca02c"}


def check_plot_path(path: str) -> Path:
    """The ``--plot`` target, or a one-line :class:`UsageError` (empty name, folder, missing or unwritable
    folder, an extension other than .png/.svg/.pdf); checked before any simulation runs."""
    return check_output(path, "--plot", PLOT_FORMATS)[0]


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display), imported only when a plot is asked for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, target: Path) -> Path:
    """Write ``fig`` to ``target`` (the format follows the extension; atomic) and free it."""
    try:
        save_figure(fig, target, "--plot", dpi=90)
    finally:
        plt.close(fig)
    return target


def write_plot(results: Sequence[RunResult], path: str) -> Path:
    """Write the plot described in the module docstring; returns the path."""
    target = check_plot_path(path)
    plt = _pyplot()

    n = len(results)
    fig = plt.figure(figsize=(14, 3.0 * n + 4.2), layout="constrained")
    grid = fig.add_gridspec(n + 1, 3, height_ratios=[1.0] * n + [1.3])
    for i, r in enumerate(results):
        samples = r.samples
        xs = [s.wall_s for s in samples]
        ax = fig.add_subplot(grid[i, :2])
        ys = [[s.stage2_bytes[lv.label] / Level.PG_1G.bytes for s in samples] for lv in LEVELS]
        ax.stackplot(xs, *ys, labels=[f"{lv.label} leaves" for lv in LEVELS], colors=[COLORS[lv] for lv in LEVELS],
                     alpha=0.85, step="post")
        ax.set_title(f"{r.policy}: stage-2 mapped, by leaf level")
        ax.set_ylabel("GiB")
        ax.legend(loc="center left", fontsize=8)
        ax2 = fig.add_subplot(grid[i, 2])
        for kind, style in (("splits", "-"), ("merges", "--")):
            for lv in HUGE_LEVELS:
                values = [getattr(s, kind)[lv.label] for s in samples]
                if any(values):
                    ax2.plot(xs, values, style, label=f"{kind} {lv.label}", drawstyle="steps-post")
        ax2.set_title(f"{r.policy}: folio splits and merges")
        ax2.set_ylabel("folios (cumulative)")
        if ax2.get_legend_handles_labels()[0]:
            ax2.legend(loc="center left", fontsize=8)
        else:
            ax2.text(0.5, 0.5, "none", transform=ax2.transAxes, ha="center", va="center")
        for axis in (ax, ax2):
            axis.set_xlabel("simulated wall time (s): boot critical path, then runtime", fontsize=8)
            for s, x in zip(samples, xs, strict=True):
                if not s.label.startswith("t=") and s.label != "end":
                    axis.axvline(x, color="grey", lw=0.6, ls=":")
                    axis.text(x, 1.0, f" {s.label}", transform=axis.get_xaxis_transform(), fontsize=7,
                              rotation=90, va="top", ha="left", color="dimgrey")
    _time_panels(fig, grid, n, results)
    fig.suptitle(f"{results[0].title} (seed {results[0].seed})")
    return _save(plt, fig, target)


def _time_panels(fig, grid, n: int, results: Sequence[RunResult]) -> None:  # type: ignore[no-untyped-def]
    """The three time results, one panel each; the assumed part of every bar is hatched."""
    names = [r.policy for r in results]
    times = [r.times for r in results]
    ax = fig.add_subplot(grid[n, 0])
    bottoms = [0.0] * len(results)
    for j, seg in enumerate(times[0].segments):
        values = [t.segments[j].wall.seconds for t in times]
        ax.bar(names, values, bottom=bottoms, label=seg.name)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    for k, t in enumerate(times):
        ax.text(k, bottoms[k], f"{t.boot.seconds:.3g} s\n{t.boot.assumed_share:.0%} assumed", ha="center",
                va="bottom", fontsize=8)
    ax.set_title("boot critical path (wall)")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_ylim(0, max(bottoms) * 1.3 or 1)
    ax = fig.add_subplot(grid[n, 1])
    cats = [c for c in CATEGORIES if any(t.cpu_by_category[c].seconds for t in times)]
    width = 0.8 / max(len(results), 1)
    for i, t in enumerate(times):
        xs = [j + i * width for j in range(len(cats))]
        total = [t.cpu_by_category[c].seconds for c in cats]
        assumed = [t.cpu_by_category[c].assumed_s for c in cats]
        ax.bar(xs, total, width, label=f"{names[i]} ({t.cpu.seconds:.3g} s, {t.cpu.assumed_share:.0%} assumed)")
        ax.bar(xs, assumed, width, color="none", hatch="///", edgecolor="white", linewidth=0)
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(cats))], cats, rotation=30, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("CPU seconds (log); hatched: assumed")
    ax.set_title("CPU time by category, whole lifecycle")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[n, 2])
    values = [t.dataplane.seconds * 100 for t in times]
    ax.bar(names, values, hatch="///", edgecolor="white")
    for k, value in enumerate(values):
        ax.text(k, value, f"{value:.2f}%", ha="center", va="bottom", fontsize=8)
    share = max(t.dataplane.assumed_share for t in times)
    ax.set_title(f"translation overhead ({share:.0%} assumed)")
    ax.set_ylabel("% of guest work")
    ax.set_ylim(0, max(values) * 1.25 or 1)


def write_tornado(result: Sensitivity, path: str, top: int = 12) -> Path:
    """A tornado plot per time result: the ratio A/B as each assumed weight goes from its smallest to its
    largest factor (log scale), widest swing on top; a weight that moves the ratio across 1 (the faster
    policy changes) is drawn red, with the factor where it flips."""
    target = check_plot_path(path)
    plt = _pyplot()

    figs = [f for f in FIGURES if result.swings[f]]
    fig, axes = plt.subplots(1, len(figs), figsize=(6.2 * len(figs), 0.42 * top + 2.2), layout="constrained")
    a, b = result.policies
    lo_f, hi_f = result.factors
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    for ax, name in zip(axes if len(figs) > 1 else [axes], figs, strict=True):
        swings = [s for s in result.swings[name] if s.swing > 1e-9][:top][::-1]  # rows that move it
        for y, s in enumerate(swings):
            left, right = sorted((s.low, s.high))
            color = "#d62728" if s.flip_at is not None else "#1f77b4"
            ax.barh(y, right - left, left=left, color=color, alpha=0.8, height=0.6)
            ax.text(s.low, y, f"{lo_f:g}x", va="center", ha="right" if s.low <= s.high else "left", fontsize=6)
            ax.text(s.high, y, f"{hi_f:g}x", va="center", ha="left" if s.low <= s.high else "right", fontsize=6)
            if s.flip_at is not None:
                ax.text(1.0, y + 0.3, f"flips at {s.flip_at:.2g}x", fontsize=6, color=color, ha="center")
        ax.set_yticks(range(len(swings)), [f"{s.row}: {s.operation[:34]}" for s in swings], fontsize=7)
        ax.set_ylim(-0.5, max(len(swings), 6) - 0.5)
        ax.axvline(result.base[name], color="black", lw=1, label=f"base {result.base[name]:.3g}")
        ax.axvline(1.0, color="grey", ls="--", lw=1, label=f"{a} = {b}")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{a} / {b} ({FIGURE_NAMES[name]})")
        ax.set_title(f"{FIGURE_NAMES[name]}: {len(result.flips(name))} weight(s) flip it", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{result.title}: each assumed weight {lo_f:g}x-{hi_f:g}x, {a} vs {b}")
    return _save(plt, fig, target)
