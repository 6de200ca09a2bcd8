"""``gmemlab scenarios``: list, describe and inspect simulator scenarios (workloads.md §5, §6).

* ``gmemlab scenarios`` (or ``gmemlab scenarios list``) lists the built-in scenarios;
* ``gmemlab scenarios describe NAME_OR_FILE [--set K=V]...`` shows the validated parameters and the
  derived counts (swiotlb size, accept chunks, expected exits);
* ``gmemlab scenarios events NAME_OR_FILE [--set K=V]... [--limit N] [--seed S]`` prints the first
  events of the generated stream and a count by event type;
* ``gmemlab scenarios export NAME [--out FILE]`` writes a built-in scenario's TOML as a starting file;
* ``gmemlab scenarios reference`` prints every key of the file format (``docs/scenario-reference.md``).

Each prints JSON instead with ``--json``. User text (names, descriptions, file paths) is escaped before rich
renders it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import __version__
from ..arch import generate
from ..checks import U64_MAX
from ..errors import UsageError
from ..output import atomic_write, check_output
from ..sim.run import params
from ..sim.summary import derived_counts
from ..workload.events import format_event, tally
from ..workload.scenario import Scenario, builtin_names, load_scenario
from ..workload.schema import Portion
from ..workload.units import format_level, format_size
from .common import Col, GmemlabGroup, fit_table, fitted, unknown

SET_HELP = "Override a parameter with a dotted key, e.g. guest_mem=1TiB, accept.mode=eager (repeatable)."
_SIZE_KEYS = {"guest_mem", "size", "gpa", "unit", "chunk", "align", "granule", "map_gpa_chunk"}
_LEVEL_KEYS = {"page", "psc_entry_size", "pvalidate_size", "private_max_level"}


def _format(key: str, value: Any) -> str:
    if isinstance(value, Portion):
        j = value.as_json()
        return j if isinstance(j, str) else f"{j:g} of guest_mem" if isinstance(j, float) else format_size(j)
    if value is None:
        return "auto" if key in ("size", "private_max_level") else "-"
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


def list_scenarios(console: Console, as_json: bool = False) -> None:
    scenarios = [load_scenario(name) for name in builtin_names()]
    if as_json:
        typer.echo(json.dumps([{"name": sc.name, "arch": sc.arch, "guest_mem": sc.guest_mem,
                                "description": sc.description} for sc in scenarios], indent=2))
        return
    table = fit_table([Col("name", "id", "bold"), Col("arch", "id"), Col("guest_mem", "num"), Col("description")],
                      [(sc.name, sc.arch, format_size(sc.guest_mem), sc.description) for sc in scenarios],
                      title="Built-in scenarios (workloads.md §5)")
    console.print(table)
    console.print("Describe one with: gmemlab scenarios describe NAME [--set key=value]; start your own with: "
                  "gmemlab scenarios export NAME --out my.toml", markup=False)


def describe(console: Console, sc: Scenario, as_json: bool = False, overrides: Sequence[str] = ()) -> None:
    derived = derived_counts(sc)
    if as_json:
        typer.echo(json.dumps({"gmemlab_version": __version__, "name": sc.name, "source": sc.source,
                               "overrides": list(overrides), "params": params(sc),
                               "derived": [{"quantity": r.quantity, "value": r.value, "derivation": r.derivation}
                                           for r in derived]}, indent=2))
        return
    console.print(fit_table([Col("parameter", "id"), Col("value")], flatten(sc),
                            title=f"{sc.name}: {sc.description}", caption=sc.source))
    console.print(fit_table([Col("quantity"), Col("value", "num"), Col("derivation")],
                            [(row.quantity, row.value, row.derivation) for row in derived],
                            title="Derived counts (workloads.md §6)"))


def show_events(console: Console, sc: Scenario, limit: int, seed: int) -> None:
    by_type: Counter[str] = Counter()
    for i, event in enumerate(generate(sc, seed)):
        by_type.update(tally((event,)))
        if i < limit:
            console.print(f"{i:>6}  {format_event(event)}", highlight=False, markup=False, soft_wrap=True)
    table = Table(title=escape(f"{sc.name}: events by type (seed {seed})"))
    table.add_column("event")
    table.add_column("count", justify="right")
    for name, count in sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(name, f"{count:,}")
    table.add_row("total", f"{sum(by_type.values()):,}", style="bold")
    console.print(fitted(table))
    console.print(f"userspace exits: {by_type['HcMapGpa']:,}", highlight=False)


def export(name: str, out: Path | None, force: bool) -> None:
    """A built-in scenario's file as shipped, with a header saying where it came from."""
    if name not in builtin_names():
        raise unknown("built-in scenario", name, builtin_names())
    if out is not None:
        check_output(out, "--out")
        if out.exists() and not force:
            raise UsageError(f"--out {out}: the file exists; pass --force to replace it")
    text = (resources.files("gmemlab") / "scenarios" / f"{name}.toml").read_text(encoding="utf-8")
    header = (f"# The built-in scenario {name!r} as shipped with gmemlab {__version__}: a starting file.\n"
              f"# Keys, types, units and defaults: docs/scenario-reference.md. Run it: gmemlab run FILE\n")
    if out is None:
        typer.echo(header + text, nl=False)
        return
    atomic_write(out, header + text, "--out")
    print(f"wrote {out}: edit it, then: gmemlab run {out}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    sub = typer.Typer(cls=GmemlabGroup, invoke_without_command=True, no_args_is_help=False,
                      help="Simulator scenarios: list, describe, inspect generated events, export a starting file.")

    @sub.callback()
    def scenarios(ctx: typer.Context,
                  as_json: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
        """List the built-in scenarios (also: gmemlab scenarios list)."""
        if ctx.invoked_subcommand is None:
            list_scenarios(Console(), as_json)

    @sub.command("list")
    def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
        """List the built-in scenarios."""
        list_scenarios(Console(), as_json)

    @sub.command("describe")
    def describe_cmd(
        scenario: str = typer.Argument(..., help="A built-in scenario name or a TOML file.",
                                       autocompletion=complete_scenario),
        set_: list[str] = typer.Option([], "--set", help=SET_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the parameters and counts as JSON."),
    ) -> None:
        """Show a scenario's validated parameters and its derived counts."""
        describe(Console(), load_scenario(scenario, set_), as_json, set_)

    @sub.command("events")
    def events_cmd(
        scenario: str = typer.Argument(..., help="A built-in scenario name or a TOML file.",
                                       autocompletion=complete_scenario),
        set_: list[str] = typer.Option([], "--set", help=SET_HELP),
        limit: int = typer.Option(40, "--limit", min=0, max=1_000_000_000, help="How many events to print."),
        seed: int = typer.Option(0, "--seed", min=0, max=U64_MAX, help="Seed of the generator's random choices."),
        as_json: bool = typer.Option(False, "--json", help="Print the first events and the counts as JSON."),
    ) -> None:
        """Print the first events of a scenario's stream and a count by event type."""
        sc = load_scenario(scenario, set_)
        if as_json:
            events_json(sc, limit, seed)
        else:
            show_events(Console(), sc, limit, seed)

    @sub.command("export")
    def export_cmd(
        name: str = typer.Argument(..., help="A built-in scenario name.", autocompletion=complete_scenario),
        out: Path | None = typer.Option(None, "--out", "-o", help="Write to this file (default: standard output)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
    ) -> None:
        """Write a built-in scenario's TOML as a starting file for your own scenario."""
        export(name, out, force)

    @sub.command("reference")
    def reference_cmd(
        out: Path | None = typer.Option(None, "--out", "-o", help="Write to this file (default: standard output)."),
    ) -> None:
        """Print the scenario file reference (every key: type, unit, default, meaning) as Markdown."""
        from ..workload.reference import markdown

        if out is None:
            typer.echo(markdown(), nl=False)
        else:
            check_output(out, "--out")
            atomic_write(out, markdown(), "--out")

    app.add_typer(sub, name="scenarios")


def complete_scenario(incomplete: str) -> list[str]:
    """Shell completion: built-in scenario names (files complete as files)."""
    return [n for n in builtin_names() if n.startswith(incomplete)]


def events_json(sc: Scenario, limit: int, seed: int) -> None:
    by_type: Counter[str] = Counter()
    first: list[str] = []
    for i, event in enumerate(generate(sc, seed)):
        by_type.update(tally((event,)))
        if i < limit:
            first.append(format_event(event))
    typer.echo(json.dumps({"gmemlab_version": __version__, "name": sc.name, "seed": seed, "events": first,
                           "by_type": dict(by_type),
                           "total": sum(by_type.values())}, indent=2))
