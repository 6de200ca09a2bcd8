"""``madvise(2)`` over the modelled process's VMAs, after mm/madvise.c (6.18).

``do_madvise`` checks the advice and the range (``is_valid_madvise``: a known advice, a page-aligned start, a
length that neither rounds up to zero nor wraps), returns 0 for an empty range, then either populates
(``MADV_POPULATE_READ/WRITE``, :func:`madvise_populate`) or walks the VMAs of the range
(``madvise_walk_vmas``): each VMA applies the advice to its part and the first error ends the call (parts
before it stay done); a gap between VMAs makes the call return ENOMEM at the end unless another error came
first. Per VMA (``madvise_vma_behavior``):

* ``MADV_REMOVE`` punches the file (``vfs_fallocate(PUNCH_HOLE|KEEP_SIZE)``): EINVAL for a locked VMA or one
  without a file (private anonymous memory such as the guards), EACCES without VM_SHARED|VM_MAYWRITE;
* ``MADV_DONTNEED`` / ``MADV_DONTNEED_LOCKED`` zap the PTEs (EINVAL on a locked VMA, unless _LOCKED);
  ``MADV_FREE`` needs private anonymous memory (EINVAL otherwise);
* ``MADV_COLD`` / ``MADV_PAGEOUT``: EINVAL on a locked VMA; MADV_PAGEOUT reclaims shmem pages found through
  the caller's PTEs that no other process maps (``madvise_cold_or_pageout_pte_range``), unmapping them (a clean
  one leaves the page cache); guest_memfd folios are unevictable and private anonymous pages have no swap here;
* ``MADV_GUARD_INSTALL`` puts guard markers (zapping the PTEs; EINVAL on a locked VMA),
  ``MADV_GUARD_REMOVE`` takes them away;
* ``MADV_WIPEONFORK`` only for private anonymous memory (a forked child gets that part empty: no pages, no
  guard markers), ``MADV_KEEPONFORK`` undoes it; ``MADV_COLLAPSE`` collapses nothing here (guest_memfd
  and the guards are not THP-eligible: EINVAL);
* the flag-only advices (NORMAL, RANDOM, SEQUENTIAL, WILLNEED, DONTFORK, DOFORK, DONTDUMP, DODUMP,
  MERGEABLE, UNMERGEABLE, HUGEPAGE, NOHUGEPAGE) succeed.

``MADV_HWPOISON`` / ``MADV_SOFT_OFFLINE`` are refused as unsupported: they would poison real pages of the
host under the kernel backend, so the fuzzer never sends them.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any, Protocol

from ..errors import HostSigbus, HostSigsegv, KvmError, UnsupportedByBackend
from ..uapi import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, PAGE_SHIFT, PAGE_SIZE

MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED, MADV_DONTNEED = 0, 1, 2, 3, 4
MADV_FREE, MADV_REMOVE, MADV_DONTFORK, MADV_DOFORK = 8, 9, 10, 11
MADV_MERGEABLE, MADV_UNMERGEABLE, MADV_HUGEPAGE, MADV_NOHUGEPAGE = 12, 13, 14, 15
MADV_DONTDUMP, MADV_DODUMP, MADV_WIPEONFORK, MADV_KEEPONFORK = 16, 17, 18, 19
MADV_COLD, MADV_PAGEOUT, MADV_POPULATE_READ, MADV_POPULATE_WRITE = 20, 21, 22, 23
MADV_DONTNEED_LOCKED, MADV_COLLAPSE, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE = 24, 25, 102, 103
MADV_HWPOISON, MADV_SOFT_OFFLINE = 100, 101

VALID = frozenset({
    MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED, MADV_DONTNEED, MADV_FREE, MADV_REMOVE,
    MADV_DONTFORK, MADV_DOFORK, MADV_MERGEABLE, MADV_UNMERGEABLE, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_DONTDUMP,
    MADV_DODUMP, MADV_WIPEONFORK, MADV_KEEPONFORK, MADV_COLD, MADV_PAGEOUT, MADV_POPULATE_READ,
    MADV_POPULATE_WRITE, MADV_DONTNEED_LOCKED, MADV_COLLAPSE, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE,
    MADV_HWPOISON, MADV_SOFT_OFFLINE,
})
FLAG_ONLY = frozenset({MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED, MADV_DONTFORK, MADV_DOFORK,
                       MADV_DONTDUMP, MADV_DODUMP, MADV_MERGEABLE, MADV_UNMERGEABLE,
                       MADV_HUGEPAGE, MADV_NOHUGEPAGE})
U64 = 1 << 64
# VMA flags the hint-only advices set and clear (madvise_update_vma splits the VMA where they change): read-ahead
# hints VM_RAND_READ/VM_SEQ_READ, VM_DONTDUMP, VM_HUGEPAGE/VM_NOHUGEPAGE. (VM_MERGEABLE is never set on the
# shared mappings whose VMA bounds the model needs: ksm_madvise skips VM_SHARED.)
VM_RAND_READ, VM_SEQ_READ, VM_DONTDUMP, VM_HUGEPAGE, VM_NOHUGEPAGE = 1, 2, 4, 8, 16
VM_FLAG_ADVICES = {
    MADV_NORMAL: (0, VM_RAND_READ | VM_SEQ_READ), MADV_RANDOM: (VM_RAND_READ, VM_SEQ_READ),
    MADV_SEQUENTIAL: (VM_SEQ_READ, VM_RAND_READ), MADV_DONTDUMP: (VM_DONTDUMP, 0), MADV_DODUMP: (0, VM_DONTDUMP),
    MADV_HUGEPAGE: (VM_HUGEPAGE, VM_NOHUGEPAGE), MADV_NOHUGEPAGE: (VM_NOHUGEPAGE, VM_HUGEPAGE),
}


class Vma(Protocol):
    """What madvise needs of a VMA (:class:`gmemlab.model.host.ModelHostMapping`)."""

    address: int
    npages: int
    pgoff: int
    file: Any
    locked: Any
    markers: Any
    dontcopy: Any
    wipeonfork: Any
    prots: Any
    vm_flags: Any
    anon: dict[int, bytes | bytearray]

    @property
    def has_file(self) -> bool: ...

    @property
    def is_anonymous(self) -> bool: ...

    def zap(self, first: int, last: int, above: int = 0) -> int: ...

    def held(self, page: int) -> Any: ...

    def mapped_shared(self, page: int) -> bool: ...

    @property
    def sharers(self) -> set[Any]: ...

    def _fault(self, page: int, write: bool, gup: bool = False) -> None: ...


class Space(Protocol):
    refused_advices: frozenset[int]  # advices of features the kernel lacks (config_refused_advices)

    def span(self, start: int, end: int) -> Iterator[tuple[Any, int, int]]: ...


def refused_advices(ksm: bool, thp: bool) -> frozenset[int]:
    """``madvise_behavior_valid``: MADV_[UN]MERGEABLE only with CONFIG_KSM, MADV_[NO]HUGEPAGE and MADV_COLLAPSE
    only with CONFIG_TRANSPARENT_HUGEPAGE (the lab 6.18.2 kernel has no KSM)."""
    out: set[int] = set()
    if not ksm:
        out |= {MADV_MERGEABLE, MADV_UNMERGEABLE}
    if not thp:
        out |= {MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_COLLAPSE}
    return frozenset(out)


def page_align(length: int) -> int:
    return (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def do_madvise(space: Space, start: int, len_in: int, behavior: int) -> None:
    """``do_madvise(current->mm, start, len_in, behavior)``; ``start`` an address, ``len_in`` a size_t."""
    op = "madvise"
    if behavior not in VALID:
        raise KvmError(errno.EINVAL, op, f"advice {behavior} is not a madvise behaviour")
    if behavior in space.refused_advices:
        raise KvmError(errno.EINVAL, op, f"advice {behavior} needs a feature this kernel is built without")
    if start & (PAGE_SIZE - 1):
        raise KvmError(errno.EINVAL, op, f"start {start:#x} is not page aligned")
    length = page_align(len_in) % U64
    if len_in and not length:
        raise KvmError(errno.EINVAL, op, f"length {len_in:#x} rounds up past the address space")
    if start + length >= U64:
        raise KvmError(errno.EINVAL, op, "start + length wraps")
    if length == 0:
        return
    if behavior in (MADV_HWPOISON, MADV_SOFT_OFFLINE):
        raise UnsupportedByBackend("MADV_HWPOISON / MADV_SOFT_OFFLINE (they poison real pages under the kernel)")
    end = start + length
    if behavior in (MADV_POPULATE_READ, MADV_POPULATE_WRITE):
        madvise_populate(space, start, end, behavior == MADV_POPULATE_WRITE)
        return
    unmapped = False
    for vma, first, last in space.span(start, end):
        if vma is None:
            unmapped = True  # a gap: ENOMEM at the end, the walk goes on
            continue
        madvise_vma_behavior(vma, first, last, behavior)
    if unmapped:
        raise KvmError(errno.ENOMEM, op, "part of the range is not mapped")


def _runs(rangemap: Any, first: int, last: int) -> Iterator[tuple[int, int, Any]]:
    yield from rangemap.runs(first, last)


def madvise_vma_behavior(vma: Vma, first: int, last: int, behavior: int) -> None:
    """One VMA's part ``[first, last)`` (pages of the VMA). A VMA whose pages differ in mlock state is several
    VMAs in the kernel (mlock splits them): runs of equal state are visited in address order."""
    op = "madvise"
    for s, e, locked in _runs(vma.locked, first, last):
        if behavior == MADV_REMOVE:
            if locked:
                raise KvmError(errno.EINVAL, op, "MADV_REMOVE on a locked VMA")
            if not vma.has_file:
                raise KvmError(errno.EINVAL, op, "MADV_REMOVE needs a file (private anonymous memory)")
            _remove(vma, s, e)
        elif behavior in (MADV_DONTNEED, MADV_DONTNEED_LOCKED, MADV_FREE):
            if locked and behavior != MADV_DONTNEED_LOCKED:
                raise KvmError(errno.EINVAL, op, "MADV_DONTNEED/MADV_FREE on a locked VMA")
            if behavior == MADV_FREE:
                if not vma.is_anonymous:
                    raise KvmError(errno.EINVAL, op, "MADV_FREE works on private anonymous memory only")
                # lazily freed: the pages stay mapped with their data until memory reclaim takes them, which
                # the model never does (nor, in practice, a host with free memory; the zero page is skipped)
            else:
                vma.zap(s, e)
                if vma.is_anonymous:
                    for page in [p for p in vma.anon if s <= p < e]:
                        del vma.anon[page]
        elif behavior in (MADV_COLD, MADV_PAGEOUT):
            if locked:
                raise KvmError(errno.EINVAL, op, "MADV_COLD/MADV_PAGEOUT on a locked VMA")
            if behavior == MADV_PAGEOUT and vma.file is None and vma.has_file:
                # shmem pages are evictable: reclaim_pages() unmaps them (try_to_unmap); a clean one (only read)
                # leaves the page cache, a dirty one stays (no swap here, or back from swap with its data).
                # guest_memfd folios are unevictable and private anonymous pages have no swap: both stay mapped.
                # madvise_cold_or_pageout_pte_range() leaves alone a folio that another process maps too
                # (mapcount above its pages; found by the host fuzz run after 6,650 sequences, seed 921), and
                # reclaims only folios it found through this process's PTEs. Only pages in the page cache can have
                # a PTE, so the walk is over those, not over the range.
                mapped = sorted(p for p in vma.anon if s <= p < e and vma.held(p) is not None)
                kept = [p for p in mapped if vma.mapped_shared(p)]
                lo = s
                for page in [*kept, e]:
                    vma.zap(lo, page)
                    lo = page + 1
                for page in set(mapped).difference(kept):
                    if not isinstance(vma.anon[page], bytearray):
                        del vma.anon[page]
        elif behavior == MADV_GUARD_INSTALL:
            if locked:
                raise KvmError(errno.EINVAL, op, "MADV_GUARD_INSTALL on a locked VMA")
            vma.zap(s, e)
            vma.markers.store(s, e, True)
        elif behavior == MADV_GUARD_REMOVE:
            vma.markers.store(s, e, False)
        elif behavior in (MADV_DONTFORK, MADV_DOFORK):
            vma.dontcopy.store(s, e, behavior == MADV_DONTFORK)
        elif behavior == MADV_WIPEONFORK:
            if vma.has_file:
                raise KvmError(errno.EINVAL, op, "MADV_WIPEONFORK works on private anonymous memory only")
            vma.wipeonfork.store(s, e, True)
        elif behavior == MADV_KEEPONFORK:
            vma.wipeonfork.store(s, e, False)
        elif behavior == MADV_COLLAPSE:
            raise KvmError(errno.EINVAL, op, "MADV_COLLAPSE: not THP-eligible (guest_memfd folios are never "
                           "collapsed)")
        elif behavior in VM_FLAG_ADVICES:
            set_bits, clear_bits = VM_FLAG_ADVICES[behavior]
            for fs, fe, flags in list(_runs(vma.vm_flags, s, e)):
                vma.vm_flags.store(fs, fe, (flags | set_bits) & ~clear_bits)
        elif behavior not in FLAG_ONLY:  # pragma: no cover - VALID and the branches above agree
            raise UnsupportedByBackend(f"madvise advice {behavior} is not modelled")


def _remove(vma: Vma, first: int, last: int) -> None:
    """``madvise_remove``: punch the file under ``[first, last)`` (VM_SHARED|VM_MAYWRITE: our shared
    mappings are of files opened read-write, whatever their protection now)."""
    if vma.file is None:  # MAP_SHARED|MAP_ANONYMOUS: shmem_fallocate punches the shmem pages
        for sharer in list(vma.sharers):  # unmap_mapping_range(): every process that maps the shmem file
            sharer.zap(first, last)
        for page in [p for p in vma.anon if first <= p < last]:
            del vma.anon[page]
        return
    vma.file.vfs_fallocate(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, (vma.pgoff + first) << PAGE_SHIFT,
                           (last - first) << PAGE_SHIFT, "madvise")


def madvise_populate(space: Space, start: int, end: int, write: bool) -> None:
    """``madvise_populate`` (``faultin_page_range``, FOLL_MADV_POPULATE without FOLL_FORCE): page by page,
    ENOMEM where no VMA is, EINVAL where the VMA's protection does not allow the access, EFAULT where the
    fault fails (SIGBUS, a guard marker). Pages before the failing one stay populated."""
    op = "madvise"
    for vma, first, last in space.span(start, end):
        if vma is None:
            raise KvmError(errno.ENOMEM, op, "MADV_POPULATE: no VMA")
        for page in range(first, last):
            prot = vma.prots.load(page)
            if not prot & (2 if write else 1):  # check_vma_flags: VM_WRITE / VM_READ, no FOLL_FORCE
                raise KvmError(errno.EINVAL, op, "MADV_POPULATE: the protection does not allow the access")
            try:
                vma._fault(page, write, gup=True)
            except (HostSigbus, HostSigsegv) as exc:
                raise KvmError(errno.EFAULT, op, f"MADV_POPULATE: {exc}") from None
