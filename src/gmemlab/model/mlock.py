"""``mprotect(2)``, ``mlock2(2)`` and ``munlock(2)`` over the modelled process's VMAs (mm/mprotect.c,
mm/mlock.c, ``__mm_populate`` in mm/gup.c; 6.18).

* ``mprotect``: EINVAL for an unaligned start or unknown protection bits (``arch_validate_prot``: only READ,
  WRITE, EXEC and SEM), 0 for a zero length, ENOMEM when the range wraps or is not fully mapped, EACCES when
  the protection asks for more than the VMA may have (``VM_MAY*``: a guest_memfd lives on a noexec mount, so
  no PROT_EXEC; realkernel #136). VMAs before the failing one keep their new protection.
* ``mlock2``: flags 0 or MLOCK_ONFAULT (else EINVAL); the range is rounded out to pages; every VMA of it gets
  VM_LOCKED (ENOMEM for a gap), then ``__mm_populate`` faults the pages in unless MLOCK_ONFAULT: a PROT_NONE
  VMA or a refused fault ends it with EFAULT, which mlock reports as ENOMEM (``__mlock_posix_error_return``),
  with the VMAs still locked.
* ``munlock`` clears the lock state of the range.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any, Protocol

from ..errors import HostSigbus, HostSigsegv, KvmError
from ..uapi import PAGE_SIZE

VM_LOCKED, VM_LOCKONFAULT = 1, 2  # values of a VMA's per-page lock state
MLOCK_ONFAULT = 1
PROT_READ, PROT_WRITE, PROT_EXEC, PROT_SEM = 1, 2, 4, 8
PROT_GROWSDOWN, PROT_GROWSUP = 0x01000000, 0x02000000
U64 = 1 << 64


class Space(Protocol):
    def span(self, start: int, end: int) -> Iterator[tuple[Any, int, int]]: ...


def _page_align(length: int) -> int:
    return (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _may(vma: Any) -> int:
    """The VMA's VM_MAY* bits as PROT_* bits: a guest_memfd mapping may not execute (noexec mount)."""
    return PROT_READ | PROT_WRITE | (0 if vma.file is not None else PROT_EXEC)


def do_mprotect(space: Space, start: int, length: int, prot: int) -> None:
    op = "mprotect"
    prot &= U64 - 1
    grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP)
    prot &= ~(PROT_GROWSDOWN | PROT_GROWSUP)
    if grows == PROT_GROWSDOWN | PROT_GROWSUP:
        raise KvmError(errno.EINVAL, op, "PROT_GROWSDOWN and PROT_GROWSUP together")
    if start & (PAGE_SIZE - 1):
        raise KvmError(errno.EINVAL, op, f"start {start:#x} is not page aligned")
    if not length:
        return
    end = start + _page_align(length)
    if end >= U64 or end <= start:
        raise KvmError(errno.ENOMEM, op, "start + length wraps")
    if prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM):
        raise KvmError(errno.EINVAL, op, f"prot {prot:#x} has unknown bits")
    pieces = list(space.span(start, end))
    if not pieces or pieces[0][0] is None:
        raise KvmError(errno.ENOMEM, op, "the range does not start in a mapping")
    if grows:
        raise KvmError(errno.EINVAL, op, "PROT_GROWSDOWN/PROT_GROWSUP on a mapping that does not grow")
    for vma, first, last in pieces:
        if vma is None:
            raise KvmError(errno.ENOMEM, op, "part of the range is not mapped")
        wanted = prot & (PROT_READ | PROT_WRITE | PROT_EXEC)
        if wanted & ~_may(vma):
            raise KvmError(errno.EACCES, op, f"prot {prot:#x} exceeds what the mapping may have (noexec mount)")
        populate = []
        if not vma.shared and wanted & PROT_WRITE:
            # mprotect_fixup(): a private VM_LOCKED VMA becoming writable is populated (COW now, not on access)
            for s, e, locked in vma.locked.runs(first, last):
                if locked == VM_LOCKED:  # not VM_LOCKONFAULT: populate_vma_page_range() does nothing then
                    populate += [(ps, pe) for ps, pe, p in vma.prots.runs(s, e) if not p & PROT_WRITE]
        vma.prots.store(first, last, wanted)
        for ps, pe in populate:
            for page in range(ps, pe):
                try:
                    vma._fault(page, True, gup=True)
                except (HostSigbus, HostSigsegv):
                    break  # the result of populate_vma_page_range() is ignored


