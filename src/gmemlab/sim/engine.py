"""The simulator engine: apply a scenario's events to the model under a policy and count (workloads.md §1-§4).

:class:`Engine` pulls the lazy event stream of :func:`gmemlab.arch.generate` and dispatches each event to
one handler (``_on_<EventType>``). Handlers act on the model through :class:`gmemlab.sim.target.Target`
(range operations, never a walk over 4 KiB pages) and add to ``counters``, whose names are the counters of
the cost table (:mod:`gmemlab.sim.costs`, §4), so :meth:`CostTable.modelled_time` prices them by name.
Counters no row prices (``psc_entries``, ``host_sigbus``...) are kept and reported as unpriced.

Decisions the generators leave to the engine (see :mod:`gmemlab.workload.events`):

* **PVALIDATE at 2M** (§1.2, rows 23/24): after the validated range is faulted in, each 2 MiB piece whose
  SNP RMP entry is 2M counts one ``pvalidate_2m``; a piece whose RMP entry is 4K counts one
  ``pvalidate_2m_fallback`` (1 failed + 512 x 4K). 4K PVALIDATEs count per page.
* **TDX ACCEPT level** (§1.3): the accepted range is faulted in (EPT violation, TDH.MEM.PAGE.AUG); each
  piece is then accepted at the largest of the guest's try levels that the S-EPT leaf allows: 2M leaves
  (Yan Zhao's RFC) give ``tdx_accept_2m`` per 2 MiB, 4K leaves (upstream) give ``tdx_accept_4k`` per page
  (``tdx_accept_4k_eager``, row 17, when the firmware accepts everything eagerly), and a failed 2M try on
  a 4K leaf counts ``tdx_accept_2m_mismatch`` (unpriced).
* **EAGAIN** (§3.4, §3.6): a conversion or punch refused for a pinned folio is counted
  (``conversion_eagain``; the model counts ``conversions.eagain``) and not retried: the generated VMM
  reaction has no retry policy, so the memory stays in its old state [assumed].
* **Fault pricing**: faults the guest takes inside a PVALIDATE or an ACCEPT are priced by rows 23 and 16
  (their estimates include the fault); plain first touches (:class:`GuestFault`) by rows 14/15, or by
  row 32 (donation) on pKVM.

Faults are coalesced: consecutive fault events of one kind (touch, PVALIDATE, ACCEPT) over adjacent
ranges are applied as one range fault, and flushed before any event that changes or reads model state.
Events that cannot interact with a pending fault (exits, PSC VMGEXITs, hypercall counts, conversions and
SET_ATTRs that are no-ops) do not flush. The level of a fault depends on the gfn and the state, never on
the fault's extent, so this gives the same model state as faulting event by event (the tests check it).

Metric time series are sampled at every :class:`PhaseMark` and :class:`Tick` (DESIGN.md "Metrics a user
expects": stage-2 bytes per level over time, splits and merges over time, modelled time). The §4.1
translation cost is charged per runtime second: ``vcpus x 1e6`` µs of guest work [assumed: every vCPU
busy], split over the stage-2 levels in proportion to the bytes mapped at each, as ``guest_access_<level>``
units priced by rows 41-4k/2m/1g.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..arch import generate
from ..model.metrics import SIZES
from ..uapi import KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SHIFT, PAGE_SIZE
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
    MemfaultExit,
    MmioGuardMap,
    Phase,
    PhaseMark,
    Pin,
    Populate,
    Psc,
    Punch,
    Pvalidate,
    SetAttr,
    SetMemoryRegion,
    Share,
    Tick,
    Unpin,
    Unshare,
)
from ..workload.scenario import Scenario
from .costs import CostTable, ModelledTime
from .target import PMD_PAGES, Target

TDX_MR_EXTEND_PER_PAGE = 16  # TDX_EXTENDMR_CHUNKSIZE = 256 B (§1.3)
ACCESS_US_PER_VCPU_SECOND = 1_000_000  # §4.1 base work per runtime second per vCPU [assumed: all busy]
PROGRESS_EVERY = 4096
LEVELS = ("4K", "2M", "1G")


@dataclass(frozen=True)
class Sample:
    """Metrics at one point of the simulated timeline (a phase start, a runtime second, the end)."""

    label: str
    phase: str
    stage2_bytes: dict[str, int]
    splits: dict[str, int]
    merges: dict[str, int]
    modelled_s: float


@dataclass
class Snapshot:
    """State when the guest stops (before teardown frees everything): what ``*_bytes`` report."""

    stage2_bytes: dict[str, int]
    host_map_bytes: dict[str, int]
    tracking: dict[str, int]
    vmemmap_bytes: int


@dataclass
class _Pending:
    """Coalesced faults of one kind: gfn ranges to fault and the claims to settle afterwards."""

    kind: str
    ranges: list[list[int]] = field(default_factory=list)
    claims: list[list[Any]] = field(default_factory=list)

    def add(self, start: int, end: int, claim: Any = None) -> None:
        if self.ranges and self.ranges[-1][1] == start:
            self.ranges[-1][1] = end
        else:
            self.ranges.append([start, end])
        if claim is None:
            return
        if self.claims and self.claims[-1][1] == start and self.claims[-1][2] == claim:
            self.claims[-1][1] = end
        else:
            self.claims.append([start, end, claim])


class Engine:
    """Runs one (scenario, policy, seed); see the module docstring. Use :meth:`run` once."""

    def __init__(self, sc: Scenario, policy: str, seed: int = 0, costs: CostTable | None = None,
                 exact: bool = False, progress: Callable[[int], None] | None = None, coalesce: bool = True) -> None:
        self.sc = sc
        self.policy = policy
        self.seed = seed
        self.costs = costs or CostTable()
        self.target = Target(sc, policy, exact=exact)
        self.progress = progress
        self.coalesce = coalesce  # False: every fault event is applied on its own (the tests compare)
        self.counters: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.samples: list[Sample] = []
        self.snapshot: Snapshot | None = None
        self.phase = ""
        self.wall_s = 0.0
        self._pending: _Pending | None = None
        self._arch_adjust: Counter[str] = Counter()  # arch counters already priced by another row
        self._staged = self.target.backend.policy.staged  # 1G -> 2M first (row 9) or 1G -> 4K (row 6)
        self._handlers: dict[type, Callable[[Any], None]] = {
            cls: getattr(self, f"_on_{cls.__name__}")
            for cls in (PhaseMark, Tick, CreateGmem, SetMemoryRegion, SetAttr, GmemConvert, Falloc, Punch,
                        HostWrite, Populate, LaunchFinish, Pin, Unpin, GuestFault, HcMapGpa, MemfaultExit, Psc,
                        Pvalidate, Accept, MapGpa, Share, Unshare, MmioGuardMap)
        }

    # -- driving ----------------------------------------------------------------------------------
    def run(self, stream: Iterable[Event] | None = None) -> Engine:
        """Apply every event (the scenario's generated stream unless ``stream`` is given)."""
        t0 = time.perf_counter()
        handlers = self._handlers
        events = self.events
        n = 0
        for event in generate(self.sc, self.seed) if stream is None else stream:
            cls = type(event)
            events[cls.__name__] += 1
            handlers[cls](event)
            n += 1
            if self.progress is not None and not n % PROGRESS_EVERY:
                self.progress(n)
        self._flush()
        if self.snapshot is None:
            self.snapshot = self._take_snapshot()
        self._sample("end")
        if self.progress is not None:
            self.progress(n)
        self.wall_s = time.perf_counter() - t0
        return self

    # -- results ----------------------------------------------------------------------------------
    def priced_counters(self) -> Counter[str]:
        """Engine counters plus the model's, under the cost table's counter names (§4)."""
        m = self.target.metrics
        out = Counter(self.counters)
        big = "split_1g_2m" if self._staged else "split_1g_4k"
        out[big] += m["splits.1G"]
        out["split_2m_4k"] += m["splits.2M"]
        out["merge_2m_1g" if self._staged else "merge_4k_1g"] += m["merges.1G"]
        out["merge_4k_2m"] += m["merges.2M"]
        for name in ("rmpupdate_4k", "rmpupdate_2m", "psmash"):
            out[name] += m[f"arch.{name}"] - self._arch_adjust[name]
        demotes = m["arch.tdx_demote"] - self._arch_adjust["tdx_demote"]
        # The model marks every 2 MiB range that gets 4K private leaves; only with 2M S-EPT leaves
        # possible (the RFC) is that a DEMOTE (row 18). Upstream 4K-only TDX never demotes.
        out["tdx_demote" if getattr(self.target.vm.vendor, "max_level", 1) > 1 else "tdx_4k_ranges"] += demotes
        out["s2_zap_leaf"] += m["leaves_zapped"]
        out["tlb_flush_remote"] += m["tlb_flushes"]
        out["zero_4k"] += self.target.zeroed_pages()
        huge, small = self.target.allocated_folios()
        out["folio_alloc_huge"] += huge
        out["folio_alloc_4k"] += small
        if self.sc.no_direct_map:
            out["direct_map_remove"] += m["arch_prepares"]
        out["conversion_eagain"] += m["conversions.eagain"]
        out["guest_fault_errors"] += self.target.fault_errors  # touches stopped by a failed get_pfn
        return Counter({k: v for k, v in out.items() if v})

    def modelled_time(self) -> ModelledTime:
        return self.costs.modelled_time(self.priced_counters(), self.sc.vcpus)

    def model_metrics(self) -> dict[str, Any]:
        """The metrics of DESIGN.md "Metrics a user expects" (the ``metrics`` object of ``--json``)."""
        m = self.target.metrics
        snap = self.snapshot or self._take_snapshot()
        mt = self.modelled_time()
        return {
            "splits": {s: m[f"splits.{s}"] for s in ("1G", "2M")},
            "merges": {s: m[f"merges.{s}"] for s in ("1G", "2M")},
            "stage2_bytes": dict(snap.stage2_bytes),
            "host_map_bytes": dict(snap.host_map_bytes),
            "conversions": {"ok": m["conversions.ok"], "eagain": m["conversions.eagain"]},
            "userspace_exits": self.counters["userspace_exit"],
            "guest_faults": m["guest_faults"],
            "zaps": m["zaps"],
            "tlb_flushes": m["tlb_flushes"],
            "tracking": dict(snap.tracking),
            "vmemmap_bytes": snap.vmemmap_bytes,
            "modelled_time_s": {cat: round(us / 1e6, 9) for cat, us in mt.by_category.items()},
        }

    # -- helpers ----------------------------------------------------------------------------------
    def _take_snapshot(self) -> Snapshot:
        t = self.target
        if t.file is None:
            empty = dict.fromkeys(LEVELS, 0)
            return Snapshot(empty, dict(empty), {"ranges": 0, "per_page_entries": 0}, 0)
        return Snapshot(t.stage2_bytes(), t.host_map_bytes(), t.tracking(self.sc.attr_store == "maple"),
                        t.vmemmap_bytes())

    def _sample(self, label: str) -> None:
        m = self.target.metrics
        self.samples.append(Sample(
            label, self.phase, self.target.stage2_bytes(),
            {s: m[f"splits.{s}"] for s in SIZES[1:]}, {s: m[f"merges.{s}"] for s in SIZES[1:]},
            round(self.modelled_time().total_us / 1e6, 9),
        ))

    def _fault(self, kind: str, start: int, end: int, claim: Any = None) -> None:
        pending = self._pending
        if pending is not None and pending.kind != kind:
            self._flush()
            pending = None
        if pending is None:
            pending = self._pending = _Pending(kind)
        pending.add(start >> PAGE_SHIFT, end >> PAGE_SHIFT, claim)
        if not self.coalesce:
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        m = self.target.metrics
        before = [m[f"stage2_faults.{lv}"] for lv in LEVELS]
        for start, end in pending.ranges:
            self.target.fault_range(start, end)
        faults = {lv: m[f"stage2_faults.{lv}"] - b for lv, b in zip(LEVELS, before, strict=True)}
        c = self.counters
        if pending.kind == "touch":
            if self.sc.arch == "pkvm":
                c["pkvm_donate_4k"] += faults["4K"]
                c["pkvm_donate_2m"] += faults["2M"] + faults["1G"]
            else:
                for lv in LEVELS:
                    c[f"s2_map_{lv.lower()}"] += faults[lv]
            return
        for lv in LEVELS:
            c[f"faults_in_{pending.kind}_{lv.lower()}"] += faults[lv]
        for start, end, claim in pending.claims:
            if pending.kind == "pvalidate":
                self._settle_pvalidate(start << PAGE_SHIFT, end << PAGE_SHIFT, claim)
            else:
                self._settle_accept(start << PAGE_SHIFT, end << PAGE_SHIFT, claim)

    def _settle_pvalidate(self, start: int, end: int, page_size: int) -> None:
        """Rows 23/24: 2M PVALIDATEs succeed where the RMP entry is 2M, else fall back to 512 x 4K."""
        c = self.counters
        if page_size < PMD_PAGES * PAGE_SIZE:
            c["pvalidate_4k"] += (end - start) // PAGE_SIZE
            return
        pieces = (end - start) // (PMD_PAGES * PAGE_SIZE)
        good = self.target.rmp_2m_pieces(start, end)
        c["pvalidate_2m"] += good
        c["pvalidate_2m_fallback"] += pieces - good
        c["pvalidate_4k"] += ((end - start) % (PMD_PAGES * PAGE_SIZE)) // PAGE_SIZE

    def _settle_accept(self, start: int, end: int, try_levels: tuple[int, ...]) -> None:
        """§1.3: each piece is accepted at the largest try level its S-EPT leaf allows."""
        c = self.counters
        eager = self.sc.accept.mode == "eager"
        try_2m = PMD_PAGES * PAGE_SIZE in try_levels
        for s, e, level in self.target.leaf_runs(start, end):
            if level == 0:
                continue  # the fault failed: nothing to accept
            lo, hi = s + (-s) % PMD_PAGES, e - e % PMD_PAGES
            whole_2m = max(hi - lo, 0) // PMD_PAGES
            if level >= 2 and try_2m:
                c["tdx_accept_2m"] += whole_2m
                c["tdx_accept_4k_eager" if eager else "tdx_accept_4k"] += (e - s) - whole_2m * PMD_PAGES
            else:
                if try_2m:
                    c["tdx_accept_2m_mismatch"] += whole_2m
                c["tdx_accept_4k_eager" if eager else "tdx_accept_4k"] += e - s

    # -- handlers: timeline --------------------------------------------------------------------------
    def _on_PhaseMark(self, ev: PhaseMark) -> None:
        self._flush()
        if ev.phase == Phase.TEARDOWN and self.snapshot is None:
            self.snapshot = self._take_snapshot()
        self.phase = ev.phase.value
        self._sample(ev.phase.value)

    def _on_Tick(self, ev: Tick) -> None:
        self._flush()
        mapped = self.target.stage2_bytes()
        total = sum(mapped.values())
        if total:
            work = ACCESS_US_PER_VCPU_SECOND * self.sc.vcpus
            for lv in LEVELS:
                self.counters[f"guest_access_{lv.lower()}"] += round(work * mapped[lv] / total)
        self._sample(f"t={ev.second}s")

    # -- handlers: VMM ----------------------------------------------------------------------------
    def _on_CreateGmem(self, ev: CreateGmem) -> None:
        self._flush()
        self.target.create_gmem(ev)

    def _on_SetMemoryRegion(self, ev: SetMemoryRegion) -> None:
        self._flush()
        self.target.bind(ev)

    def _on_SetAttr(self, ev: SetAttr) -> None:
        """Row 12 (xarray: two passes per 4K page) or row 13 (one maple range store); no-op when unchanged."""
        t = self.target
        value = KVM_MEMORY_ATTRIBUTE_PRIVATE if ev.private else 0
        if t.vm.attributes.all_equal(ev.gfn_start, ev.gfn_end, value):
            self.counters["attr_noop_calls"] += 1
            return
        self._flush()
        t.set_attr(ev.start, ev.end, ev.private)
        if self.sc.attr_store == "maple":
            self.counters["attr_maple_calls"] += 1
        else:
            self.counters["attr_xarray_pages"] += ev.pages

    def _on_GmemConvert(self, ev: GmemConvert) -> None:
        t = self.target
        work, pages = t.conversion_work(ev.start, ev.end, ev.to_shared)
        if work:
            self._flush()
            self.counters["conversion_work_items"] += work
        if t.convert(ev.start, ev.end, ev.to_shared) and self.sc.zero_on_convert:
            # SNP/TDX lose the old contents on conversion, modelled as zeroing the converted pages (row 3);
            # pKVM keeps them (zero_on_convert = false, §1.4). The model itself preserves contents (RFC v2).
            self.counters["zero_4k"] += pages

    def _on_Falloc(self, ev: Falloc) -> None:
        self._flush()
        self.target.fallocate(ev.start, ev.end)

    def _on_Punch(self, ev: Punch) -> None:
        self._flush()
        if not self.target.punch(ev.start, ev.end):
            self.counters["punch_eagain"] += 1

    def _on_HostWrite(self, ev: HostWrite) -> None:
        self._flush()
        c = self.counters
        if self.target.mapping is None:  # no gmem mmap: the VMM writes its own shared backing
            c["host_fault_4k"] += ev.touched_pages
            return
        done = self.target.host_touch(ev.start, ev.end, ev.stride)
        for lv, n in done.faults.items():
            c[f"host_fault_{lv.lower()}"] += n
        c["host_sigbus"] += done.refused

    def _on_Populate(self, ev: Populate) -> None:
        """Rows 20 (SNP LAUNCH_UPDATE, incl. its RMPUPDATE), 19/19a (TDX PAGE.ADD, MR.EXTEND), 34 (GUP)."""
        self._flush()
        m = self.target.metrics
        before = {name: m[f"arch.{name}"] for name in ("rmpupdate_4k", "tdx_demote")}
        n = self.target.populate(ev.start, ev.end, ev.in_place)
        for name, value in before.items():
            self._arch_adjust[name] += m[f"arch.{name}"] - value
        c = self.counters
        if self.sc.arch == "snp":
            c["snp_launch_update_4k"] += n
        elif self.sc.arch == "tdx":
            c["tdx_page_add"] += n
            if ev.measure:
                c["tdx_mr_extend"] += n * TDX_MR_EXTEND_PER_PAGE
        if not ev.in_place:
            c["populate_gup_4k"] += n
        c["populate_failed_pages"] += (ev.pages - n)

    def _on_LaunchFinish(self, ev: LaunchFinish) -> None:
        if self.sc.arch == "snp":
            self.counters["snp_launch_update_4k"] += ev.vmsa_pages

    def _on_Pin(self, ev: Pin) -> None:
        self._flush()
        if not self.target.pin(ev.start, ev.end):
            self.counters["pin_failed"] += 1

    def _on_Unpin(self, ev: Unpin) -> None:
        self._flush()
        self.target.unpin(ev.start, ev.end)

    # -- handlers: guest and exits --------------------------------------------------------------------
    def _on_GuestFault(self, ev: GuestFault) -> None:
        self._fault("touch", ev.start, ev.end)

    def _on_HcMapGpa(self, ev: HcMapGpa) -> None:
        self.counters["userspace_exit"] += 1

    def _on_MemfaultExit(self, ev: MemfaultExit) -> None:
        self.counters["userspace_exit"] += 1

    def _on_Psc(self, ev: Psc) -> None:
        self.counters["psc_vmgexit"] += 1
        self.counters["psc_entries"] += ev.entries

    def _on_Pvalidate(self, ev: Pvalidate) -> None:
        if ev.validate:
            self._fault("pvalidate", ev.start, ev.end, ev.page_size)
            return
        self._flush()  # rescind: no fault, but the RMP level of accepted memory decides the size
        self._settle_pvalidate(ev.start, ev.end, ev.page_size)

    def _on_Accept(self, ev: Accept) -> None:
        self._fault("accept", ev.start, ev.end, ev.try_levels)

    def _on_MapGpa(self, ev: MapGpa) -> None:
        self.counters["tdx_mapgpa_vmcall"] += 1

    def _on_Share(self, ev: Share) -> None:
        self.counters["pkvm_share_hvc"] += ev.hypercalls

    def _on_Unshare(self, ev: Unshare) -> None:
        self.counters["pkvm_unshare_hvc"] += ev.hypercalls

    def _on_MmioGuardMap(self, ev: MmioGuardMap) -> None:
        self.counters["pkvm_mmio_guard_hvc"] += ev.hypercalls
