"""Invariants of the model, checkable at any time (spec 2.15 "Invariants").

* bindings of one file are disjoint and each binding matches its memslot;
* host PTEs exist only on allocated, uptodate, host-faultable (shared) indices inside the file;
* no stage-2 leaf disagrees with ``kvm_mem_is_private``, and every leaf lies in a memslot whose backing
  is still there;
* stage-2 leaves are aligned to their level, so with the check above no huge leaf spans memory whose
  private/shared state is not uniform; HugeTLB folio shapes agree with the split/merge counters and
  vmemmap, and with the active policy's rule (eager: no shared page in a huge folio; deferred: the
  2M/1G record equals a rescan);
* page accounting is conserved: the incremental allocation counters equal a recount, allocations minus
  frees equal what is resident, and pins sit only on resident folios.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

from .gmem import GmemInode
from .kvm_host import Kvm
from .pagecache import ABSENT, UPTODATE


class InvariantViolation(AssertionError):
    pass


def _fail(message: str) -> NoReturn:
    raise InvariantViolation(message)


def check(inodes: Iterable[GmemInode], vms: Iterable[Kvm]) -> None:
    """Check every inode and every VM of a system (raises :class:`InvariantViolation`)."""
    for inode in inodes:
        _check_inode(inode)
    for vm in vms:
        _check_memslots(vm)
        _check_stage2(vm)


def _check_memslots(vm: Kvm) -> None:
    for (as_id, slot_id), slot in vm.memslots.items():
        if (slot.as_id, slot.id) != (as_id, slot_id):
            _fail(f"memslot {slot_id} filed under the wrong key")
        file = slot.gmem_file
        if file is not None:
            if file.released:
                _fail(f"slot {slot_id} still points at a released guest_memfd")
            for s, e, bound in file.bindings.runs(slot.gmem_pgoff, slot.gmem_pgoff + slot.npages):
                if bound is not slot:
                    _fail(f"slot {slot_id}: file indices [{s:#x},{e:#x}) bound to {bound!r}")


def _check_stage2(vm: Kvm) -> None:
    for s, e, spte in vm.stage2.mapped():
        pages = spte.level.pages
        if s % pages or e % pages:
            _fail(f"stage-2 {spte.level.label} leaves at [{s:#x},{e:#x}) are not aligned to their size")
        for gfn in (s, e - 1):
            slot = vm.find_memslot(gfn)
            if slot is None:
                _fail(f"stage-2 leaf at gfn {gfn:#x} outside every memslot")
            if slot.has_gmem and slot.gmem_file is None and (spte.private or slot.gmem_only):
                _fail(f"stage-2 leaf at gfn {gfn:#x} survives its released guest_memfd")
        # Compare against kvm_mem_is_private run by run (attributes and gmem state are range maps).
        for gfn in _boundaries(vm, s, e):
            if spte.private != vm.kvm_mem_is_private(gfn):
                _fail(f"stage-2 leaf at gfn {gfn:#x} is {'private' if spte.private else 'shared'} "
                      "but the memory is not")


def _boundaries(vm: Kvm, start: int, end: int) -> list[int]:
    """Gfns at which kvm_mem_is_private may change inside ``[start, end)``: run starts of the inputs."""
    points = {start}
    points.update(s for s, _, _ in vm.attributes.runs(start, end))
    for slot in vm.memslots.values():
        lo, hi = max(start, slot.base_gfn), min(end, slot.end_gfn)
        if lo >= hi:
            continue
        points.add(lo)
        if slot.gmem_file is not None:
            base = slot.base_gfn - slot.gmem_pgoff
            for s, _, _ in slot.gmem_file.inode.shareability.runs(lo - base, hi - base):
                points.add(s + base)
    return sorted(points)


def _check_inode(inode: GmemInode) -> None:
    if inode.huge is not None:
        try:
            inode.huge.check()  # folio shapes vs split/merge counters and vmemmap; the policy's own rule
        except AssertionError as exc:
            _fail(f"inode {inode.ino}: {exc}")
    _check_pagecache(inode)
    _check_pins(inode)
    _check_bindings(inode)
    _check_host_mappings(inode)


def _check_pagecache(inode: GmemInode) -> None:
    pc = inode.pagecache
    pc.state.check()
    recount = pc.count_allocated()
    if recount != pc.nr_allocated:
        _fail(f"inode {inode.ino}: {pc.nr_allocated} folios counted, {recount} resident")
    if pc.stats["folios_allocated"] - pc.stats["folios_freed"] != recount:
        _fail(f"inode {inode.ino}: allocated - freed != resident")
    for index in pc.data:
        if pc.state.load(index) != UPTODATE:
            _fail(f"inode {inode.ino}: contents held for index {index:#x} that is not uptodate")


def _check_pins(inode: GmemInode) -> None:
    inode.refs.check()
    for s, e, n in inode.refs.runs():
        if n < 0:
            _fail(f"inode {inode.ino}: negative reference count at [{s:#x},{e:#x})")
    inode.pins.check()
    for s, e, n in inode.pins.runs():
        if n < 0:
            _fail(f"inode {inode.ino}: negative pin count at [{s:#x},{e:#x})")
        if n and inode.pagecache.state.any_match(s, e, lambda v: v == ABSENT):
            _fail(f"inode {inode.ino}: pin on an absent folio in [{s:#x},{e:#x})")


def _check_bindings(inode: GmemInode) -> None:
    seen: set[int] = set()
    for file in inode.files:
        file.bindings.check()
        for s, e, slot in file.bindings.runs():
            if slot is None:
                continue
            if id(slot) in seen and not (slot.gmem_pgoff <= s and e <= slot.gmem_pgoff + slot.npages):
                _fail(f"slot {slot.id} bound to disjoint file ranges")
            seen.add(id(slot))
            if slot.gmem_file is not file:
                _fail(f"binding [{s:#x},{e:#x}) names slot {slot.id}, which points elsewhere")


def _check_host_mappings(inode: GmemInode) -> None:
    for vma in inode.mappings:
        for s, e in vma.mapped_file_runs():
            if e > inode.npages:
                _fail(f"host PTE beyond EOF at file index {e - 1:#x}")
            if not inode.shareability.all_shared(s, e):
                _fail(f"host maps private file indices in [{s:#x},{e:#x})")
            if not inode.pagecache.state.all_equal(s, e, UPTODATE):
                _fail(f"host maps a folio that is not uptodate in [{s:#x},{e:#x})")
