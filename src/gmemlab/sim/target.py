"""The simulator's adapter over the model: one VM, one guest_memfd, one memslot, and range operations.

:class:`Target` builds what a scenario's launch events ask for on a :class:`~gmemlab.model.kvm_main.ModelBackend`
of the ``rfc-v2`` lineage (the HugeTLB + in-place conversion RFC the thread is about), with
``HostConfig.gmem_policy`` set to the policy under test (:mod:`gmemlab.model.policy`, workloads.md §2.3):

* VM type by arch: ``snp`` -> SNP (4), ``tdx`` -> TDX (5), ``none`` -> default (0), ``pkvm`` ->
  SW_PROTECTED (1, a VM with private memory and no vendor hooks: arm64 pKVM is not modelled, §1.4).
* guest_memfd flags from :class:`~gmemlab.workload.events.CreateGmem`: MMAP -> SUPPORT_SHARED, private by
  default -> INIT_PRIVATE, ``hugetlb`` 2M/1G -> HUGETLB + page-size log; ``buddy_thp`` (pKVM THP blocks)
  is approximated by 2 MiB HugeTLB folios [assumed]; ``buddy`` gives order-0 folios (§0).
* Arch limits (§5 ``arch_limits.private_max_level``) map onto ``HostConfig``: TDX 2M private mappings
  (Yan Zhao's RFC) iff the limit is >= 2M; for ``none``/``pkvm`` the TDP level cap follows the limit.

Everything is a range operation, never a loop over 4 KiB pages (DESIGN.md principle 3):

* :meth:`Target.fault_range` -- a guest touching a gfn range. The model's own fault
  (:func:`gmemlab.model.tdp.kvm_tdp_map`: ``kvm_gmem_get_pfn`` -> level rules of §2.1 -> vendor cap ->
  one leaf) decides the *first* leaf of every 1 GiB region of the range; when every input of that
  decision (folio shape, shareability, VM attributes, SNP RMP / TDX demotion state, slot geometry) is
  uniform over the rest of the region, the remaining leaves are installed with the same decision in one
  ``Stage2.map`` call and the vendor's range updates (**this range-level fault is an adapter here: the
  model has only the per-leaf fault and ``vcpu.touch``, which costs one model fault per 2 MiB**).
  Otherwise it falls back to one model fault per leaf, 4 KiB runs batched per 2 MiB as the model's
  ``touch_range`` does. ``exact=True`` uses ``vcpu.touch`` itself (the tests compare both).
* :meth:`Target.host_touch` -- host userspace faults through the guest_memfd mmap: one model fault
  (``kvm_gmem_fault_shared``, which splits under the policy) per 2 MiB piece, the other 4 KiB faults of
  the piece batched (also an adapter: the model's mapping faults one page per call).
* conversions, fallocate, punch, pins and populate call the model's ioctls directly.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ConversionError, GmemError, HostSigbus, HostSigsegv, KvmError, VcpuExit
from ..level import LEVEL_1G, LEVEL_2M, LEVEL_4K, LEVEL_NAMES, LEVEL_PAGES, Level
from ..model.config import HostConfig
from ..model.folio import SPLIT_2M
from ..model.gmem import GmemFile, GmemInode
from ..model.host import ModelHostMapping, ModelPin
from ..model.kvm_main import ModelBackend, ModelVm
from ..model.memslot import Memslot
from ..model.pagecache import UPTODATE
from ..model.tdp import _map_run_4k, kvm_tdp_map
from ..model.vendor import RMP_2M, RMP_SHARED, NoVendor, SnpRmp, Tdx
from ..uapi import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    GUESTMEM_HUGETLB_FLAG_SHIFT,
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    PAGE_SHIFT,
    GmemFlagsRfc2,
    VmType,
)
from ..workload.events import CreateGmem, SetMemoryRegion
from ..workload.scenario import Scenario
from ..workload.units import GiB, MiB

PROFILE = "rfc-v2"
VM_TYPES = {"none": VmType.DEFAULT, "snp": VmType.SNP, "tdx": VmType.TDX, "pkvm": VmType.SW_PROTECTED}
_LEVEL_OF_SIZE = {4096: LEVEL_4K, 2 * MiB: LEVEL_2M, GiB: LEVEL_1G}
PMD_PAGES = LEVEL_PAGES[LEVEL_2M]
PUD_PAGES = LEVEL_PAGES[LEVEL_1G]


def _is_rmp_2m(value: int) -> bool:
    return value == RMP_2M


def host_config(sc: Scenario, policy: str) -> HostConfig:
    """``HostConfig.upstream()`` with the policy under test and the scenario's arch limits (§5)."""
    limit = _LEVEL_OF_SIZE.get(sc.arch_limits.private_max_level, LEVEL_1G)
    changes: dict[str, object] = {"gmem_policy": policy}
    if sc.arch == "tdx":
        changes["tdx_huge_private"] = limit >= LEVEL_2M
    elif sc.arch in ("none", "pkvm"):
        changes["tdp_max_level"] = limit
    return HostConfig.upstream().with_(**changes)


