"""Stage-2 (TDP/NPT/EPT) page tables of one VM as runs of leaves, and their zapping (spec 2.7, 2.11).

``struct kvm_mmu`` reduced to what guest_memfd needs (arch/x86/kvm/mmu/tdp_mmu.c): each leaf records its
level and whether a private or a shared fault installed it, which is what invalidation filters on
(``kvm_gfn_range_filter_to_root_types``) and what the invariant check compares against
``kvm_mem_is_private``; a zap that touches part of a huge leaf removes the whole leaf.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..level import LEVELS, Level
from ..rangemap import RangeMap
from ..uapi import PAGE_SHIFT
from .metrics import Metrics, per_level

GFN_LIMIT = 1 << 52  # gfns of a 64-bit GPA space; the map is range based so this costs nothing
_FAULTS = {level: per_level("stage2_faults", level) for level in LEVELS}  # every fault adds to these
_BYTES = {level: per_level("stage2_bytes", level) for level in LEVELS}


@dataclass(frozen=True, slots=True)
class Spte:
    """A present leaf: private or shared, and its level. ``origin`` is set only for a leaf that outlived the
    memslot it was made for and still maps that slot's page (see ``page_fault.OrphanedGmemLeaf``)."""

    private: bool
    level: Level = Level.PG_4K
    origin: object = None


class Stage2:
    """The VM's stage-2 page tables as runs of leaves; counts faults, zaps and TLB flushes."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.sptes: RangeMap[Spte | None] = RangeMap(GFN_LIMIT, None)
        self.metrics = metrics if metrics is not None else Metrics()
        # Cached MMIO SPTEs (kvm.mmio_caching): the memslot generation each was made in. They are not
        # shadow-present, so zaps skip them; a fault that maps the gfn replaces one (see page_fault.py).
        self.mmio: RangeMap[int | None] = RangeMap(GFN_LIMIT, None)
        self._any_mmio = False

    def lookup(self, gfn: int) -> Spte | None:
        return self.sptes.load(gfn)

    def map(self, gfn: int, npages: int, private: bool, level: Level = Level.PG_4K, faults: int = 1) -> None:
        """Install leaves of ``level`` over ``[gfn, gfn + npages)``; ``faults`` = how many faults that was
        (a batch of 4 KiB faults over a range is one call)."""
        self.sptes.store(gfn, gfn + npages, Spte(private, level))
        if self._any_mmio:
            self.mmio.store(gfn, gfn + npages, None)
        add = self.metrics.add
        add("guest_faults", faults)
        add(_FAULTS[level], faults)
        add(_BYTES[level], npages << PAGE_SHIFT)

    def set_origin(self, start: int, end: int, origin: object) -> None:
        """Tag the present leaves in ``[start, end)`` with ``origin`` (they keep their level and type)."""
        for s, e, spte in list(self.sptes.runs(start, end)):
            if spte is not None:
                self.sptes.store(s, e, Spte(spte.private, spte.level, origin))

    def map_mmio(self, gfn: int, generation: int) -> None:
        """``make_mmio_spte``: cache that ``gfn`` has no memslot, as of memslot ``generation``."""
        self.mmio.store(gfn, gfn + 1, generation)
        self._any_mmio = True

    def mmio_generation(self, gfn: int) -> int | None:
        """The generation of the MMIO SPTE at ``gfn``, None if there is none."""
        return self.mmio.load(gfn) if self._any_mmio else None

    def zap(self, start: int, end: int, private: bool | None = None) -> int:
        """Unmap leaves in ``[start, end)``; ``private`` filters (None = both). Flushes TLBs if any.

        A huge leaf that overlaps the range is removed whole (KVM zaps the SPTE, not part of it).
        """
        return self.zap_ranges([(start, end)], private)

    def zap_ranges(self, ranges: list[tuple[int, int]], private: bool | None = None) -> int:
        """:meth:`zap` over several ranges with one TLB flush at the end, as ``kvm_handle_gfn_range`` does."""
        zapped = 0
        for start, end in ranges:
            for s, e, spte in list(self.sptes.runs(start, end)):
                if spte is None or (private is not None and spte.private != private):
                    continue
                level = spte.level
                s, e = level.align_down(s), level.align_up(e)
                zapped += (e - s) // level.pages
                self.sptes.store(s, e, None)
        if zapped:
            self.metrics.add("zaps")
            self.metrics.add("s2_zap_leaf", zapped)
            self.metrics.add("tlb_flush_remote")
        return zapped

    def mapped(self, start: int = 0, end: int = GFN_LIMIT) -> list[tuple[int, int, Spte]]:
        return [(s, e, v) for s, e, v in self.sptes.runs(start, end) if v is not None]

    def mapped_bytes(self) -> dict[str, int]:
        """Bytes currently mapped at each level (a snapshot, O(runs))."""
        out = {level.label: 0 for level in LEVELS}
        for s, e, v in self.mapped():
            out[v.level.label] += (e - s) << PAGE_SHIFT
        return out
