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
        self._zero(pc, start, end, whole=whole)
        return [(start, end)]


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


PREPAREDNESS: dict[str, type[Preparedness]] = {
    c.name: c for c in (FolioUptodate, Per4kPrepared, GuestPrepared)
}
