"""Stage-2 (TDP/NPT/EPT) mappings of one VM, per gfn range, and their invalidation (spec 2.7, 2.11).

Upstream ``kvm_gmem_get_pfn`` reports ``max_order`` 0 (spec 2.8 step 5), so 4 KiB files map at 4 KiB;
HugeTLB files (RFC v2) may map 2 MiB or 1 GiB leaves, chosen by :func:`kvm_mmu_max_mapping_level`
after workloads.md 2.1 (hardware cap, ``max_order``, ``lpage_info`` disallow, dirty logging; the vendor
cap is :mod:`gmemlab.model.vendor`). Each leaf records whether it was installed by a private or a
shared fault, which is what invalidation filters on and what the invariant check compares against
``kvm_mem_is_private``; a zap that touches part of a huge leaf removes the whole leaf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..rangemap import RangeMap
from ..uapi import KVM_MEM_LOG_DIRTY_PAGES, PAGE_SHIFT

if TYPE_CHECKING:
    from .kvm import Memslot, ModelVm
    from .metrics import Metrics

GFN_LIMIT = 1 << 52  # gfns of a 64-bit GPA space; the map is range based so this costs nothing

LEVEL_4K, LEVEL_2M, LEVEL_1G = 1, 2, 3
LEVEL_PAGES = {LEVEL_4K: 1, LEVEL_2M: 512, LEVEL_1G: 512 * 512}
LEVEL_NAMES = {LEVEL_4K: "4K", LEVEL_2M: "2M", LEVEL_1G: "1G"}


def level_for_order(order: int) -> int:
    """``kvm_max_level_for_order``: order >= 18 -> 1G, >= 9 -> 2M, else 4K."""
    return LEVEL_1G if order >= 18 else LEVEL_2M if order >= 9 else LEVEL_4K


def order_for_level(level: int) -> int:
    return {LEVEL_4K: 0, LEVEL_2M: 9, LEVEL_1G: 18}[level]


def disallow_lpage(vm: ModelVm, slot: Memslot, gfn: int, level: int) -> str | None:
    """Why ``lpage_info_slot(gfn, slot, level)->disallow_lpage`` is non-zero, or None (workloads 2.1 step 3).

    * memslot head/tail: the first/last huge page when ``base_gfn`` / ``base_gfn + npages`` is unaligned;
    * gfn vs guest_memfd offset (RFC patch) and gfn vs HVA misalignment: the whole slot;
    * ``KVM_LPAGE_MIXED_FLAG``: the VM attributes inside the huge page are not uniform. KVM maintains it
      on every attribute change, 2M first and then 1G from the 2M results; for a huge page inside the
      slot that is exactly "the attribute range map has one run there", computed here on demand (O(runs)).
    """
    pages = LEVEL_PAGES[level]
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


def kvm_mmu_max_mapping_level(vm: ModelVm, slot: Memslot, gfn: int, is_private: bool, max_order: int) -> int:
    """Level of a guest fault before the vendor cap (workloads 2.1 steps 1, 2b, 3, 7).

    Hardware cap (``HostConfig.tdp_max_level``), then ``max_order`` from guest_memfd (private faults, and
    shared faults on GMEM_ONLY slots, where the level comes from guest_memfd too), then walk down while
    ``lpage_info`` disallows, then 4 KiB under dirty logging.
    """
    level = min(LEVEL_1G, vm.system.config.tdp_max_level)
    level = min(level, level_for_order(max_order))
    while level > LEVEL_4K and disallow_lpage(vm, slot, gfn, level):
        level -= 1
    if slot.flags & KVM_MEM_LOG_DIRTY_PAGES:
        level = LEVEL_4K
    return level


@dataclass(frozen=True, slots=True)
class Spte:
    """A present leaf: private or shared, and its level."""

    private: bool
    level: int = LEVEL_4K


class Stage2:
    """The VM's stage-2 page tables as runs of leaves; counts faults, zaps and TLB flushes."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.sptes: RangeMap[Spte | None] = RangeMap(GFN_LIMIT, None)
        self.stats = {"faults": 0, "zaps": 0, "leaves_zapped": 0, "tlb_flushes": 0}
        self.metrics = metrics

    def lookup(self, gfn: int) -> Spte | None:
        return self.sptes.load(gfn)

    def map(self, gfn: int, npages: int, private: bool, level: int = LEVEL_4K, faults: int = 1) -> None:
        """Install leaves of ``level`` over ``[gfn, gfn + npages)``; ``faults`` = how many faults that was
        (a batch of 4 KiB faults over a range is one call)."""
        self.sptes.store(gfn, gfn + npages, Spte(private, level))
        self.stats["faults"] += faults
        if self.metrics is not None:
            name = LEVEL_NAMES[level]
            self.metrics.add("guest_faults", faults)
            self.metrics.add(f"stage2_faults.{name}", faults)
            self.metrics.add(f"stage2_bytes.{name}", npages << PAGE_SHIFT)

    def zap(self, start: int, end: int, private: bool | None = None) -> int:
        """Unmap leaves in ``[start, end)``; ``private`` filters (None = both). Flushes TLBs if any.

        A huge leaf that overlaps the range is removed whole (KVM zaps the SPTE, not part of it).
        """
        zapped = 0
        for s, e, spte in list(self.sptes.runs(start, end)):
            if spte is None or (private is not None and spte.private != private):
                continue
            pages = LEVEL_PAGES[spte.level]
            s, e = s - s % pages, -(-e // pages) * pages
            zapped += (e - s) // pages
            self.sptes.store(s, e, None)
        if zapped:
            self.stats["zaps"] += 1
            self.stats["leaves_zapped"] += zapped
            self.stats["tlb_flushes"] += 1
            if self.metrics is not None:
                self.metrics.add("zaps")
                self.metrics.add("leaves_zapped", zapped)
                self.metrics.add("tlb_flushes")
        return zapped

    def mapped(self, start: int = 0, end: int = GFN_LIMIT) -> list[tuple[int, int, Spte]]:
        return [(s, e, v) for s, e, v in self.sptes.runs(start, end) if v is not None]

    def mapped_bytes(self) -> dict[str, int]:
        """Bytes currently mapped at each level (a snapshot, O(runs))."""
        out = dict.fromkeys(LEVEL_NAMES.values(), 0)
        for s, e, v in self.mapped():
            out[LEVEL_NAMES[v.level]] += (e - s) << PAGE_SHIFT
        return out
