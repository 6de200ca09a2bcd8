"""HugeTLB folios of one guest_memfd inode: intact or split, as ranges (workloads.md 3.3-3.6).

A HugeTLB guest_memfd is a row of *blocks*, one per huge page (2 MiB or 1 GiB). Each block is
``ABSENT`` (no folio), ``INTACT`` (one huge folio), ``SPLIT_4K`` (4 KiB folios: the RFC's only split,
``kvm_gmem_split_folio_in_filemap``) or, for 1 GiB files with the staged variant, ``SPLIT_2M`` (512
2 MiB folios, each ``INTACT`` or ``SPLIT_4K`` in :attr:`HugeFolios.sub2m`; cover letter "split from 1G to
2M first", cost row 9). Shapes live in range maps over block numbers, so a 1 TiB file costs as much
as a 2 MiB one.

The refcount of a folio is the page cache's plus every pin on any of its pages (the inode's ``pins``), so a
pinned 4 KiB page inside an intact 1 GiB folio makes the whole folio unsafe to split, merge or convert
(``kvm_gmem_has_safe_refcount``, workloads 3.5); the failure reports the folio's first index
(:class:`FolioBusy`). Splits undo HVO and merges redo it (rows 6m, 7m): :attr:`vmemmap_bytes`.
Which split or merge happens when is the policy's business (:mod:`gmemlab.model.policy`); this module only
knows how.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from ..errors import FolioBusy
from ..level import LEVELS, Level
from ..rangemap import RangeMap
from ..uapi import PAGE_SIZE
from .host import FileMappings
from .hugetlb import HugetlbSubpool
from .metrics import Metrics, merge_key, split_key
from .pagecache import PageCache

ABSENT, INTACT, SPLIT_4K, SPLIT_2M = 0, 1, 2, 3

# Extra vmemmap while split (HVO undone), workloads rows 6m and 7m: 262,144 struct pages x 64 B = 16 MiB
# with one page kept by HVO; 512 x 64 B = 32 KiB minus one page. 1G -> 2M [assumed]: each 2 MiB folio
# keeps its own HVO page, so 512 pages instead of 1.
VMEMMAP_SPLIT_1G_4K = 4095 * PAGE_SIZE
VMEMMAP_SPLIT_2M_4K = 7 * PAGE_SIZE
VMEMMAP_SPLIT_1G_2M = 511 * PAGE_SIZE
VMEMMAP_SPLIT = {
    (Level.PG_1G, Level.PG_4K): VMEMMAP_SPLIT_1G_4K,
    (Level.PG_2M, Level.PG_4K): VMEMMAP_SPLIT_2M_4K,
    (Level.PG_1G, Level.PG_2M): VMEMMAP_SPLIT_1G_2M,
}

PMD = Level.PG_2M  # the 2 MiB pieces of a staged 1 GiB split are numbered like PMDs

RangeCheck = Callable[[int, int], bool]


class HugeFolios:
    """Folio structure of one HugeTLB inode: shapes per block, split/merge mechanics, accounting.

    What it needs of the inode is handed over at creation, the way a folio knows its ``mapping``: the
    page cache the folios live in, the pin counts that make up their extra references, and the host
    mappings (``i_mmap``) that must lose huge PTEs before a split.
    """

    def __init__(
        self,
        npages: int,
        hpage_size: int,
        subpool: HugetlbSubpool,
        metrics: Metrics,
        pagecache: PageCache,
        pins: RangeMap[int],
        mappings: FileMappings,
    ) -> None:
        self.npages = npages
        self.pagecache = pagecache
        self.pins = pins
        self.mappings = mappings
        self.hpage_size = hpage_size
        self.level = Level.of_size(hpage_size)
        self.block_pages = self.level.pages
        self.nblocks = npages // self.block_pages
        self.shape: RangeMap[int] = RangeMap(self.nblocks, ABSENT)
        self.sub2m: RangeMap[int] | None = (
            RangeMap(npages // PMD.pages, INTACT) if self.level == Level.PG_1G else None
        )
        self.subpool = subpool
        self.metrics = metrics
        self.counts: Counter[str] = Counter()  # this inode's splits/merges, for the invariant
        self.vmemmap_bytes = 0
        self.nr_allocated = 0  # blocks with a folio: st_blocks

    # -- geometry --------------------------------------------------------------------------------
    def block_of(self, index: int) -> int:
        return index // self.block_pages

    def block_range(self, b: int) -> tuple[int, int]:
        return b * self.block_pages, (b + 1) * self.block_pages

    def folio_level(self, index: int) -> Level | None:
        """Level of the folio holding ``index`` (None if none): what ``max_order`` can be at most."""
        shape = self.shape.load(self.block_of(index))
        if shape == ABSENT:
            return None
        if shape == INTACT:
            return self.level
        if shape == SPLIT_4K:
            return Level.PG_4K
        assert self.sub2m is not None
        return Level.PG_2M if self.sub2m.load(PMD.number(index)) == INTACT else Level.PG_4K

    def folio_range(self, index: int) -> tuple[int, int]:
        """``[start, end)`` of the folio holding ``index`` (a 4 KiB range when there is none)."""
        level = self.folio_level(index) or Level.PG_4K
        start = level.align_down(index)
        return start, start + level.pages

    def folio_bounds(self, start: int, end: int) -> tuple[int, int]:
        """Smallest folio-aligned range holding ``[start, end)``."""
        return self.folio_range(start)[0], self.folio_range(end - 1)[1]

    def allocated_bytes(self) -> int:
        return self.nr_allocated * self.hpage_size

    # -- refcounts -------------------------------------------------------------------------------
    def first_pinned_folio(self, start: int, end: int) -> int | None:
        """First index of the first folio overlapping ``[start, end)`` with an extra reference."""
        lo, hi = self.folio_bounds(start, end)
        for s, _, n in self.pins.runs(lo, hi):
            if n:
                return self.folio_range(s)[0]
        return None

    def _require_safe(self, start: int, end: int, what: str) -> None:
        if self.pins.any_match(start, end, bool):
            self.metrics.add("split_eagain")
            raise FolioBusy(start, what)

    # -- allocation ------------------------------------------------------------------------------
    def allocate(self, b0: int, b1: int | None = None) -> None:
        """``kvm_gmem_get_folio``: a whole huge folio at each block of ``[b0, b1)`` (all absent)."""
        b1 = b0 + 1 if b1 is None else b1
        assert self.shape.all_equal(b0, b1, ABSENT), "allocating over existing folios"
        self.subpool.alloc_folio(b1 - b0)
        self.shape.store(b0, b1, INTACT)
        self.pagecache.allocate(b0 * self.block_pages, b1 * self.block_pages)
        self.nr_allocated += b1 - b0

    # -- split -----------------------------------------------------------------------------------
    def _count(self, kind: str, big: Level, small: Level, n: int = 1) -> None:
        """``n`` folios of level ``big`` split into (or merged back from) folios of level ``small``."""
        key = split_key(big, small) if kind == "split" else merge_key(small, big)
        self.counts[key] += n
        self.metrics.add(key, n)
        vmemmap = n * VMEMMAP_SPLIT[big, small]
        delta = vmemmap if kind == "split" else -vmemmap
        self.vmemmap_bytes += delta
        self.metrics.vmemmap(delta)

    def split_block(self, b: int, to_2m: bool = False) -> None:
        """Split an intact block's folio: to 4 KiB, or (1 GiB only, staged) to 2 MiB folios.

        ``filemap_remove_folio_for_restructuring`` freezes the refcount: host huge mappings of the
        folio go first, an extra reference fails with :class:`FolioBusy`.
        """
        if self.shape.load(b) != INTACT:
            return
        s, e = self.block_range(b)
        self._require_safe(s, e, "split")
        staged = to_2m and self.level == Level.PG_1G
        self.mappings.unmap_above(s, e, Level.PG_2M if staged else Level.PG_4K)
        if staged:
            assert self.sub2m is not None
            self.shape.store(b, b + 1, SPLIT_2M)
            self.sub2m.store(PMD.number(s), PMD.number(e), INTACT)
            self._count("split", Level.PG_1G, Level.PG_2M)
        else:
            self.shape.store(b, b + 1, SPLIT_4K)
            self._count("split", self.level, Level.PG_4K)

    def split_2m(self, index: int) -> None:
        """Split the 2 MiB folio holding ``index`` inside a ``SPLIT_2M`` block into 4 KiB folios."""
        assert self.sub2m is not None
        j = PMD.number(index)
        if self.shape.load(self.block_of(index)) != SPLIT_2M or self.sub2m.load(j) != INTACT:
            return
        lo, hi = PMD.first_page(j), PMD.first_page(j + 1)
        self._require_safe(lo, hi, "split")
        self.mappings.unmap_above(lo, hi, Level.PG_4K)
        self.sub2m.store(j, j + 1, SPLIT_4K)
        self._count("split", Level.PG_2M, Level.PG_4K)

    def split_to(self, index: int, level: Level, staged: bool) -> None:
        """Split until the folio holding ``index`` is at most ``level``."""
        b = self.block_of(index)
        folio = self.folio_level(index)
        if folio is None or folio <= level:
            return
        if self.shape.load(b) == INTACT:
            self.split_block(b, to_2m=staged)
        folio = self.folio_level(index)
        if folio is not None and folio > level:
            self.split_2m(index)

    def split_range_to_4k(self, start: int, end: int, staged: bool) -> None:
        """Leave every folio overlapping ``[start, end)`` at 4 KiB (the eager to-shared rule).

        Direct: each intact block there is split 1G/2M -> 4K. Staged (1 GiB files): intact blocks are
        split to 2 MiB and only the 2 MiB pieces overlapping the range go on to 4 KiB. Runs of blocks are
        handled in one step; the refcount check covers every folio before anything changes.
        """
        staged = staged and self.level == Level.PG_1G
        bp = self.block_pages
        b_lo, b_hi = start // bp, (end + bp - 1) // bp
        intact = [(b0, b1) for b0, b1, v in self.shape.runs(b_lo, b_hi) if v == INTACT]
        pieces: list[tuple[int, int]] = []
        if staged:
            assert self.sub2m is not None
            j_lo, j_hi = PMD.number(start), PMD.number(PMD.align_up(end))
            for b0, b1, v in self.shape.runs(b_lo, b_hi):
                if v in (INTACT, SPLIT_2M):
                    lo, hi = max(j_lo, PMD.number(b0 * bp)), min(j_hi, PMD.number(b1 * bp))
                    pieces += [(a, c) for a, c, w in self.sub2m.runs(lo, hi) if w == INTACT or v == INTACT]
        for b0, b1 in intact:
            self._require_safe(b0 * bp, b1 * bp, "split")
        for j0, j1 in pieces:
            self._require_safe(PMD.first_page(j0), PMD.first_page(j1), "split")
        for b0, b1 in intact:
            self.mappings.unmap_above(b0 * bp, b1 * bp, Level.PG_4K)
            if staged:
                assert self.sub2m is not None
                self.shape.store(b0, b1, SPLIT_2M)
                self.sub2m.store(PMD.number(b0 * bp), PMD.number(b1 * bp), INTACT)
                self._count("split", Level.PG_1G, Level.PG_2M, b1 - b0)
            else:
                self.shape.store(b0, b1, SPLIT_4K)
                self._count("split", self.level, Level.PG_4K, b1 - b0)
        for j0, j1 in pieces:
            assert self.sub2m is not None
            self.mappings.unmap_above(PMD.first_page(j0), PMD.first_page(j1), Level.PG_4K)
            self.sub2m.store(j0, j1, SPLIT_4K)
            self._count("split", Level.PG_2M, Level.PG_4K, j1 - j0)

    def merge_range_if(self, start: int, end: int, allowed: RangeCheck) -> None:
        """Merge the split folios of blocks overlapping ``[start, end)`` where ``allowed(s, e)`` says the
        range holds no shared index (the eager to-private rule). A run of such blocks merges in one step;
        blocks with an extra reference stay split (merging is best effort, workloads 3.4 step 4)."""
        bp = self.block_pages
        b_lo, b_hi = start // bp, (end + bp - 1) // bp
        for b0, b1, v in list(self.shape.runs(b_lo, b_hi)):
            if v == SPLIT_4K and allowed(b0 * bp, b1 * bp) and not self.pins.any_match(b0 * bp, b1 * bp, bool):
                self.shape.store(b0, b1, INTACT)
                self._count("merge", self.level, Level.PG_4K, b1 - b0)
                continue
            if v not in (SPLIT_4K, SPLIT_2M):
                continue
            for b in range(b0, b1):
                lo, hi = self.block_range(b)
                for p0, p1 in self.split_pieces(b, max(lo, start), min(hi, end)):
                    for p in range(p0, p1, PMD.pages):
                        q = p + PMD.pages
                        if allowed(p, q) and not self.pins.any_match(p, q, bool):
                            self.merge_2m(p, check=False)
                if allowed(lo, hi) and not self.pins.any_match(lo, hi, bool):
                    self.merge_block(b, check=False)

    # -- merge -----------------------------------------------------------------------------------
    def merge_block(self, b: int, check: bool = True) -> None:
        """``kvm_gmem_try_merge_folio_in_filemap``: put the block's folio back together (redo HVO).

        A staged block merges its split 2 MiB pieces first, then the 1 GiB folio. With ``check`` an
        extra reference anywhere in the block fails with :class:`FolioBusy` before anything changes.
        """
        shape = self.shape.load(b)
        if shape in (ABSENT, INTACT):
            return
        s, e = self.block_range(b)
        if check:
            self._require_safe(s, e, "merge")
        if shape == SPLIT_4K:
            self._count("merge", self.level, Level.PG_4K)
        else:
            assert self.sub2m is not None
            for j0, j1, v in list(self.sub2m.runs(PMD.number(s), PMD.number(e))):
                if v == SPLIT_4K:
                    for _ in range(j1 - j0):
                        self._count("merge", Level.PG_2M, Level.PG_4K)
            self.sub2m.store(PMD.number(s), PMD.number(e), INTACT)
            self._count("merge", Level.PG_1G, Level.PG_2M)
        self.shape.store(b, b + 1, INTACT)

    def merge_2m(self, index: int, check: bool = True) -> None:
        """Merge the 4 KiB folios of one 2 MiB piece of a ``SPLIT_2M`` block back into a 2 MiB folio."""
        assert self.sub2m is not None
        j = PMD.number(index)
        if self.shape.load(self.block_of(index)) != SPLIT_2M or self.sub2m.load(j) != SPLIT_4K:
            return
        if check:
            self._require_safe(PMD.first_page(j), PMD.first_page(j + 1), "merge")
        self.sub2m.store(j, j + 1, INTACT)
        self._count("merge", Level.PG_2M, Level.PG_4K)

    def split_pieces(self, b: int, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
        """2 MiB pieces (index ranges) of a ``SPLIT_2M`` block, overlapping ``[start, end)``, split to 4 KiB."""
        if self.sub2m is None or self.shape.load(b) != SPLIT_2M:
            return []
        s, e = self.block_range(b)
        s, e = max(s, PMD.align_down(start)), min(e, e if end is None else PMD.align_up(end))
        return [(PMD.first_page(j0), PMD.first_page(j1))
                for j0, j1, v in self.sub2m.runs(PMD.number(s), PMD.number(e)) if v == SPLIT_4K]

    # -- truncation ------------------------------------------------------------------------------
    def free_block(self, b: int) -> None:
        """The block's (intact) folio leaves the page cache; a pinned folio returns to HugeTLB later."""
        if self.shape.load(b) == ABSENT:
            return
        assert self.shape.load(b) == INTACT, "split folios are merged before they are freed"
        s, e = self.block_range(b)
        pinned = self.pins.any_match(s, e, bool)
        self.shape.store(b, b + 1, ABSENT)
        self.nr_allocated -= 1
        self.subpool.free_folio(still_referenced=pinned)

    def free_intact_run(self, b0: int, b1: int) -> None:
        """Free a run of intact, unreferenced folios at once (whole-file punch, eviction)."""
        self.shape.store(b0, b1, ABSENT)
        self.nr_allocated -= b1 - b0
        self.subpool.used -= b1 - b0

    # -- checking --------------------------------------------------------------------------------
    def _net_splits(self, big: Level) -> int:
        """Splits minus merges of folios of level ``big`` in this inode."""
        c = self.counts
        return sum(c[split_key(big, small)] - c[merge_key(small, big)] for small in LEVELS if small < big)

    def check(self) -> None:
        """Split and merge counters agree with the folio shapes; vmemmap agrees with both."""
        self.shape.check()
        count = self.shape.count
        split_blocks = count(0, self.nblocks, lambda v: v in (SPLIT_4K, SPLIT_2M))
        if split_blocks != self._net_splits(self.level):
            raise AssertionError(f"{split_blocks} split blocks but {self.counts} splits/merges")
        vmemmap = 0
        if self.level == Level.PG_1G:
            assert self.sub2m is not None
            self.sub2m.check()
            pieces = 0
            for b0, b1, v in self.shape.runs():
                if v == SPLIT_2M:
                    pieces += self.sub2m.count(PMD.number(b0 * self.block_pages), PMD.number(b1 * self.block_pages),
                                               lambda x: x == SPLIT_4K)
                    vmemmap += (b1 - b0) * VMEMMAP_SPLIT_1G_2M
                elif v == SPLIT_4K:
                    vmemmap += (b1 - b0) * VMEMMAP_SPLIT_1G_4K
            if pieces != self._net_splits(Level.PG_2M):
                raise AssertionError(f"{pieces} split 2M pieces but {self.counts} splits/merges")
            vmemmap += pieces * VMEMMAP_SPLIT_2M_4K
        else:
            vmemmap = split_blocks * VMEMMAP_SPLIT_2M_4K
        if vmemmap != self.vmemmap_bytes:
            raise AssertionError(f"vmemmap {self.vmemmap_bytes} but the shapes need {vmemmap}")
        if count(0, self.nblocks, bool) != self.nr_allocated:
            raise AssertionError("allocated block count out of step")
        if self.subpool.used != self.nr_allocated:
            raise AssertionError(f"subpool uses {self.subpool.used} pages for {self.nr_allocated} folios")
