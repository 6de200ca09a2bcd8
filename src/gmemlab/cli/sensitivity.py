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

from ..checks import U64_MAX
from ..errors import UsageError
from ..sim import plot
from ..sim.costs import load_cost_table
from ..sim.run import check_policy
from ..sim.sensitivity import FIGURE_NAMES, FIGURES, Sensitivity, sensitivity
from ..workload.scenario import load_scenario
from .common import Col, fit_table, styled, versioned
from .scenarios import complete_scenario
from .sim import SEED_HELP, PolicyChoice


def tables(result: Sensitivity, top: int) -> list[Table]:
    a, b = result.policies
    out = []
    for fig in FIGURES:
        va, vb = result.values[fig]
        flips = result.flips(fig)
        rows = []
        for s in [*flips, *[s for s in result.swings[fig] if s.flip_at is None]][:top]:
            flip = f"yes, at {s.flip_at:.3g}x" if s.flip_at is not None else "no"
            rows.append((s.row, s.operation, f"{s.low:.3g}", f"{s.high:.3g}",
                         styled(flip, "red") if s.flip_at is not None else flip))
        out.append(fit_table([Col("row", "id"), Col("operation"), Col(f"{a}/{b} at {result.factors[0]:g}x", "num"),
                              Col(f"at {result.factors[1]:g}x", "num"), Col("flips", "id")], rows,
                             title=f"{FIGURE_NAMES[fig]}: {a} {va:.4g} vs {b} {vb:.4g} ({a}/{b} = "
                             f"{result.base[fig]:.3g}); {len(flips)} assumed weight(s) flip it within "
                             f"{result.factors[0]:g}x-{result.factors[1]:g}x", drop_empty=False))
    return out


def register(app: typer.Typer) -> None:
    @app.command("sensitivity")
    def sensitivity_cmd(
        scenario: str = typer.Argument(..., help="A built-in scenario name or a TOML file.",
                                       autocompletion=complete_scenario),
        policy: list[PolicyChoice] = typer.Option([], "--policy", help="Two policies to compare (A, then B); "
                                                  "default eager, deferred."),
        set_: list[str] = typer.Option([], "--set", help="Override a scenario parameter (repeatable)."),
        seed: int = typer.Option(0, "--seed", min=0, max=U64_MAX, help=SEED_HELP),
        costs: str | None = typer.Option(None, "--costs", help="TOML file overriding cost-table rows."),
        low: float = typer.Option(0.1, "--min", help="Smallest factor applied to each assumed weight."),
        high: float = typer.Option(10.0, "--max", help="Largest factor applied to each assumed weight."),
        top: int = typer.Option(12, "--top", min=1, max=10_000, help="Rows per table and plot panel."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON only."),
        plot_path: str | None = typer.Option(None, "--plot", help="Write a tornado plot to this file (.png, .svg "
                                             "or .pdf; after the results are printed)."),
    ) -> None:
        """Vary every assumed cost weight (0.1x-10x) and show which could flip the comparison of two policies."""
        if not policy:
            policy = [PolicyChoice("eager"), PolicyChoice("deferred")]  # as compare does
        if len(policy) != 2:
            raise UsageError(f"--policy: give exactly two policies to compare, got {len(policy)}")
        policy = [str(p) for p in policy]
        for p in policy:
            check_policy(p)
        if not (low > 0 and high > low) or low != low or high != high or high == float("inf"):
            raise UsageError(f"--min {low:g} --max {high:g}: need 0 < min < max, both finite")
        if plot_path is not None:
            plot.check_plot_path(plot_path)  # before any work
        load_scenario(scenario, set_)  # one-line errors before any work
        result = sensitivity(scenario, policy, set_, seed, load_cost_table(costs) if costs else None, (low, high))
        if as_json:
            typer.echo(json.dumps(versioned(result.as_json()), indent=2))
            if plot_path is not None:
                plot.write_tornado(result, plot_path, top)
            return
        console = Console(highlight=False)
        console.print(f"{result.title}: {policy[0]} vs {policy[1]}", markup=False)
        for t in tables(result, top):
            console.print(t)
        if plot_path is not None:
            plot.write_tornado(result, plot_path, top)  # after the results: a failed plot loses none of them
            console.print(f"tornado plot written to {plot_path}", markup=False)
