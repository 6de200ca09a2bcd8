"""The simulated machine: one VM on the model and what its VMM holds of it (guest_memfd, memslots, the
mmap, pins), driven by the scenario's events.

Not a fault engine: every decision (mapping levels, splits and merges, RMP and S-EPT levels, EAGAIN) is the
model's. :class:`Machine` is the simulator's handle on it: it builds what a scenario's launch events ask for
on a :class:`~gmemlab.model.ModelBackend` of the run's profile (default ``rfc-v2``, the HugeTLB + in-place
conversion RFC the thread is about; the Linux profiles in the run's flow, :mod:`gmemlab.sim.flow`), with
``HostConfig.gmem_policy`` set to the policy under test (:mod:`gmemlab.model.policy`, workloads.md §2.3), and
turns events into the model's ioctls and range operations:

* VM type by arch: ``snp`` -> SNP (4), ``tdx`` -> TDX (5), ``none`` -> default (0), ``pkvm`` ->
  SW_PROTECTED (1, a VM with private memory and no vendor hooks: arm64 pKVM is not modelled, §1.4).
* guest_memfd flags from :class:`~gmemlab.workload.events.CreateGmem`: on the Linux profiles MMAP and
  INIT_SHARED; on ``rfc-v2`` MMAP -> SUPPORT_SHARED, private by default -> INIT_PRIVATE,
  ``hugetlb`` 2M/1G -> HUGETLB + page-size log; ``buddy_thp`` (pKVM THP blocks)
  is approximated by 2 MiB HugeTLB folios [assumed]; ``buddy`` gives order-0 folios (§0).
* Arch limits (§5 ``arch_limits.private_max_level``, ``auto`` resolved per arch) map onto ``HostConfig``:
  TDX 2M private mappings (Yan Zhao's v3) iff the limit is 2M; SNP's largest RMP entry
  (``snp_rmp_max_level``: 2M, or the 4K what-if); for ``none``/``pkvm`` the TDP level cap
  (``max_huge_page_level``) follows the limit. Values an arch cannot have (1G on SNP or TDX) are refused
  when the scenario is read.
* Conversions: ``KVM_SET_MEMORY_ATTRIBUTES2`` on the guest_memfd in the linux-7.4 in-place flow, the RFC's
  ``KVM_GMEM_CONVERT_*`` on ``rfc-v2``, ``KVM_SET_MEMORY_ATTRIBUTES`` in the per-VM flow, which also keeps
  the shared copy (anonymous memory at ``userspace_addr``): the VMM loads the launch image there, and a
  conversion to private discards that range of it (QEMU ``ram_block_discard_range``, ``MADV_DONTNEED``).
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
from ..model.host import ModelHostMapping, ModelPin, Strided
from ..model.kvm_main import ModelBackend, ModelVm
from ..model.madvise import MADV_DONTNEED
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
    PAGE_SIZE,
    GmemFlags618,
    GmemFlagsRfc2,
    VmType,
)
from ..workload.events import CreateGmem, SetMemoryRegion
from ..workload.scenario import Scenario
from .flow import DEFAULT_PROFILE, PER_VM, Flow

PROFILE = DEFAULT_PROFILE  # a run's profile unless the scenario or --profile names one (sim/flow.py)
VM_TYPES = {"none": VmType.DEFAULT, "snp": VmType.SNP, "tdx": VmType.TDX, "pkvm": VmType.SW_PROTECTED}


def host_config(sc: Scenario, policy: str, flow: Flow | None = None) -> HostConfig:
    """``HostConfig.upstream()`` with the policy under test, the scenario's arch limits (§5), a HugeTLB
    pool holding every folio of the guest (the pool of ``upstream()`` is 4 TiB) and the flow's module
    parameter (:meth:`gmemlab.sim.flow.Flow.host_config_changes`)."""
    limit = Level.of_size(sc.private_max_level)
    changes: dict[str, object] = {"gmem_policy": policy, **(flow.host_config_changes() if flow else {})}
    if sc.arch == "tdx":
        changes["tdx_huge_private"] = limit >= Level.PG_2M
    elif sc.arch == "snp":
        changes["snp_rmp_max_level"] = limit
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

    def __init__(self, sc: Scenario, policy: str, flow: Flow | None = None) -> None:
        self.sc = sc
        self.flow = flow or Flow(PROFILE, PER_VM if not sc.gmem_flags.mmap else "in-place", "")
        self.backend = ModelBackend(self.flow.profile, host_config(sc, policy, flow))
        self.vm: ModelVm = self.backend.create_vm(int(VM_TYPES[sc.arch]))
        self.vcpu = self.vm.create_vcpu(0)
        self.file: GmemFile | None = None
        self.mapping: ModelHostMapping | None = None
        self.shared_backing: ModelHostMapping | None = None
        self.shared_copies: list[tuple[int, ModelHostMapping]] = []  # (slot GPA, anonymous shared copy)
        self.slots: list[Memslot] = []
        self.pins: dict[tuple[int, int], list[tuple[ModelPin, bool]]] = {}  # (pin, longterm)
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
        if self.flow.linux:  # merged flags (linux-7.md 0); INIT_SHARED for CoCo VMs only with 7.4's parameter on
            if ev.mmap:
                flags |= GmemFlags618.MMAP | (GmemFlags618.INIT_SHARED if ev.init_shared else 0)
        elif ev.mmap:
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
            self.shared_copies.append((ev.gpa, self.shared_backing))
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
        if private:
            self.discard_shared_copy(start, end)
        return True

    # -- the per-VM flow's shared copy (anonymous memory at userspace_addr) ------------------------------
    def _copies(self, start: int, end: int) -> list[tuple[ModelHostMapping, int, int]]:
        """(copy, first page, end page) of each shared copy overlapping GPA ``[start, end)``."""
        out = []
        for base, copy in self.shared_copies:
            lo, hi = max(start, base), min(end, base + copy.length)
            if lo < hi:
                out.append((copy, (lo - base) >> PAGE_SHIFT, (hi - base) >> PAGE_SHIFT))
        return out

    def discard_shared_copy(self, start: int, end: int) -> None:
        """QEMU ``kvm_convert_memory`` to private: ``ram_block_discard_range`` of the shared copy of GPA
        ``[start, end)`` (``MADV_DONTNEED`` on the anonymous memory)."""
        for copy, first, last in self._copies(start, end):
            copy.madvise(first << PAGE_SHIFT, (last - first) << PAGE_SHIFT, MADV_DONTNEED)

    def write_shared_copy(self, start: int, end: int, stride: int = 0) -> int:
        """The VMM writes GPA ``[start, end)`` (every page, or one every ``stride`` bytes) in its shared copy;
        returns the host faults taken (the pages become resident there)."""
        faults = 0
        for copy, first, last in self._copies(start, end):
            done, _ = copy.touch(first, last, max(stride >> PAGE_SHIFT, 1))
            faults += sum(done.values())
        return faults

    def footprint(self) -> dict[str, int]:
        """Host memory holding guest memory now (O(runs)): the guest_memfd's folios and the per-VM flow's
        shared copy, resident where the VMM wrote it or the guest mapped it shared (GUP on the HVA)."""
        gmem = self.inode.pagecache.count_allocated() << PAGE_SHIFT if self.file is not None else 0
        shared = 0
        for base, copy in self.shared_copies:
            g0 = base >> PAGE_SHIFT
            guest = [(s - g0, e - g0) for s, e, spte in self.vm.stage2.sptes.runs(g0, g0 + (copy.length >> PAGE_SHIFT))
                     if spte is not None and not spte.private]
            runs, points = list(guest), 0
            for s, e, v in copy.ptes.runs():
                if isinstance(v, Strided):  # a scattered host write: its pages outside the guest's runs
                    points += v.points(s, e) - sum(v.points(max(s, a), min(e, b)) for a, b in guest if a < e and b > s)
                elif v is not None:
                    runs.append((s, e))
            shared += (_union_pages(runs) + points) << PAGE_SHIFT
        return {"gmem_bytes": gmem, "shared_copy_bytes": shared, "total_bytes": gmem + shared}

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
            if self.flow.attributes2:  # linux-7.4: the in-place series' ioctl on the guest_memfd (linux-7.md 1.2)
                attributes = 0 if to_shared else KVM_MEMORY_ATTRIBUTE_PRIVATE
                self.file.set_memory_attributes2(start, end - start, attributes)
            else:
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

    def populate(self, start: int, end: int, in_place: bool, source: bool = True) -> int:
        """kvm_gmem_populate + the arch post_populate (§0, §1.2 step 4, §1.3): pages populated. In place
        (§1.2 method b; linux-7.md §1.3 a NULL source) the payload is already in the folios: on the Linux
        profiles the call passes a NULL source and the kernel's rule keeps the contents (7.4). In the per-VM
        flow the source is the image the VMM loaded into the shared copy (``source``: not SNP ZERO pages),
        read through it as GUP does."""
        gfn, npages = start >> PAGE_SHIFT, (end - start) >> PAGE_SHIFT
        src: bytes | None = None
        src_addr: int | None = None
        copies = self._copies(start, end) if self.flow.kind == PER_VM and source and not in_place else []
        if copies:
            copy, first, last = copies[0]
            if last - first == npages:
                src = copy.read(first << PAGE_SHIFT, npages * PAGE_SIZE)
                src_addr = copy.address + (first << PAGE_SHIFT)
        try:
            if self.flow.linux:
                return kvm_gmem_populate(self.vm, gfn, src, npages, src_addr)
            return kvm_gmem_populate(self.vm, gfn, None, npages, in_place=in_place)
        except KvmError:
            return 0

    # -- pins ------------------------------------------------------------------------------------
    def pin(self, start: int, end: int, longterm: bool = True) -> bool:
        """pin_user_pages of ``[start, end)`` through the mmap: fault in, then raise refcounts. ``longterm``
        (FOLL_LONGTERM, VFIO/iommufd) pins stay until unpinned; short-term ones (O_DIRECT, vhost copies) last
        one I/O (:meth:`drop_transient_pins`)."""
        if self.mapping is None:
            return False
        _, refused = self.host_touch(start, end)
        if refused:
            return False
        i0 = self._index(start >> PAGE_SHIFT)
        pin = self.inode.pin(i0, i0 + ((end - start) >> PAGE_SHIFT))
        self.pins.setdefault((start, end), []).append((pin, longterm))
        return True

    def unpin(self, start: int, end: int) -> None:
        pins = self.pins.get((start, end))
        if pins:
            pins.pop()[0].unpin()

    def drop_transient_pins(self, start: int, end: int) -> int:
        """Short-term pins on the folios of ``[start, end)`` (whole backing folios: a split or merge there
        meets their references) end before a conversion or punch proceeds: the restructuring waits for the
        transient reference to go (row 35, a refcount spin per pin [assumed: each I/O completes]); long-term
        pins stay and the operation fails with EAGAIN (row 36). Returns the pins dropped."""
        if not self.pins:
            return 0
        page = self.sc.backing.page
        lo, hi = start - start % page, -(-end // page) * page
        dropped = 0
        for (s, e), pins in self.pins.items():
            if s < hi and lo < e:
                for pin, longterm in [p for p in pins if not p[1]]:
                    pin.unpin()
                    pins.remove((pin, longterm))
                    dropped += 1
        return dropped

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


def _union_pages(runs: list[tuple[int, int]]) -> int:
    """Pages covered by the union of ``[start, end)`` runs."""
    total, reach = 0, None
    for s, e in sorted(runs):
        if reach is None or s > reach:
            total += e - s
            reach = e
        elif e > reach:
            total += e - reach
            reach = e
    return total
