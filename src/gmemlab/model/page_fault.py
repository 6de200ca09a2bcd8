"""The x86 guest fault path of a vCPU: routing, memory-fault exits and the HVA path (spec 2.7, 2.8).

After ``kvm_mmu_page_fault`` / ``kvm_mmu_faultin_pfn`` (arch/x86/kvm/mmu/mmu.c, 6.18): a fault whose
private/shared type disagrees with ``kvm_mem_is_private`` exits with ``KVM_EXIT_MEMORY_FAULT``; private
faults and every fault on a GMEM_ONLY slot get their page from guest_memfd (:func:`kvm_tdp_map`); shared
faults on a classic slot take the page from ``userspace_addr`` (GUP on the HVA). No memslot is MMIO.

:func:`touch_range` drives a guest touching a whole range: guest_memfd gfns in runs through
:func:`gmemlab.model.tdp.kvm_tdp_map_range` (decisions taken once per run where every input is the same,
the same counters as one fault per leaf), the rest page by page.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from ..backend import PROT_READ
from ..errors import GmemError, HostSigbus, HostSigsegv, UnsupportedByBackend, VcpuExit
from ..level import Level
from ..uapi import (
    KVM_EXIT_MEMORY_FAULT,
    KVM_EXIT_MMIO,
    KVM_EXIT_UNKNOWN,
    KVM_MEM_READONLY,
    KVM_MEMORY_EXIT_FLAG_PRIVATE,
    PAGE_SHIFT,
    PAGE_SIZE,
    VmType,
)
from .gmem import GmemFile
from .host import ModelHostMapping
from .kvm_host import Kvm
from .memslot import Memslot
from .tdp import _same_state_end, kvm_tdp_map, kvm_tdp_map_range


class PageTarget:
    """The page a guest access lands on once the fault is resolved."""

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def write(self, offset: int, data: bytes) -> None:
        raise NotImplementedError


class GmemPage(PageTarget):
    """A guest_memfd page (private, or shared on a GMEM_ONLY slot)."""

    def __init__(self, file: GmemFile, index: int) -> None:
        self.cache = file.inode.pagecache
        self.index = index

    def read(self, offset: int, length: int) -> bytes:
        return self.cache.read(self.index, offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self.cache.write(self.index, offset, data)


class HvaPage(PageTarget):
    """A page of the VMM's mapping at the slot's ``userspace_addr``."""

    def __init__(self, vma: ModelHostMapping, page: int) -> None:
        self.vma = vma
        self.page = page

    def read(self, offset: int, length: int) -> bytes:
        return self.vma._read_page(self.page, offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self.vma._write_page(self.page, offset, data)


@dataclass(frozen=True)
class OrphanedGmemLeaf:
    """Where the stage-2 leaves of a guest_memfd slot point after a kernel before upstream 9935df5333aa (6.18.0-
    6.18.2) accepted dropping KVM_MEM_GUEST_MEMFD from it in place (``KVM_MR_FLAGS_ONLY``): that change does not
    zap, so gfns the guest had mapped keep reading and writing the guest_memfd pages while other gfns fault through
    the new slot's ``userspace_addr``, until something zaps them (an invalidation of the file's still-bound range,
    an attribute change, a later move or delete, or an mmu_notifier invalidation of the slot's HVA range, which
    ``vma``/``seen`` stand for: the mapping at ``userspace_addr`` then and the invalidation count then)."""

    file: GmemFile
    index_base: int  # file index of gfn 0
    vma: ModelHostMapping | None
    slot_hva: int
    seen: int

    def page(self, vm: Kvm, gfn: int) -> GmemPage | None:
        """The guest_memfd page the leaf maps, None if an mmu_notifier invalidation has zapped it since."""
        if self.vma is not None:
            page = (self.slot_hva - self.vma.address >> PAGE_SHIFT) + gfn
            if self.vma.unmapped or not 0 <= page < self.vma.npages or self.vma.invalidated.load(page) > self.seen:
                return None
        return GmemPage(self.file, gfn + self.index_base)


def orphan_gmem_leaves(vm: Kvm, old: Memslot) -> None:
    """Tag the present leaves of ``old`` (a guest_memfd slot replaced in place by a plain one) with the pages
    they still map (:class:`OrphanedGmemLeaf`)."""
    if old.gmem_file is None:
        return
    vma = vm.address_space.find(old.userspace_addr) if old.userspace_addr else None
    # gfn g's hva is userspace_addr + (g - base_gfn) pages; OrphanedGmemLeaf.page adds gfn to slot_hva's page
    slot_hva = old.userspace_addr - (old.base_gfn << PAGE_SHIFT)
    origin = OrphanedGmemLeaf(old.gmem_file, old.gmem_pgoff - old.base_gfn, vma, slot_hva,
                              vm.address_space.invalidations)
    vm.stage2.set_origin(old.base_gfn, old.end_gfn, origin)


def split_by_page(gpa: int, length: int) -> list[tuple[int, int, int]]:
    """``[gpa, gpa + length)`` as (page gpa, offset in page, chunk length) pieces."""
    out = []
    pos, end = gpa, gpa + length
    while pos < end:
        page = pos & ~(PAGE_SIZE - 1)
        chunk = min(page + PAGE_SIZE, end) - pos
        out.append((page, pos - page, chunk))
        pos += chunk
    return out


def fault_is_private(vm: Kvm, gfn: int, private: bool | None) -> bool:
    """The fault's type: what the guest asked for, or (no hardware bit) what KVM decides."""
    vm_type = vm.vm_type
    if not vm_type.has_private_mem:
        if private:
            raise UnsupportedByBackend(f"a {vm_type.label} VM cannot make private accesses")
        return False
    if private is None:
        # SW_PROTECTED has no hardware bit: KVM takes the attribute. SNP/TDX guests access private
        # memory unless they say otherwise.
        return vm.kvm_mem_is_private(gfn) if vm_type == VmType.SW_PROTECTED else True
    return private


