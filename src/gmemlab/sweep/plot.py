"""Plots of a results folder: a metric against an input, seeds aggregated as mean and 95% interval.

``plot(root, "out.svg", x="guest_mem", y="splits_1G", hue="policy", facet="scenario")`` draws one line per
``hue`` value in one panel per ``facet`` value; each point is the mean over the runs that differ only in their
seed, with the 95% confidence interval of that mean (Student's t, n-1 degrees of freedom) as a band. A point
must not mix runs that differ in another input (scenario, policy, a swept ``set.``/``cost.`` key): that is an
error naming the input, to be added as ``--hue``/``--facet`` or fixed with ``--where``. Failed runs are left out
and counted. The format follows the file's extension (PNG, SVG or PDF); the file is written atomically.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..output import PLOT_FORMATS, check_output, save_figure
from .query import INPUT_COLUMNS, INPUT_PREFIXES, columns, connect, is_numeric, quote, resolve

FORMATS = PLOT_FORMATS

# Student's t, two-sided 95% (0.975 quantile), for 1..30 degrees of freedom (standard tables).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (table to 30, then the Cornish-Fisher
    expansion around the normal quantile, within 1e-3 of the exact value)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass
class Point:
    x: Any
    mean: float
    low: float
    high: float
    n: int


@dataclass
class PlotSummary:
    path: Path
    x: str
    y: str
    hue: str | None
    facet: str | None
    series: dict[tuple[Any, Any], list[Point]] = field(default_factory=dict)  # (facet, hue) -> points
    failed_left_out: int = 0


def check_path(path: str) -> tuple[Path, str]:
    """``path`` and its format (the extension); an empty name, an unknown extension or a missing folder is a
    UsageError."""
    return check_output(path, "--plot", FORMATS)


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t interval of the mean (low = high = mean for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _natural(value: Any) -> Any:
    if isinstance(value, str):
        return (1, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", value)])
    return (0, value)


def collect(root: str | Path, x: str, y: str, hue: str | None = None, facet: str | None = None,
            where: str | None = None) -> PlotSummary:
    """Resolve the columns, check that no other input varies within a point, and aggregate the seeds."""
    con = connect(root)
    try:
        known = columns(con)
        names = list(known)
        xc, yc = resolve(x, names, "--x"), resolve(y, names, "--y")
        hc = resolve(hue, names, "--hue") if hue else None
        fc = resolve(facet, names, "--facet") if facet else None
        if not is_numeric(known[yc]):
            raise UsageError(f"--y {y}: column {yc} holds {known[yc]}, not numbers")
        keys = [c for c in (fc, hc, xc) if c]
        cond = f"status = 'ok' AND {quote(yc)} IS NOT NULL" + (f" AND ({where})" if where else "")
        import duckdb

        try:
            _check_inputs(con, names, keys, cond)
            rows = con.execute(f"SELECT {', '.join(quote(k) for k in keys)}, {quote(yc)} FROM runs WHERE {cond}"
                               ).fetchall()
            failed = con.execute("SELECT count(*) FROM runs WHERE status <> 'ok'" + (f" AND ({where})" if where
                                                                                   else "")).fetchone()
        except duckdb.Error as exc:
            raise UsageError(f"--where: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
    if not rows:
        raise UsageError(f"no successful run has a value for {yc}" + (f" where {where}" if where else ""))
    groups: dict[tuple[Any, Any, Any], list[float]] = {}
    for row in rows:
        values = dict(zip(keys, row[:-1], strict=True))
        point = (values[fc] if fc else None, values[hc] if hc else None, values[xc])
        groups.setdefault(point, []).append(float(row[-1]))
    summary = PlotSummary(Path(), xc, yc, hc, fc, failed_left_out=int(failed[0]) if failed else 0)
    for (fv, hv, xv) in sorted(groups, key=lambda k: tuple(_natural(v) for v in k)):
        mean, low, high = interval(groups[(fv, hv, xv)])
        summary.series.setdefault((fv, hv), []).append(Point(xv, mean, low, high, len(groups[(fv, hv, xv)])))
    return summary


def _check_inputs(con: Any, names: Sequence[str], keys: Sequence[str], cond: str) -> None:
    inputs = [c for c in names if (c in INPUT_COLUMNS or c.startswith(INPUT_PREFIXES)) and c not in keys]
    if not inputs:
        return
    group = ", ".join(quote(k) for k in keys)
    counts = ", ".join(f"max(n{i})" for i in range(len(inputs)))
    inner = ", ".join(f"count(DISTINCT {quote(c)}) AS n{i}" for i, c in enumerate(inputs))
    maxima = con.execute(f"SELECT {counts} FROM (SELECT {inner} FROM runs WHERE {cond} GROUP BY {group})").fetchone()
    for column, most in zip(inputs, maxima or (), strict=False):
        if most and most > 1:
            raise UsageError(f"{column} takes {most} values within one plotted point; add --hue {column} or "
                             f"--facet {column}, or keep one with --where")


def _size_label(value: float) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if value >= 1 << shift:
            v = value / (1 << shift)
            return f"{v:g}{unit}" if v == int(v) else f"{v:.3g}{unit}"
    return f"{value:g}B"


def _is_size(column: str) -> bool:
    tail = column.rsplit(".", 1)[-1]
    return tail in ("guest_mem", "size", "chunk", "unit", "page") or tail.endswith(("_bytes", "_mem"))


def plot(root: str | Path, path: str, x: str, y: str, hue: str | None = None, facet: str | None = None,
         where: str | None = None) -> PlotSummary:
    """Draw the plot to ``path`` (format by extension) and return what it shows."""
    target, _fmt = check_path(path)
    summary = collect(root, x, y, hue, facet, where)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullLocator

    facets = list(dict.fromkeys(f for f, _ in summary.series))
    cols = min(3, len(facets))
    rows = math.ceil(len(facets) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    numeric_x = all(isinstance(p.x, int | float) and not isinstance(p.x, bool)
                    for pts in summary.series.values() for p in pts)
    positions: dict[Any, int] = {}
    if not numeric_x:
        for pts in summary.series.values():
            for p in pts:
                positions.setdefault(p.x, len(positions))
    for i, fv in enumerate(facets):
        ax = axes[i // cols][i % cols]
        for (f2, hv), pts in summary.series.items():
            if f2 != fv:
                continue
            xs = [p.x if numeric_x else positions[p.x] for p in pts]
            line = ax.plot(xs, [p.mean for p in pts], marker="o", markersize=3,
                           label=str(hv) if summary.hue else None)[0]
            ax.fill_between(xs, [p.low for p in pts], [p.high for p in pts], color=line.get_color(), alpha=0.2,
                            linewidth=0)
        if numeric_x:
            xs_all = sorted({p.x for (f2, _), pts in summary.series.items() if f2 == fv for p in pts})
            size = _is_size(summary.x)
            if xs_all[0] > 0 and xs_all[-1] / xs_all[0] >= (4 if size else 100):
                ax.set_xscale("log", base=2 if size else 10)
            if len(xs_all) <= 12:  # ticks at the values swept
                ax.set_xticks(xs_all)
                ax.xaxis.set_minor_locator(NullLocator())
            label = _size_label if size else (lambda v: f"{v:g}")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos, f=label: f(v)))
        else:
            ax.set_xticks(range(len(positions)), [str(k) for k in positions], rotation=30, ha="right")
        ax.set_xlabel(summary.x)
        ax.set_ylabel(summary.y)
        if summary.facet:
            ax.set_title(f"{summary.facet} = {fv}", fontsize=9)
        ax.grid(True, alpha=0.3)
        if summary.hue:
            ax.legend(title=summary.hue, fontsize=8, title_fontsize=8)
    for j in range(len(facets), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    n = sorted({p.n for pts in summary.series.values() for p in pts})
    seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
    note = f"; {summary.failed_left_out} failed runs left out" if summary.failed_left_out else ""
    fig.suptitle(f"{summary.y}: mean and 95% interval over {seeds} seeds per point{note}", fontsize=10)
    fig.tight_layout()
    try:
        save_figure(fig, target, "--plot", dpi=120)
    finally:
        plt.close(fig)
    summary.path = target
    return summary
