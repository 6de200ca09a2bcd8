"""Huge-folio policies: when a HugeTLB guest_memfd splits and merges folios (workloads.md 2.3, 3.3, 3.4).

The model asks the active policy (``HostConfig.gmem_policy``) and never which one it is. Every hook gets
a :class:`HugeInode`: the inode's folios, its shareability and the policy's own record, nothing else.

* ``on_allocate(inode, b0, b1)`` -- huge folios were just allocated for blocks ``[b0, b1)``;
* ``after_convert(inode, work, to_shared)`` -- shareability of the work ranges was just stored (same lock);
* ``mapping_level(inode, index)`` -- ``kvm_gmem_mapping_order`` as a stage-2 level (what ``max_order``
  allows for a guest fault);
* ``host_map_level(inode, index, vma_level)`` -- the host userspace mapping level for a host fault,
  splitting first if the host needs a smaller mapping than the folio;
* ``new_record(npages, shared)`` -- the policy's own tracking state, if any;
* ``check(inode)`` -- the policy's invariant (eager: no huge folio holds a shared page; deferred: the record
  equals a rescan of shareability), run by ``ModelBackend.check_invariants``.

Truncation is the same for every policy (merge-then-truncate, workloads 3.6), as is refcount blocking.

Registered names (``POLICIES``): ``eager`` (RFC v2: split at allocation and on to-shared, merge as soon
as a block is all private again), ``eager+merge-never``, ``eager+staged`` and ``eager+staged+merge-never``
(1G -> 2M -> 4K), ``deferred`` (Roth: record 2M/1G states, split only for host faults inside mixed
ranges, 1G -> 2M first, merge only at truncate) and ``deferred+direct`` (1G -> 4K directly).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..level import Level
from .folio import INTACT, PMD, SPLIT_2M, HugeFolios
from .lpage import ALL_SHARED, GmemLpageInfo
from .shareability import Shareability


@dataclass(frozen=True)
class HugeInode:
    """What a policy sees of one HugeTLB inode: its folios, its shareability, its own record (if any)."""

    folios: HugeFolios
    shareability: Shareability
    record: GmemLpageInfo | None = None

    @property
    def lpage(self) -> GmemLpageInfo:
        assert self.record is not None, "the policy keeps no record"
        return self.record


@dataclass(frozen=True)
class SplitPolicy:
    """Base: the interface and the helpers every policy shares."""

    name: str
    staged: bool = False  # 1G -> 2M -> 4K instead of 1G -> 4K
    merge: str = "eager"  # "eager" (on to-private) or "never" (only at truncate)

    def new_record(self, npages: int, shared: bool) -> GmemLpageInfo | None:
        return None

    def on_allocate(self, inode: HugeInode, b0: int, b1: int) -> None:
        raise NotImplementedError

    def after_convert(self, inode: HugeInode, work: list[tuple[int, int]], to_shared: bool) -> None:
        raise NotImplementedError

    def mapping_level(self, inode: HugeInode, index: int) -> Level:
        raise NotImplementedError

    def host_map_level(self, inode: HugeInode, index: int, vma_level: Level) -> Level:
        raise NotImplementedError

    def check(self, inode: HugeInode) -> None:
        """Assert the policy's own invariant over the inode's folios."""


def uniform_level(inode: HugeInode, index: int, level: Level) -> Level:
    """Largest level <= ``level`` whose aligned range around ``index`` has one shareability state."""
    sh = inode.shareability
    while level > Level.PG_4K:
        lo = level.align_down(index)
        if len(sh.runs(lo, lo + level.pages)) == 1:
            return level
        level = level.smaller()
    return Level.PG_4K


@dataclass(frozen=True)
class EagerPolicy(SplitPolicy):
    """RFC v2 (workloads 3.3-3.4): a folio is split as soon as any page in it is shared."""

    def _split_shared(self, inode: HugeInode, start: int, end: int) -> None:
        for s, e, shared in inode.shareability.runs(start, end):
            if shared:
                inode.folios.split_range_to_4k(s, e, self.staged)

    def on_allocate(self, inode: HugeInode, b0: int, b1: int) -> None:
        # kvm_gmem_get_folio -> kvm_gmem_try_split_folio_in_filemap: split if any index is shared.
        hf = inode.folios
        self._split_shared(inode, hf.block_range(b0)[0], hf.block_range(b1 - 1)[1])

    def after_convert(self, inode: HugeInode, work: list[tuple[int, int]], to_shared: bool) -> None:
        hf = inode.folios
        if to_shared:
            for s, e in work:  # kvm_gmem_restructure_folios_in_range(..., is_split=true)
                hf.split_range_to_4k(s, e, self.staged)
        elif self.merge == "eager":
            sh = inode.shareability
            for s, e in work:  # kvm_gmem_try_merge_folio_in_filemap per huge block
                hf.merge_range_if(s, e, lambda lo, hi: not sh.any_shared(lo, hi))

    def mapping_level(self, inode: HugeInode, index: int) -> Level:
        # Mapping order = folio order, and huge only if no index in the aligned range is shared.
        return uniform_level(inode, index, inode.folios.folio_level(index) or Level.PG_4K)

    def host_map_level(self, inode: HugeInode, index: int, vma_level: Level) -> Level:
        # kvm_gmem_fault_shared maps PAGE_SIZE PTEs only (a large folio would be a SIGBUS).
        inode.folios.split_to(index, Level.PG_4K, self.staged)
        return Level.PG_4K

    def check(self, inode: HugeInode) -> None:
        """Eager: no folio larger than 4 KiB holds a shared index."""
        hf = inode.folios
        for s, e, shared in inode.shareability.runs(0, hf.npages):
            if not shared:
                continue
            for b0, b1, v in hf.shape.runs(hf.block_of(s), hf.block_of(e - 1) + 1):
                if v == INTACT:
                    raise AssertionError(f"eager left intact folios in blocks [{b0},{b1}) with shared pages")
                if v == SPLIT_2M and hf.sub2m is not None:
                    lo = max(PMD.number(s), PMD.number(b0 * hf.block_pages))
                    hi = min(PMD.number(e - 1) + 1, PMD.number(b1 * hf.block_pages))
                    for j0, _, w in hf.sub2m.runs(lo, hi):
                        if w == INTACT:
                            raise AssertionError(
                                f"eager left an intact 2M folio at {PMD.first_page(j0):#x} with shared pages")


@dataclass(frozen=True)
class DeferredPolicy(SplitPolicy):
    """Michael Roth's proposal (workloads 2.3): record 2M/1G states, split only when the host needs it."""

    merge: str = "never"

    def new_record(self, npages: int, shared: bool) -> GmemLpageInfo | None:
        return GmemLpageInfo(npages, shared)

    def on_allocate(self, inode: HugeInode, b0: int, b1: int) -> None:
        return None  # folios stay whole whatever their shareability

    def after_convert(self, inode: HugeInode, work: list[tuple[int, int]], to_shared: bool) -> None:
        record = inode.lpage
        for s, e in work:
            record.update(s, e, to_shared, inode.shareability)

    def mapping_level(self, inode: HugeInode, index: int) -> Level:
        return min(inode.folios.folio_level(index) or Level.PG_4K, inode.lpage.uniform_level(index))

    def check(self, inode: HugeInode) -> None:
        inode.lpage.check(inode.shareability)

    def host_map_level(self, inode: HugeInode, index: int, vma_level: Level) -> Level:
        record, hf = inode.lpage, inode.folios
        level = min(hf.folio_level(index) or Level.PG_4K, vma_level)
        while level > Level.PG_4K and record.state(index, level) != ALL_SHARED:
            level = level.smaller()
        # A sub-folio mapping inside a mixed range (or one the VMA cannot map whole): split now.
        hf.split_to(index, level, self.staged)
        return min(level, hf.folio_level(index) or Level.PG_4K)


POLICIES: dict[str, SplitPolicy] = {
    p.name: p
    for p in (
        EagerPolicy("eager"),
        EagerPolicy("eager+merge-never", merge="never"),
        EagerPolicy("eager+staged", staged=True),
        EagerPolicy("eager+staged+merge-never", staged=True, merge="never"),
        DeferredPolicy("deferred", staged=True),
        DeferredPolicy("deferred+direct", staged=False),
    )
}


def policy(name: str) -> SplitPolicy:
    """The registered policy called ``name``; ValueError naming the known ones otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown guest_memfd policy {name!r}; known: {', '.join(POLICIES)}") from None
