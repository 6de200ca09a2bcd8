"""Which assumed cost weights could flip a comparison (simulator issue item 5).

``gmemlab sensitivity SCENARIO --policy A --policy B`` runs the scenario once under each policy, then varies
every weight tagged ``assumed`` (:data:`gmemlab.sim.costs.TAGS`) from 0.1x to 10x, one at a time, and reprices
both runs (:meth:`gmemlab.sim.run.RunResult.times_under`: the counts do not depend on the weights, so nothing is
simulated again). Rows derived from a varied row follow it. For each of the three time results (boot
critical path, CPU time, data-plane overhead) it reports the ratio A/B at both ends and, when the faster
policy changes within the range, the factor at which it does (found by bisection in log space).

The per-policy runs go through ``map`` (``builtins.map`` by default), so an executor's map (Dask, a process
pool) can run them in parallel.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..workload.scenario import load_scenario
from .costs import CostTable
from .run import RunResult, run_scenario
from .timing import Times

FIGURES: dict[str, Callable[[Times], float]] = {
    "boot": lambda t: t.boot.seconds,
    "cpu": lambda t: t.cpu.seconds,
    "dataplane": lambda t: t.dataplane.seconds,
}
FIGURE_NAMES = {"boot": "boot critical path", "cpu": "CPU time", "dataplane": "data-plane overhead"}
GRID = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
Mapper = Callable[[Callable[..., Any], Iterable[Any]], Iterable[Any]]


@dataclass(frozen=True)
class Swing:
    """One assumed row varied over the range, for one figure."""

    row: str
    operation: str
    low: float  # ratio A/B at the smallest factor
    high: float  # ratio A/B at the largest factor
    flip_at: float | None  # factor where A/B crosses 1, if it does within the range

    @property
    def swing(self) -> float:
        """How far the ratio moves, in decades (what the tornado sorts by)."""
        lo, hi = sorted((self.low, self.high))
        return abs(math.log10(max(hi, 1e-300)) - math.log10(max(lo, 1e-300)))

    def as_json(self) -> dict[str, Any]:
        return {"row": self.row, "operation": self.operation, "ratio_low": self.low, "ratio_high": self.high,
                "flips": self.flip_at is not None, "flip_at_factor": self.flip_at}


@dataclass
class Sensitivity:
    """The result: the base ratios and the swings of every assumed row, per figure."""

    scenario: str
    title: str
    policies: tuple[str, str]
    factors: tuple[float, float]
    base: dict[str, float]  # figure -> ratio A/B
    values: dict[str, tuple[float, float]]  # figure -> (A, B) at the base weights
    swings: dict[str, list[Swing]] = field(default_factory=dict)

    def flips(self, figure: str) -> list[Swing]:
        return [s for s in self.swings[figure] if s.flip_at is not None]

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "title": self.title, "policies": list(self.policies),
            "factors": list(self.factors),
            "figures": {
                fig: {"a": self.values[fig][0], "b": self.values[fig][1], "ratio": self.base[fig],
                      "flipped_by": [s.row for s in self.flips(fig)],
                      "rows": [s.as_json() for s in self.swings[fig]]}
                for fig in FIGURES
            },
        }


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return math.inf if a else 1.0
    return a / b


def assumed_rows(table: CostTable) -> list[str]:
    """Rows whose own weight is assumed (and priced: informational rows have nothing to vary)."""
    return [r.id for r in table.rows if r.tag == "assumed" and r.weight is not None and r.of is None]


def analyse(a: RunResult, b: RunResult, table: CostTable | None = None,
            factors: tuple[float, float] = (0.1, 10.0)) -> Sensitivity:
    """Vary each assumed weight of ``table`` over ``factors`` and reprice runs ``a`` and ``b``."""
    table = table or a.costs
    lo, hi = factors
    grid = sorted({lo, hi, *(g for g in GRID if lo < g < hi)})
    base_a, base_b = a.times_under(table), b.times_under(table)
    out = Sensitivity(a.scenario.name, a.title, (a.policy, b.policy), factors,
                      {f: _ratio(fn(base_a), fn(base_b)) for f, fn in FIGURES.items()},
                      {f: (fn(base_a), fn(base_b)) for f, fn in FIGURES.items()})
    for fig in FIGURES:
        out.swings[fig] = []
    for rid in assumed_rows(table):
        row = table.row(rid)

        def ratios(factor: float, rid: str = rid) -> dict[str, float]:
            scaled = table.scaled({rid: factor})
            ta, tb = a.times_under(scaled), b.times_under(scaled)
            return {f: _ratio(fn(ta), fn(tb)) for f, fn in FIGURES.items()}

        points = [(f, ratios(f)) for f in grid]
        for fig in FIGURES:
            values = [(f, r[fig]) for f, r in points]

            def at(factor: float, fig: str = fig, ratios: Callable[[float], dict[str, float]] = ratios) -> float:
                return ratios(factor)[fig]

            out.swings[fig].append(Swing(rid, row.operation, values[0][1], values[-1][1], _crossing(values, at)))
    for fig in FIGURES:
        out.swings[fig].sort(key=lambda s: s.swing, reverse=True)
    return out


def _crossing(values: list[tuple[float, float]], at: Callable[[float], float]) -> float | None:
    """The factor where the ratio crosses 1 between two grid points (bisection in log space), if it does."""
    for (f0, r0), (f1, r1) in itertools.pairwise(values):
        if (r0 - 1) * (r1 - 1) > 0 or r0 == r1:
            continue
        if r0 == 1:
            return f0
        lo, hi = math.log(f0), math.log(f1)
        for _ in range(40):
            mid = (lo + hi) / 2
            rm = at(math.exp(mid))
            if (rm - 1) * (r0 - 1) > 0:
                lo = mid
            else:
                hi = mid
        return math.exp((lo + hi) / 2)
    return None


def _one(args: tuple[str, str, tuple[str, ...], int, CostTable | None]) -> RunResult:
    scenario, policy, sets, seed, costs = args
    return run_scenario(load_scenario(scenario, sets), policy, seed, costs, overrides=sets)


def sensitivity(scenario: str, policies: Sequence[str], sets: Sequence[str] = (), seed: int = 0,
                costs: CostTable | None = None, factors: tuple[float, float] = (0.1, 10.0),
                map: Mapper = map) -> Sensitivity:
    """Run ``scenario`` under the two ``policies`` (through ``map``) and :func:`analyse` them."""
    a, b = list(map(_one, [(scenario, p, tuple(sets), seed, costs) for p in policies]))
    return analyse(a, b, costs, factors)
