"""The guest_memfd page cache: which indices have a folio, which are uptodate, and their contents.

Upstream folios are order 0 (spec 2.4 step 4, 2.8 step 5), so one state per index suffices; it is kept
in a range map so an untouched or wholly allocated 1 TiB file costs one run. Contents are stored only
for pages that hold non-zero bytes (a sparse dict), so simulated guests that never write data cost
nothing. A folio that is allocated but not uptodate has undefined contents that no path can observe:
every path zeroes it first (host fault, ``kvm_gmem_get_pfn``) or overwrites it (populate).
"""

from __future__ import annotations

from ..rangemap import RangeMap
from ..uapi import PAGE_SIZE
from .numa import DEFAULT_POLICY, Policy, SharedPolicy, node_for

ABSENT = 0
ALLOCATED = 1  # in the page cache, not uptodate ("not prepared")
UPTODATE = 2  # zeroed or populated, folio_mark_uptodate()
# Page-cache indices are pgoff_t. Folios normally sit below i_size, but up to 7.1 a memslot can be bound past
# EOF (kvm_gmem_bind's signed offset + size check wraps, guest_memfd.md 5.2), and the guest's faults then
# allocate folios there (kvm_gmem_get_pfn does not check i_size; measured on 6.18, host fuzz run seed 925).
INDEX_LIMIT = 1 << 64


class PageCache:
    """Folio presence and contents of one inode. Counts what it does (DESIGN principle 7)."""

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.state: RangeMap[int] = RangeMap(INDEX_LIMIT, ABSENT)
        self.data: dict[int, bytearray] = {}
        self.nr_allocated = 0  # kept incrementally; the invariant check recounts it from `state`
        # NUMA: the policy in force when each folio was allocated (its node is derived from it).
        self.shared_policy = SharedPolicy(npages)
        self.placement: RangeMap[Policy] = RangeMap(INDEX_LIMIT, DEFAULT_POLICY)
        self.stats = {"folios_allocated": 0, "folios_freed": 0, "pages_zeroed": 0}

    # -- queries -------------------------------------------------------------------------------
    def folio_state(self, index: int) -> int:
        return self.state.load(index)

    def count_allocated(self, start: int = 0, end: int = INDEX_LIMIT) -> int:
        return self.state.count(start, end, lambda v: v != ABSENT)

    def node_of(self, index: int) -> int:
        """NUMA node of the folio at ``index`` (``move_pages`` status); it must be allocated."""
        return node_for(self.placement.load(index), index)

    def read(self, index: int, offset: int, length: int) -> bytes:
        page = self.data.get(index)
        if page is None:
            return bytes(length)
        return bytes(page[offset : offset + length])

    # -- updates -------------------------------------------------------------------------------
    def allocate(self, start: int, end: int) -> int:
        """``filemap_grab_folio`` for every absent index of ``[start, end)``; returns how many were new."""
        new = self.state.count(start, end, lambda v: v == ABSENT)
        if new:
            for s, e, v in list(self.state.runs(start, end)):
                if v == ABSENT:
                    self.state.store(s, e, ALLOCATED)
                    # past EOF no shared policy is set: the default (mpol_shared_policy_lookup finds none)
                    for ps, pe, pol in list(self.shared_policy.policy.runs(s, min(e, self.shared_policy.limit))):
                        self.placement.store(ps, pe, pol)
            self.nr_allocated += new
            self.stats["folios_allocated"] += new
        return new

    def make_uptodate(self, index: int) -> bool:
        """Zero a not-uptodate folio and mark it uptodate; returns True if it was zeroed now."""
        if self.state.load(index) == UPTODATE:
            return False
        if self.state.load(index) == ABSENT:
            self.allocate(index, index + 1)
        self.data.pop(index, None)
        self.state.store(index, index + 1, UPTODATE)
        self.stats["pages_zeroed"] += 1
        return True

    def make_uptodate_range(self, start: int, end: int) -> int:
        """Zero every folio of ``[start, end)`` that is not uptodate (HugeTLB ranges); returns how many.

        Not-uptodate indices hold no contents (invariant), so nothing is dropped from ``data``.
        """
        todo = self.state.count(start, end, lambda v: v != UPTODATE)
        if todo:
            self.allocate(start, end)
            self.state.store(start, end, UPTODATE)
            self.stats["pages_zeroed"] += todo
        return todo

    def zero_range(self, start: int, end: int) -> None:
        """``kvm_gmem_zero_range``: clear contents in place; folios stay (partial HugeTLB punch). Contents are
        kept only for written pages, so this walks whichever is smaller: the written pages or the range."""
        if len(self.data) < end - start:
            for index in [i for i in self.data if start <= i < end]:
                del self.data[index]
        else:
            for index in range(start, end):
                self.data.pop(index, None)

    def write(self, index: int, offset: int, data: bytes) -> None:
        page = self.data.get(index)
        if page is None:
            if not any(data):
                return  # writing zeros into a zero page changes nothing
            page = self.data[index] = bytearray(PAGE_SIZE)
        page[offset : offset + len(data)] = data
        if not any(page):
            del self.data[index]

    def populate(self, index: int, contents: bytes | None) -> None:
        """Fill a folio from a source page (or zeros) and mark it uptodate (kvm_gmem_populate)."""
        self.allocate(index, index + 1)
        self.data.pop(index, None)
        if contents and any(contents):
            self.data[index] = bytearray(contents.ljust(PAGE_SIZE, b"\0")[:PAGE_SIZE])
        self.state.store(index, index + 1, UPTODATE)

    def truncate(self, start: int, end: int) -> int:
        """Remove the folios of ``[start, end)`` from the page cache; returns how many were freed."""
        if start >= end:
            return 0
        freed = self.count_allocated(start, end)
        if freed:
            self.state.store(start, end, ABSENT)
            self.nr_allocated -= freed
            self.stats["folios_freed"] += freed
            self.zero_range(start, end)
        return freed
