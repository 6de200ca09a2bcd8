"""The simulator's public API: one run as a result object (what ``gmemlab run`` / ``compare`` print).

:func:`simulate` loads (or takes) a scenario, checks the policy against :data:`gmemlab.model.policy.POLICIES`,
runs the :class:`~gmemlab.sim.engine.Engine` and returns a :class:`RunResult`. :meth:`RunResult.as_json` is
the documented, stable result object (``gmemlab run --json``; the sweep flattens it generically)::

    {"scenario": NAME, "title": "NAME (guest_mem=1TiB, ...)", "overrides": ["guest_mem=1TiB", ...],
     "policy", "seed", "params": {dotted.key: value},
     "flow": {"profile", "kind": "in-place"|"per-vm"|"none", "ioctl", "gmem_in_place_conversion", "changes": [...]},
     "metrics": {"splits": {"1G", "2M"}, "merges": {"1G", "2M"}, "stage2_bytes": {"4K", "2M", "1G"},
                 "host_map_bytes": {"4K", "2M", "1G"}, "conversions": {"ok", "eagain"}, "userspace_exits",
                 "guest_faults", "zaps", "tlb_flushes", "tracking": {"ranges", "per_page_entries"},
                 "vmemmap_bytes", "vmemmap_peak_bytes", "filemap_xarray_bytes", "shared_bytes",
                 "attribute_changes", "copied_bytes",
                 "footprint": {"gmem_bytes", "shared_copy_bytes", "total_bytes", "peak_bytes"}},
     "time": {
       "boot_critical_path": {"s", "assumed_share",
                              "segments": [{"segment", "cpus", "serial_s", "work_s", "wall": {"s", "assumed_share"},
                                            "bound": "serial"|"work"}]},
       "cpu": {"s", "assumed_share", "by_category": {CATEGORY: {"s", "assumed_share"}},
               "by_phase": {PHASE: {"s", "assumed_share"}}},
       "dataplane": {"overhead_per_guest_s", "assumed_share", "level_shares": {"4K", "2M", "1G"}}},
     "cost_rows": {ROW: {"cpu_s", "tag", "assumed"}},
     "counters": {NAME: count}, "counters_by_phase": {PHASE: {"serial"|"parallel": {NAME: count}}},
     "unpriced": [NAME], "events": {EVENT_TYPE: count},
     "series": [{"label", "phase", "wall_s", "stage2_bytes", "splits", "merges"}]}

``flow`` is how the VMM converts on the run's kernel profile (:mod:`gmemlab.sim.flow`; ``changes``: what
that flow forced on the scenario; ``params`` are the scenario's after them, with the run's ``policy`` and
``profile``). ``footprint`` is the host memory holding guest memory (guest_memfd folios, and the per-VM flow's
resident anonymous shared copy) at guest stop, ``peak_bytes`` its highest at any sample; ``copied_bytes``
what ``kvm_gmem_populate`` copied from a source (0 for an in-place launch); ``attribute_changes`` the
``KVM_SET_MEMORY_ATTRIBUTES`` calls that changed something (the per-VM flow's conversions; ``conversions``
counts the guest_memfd's). The three ``time`` results are never summed (:mod:`gmemlab.sim.timing`): boot
critical path (wall time), CPU time by category, data-plane overhead per second of guest work; each
``assumed_share`` is the part of that figure priced by rows that are, or derive from, ``assumed`` weights.
``stage2_bytes``, ``host_map_bytes``, ``tracking``, ``vmemmap_bytes`` and ``shared_bytes`` are taken when the guest
stops (before teardown frees everything); counts are totals over the whole run, teardown included. The same
(scenario, overrides, policy, seed) always gives the same object; wall time is kept out of it (``wall_s``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..checks import U64_MAX, check_int
from ..errors import UsageError
from ..model.policy import POLICIES
from ..workload.scenario import Scenario, load_scenario
from ..workload.schema import Portion, did_you_mean
from .costs import CostTable
from .engine import Engine, Sample
from .flow import NO_PRIVATE, Flow, flow_for
from .timing import Ledger, Times, compute, ledger_total


def check_policy(name: str) -> str:
    """``name`` if :mod:`gmemlab.model.policy` registers it, else a one-line :class:`UsageError`."""
    if name not in POLICIES:
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
            if isinstance(value, Portion):
                out[key] = value.as_json()
            elif dataclasses.is_dataclass(value):
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
    out["arch_limits.private_max_level"] = sc.private_max_level  # "auto" as the arch's level
    return out


@dataclass
class RunResult:
    """Everything one run produced (see the module docstring)."""

    scenario: Scenario
    policy: str
    seed: int
    metrics: dict[str, Any]
    ledger: Ledger
    segment_cpus: dict[str, int]
    level_shares: dict[str, float]
    costs: CostTable
    events: dict[str, int]
    samples: list[Sample]
    wall_s: float
    overrides: tuple[str, ...] = field(default=())
    flow: Flow = field(default=Flow("rfc-v2", NO_PRIVATE, ""))

    @cached_property
    def times(self) -> Times:
        """The three time results under this run's cost table."""
        return self.times_under(self.costs)

    def times_under(self, table: CostTable) -> Times:
        """The three time results if the weights were ``table``'s (no new simulation)."""
        return compute(self.ledger, self.level_shares, table, self.scenario.vcpus, self.segment_cpus)

    @cached_property
    def counters(self) -> dict[str, int]:
        """Priced counters over the whole run."""
        return {k: int(v) for k, v in sorted(ledger_total(self.ledger).items()) if v}

    @property
    def title(self) -> str:
        """The scenario's name and every override, so a changed scenario never reads like the built-in."""
        name = f"{self.scenario.name} ({', '.join(self.overrides)})" if self.overrides else self.scenario.name
        return f"{name} on {self.flow.label}" if self.flow.named else name

    @property
    def label(self) -> str:
        """The run's column heading: its policy, with its kernel and flow when they are not rfc-v2's own."""
        return f"{self.flow.label} {self.policy}" if self.flow.named else self.policy

    def cost_rows(self) -> dict[str, dict[str, Any]]:
        t = self.times
        return {rid: {"cpu_s": round(s, 9), "tag": self.costs.row(rid).tag,
                      "assumed": self.costs.is_assumed(rid)} for rid, s in sorted(t.cpu_by_row.items())}

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "title": self.title,
            "overrides": list(self.overrides),
            "policy": self.policy,
            "seed": self.seed,
            # the run's policy and profile, not the file's defaults ("flow" below says what ran)
            "params": {**params(self.scenario), "policy": self.policy, "profile": self.flow.profile},
            "flow": self.flow.as_json(),
            "metrics": self.metrics,
            "time": self.times.as_json(),
            "cost_rows": self.cost_rows(),
            "counters": self.counters,
            "counters_by_phase": {
                seg: {lane: dict(sorted(c.items())) for lane, c in lanes.items() if c}
                for seg, lanes in self.ledger.items() if any(lanes.values())
            },
            "unpriced": list(self.times.unpriced),
            "events": dict(sorted(self.events.items())),
            "series": [dataclasses.asdict(s) for s in self.samples],
        }


