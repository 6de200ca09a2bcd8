"""``gmemlab results DIR``: look at a sweep's Parquet dataset (issue 12).

* ``gmemlab results DIR`` -- an overview: runs per sweep, failures, files, bytes per run, column groups;
* ``gmemlab results DIR --sql "SELECT ..." [--json | --csv]`` -- DuckDB SQL over the views ``runs`` (one row
  per input hash) and ``all_runs``; a table, a JSON list of objects, or CSV;
* ``gmemlab results DIR --plot FILE --x COL --y COL [--hue COL] [--facet COL] [--where SQL]`` -- mean and 95%
  interval over seeds, PNG/SVG/PDF by extension (see :mod:`gmemlab.sweep.plot`). Columns may be named by a
  unique tail: ``--x guest_mem --y splits_1G``.

Bad input (no such folder, a SQL error, an unknown column) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import csv
import json
import sys
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import UsageError
from .common import fitted

if TYPE_CHECKING:
    from ..sweep import query

# DuckDB and matplotlib load when the command runs, not when any gmemlab command (or a completion) starts.


def _cell(value: Any) -> str:
    from ..sweep import query

    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(query.plain(value))


def _print_table(result: query.Result) -> None:
    from ..sweep import query

    table = Table(show_lines=False)
    for name, typ in zip(result.columns, result.types, strict=True):
        table.add_column(escape(name), justify="right" if query.is_numeric(typ) else "left", overflow="fold")
    for row in result.rows:
        table.add_row(*(escape(_cell(v)) for v in row))
    console = Console()
    console.print(fitted(table))
    console.print(f"{len(result.rows):,} rows", highlight=False)


def _print_overview(info: dict[str, Any]) -> None:
    console = Console()
    from ..workload.units import format_bytes  # one way to print sizes (as `gmemlab sweep` does)

    per_run = f" ({format_bytes(info['bytes_per_run'])} per run)" if info["bytes_per_run"] else ""
    files = f"{info['files']} file{'s' if info['files'] != 1 else ''}"
    console.print(f"{escape(info['folder'])}: {info['runs']:,} runs in {files}, "
                  f"{format_bytes(info['bytes'])}{per_run}; {info['columns']} columns", highlight=False)
    table = Table(title="Runs per sweep")
    for col in ("sweep", "runs", "ok", "failed", "median wall s"):
        table.add_column(col, justify="left" if col == "sweep" else "right")
    for s in info["sweeps"]:
        med = "" if s["median_wall_s"] is None else f"{s['median_wall_s']:.3f}"
        table.add_row(escape(str(s["sweep"])), f"{s['runs']:,}", f"{s['ok']:,}", f"{s['failed']:,}", med)
    console.print(fitted(table))
    groups = ", ".join(f"{escape(k)} ({v})" for k, v in info["column_groups"].items())
    console.print(f"column groups: {groups}", highlight=False)
    for err in info["top_errors"]:
        console.print(f"  {err['runs']:,} x {escape(str(err['error']))}", highlight=False)
    console.print('query: gmemlab results DIR --sql "SELECT policy, avg(\\"time.cpu.s\\") FROM runs GROUP BY policy"'
                  '  (quote dotted column names; DESCRIBE runs lists them)', highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("results")
    def results_cmd(
        folder: str = typer.Argument(..., help="A results folder written by `gmemlab sweep`."),
        sql: str | None = typer.Option(None, "--sql", help="DuckDB SQL over the views runs and all_runs."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON (the query's rows, or the overview)."),
        as_csv: bool = typer.Option(False, "--csv", help="Print the query's rows as CSV."),
        plot: str | None = typer.Option(None, "--plot", help="Write a plot to FILE (.png, .svg or .pdf)."),
        x: str | None = typer.Option(None, "--x", help="Plot: the column on the x axis (e.g. guest_mem)."),
        y: str | None = typer.Option(None, "--y", help="Plot: the metric (e.g. splits_1G), mean over seeds."),
        hue: str | None = typer.Option(None, "--hue", help="Plot: one line per value of this column."),
        facet: str | None = typer.Option(None, "--facet", help="Plot: one panel per value of this column."),
        where: str | None = typer.Option(None, "--where", help="Plot: keep the runs matching this SQL condition."),
    ) -> None:
        """Query and plot a sweep's results (DuckDB SQL; plots with mean and 95% interval over seeds)."""
        from ..sweep import query
        from ..sweep.plot import plot as draw

        if as_json and as_csv:
            raise UsageError("--json and --csv: choose one output format")
        if plot is None and any(v is not None for v in (x, y, hue, facet, where)):
            raise UsageError("--x, --y, --hue, --facet and --where go with --plot FILE")
        if plot is not None and sql is not None:
            raise UsageError("--sql and --plot: one at a time")
        if as_csv and sql is None:
            raise UsageError("--csv prints the rows of a --sql query")
        if plot is not None:
            if not x or not y:
                raise UsageError("--plot needs --x and --y")
            summary = draw(folder, plot, x, y, hue, facet, where)
            points = sum(len(p) for p in summary.series.values())
            info: dict[str, Any] = {"plot": str(summary.path), "x": summary.x, "y": summary.y, "hue": summary.hue,
                                    "facet": summary.facet, "points": points,
                                    "failed_left_out": summary.failed_left_out}
            if as_json:
                info["series"] = [{"facet": query.plain(f), "hue": query.plain(h),
                                   "points": [{"x": query.plain(p.x), "mean": p.mean, "low": p.low, "high": p.high,
                                               "n": p.n} for p in pts]}
                                  for (f, h), pts in summary.series.items()]
                typer.echo(json.dumps(info, indent=2))
            else:
                left = f"; {summary.failed_left_out} failed runs left out" if summary.failed_left_out else ""
                typer.echo(f"plot written to {summary.path}: {summary.y} against {summary.x}, {points} points{left}")
            return
        if sql is None:
            info = query.overview(folder)
            if as_json:
                typer.echo(json.dumps(info, indent=2))
            else:
                _print_overview(info)
            return
        result = query.sql(folder, sql)
        if as_json:
            typer.echo(json.dumps([{c: query.plain(v) for c, v in zip(result.columns, row, strict=True)}
                                   for row in result.rows], indent=2))
        elif as_csv:
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(result.columns)
            for row in result.rows:
                writer.writerow(["" if v is None else query.plain(v) for v in row])
        else:
            _print_table(result)
