"""The x86 TDP fault for guest_memfd-backed gfns: ``kvm_gmem_get_pfn`` -> level -> map (workloads.md 2.1).

:func:`kvm_tdp_map` is one fault (``kvm_tdp_page_fault`` after the routing checks of
:meth:`gmemlab.model.kvm.ModelVcpu._fault`): get the pfn and ``max_order`` from guest_memfd, pick the
level (:func:`gmemlab.model.mmu.kvm_mmu_max_mapping_level`), let the vendor cap it and prepare
(:mod:`gmemlab.model.vendor`), and install one leaf.

:func:`touch_range` drives a guest touching a whole range. Inside one 2 MiB range whose pages share a
private/shared state, every 4 KiB fault makes the same decision (max_order, lpage_info, RMP, S-EPT
are all per 2 MiB or coarser), so after one real fault picks 4 KiB the rest of that run is done as one
batch: the same counters, one range store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..uapi import PAGE_SHIFT
from .mmu import LEVEL_4K, LEVEL_PAGES, kvm_mmu_max_mapping_level

if TYPE_CHECKING:
    from .kvm import Memslot, ModelVcpu, ModelVm


def kvm_tdp_map(vm: ModelVm, slot: Memslot, gfn: int, is_private: bool) -> tuple[int, int, int]:
    """Fault ``gfn`` in from guest_memfd; returns ``(first gfn, pages, level)`` of the leaf installed.

    Raises :class:`gmemlab.model.gmem.GmemError` when ``kvm_gmem_get_pfn`` fails.
    """
    file = slot.gmem_file
    assert file is not None
    index = gfn - slot.base_gfn + slot.gmem_pgoff
    order = file.get_pfn(slot, gfn)
    level = kvm_mmu_max_mapping_level(vm, slot, gfn, is_private, order)
    if is_private:
        level = vm.vendor.private_level(file.inode, gfn, index, level, file.inode.folio_level(index))
    pages = LEVEL_PAGES[level]
    first = gfn - gfn % pages
    vm.stage2.map(first, pages, is_private, level)
    return first, pages, level


def _same_state_end(vm: ModelVm, slot: Memslot, gfn: int, limit: int) -> int:
    """End of the run of gfns from ``gfn`` (below ``limit``) with the same ``kvm_mem_is_private``."""
    if slot.gmem_tracks_shareability and slot.gmem_file is not None:
        base = slot.base_gfn - slot.gmem_pgoff
        runs = slot.gmem_file.inode.shareability.runs(gfn - base, limit - base)
        end = runs[0][1] + base if runs else limit
    else:
        end = next(iter(vm.attributes.runs(gfn, limit)))[1]
    return min(end, limit)


def touch_range(vcpu: ModelVcpu, start: int, end: int, write: bool) -> None:
    """Touch gfns ``[start, end)`` as the guest would (see the module docstring)."""
    vm = vcpu.vm
    gfn = start
    while gfn < end:
        slot = vm.find_memslot(gfn)
        via_gmem = slot is not None and slot.has_gmem and slot.gmem_file is not None
        if slot is None or not via_gmem or not (slot.gmem_only or vm.kvm_mem_is_private(gfn)):
            vcpu._fault(gfn << PAGE_SHIFT, write, _access(vm, gfn))  # the general path, one page
            gfn += 1
            continue
        seg_end = min(end, slot.end_gfn)
        for a, b, spte in list(vm.stage2.sptes.runs(gfn, seg_end)):
            if spte is not None:
                continue
            x = a
            while x < b:
                if vm.stage2.lookup(x) is not None:
                    x += 1
                    continue
                private = _access(vm, x)
                vcpu._fault(x << PAGE_SHIFT, write, private)
                spte = vm.stage2.lookup(x)
                if spte is None:  # mapped and zapped again (PSMASH); count it and move on
                    x += 1
                    continue
                pages = LEVEL_PAGES[spte.level]
                if spte.level != LEVEL_4K:
                    x = x - x % pages + pages
                    continue
                run_end = min(b, x - x % 512 + 512, _same_state_end(vm, slot, x, b))
                if run_end > x + 1:
                    _map_run_4k(vm, slot, x + 1, run_end, spte.private)
                x = run_end
        gfn = seg_end


def _access(vm: ModelVm, gfn: int) -> bool | None:
    """The fault type a well-behaved guest uses: private where the memory is private (CoCo VMs)."""
    if not vm.vm_type.has_private_mem:
        return None
    return vm.kvm_mem_is_private(gfn)


def _map_run_4k(vm: ModelVm, slot: Memslot, start: int, end: int, private: bool) -> None:
    """``end - start`` 4 KiB faults that all decide 4 KiB (one 2M range, one private/shared state)."""
    file = slot.gmem_file
    assert file is not None
    index = start - slot.base_gfn + slot.gmem_pgoff
    file.inode.prepare_run(index, index + (end - start))
    if private:
        vm.vendor.private_run_4k(file.inode, start, index, end - start)
    vm.stage2.map(start, end - start, private, LEVEL_4K, faults=end - start)
