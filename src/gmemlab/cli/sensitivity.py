"""``gmemlab sensitivity SCENARIO --policy A --policy B``: which assumed weights could flip the comparison.

Runs the scenario under both policies once, then varies every ``assumed`` cost weight from ``--min`` to
``--max`` times its value (default 0.1x-10x), one at a time, and prints for each time result (boot critical
path, CPU time, data-plane overhead) the ratio A/B at both ends, sorted by how far it moves, and the factor
at which the faster policy changes. ``--plot FILE`` writes a tornado plot, ``--json`` the result.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from ..errors import UsageError
from ..sim import plot
from ..sim.costs import load_cost_table
from ..sim.run import check_policy
from ..sim.sensitivity import FIGURE_NAMES, FIGURES, Sensitivity, sensitivity
from ..workload.scenario import load_scenario


def tables(result: Sensitivity, top: int) -> list[Table]:
    a, b = result.policies
    out = []
    for fig in FIGURES:
        va, vb = result.values[fig]
        flips = result.flips(fig)
        t = Table(title=f"{FIGURE_NAMES[fig]}: {a} {va:.4g} vs {b} {vb:.4g} ({a}/{b} = {result.base[fig]:.3g}); "
                  f"{len(flips)} assumed weight(s) flip it within {result.factors[0]:g}x-{result.factors[1]:g}x")
        for col in ("row", "operation", f"{a}/{b} at {result.factors[0]:g}x", f"at {result.factors[1]:g}x", "flips"):
            t.add_column(col)
        for s in [*flips, *[s for s in result.swings[fig] if s.flip_at is None]][:top]:
            t.add_row(s.row, s.operation, f"{s.low:.3g}", f"{s.high:.3g}",
                      f"yes, at {s.flip_at:.3g}x" if s.flip_at is not None else "no",
                      style="red" if s.flip_at is not None else None)
        out.append(t)
    return out


def register(app: typer.Typer) -> None:
    @app.command("sensitivity")
    def sensitivity_cmd(
        scenario: str = typer.Argument(..., help="A built-in scenario name or a TOML file."),
        policy: list[str] = typer.Option([], "--policy", help="Two policies to compare (A, then B)."),
        set_: list[str] = typer.Option([], "--set", help="Override a scenario parameter (repeatable)."),
        seed: int = typer.Option(0, "--seed"),
        costs: str | None = typer.Option(None, "--costs", help="TOML file overriding cost-table rows."),
        low: float = typer.Option(0.1, "--min", help="Smallest factor applied to each assumed weight."),
        high: float = typer.Option(10.0, "--max", help="Largest factor applied to each assumed weight."),
        top: int = typer.Option(12, "--top", min=1, help="Rows per table and plot panel."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON only."),
        plot_path: str | None = typer.Option(None, "--plot", help="Write a tornado plot (PNG) to this file."),
    ) -> None:
        """Vary every assumed cost weight (0.1x-10x) and show which could flip the comparison of two policies."""
        if len(policy) != 2:
            raise UsageError(f"--policy: give exactly two policies to compare, got {len(policy)}")
        for p in policy:
            check_policy(p)
        if not (low > 0 and high > low) or low != low or high != high or high == float("inf"):
            raise UsageError(f"--min {low:g} --max {high:g}: need 0 < min < max, both finite")
        if plot_path:
            plot.check_plot_path(plot_path)
        load_scenario(scenario, set_)  # one-line errors before any work
        result = sensitivity(scenario, policy, set_, seed, load_cost_table(costs) if costs else None, (low, high))
        if plot_path:
            plot.write_tornado(result, plot_path, top)
        if as_json:
            typer.echo(json.dumps(result.as_json(), indent=2))
            return
        console = Console(width=max(Console().width, 140))
        console.print(f"{result.title}: {policy[0]} vs {policy[1]}", highlight=False)
        for t in tables(result, top):
            console.print(t)
        if plot_path:
            console.print(f"tornado plot written to {plot_path}", highlight=False)
