"""Michael Roth's lpage_info-like record of a guest_memfd (workloads.md 2.3, seed thread).

For every 2 MiB and every 1 GiB range of the file: ``ALL_PRIVATE``, ``ALL_SHARED`` or ``MIXED``. It is
updated together with shareability (under the same invalidate lock, in the conversion), the way KVM's
``kvm_arch_post_set_memory_attributes`` maintains ``KVM_LPAGE_MIXED_FLAG``: 2 MiB first, then 1 GiB,
whose head/tail entries consume the 2 MiB results (``hugepage_has_attrs``). Ranges fully inside the
converted range take the target state without any scan. Both levels are range maps over block
numbers: updating a 1 TiB conversion touches a handful of runs.

The guest's mapping order follows the record (largest level whose entry is uniform), and the host may
map a folio whole where the record says ``ALL_SHARED``; a folio is split only when the host needs a
smaller mapping inside a ``MIXED`` range (:class:`gmemlab.model.policy.DeferredPolicy`).
"""

from __future__ import annotations

from ..level import Level
from ..rangemap import RangeMap
from .shareability import Shareability

ALL_PRIVATE, ALL_SHARED, MIXED = 1, 2, 3

LEVELS = (Level.PG_2M, Level.PG_1G)  # maintained 2M first, then 1G from the 2M results


class GmemLpageInfo:
    """The per-inode record: ``maps[Level.PG_2M]`` over 2 MiB numbers, ``maps[Level.PG_1G]`` over 1 GiB ones.

    A trailing partial 1 GiB range (a 2 MiB HugeTLB file not a multiple of 1 GiB) is recorded over the
    pages that exist; the folio order caps the mapping anyway.
    """

    def __init__(self, npages: int, shared: bool) -> None:
        self.npages = npages
        init = ALL_SHARED if shared else ALL_PRIVATE
        self.maps: dict[Level, RangeMap[int]] = {}
        for level in LEVELS:
            self.maps[level] = RangeMap(level.number(level.align_up(npages)), init)

    def state(self, index: int, level: Level) -> int:
        return self.maps[level].load(level.number(index))

    def uniform_level(self, index: int) -> Level:
        """Largest level whose entry for ``index`` is not ``MIXED`` (``kvm_gmem_mapping_order``)."""
        if self.state(index, Level.PG_1G) != MIXED:
            return Level.PG_1G
        if self.state(index, Level.PG_2M) != MIXED:
            return Level.PG_2M
        return Level.PG_4K

    def update(self, start: int, end: int, shared: bool, shareability: Shareability) -> None:
        """Record that ``[start, end)`` became ``shared``: 2 MiB entries first, then 1 GiB."""
        target = ALL_SHARED if shared else ALL_PRIVATE
        for level in LEVELS:
            rmap = self.maps[level]
            first, last = level.number(start), level.number(end - 1)
            inner_lo = first if start == level.first_page(first) else first + 1
            inner_hi = last + 1 if end == min(level.first_page(last + 1), self.npages) else last
            if inner_lo < inner_hi:
                rmap.store(inner_lo, inner_hi, target)
            for n in {first, last}:
                if not inner_lo <= n < inner_hi:
                    rmap.store(n, n + 1, self._rescan(level, n, shareability))

    def _entry_range(self, level: Level, n: int) -> tuple[int, int]:
        """Page indices of entry ``n`` of ``level`` (cut at the end of the file)."""
        return level.first_page(n), min(level.first_page(n + 1), self.npages)

    def _rescan(self, level: Level, n: int, shareability: Shareability) -> int:
        """``hugepage_has_attrs`` for one entry that straddles the converted range's edge."""
        lo, hi = self._entry_range(level, n)
        if level == Level.PG_2M:
            runs = shareability.runs(lo, hi)
            if len(runs) == 1:
                return ALL_SHARED if runs[0][2] else ALL_PRIVATE
            return MIXED
        # 1 GiB: every 2 MiB entry inside must be non-MIXED and equal (the lower level's result).
        pmd = Level.PG_2M
        sub = list(self.maps[pmd].runs(pmd.number(lo), pmd.number(pmd.align_up(hi))))
        if len(sub) == 1 and sub[0][2] != MIXED:
            return sub[0][2]
        return MIXED

    def nr_ranges(self) -> int:
        return sum(m.nr_runs() for m in self.maps.values())

    def check(self, shareability: Shareability) -> None:
        """Every entry agrees with a rescan of shareability (the record is exact, not a hint)."""
        for level, rmap in self.maps.items():
            rmap.check()
            for s, e, v in rmap.runs():
                for n in {s, e - 1}:
                    lo, hi = self._entry_range(level, n)
                    runs = shareability.runs(lo, hi)
                    want = MIXED if len(runs) > 1 else (ALL_SHARED if runs[0][2] else ALL_PRIVATE)
                    if v != want:
                        raise AssertionError(f"lpage record at level {level.label} entry {n}: {v} != {want}")
                # Inner entries of a run: a uniform run of shareability covering them proves them.
                if e - s > 2 and v != MIXED:
                    lo, hi = level.first_page(s), min(level.first_page(e), self.npages)
                    if len(shareability.runs(lo, hi)) != 1:
                        raise AssertionError(f"lpage record run [{s},{e}) at level {level.label} is not uniform")
