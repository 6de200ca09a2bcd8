"""``gmemlab run`` and ``gmemlab compare``: simulate a scenario under guest_memfd policies (workloads.md §5).

* ``gmemlab run SCENARIO [--policy P] [--set K=V]... [--seed N] [--costs FILE] [--json] [--plot FILE]``
  runs one scenario (a built-in name or a TOML file) under one policy (default: the scenario's own) and
  prints the metrics, the modelled time by category and the cost rows behind it;
* ``gmemlab compare SCENARIO --policy P1 --policy P2 ... [same options]`` runs it under each policy and
  puts them side by side (a progress bar on stderr while it runs, when stderr is a terminal);
* ``--profile`` (kernel model) and ``--flow in-place|per-vm`` (how the VMM converts, :mod:`gmemlab.sim.flow`)
  pick the kernel and flow of a run (default: the scenario's); ``compare`` takes each more than once and runs
  every combination, e.g. ``gmemlab compare snp-inplace-launch-64g --flow in-place --flow per-vm`` (linux-7.4
  in place against linux-7.3's per-VM attributes), with a table of the flows side by side.

``--json`` prints the run's object (``compare``: a list of them, one per policy) and nothing else on stdout.
``--plot FILE`` writes a plot (PNG, SVG or PDF by FILE's extension; atomically, after the results are printed):
stage-2 bytes per level and splits/merges over the simulated timeline, and the
modelled-time breakdown. Policies are those :mod:`gmemlab.model.policy` registers. Bad input (unknown scenario
or policy, a bad ``--set``, an unwritable ``--plot`` path, a bad ``--costs`` file) is one line on stderr
and exit status 2.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .. import __version__
from ..checks import U64_MAX
from ..errors import UsageError
from ..model.policy import POLICIES
from ..sim import plot, report
from ..sim.costs import CostTable, load_cost_table
from ..sim.flow import FLOWS, check_flow, check_profile, flow_for
from ..sim.run import RunResult, check_policy, run_scenario
from ..uapi import PROFILES
from ..workload.scenario import load_scenario
from .common import ExitCode, choices, esc, fitted, positive_seconds
from .scenarios import complete_scenario

SET_HELP = "Override a scenario parameter with a dotted key, e.g. guest_mem=1GiB, accept.mode=eager (repeatable)."
POLICY_HELP = "guest_memfd split/merge policy (docs/hugepages.md)."
if TYPE_CHECKING:
    PolicyChoice = str
else:  # an enum at run time: typer shows, completes and checks the choices (with did-you-mean)
    PolicyChoice = choices("PolicyChoice", POLICIES)
if TYPE_CHECKING:
    ProfileChoice = str
    FlowChoice = str
else:
    ProfileChoice = choices("ProfileChoice", PROFILES)
    FlowChoice = choices("FlowChoice", FLOWS)
PROFILE_HELP = "Kernel profile to model (gmemlab profiles). Default: the scenario's (profile key, else rfc-v2)."
FLOW_HELP = ("How the VMM converts: in-place (one copy; KVM_SET_MEMORY_ATTRIBUTES2 on linux-7.4) or per-vm "
             "(two copies; KVM_SET_MEMORY_ATTRIBUTES + discard). Its kernel: --profile, else the scenario's "
             "if it has the flow, else linux-7.4 (in-place) or linux-7.3 (per-vm). Default: the kernel's own.")
TIME_LIMIT_HELP = "Stop after SECONDS (exit status 3, incomplete); a progress bar shows on a terminal."
PLOT_HELP = "Write a plot to this file: .png, .svg or .pdf (the extension picks the format)."
SEED_HELP = "Seed of the generator's random choices (0 to 2^64-1)."
COSTS_HELP = "TOML file overriding cost-table rows (tables rows.<id> with weight, per_vcpu, tag, basis)."


def _costs(path: str | None) -> CostTable | None:
    return load_cost_table(path) if path else None


class TimeLimit(Exception):
    """--time-limit passed during a run (raised from the engine's progress callback)."""


RunSpec = tuple[str | None, str | None, str | None]  # (policy, profile, flow); None: the scenario's


def _specs(policies: Sequence[str], profiles: Sequence[str], flows: Sequence[str]) -> list[RunSpec]:
    """Every (policy, profile, flow) combination asked for, each option checked (no repeats)."""
    for opt, values in (("--policy", policies), ("--profile", profiles), ("--flow", flows)):
        if len(set(values)) != len(values):
            raise UsageError(f"{opt}: given more than once: {', '.join(values)}")
    def each(values: Sequence[str]) -> list[str | None]:
        return list(values) or [None]

    return [(p, k, f) for p in each(policies) for k in each(profiles) for f in each(flows)]


def _run_all(scenario: str, specs: Sequence[RunSpec], sets: Sequence[str], seed: int, costs_file: str | None,
             plot_path: str | None, show_progress: bool, time_limit: float | None = None) -> list[RunResult]:
    """Validate everything first (one-line errors before any work), then run each (policy, profile, flow);
    past ``time_limit`` seconds the command stops with exit status 3 (incomplete)."""
    if time_limit is not None:
        time_limit = positive_seconds(time_limit, "--time-limit")
    deadline = None if time_limit is None else time.monotonic() + time_limit
    for policy_name, profile_name, flow_name in specs:
        if policy_name:
            check_policy(policy_name)
        if profile_name:
            check_profile(profile_name)
        if flow_name:
            check_flow(flow_name)
    if plot_path is not None:
        plot.check_plot_path(plot_path)  # before any work: an empty name or a bad extension is an error
    costs = _costs(costs_file)
    sc = load_scenario(scenario, sets)
    for _, profile_name, flow_name in specs:
        flow_for(sc, profile_name, flow_name)  # a kernel without the flow: refused before any work
    specs = list(specs) or [(None, None, None)]
    console = Console(stderr=True)
    results: list[RunResult] = []
    # Every policy replays the same event stream: once the first run has counted it, the bar has a total.
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[runs]}"),
                  TextColumn("{task.fields[events]} events"), TimeElapsedColumn(), console=console,
                  transient=True, disable=not (show_progress and console.is_terminal)) as progress:
        task = progress.add_task(esc(sc.name), total=None, runs="", events="0")
        done = 0
        for i, (policy_name, profile_name, flow_name) in enumerate(specs):
            name = policy_name or sc.policy
            what = " ".join(x for x in (profile_name, flow_name, name) if x)
            progress.update(task, description=esc(f"{sc.name} ({what})"), runs=f"run {i + 1}/{len(specs)}")

            def tick(n: int, base: int = done) -> None:
                progress.update(task, completed=base + n, events=f"{n:,}")
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeLimit

            try:
                result = run_scenario(sc, name, seed, costs, progress=tick, overrides=sets, profile=profile_name,
                                      flow=flow_name)
            except TimeLimit:
                progress.stop()
                print(f"gmemlab: incomplete: --time-limit {time_limit:g} s reached during the {what} run of "
                      f"{sc.name} ({len(results)} of {len(specs)} runs finished); nothing printed",
                      file=sys.stderr)
                raise typer.Exit(ExitCode.INCOMPLETE) from None
            results.append(result)
            done += sum(result.events.values())
            if i == 0:
                progress.update(task, total=done * len(specs))
            progress.update(task, completed=done)
    return results


