"""Mutation check: remove one lock acquisition (and its matching release) at a time from a variant and
see whether the checker notices.

A *site* is one acquisition in one path (``host_fault.invalidate_lock``, ``get_pfn.folio_lock``,
``convert.mmu_lock`` ...). For every site the protocol executes in its documented configurations, the site
is removed and every configuration is explored exhaustively. The site is *detected* if some configuration
violates a property (the first one, with the length of its minimal trace), otherwise *harmless* at these
sizes; ``docs/races.md`` explains why each harmless removal is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from .explorer import Explorer, Result
from .protocols import Config, Protocol, Setup, parse_threads


@dataclass
class Mutant:
    site: str
    detected: bool
    prop: str = ""
    config: str = ""
    steps: int = 0
    message: str = ""
    states: int = 0
    seconds: float = 0.0
    consequence: str = ""  # for a ghost-only detection: the next property violated when it is ignored
    consequence_steps: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"site": self.site, "detected": self.detected, "property": self.prop or None,
                "config": self.config or None, "steps": self.steps or None, "message": self.message or None,
                "consequence": self.consequence or None, "consequence_steps": self.consequence_steps or None,
                "states": self.states, "seconds": round(self.seconds, 4)}


def _setup(protocol: Protocol, config: Config, disabled: frozenset[str]) -> Setup:
    return Setup(protocol, parse_threads(config.threads, protocol), config.init, disabled)


def mutation_check(protocol: Protocol, configs: tuple[Config, ...] | None = None) -> tuple[list[Result], list[Mutant]]:
    """Baseline results (must be violation-free) and one :class:`Mutant` per lock-acquisition site."""
    configs = configs or protocol.configs
    if not configs:
        raise UsageError(f"{protocol.name} has no documented configurations to mutate")
    baseline = [Explorer(_setup(protocol, c, frozenset())).exhaustive() for c in configs]
    bad = [r for r in baseline if r.violation]
    if bad:
        raise UsageError(
            f"{protocol.name} is not violation-free at {bad[0].threads} ({bad[0].violation.prop}); "  # type: ignore[union-attr]
            "the mutation check needs a variant that passes"
        )
    sites = sorted(set().union(*(r.sites for r in baseline)))
    mutants = []
    for site in sites:
        mutant = Mutant(site, False)
        for config, base in zip(configs, baseline, strict=True):
            if site not in base.sites:  # the configuration never executes this acquisition
                continue
            result = Explorer(_setup(protocol, config, frozenset({site}))).exhaustive()
            mutant.states += result.states
            mutant.seconds += result.seconds
            v = result.violation
            if v and (not mutant.detected or len(v.trace) < mutant.steps):
                mutant.detected, mutant.prop, mutant.steps = True, v.prop, len(v.trace)
                mutant.config, mutant.message = f"{config.threads} ({config.init})", v.message
        if mutant.prop == GHOST:
            _consequence(protocol, configs, baseline, mutant)
        mutants.append(mutant)
    return baseline, mutants


GHOST = "allocation_escapes_conversion"


def _consequence(protocol: Protocol, configs: tuple[Config, ...], baseline: list[Result], mutant: Mutant) -> None:
    """Look past the ghost property: which property (if any) breaks next when the escape is allowed?"""
    mutant.consequence = "none"
    for config, base in zip(configs, baseline, strict=True):
        if mutant.site not in base.sites:
            continue
        setup = _setup(protocol, config, frozenset({mutant.site}))
        result = Explorer(setup, ignore=frozenset({GHOST})).exhaustive()
        v = result.violation
        if v and (mutant.consequence == "none" or len(v.trace) < mutant.consequence_steps):
            mutant.consequence, mutant.consequence_steps = v.prop, len(v.trace)
