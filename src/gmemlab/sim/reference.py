"""The per-page reference run: the independent oracle for the simulator's range path (simulator issue
item 1).

:class:`ReferenceMachine` replaces every range operation of :class:`~gmemlab.sim.machine.Machine` with the
model's single-page paths: one :func:`~gmemlab.model.tdp.kvm_tdp_map` (or
:func:`~gmemlab.model.page_fault.kvm_mmu_page_fault` for a classic slot's shared page) per unmapped page,
one host fault (:meth:`~gmemlab.model.host.ModelHostMapping._fault`) per touched page, and SNP's 2M RMP
entries read one 2 MiB piece at a time. It shares none of the batching code (``kvm_tdp_map_range``,
``_map_like``, ``_map_run_4k``, ``ModelHostMapping.touch``, ``host_fault_run``), so a run with it
(``run_scenario(..., reference=True, coalesce=False)``) must give the same counters and metrics as the
range path. It walks pages: use it on small guests only.
"""

from __future__ import annotations

from ..errors import GmemError, HostSigbus, HostSigsegv, VcpuExit
from ..level import LEVELS, Level
from ..model.page_fault import kvm_mmu_page_fault
from ..model.tdp import kvm_tdp_map
from ..model.vendor import RMP_2M, SnpRmp
from ..uapi import PAGE_SHIFT
from .machine import Machine

PMD = Level.PG_2M


class ReferenceMachine(Machine):
    """:class:`Machine` with page-by-page faults (see the module docstring)."""

    def fault_range(self, start: int, end: int, max_level: Level = Level.PG_1G) -> None:
        vm = self.vm
        for gfn in range(start, end):
            if vm.stage2.lookup(gfn) is not None:
                continue  # a mapped page takes no fault
            slot = vm.find_memslot(gfn)
            private = vm.vm_type.has_private_mem and vm.kvm_mem_is_private(gfn)
            try:
                if slot is not None and slot.gmem_file is not None and (private or slot.gmem_only):
                    kvm_tdp_map(vm, slot, gfn, private, max_level)
                else:
                    kvm_mmu_page_fault(vm, gfn << PAGE_SHIFT, True, private if vm.vm_type.has_private_mem else None)
            except (GmemError, VcpuExit):
                self.fault_errors += 1
                return

    def host_touch(self, start: int, end: int, stride: int = 0) -> tuple[dict[Level, int], int]:
        vma = self.mapping
        if vma is None:
            return {}, 0
        faults = dict.fromkeys(LEVELS, 0)
        refused = 0
        first = self._index(start >> PAGE_SHIFT) - vma.pgoff
        last = first + ((end - start) >> PAGE_SHIFT)
        for page in range(first, last, max(stride >> PAGE_SHIFT, 1)):
            if vma.held(page) is not None:
                continue
            try:
                vma._fault(page, write=True)
            except (HostSigbus, HostSigsegv):
                refused += 1
                continue
            faults[vma.held(page) or Level.PG_4K] += 1
        return faults, refused

    def rmp_2m_pieces(self, start: int, end: int) -> int:
        vendor = self.vm.vendor
        if not isinstance(vendor, SnpRmp) or self.file is None:
            return 0
        table = vendor.table(self.inode)
        i0, i1 = self._index(start >> PAGE_SHIFT), self._index(end >> PAGE_SHIFT)
        return sum(1 for i in range(PMD.align_up(i0), PMD.align_down(i1), PMD.pages) if table.load(i) == RMP_2M)
