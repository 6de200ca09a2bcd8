"""``gmemlab races``: check a locking protocol of the guest_memfd fault and conversion paths for races."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console

from ..checks import U64_MAX
from ..errors import UsageError
from ..races.explorer import Result, explore
from ..races.mutation import mutation_check
from ..races.properties import PROPERTIES
from ..races.protocols import BUILTIN, THREADS_HELP, Protocol, Setup, get_protocol, parse_threads, sweep_configs
from ..races.report import format_list, format_mutants, format_result
from ..races.world import PRIVATE, SHARED
from .common import ExitCode, esc, positive_seconds, rss_text, versioned

MAX_COUNT = 1 << 40  # states, schedules, preemptions: more than any run could reach


def _complete_protocol(incomplete: str) -> list[str]:
    return [name for name in BUILTIN if name.startswith(incomplete)]


HELP = "\n\n".join([
    "Explore the interleavings of guest_memfd kernel paths under a locking PROTOCOL and report the first "
    "violated property with a minimal interleaving (numbered steps per thread). Exit status: 0 every "
    "reachable state explored and no property violated; 1 a property is violated; 2 bad input; 3 incomplete: "
    "nothing violated in what was explored but the search was bounded (--max-states, --preemptions, --random, "
    "--time-limit) or interrupted.",
    "PROTOCOL is a built-in variant (linux-6.18, rfc-v2, rfc-v2-refcount, roth, roth-noread, linux-7.4, "
    "linux-7.4-norefcheck; see "
    "--list) or FILE.py:NAME naming a gmemlab.races.Protocol object in a Python file. Without PROTOCOL the "
    "list of protocols, paths and properties is printed.",
    f"--threads SPEC: {THREADS_HELP} Paths: guest_fault, host_fault, convert_private, convert_shared, "
    "punch_hole, populate, allocate (linux-7.4 also convert_roundtrip: shared then private). Without --threads the "
    "protocol's default configuration is used.",
    "Search: exhaustive breadth-first search with state caching by default (the reported trace is a "
    "shortest one). --random N runs N seeded random schedules instead and shrinks the violating one. "
    "--preemptions K bounds preemptions (switching away from a thread that could have continued). "
    "--time-limit SECONDS stops each search when the time is up. On a terminal, stderr shows the states "
    "explored, the rate and the process's memory as the search goes.",
    "--configs runs every documented configuration of the protocol (including the larger ones); "
    "--mutations runs the mutation check (each lock acquisition removed in turn); with --sweep both use "
    "every 2- and 3-thread single-page configuration (224) instead; --json prints machine-readable results.",
])


class Init(StrEnum):
    shared = SHARED
    private = PRIVATE


def races(
    protocol: Annotated[str | None, typer.Argument(help="protocol name or FILE.py:NAME", show_default=False,
                                                   autocompletion=_complete_protocol)] = None,
    threads: Annotated[str | None, typer.Option("--threads", "-t", help="threads, e.g. host_fault:0,convert_private:0",
                                                show_default=False)] = None,
    init: Annotated[Init | None, typer.Option(help="initial state of every index (default: the protocol's)",
                                              show_default=False)] = None,
    exhaustive: Annotated[bool, typer.Option("--exhaustive", help="exhaustive search (the default)")] = False,
    random_runs: Annotated[int | None, typer.Option("--random", help="N seeded random schedules", min=1,
                                                    max=MAX_COUNT, show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="seed for --random", min=0, max=U64_MAX)] = 0,
    preemptions: Annotated[int | None, typer.Option(help="preemption bound", min=0, max=MAX_COUNT,
                                                    show_default=False)] = None,
    max_states: Annotated[int | None, typer.Option(help="stop an exhaustive search after N states", min=1,
                                                   max=MAX_COUNT, show_default=False)] = None,
    time_limit: Annotated[float | None, typer.Option("--time-limit", help="stop each search after SECONDS "
                                                     "(incomplete: exit status 3)", show_default=False)] = None,
    configs: Annotated[bool, typer.Option("--configs", help="run every documented configuration")] = False,
    mutations: Annotated[bool, typer.Option("--mutations", help="run the mutation check")] = False,
    sweep: Annotated[bool, typer.Option("--sweep", help="with --configs/--mutations: every 2- and 3-thread "
                                                        "single-page configuration instead of the documented "
                                                        "ones")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    list_: Annotated[bool, typer.Option("--list", help="list protocols, paths and properties")] = False,
) -> None:
    if list_ or protocol is None:
        if any([threads, init, exhaustive, random_runs is not None, configs, mutations]):
            raise UsageError("races: name a PROTOCOL (see gmemlab races --list)")
        typer.echo(json.dumps(versioned(list_json()), indent=2) if as_json else format_list())
        return
    if exhaustive and random_runs is not None:
        raise UsageError("races: --exhaustive and --random are mutually exclusive")
    if time_limit is not None:
        time_limit = positive_seconds(time_limit, "--time-limit")
    proto = get_protocol(protocol)
    if sweep and not (configs or mutations):
        raise UsageError("races: --sweep goes with --configs or --mutations")
    chosen = sweep_configs(proto) if sweep else None
    if mutations:
        if threads or random_runs is not None or configs:
            raise UsageError("races: --mutations uses the documented configurations; drop --threads/--random")
        baseline, mutants = mutation_check(proto, chosen)
        if as_json:
            typer.echo(json.dumps(versioned({"protocol": proto.name, "baseline": [r.as_dict() for r in baseline],
                                             "mutants": [m.as_dict() for m in mutants]}), indent=2))
        else:
            typer.echo(format_mutants(proto, baseline, mutants))
        return
    search = Search(random_runs, seed, preemptions, max_states, time_limit, show=not as_json)
    if configs:
        if threads:
            raise UsageError("races: --configs runs the documented configurations; drop --threads")
        runs = [search.run(proto, c.threads, (init or c.init))
                for c in chosen or (*proto.configs, *proto.large) or (proto.default,)]
    else:
        default = proto.default
        spec = default.threads if threads is None else threads
        runs = [search.run(proto, spec, init or (default.init if threads is None else proto.default_init))]
    if as_json:
        payload = [r.as_dict() for r in runs]
        typer.echo(json.dumps(versioned(payload[0]) if len(payload) == 1 and not configs else payload, indent=2))
    else:
        typer.echo("\n\n".join(format_result(r, proto) for r in runs))
    if any(r.violation for r in runs):
        raise typer.Exit(ExitCode.FAILED)
    if not all(r.complete for r in runs):
        raise typer.Exit(ExitCode.INCOMPLETE)


class Search:
    """One search per configuration, with a progress line on stderr (a terminal only) and the time limit."""

    def __init__(self, random_runs: int | None, seed: int, preemptions: int | None, max_states: int | None,
                 time_limit: float | None, show: bool) -> None:
        self.random_runs, self.seed, self.preemptions = random_runs, seed, preemptions
        self.max_states, self.time_limit = max_states, time_limit
        self.console = Console(stderr=True)
        self.show = show and self.console.is_terminal

    def run(self, proto: Protocol, spec: str, init: str) -> Result:
        setup = Setup(proto, parse_threads(spec, proto), init)
        if not self.show:
            return explore(setup, random_runs=self.random_runs, seed=self.seed, preemption_bound=self.preemptions,
                           max_states=self.max_states, time_limit=self.time_limit)
        with self.console.status(f"{esc(proto.name)}: starting") as status:
            def progress(states: int, transitions: int, seconds: float) -> None:
                rate = states / seconds if seconds > 0 else 0.0
                limit = f" of {self.time_limit:g} s" if self.time_limit else ""
                status.update(f"{esc(proto.name)}: {states:,} states, {rate:,.0f}/s, {seconds:.0f} s{limit}, "
                              f"{rss_text()}")

            return explore(setup, random_runs=self.random_runs, seed=self.seed, preemption_bound=self.preemptions,
                           max_states=self.max_states, progress=progress, time_limit=self.time_limit)



def list_json() -> dict[str, object]:
    """``races --list --json``: the protocols, paths and properties that --list prints."""
    any_proto = next(iter(BUILTIN.values()))
    return {
        "protocols": [{"name": p.name, "declared_safe": p.declared_safe, "summary": p.summary, "spec": p.spec,
                       "default": {"threads": p.default.threads, "init": p.default.init}}
                      for p in BUILTIN.values()],
        "paths": [{"name": name, "ranged": d.ranged, "doc": d.doc} for name, d in any_proto.paths.items()],
        "properties": [{"name": prop.name, "text": prop.text} for prop in PROPERTIES],
    }

def register(app: typer.Typer) -> None:
    app.command("races", help=HELP, short_help="Explore the interleavings of guest_memfd kernel paths under a "
                "locking PROTOCOL and report the first violated property with a minimal interleaving.")(races)

