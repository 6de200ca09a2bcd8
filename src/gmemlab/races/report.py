"""Plain-text rendering of race-checker results (the CLI prints these; ``--json`` uses ``as_dict``)."""

from __future__ import annotations

from .explorer import Result, Violation
from .mutation import Mutant
from .properties import PROPERTIES
from .protocols import BUILTIN, Protocol


def _rate(result: Result) -> str:
    if result.seconds <= 0:
        return "-"
    return f"{result.states_per_second:,.0f} states/s"


def format_result(result: Result, protocol: Protocol | None = None) -> str:
    lines = [f"protocol: {result.protocol}" + (f" — {protocol.summary}" if protocol else "")]
    lines.append(f"threads:  {result.threads}   (initial state: {result.init})")
    coverage = ("every reachable state" if result.complete and result.mode == "exhaustive" else
                f"partial ({result.stopped or 'bounded'})")
    lines.append(
        f"search:   {result.mode}: {result.states:,} states, {result.transitions:,} transitions, "
        f"{result.seconds:.3f} s ({_rate(result)}); {coverage}"
    )
    if result.violation is None:
        if result.complete:
            lines.append("result:   no property violated")
        else:
            lines.append(f"result:   INCOMPLETE: no property violated in the states explored; the search was "
                         f"bounded ({result.stopped or 'bounded'}), so a violation may remain")
        if result.outcomes:
            lines.append("outcomes: " + "; ".join(f"{k} ({n})" for k, n in sorted(result.outcomes.items())[:6])
                         + (" ..." if len(result.outcomes) > 6 else ""))
        return "\n".join(lines)
    lines.append("")
    lines.extend(format_violation(result.violation, result.threads))
    return "\n".join(lines)


def format_violation(v: Violation, threads: str) -> list[str]:
    lines = [
        f"VIOLATED {v.prop}: {v.text}",
        f"  {v.message}",
        f"minimal interleaving: {len(v.trace)} steps, {v.preemptions} preemption(s)"
        f"  [{threads}]",
    ]
    width = max(len(f"T{t.thread}.{t.thread_step}") for t in v.trace)
    for t in v.trace:
        tag = f"T{t.thread}.{t.thread_step}".ljust(width)
        lines.append(f"  {t.step:3d}  {tag}  {'  ' * t.thread}{t.label}")
    return lines


def format_mutants(protocol: Protocol, baseline: list[Result], mutants: list[Mutant]) -> str:
    states = sum(r.states for r in baseline)
    lines = [
        f"mutation check of {protocol.name}: {len(mutants)} lock-acquisition sites, "
        f"{len(baseline)} configurations ({states:,} states unmutated)",
        f"{'site removed':28} {'verdict':9} {'property (steps)':36} {'then, ignoring the escape':32} configuration",
    ]
    for m in mutants:
        verdict = "DETECTED" if m.detected else "harmless"
        prop = f"{m.prop} ({m.steps})" if m.detected else "-"
        then = f"{m.consequence} ({m.consequence_steps})" if m.consequence_steps else (m.consequence or "")
        lines.append(f"{m.site:28} {verdict:9} {prop:36} {then:32} {m.config or '-'}")
    detected = sum(m.detected for m in mutants)
    lines.append(f"{detected} detected, {len(mutants) - detected} harmless at these sizes (see docs/races.md)")
    return "\n".join(lines)


def format_list() -> str:
    lines = ["protocols:"]
    for p in BUILTIN.values():
        safety = "declared safe" if p.declared_safe else "known race"
        lines.append(f"  {p.name:16} [{safety}] {p.summary}")
        lines.append(f"  {'':16} default: --threads {p.default.threads} --init {p.default.init}   ({p.spec})")
    lines.append("paths (every built-in protocol has all of them; ranged paths accept FIRST-LAST):")
    any_proto = next(iter(BUILTIN.values()))
    for name, d in any_proto.paths.items():
        lines.append(f"  {name:16} {'[ranged] ' if d.ranged else ''}{d.doc}")
    lines.append("properties:")
    for prop in PROPERTIES:
        lines.append(f"  {prop.name:30} {prop.text}")
    return "\n".join(lines)