def kvm_mmu_page_fault(vm: Kvm, gpa: int, write: bool, private: bool | None, prefault: bool = False,
                       max_level: Level = Level.PG_1G) -> PageTarget:
    """Resolve one guest access at ``gpa``: the page it lands on, or a :class:`VcpuExit`.

    A GPA without memslot leaves a cached MMIO SPTE (with ``kvm.mmio_caching``). A later guest access there is a
    reserved-bit fault (``handle_mmio_page_fault``): emulated MMIO while the SPTE's memslot generation is
    current, whatever the memory attributes say; once a memslot change made it stale, the fault takes the normal
    path, but as a shared fault (a SW_PROTECTED VM's private bit is not set for reserved faults). Memory
    attribute changes do not zap GPAs without memslot, so private GPAs the guest touched as MMIO stay MMIO, and
    later exit with KVM_EXIT_MEMORY_FAULT flags 0 (found on 6.18.2 under QEMU). ``prefault`` is
    ``KVM_PRE_FAULT_MEMORY``, which maps through ``kvm_tdp_map_page`` without the reserved-fault step.
    ``max_level`` is ``fault->max_level`` (a TDX ACCEPT at 4K caps the mapping, :func:`touch_range`).
    """
    gfn = gpa >> PAGE_SHIFT
    if not prefault:
        generation = vm.stage2.mmio_generation(gfn)
        if generation == vm.memslots_generation[0]:
            raise VcpuExit(KVM_EXIT_MMIO, 0, gpa, 0, 0, write, "cached MMIO SPTE: emulated MMIO")
        if generation is not None and private is None and vm.vm_type == VmType.SW_PROTECTED:
            private = False  # a stale MMIO SPTE: the reserved fault goes on as a shared fault
    spte = vm.stage2.lookup(gfn)
    if spte is not None and isinstance(spte.origin, OrphanedGmemLeaf):
        page = spte.origin.page(vm, gfn)
        if page is not None:
            return page  # the leaf is present: the access needs no fault
        vm.stage2.zap(gfn, gfn + 1)  # an mmu_notifier invalidation removed it
    slot = vm.find_memslot(gfn)
    is_private = fault_is_private(vm, gfn, private)
    flags = KVM_MEMORY_EXIT_FLAG_PRIVATE if is_private else 0
    page_gpa = gfn << PAGE_SHIFT
    # kvm_mmu_faultin_pfn: the attribute check comes before the memslot lookup's outcome
    if is_private != vm.kvm_mem_is_private(gfn):
        raise VcpuExit(KVM_EXIT_MEMORY_FAULT, errno.EFAULT, page_gpa, PAGE_SIZE, flags, write,
                       "fault type disagrees with the memory attribute")
    if slot is None and not is_private:
        if vm.config.mmio_caching and gfn < 1 << (vm.config.max_gpa_bits - PAGE_SHIFT):
            vm.stage2.map_mmio(gfn, vm.memslots_generation[0])  # kvm_handle_noslot_fault -> make_mmio_spte
        raise VcpuExit(KVM_EXIT_MMIO, 0, gpa, 0, 0, write, "no memslot: emulated MMIO")
    if slot is not None and write and slot.flags & KVM_MEM_READONLY:
        raise VcpuExit(KVM_EXIT_MMIO, 0, gpa, 0, 0, write, "write to a read-only memslot")
    if is_private or (slot is not None and slot.gmem_only):
        return _gmem_fault(vm, slot, gfn, is_private, write, flags, max_level)
    assert slot is not None
    return _hva_fault(vm, slot, gfn, write)