@dataclass
class HostTouch:
    """What one :meth:`Target.host_touch` did: faults by level and pages the file refused (private)."""

    faults: Counter[str] = field(default_factory=Counter)
    refused: int = 0


class Target:
    """One simulated VM on the model (see the module docstring)."""

    def __init__(self, sc: Scenario, policy: str, exact: bool = False) -> None:
        self.sc = sc
        self.exact = exact
        self.backend = ModelBackend(PROFILE, host_config(sc, policy))
        self.vm: ModelVm = self.backend.create_vm(int(VM_TYPES[sc.arch]))
        self.vcpu = self.vm.create_vcpu(0)
        self.file: GmemFile | None = None
        self.mapping: ModelHostMapping | None = None
        self.shared_backing: ModelHostMapping | None = None
        self.slot: Memslot | None = None
        self.pins: dict[tuple[int, int], list[ModelPin]] = {}
        self.fault_errors = 0

    # -- model state -------------------------------------------------------------------------------
    @property
    def metrics(self) -> Mapping[str, int]:
        """The model's flat counters (``splits.1G``, ``stage2_faults.2M``, ``arch.psmash``, ...)."""
        return self.backend.counters.c

    @property
    def inode(self) -> GmemInode:
        assert self.file is not None, "CREATE_GMEM has not run"
        return self.file.inode

    def stage2_bytes(self) -> dict[str, int]:
        """Bytes mapped in stage-2 now, per leaf level (O(runs))."""
        return self.vm.stage2.mapped_bytes()

    def host_map_bytes(self) -> dict[str, int]:
        """Bytes mapped in host userspace page tables of the gmem mmap now, per level (O(runs))."""
        out = dict.fromkeys(LEVEL_NAMES.values(), 0)
        if self.mapping is not None:
            for s, e, v in self.mapping.ptes.runs():
                if v:
                    out[Level(v).label] += (e - s) << PAGE_SHIFT
        return out

    def vmemmap_bytes(self) -> int:
        return self.backend.counters.vmemmap_bytes

    def tracking(self, attr_ranges: bool) -> dict[str, int]:
        """Tracking memory: ranges held (maple trees, folio shapes, records) vs one entry per page.

        ``attr_ranges``: the VM attributes are in a maple tree (§0 Peng Zhang's RFC), so they count as
        ranges; otherwise as the xarray's one entry per private gfn.
        """
        out = self.backend.metrics()["tracking"]
        assert isinstance(out, dict)
        if attr_ranges:
            return {"ranges": out["ranges"] + self.vm.attributes.nr_runs(), "per_page_entries": 0}
        return {"ranges": out["ranges"], "per_page_entries": out["per_page_entries"]}

    def pagecache_stats(self) -> dict[str, int]:
        """The page cache's statistics (``folios_allocated``, ``pages_zeroed``, ...), empty before CREATE."""
        return dict(self.inode.pagecache.stats) if self.file is not None else {}

    def huge_block_pages(self) -> int:
        """4 KiB pages per HugeTLB folio of the file, 0 for order-0 files."""
        if self.file is None or self.inode.huge is None:
            return 0
        return self.inode.huge.hf.block_pages

    def tdx_huge(self) -> bool:
        """TDX private leaves may be 2M (Yan Zhao's RFC) rather than 4K only (upstream)."""
        return getattr(self.vm.vendor, "max_level", 1) > 1

    def private_leaves(self, start: int, end: int) -> int:
        """Private stage-2 leaves overlapping GPA ``[start, end)`` (what a zap of the range removes)."""
        n = 0
        for s, e, spte in self.vm.stage2.sptes.runs(start >> PAGE_SHIFT, end >> PAGE_SHIFT):
            if spte is not None and spte.private:
                pages = LEVEL_PAGES[spte.level]
                n += -(-e // pages) - s // pages
        return n

    def vmemmap_peak_bytes(self) -> int:
        return self.backend.counters.vmemmap_peak_bytes

    def shared_bytes(self) -> int:
        """Bytes of guest memory shared now (what VFIO pins with per-page shared tracking, linux-7 §3)."""
        if self.file is None or self.slot is None:
            return 0
        if self.slot.gmem_tracks_shareability:
            sh = self.inode.shareability
            return sum(e - s for s, e, shared in sh.runs(0, self.inode.npages) if shared) << PAGE_SHIFT
        private = KVM_MEMORY_ATTRIBUTE_PRIVATE
        g0, g1 = self.slot.base_gfn, self.slot.end_gfn
        return sum(e - s for s, e, v in self.vm.attributes.runs(g0, g1) if not v & private) << PAGE_SHIFT

    def is_private(self, gfn: int) -> bool:
        return self.vm.kvm_mem_is_private(gfn)

    def _index(self, gfn: int) -> int:
        assert self.slot is not None
        return gfn - self.slot.base_gfn + self.slot.gmem_pgoff

    # -- launch ------------------------------------------------------------------------------------
    def create_gmem(self, ev: CreateGmem) -> None:
        """KVM_CREATE_GUEST_MEMFD (+ mmap of the whole file when MMAP is asked for)."""
        flags = 0
        if ev.mmap:
            flags |= GmemFlagsRfc2.SUPPORT_SHARED
            if not ev.init_shared:
                flags |= GmemFlagsRfc2.INIT_PRIVATE
        if ev.allocator in ("hugetlb", "buddy_thp") and ev.page_size > 4096:
            flags |= GmemFlagsRfc2.HUGETLB | ((ev.page_size.bit_length() - 1) << GUESTMEM_HUGETLB_FLAG_SHIFT)
        self.file = self.vm.create_guest_memfd(ev.size, int(flags))
        if ev.mmap:
            self.mapping = self.file.mmap(ev.size)

    def bind(self, ev: SetMemoryRegion) -> None:
        """KVM_SET_USER_MEMORY_REGION2 with the guest_memfd; without MMAP the VMM's shared backing is an
        anonymous mapping (the classic HVA path of §2.1 step 6)."""
        assert self.file is not None
        if self.mapping is not None:
            uaddr = self.mapping.address + ev.gmem_offset
        else:
            self.shared_backing = self.backend.mmap_anonymous(ev.size)
            uaddr = self.shared_backing.address
        self.vm.set_user_memory_region2(ev.slot, KVM_MEM_GUEST_MEMFD, ev.gpa, ev.size, uaddr, self.file,
                                        ev.gmem_offset)
        self.slot = self.vm.find_memslot(ev.gpa >> PAGE_SHIFT)

    # -- VMM ioctls -------------------------------------------------------------------------------
    def set_attr(self, start: int, end: int, private: bool) -> bool:
        """KVM_SET_MEMORY_ATTRIBUTES; False when the range already had the attribute (early return)."""
        value = KVM_MEMORY_ATTRIBUTE_PRIVATE if private else 0
        if self.vm.attributes.all_equal(start >> PAGE_SHIFT, end >> PAGE_SHIFT, value):
            return False
        self.vm.set_memory_attributes(start, end - start, value)
        return True

    def conversion_work(self, start: int, end: int, to_shared: bool) -> tuple[int, int]:
        """(work items, pages) a conversion of GPA ``[start, end)`` would have ((0, 0): a no-op)."""
        sh = self.inode.shareability
        if not sh.convertible:
            return 0, 0
        work = sh.work_list(start >> PAGE_SHIFT, end >> PAGE_SHIFT, to_shared)
        return len(work), sum(e - s for s, e in work)

    def convert(self, start: int, end: int, to_shared: bool) -> bool:
        """KVM_GMEM_CONVERT_SHARED/PRIVATE; False when refused with EAGAIN (elevated refcount, §3.4)."""
        assert self.file is not None
        try:
            self.file.convert(start, end - start, to_shared)
        except ConversionError as exc:
            if exc.errno != errno.EAGAIN:
                raise
            return False
        return True

    def fallocate(self, start: int, end: int) -> None:
        assert self.file is not None
        self.file.fallocate(FALLOC_FL_KEEP_SIZE, start, end - start)

    def punch(self, start: int, end: int) -> bool:
        """PUNCH_HOLE; False when a merge-before-free met a pinned folio (EAGAIN, §3.6 step 3)."""
        assert self.file is not None
        try:
            self.file.fallocate(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, start, end - start)
        except KvmError as exc:
            if exc.errno != errno.EAGAIN:
                raise
            return False
        return True

    def populate(self, start: int, end: int, in_place: bool) -> int:
        """kvm_gmem_populate + the arch post_populate (§0, §1.2 step 4, §1.3): pages populated.

        The huge folio is allocated first (``kvm_gmem_get_folio``). In place (§1.2 method b) the payload
        is already in the folios, so only the arch side runs. SNP: 4K RMP entries (``rmp_make_private``);
        TDX: TDH.MEM.PAGE.ADD installs 4K S-EPT leaves (no fault).
        """
        g0, g1 = start >> PAGE_SHIFT, end >> PAGE_SHIFT
        inode = self.inode
        i0 = self._index(g0)
        if inode.huge is not None:
            hf = inode.huge.hf
            inode.huge.ensure_blocks(hf.block_of(i0), hf.block_of(i0 + (g1 - g0) - 1) + 1)
        done = g1 - g0
        if not in_place:
            try:
                done = self.vm.kvm_gmem_populate(g0, None, g1 - g0)
            except KvmError:
                return 0
        vendor = self.vm.vendor
        if isinstance(vendor, SnpRmp | Tdx):
            for piece in range(g0, g0 + done, PMD_PAGES) if done else ():
                n = min(piece - piece % PMD_PAGES + PMD_PAGES, g0 + done) - piece
                vendor.private_run_4k(inode, piece, self._index(piece), n)
                if isinstance(vendor, Tdx):
                    self.vm.stage2.map(piece, n, True, LEVEL_4K, faults=0)
        return done

    # -- pins ------------------------------------------------------------------------------------
    def pin(self, start: int, end: int) -> bool:
        """GUP(FOLL_LONGTERM) of ``[start, end)`` through the mmap: fault in, then raise refcounts."""
        if self.mapping is None:
            return False
        touched = self.host_touch(start, end)
        if touched.refused:
            return False
        i0 = self._index(start >> PAGE_SHIFT)
        pin = self.inode.pin(i0, i0 + ((end - start) >> PAGE_SHIFT))
        self.pins.setdefault((start, end), []).append(pin)
        return True

    def unpin(self, start: int, end: int) -> None:
        pins = self.pins.get((start, end))
        if pins:
            pins.pop().unpin()

    # -- host faults -------------------------------------------------------------------------------
    def host_touch(self, start: int, end: int, stride: int = 0) -> HostTouch:
        """Host writes through the gmem mmap: every page of ``[start, end)`` or one every ``stride`` bytes.

        One model fault (``kvm_gmem_fault_shared``) per 2 MiB piece decides the mapping level and
        splits under the policy; the piece's other 4 KiB faults are batched (same counters, range stores).
        """
        out = HostTouch()
        vma = self.mapping
        if vma is None:
            return out
        inode = self.inode
        step = max(stride >> PAGE_SHIFT, 1)
        first = self._index(start >> PAGE_SHIFT)
        last = first + ((end - start) >> PAGE_SHIFT)
        idx = first
        metrics = self.backend.counters
        while idx < last:
            page = idx - vma.pgoff
            held = vma.ptes.load(page)
            if held:
                size = Level(held).pages
                idx = self._next_touch(first, step, idx - idx % size + size if size > 1 else idx + 1)
                continue
            before = inode.stats["host_faults"]
            try:
                vma._fault(page, write=True)
            except (HostSigbus, HostSigsegv):
                out.refused += 1
                idx = self._next_touch(first, step, idx + 1)
                continue
            held = vma.ptes.load(page)
            level = Level(held) if held else LEVEL_4K
            if inode.stats["host_faults"] > before:
                out.faults[LEVEL_NAMES[level]] += 1
            if level > LEVEL_4K:
                size = LEVEL_PAGES[level]
                idx = self._next_touch(first, step, idx - idx % size + size)
                continue
            piece_end = min(last, idx - idx % PMD_PAGES + PMD_PAGES)
            nxt = idx + step
            if self.exact or nxt >= piece_end:
                idx = self._next_touch(first, step, idx + 1)
                continue
            k = -(-(piece_end - nxt) // step)
            span_end = nxt + (k - 1) * step + 1
            if not inode.shareability.all_shared(nxt, span_end) or vma.ptes.any_match(
                nxt - vma.pgoff, span_end - vma.pgoff, bool
            ):
                idx = self._next_touch(first, step, idx + 1)  # the per-page path for this piece
                continue
            # k more 4 KiB host faults in the same 2 MiB piece: same folio, same decision.
            inode.stats["host_faults"] += k
            pc = inode.pagecache
            huge = inode.huge is not None
            if step == 1:
                zeroed = pc.make_uptodate_range(nxt, span_end)
                vma.ptes.store(nxt - vma.pgoff, span_end - vma.pgoff, LEVEL_4K)
            else:
                zeroed = 0
                all_up = pc.state.all_equal(nxt, span_end, UPTODATE)
                for i in range(nxt, span_end, step):
                    if not all_up:
                        zeroed += pc.make_uptodate_range(i, i + 1)
                    vma.ptes.store(i - vma.pgoff, i + 1 - vma.pgoff, LEVEL_4K)
            if huge:
                metrics.add("bytes_zeroed", zeroed << PAGE_SHIFT)
                metrics.add("host_faults_4k", k)
                metrics.add("host_map_bytes_4k", k << PAGE_SHIFT)
            out.faults["4K"] += k
            idx = self._next_touch(first, step, piece_end)
        return out

    @staticmethod
    def _next_touch(first: int, step: int, at_least: int) -> int:
        """The first touched index (``first + k * step``) at or after ``at_least``."""
        if at_least <= first:
            return first
        return first + -(-(at_least - first) // step) * step

    # -- guest faults ------------------------------------------------------------------------------
    def fault_range(self, start: int, end: int) -> None:
        """The guest touches gfns ``[start, end)``, each page with its own private/shared state."""
        if start >= end:
            return
        if self.exact:
            try:
                self.vcpu.touch(start << PAGE_SHIFT, (end - start) << PAGE_SHIFT)
            except VcpuExit:
                self.fault_errors += 1
            return
        for a, b, spte in list(self.vm.stage2.sptes.runs(start, end)):
            if spte is None and not self._fault_hole(a, b):
                return  # like KVM_RUN, the touch stops at the first fault KVM cannot serve

    def _fault_hole(self, a: int, b: int) -> bool:
        vm, slot = self.vm, self.slot
        assert slot is not None
        s2 = vm.stage2
        x = a
        while x < b:
            spte = s2.lookup(x)
            if spte is not None:  # covered by a huge leaf installed earlier in this call
                size = LEVEL_PAGES[spte.level]
                x = x - x % size + size
                continue
            private = vm.kvm_mem_is_private(x) if vm.vm_type.has_private_mem else False
            if not (slot.gmem_only or private):
                # Shared fault on a classic slot: the HVA path maps 4K per page (the model's rule).
                run_end = min(b, self._same_state_end(x, b))
                s2.map(x, run_end - x, False, LEVEL_4K, faults=run_end - x)
                x = run_end
                continue
            try:
                first, pages, level = kvm_tdp_map(vm, slot, x, private)
            except GmemError:
                self.fault_errors += 1
                return False
            nxt = first + pages
            if level == LEVEL_1G:
                x = nxt
                continue
            region_end = min(b, x - x % PUD_PAGES + PUD_PAGES)
            if nxt < region_end and self._replicate(first, nxt, region_end, level, private):
                x = region_end if level == LEVEL_4K else max(nxt, region_end - region_end % PMD_PAGES)
                continue
            if level == LEVEL_4K and nxt < b:  # the model's touch_range batch: rest of this 2 MiB
                run_end = min(b, x - x % PMD_PAGES + PMD_PAGES, self._same_state_end(x, b))
                if run_end > nxt:
                    _map_run_4k(vm, slot, nxt, run_end, private)
                    nxt = run_end
            x = nxt
        return True

    def _same_state_end(self, gfn: int, limit: int) -> int:
        """End of the run of gfns from ``gfn`` with one ``kvm_mem_is_private`` answer."""
        slot = self.slot
        assert slot is not None
        if slot.gmem_tracks_shareability and slot.gmem_file is not None:
            base = slot.base_gfn - slot.gmem_pgoff
            runs = slot.gmem_file.inode.shareability.runs(gfn - base, limit - base)
            end = runs[0][1] + base if runs else limit
        else:
            end = next(iter(self.vm.attributes.runs(gfn, limit)))[1]
        return min(end, limit)

    def _replicate(self, probe: int, p: int, q: int, level: int, private: bool) -> bool:
        """Install leaves of ``level`` over ``[p, q)`` as the probe fault at ``[probe, p)`` decided, if every
        input of the decision is uniform over ``[probe, q)``; False (nothing done) otherwise.

        ``[p, q)`` lies in one 1 GiB region, so the 1G-level inputs (folio, shareability window, lpage
        record, disallow_lpage) are the probe's. 2M leaves need the 2M-level inputs uniform: shareability
        and attributes over the range, the folio shape, and the vendor's state (SNP RMP unassigned or 2M,
        TDX not demoted). 4K leaves are replicated only when every piece must decide 4K whatever its state:
        the folio is 4K (``max_order`` 0), the TDP level is capped at 4K, or TDX maps private memory at 4K
        only (upstream); and no 2M SNP RMP entry is left in the range (each would be PSMASHed by its own
        fault). A 1 GiB folio was prepared whole by the probe; 2 MiB folios are prepared one by one.
        """
        vm, slot = self.vm, self.slot
        assert slot is not None and slot.gmem_file is not None
        vendor = vm.vendor
        if type(vendor) not in (NoVendor, SnpRmp, Tdx):
            return False  # a vendor this adapter does not know: stay exact
        if slot.base_gfn % PMD_PAGES or slot.end_gfn % PMD_PAGES or slot.gmem_pgoff % PMD_PAGES:
            return False
        if level == LEVEL_2M:
            q -= q % PMD_PAGES
            if q <= p:
                return False
        inode = slot.gmem_file.inode
        base = slot.base_gfn - slot.gmem_pgoff
        i_probe, ip, iq = probe - base, p - base, q - base
        runs = inode.shareability.runs(i_probe, iq)
        if len(runs) != 1 or runs[0][2] == private:  # shared == private would mean a state change
            return False
        attr_runs = vm.attributes.runs(probe, q)
        next(attr_runs)
        if next(attr_runs, None) is not None:  # KVM_LPAGE_MIXED_FLAG could differ per 2 MiB
            return False
        huge = inode.huge
        folio_level = LEVEL_4K
        if huge is not None:
            hf = huge.hf
            b0, b1 = hf.block_of(i_probe), hf.block_of(iq - 1) + 1
            huge.ensure_blocks(b0, b1)
            if len(list(hf.shape.runs(b0, b1))) != 1:
                return False
            if hf.shape.load(b0) == SPLIT_2M and hf.sub2m is not None and \
                    len(list(hf.sub2m.runs(i_probe >> 9, (iq + 511) >> 9))) != 1:
                return False  # the 2 MiB folios of a staged split must agree too
            folio_level = hf.folio_level(ip) or LEVEL_4K
        s2 = vm.stage2
        n = q - p
        if level == LEVEL_4K:
            forced = (folio_level == LEVEL_4K or vm.system.config.tdp_max_level == LEVEL_4K
                      or (private and isinstance(vendor, Tdx) and vendor.max_level == LEVEL_4K))
            if not forced or slot.flags & KVM_MEM_LOG_DIRTY_PAGES:
                return False
            if private and isinstance(vendor, SnpRmp) and vendor.table(inode).any_match(ip, iq, _is_rmp_2m):
                return False  # each 2M RMP entry left in a split folio is PSMASHed by its own fault
            if huge is not None and folio_level == LEVEL_2M:
                # Each 2 MiB folio is prepared whole by its first fault (§3.7); the probe's is done.
                metrics, prep, pc = self.backend.counters, huge.prep, inode.pagecache
                for s in range(i_probe - i_probe % PMD_PAGES + PMD_PAGES, iq, PMD_PAGES):
                    hooks = prep.guest_prepare(pc, s, s + PMD_PAGES)
                    if hooks:
                        metrics.add("arch_prepares", len(hooks))
            inode.prepare_run(ip, iq)
            if private:
                vendor.private_run_4k(inode, p, ip, n)
            s2.map(p, n, private, LEVEL_4K, faults=n)
            return True
        # 2M leaves
        rmp_value = None
        if private and isinstance(vendor, SnpRmp):
            rmp = vendor.table(inode)
            rmp_runs = list(rmp.runs(ip, iq))
            if len(rmp_runs) != 1 or rmp_runs[0][2] not in (RMP_SHARED, RMP_2M):
                return False
            rmp_value = rmp_runs[0][2]
        if private and isinstance(vendor, Tdx) and (
            vendor.max_level < LEVEL_2M or vendor.demoted.any_match(p >> 9, q >> 9, bool)
        ):
            return False
        if huge is not None and folio_level == LEVEL_2M:
            metrics = self.backend.counters
            prep, pc = huge.prep, inode.pagecache
            for s in range(ip, iq, PMD_PAGES):  # each 2 MiB folio is prepared by its own fault
                hooks = prep.guest_prepare(pc, s, s + PMD_PAGES)
                if hooks:
                    metrics.add("arch_prepares", len(hooks))
        if rmp_value == RMP_SHARED:
            assert isinstance(vendor, SnpRmp)
            vendor.table(inode).store(ip, iq, RMP_2M)  # sev_gmem_prepare: is_large_rmp_possible
            self.backend.counters.add("rmpupdate_2m", n // PMD_PAGES)
        s2.map(p, n, private, LEVEL_2M, faults=n // PMD_PAGES)
        return True

    # -- vendor views ------------------------------------------------------------------------------
    def rmp_2m_pieces(self, start: int, end: int) -> int:
        """2 MiB pieces of GPA ``[start, end)`` whose SNP RMP entry is 2M (PVALIDATE 2M succeeds there)."""
        vendor = self.vm.vendor
        if not isinstance(vendor, SnpRmp) or self.file is None:
            return 0
        i0, i1 = self._index(start >> PAGE_SHIFT), self._index(end >> PAGE_SHIFT)
        total = 0
        for s, e, v in vendor.table(self.inode).runs(i0, i1):
            lo, hi = s + (-s) % PMD_PAGES, e - e % PMD_PAGES
            if v == RMP_2M and hi > lo:
                total += (hi - lo) // PMD_PAGES
        return total

    def leaf_runs(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """(gfn start, gfn end, level) of the stage-2 leaves over GPA ``[start, end)`` (0 = unmapped)."""
        out = []
        for s, e, spte in self.vm.stage2.sptes.runs(start >> PAGE_SHIFT, end >> PAGE_SHIFT):
            out.append((s, e, 0 if spte is None else spte.level))
        return out
