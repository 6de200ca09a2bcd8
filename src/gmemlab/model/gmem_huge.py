"""The HugeTLB paths of a guest_memfd inode (RFC v2 patches 16-51; spec 2.5, 2.14; workloads.md 3).

:class:`HugeGmem` is attached to a :class:`~gmemlab.model.gmem.GmemInode` created with
GUEST_MEMFD_FLAG_HUGETLB and serves the operations whose behaviour changes with huge folios:

* ``kvm_gmem_allocate`` -- start and end rounded *down* to the huge page, whole folios allocated;
* ``kvm_gmem_get_pfn`` -- allocate the folio, ``max_order`` from the policy's mapping order, prepare;
* ``kvm_gmem_fault_shared`` -- the host mapping level from the policy (splitting if needed), zeroing
  only what the host maps;
* ``kvm_gmem_truncate_inode_range`` -- partial huge pages zeroed, whole ones merged (safe refcounts, else
  EAGAIN) and freed; a pinned folio returns to HugeTLB when the pin goes;
* conversions -- the policy restructures after the shareability store; preparation is forgotten.

Folio shapes and the mechanics of split/merge are :mod:`gmemlab.model.folio`; *when* is
:mod:`gmemlab.model.policy`. The inode is seen through :class:`HugeOwner`: its page cache, pins,
shareability, host mappings and the arch invalidation hook, nothing more.
"""

from __future__ import annotations

import errno
import itertools
from collections import Counter
from typing import Any, Protocol

from ..errors import FaultRefused, FolioBusy, GmemError, KvmError
from ..level import HUGE_LEVELS, Level
from ..rangemap import RangeMap
from ..uapi import PAGE_SHIFT
from .folio import ABSENT, INTACT, SPLIT_2M, HugeFolios
from .host import FileMappings, ModelHostMapping, ModelPin
from .hugetlb import HugetlbSubpool
from .lpage import GmemLpageInfo
from .metrics import Metrics, per_level
from .pagecache import PageCache
from .policy import HugeInode, SplitPolicy
from .prepare import PREPAREDNESS
from .shareability import Shareability


class HugeOwner(Protocol):
    """What the HugeTLB paths need of the guest_memfd inode they serve."""

    @property
    def npages(self) -> int: ...

    @property
    def pagecache(self) -> PageCache: ...

    @property
    def pins(self) -> RangeMap[int]: ...

    @property
    def pin_objs(self) -> list[ModelPin]: ...

    @property
    def shareability(self) -> Shareability: ...

    @property
    def mappings(self) -> FileMappings: ...

    def arch_invalidate(self, start: int, end: int) -> None: ...


def one_run(rmap: RangeMap[Any], start: int, end: int) -> bool:
    """Whether ``[start, end)`` of a range map holds a single value (stops at the second run)."""
    runs = rmap.runs(start, end)
    next(runs, None)
    return next(runs, None) is None