def _gmem_fault(vm: Kvm, slot: Memslot | None, gfn: int, is_private: bool, write: bool, flags: int,
                max_level: Level = Level.PG_1G) -> GmemPage:
    """``kvm_mmu_faultin_pfn_gmem``: the page comes from guest_memfd, mapped if not yet."""
    page_gpa = gfn << PAGE_SHIFT
    if slot is None or not slot.has_gmem:
        raise VcpuExit(KVM_EXIT_MEMORY_FAULT, errno.EFAULT, page_gpa, PAGE_SIZE, flags, write,
                       "private access outside a guest_memfd memslot")
    if slot.gmem_file is None:
        raise VcpuExit(KVM_EXIT_MEMORY_FAULT, errno.EFAULT, page_gpa, PAGE_SIZE, flags, write,
                       "kvm_gmem_get_pfn: guest_memfd file released")
    file = slot.gmem_file
    if vm.stage2.lookup(gfn) is None:
        try:
            kvm_tdp_map(vm, slot, gfn, is_private, max_level)  # kvm_gmem_get_pfn, level selection, map
        except GmemError as exc:
            raise VcpuExit(KVM_EXIT_MEMORY_FAULT, exc.errno, page_gpa, PAGE_SIZE, flags, write,
                           f"kvm_gmem_get_pfn: {exc.reason}") from None
    return GmemPage(file, gfn - slot.base_gfn + slot.gmem_pgoff)


def _hva_fault(vm: Kvm, slot: Memslot, gfn: int, write: bool) -> HvaPage:
    """Shared fault on a classic slot: the page comes from ``userspace_addr`` (GUP on the HVA)."""
    hva = slot.userspace_addr + ((gfn - slot.base_gfn) << PAGE_SHIFT)
    vma = vm.address_space.find(hva) if slot.userspace_addr else None
    if vma is None:
        raise VcpuExit(KVM_EXIT_UNKNOWN, errno.EFAULT, 0, 0, 0, write, f"no host mapping at hva {hva:#x}")
    page = (hva - vma.address) >> PAGE_SHIFT
    if not write and not _gup_read_ok(vma, page, map_writable=not slot.flags & KVM_MEM_READONLY):
        raise VcpuExit(KVM_EXIT_UNKNOWN, errno.EFAULT, 0, 0, 0, write,
                       "hva_to_pfn: GUP read of a page without VM_READ (check_vma_flags)")
    try:
        # hva_to_pfn(): GUP faults the page into the VMM's page tables (its PTE is then present, as
        # /proc/self/pagemap shows), with the VMA's protection and the file's answer
        vma._fault(page, write, gup=True)
    except (HostSigbus, HostSigsegv) as exc:
        raise VcpuExit(KVM_EXIT_UNKNOWN, errno.EFAULT, 0, 0, 0, write, f"GUP failed: {exc.reason}") from None
    if vm.stage2.lookup(gfn) is None:
        vm.stage2.map(gfn, 1, False)
    return HvaPage(vma, page)


def _gup_read_ok(vma: ModelHostMapping, page: int, map_writable: bool) -> bool:
    """hva_to_pfn() for a read fault: on a writable memslot GUP-fast first tries the page with FOLL_WRITE, which
    a present, writable PTE passes whatever the VMA says; else GUP's read needs VM_READ, although the CPU could
    read a PROT_WRITE or PROT_EXEC page (host fuzz run, seed 933)."""
    if map_writable and vma.pte_writable(page):
        return True
    return 0 <= page < vma.npages and bool(vma.prots.load(page) & PROT_READ)


def touch_range(vm: Kvm, start: int, end: int, write: bool, max_level: Level = Level.PG_1G) -> None:
    """Touch gfns ``[start, end)`` as the guest would (see the module docstring). ``max_level`` is
    ``fault->max_level`` (a TDX guest accepting at that level caps its faults)."""
    _reached, stopped = fault_in_range(vm, start, end, write, prefault=False, max_level=max_level)
    if stopped is not None:
        raise stopped


