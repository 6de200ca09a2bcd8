"""Tables of simulated runs (DESIGN.md "Metrics a user expects", workloads.md §4): what ``gmemlab run`` and
``gmemlab compare`` print. The PNG is :mod:`gmemlab.sim.plot`.

* :func:`metrics_table` -- the metrics of one or more runs, one column per policy;
* :func:`time_table` -- the three time results (boot critical path, CPU time by category, data-plane
  overhead), never summed, each with the share that comes from ``assumed`` cost rows;
* :func:`cost_rows_table` -- the cost rows a run used: weight, tag (and what a derived row is derived
  from), count and CPU time, so every modelled second can be traced to a row of §4;
* :func:`flow_table` -- runs in different conversion flows or kernels (:mod:`gmemlab.sim.flow`) side by side:
  host memory footprint, conversions, bytes copied, modelled time, and every cost row whose CPU time differs,
  with its tag.
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
        table.add_column(escape(r.label), justify="right")
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
        table.add_column(escape(r.label), justify="right")
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


def flow_table(results: Sequence[RunResult]) -> Table:
    """Runs side by side by conversion flow (:mod:`gmemlab.sim.flow`): what each kernel and flow costs in host
    memory, conversions, copies and modelled time, then the cost rows behind any difference in CPU time."""
    table = Table(title=escape(f"Conversion flows side by side: {results[0].scenario.name} (seed {results[0].seed})"),
                  caption="footprint: guest_memfd folios + the per-VM flow's resident anonymous shared copy; "
                  "peak: highest at a phase mark or runtime second", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("", ratio=1, overflow="fold")
    for r in results:
        table.add_column(escape(r.label), justify="right", overflow="fold")
    ms = [r.metrics for r in results]
    rows: list[tuple[str, list[str]]] = [
        ("conversion ioctl", [r.flow.ioctl or "none" for r in results]),
        ("host memory peak", [human_bytes(m["footprint"]["peak_bytes"]) for m in ms]),
        ("  at guest stop: guest_memfd", [human_bytes(m["footprint"]["gmem_bytes"]) for m in ms]),
        ("  at guest stop: shared copy", [human_bytes(m["footprint"]["shared_copy_bytes"]) for m in ms]),
        ("conversions (state changed)", [f"{m['conversions']['ok'] + m['attribute_changes']:,}" for m in ms]),
        ("conversions refused (EAGAIN)", [f"{m['conversions']['eagain']:,}" for m in ms]),
        ("bytes copied by kvm_gmem_populate", [human_bytes(m["copied_bytes"]) for m in ms]),
    ]
    for name, cells in rows:
        table.add_row(escape(name), *(escape(c) for c in cells))
    table.add_section()
    times = [r.times for r in results]
    table.add_row("boot critical path (wall)", *(with_share(t.boot) for t in times), style="bold")
    table.add_row("CPU time, whole lifecycle", *(with_share(t.cpu) for t in times), style="bold")
    costs = results[0].costs
    used = sorted({rid for t in times for rid in t.cpu_by_row}, key=lambda rid: [r.id for r in costs.rows].index(rid))
    differ = [rid for rid in used if len({round(t.cpu_by_row.get(rid, 0.0), 9) for t in times}) > 1]
    if differ:
        table.add_section()
        table.add_row("[dim]cost rows whose CPU time differs (row, tag: operation)[/]", *("" for _ in results))
    for rid in differ:
        row = costs.row(rid)
        tag = row.tag + (" (assumed)" if costs.is_assumed(row) and row.tag != "assumed" else "")
        table.add_row(escape(f"  {rid} {tag}: {row.operation}"),
                      *(human_seconds(t.cpu_by_row.get(rid, 0.0)) for t in times))
    return table


def flow_changes(results: Sequence[RunResult]) -> list[str]:
    """One line per run whose flow changed the scenario: what it changed, and why."""
    return [f"{r.label}: " + "; ".join(r.flow.changes) for r in results if r.flow.changes]
