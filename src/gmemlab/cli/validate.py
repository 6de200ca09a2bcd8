"""``gmemlab validate``: the simulator against every published figure (workloads.md §5.8, linux-7.md §4).

Prints one row per figure: published value, simulated value, ratio, status and source, and which cost rows
(if any) take their weight from the figure's own source. Exit status 1 when a check is outside 2x; ``--json``
prints the rows as a JSON list; ``--costs FILE`` validates another cost table.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..sim.calibration import CHECKED, Row, validate
from ..sim.costs import SOURCES, load_cost_table
from .common import Col, ExitCode, fit_table, styled


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        return f"{value / (1 << 20):,.0f} MiB" if value >= 100 << 20 else f"{value:,.0f} B"
    if unit in ("splits", "merges", "cycles"):
        return f"{value:,.0f} {unit}"
    return f"{value:,.3g} {unit}"


def _status(row: Row) -> str:
    if row.figure.status in CHECKED:
        return ("within 2x" if row.ok else "OUTSIDE 2x") + (" (lower bound)" if row.figure.status == "bound" else "")
    return row.figure.status


def table(rows: list[Row]) -> Table:
    cells = []
    for r in rows:
        f = r.figure
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        style = "red" if r.ok is False else ("green" if r.ok else "dim")
        shared = ", ".join(f"row {x}" for x in r.shared_rows) or "-"
        cells.append((f.id, f.quantity, _fmt(f.published, f.unit), _fmt(r.simulated, f.unit), ratio,
                      styled(_status(r), style), f.source, shared))
    return fit_table([Col("id", "id"), Col("quantity", ratio=2), Col("published", "num"), Col("simulated", "num"),
                      Col("ratio", "num"), Col("status"), Col("source"), Col("shares its source")], cells,
                     title="gmemlab validate: published figures vs the simulator (docs/calibration.md)",
                     caption="check: must be within 2x; input: the figure a weight or rule comes from (circular to "
                     "check); not reproducible: needs what the model lacks (see note)")


def print_blocks(console: Console, rows: list[Row]) -> None:
    """Narrow terminals: one block per figure (its id beside it, the details indented under the quantity)."""
    console.print("gmemlab validate: published figures vs the simulator (docs/calibration.md); check: within 2x",
                  style="bold")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    for r in rows:
        f = r.figure
        ratio = "" if r.ratio is None else f", ratio {r.ratio:.2f}"
        style = "red" if r.ok is False else ("green" if r.ok else "dim")
        shared = ", ".join(f"row {x}" for x in r.shared_rows) or "no cost row"
        grid.add_row(f.id, Text.assemble(
            f.quantity, "\n", f"published {_fmt(f.published, f.unit)}, simulated {_fmt(r.simulated, f.unit)}"
            f"{ratio}: ", (_status(r), style), f"; source {f.source} (shared by {shared})"))
    console.print(grid)


def register(app: typer.Typer) -> None:
    @app.command("validate")
    def validate_cmd(
        costs: str | None = typer.Option(None, "--costs", help="TOML file overriding cost-table rows."),
        as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON only."),
        notes: bool = typer.Option(True, "--notes/--no-notes", help="Print each figure's note and run."),
    ) -> None:
        """Reproduce every published figure and show published, simulated, ratio and source."""
        rows = validate(load_cost_table(costs) if costs else None)
        if as_json:
            typer.echo(json.dumps([r.as_json() for r in rows], indent=2))
        else:
            console = Console(highlight=False)
            if console.width >= 140:
                console.print(table(rows))
            else:  # narrow terminals: one block per figure instead of eight squeezed columns
                print_blocks(console, rows)
            if notes:
                for r in rows:
                    setup = f" [{r.figure.setup}]" if r.figure.setup else ""
                    console.print(f"{r.figure.id}: {r.figure.note}{setup}", highlight=False, markup=False)
                for key in sorted({r.figure.source for r in rows}):
                    console.print(f"{key}: {SOURCES[key]}", highlight=False, markup=False)
        failed = [r.figure.id for r in rows if r.ok is False]
        if failed:
            if not as_json:
                Console(stderr=True).print(f"outside 2x: {', '.join(failed)}", highlight=False)
            raise typer.Exit(ExitCode.FAILED)