def fault_in_range(vm: Kvm, start: int, end: int, write: bool, prefault: bool,
                   max_level: Level = Level.PG_1G) -> tuple[int, VcpuExit | None]:
    """Fault gfns ``[start, end)`` in, ascending, as :func:`touch_range`; returns the first gfn not faulted in
    (``end`` when all were) and the exit that stopped there (None when none did). Already mapped gfns count as
    faulted (a spurious fault). guest_memfd gfns go in runs of one private/shared state: the run's first
    unmapped gfn through :func:`kvm_mmu_page_fault` (every check a fault makes), the rest through
    :func:`gmemlab.model.tdp.kvm_tdp_map_range`; shared runs on a classic slot backed by anonymous memory in
    one step (:func:`_fault_hva_run`)."""
    gfn = start
    try:
        while gfn < end:
            slot = vm.find_memslot(gfn)
            via_gmem = slot is not None and slot.has_gmem and slot.gmem_file is not None
            if slot is None or not via_gmem or not (slot.gmem_only or vm.kvm_mem_is_private(gfn)):
                gfn = _fault_hva_run(vm, slot, gfn, end, write, prefault)
                continue
            run_end = _same_state_end(vm, slot, gfn, min(end, slot.end_gfn))
            hole = next((a for a, _, spte in vm.stage2.sptes.runs(gfn, run_end) if spte is None), None)
            if hole is None:
                gfn = run_end
                continue
            gfn = hole
            private = _access(vm, gfn, prefault)
            kvm_mmu_page_fault(vm, gfn << PAGE_SHIFT, write, private, prefault, max_level)
            if gfn + 1 < run_end:
                is_private = fault_is_private(vm, gfn, private)
                try:
                    kvm_tdp_map_range(vm, slot, gfn + 1, run_end, is_private, max_level)
                except GmemError as exc:
                    gfn = next((a for a, _, spte in vm.stage2.sptes.runs(gfn, run_end) if spte is None), run_end)
                    flags = KVM_MEMORY_EXIT_FLAG_PRIVATE if is_private else 0
                    raise VcpuExit(KVM_EXIT_MEMORY_FAULT, exc.errno, gfn << PAGE_SHIFT, PAGE_SIZE, flags, write,
                                   f"kvm_gmem_get_pfn: {exc.reason}") from None
            gfn = run_end
    except VcpuExit as exc:
        return gfn, exc
    return end, None


def _fault_hva_run(vm: Kvm, slot: Memslot | None, gfn: int, end: int, write: bool, prefault: bool) -> int:
    """One fault at ``gfn`` through the general path; when it maps a shared page of a classic slot backed by
    anonymous memory, the rest of that slot's shared gfns inside the same mapping decide alike and are mapped in
    one step (GUP on anonymous memory cannot fail). Returns the next gfn to fault."""
    kvm_mmu_page_fault(vm, gfn << PAGE_SHIFT, write, _access(vm, gfn, prefault), prefault)
    if slot is None or slot.has_gmem or vm.kvm_mem_is_private(gfn) or (write and slot.flags & KVM_MEM_READONLY):
        return gfn + 1
    hva = slot.userspace_addr + ((gfn - slot.base_gfn) << PAGE_SHIFT)
    vma = vm.address_space.find(hva)
    if vma is None or vma.file is not None:
        return gfn + 1
    # the rest decides alike only where the mapping's pages are alike: one protection, no guard marker
    page = (hva - vma.address) >> PAGE_SHIFT
    if not 0 <= page < vma.npages or vma.markers.load(page):
        return gfn + 1
    same = min(next(iter(vma.prots.runs(page, vma.npages)))[1], next(iter(vma.markers.runs(page, vma.npages)))[1])
    if not write and not vma.prots.load(page) & PROT_READ:
        return gfn + 1  # GUP read decided by each page's PTE (_gup_read_ok)
    vma_end = slot.base_gfn + ((vma.address + (same << PAGE_SHIFT) - slot.userspace_addr) >> PAGE_SHIFT)
    limit = min(end, slot.end_gfn, vma_end)
    run_end = next(iter(vm.attributes.runs(gfn, limit)))[1] if limit > gfn + 1 else limit
    for a, b, spte in list(vm.stage2.sptes.runs(gfn + 1, run_end)):
        if spte is None:
            vm.stage2.map(a, b - a, False, Level.PG_4K, faults=b - a)
    return max(run_end, gfn + 1)


def _access(vm: Kvm, gfn: int, prefault: bool) -> bool | None:
    """The fault type of a well-behaved guest: private where the memory is private (CoCo VMs); a SW_PROTECTED
    guest has no private bit and leaves it to KVM (None). Pre-fault takes it from the attribute."""
    if not vm.vm_type.has_private_mem or (vm.vm_type == VmType.SW_PROTECTED and not prefault):
        return None
    return vm.kvm_mem_is_private(gfn)
