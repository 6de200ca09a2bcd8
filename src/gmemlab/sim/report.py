"""Tables of simulated runs (DESIGN.md "Metrics a user expects", workloads.md §4): what ``gmemlab run`` and
``gmemlab compare`` print. The PNG is :mod:`gmemlab.sim.plot`.

* :func:`metrics_table` -- the metrics of one or more runs, one column per policy;
* :func:`time_table` -- the three time results (boot critical path, CPU time by category, data-plane
  overhead), never summed, each with the share that comes from ``assumed`` cost rows;
* :func:`cost_rows_table` -- the cost rows a run used: weight, tag (and what a derived row is derived
  from), count and CPU time, so every modelled second can be traced to a row of §4.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.markup import escape
from rich.table import Table

from ..level import HUGE_LEVELS, LEVELS
from ..workload.units import format_bytes
from .costs import CATEGORIES
from .run import RunResult
from .timing import Figure


def human_bytes(n: int) -> str:
    """``1.50 GiB``, ``64 MiB``, ``4 KiB``, ``0`` (:func:`gmemlab.workload.units.format_bytes`)."""
    return format_bytes(n)


def human_seconds(s: float) -> str:
    if s == 0:
        return "0"
    if s >= 1:
        return f"{s:,.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.3f} µs"


def with_share(fig: Figure, text: str | None = None) -> str:
    """``12.345 s (71% assumed)``."""
    base = text if text is not None else human_seconds(fig.seconds)
    return f"{base} ({fig.assumed_share:.0%} assumed)" if fig.seconds else base


def _metric_rows(result: RunResult) -> list[tuple[str, str]]:
    m = result.metrics
    rows: list[tuple[str, str]] = []
    for kind in ("splits", "merges"):
        rows += [(f"{kind} {lv.label}", f"{m[kind][lv.label]:,}") for lv in HUGE_LEVELS]
    for key, what in (("stage2_bytes", "stage-2"), ("host_map_bytes", "host")):
        rows += [(f"{what} mapped at {lv.label}", human_bytes(m[key][lv.label])) for lv in LEVELS]
    rows += [
        ("shared memory", human_bytes(m["shared_bytes"])),
        ("conversions ok", f"{m['conversions']['ok']:,}"),
        ("conversions EAGAIN", f"{m['conversions']['eagain']:,}"),
        ("userspace exits", f"{m['userspace_exits']:,}"),
        ("guest faults", f"{m['guest_faults']:,}"),
        ("stage-2 zaps", f"{m['zaps']:,}"),
        ("TLB flushes", f"{m['tlb_flushes']:,}"),
        ("tracking: ranges", f"{m['tracking']['ranges']:,}"),
        ("tracking: per-page entries", f"{m['tracking']['per_page_entries']:,}"),
        ("vmemmap (split HugeTLB)", human_bytes(m["vmemmap_bytes"])),
        ("vmemmap peak", human_bytes(m["vmemmap_peak_bytes"])),
        ("filemap xarray (split folios)", human_bytes(m["filemap_xarray_bytes"])),
    ]
    return rows


def metrics_table(results: Sequence[RunResult], title: str = "") -> Table:
    """One row per metric, one column per run (policy)."""
    first = results[0]
    table = Table(title=escape(title or f"{first.title} (seed {first.seed})"),
                  caption="mapped and shared: at guest stop; counts: whole run")
    table.add_column("metric")
    for r in results:
        table.add_column(escape(r.policy), justify="right")
    columns = [_metric_rows(r) for r in results]
    for i, (name, _) in enumerate(columns[0]):
        table.add_row(name, *(col[i][1] for col in columns))
    return table


def time_table(results: Sequence[RunResult]) -> Table:
    """The three time results, one column per run; never summed."""
    table = Table(title="Modelled time: three results, never summed (workloads.md §4)",
                  caption="(x% assumed): share of the figure priced by cost rows that are, or derive from, "
                  "assumed weights")
    table.add_column("result")
    for r in results:
        table.add_column(escape(r.policy), justify="right")
    times = [r.times for r in results]
    table.add_row("boot critical path (wall)", *(with_share(t.boot) for t in times), style="bold")
    for i, seg in enumerate(times[0].segments):
        cells = []
        for t in times:
            s = t.segments[i]
            cpus = f"{s.cpus} CPU{'s' if s.cpus > 1 else ''}"
            cells.append(escape(f"{human_seconds(s.wall.seconds)} [{s.bound}, {cpus}]"))
        table.add_row(f"  {seg.name}", *cells)
    table.add_section()
    table.add_row("CPU time, whole lifecycle", *(with_share(t.cpu) for t in times), style="bold")
    for cat in CATEGORIES:
        figs = [t.cpu_by_category[cat] for t in times]
        if any(f.seconds for f in figs):
            table.add_row(f"  {cat}", *(with_share(f) for f in figs))
    table.add_section()
    table.add_row("data-plane overhead per s of guest work",
                  *(with_share(t.dataplane, f"{t.dataplane.seconds:.2%}") for t in times), style="bold")
    for lv in LEVELS:
        table.add_row(f"  accesses on {lv.label} leaves",
                      *(f"{t.level_shares.get(lv.label, 0.0):.1%}" for t in times))
    return table


def cost_rows_table(result: RunResult) -> Table:
    """The §4 rows a run used: weight with its tag and basis, the count, the CPU time."""
    costs = result.costs
    # Fits the terminal (80 columns readable): numbers keep their width; the operation with its tag and basis
    # below it takes the rest and wraps at spaces (nothing is cut off).
    table = Table(title=escape(f"Cost rows used ({costs.source})"), box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("row", no_wrap=True)
    table.add_column("weight µs", justify="right", no_wrap=True)
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("CPU time", justify="right", no_wrap=True)
    table.add_column("operation (tag: basis)", ratio=1, overflow="fold")
    pricing = costs.pricing()
    by_row: dict[str, int] = {}
    for name, count in result.counters.items():
        row = pricing.get(name)
        if row is not None:
            by_row[row.id] = by_row.get(row.id, 0) + count
    cpu = result.times.cpu_by_row
    for row in costs.rows:
        if row.id not in by_row or row.kind != "cpu":
            continue
        w, p = costs.weights(row)
        weight = f"{w:g}" + (f" + {p:g}/vCPU" if p else "")
        tag = row.tag + (f" from {', '.join(costs.derived_from(row))}" if row.of else "")
        if costs.is_assumed(row) and row.tag != "assumed":
            tag += " (assumed)"
        about = escape(row.operation) + "\n[dim]" + escape(f"{tag}: {row.basis}" if row.basis else tag) + "[/]"
        table.add_row(escape(row.id), weight, f"{by_row[row.id]:,}", human_seconds(cpu.get(row.id, 0.0)), about)
    return table


def summary_line(result: RunResult) -> str:
    events = sum(result.events.values())
    return (f"{result.title}: policy {result.policy}, seed {result.seed}, {events:,} events "
            f"simulated in {result.wall_s:.2f} s")
