"""Three time results, never summed into one (simulator issue item 4; workloads.md §4, §4.1).

The engine records what happened as a :data:`Ledger`: priced counters (:mod:`gmemlab.sim.costs` names) per
lifecycle segment and per lane. A lane says whether the work could overlap with other vCPUs:

* ``serial``: work that is serial whatever the number of vCPUs: the VMM building the VM before any vCPU
  runs, and host work under a VM-wide exclusive lock (a guest_memfd conversion or punch holds the
  mapping's ``invalidate_lock`` for write, KVM_SET_MEMORY_ATTRIBUTES holds ``slots_lock``; workloads §3.8);
* ``parallel``: work each vCPU does for itself (faults, PVALIDATE/ACCEPT, PSC VMGEXITs, userspace exits on
  its own vCPU thread, pKVM hypercalls) and host device writes.

From the ledger and a :class:`~gmemlab.sim.costs.CostTable`, :func:`compute` gives:

1. **Boot critical path** (wall time from KVM_CREATE_GUEST_MEMFD until the guest has booted): per segment,
   ``max(serial work, all work / CPUs)``, the work-span lower bound of a schedule on that many CPUs, summed
   over the segments ``launch`` (the VMM, 1 CPU), ``firmware`` (the boot vCPU; every vCPU for TDX's SEC),
   ``boot`` (the kernel on the boot vCPU through the initcalls) and ``smp`` (eager acceptance in the
   deferred-init workers, every vCPU). What is serial stays serial; parallel work divides by the CPUs.
2. **CPU time by category**: every priced ``cpu`` row over the whole lifecycle (vCPU threads, KVM and the
   VMM are all host CPU time), by category and by phase.
3. **Data-plane translation overhead** per second of guest work, from the stage-2 leaf mix the guest runs
   on (§4.1: ``sum(share(level) x miss_rate(level))``, with accesses spread over mapped memory in proportion
   to the bytes mapped at each level [assumed]). It does not grow with the runtime or the vCPU count.

Every figure carries its provenance: the part of it that comes from rows that are (or are derived from)
``assumed`` (:class:`Figure`). Everything here is arithmetic on the ledger, so the sensitivity analysis
reprices a run under another table without simulating it again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..level import LEVELS
from .costs import CATEGORIES, CostTable

SERIAL, PARALLEL = "serial", "parallel"
LANES = (SERIAL, PARALLEL)
BOOT_SEGMENTS = ("launch", "firmware", "boot", "smp")
PHASES = (*BOOT_SEGMENTS, "runtime", "teardown")
NOT_RUNNING = ("launch", "teardown")  # phases in which no vCPU is in guest mode (running_vcpus)
LABELS = tuple(level.label for level in LEVELS)  # the level keys of results: "4K", "2M", "1G"
DATAPLANE_ROWS = {level.label: f"41-{level.key}" for level in LEVELS}  # §4.1 rows

Ledger = dict[str, dict[str, Counter[str]]]  # segment -> lane -> priced counters


def new_ledger() -> Ledger:
    return {seg: {lane: Counter() for lane in LANES} for seg in PHASES}


@dataclass(frozen=True)
class Figure:
    """A time in seconds and the part of it that comes from assumed rows."""

    seconds: float
    assumed_s: float = 0.0

    @property
    def assumed_share(self) -> float:
        return self.assumed_s / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict[str, float]:
        return {"s": round(self.seconds, 9), "assumed_share": round(self.assumed_share, 4)}


@dataclass(frozen=True)
class SegmentTime:
    """One segment of the boot critical path."""

    name: str
    cpus: int
    serial: Figure
    work: Figure
    wall: Figure
    bound: str  # "serial" (the span decides) or "work" (work / cpus decides)

    def as_json(self) -> dict[str, object]:
        return {"segment": self.name, "cpus": self.cpus, "serial_s": round(self.serial.seconds, 9),
                "work_s": round(self.work.seconds, 9), "wall": self.wall.as_json(), "bound": self.bound}


@dataclass(frozen=True)
class Times:
    """The three results (see the module docstring)."""

    boot: Figure
    segments: tuple[SegmentTime, ...]
    cpu: Figure
    cpu_by_category: dict[str, Figure]
    cpu_by_phase: dict[str, Figure]
    cpu_by_row: dict[str, float]  # seconds per row id
    dataplane: Figure  # seconds of translation overhead per second of guest work
    level_shares: dict[str, float]
    unpriced: tuple[str, ...] = field(default=())

    def as_json(self) -> dict[str, object]:
        return {
            "boot_critical_path": {**self.boot.as_json(), "segments": [s.as_json() for s in self.segments]},
            "cpu": {**self.cpu.as_json(),
                    "by_category": {c: f.as_json() for c, f in self.cpu_by_category.items()},
                    "by_phase": {p: f.as_json() for p, f in self.cpu_by_phase.items()}},
            "dataplane": {"overhead_per_guest_s": round(self.dataplane.seconds, 9),
                          "assumed_share": round(self.dataplane.assumed_share, 4),
                          "level_shares": {lv: round(v, 6) for lv, v in self.level_shares.items()}},
        }


@dataclass
class _Priced:
    by_cat: dict[str, float] = field(default_factory=dict)
    by_cat_assumed: dict[str, float] = field(default_factory=dict)
    by_row: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    assumed: float = 0.0


def running_vcpus(phase: str, vcpus: int) -> int:
    """vCPUs in guest mode during ``phase``, what a per-vCPU term (a kick or remote TLB flush IPIs only vCPUs
    in guest mode: kvm_make_all_cpus_request) is multiplied by. None before the first KVM_RUN (``launch``: the
    VMM builds and measures the VM) or at ``teardown`` (kvm_destroy_vm runs once the last reference is gone,
    and every vCPU file holds one, so no vCPU can be running); all of them otherwise (in the firmware the
    APs spin in their mailbox loop)."""
    return 0 if phase in NOT_RUNNING else vcpus


def _price(counters: Mapping[str, int], table: CostTable, vcpus: int, unpriced: set[str]) -> _Priced:
    """µs of ``cpu`` rows by category (and the assumed part), by row, in total."""
    pricing = table.pricing()
    out = _Priced()
    for name, count in counters.items():
        if not count:
            continue
        row = pricing.get(name)
        if row is None:
            unpriced.add(name)
            continue
        if row.kind != "cpu":
            continue
        us = table.cost(row, vcpus) * count
        out.by_cat[row.category] = out.by_cat.get(row.category, 0.0) + us
        out.by_row[row.id] = out.by_row.get(row.id, 0.0) + us
        out.total += us
        if table.is_assumed(row):
            out.assumed += us
            out.by_cat_assumed[row.category] = out.by_cat_assumed.get(row.category, 0.0) + us
    return out


def compute(ledger: Ledger, level_shares: Mapping[str, float], table: CostTable, vcpus: int,
            cpus: Mapping[str, int] | None = None) -> Times:
    """The three results of a run's ledger under ``table`` (see the module docstring); ``cpus``: how many
    vCPUs share each boot segment's parallel work (1 where absent)."""
    unpriced: set[str] = set()
    cat_us = dict.fromkeys(CATEGORIES, 0.0)
    cat_assumed = dict.fromkeys(CATEGORIES, 0.0)
    row_us: dict[str, float] = {}
    phase_fig: dict[str, Figure] = {}
    segments = []
    boot_s = boot_assumed = 0.0
    for seg in PHASES:
        lanes = ledger.get(seg, {})
        per_lane = {}
        for lane in LANES:
            priced = _price(lanes.get(lane, Counter()), table, running_vcpus(seg, vcpus), unpriced)
            per_lane[lane] = (priced.total, priced.assumed)
            for cat, us in priced.by_cat.items():
                cat_us[cat] += us
            for cat, us in priced.by_cat_assumed.items():
                cat_assumed[cat] += us
            for rid, us in priced.by_row.items():
                row_us[rid] = row_us.get(rid, 0.0) + us
        work = per_lane[SERIAL][0] + per_lane[PARALLEL][0]
        work_assumed = per_lane[SERIAL][1] + per_lane[PARALLEL][1]
        phase_fig[seg] = Figure(work / 1e6, work_assumed / 1e6)
        if seg not in BOOT_SEGMENTS:
            continue
        n = max((cpus or {}).get(seg, 1), 1)
        span, span_assumed = per_lane[SERIAL]
        if span >= work / n:
            wall, wall_assumed, bound = span, span_assumed, "serial"
        else:
            wall, wall_assumed, bound = work / n, work_assumed / n, "work"
        segments.append(SegmentTime(seg, n, Figure(span / 1e6, span_assumed / 1e6),
                                    Figure(work / 1e6, work_assumed / 1e6),
                                    Figure(wall / 1e6, wall_assumed / 1e6), bound))
        boot_s += wall
        boot_assumed += wall_assumed
    cpu_total = sum(cat_us.values())
    cpu_assumed = sum(cat_assumed.values())
    overhead = assumed_overhead = 0.0
    for lv, share in level_shares.items():
        row = table.row(DATAPLANE_ROWS[lv])
        part = share * table.cost(row)
        overhead += part
        if table.is_assumed(row):
            assumed_overhead += part
    # The §4.1 counters and the memory-only rows price nothing in CPU time; they are not "unpriced".
    unpriced -= {"guest_access_4k", "guest_access_2m", "guest_access_1g"}
    return Times(
        boot=Figure(boot_s / 1e6, boot_assumed / 1e6),
        segments=tuple(segments),
        cpu=Figure(cpu_total / 1e6, cpu_assumed / 1e6),
        cpu_by_category={c: Figure(cat_us[c] / 1e6, cat_assumed[c] / 1e6) for c in CATEGORIES},
        cpu_by_phase=phase_fig,
        cpu_by_row={rid: us / 1e6 for rid, us in row_us.items()},
        dataplane=Figure(overhead, assumed_overhead),
        level_shares=dict(level_shares),
        unpriced=tuple(sorted(unpriced)),
    )


def ledger_total(ledger: Ledger) -> Counter[str]:
    """All priced counters of a ledger, summed over segments and lanes."""
    out: Counter[str] = Counter()
    for lanes in ledger.values():
        for counters in lanes.values():
            out.update(counters)
    return out