def run_scenario(sc: Scenario, policy: str, seed: int = 0, costs: CostTable | None = None, reference: bool = False,
                 progress: Callable[[int], None] | None = None, coalesce: bool = True,
                 overrides: Sequence[str] = (), profile: str | None = None, flow: str | None = None) -> RunResult:
    """Run a validated scenario under ``policy`` (checked) with ``seed``, on the model of ``profile`` in
    ``flow`` (defaults: the scenario's ``profile`` and ``flow`` keys; :func:`gmemlab.sim.flow.flow_for`,
    a UsageError when that kernel cannot run that flow). ``reference`` (the per-page oracle,
    :mod:`gmemlab.sim.reference`) and ``coalesce=False`` select the slow paths the tests compare against.
    ``overrides`` are the ``--set`` texts the scenario was loaded with (named in titles and JSON). The seed is
    an integer from 0 to 2^64 - 1 (as ``--seed``)."""
    try:
        seed = check_int(seed, 0, U64_MAX)
    except ValueError as exc:
        raise UsageError(f"seed: {exc}") from None
    policy = effective_policy(check_policy(policy), sc.merge)
    sc, run_flow = flow_for(sc, profile, flow)
    engine = Engine(sc, policy, seed, costs, reference=reference, progress=progress, coalesce=coalesce,
                    flow=run_flow).run()
    return RunResult(sc, policy, seed, engine.model_metrics(), engine.ledger, dict(engine.segment_cpus),
                     engine.level_shares(), engine.costs, dict(engine.events), engine.samples, engine.wall_s,
                     tuple(overrides), run_flow)


def simulate(scenario: str, policy: str | None = None, overrides: Sequence[str] = (), seed: int = 0,
             costs: CostTable | None = None, reference: bool = False,
             progress: Callable[[int], None] | None = None, coalesce: bool = True,
             profile: str | None = None, flow: str | None = None) -> RunResult:
    """Load ``scenario`` (a built-in name or a file) with ``--set`` overrides and run it; the policy, profile
    and flow default to the scenario's own."""
    if policy is not None:
        check_policy(policy)
    sc = load_scenario(scenario, overrides)
    return run_scenario(sc, policy or sc.policy, seed, costs, reference, progress, coalesce, overrides, profile,
                        flow)