def do_mlock(space: Space, start: int, length: int, flags: int) -> None:
    """``mlock2(start, length, flags)``; ``flags`` as the int the syscall takes (unsigned pattern)."""
    op = "mlock2"
    if flags & ~MLOCK_ONFAULT:
        raise KvmError(errno.EINVAL, op, f"flags {flags:#x}: only MLOCK_ONFAULT")
    state = VM_LOCKED | (VM_LOCKONFAULT if flags & MLOCK_ONFAULT else 0)
    start, end = _rounded(start, length)
    if end is None:
        return
    _apply_lock(space, op, start, end, state)
    if state & VM_LOCKONFAULT:
        return
    try:
        mm_populate(space, start, end)
    except KvmError as exc:  # __mlock_posix_error_return()
        err = {errno.EFAULT: errno.ENOMEM, errno.ENOMEM: errno.EAGAIN}.get(exc.errno or 0, exc.errno or 0)
        raise KvmError(err, op, exc.reason) from None


def do_munlock(space: Space, start: int, length: int) -> None:
    start, end = _rounded(start, length)
    if end is not None:
        _apply_lock(space, "munlock", start, end, 0)


def _rounded(start: int, length: int) -> tuple[int, int | None]:
    """``len = PAGE_ALIGN(len + offset_in_page(start)); start &= PAGE_MASK`` (in size_t arithmetic); the end,
    or None for an empty range. A wrapping range is EINVAL (``apply_vma_lock_flags``)."""
    length = _page_align(length + (start & (PAGE_SIZE - 1))) % U64
    start &= ~(PAGE_SIZE - 1)
    if start + length >= U64:
        raise KvmError(errno.EINVAL, "mlock2", "start + length wraps")
    return start, (start + length if length else None)


def _apply_lock(space: Space, op: str, start: int, end: int, state: int) -> None:
    """``apply_vma_lock_flags``: ENOMEM when the start or any later part is not mapped (VMAs before a gap
    keep their new state)."""
    for vma, first, last in space.span(start, end):
        if vma is None:
            raise KvmError(errno.ENOMEM, op, "part of the range is not mapped")
        vma.locked.store(first, last, state)


def mm_populate(space: Space, start: int, end: int) -> None:
    """``__mm_populate(start, len, 0)``: fault every page in, VMA by VMA (``populate_vma_page_range``)."""
    for vma, first, last in space.span(start, end):
        if vma is None:
            return  # no more VMAs: nothing to fault
        for s, e, prot in vma.prots.runs(first, last):
            if not prot & (PROT_READ | PROT_WRITE | PROT_EXEC):
                raise KvmError(errno.EFAULT, "mlock2", "PROT_NONE pages are never faulted in")
            # shared: a read fault (FOLL_FORCE); private writable: a write fault to break COW
            write = bool(prot & PROT_WRITE) and not vma.shared
            for page in range(s, e):
                if vma.locked.load(page) & VM_LOCKONFAULT:
                    continue
                try:
                    vma._fault(page, write, gup=True)
                except HostSigbus as exc:
                    raise KvmError(errno.EFAULT, "mlock2", str(exc)) from None
                except HostSigsegv as exc:
                    # PROT_NONE was refused above and a write fault is only asked of writable pages, so what
                    # faults here is what FOLL_FORCE cannot override: an execute-only pkey or a guard marker
                    raise KvmError(errno.EFAULT, "mlock2", str(exc)) from None