class HugeGmem:
    """HugeTLB state and paths of one inode."""

    def __init__(
        self,
        inode: HugeOwner,
        hpage_size: int,
        subpool: HugetlbSubpool,
        policy: SplitPolicy,
        prepare: str,
        metrics: Metrics,
        shared: bool,
    ) -> None:
        self.inode = inode
        self.hpage_size = hpage_size
        self.hf = HugeFolios(
            inode.npages, hpage_size, subpool, metrics, inode.pagecache, inode.pins, inode.mappings
        )
        self.policy = policy
        self.record: GmemLpageInfo | None = policy.new_record(inode.npages, shared)  # the deferred 2M/1G record
        self.view = HugeInode(self.hf, inode.shareability, self.record)
        self.prep = PREPAREDNESS[prepare](inode.npages, metrics)
        self.metrics = metrics
        self.pin_folios: dict[int, list[int]] = {}  # id(pin) -> freed folios it still references
        self.folio_refs: Counter[int] = Counter()  # freed folio token -> pins still holding it
        self._tokens = itertools.count()

    # -- allocation ----------------------------------------------------------------------------
    def ensure_blocks(self, b0: int, b1: int) -> int:
        """``kvm_gmem_get_folio`` for every block of ``[b0, b1)`` without a folio; the policy then decides
        whether the new folios are split. Returns the number of pages allocated."""
        new = 0
        hf = self.hf
        for s, e, v in list(hf.shape.runs(b0, b1)):
            if v != ABSENT:
                continue
            if not hf.subpool.can_alloc(e - s):
                # The subpool is min = max: a truncated folio still pinned holds its page (3.6 step 4).
                e = s
                while hf.subpool.can_alloc(e - s + 1):
                    e += 1
                if e > s:
                    hf.allocate(s, e)
                    self.policy.on_allocate(self.view, s, e)
                raise KvmError(errno.ENOMEM, "kvm_gmem_get_folio", "no free page in the inode's HugeTLB "
                               "subpool (a truncated folio is still referenced)")
            hf.allocate(s, e)
            new += (e - s) * hf.block_pages
            self.policy.on_allocate(self.view, s, e)
        return new

    def allocate(self, start: int, end: int) -> int:
        """fallocate: start and end both rounded down to the huge page (spec 2.5)."""
        bp = self.hf.block_pages
        return self.ensure_blocks(start // bp, end // bp)

    # -- the guest side --------------------------------------------------------------------------
    def get_pfn(self, index: int) -> int:
        """``kvm_gmem_get_pfn``: folio, then ``max_order`` = the policy's mapping order, then prepare."""
        b = self.hf.block_of(index)
        try:
            self.ensure_blocks(b, b + 1)
        except KvmError as exc:
            assert exc.errno is not None
            raise GmemError(exc.errno, exc.reason) from None
        level = self.policy.mapping_level(self.view, index)
        start, end = self.hf.folio_range(index)
        hooks = self.prep.guest_prepare(self.inode.pagecache, start, end)
        self.metrics.add("arch_prepares", len(hooks))
        return level.order

    def uniform_folio_level(self, start: int, end: int) -> Level | None:
        """The folio level over file indices ``[start, end)`` when it is the same for every index (the
        folios are allocated first, as the faults there would); None when the range holds folios of
        different shapes. O(runs) (:func:`gmemlab.model.tdp.kvm_tdp_map_range`)."""
        hf = self.hf
        b0, b1 = hf.block_of(start), hf.block_of(end - 1) + 1
        self.ensure_blocks(b0, b1)
        if not one_run(hf.shape, b0, b1):
            return None
        if hf.shape.load(b0) == SPLIT_2M:
            assert hf.sub2m is not None
            if not one_run(hf.sub2m, Level.PG_2M.number(start), Level.PG_2M.number(Level.PG_2M.align_up(end))):
                return None
        return hf.folio_level(start)

    def prepare_folios(self, start: int, end: int, folio: Level) -> None:
        """``kvm_gmem_get_pfn``'s preparation of every ``folio``-level folio in ``[start, end)``, one fault per
        folio, as one range operation."""
        hooks = self.prep.guest_prepare_folios(self.inode.pagecache, start, end, folio)
        self.metrics.add("arch_prepares", hooks)

    def prepare_run(self, start: int, end: int) -> None:
        """A run of 4 KiB guest faults over ``[start, end)`` (one block): each folio is prepared by its first
        fault (a huge folio whole), one hook per folio as ``kvm_gmem_get_pfn`` would."""
        b = self.hf.block_of(start)
        self.ensure_blocks(b, self.hf.block_of(end - 1) + 1)
        folio = self.hf.folio_level(start) or Level.PG_4K
        self.prepare_folios(folio.align_down(start), folio.align_up(end), folio)

    # -- host faults -------------------------------------------------------------------------------
    def vma_level(self, index: int, vma: ModelHostMapping | None) -> Level:
        """Largest level at which ``vma`` maps the aligned range around ``index`` whole and aligned."""
        if vma is None:
            return Level.PG_4K
        for level in HUGE_LEVELS:
            lo = level.align_down(index)
            if vma.pgoff <= lo and lo + level.pages <= vma.pgoff + vma.npages:
                hva = vma.address + ((lo - vma.pgoff) << PAGE_SHIFT)
                if hva % level.bytes == 0:
                    return level
        return Level.PG_4K

    def host_fault(self, index: int, vma: ModelHostMapping | None) -> tuple[int, int, Level]:
        """``kvm_gmem_fault_shared`` on a shared index: returns ``(start, end, level)`` to map."""
        b = self.hf.block_of(index)
        try:
            self.ensure_blocks(b, b + 1)
            level = self.policy.host_map_level(self.view, index, self.vma_level(index, vma))
        except KvmError as exc:
            raise FaultRefused(f"kvm_gmem_get_folio: {exc.reason}") from None
        except FolioBusy as exc:
            raise FaultRefused(f"cannot split for a host mapping: {exc}") from None
        lo = level.align_down(index)
        zeroed = self.inode.pagecache.make_uptodate_range(lo, lo + level.pages)
        self.metrics.add("bytes_zeroed", zeroed << PAGE_SHIFT)
        self.metrics.add(per_level("host_faults", level))
        self.metrics.add(per_level("host_map_bytes", level), level.bytes)
        return lo, lo + level.pages, level

    # -- conversion --------------------------------------------------------------------------------
    def first_pinned_folio(self, start: int, end: int) -> int | None:
        return self.hf.first_pinned_folio(start, end)

    def after_convert(self, work: list[tuple[int, int]], to_shared: bool) -> None:
        """Restructure after the shareability store (raises FolioBusy if a split meets a pin)."""
        for s, e in work:
            self.prep.on_convert(s, e, to_shared)
        self.policy.after_convert(self.view, work, to_shared)

    # -- truncation --------------------------------------------------------------------------------
    def punch(self, start: int, end: int) -> int:
        """``kvm_gmem_truncate_inode_range`` after invalidation and host unmapping; returns pages freed."""
        hf, inode = self.hf, self.inode
        bp = hf.block_pages
        b_lo, b_hi = -(-start // bp), end // bp
        if b_lo < b_hi:
            self.kvm_gmem_merge_truncate_check(b_lo, b_hi)
        partial = [(start, end)] if b_lo >= b_hi else [(start, b_lo * bp), (b_hi * bp, end)]
        for s, e in partial:
            if s < e:
                inode.pagecache.zero_range(s, e)  # kvm_gmem_zero_range: not freed
                self.prep.on_truncate(s, e)
        return self.free_blocks(b_lo, b_hi) if b_lo < b_hi else 0

    def kvm_gmem_merge_truncate_check(self, b_lo: int, b_hi: int) -> None:
        """Whole huge pages with a shared index are merged before they are freed
        (``kvm_gmem_merge_truncate_indices``); a merge needs safe refcounts, so a pin there is EAGAIN."""
        hf, inode = self.hf, self.inode
        bp = hf.block_pages
        for b0, b1, v in hf.shape.runs(b_lo, b_hi):
            if v in (ABSENT, INTACT) or not inode.pins.any_match(b0 * bp, b1 * bp, bool):
                continue
            for b in range(b0, b1):
                s, e = hf.block_range(b)
                if inode.shareability.any_shared(s, e) and inode.pins.any_match(s, e, bool):
                    self.metrics.add("punch_eagain")
                    raise KvmError(
                        errno.EAGAIN,
                        "fallocate",
                        f"huge folio at offset {s << PAGE_SHIFT:#x} must be merged before it is freed and "
                        "has an elevated refcount (pinned)",
                    )

    def free_blocks(self, b_lo: int, b_hi: int) -> int:
        """Free every folio of blocks ``[b_lo, b_hi)``; runs of intact, unpinned folios in one step."""
        hf, inode = self.hf, self.inode
        bp = hf.block_pages
        freed = 0
        for b0, b1, v in list(hf.shape.runs(b_lo, b_hi)):
            if v == ABSENT:
                continue
            s, e = b0 * bp, b1 * bp
            if v == INTACT and not inode.pins.any_match(s, e, bool):
                hf.free_intact_run(b0, b1)
                inode.arch_invalidate(s, e)
                self.prep.on_truncate(s, e)
                freed += inode.pagecache.truncate(s, e)
                continue
            for b in range(b0, b1):
                freed += self.free_block(b)
        return freed

    def free_block(self, b: int) -> int:
        """Merge (if split) and free one block's folio; pins keep the folio out of the pool for now."""
        hf, inode = self.hf, self.inode
        s, e = hf.block_range(b)
        hf.merge_block(b, check=False)  # refcounts were checked, or nothing is shared (allocator re-merge)
        pinned = inode.pins.any_match(s, e, bool)
        hf.free_block(b)
        if pinned:
            token = next(self._tokens)
            for pin in inode.pin_objs:
                for ds, de in pin.detach(s, e):
                    inode.pins.update(ds, de, lambda n: n - 1)
                    if token not in self.pin_folios.setdefault(id(pin), []):
                        self.pin_folios[id(pin)].append(token)
                        self.folio_refs[token] += 1
        inode.arch_invalidate(s, e)
        self.prep.on_truncate(s, e)
        return inode.pagecache.truncate(s, e)

    def pin_released(self, pin: ModelPin) -> None:
        """The last reference of a freed, pinned folio may be gone: return it to HugeTLB."""
        for token in self.pin_folios.pop(id(pin), []):
            self.folio_refs[token] -= 1
            if not self.folio_refs[token]:
                del self.folio_refs[token]
                self.hf.subpool.reference_dropped()

    def release(self) -> int:
        """Inode eviction: everything is truncated (no EAGAIN: the mapping is exiting), then the
        subpool reservation goes back to the pool."""
        freed = self.free_blocks(0, self.hf.nblocks)
        self.hf.subpool.release()
        return freed

    # -- checking ----------------------------------------------------------------------------------
    def check(self) -> None:
        self.hf.check()
        resident = self.inode.pagecache.count_allocated()
        if resident != self.hf.nr_allocated * self.hf.block_pages:
            raise AssertionError(f"{resident} pages in the page cache for {self.hf.nr_allocated} huge folios")
        if self.record is not None:
            self.record.check(self.inode.shareability)
        self.policy.check(self.view)
