"""One simulated run as a result object: what ``gmemlab run`` / ``compare`` print (DESIGN.md "Metrics").

:func:`simulate` loads (or takes) a scenario, checks the policy against :data:`gmemlab.model.policy.POLICIES`,
runs the :class:`~gmemlab.sim.engine.Engine` and returns a :class:`RunResult`. :meth:`RunResult.as_json`
is the documented ``--json`` object::

    {"scenario", "policy", "seed", "params",
     "metrics": {"splits": {"1G", "2M"}, "merges": {"1G", "2M"}, "stage2_bytes": {"4K", "2M", "1G"},
                 "host_map_bytes": {"4K", "2M", "1G"}, "conversions": {"ok", "eagain"}, "userspace_exits",
                 "guest_faults", "zaps", "tlb_flushes", "tracking": {"ranges", "per_page_entries"},
                 "vmemmap_bytes", "modelled_time_s": {CATEGORY: seconds}},
     "counters", "unpriced", "modelled_time_total_s", "events", "series"}

``stage2_bytes``, ``host_map_bytes``, ``tracking`` and ``vmemmap_bytes`` are taken when the guest stops
(before teardown frees everything); counts are totals over the whole run, teardown included. The same
(scenario, policy, seed) always gives the same object; wall time is kept out of it (``wall_s``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..model.policy import POLICIES
from ..workload.scenario import Scenario, load_scenario
from .costs import CostTable, ModelledTime
from .engine import Engine, Sample


def check_policy(name: str) -> str:
    """``name`` if :mod:`gmemlab.model.policy` registers it, else a one-line :class:`UsageError`."""
    if name not in POLICIES:
        from ..workload.schema import did_you_mean

        raise UsageError(f"--policy {name}: unknown policy{did_you_mean(name, list(POLICIES))}; "
                         f"known: {', '.join(POLICIES)}")
    return name


def effective_policy(policy: str, merge: str) -> str:
    """The policy a run uses: the scenario's ``merge`` (workloads §5: eager|lazy|never) picks the merge variant.

    ``never`` selects ``POLICY+merge-never`` where it exists (deferred already merges only at truncate);
    ``lazy`` is what deferred does, and no eager variant implements it, so asking for it is an error.
    """
    if merge == "never" and "deferred" not in policy and not policy.endswith("merge-never"):
        return check_policy(f"{policy}+merge-never")
    if merge == "lazy" and "deferred" not in policy:
        raise UsageError(f"merge = lazy: policy {policy} merges eagerly; lazy merging (only at truncate) is "
                         "the deferred policy: use --policy deferred, or merge = eager|never")
    return policy


def params(sc: Scenario) -> dict[str, Any]:
    """The scenario's resolved parameters as ``{dotted.key: JSON value}`` (sizes in bytes)."""
    out: dict[str, Any] = {}

    def walk(obj: object, prefix: str) -> None:
        for fld in dataclasses.fields(obj):  # type: ignore[arg-type]
            if "spec" not in fld.metadata:
                continue
            value = getattr(obj, fld.name)
            key = prefix + fld.name
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
            elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
                for i, item in enumerate(value):
                    name = getattr(item, "name", "")
                    walk(item, f"{key}.{name}." if fld.name == "shared_regions" else f"{key}[{i}].")
            elif fld.name == "expect":
                out.update({f"{key}.{k}": v for k, v in value})
            elif isinstance(value, tuple):
                out[key] = [list(v) if isinstance(v, tuple) else v for v in value]
            else:
                out[key] = value

    walk(sc, "")
    return out


@dataclass
class RunResult:
    """Everything one run produced (see the module docstring)."""

    scenario: Scenario
    policy: str
    seed: int
    metrics: dict[str, Any]
    counters: dict[str, int]
    modelled: ModelledTime
    costs: CostTable
    events: dict[str, int]
    samples: list[Sample]
    wall_s: float

    @property
    def modelled_total_s(self) -> float:
        return self.modelled.total_us / 1e6

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "policy": self.policy,
            "seed": self.seed,
            "params": {**params(self.scenario), "policy": self.policy},  # the run's, not the file's default
            "metrics": self.metrics,
            "counters": dict(sorted(self.counters.items())),
            "unpriced": list(self.modelled.unpriced),
            "modelled_time_total_s": round(self.modelled_total_s, 9),
            "events": dict(sorted(self.events.items())),
            "series": [dataclasses.asdict(s) for s in self.samples],
        }


def run_scenario(sc: Scenario, policy: str, seed: int = 0, costs: CostTable | None = None, exact: bool = False,
                 progress: Callable[[int], None] | None = None, coalesce: bool = True) -> RunResult:
    """Run a validated scenario under ``policy`` (checked) with ``seed``. ``exact`` and ``coalesce=False``
    select the slow reference paths the tests compare against (see :mod:`gmemlab.sim.engine`)."""
    policy = effective_policy(check_policy(policy), sc.merge)
    engine = Engine(sc, policy, seed, costs, exact=exact, progress=progress, coalesce=coalesce).run()
    modelled = engine.modelled_time()
    counters = {k: int(v) for k, v in engine.priced_counters().items()}
    return RunResult(sc, policy, seed, engine.model_metrics(), counters, modelled, engine.costs,
                     dict(engine.events), engine.samples, engine.wall_s)


def simulate(scenario: str, policy: str | None = None, overrides: Sequence[str] = (), seed: int = 0,
             costs: CostTable | None = None, exact: bool = False,
             progress: Callable[[int], None] | None = None, coalesce: bool = True) -> RunResult:
    """Load ``scenario`` (a built-in name or a file) with ``--set`` overrides and run it; the policy defaults
    to the scenario's own ``policy``."""
    if policy is not None:
        check_policy(policy)
    sc = load_scenario(scenario, overrides)
    return run_scenario(sc, policy or sc.policy, seed, costs, exact, progress, coalesce)