def _json(result: RunResult) -> dict[str, object]:
    return {"gmemlab_version": __version__, **result.as_json()}


def _print(results: list[RunResult], as_json: bool, plot_path: str | None, listed: bool) -> None:
    """The results first, then the plot (written atomically): a plot that cannot be written loses no result."""
    if as_json:
        payload = [_json(r) for r in results] if listed else _json(results[0])
        typer.echo(json.dumps(payload, indent=2, allow_nan=False))
        if plot_path is not None:
            plot.write_plot(results, plot_path)
        return
    console = Console()
    for r in results:
        console.print(report.summary_line(r), highlight=False, markup=False)
    console.print(fitted(report.metrics_table(results)))
    console.print(fitted(report.time_table(results)))
    if len(results) == 1:
        console.print(fitted(report.cost_rows_table(results[0])))
    if len({r.flow for r in results}) > 1 or any(r.flow.linux for r in results):
        console.print(fitted(report.flow_table(results)))
        for line in report.flow_changes(results):
            console.print(f"flow changes, {line}", highlight=False, markup=False)
    unpriced = sorted({name for r in results for name in r.times.unpriced})
    if unpriced:
        console.print(f"counted, no cost row: {', '.join(unpriced)}", highlight=False, markup=False)
    if plot_path is not None:
        plot.write_plot(results, plot_path)
        console.print(f"plot written to {plot_path}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        scenario: str = typer.Argument(..., help="A built-in scenario name or a TOML file.",
                                       autocompletion=complete_scenario),
        policy: PolicyChoice | None = typer.Option(None, "--policy", help=POLICY_HELP + " Default: the scenario's."),
        profile: ProfileChoice | None = typer.Option(None, "--profile", help=PROFILE_HELP),
        flow: FlowChoice | None = typer.Option(None, "--flow", help=FLOW_HELP),
        set_: list[str] = typer.Option([], "--set", help=SET_HELP),
        seed: int = typer.Option(0, "--seed", min=0, max=U64_MAX, help=SEED_HELP),
        costs: str | None = typer.Option(None, "--costs", help=COSTS_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON only."),
        time_limit: float | None = typer.Option(None, "--time-limit", help=TIME_LIMIT_HELP),
        plot_path: str | None = typer.Option(None, "--plot", help=PLOT_HELP),
    ) -> None:
        """Simulate a scenario under one policy: metrics, modelled time by category, cost rows."""
        spec = (str(policy) if policy else None, str(profile) if profile else None, str(flow) if flow else None)
        results = _run_all(scenario, [spec], set_, seed, costs, plot_path, show_progress=True, time_limit=time_limit)
        _print(results, as_json, plot_path, listed=False)

    @app.command("compare")
    def compare_cmd(
        scenario: str = typer.Argument(..., help="A built-in scenario name or a TOML file.",
                                       autocompletion=complete_scenario),
        policy: list[PolicyChoice] = typer.Option([], "--policy",
                                                  help=POLICY_HELP + " Repeat; default eager, deferred "
                                                  "(the scenario's alone when --profile or --flow is given)."),
        profile: list[ProfileChoice] = typer.Option([], "--profile", help=PROFILE_HELP + " Repeat to compare kernels."),
        flow: list[FlowChoice] = typer.Option([], "--flow", help=FLOW_HELP + " Repeat to compare flows."),
        set_: list[str] = typer.Option([], "--set", help=SET_HELP),
        seed: int = typer.Option(0, "--seed", min=0, max=U64_MAX, help=SEED_HELP),
        costs: str | None = typer.Option(None, "--costs", help=COSTS_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per policy."),
        time_limit: float | None = typer.Option(None, "--time-limit", help=TIME_LIMIT_HELP),
        plot_path: str | None = typer.Option(None, "--plot", help=PLOT_HELP),
    ) -> None:
        """Simulate a scenario under several policies, kernels or flows and show them side by side."""
        profiles, flows = [str(p) for p in profile], [str(f) for f in flow]
        policies = [str(p) for p in policy] or ([] if profiles or flows else
                                                [p for p in ("eager", "deferred") if p in POLICIES])
        results = _run_all(scenario, _specs(policies, profiles, flows), set_, seed, costs, plot_path,
                           show_progress=True, time_limit=time_limit)
        _print(results, as_json, plot_path, listed=True)
