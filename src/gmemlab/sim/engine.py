"""The simulator engine: apply a scenario's events to the model under a policy and count (workloads.md §1-§4).

:class:`Engine` pulls the lazy event stream of :func:`gmemlab.arch.generate` and dispatches each event to
one handler (``_on_<EventType>``). Handlers act on the model through :class:`gmemlab.sim.machine.Machine`
(range operations, never a walk over 4 KiB pages) and count what the model does not (exits, PSC
VMGEXITs, hypercalls); guest faults go through :class:`gmemlab.sim.faults.FaultBatch`, which also makes
the PVALIDATE and ACCEPT decisions.

What happened is kept as a ledger (:mod:`gmemlab.sim.timing`): the priced counters of each lifecycle
segment (the :class:`~gmemlab.workload.events.Phase` marks) and lane. Each handler says which lane its work
is in: ``serial`` for the VMM's ioctls (a conversion or punch holds the guest_memfd ``invalidate_lock`` for
write, SET_MEMORY_ATTRIBUTES holds ``slots_lock``, the VMM builds the VM alone), ``parallel`` for what each
vCPU does for itself. Whenever the lane or the segment changes, the counters since the last change are
priced (:func:`gmemlab.sim.counters.price`) into the ledger.

Decisions the generators leave to the engine: the PVALIDATE and ACCEPT outcomes (:mod:`gmemlab.sim.faults`),
and EAGAIN (§3.4, §3.6): a conversion or punch refused for a pinned folio is counted (``conversion_eagain``)
and not retried: the generated VMM reaction has no retry policy, so the memory stays in its old state
[assumed].

Metric samples are taken at every :class:`PhaseMark` and :class:`Tick` (DESIGN.md "Metrics a user
expects": stage-2 bytes per level over time, splits and merges over time), on a timeline of wall time:
the boot critical path so far, then runtime seconds. The stage-2 leaf mix at each runtime second gives the
data-plane translation overhead (§4.1).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..arch import generate
from ..level import HUGE_LEVELS, Level
from ..uapi import KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SHIFT
from ..workload.derived import TDX_MR_EXTEND_PER_PAGE
from ..workload.events import (
    Accept,
    CreateGmem,
    Event,
    Falloc,
    GmemConvert,
    GuestFault,
    HcMapGpa,
    HostWrite,
    LaunchFinish,
    MapGpa,
    MmioGuardMap,
    Phase,
    PhaseMark,
    PinUserPages,
    Populate,
    Psc,
    Punch,
    Pvalidate,
    Repeat,
    SetAttr,
    SetMemoryRegion,
    Share,
    Tick,
    UnpinUserPages,
    Unshare,
)
from ..workload.scenario import Scenario
from . import counters as ctr
from .costs import CostTable, filemap_xarray_bytes
from .faults import FaultBatch
from .flow import Flow
from .machine import Machine
from .reference import ReferenceMachine
from .timing import BOOT_SEGMENTS, LABELS, PARALLEL, SERIAL, Ledger, compute, new_ledger

PROGRESS_EVERY = 4096


@dataclass(frozen=True)
class Sample:
    """Metrics at one point of the simulated timeline (a phase start, a runtime second, the end).

    ``wall_s``: the boot critical path up to a boot phase mark; after boot, boot + runtime seconds.
    """

    label: str
    phase: str
    wall_s: float
    stage2_bytes: dict[str, int]
    splits: dict[str, int]
    merges: dict[str, int]


@dataclass
class Snapshot:
    """State when the guest stops (before teardown frees everything): what ``*_bytes`` report."""

    stage2_bytes: dict[str, int]
    host_map_bytes: dict[str, int]
    tracking: dict[str, int]
    vmemmap_bytes: int
    shared_bytes: int
    filemap_bytes: int
    footprint: dict[str, int]


class Engine:
    """Runs one (scenario, policy, seed); see the module docstring. Use :meth:`run` once."""

    def __init__(self, sc: Scenario, policy: str, seed: int = 0, costs: CostTable | None = None,
                 reference: bool = False, progress: Callable[[int], None] | None = None,
                 coalesce: bool = True, flow: Flow | None = None) -> None:
        self.sc = sc
        self.policy = policy
        self.seed = seed
        self.costs = costs or CostTable()
        self.machine = ReferenceMachine(sc, policy, flow) if reference else Machine(sc, policy, flow)
        self.attr_changes = 0  # KVM_SET_MEMORY_ATTRIBUTES calls that changed something (per-VM conversions)
        self.copied_pages = 0  # 4 KiB pages kvm_gmem_populate copied from a source (none when launched in place)
        self.footprint_peak = 0  # host memory holding guest memory, highest at a sample (sim/flow.py)
        self._shared_pages = 0  # resident pages of the per-VM flow's shared copy at the last span
        self.reference = reference
        self.progress = progress
        self.counters: Counter[str] = Counter()  # what the model does not count
        self.events: Counter[str] = Counter()
        self.samples: list[Sample] = []
        self.snapshot: Snapshot | None = None
        self.ledger: Ledger = new_ledger()
        self.segment_cpus: dict[str, int] = {}  # vCPUs sharing each segment's parallel work
        self.phase = Phase.LAUNCH.value
        self.wall_s = 0.0
        self.coalesce = coalesce
        self.faults = FaultBatch(self.machine, self.counters, pkvm=sc.arch == "pkvm", coalesce=coalesce)
        self._ctx: ctr.PriceContext | None = None
        self._lane = SERIAL
        self._mark: Counter[str] = Counter()
        self._boot_wall = 0.0
        self._clock = 0.0  # simulated wall time: the boot critical path, then runtime seconds
        self._ticks: dict[str, float] = dict.fromkeys(LABELS, 0.0)  # stage-2 level shares summed over runtime seconds
        self._nticks = 0
        self._handlers: dict[type, Callable[[Any], None]] = {
            cls: getattr(self, f"_on_{cls.__name__}")
            for cls in (PhaseMark, Tick, CreateGmem, SetMemoryRegion, SetAttr, GmemConvert, Falloc, Punch,
                        HostWrite, Populate, LaunchFinish, PinUserPages, UnpinUserPages, GuestFault, HcMapGpa, Psc,
                        Pvalidate, Accept, MapGpa, Share, Unshare, MmioGuardMap, Repeat)
        }
        self._n = 0
        self.bulk_runs = 0  # Repeat runs applied at once (_on_Repeat)

    # -- driving ----------------------------------------------------------------------------------
    def run(self, stream: Iterable[Event] | None = None) -> Engine:
        """Apply every event (the scenario's generated stream unless ``stream`` is given)."""
        t0 = time.perf_counter()
        for event in generate(self.sc, self.seed) if stream is None else stream:
            self._dispatch(event)
        self._flush()
        self._close_span()
        if self.phase == Phase.RUNTIME:
            self._clock = self._boot_wall + self.sc.runtime_s
        elif self.phase in BOOT_SEGMENTS:
            self._clock = self._boot_so_far()
        if self.snapshot is None:
            self.snapshot = self._take_snapshot()
        self._sample("end")
        if self.progress is not None:
            self.progress(self._n)
        self.wall_s = time.perf_counter() - t0
        return self

    def _dispatch(self, event: Event) -> None:
        cls = type(event)
        if cls is not Repeat:  # a run counts the calls it stands for
            self.events[cls.__name__] += 1
            self._n += 1
            if self.progress is not None and not self._n % PROGRESS_EVERY:
                self.progress(self._n)
        self._handlers[cls](event)

    # -- results ----------------------------------------------------------------------------------
    def level_shares(self) -> dict[str, float]:
        """Share of the guest's accesses per stage-2 level: the mix over the runtime seconds, or at the
        guest's stop when it has no runtime (§4.1; accesses spread like mapped bytes [assumed])."""
        if self._nticks:
            return {lv: self._ticks[lv] / self._nticks for lv in LABELS}
        snap = self.snapshot or self._take_snapshot()
        total = sum(snap.stage2_bytes.values())
        return {lv: snap.stage2_bytes[lv] / total if total else 0.0 for lv in LABELS}

    def model_metrics(self) -> dict[str, Any]:
        """The metrics of DESIGN.md "Metrics a user expects" (the ``metrics`` object of ``--json``)."""
        t = self.machine
        m = t.metrics
        snap = self.snapshot or self._take_snapshot()
        return {
            "splits": {lv.label: t.splits(lv) for lv in HUGE_LEVELS},
            "merges": {lv.label: t.merges(lv) for lv in HUGE_LEVELS},
            "stage2_bytes": dict(snap.stage2_bytes),
            "host_map_bytes": dict(snap.host_map_bytes),
            "conversions": {"ok": m["conversions_ok"], "eagain": m["conversion_eagain"]},
            "userspace_exits": self.counters["userspace_exit"],
            "guest_faults": m["guest_faults"],
            "zaps": m["zaps"],
            "tlb_flushes": m["tlb_flush_remote"],
            "tracking": dict(snap.tracking),
            "vmemmap_bytes": snap.vmemmap_bytes,
            "vmemmap_peak_bytes": self.machine.vmemmap_peak_bytes(),
            "filemap_xarray_bytes": snap.filemap_bytes,
            "shared_bytes": snap.shared_bytes,
            "attribute_changes": self.attr_changes,
            "copied_bytes": self.copied_pages * Level.PG_4K.bytes,
            "footprint": {**snap.footprint, "peak_bytes": max(self.footprint_peak, snap.footprint["total_bytes"])},
        }

    # -- ledger -----------------------------------------------------------------------------------
    def _price_context(self) -> ctr.PriceContext:
        if self._ctx is None:
            t = self.machine
            self._ctx = ctr.PriceContext(no_direct_map=t.no_direct_map, huge_block_pages=t.huge_block_pages())
        return self._ctx

    def _close_span(self) -> None:
        if self.machine.shared_copies:
            self._count_shared_copy_growth()
        now = ctr.raw(self.machine, self.counters)
        delta = now - self._mark
        if delta:
            self.ledger[self.phase][self._lane].update(ctr.price(delta, self._price_context()))
        self._mark = now

    def _count_shared_copy_growth(self) -> None:
        """The per-VM flow's shared copy: anonymous pages that became resident since the last span (the VMM's
        writes, the guest's shared faults through GUP on the HVA) were allocated and zero-filled like the
        guest_memfd's (rows 1 and 3); discarded pages leave. The model does not count anonymous memory."""
        shared = self.machine.footprint()["shared_copy_bytes"] >> PAGE_SHIFT
        grown = shared - self._shared_pages
        if grown > 0:
            self.counters["folio_alloc_4k"] += grown
            self.counters["zero_4k"] += grown
        self._shared_pages = shared

    def _enter(self, lane: str) -> None:
        """The work that follows is in ``lane``: price what the previous lane did first."""
        if lane != self._lane:
            self._close_span()
            self._lane = lane

    def _flush(self) -> None:
        if self.faults.pending is not None:
            self._enter(PARALLEL)
            self.faults.flush()

    # -- timeline ---------------------------------------------------------------------------------
    def _boot_so_far(self) -> float:
        return compute(self.ledger, {}, self.costs, self.sc.vcpus, self.segment_cpus).boot.seconds

    def _take_snapshot(self) -> Snapshot:
        t = self.machine
        if t.file is None:
            empty = dict.fromkeys(LABELS, 0)
            return Snapshot(empty, dict(empty), {"ranges": 0, "per_page_entries": 0}, 0, 0, 0, t.footprint())
        live = {lv: t.splits(lv) - t.merges(lv) for lv in HUGE_LEVELS}
        filemap = filemap_xarray_bytes(live[Level.PG_1G], live[Level.PG_2M], t.backend.policy.staged)
        return Snapshot(t.stage2_bytes(), t.host_map_bytes(), t.tracking(self.sc.attr_store == "maple"),
                        t.vmemmap_bytes(), t.shared_bytes(), filemap, t.footprint())

    def _sample(self, label: str) -> None:
        t = self.machine
        self.footprint_peak = max(self.footprint_peak, t.footprint()["total_bytes"])
        self.samples.append(Sample(
            label, self.phase, round(self._clock, 9), t.stage2_bytes(),
            {lv.label: t.splits(lv) for lv in HUGE_LEVELS}, {lv.label: t.merges(lv) for lv in HUGE_LEVELS},
        ))

    # -- handlers: timeline --------------------------------------------------------------------------
    def _on_PhaseMark(self, ev: PhaseMark) -> None:
        self._flush()
        self._close_span()
        if ev.phase == Phase.TEARDOWN and self.snapshot is None:
            self.snapshot = self._take_snapshot()
        if self.phase in BOOT_SEGMENTS:  # a boot segment ends: the critical path so far
            self._boot_wall = self._clock = self._boot_so_far()
        elif self.phase == Phase.RUNTIME:
            self._clock = self._boot_wall + self.sc.runtime_s
        self.phase = ev.phase.value
        self.segment_cpus[self.phase] = ev.cpus
        self._sample(ev.phase.value)

    def _on_Tick(self, ev: Tick) -> None:
        self._flush()
        mapped = self.machine.stage2_bytes()
        total = sum(mapped.values())
        if total:
            self._nticks += 1
            for lv in LABELS:
                self._ticks[lv] += mapped[lv] / total
        self._clock = self._boot_wall + ev.second
        self._sample(f"t={ev.second}s")

    # -- handlers: VMM ----------------------------------------------------------------------------
    def _on_CreateGmem(self, ev: CreateGmem) -> None:
        self._flush()
        self._enter(SERIAL)
        self.machine.create_gmem(ev)

    def _on_SetMemoryRegion(self, ev: SetMemoryRegion) -> None:
        self._flush()
        self._enter(SERIAL)
        self.machine.bind(ev)

    def _on_SetAttr(self, ev: SetAttr) -> None:
        """Row 12 (xarray: two passes per 4K page) or row 13 (one maple range store); no-op when unchanged."""
        t = self.machine
        value = KVM_MEMORY_ATTRIBUTE_PRIVATE if ev.private else 0
        if t.vm.attributes.all_equal(ev.gfn_start, ev.gfn_end, value):
            self.counters["attr_noop_calls"] += 1
            return
        self._flush()
        self._enter(SERIAL)
        t.set_attr(ev.start, ev.end, ev.private)
        self.attr_changes += 1
        if self.sc.attr_store == "maple":
            self.counters["attr_maple_calls"] += 1
        else:
            self.counters["attr_xarray_pages"] += ev.pages

    def _on_GmemConvert(self, ev: GmemConvert) -> None:
        t = self.machine
        work, pages = t.conversion_work(ev.start, ev.end, ev.to_shared)
        if not work:  # the range already has the value: the ioctl returns 0 at once (linux-7 §1.2 step 9)
            t.convert(ev.start, ev.end, ev.to_shared)
            return
        self._flush()
        self._enter(SERIAL)
        self.counters["conversion_work_items"] += work
        self.counters["refcount_spin"] += t.drop_transient_pins(ev.start, ev.end)
        if ev.to_shared:
            self._count_sept_removals(ev.start, ev.end)
        if t.convert(ev.start, ev.end, ev.to_shared) and self.sc.zero_on_convert:
            # SNP/TDX lose the old contents on conversion, modelled as zeroing the converted pages (row 3);
            # pKVM keeps them (zero_on_convert = false, §1.4). The model itself preserves contents (RFC v2).
            self.counters["zero_4k"] += pages

    def _on_Falloc(self, ev: Falloc) -> None:
        self._flush()
        self._enter(SERIAL)
        self.machine.fallocate(ev.start, ev.end)

    def _count_sept_removals(self, start: int, end: int) -> None:
        """TDX: each private leaf the zap removes is BLOCK + TRACK + kick + REMOVE (row 18a)."""
        if self.sc.arch == "tdx":
            self.counters["tdx_sept_remove"] += self.machine.private_leaves(start, end)

    def _on_Punch(self, ev: Punch) -> None:
        self._flush()
        self._enter(SERIAL)
        self._count_sept_removals(ev.start, ev.end)
        self.counters["refcount_spin"] += self.machine.drop_transient_pins(ev.start, ev.end)
        if not self.machine.punch(ev.start, ev.end):
            self.counters["punch_eagain"] += 1

    def _on_HostWrite(self, ev: HostWrite) -> None:
        self._flush()
        self._enter(PARALLEL)
        c = self.counters
        if self.machine.mapping is None:  # no gmem mmap: the VMM writes its shared copy (anonymous memory)
            c["host_fault_4k"] += self.machine.write_shared_copy(ev.start, ev.end, ev.stride)
            return
        faults, refused = self.machine.host_touch(ev.start, ev.end, ev.stride)
        for lv, n in faults.items():
            c[f"host_fault_{lv.key}"] += n
        c["host_sigbus"] += refused

    def _on_Populate(self, ev: Populate) -> None:
        """Rows 20 (SNP LAUNCH_UPDATE, incl. its RMPUPDATE), 19/19a (TDX PAGE.ADD, MR.EXTEND), 34 (GUP)."""
        self._flush()
        self._enter(SERIAL)
        c = self.counters
        m = self.machine.metrics
        before = m["rmpupdate_4k"]
        source = not ev.in_place and ev.kind != "zero"  # SNP ZERO pages have no source (src = NULL)
        if source and not ev.rom and self.machine.shared_copies:  # per VM: the VMM loads the image first
            c["host_fault_4k"] += self.machine.write_shared_copy(ev.start, ev.end)
        n = ev.pages if ev.rom else self.machine.populate(ev.start, ev.end, ev.in_place, source)
        c["rmpupdate_4k_in_populate"] += m["rmpupdate_4k"] - before
        if self.sc.arch == "snp":
            c["snp_launch_update_4k"] += n
        elif self.sc.arch == "tdx":
            c["tdx_page_add"] += n
            if ev.measure:
                c["tdx_mr_extend"] += n * TDX_MR_EXTEND_PER_PAGE
        if source:
            c["populate_gup_4k"] += n
            self.copied_pages += n
            if self.sc.arch == "snp":  # sev_gmem_post_populate copies; TDX's PAGE.ADD copies in row 19a
                c["populate_copy_4k"] += n
        c["populate_failed_pages"] += ev.pages - n

    def _on_LaunchFinish(self, ev: LaunchFinish) -> None:
        if self.sc.arch == "snp" and ev.vmsa_pages:
            self._enter(SERIAL)
            self.counters["snp_launch_update_4k"] += ev.vmsa_pages

    def _on_PinUserPages(self, ev: PinUserPages) -> None:
        self._flush()
        self._enter(SERIAL)
        if not self.machine.pin(ev.start, ev.end, ev.longterm):
            self.counters["pin_failed"] += 1

    def _on_UnpinUserPages(self, ev: UnpinUserPages) -> None:
        self._flush()
        self._enter(SERIAL)
        self.machine.unpin(ev.start, ev.end)

    # -- handlers: guest and exits --------------------------------------------------------------------
    def _on_GuestFault(self, ev: GuestFault) -> None:
        self.faults.add("touch", ev.start, ev.end)

    def _on_HcMapGpa(self, ev: HcMapGpa) -> None:
        self._enter(PARALLEL)
        self.counters["userspace_exit"] += 1

    def _on_Psc(self, ev: Psc) -> None:
        self._enter(PARALLEL)
        self.counters["psc_vmgexit"] += 1
        self.counters["psc_entries"] += ev.entries

    def _on_Pvalidate(self, ev: Pvalidate) -> None:
        if ev.validate:
            self.faults.add("pvalidate", ev.start, ev.end, ev.page_size)
            return
        self._flush()  # rescind: no fault, but the RMP level of accepted memory decides the size
        self._enter(PARALLEL)
        self.faults.settle_pvalidate(ev.start, ev.end, ev.page_size)

    def _on_Accept(self, ev: Accept) -> None:
        self.faults.add("accept", ev.start, ev.end, ev.try_levels)

    def _on_MapGpa(self, ev: MapGpa) -> None:
        self._enter(PARALLEL)
        self.counters["tdx_mapgpa_vmcall"] += 1

    def _on_Share(self, ev: Share) -> None:
        self._enter(PARALLEL)
        self.counters["pkvm_share_hvc"] += ev.hypercalls

    def _on_Unshare(self, ev: Unshare) -> None:
        self._enter(PARALLEL)
        self.counters["pkvm_unshare_hvc"] += ev.hypercalls

    def _on_Repeat(self, ev: Repeat) -> None:
        """A run of identical calls (:class:`Repeat`). The first copy is applied event by event. The rest
        at once where that is exact: every event either only counts (PSC VMGEXITs, exits, MapGPA, a
        conversion or SET_ATTR that is a no-op over the whole run: the ``raw`` counters the first copy
        added, taken ``times - 1`` more times) or is one kind of guest fault whose copies tile one range
        (aligned so PVALIDATE pieces and ACCEPT calls settle the same over the union, ``faults``). Anything
        else, and the reference run, applies every copy event by event."""
        block = ev.block
        kind = self._bulk_kind(ev)
        if kind is None or ev.times == 1:
            for k in range(ev.times):
                for e in ev.copy(k):
                    self._dispatch(e)
            return
        self._flush()
        before = ctr.raw(self.machine, self.counters)
        for e in block:
            self._dispatch(e)
        delta = ctr.raw(self.machine, self.counters) - before
        rest = ev.times - 1
        if any(("." in key and not key.startswith("m.")) or key == "fault_errors" for key in delta):
            for k in range(1, ev.times):  # the first copy did more than count: no shortcut
                for e in ev.copy(k):
                    self._dispatch(e)
            return
        for key, n in delta.items():
            if not key.startswith("m."):
                self.counters[key] += n * rest
        self.machine.count({k[2:]: n for k, n in delta.items() if k.startswith("m.")}, rest)
        self.bulk_runs += 1
        for e in block:
            self.events[type(e).__name__] += rest
        self._n += rest * len(block)
        span = rest * ev.stride
        for e in block:
            if isinstance(e, Pvalidate):
                self.faults.add("pvalidate", e.end, e.end + span, e.page_size)
            elif isinstance(e, Accept):
                self.faults.add("accept", e.end, e.end + span, e.try_levels)
            elif isinstance(e, GuestFault):
                self.faults.add("touch", e.end, e.end + span)

    def _bulk_kind(self, ev: Repeat) -> str | None:
        """The one fault kind of a run that can be applied at once (``""``: none), None when it cannot."""
        if self.reference or not self.coalesce:
            return None
        t, stride = self.machine, ev.stride
        union = ev.times * stride
        kinds = set()
        for e in ev.block:
            if isinstance(e, (Psc, MapGpa)):
                continue
            if not isinstance(e, (HcMapGpa, GmemConvert, SetAttr, Pvalidate, Accept, GuestFault)) or e.size != stride:
                return None  # copies must tile one range
            if isinstance(e, GmemConvert):
                if t.conversion_work(e.start, e.start + union, e.to_shared)[0]:
                    return None
            elif isinstance(e, SetAttr):
                value = KVM_MEMORY_ATTRIBUTE_PRIVATE if e.private else 0
                if not t.vm.attributes.all_equal(e.gfn_start, (e.start + union) >> PAGE_SHIFT, value):
                    return None
            elif isinstance(e, Pvalidate):
                if not e.validate or e.start % e.page_size or stride % e.page_size:
                    return None
                kinds.add("pvalidate")
            elif isinstance(e, Accept):
                if e.start % Level.PG_2M.bytes or stride % Level.PG_2M.bytes:
                    return None  # 4K heads and tails would sit at the joins
                kinds.add("accept")
            elif isinstance(e, GuestFault):
                kinds.add("touch")
        return kinds.pop() if len(kinds) == 1 else ("" if not kinds else None)

    def _on_MmioGuardMap(self, ev: MmioGuardMap) -> None:
        self._enter(PARALLEL)
        self.counters["pkvm_mmio_guard_hvc"] += ev.hypercalls
