"""The simulated machine: one VM on the model and what its VMM holds of it (guest_memfd, memslots, the
mmap, pins), driven by the scenario's events.

Not a fault engine: every decision (mapping levels, splits and merges, RMP and S-EPT levels, EAGAIN) is the
model's. :class:`Machine` is the simulator's handle on it: it builds what a scenario's launch events ask for
on a :class:`~gmemlab.model.ModelBackend` of the ``rfc-v2`` lineage (the HugeTLB + in-place conversion RFC
the thread is about), with ``HostConfig.gmem_policy`` set to the policy under test
(:mod:`gmemlab.model.policy`, workloads.md §2.3), and turns events into the model's ioctls and range
operations:

* VM type by arch: ``snp`` -> SNP (4), ``tdx`` -> TDX (5), ``none`` -> default (0), ``pkvm`` ->
  SW_PROTECTED (1, a VM with private memory and no vendor hooks: arm64 pKVM is not modelled, §1.4).
* guest_memfd flags from :class:`~gmemlab.workload.events.CreateGmem`: MMAP -> SUPPORT_SHARED, private by
  default -> INIT_PRIVATE, ``hugetlb`` 2M/1G -> HUGETLB + page-size log; ``buddy_thp`` (pKVM THP blocks)
  is approximated by 2 MiB HugeTLB folios [assumed]; ``buddy`` gives order-0 folios (§0).
* Arch limits (§5 ``arch_limits.private_max_level``) map onto ``HostConfig``: TDX 2M private mappings
  (Yan Zhao's v3) iff the limit is >= 2M; for ``none``/``pkvm`` the TDP level cap follows the limit.
* Sizes follow the scenario: the HugeTLB pool holds the guest's folios (and the model's mmap places top-down
  like Linux), so every built-in scenario runs from 1 GiB to 64 TiB.

It drives the model only through its range-level operations, never a loop over pages: a guest touch
(:func:`gmemlab.model.page_fault.touch_range`), a host touch with a stride
(:meth:`gmemlab.model.host.ModelHostMapping.touch`), the vendor decisions over a range (SNP's 2M RMP
entries, TDX's 4K accepts), and the ioctls. :mod:`gmemlab.sim.reference` is the per-page oracle it is
checked against.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping

from ..errors import ConversionError, KvmError, VcpuExit
from ..level import Level
from ..model.config import HostConfig
from ..model.gmem import GmemFile, GmemInode
from ..model.host import ModelHostMapping, ModelPin
from ..model.kvm_main import ModelBackend, ModelVm
from ..model.memslot import Memslot
from ..model.page_fault import touch_range
from ..model.populate import kvm_gmem_populate
from ..model.vendor import SnpRmp, Tdx
from ..uapi import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    GUESTMEM_HUGETLB_FLAG_SHIFT,
    KVM_MEM_GUEST_MEMFD,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    PAGE_SHIFT,
    GmemFlagsRfc2,
    VmType,
)
from ..workload.events import CreateGmem, SetMemoryRegion
from ..workload.scenario import Scenario

PROFILE = "rfc-v2"
VM_TYPES = {"none": VmType.DEFAULT, "snp": VmType.SNP, "tdx": VmType.TDX, "pkvm": VmType.SW_PROTECTED}


def host_config(sc: Scenario, policy: str) -> HostConfig:
    """``HostConfig.upstream()`` with the policy under test, the scenario's arch limits (§5) and a HugeTLB
    pool holding every folio of the guest (the pool of ``upstream()`` is 4 TiB)."""
    limit = Level.of_size(sc.arch_limits.private_max_level)
    changes: dict[str, object] = {"gmem_policy": policy}
    if sc.arch == "tdx":
        changes["tdx_huge_private"] = limit >= Level.PG_2M
    elif sc.arch in ("none", "pkvm"):
        changes["tdp_max_level"] = int(limit)
    page = sc.backing.page
    if page > 4096:
        pool = dict(HostConfig.upstream().hugetlb_pool_pages)
        pool[page] = max(pool.get(page, 0), sc.guest_mem // page)
        changes["hugetlb_pool_pages"] = pool
    return HostConfig.upstream().with_(**changes)


class Machine:
    """One simulated machine: a VM on the model and what the VMM holds of it (see the module docstring)."""

    def __init__(self, sc: Scenario, policy: str) -> None:
        self.sc = sc
        self.backend = ModelBackend(PROFILE, host_config(sc, policy))
        self.vm: ModelVm = self.backend.create_vm(int(VM_TYPES[sc.arch]))
        self.vcpu = self.vm.create_vcpu(0)
        self.file: GmemFile | None = None
        self.mapping: ModelHostMapping | None = None
        self.shared_backing: ModelHostMapping | None = None
        self.slots: list[Memslot] = []
        self.pins: dict[tuple[int, int], list[ModelPin]] = {}
        self.no_direct_map = False
        self.fault_errors = 0

    # -- model state -------------------------------------------------------------------------------
    @property
    def metrics(self) -> Mapping[str, int]:
        """The model's metrics sink (keys: the cost model's counters, :mod:`gmemlab.model.metrics`)."""
        return self.backend.counters.counters

    def count(self, delta: Mapping[str, int], times: int = 1) -> None:
        """Add ``times`` x ``delta`` to the model's metrics sink: what ``times`` more copies of calls that only
        counted did (:meth:`gmemlab.sim.engine.Engine._on_Repeat`)."""
        for key, n in delta.items():
            self.backend.counters.add(key, n * times)

    @property
    def inode(self) -> GmemInode:
        assert self.file is not None, "CREATE_GMEM has not run"
        return self.file.inode

    def splits(self, level: Level) -> int:
        return self.backend.counters.splits(level)

    def merges(self, level: Level) -> int:
        return self.backend.counters.merges(level)

    def stage2_bytes(self) -> dict[str, int]:
        """Bytes mapped in stage-2 now, per leaf level (O(runs))."""
        return self.vm.stage2.mapped_bytes()

    def host_map_bytes(self) -> dict[str, int]:
        """Bytes mapped in host userspace page tables of the gmem mmap now, per level (O(runs))."""
        if self.mapping is None:
            return {level.label: 0 for level in (Level.PG_4K, Level.PG_2M, Level.PG_1G)}
        return self.mapping.mapped_bytes()

    def vmemmap_bytes(self) -> int:
        return self.backend.counters.vmemmap_bytes

    def vmemmap_peak_bytes(self) -> int:
        return self.backend.counters.vmemmap_peak_bytes

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
        """TDX private leaves may be 2M (Yan Zhao's v3) rather than 4K only (upstream)."""
        vendor = self.vm.vendor
        return isinstance(vendor, Tdx) and vendor.max_level > Level.PG_4K

    def private_leaves(self, start: int, end: int) -> int:
        """Private stage-2 leaves overlapping GPA ``[start, end)`` (what a zap of the range removes)."""
        n = 0
        for s, e, spte in self.vm.stage2.sptes.runs(start >> PAGE_SHIFT, end >> PAGE_SHIFT):
            if spte is not None and spte.private:
                n += spte.level.number(spte.level.align_up(e)) - spte.level.number(s)
        return n

    def shared_bytes(self) -> int:
        """Bytes of guest memory shared now (what VFIO pins with per-page shared tracking, linux-7 §3)."""
        if self.file is None or not self.slots:
            return 0
        if self.slots[0].gmem_tracks_shareability:
            sh = self.inode.shareability
            return sum(e - s for s, e, shared in sh.runs(0, self.inode.npages) if shared) << PAGE_SHIFT
        private = KVM_MEMORY_ATTRIBUTE_PRIVATE
        g0, g1 = self.slots[0].base_gfn, self.slots[-1].end_gfn
        return sum(e - s for s, e, v in self.vm.attributes.runs(g0, g1) if not v & private) << PAGE_SHIFT

    @staticmethod
    def _index(gfn: int) -> int:
        """The file index of ``gfn``: the simulated memslots map RAM offset ``x`` at gfn ``x`` (events carry
        RAM offsets, :mod:`gmemlab.arch.layout`)."""
        return gfn

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
        self.no_direct_map = ev.no_direct_map
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
        slot = self.vm.find_memslot(ev.gpa >> PAGE_SHIFT)
        assert slot is not None and slot.base_gfn == slot.gmem_pgoff
        self.slots.append(slot)

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
        """kvm_gmem_populate + the arch post_populate (§0, §1.2 step 4, §1.3): pages populated. In place
        (§1.2 method b; linux-7.md §1.3 a NULL source) the payload is already in the folios."""
        try:
            return kvm_gmem_populate(self.vm, start >> PAGE_SHIFT, None, (end - start) >> PAGE_SHIFT, in_place=in_place)
        except KvmError:
            return 0

    # -- pins ------------------------------------------------------------------------------------
    def pin(self, start: int, end: int) -> bool:
        """GUP(FOLL_LONGTERM) of ``[start, end)`` through the mmap: fault in, then raise refcounts."""
        if self.mapping is None:
            return False
        _, refused = self.host_touch(start, end)
        if refused:
            return False
        i0 = self._index(start >> PAGE_SHIFT)
        pin = self.inode.pin(i0, i0 + ((end - start) >> PAGE_SHIFT))
        self.pins.setdefault((start, end), []).append(pin)
        return True

    def unpin(self, start: int, end: int) -> None:
        pins = self.pins.get((start, end))
        if pins:
            pins.pop().unpin()

    # -- accesses ----------------------------------------------------------------------------------
    def host_touch(self, start: int, end: int, stride: int = 0) -> tuple[dict[Level, int], int]:
        """Host writes through the gmem mmap: every page of ``[start, end)`` or one every ``stride`` bytes;
        returns the host faults by level and the pages refused (private)."""
        vma = self.mapping
        if vma is None:
            return {}, 0
        first = self._index(start >> PAGE_SHIFT) - vma.pgoff
        last = first + ((end - start) >> PAGE_SHIFT)
        return vma.touch(first, last, max(stride >> PAGE_SHIFT, 1))

    def fault_range(self, start: int, end: int, max_level: Level = Level.PG_1G) -> None:
        """The guest touches gfns ``[start, end)``, each page with its own private/shared state; like
        KVM_RUN, the touch stops at the first fault KVM cannot serve (counted in ``fault_errors``)."""
        if start >= end:
            return
        try:
            touch_range(self.vm, start, end, write=True, max_level=max_level)
        except VcpuExit:
            self.fault_errors += 1

    # -- vendor decisions over a range --------------------------------------------------------------------
    def rmp_2m_pieces(self, start: int, end: int) -> int:
        """2 MiB pieces of GPA ``[start, end)`` whose SNP RMP entry is 2M (PVALIDATE 2M succeeds there)."""
        vendor = self.vm.vendor
        if not isinstance(vendor, SnpRmp) or self.file is None:
            return 0
        return vendor.rmp_2m_entries(self.inode, self._index(start >> PAGE_SHIFT), self._index(end >> PAGE_SHIFT))

    def accept_4k(self, start: int, end: int) -> None:
        """TDX: the guest accepts GPA ``[start, end)`` at 4K (GUEST_INHIBIT; a 2M leaf there is demoted)."""
        vendor = self.vm.vendor
        if isinstance(vendor, Tdx):
            vendor.guest_accept_4k(start >> PAGE_SHIFT, end >> PAGE_SHIFT)

    def leaf_runs(self, start: int, end: int) -> list[tuple[int, int, Level | None]]:
        """(gfn start, gfn end, level) of the stage-2 leaves over GPA ``[start, end)`` (None: unmapped)."""
        return [(s, e, None if spte is None else spte.level)
                for s, e, spte in self.vm.stage2.sptes.runs(start >> PAGE_SHIFT, end >> PAGE_SHIFT)]
