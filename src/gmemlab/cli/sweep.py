"""``gmemlab sweep``: run a parameter study of simulator runs into a Parquet dataset (issue 12).

* ``gmemlab sweep --list`` lists the built-in sweeps;
* ``gmemlab sweep SWEEP [--out DIR] [--workers N] [--dask | --scheduler tcp://HOST:PORT] [--retry-failed]
  [--dry-run] [--json]`` expands SWEEP (a built-in name or a TOML file, see :mod:`gmemlab.sweep.spec`),
  validates every run with the simulator, skips runs already in DIR (``results/<name>`` by default), and runs
  the rest on local worker processes (default: one per core), a Dask ``LocalCluster`` (``--dask``) or a Dask
  cluster (``--scheduler``), with a progress bar on stderr. Each finished batch is one Parquet file in DIR.

Exit status: 0 when every run finished (failed runs are rows with their error, counted in the summary), 2 on bad
input (nothing runs), 3 when interrupted (every finished run is kept; the same command resumes).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..errors import UsageError
from ..workload.units import format_bytes
from .common import ExitCode, fitted, versioned

if TYPE_CHECKING:
    from ..sweep.executors import Executor
    from ..sweep.runner import Stats
    from ..sweep.spec import SweepSpec

# pyarrow, Dask and DuckDB load when a sweep runs, not when any gmemlab command (or a shell completion) starts.


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def make_executor(workers: int | None, dask: bool, scheduler: str | None) -> Executor:
    from ..sweep.executors import DaskExecutor, LocalExecutor

    if scheduler:
        return DaskExecutor(scheduler=scheduler, workers=workers)
    if dask:
        return DaskExecutor(workers=workers or default_workers())
    return LocalExecutor(workers or default_workers())


def _axes_text(spec: SweepSpec) -> str:
    parts = [f"{len(g[0].values)} {'/'.join(a.key for a in g)}" for g in spec.axes]
    return " x ".join([*parts, f"{len(spec.seeds)} seeds"])


def _complete_sweep(incomplete: str) -> list[str]:
    """Shell completion: built-in sweep names (files complete as files)."""
    from ..sweep.spec import builtin_names

    return [n for n in builtin_names() if n.startswith(incomplete)]


def _list(as_json: bool) -> None:
    from ..sweep.spec import builtin_names, load_sweep

    specs = [load_sweep(name) for name in builtin_names()]
    if as_json:
        typer.echo(json.dumps([{"name": s.name, "runs": s.runs, "axes": _axes_text(s), "description": s.description}
                               for s in specs], indent=2))
        return
    table = Table(title="Built-in sweeps (gmemlab sweep NAME)")
    for col in ("name", "runs", "axes", "description"):
        table.add_column(col, justify="right" if col == "runs" else "left")
    for s in specs:
        table.add_row(escape(s.name), f"{s.runs:,}", escape(_axes_text(s)), escape(s.description))
    Console().print(fitted(table))


def _summary(spec: SweepSpec, out: Path, stats: Stats, interrupted: bool, executor: str) -> dict[str, Any]:
    from ..sweep.dataset import Dataset

    size = Dataset(out).size_bytes()
    runs_in_folder = stats.skipped + stats.done
    return {
        "sweep": spec.name, "folder": str(out), "executor": executor, "runs": spec.runs, "ran": stats.done,
        "failed": stats.failed, "skipped": stats.skipped, "duplicates": stats.duplicates,
        "interrupted": interrupted, "elapsed_s": round(stats.elapsed, 3), "rate_per_s": round(stats.rate, 3),
        "run_seconds": round(stats.run_seconds, 3), "batches": stats.batches, "bytes": size,
        "bytes_per_run": round(size / runs_in_folder) if runs_in_folder else None,
    }


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    def sweep_cmd(
        sweep: str | None = typer.Argument(None, help="A built-in sweep name (see --list) or a sweep TOML file.",
                                           autocompletion=_complete_sweep),
        list_: bool = typer.Option(False, "--list", help="List the built-in sweeps and exit."),
        out: str | None = typer.Option(None, "--out", "-o", help="Results folder. Default: results/<sweep name>."),
        workers: int | None = typer.Option(None, "--workers", "-j", min=1, max=4096,
                                           help="Worker processes (local or --dask). Default: one per core."),
        dask: bool = typer.Option(False, "--dask", help="Run on a Dask LocalCluster of --workers processes."),
        scheduler: str | None = typer.Option(None, "--scheduler",
                                             help="Run on a Dask cluster: its scheduler's tcp://HOST:PORT."),
        retry_failed: bool = typer.Option(False, "--retry-failed",
                                          help="Run again the runs that failed before (default: skip them)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Validate and count the runs; run nothing."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON only."),
    ) -> None:
        """Run a parameter study: grid/zip over scenarios, --set keys, policies, profiles, seeds, cost rows;
        results as a Parquet dataset (query it with `gmemlab results`)."""
        if list_:
            if sweep:
                raise UsageError("--list takes no SWEEP")
            _list(as_json)
            return
        if not sweep:
            raise UsageError("give a SWEEP (a built-in name or a TOML file), or --list")
        if scheduler and dask:
            raise UsageError("--dask starts a local cluster, --scheduler uses a running one: give one of them")
        from ..sweep.dataset import Dataset
        from ..sweep.runner import run_tasks
        from ..sweep.spec import load_sweep
        from ..sweep.tasks import expand

        spec = load_sweep(sweep)
        tasks = expand(spec)
        folder = Path(out) if out else Path("results") / spec.name
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--out {folder}: exists and is not a folder (results are a folder of Parquet files)")
        executor = make_executor(workers, dask, scheduler)
        err = Console(stderr=True)
        if dry_run:
            present = Dataset(folder).present() if folder.is_dir() else set()
            todo = sum(t.input_hash not in present for t in tasks)
            info = {"sweep": spec.name, "runs": spec.runs, "axes": _axes_text(spec), "to_run": todo,
                    "already_in_folder": spec.runs - todo, "folder": str(folder), "executor": executor.name}
            typer.echo(json.dumps(versioned(info), indent=2) if as_json else
                       f"{spec.name}: {spec.runs:,} runs ({_axes_text(spec)}); {todo:,} to run, "
                       f"{spec.runs - todo:,} already in {folder}; executor: {executor.name}")
            return
        todo = len({t.input_hash for t in tasks} - Dataset(folder).present(ok_only=retry_failed))
        err.print(f"[bold]{escape(spec.name)}[/]: {spec.runs:,} runs ({escape(_axes_text(spec))}), {todo:,} to run "
                  f"on {escape(executor.name)} -> {escape(str(folder))}", highlight=False)
        if todo:
            executor.start()  # before the folder is made: a scheduler that cannot be reached leaves nothing
        try:
            ds = Dataset(folder).open()
        except UsageError:
            if todo:
                executor.stop()
            raise
        with ds:
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("failed {task.fields[failed]}"), TextColumn("{task.fields[rate]} runs/s"),
                          TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False,
                          disable=not err.is_terminal) as progress:
                bar = progress.add_task(escape(spec.name), total=None, failed=0, rate="-")

                def show(stats: Stats) -> None:
                    progress.update(bar, total=stats.total, completed=stats.done, failed=stats.failed,
                                    rate=f"{stats.rate:.1f}")

                outcome = run_tasks(tasks, executor, dataset=ds, retry_failed=retry_failed, on_progress=show,
                                    started=bool(todo))
            if not outcome.interrupted:
                ds.consolidate(ds.batch_files())
        summary = _summary(spec, folder, outcome.stats, outcome.interrupted, executor.name)
        if as_json:
            typer.echo(json.dumps(versioned(summary), indent=2))
        else:
            s = outcome.stats
            line = (f"{spec.name}: {s.done:,} runs in {s.elapsed:.1f} s ({s.rate:.1f} runs/s), {s.failed:,} failed, "
                    f"{s.skipped:,} already in the folder; {folder}: {format_bytes(summary['bytes'])}")
            if summary["bytes_per_run"]:
                line += f" ({format_bytes(summary['bytes_per_run'])} per run)"
            typer.echo(line)
            if s.failed:
                typer.echo(f"errors: gmemlab results {folder} --sql \"SELECT error, count(*) AS runs FROM runs "
                           "WHERE status <> 'ok' GROUP BY error\"")
        if outcome.interrupted:
            print(f"gmemlab: interrupted: {outcome.stats.done:,} finished runs kept in {folder}; run the same "
                  "command to resume", file=sys.stderr)
            raise typer.Exit(ExitCode.INCOMPLETE)
