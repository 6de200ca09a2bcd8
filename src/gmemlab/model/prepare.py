"""Preparedness of guest_memfd memory for the guest (spec 2.8 step 6, workloads.md 3.7).

Three ways to remember what was zeroed and handed to the arch prepare hook, chosen by
``HostConfig.gmem_prepare``:

* ``folio`` -- RFC v2: prepared = folio uptodate. The first guest fault on a folio that is not uptodate
  zeroes the *whole* folio (``folio_zero_user``, cost rows 4/5) and runs the hook for its order.
* ``per-4k`` -- Paolo/Michael's bitmap: a prepared record per 4 KiB (a range map here); a fault
  prepares only the pieces of the folio not prepared yet and never re-clears prepared ones.
* ``guest-prepared`` -- the discussed SHAREABILITY_GUEST_PREPARED state: the same record kept in the
  shareability tree, so every conversion resets it and marking it at fault time needs the shareability
  write lock (Michael's objection, 3.8) -- counted as ``arch.shareability_write_locks``.

Host faults zero only the pages they map (4 KiB, or the whole folio for a huge host mapping under the
deferred policy). Contents of pages that are already uptodate are kept in every mode: the model does not
lose data the RFC would keep (a documented simplification for merged folios).
"""

from __future__ import annotations

from ..level import HUGE_LEVELS, Level
from ..rangemap import RangeMap
from ..uapi import PAGE_SIZE
from .metrics import Metrics
from .pagecache import UPTODATE, PageCache


class Preparedness:
    """Interface: ``guest_prepare`` returns the ranges the arch hook must prepare."""

    name = ""

    def __init__(self, npages: int, metrics: Metrics) -> None:
        self.metrics = metrics

    def guest_prepare(self, pc: PageCache, start: int, end: int, whole: bool = True) -> list[tuple[int, int]]:
        raise NotImplementedError

    def guest_prepare_folios(self, pc: PageCache, start: int, end: int, folio: Level) -> int:
        """What ``kvm_gmem_get_pfn`` does for each folio of level ``folio`` in ``[start, end)`` (folio-aligned,
        one guest fault per folio), without a loop over the folios; returns the hooks run (one per folio
        the mode prepares, :meth:`guest_prepare` counted per folio)."""
        raise NotImplementedError

    def on_convert(self, start: int, end: int, to_shared: bool) -> None:
        """A conversion of ``[start, end)`` (after the store)."""

    def on_truncate(self, start: int, end: int) -> None:
        """Folios of ``[start, end)`` were freed or zeroed."""

    def nr_ranges(self) -> int:
        return 0

    def _zero(self, pc: PageCache, start: int, end: int, whole: bool) -> None:
        n = pc.make_uptodate_range(start, end)
        if n:
            self.metrics.add("bytes_zeroed", (end - start if whole else n) * PAGE_SIZE)


class FolioUptodate(Preparedness):
    name = "folio"

    def guest_prepare(self, pc: PageCache, start: int, end: int, whole: bool = True) -> list[tuple[int, int]]:
        if pc.state.all_equal(start, end, UPTODATE):
            return []
        if whole:
            self._count_folios(end - start, 1)
        self._zero(pc, start, end, whole=whole)
        return [(start, end)]

    def guest_prepare_folios(self, pc: PageCache, start: int, end: int, folio: Level) -> int:
        todo = _folios_touched(pc.state.differing(start, end, UPTODATE), folio)
        if todo:
            pc.make_uptodate_range(start, end)  # every folio not uptodate is zeroed whole
            self.metrics.add("bytes_zeroed", todo * folio.bytes)
            self._count_folios(folio.pages, todo)
        return todo

    def _count_folios(self, pages: int, n: int) -> None:
        """Whole huge folios zeroed by ``folio_zero_user`` (cost rows 4, 5: ``zero_2m``, ``zero_1g``)."""
        for level in HUGE_LEVELS:
            if pages == level.pages:
                self.metrics.add(f"zero_{level.key}", n)


class Per4kPrepared(Preparedness):
    name = "per-4k"
    resets_on_any_conversion = False

    def __init__(self, npages: int, metrics: Metrics) -> None:
        super().__init__(npages, metrics)
        self.prepared: RangeMap[bool] = RangeMap(npages, False)

    def guest_prepare(self, pc: PageCache, start: int, end: int, whole: bool = True) -> list[tuple[int, int]]:
        todo = self.prepared.differing(start, end, True)
        for s, e in todo:
            self._zero(pc, s, e, whole=False)
        if todo:
            self.prepared.store(start, end, True)
            self._marked()
        return todo

    def guest_prepare_folios(self, pc: PageCache, start: int, end: int, folio: Level) -> int:
        todo = self.prepared.differing(start, end, True)
        hooks = 0
        for s, e in todo:  # a piece spanning folios is one piece per folio, as one fault per folio sees it
            self._zero(pc, s, e, whole=False)
            hooks += folio.number(folio.align_up(e)) - folio.number(s)
        if todo:
            self.prepared.store(start, end, True)
            for _ in range(_folios_touched(todo, folio)):
                self._marked()
        return hooks

    def _marked(self) -> None:
        pass

    def on_convert(self, start: int, end: int, to_shared: bool) -> None:
        if to_shared or self.resets_on_any_conversion:  # the RMP/S-EPT state went back to shared
            self.prepared.store(start, end, False)

    def on_truncate(self, start: int, end: int) -> None:
        self.prepared.store(start, end, False)

    def nr_ranges(self) -> int:
        return self.prepared.nr_runs()


class GuestPrepared(Per4kPrepared):
    name = "guest-prepared"
    resets_on_any_conversion = True  # the shareability store overwrites GUEST_PREPARED

    def _marked(self) -> None:
        self.metrics.add("shareability_write_locks")


def _folios_touched(ranges: list[tuple[int, int]], folio: Level) -> int:
    """How many distinct folios of level ``folio`` the sorted, disjoint ``ranges`` touch (O(ranges))."""
    n, last = 0, -1
    for s, e in ranges:
        first, end = folio.number(s), folio.number(folio.align_up(e))
        first = max(first, last + 1)
        if end > first:
            n += end - first
            last = end - 1
    return n


PREPAREDNESS: dict[str, type[Preparedness]] = {
    c.name: c for c in (FolioUptodate, Per4kPrepared, GuestPrepared)
}
