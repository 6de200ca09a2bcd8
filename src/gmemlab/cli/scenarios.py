"""``gmemlab scenarios``: list, describe and inspect simulator scenarios (workloads.md §5, §6).

* ``gmemlab scenarios`` lists the built-in scenarios;
* ``gmemlab scenarios describe NAME_OR_FILE [--set K=V]...`` shows the validated parameters and the
  derived counts (swiotlb size, accept chunks, expected exits);
* ``gmemlab scenarios events NAME_OR_FILE [--set K=V]... [--limit N] [--seed S]`` prints the first
  events of the generated stream and a count by event type.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ..arch import generate
from ..sim.summary import derived_counts
from ..workload.events import format_event
from ..workload.scenario import Scenario, builtin_names, load_scenario
from ..workload.schema import Portion
from ..workload.units import format_level, format_size

SET_HELP = "Override a parameter with a dotted key, e.g. guest_mem=1TiB, accept.mode=eager (repeatable)."
_SIZE_KEYS = {"guest_mem", "size", "gpa", "unit", "chunk", "align", "granule", "map_gpa_chunk"}
_LEVEL_KEYS = {"page", "psc_entry_size", "pvalidate_size", "private_max_level", "wants_mapping"}


def _format(key: str, value: Any) -> str:
    if isinstance(value, Portion):
        j = value.as_json()
        return j if isinstance(j, str) else f"{j:g} of guest_mem" if isinstance(j, float) else format_size(j)
    if value is None:
        return "auto" if key == "size" else "-"
    if isinstance(value, bool):
        return str(value).lower()
    if key in _SIZE_KEYS and isinstance(value, int):
        return f"{format_size(value)}" + (f" ({value:#x})" if key == "gpa" else "")
    if key in _LEVEL_KEYS and isinstance(value, int):
        return format_level(value)
    if key == "guest_try_levels":
        return ", ".join(format_level(v) for v in value)
    if key == "size_dist":
        return ", ".join(f"{format_size(s)}: {p:g}" for s, p in value)
    return str(value)


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, text) for every parameter of a scenario, in schema order."""
    rows: list[tuple[str, str]] = []
    for fld in dataclasses.fields(obj):
        if "spec" not in fld.metadata:
            continue
        value = getattr(obj, fld.name)
        key = f"{prefix}{fld.name}"
        if isinstance(value, Portion):
            rows.append((key, _format(fld.name, value)))
        elif dataclasses.is_dataclass(value):
            rows.extend(flatten(value, key + "."))
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                name = getattr(item, "name", "")
                sub = f"{key}.{name}." if fld.name == "shared_regions" else f"{key}[{i}]."
                rows.extend(flatten(item, sub))
        elif fld.name == "expect":
            rows.extend((f"{key}.{k}", v) for k, v in value)
        else:
            rows.append((key, _format(fld.name, value)))
    return rows


def list_scenarios(console: Console) -> None:
    table = Table(title="Built-in scenarios (workloads.md §5)")
    table.add_column("name", style="bold")
    table.add_column("arch")
    table.add_column("guest_mem", justify="right")
    table.add_column("description")
    for name in builtin_names():
        sc = load_scenario(name)
        table.add_row(name, sc.arch, format_size(sc.guest_mem), sc.description)
    console.print(table)
    console.print("Describe one with: gmemlab scenarios describe NAME [--set key=value]")


def describe(console: Console, sc: Scenario) -> None:
    params = Table(title=f"{sc.name}: {sc.description}", caption=sc.source)
    params.add_column("parameter")
    params.add_column("value")
    for key, text in flatten(sc):
        params.add_row(key, text)
    console.print(params)
    counts = Table(title="Derived counts (workloads.md §6)")
    counts.add_column("quantity")
    counts.add_column("value", justify="right")
    counts.add_column("derivation")
    for row in derived_counts(sc):
        counts.add_row(row.quantity, row.value, row.derivation)
    console.print(counts)


def show_events(console: Console, sc: Scenario, limit: int, seed: int) -> None:
    by_type: Counter[str] = Counter()
    exits = 0
    for i, event in enumerate(generate(sc, seed)):
        name = type(event).__name__
        by_type[name] += 1
        exits += name == "HcMapGpa"
        if i < limit:
            console.print(f"{i:>6}  {format_event(event)}", highlight=False, markup=False)
    table = Table(title=f"{sc.name}: events by type (seed {seed})")
    table.add_column("event")
    table.add_column("count", justify="right")
    for name, count in sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(name, f"{count:,}")
    table.add_row("total", f"{sum(by_type.values()):,}", style="bold")
    console.print(table)
    console.print(f"userspace exits: {exits:,}", highlight=False)


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="Simulator scenarios: list, describe, inspect generated events.",
                      invoke_without_command=True, no_args_is_help=False)
    console = Console()

    @sub.callback()
    def scenarios(ctx: typer.Context) -> None:
        """List the built-in scenarios."""
        if ctx.invoked_subcommand is None:
            list_scenarios(Console(width=max(console.width, 120)))

    @sub.command("describe")
    def describe_cmd(
        scenario: str = typer.Argument(..., help="A built-in scenario name or a TOML file."),
        set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    ) -> None:
        """Show a scenario's validated parameters and its derived counts."""
        describe(Console(width=max(console.width, 120)), load_scenario(scenario, set_))

    @sub.command("events")
    def events_cmd(
        scenario: str = typer.Argument(..., help="A built-in scenario name or a TOML file."),
        set_: list[str] = typer.Option([], "--set", help=SET_HELP),
        limit: int = typer.Option(40, "--limit", min=0, help="How many events to print."),
        seed: int = typer.Option(0, "--seed", help="Seed of the generator's random choices."),
    ) -> None:
        """Print the first events of a scenario's stream and a count by event type."""
        show_events(Console(width=max(console.width, 120)), load_scenario(scenario, set_), limit, seed)

    app.add_typer(sub, name="scenarios")
