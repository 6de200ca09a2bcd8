"""Reports of simulated runs: rich tables and a PNG (DESIGN.md "Metrics a user expects", workloads.md §4).

* :func:`metrics_table` -- the metrics of one or more runs, one column per policy (``gmemlab compare``
  puts the policies side by side);
* :func:`time_table` -- modelled time by category (§4), per policy;
* :func:`cost_rows_table` -- the cost rows a run used: weight, its source/assumption tag and basis, the
  count and the time, so every modelled second can be traced to a row of §4;
* :func:`write_plot` -- a PNG with, per policy, stage-2 bytes per level over the simulated timeline and
  splits/merges over it, and below a grouped bar chart of the modelled-time breakdown (log scale).
  Drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from ..errors import UsageError
from .costs import CATEGORIES
from .run import RunResult

LEVELS = ("4K", "2M", "1G")


def human_bytes(n: int) -> str:
    """``1.50 GiB``, ``64.0 MiB``, ``4 KiB``, ``0``."""
    if not n:
        return "0"
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            value = n / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.2f} {unit}"
    return f"{n} B"


def human_seconds(s: float) -> str:
    if s == 0:
        return "0"
    if s >= 1:
        return f"{s:,.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.3f} µs"


def _metric_rows(result: RunResult) -> list[tuple[str, str]]:
    m = result.metrics
    rows: list[tuple[str, str]] = []
    for size in ("1G", "2M"):
        rows.append((f"splits {size}", f"{m['splits'][size]:,}"))
    for size in ("1G", "2M"):
        rows.append((f"merges {size}", f"{m['merges'][size]:,}"))
    for level in LEVELS:
        rows.append((f"stage-2 mapped at {level}", human_bytes(m["stage2_bytes"][level])))
    for level in LEVELS:
        rows.append((f"host mapped at {level}", human_bytes(m["host_map_bytes"][level])))
    rows += [
        ("conversions ok", f"{m['conversions']['ok']:,}"),
        ("conversions EAGAIN", f"{m['conversions']['eagain']:,}"),
        ("userspace exits", f"{m['userspace_exits']:,}"),
        ("guest faults", f"{m['guest_faults']:,}"),
        ("stage-2 zaps", f"{m['zaps']:,}"),
        ("TLB flushes", f"{m['tlb_flushes']:,}"),
        ("tracking: ranges", f"{m['tracking']['ranges']:,}"),
        ("tracking: per-page entries", f"{m['tracking']['per_page_entries']:,}"),
        ("vmemmap (split HugeTLB)", human_bytes(m["vmemmap_bytes"])),
        ("modelled time total", human_seconds(result.modelled_total_s)),
    ]
    return rows


def metrics_table(results: Sequence[RunResult], title: str = "") -> Table:
    """One row per metric, one column per run (policy)."""
    first = results[0]
    table = Table(title=title or f"{first.scenario.name} (seed {first.seed})",
                  caption="mapped: at guest stop; counts: whole run")
    table.add_column("metric")
    for r in results:
        table.add_column(r.policy, justify="right")
    columns = [_metric_rows(r) for r in results]
    for i, (name, _) in enumerate(columns[0]):
        table.add_row(name, *(col[i][1] for col in columns))
    return table


def time_table(results: Sequence[RunResult]) -> Table:
    """Modelled time (§4) by category, one column per run."""
    table = Table(title="Modelled time (§4)",
                  caption="tlb: incl. §4.1 translation cost")
    table.add_column("category")
    for r in results:
        table.add_column(r.policy, justify="right")
    for cat in CATEGORIES:
        values = [r.metrics["modelled_time_s"].get(cat, 0.0) for r in results]
        if any(values):
            table.add_row(cat, *(human_seconds(v) for v in values))
    table.add_row("total", *(human_seconds(r.modelled_total_s) for r in results), style="bold")
    return table


def cost_rows_table(result: RunResult) -> Table:
    """The §4 rows a run used: weight with its tag and basis, the count, the modelled time."""
    table = Table(title=f"Cost rows used ({result.costs.source})")
    table.add_column("row", no_wrap=True)
    table.add_column("operation", max_width=40, no_wrap=True, overflow="ellipsis")
    table.add_column("weight µs", justify="right", no_wrap=True)
    table.add_column("tag", no_wrap=True)
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("basis", max_width=34, no_wrap=True, overflow="ellipsis")
    pricing = result.costs.pricing()
    vcpus = result.scenario.vcpus
    by_row: dict[str, int] = {}
    for name, count in result.counters.items():
        row = pricing.get(name)
        if row is not None:
            by_row[row.id] = by_row.get(row.id, 0) + count
    for row in result.costs.rows:
        if row.id not in by_row:
            continue
        weight = f"{row.weight:g}" + (f" + {row.per_vcpu:g}/vCPU" if row.per_vcpu else "")
        table.add_row(row.id, row.operation, weight, row.tag, f"{by_row[row.id]:,}",
                      human_seconds(row.cost(vcpus) * by_row[row.id] / 1e6), row.basis)
    return table


def summary_line(result: RunResult) -> str:
    events = sum(result.events.values())
    return (f"{result.scenario.name}: policy {result.policy}, seed {result.seed}, {events:,} events "
            f"simulated in {result.wall_s:.2f} s")


def check_plot_path(path: str) -> Path:
    """The ``--plot`` target, or a one-line :class:`UsageError` when it cannot be written."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise UsageError(f"--plot {path}: is a directory")
    if not parent.is_dir():
        raise UsageError(f"--plot {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"--plot {path}: not writable")
    return target


def write_plot(results: Sequence[RunResult], path: str) -> Path:
    """Write the PNG described in the module docstring; returns the path."""
    target = check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig = plt.figure(figsize=(13, 3.2 * n + 3.8), layout="constrained")
    grid = fig.add_gridspec(n + 1, 2, height_ratios=[1.0] * n + [1.2])
    colors = {"4K": "#d62728", "2M": "#ff7f0e", "1G": "#2ca02c"}
    for i, r in enumerate(results):
        samples = r.samples
        xs = [s.modelled_s for s in samples]  # the timeline is the run's own modelled time
        ax = fig.add_subplot(grid[i, 0])
        ys = [[s.stage2_bytes[lv] / (1 << 30) for s in samples] for lv in LEVELS]
        ax.stackplot(xs, *ys, labels=[f"{lv} leaves" for lv in LEVELS], colors=[colors[lv] for lv in LEVELS],
                     alpha=0.85, step="post")
        ax.set_title(f"{r.policy}: stage-2 mapped, by leaf level")
        ax.set_ylabel("GiB")
        ax.legend(loc="center left", fontsize=8)
        ax2 = fig.add_subplot(grid[i, 1])
        for kind, style in (("splits", "-"), ("merges", "--")):
            for size in ("1G", "2M"):
                values = [getattr(s, kind)[size] for s in samples]
                if any(values):
                    ax2.plot(xs, values, style, label=f"{kind} {size}", drawstyle="steps-post")
        ax2.set_title(f"{r.policy}: folio splits and merges (cumulative)")
        ax2.set_ylabel("folios")
        if ax2.get_legend_handles_labels()[0]:
            ax2.legend(loc="center left", fontsize=8)
        else:
            ax2.text(0.5, 0.5, "none", transform=ax2.transAxes, ha="center", va="center")
        for axis in (ax, ax2):
            axis.set_xlabel("modelled time (s)", fontsize=8)
            for s, x in zip(samples, xs, strict=True):
                if not s.label.startswith("t=") and s.label != "end":
                    axis.axvline(x, color="grey", lw=0.6, ls=":")
                    axis.text(x, 1.0, f" {s.label}", transform=axis.get_xaxis_transform(), fontsize=7,
                              rotation=90, va="top", ha="left", color="dimgrey")
    ax3 = fig.add_subplot(grid[n, :])
    cats = [c for c in CATEGORIES if any(r.metrics["modelled_time_s"].get(c, 0) for r in results)]
    width = 0.8 / max(n, 1)
    for i, r in enumerate(results):
        values = [r.metrics["modelled_time_s"].get(c, 0.0) for c in cats]
        ax3.bar([j + i * width for j in range(len(cats))], values, width, label=r.policy)
    ax3.set_xticks([j + width * (n - 1) / 2 for j in range(len(cats))], cats)
    ax3.set_yscale("log")
    ax3.set_ylabel("modelled seconds (log)")
    ax3.set_title("Modelled time by category (workloads.md §4)")
    ax3.legend()
    first = results[0]
    fig.suptitle(f"{first.scenario.name} (seed {first.seed})")
    try:
        fig.savefig(target, format="png", dpi=90)
    except OSError as exc:
        raise UsageError(f"--plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return target


def as_json(results: Sequence[RunResult]) -> Any:
    """One object for a single run, a list for a comparison."""
    return results[0].as_json() if len(results) == 1 else [r.as_json() for r in results]
