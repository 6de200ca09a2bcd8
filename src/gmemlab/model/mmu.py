"""Stage-2 (TDP/NPT/EPT) mappings of one VM, per gfn range, and their invalidation (spec 2.7, 2.11).

The core model maps at 4 KiB: upstream ``kvm_gmem_get_pfn`` reports ``max_order`` 0 (spec 2.8 step 5).
Each leaf records whether it was installed by a private or a shared fault, which is what
invalidation filters on and what the invariant check compares against ``kvm_mem_is_private``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..rangemap import RangeMap

GFN_LIMIT = 1 << 52  # gfns of a 64-bit GPA space; the map is range based so this costs nothing

LEVEL_4K, LEVEL_2M, LEVEL_1G = 1, 2, 3
LEVEL_PAGES = {LEVEL_4K: 1, LEVEL_2M: 512, LEVEL_1G: 512 * 512}


@dataclass(frozen=True, slots=True)
class Spte:
    """A present leaf: private or shared, and its level."""

    private: bool
    level: int = LEVEL_4K


class Stage2:
    """The VM's stage-2 page tables as runs of leaves; counts faults, zaps and TLB flushes."""

    def __init__(self) -> None:
        self.sptes: RangeMap[Spte | None] = RangeMap(GFN_LIMIT, None)
        self.stats = {"faults": 0, "zaps": 0, "leaves_zapped": 0, "tlb_flushes": 0}

    def lookup(self, gfn: int) -> Spte | None:
        return self.sptes.load(gfn)

    def map(self, gfn: int, npages: int, private: bool, level: int = LEVEL_4K) -> None:
        self.sptes.store(gfn, gfn + npages, Spte(private, level))
        self.stats["faults"] += 1

    def zap(self, start: int, end: int, private: bool | None = None) -> int:
        """Unmap leaves in ``[start, end)``; ``private`` filters (None = both). Flushes TLBs if any."""
        zapped = 0
        for s, e, spte in list(self.sptes.runs(start, end)):
            if spte is None or (private is not None and spte.private != private):
                continue
            zapped += (e - s) // LEVEL_PAGES[spte.level] or 1
            self.sptes.store(s, e, None)
        if zapped:
            self.stats["zaps"] += 1
            self.stats["leaves_zapped"] += zapped
            self.stats["tlb_flushes"] += 1
        return zapped

    def mapped(self, start: int = 0, end: int = GFN_LIMIT) -> list[tuple[int, int, Spte]]:
        return [(s, e, v) for s, e, v in self.sptes.runs(start, end) if v is not None]
