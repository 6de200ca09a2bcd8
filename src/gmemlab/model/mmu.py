"""x86 MMU level selection for a guest fault (arch/x86/kvm/mmu/mmu.c; workloads.md 2.1).

Upstream ``kvm_gmem_get_pfn`` reports ``max_order`` 0 (spec 2.8 step 5), so 4 KiB files map at 4 KiB;
HugeTLB files (RFC v2) may map 2 MiB or 1 GiB leaves, chosen by :func:`kvm_mmu_max_mapping_level`
(hardware cap, ``max_order``, ``lpage_info`` disallow, dirty logging; the vendor cap is
:mod:`gmemlab.model.vendor`). The leaves themselves are :mod:`gmemlab.model.stage2`.
"""

from __future__ import annotations

from ..level import Level
from ..uapi import KVM_MEM_LOG_DIRTY_PAGES, PAGE_SHIFT
from .kvm_host import Kvm
from .memslot import Memslot


def disallow_lpage(vm: Kvm, slot: Memslot, gfn: int, level: Level) -> str | None:
    """Why ``lpage_info_slot(gfn, slot, level)->disallow_lpage`` is non-zero, or None (workloads 2.1 step 3).

    * memslot head/tail: the first/last huge page when ``base_gfn`` / ``base_gfn + npages`` is unaligned;
    * gfn vs guest_memfd offset (RFC patch) and gfn vs HVA misalignment: the whole slot;
    * ``KVM_LPAGE_MIXED_FLAG``: the VM attributes inside the huge page are not uniform. KVM maintains it
      on every attribute change, 2M first and then 1G from the 2M results; for a huge page inside the
      slot that is exactly "the attribute range map has one run there", computed here on demand (O(runs)).
    """
    pages = level.pages
    mask = pages - 1
    hp = gfn // pages
    if hp == slot.base_gfn // pages and slot.base_gfn & mask:
        return "memslot head"
    if hp == (slot.end_gfn - 1) // pages and slot.end_gfn & mask:
        return "memslot tail"
    if slot.has_gmem and (slot.base_gfn ^ slot.gmem_pgoff) & mask:
        return "gfn vs guest_memfd offset misaligned"
    if slot.userspace_addr and (slot.base_gfn ^ (slot.userspace_addr >> PAGE_SHIFT)) & mask:
        return "gfn vs hva misaligned"
    lo = hp * pages
    if len(list(vm.attributes.runs(lo, lo + pages))) > 1:
        return "mixed attributes"
    return None


def kvm_mmu_max_mapping_level(vm: Kvm, slot: Memslot, gfn: int, is_private: bool, max_order: int,
                              max_level: Level = Level.PG_1G) -> Level:
    """Level of a guest fault before the vendor cap (workloads 2.1 steps 1, 2b, 3, 7).

    ``fault->max_level`` (1G, or what the fault allows: a TDX guest's ACCEPT level), the hardware cap
    (``HostConfig.tdp_max_level``), then ``max_order`` from guest_memfd (private faults, and
    shared faults on GMEM_ONLY slots, where the level comes from guest_memfd too), then walk down while
    ``lpage_info`` disallows, then 4 KiB under dirty logging.
    """
    level = min(max_level, vm.config.tdp_max_level, Level.for_order(max_order))
    while level > Level.PG_4K and disallow_lpage(vm, slot, gfn, level):
        level = level.smaller()
    if slot.flags & KVM_MEM_LOG_DIRTY_PAGES:
        level = Level.PG_4K
    return level
