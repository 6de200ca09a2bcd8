"""The x86 TDP fault for guest_memfd-backed gfns: ``kvm_gmem_get_pfn`` -> level -> map (workloads.md 2.1).

:func:`kvm_tdp_map` is one fault (``kvm_tdp_page_fault`` after the routing checks of
:func:`gmemlab.model.page_fault.kvm_mmu_page_fault`): get the pfn and ``max_order`` from guest_memfd,
pick the level (:func:`gmemlab.model.mmu.kvm_mmu_max_mapping_level`), let the vendor cap it and prepare
(:mod:`gmemlab.model.vendor`), and install one leaf. :func:`_map_run_4k` is a batch of 4 KiB faults
that all decide the same (see :func:`gmemlab.model.page_fault.touch_range`).
"""

from __future__ import annotations

from ..level import Level
from .kvm_host import Kvm
from .memslot import Memslot
from .mmu import kvm_mmu_max_mapping_level


def kvm_tdp_map(vm: Kvm, slot: Memslot, gfn: int, is_private: bool) -> tuple[int, int, Level]:
    """Fault ``gfn`` in from guest_memfd; returns ``(first gfn, pages, level)`` of the leaf installed.

    Raises :class:`gmemlab.errors.GmemError` when ``kvm_gmem_get_pfn`` fails.
    """
    file = slot.gmem_file
    assert file is not None
    index = gfn - slot.base_gfn + slot.gmem_pgoff
    order = file.get_pfn(slot, gfn)
    level = kvm_mmu_max_mapping_level(vm, slot, gfn, is_private, order)
    if is_private:
        level = vm.vendor.private_level(file.inode, gfn, index, level, file.inode.folio_level(index))
    first = level.align_down(gfn)
    vm.stage2.map(first, level.pages, is_private, level)
    return first, level.pages, level


def _map_run_4k(vm: Kvm, slot: Memslot, start: int, end: int, private: bool) -> None:
    """``end - start`` 4 KiB faults that all decide 4 KiB (one 2M range, one private/shared state)."""
    file = slot.gmem_file
    assert file is not None
    index = start - slot.base_gfn + slot.gmem_pgoff
    file.inode.prepare_run(index, index + (end - start))
    if private:
        vm.vendor.private_run_4k(file.inode, start, index, end - start)
    vm.stage2.map(start, end - start, private, Level.PG_4K, faults=end - start)
