"""Host userspace: the address space, mappings (VMAs) of guest_memfd or anonymous memory, and pins.

A mapping of a guest_memfd installs a host PTE on first touch through the file's fault handler
(``kvm_gmem_fault_user_mapping`` in 6.18, ``kvm_gmem_fault_shared`` in RFC v2; spec 2.4), which may
refuse with SIGBUS. A mapping holds a reference on the file (spec 2.12). Long-term pins
(``pin_user_pages(FOLL_LONGTERM)``, e.g. VFIO) raise the refcount of the pinned folios, which makes
RFC v2 conversion to private fail with EAGAIN (spec 2.14 step 4).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ..backend import MAPPING_GUARD, PROT_EXEC, PROT_READ, PROT_WRITE, check_reservation
from ..errors import FaultRefused, HostSigbus, HostSigsegv, KvmError, UnsupportedByBackend
from ..level import LEVELS, Level
from ..rangemap import RangeMap
from ..uapi import MPOL_DEFAULT, MPOL_MODE_FLAGS, PAGE_SHIFT, PAGE_SIZE, c_signed, c_value
from . import numa
from .args import as_bytes
from .madvise import do_madvise
from .mlock import do_mlock, do_mprotect, do_munlock
from .pagecache import PageCache

MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_COLLAPSE = 14, 15, 25
USER_ADDR_LIMIT = (1 << 47) - PAGE_SIZE  # TASK_SIZE_MAX with 4-level paging
MPOL_MF_STRICT = 1
MPOL_MF_MOVE_ANY = 0x6  # MPOL_MF_MOVE | MPOL_MF_MOVE_ALL
_MMAP_BASE = 0x1000_0000_0000  # 16 TiB: about 112 TiB of room below TASK_SIZE, as a process has


class MappedInode(Protocol):
    """What a mapping needs of the inode behind its file: the page cache, the list of mappings
    (``i_mmap``), the fault handler and pins (``vm_operations_struct`` and GUP)."""

    @property
    def pagecache(self) -> PageCache: ...

    @property
    def mappings(self) -> FileMappings: ...

    @property
    def shared_policy_vm_ops(self) -> bool:
        """The file's vm_ops have set_policy/get_policy (U6.19): mbind goes to the inode."""
        ...

    def fault_user_mapping(
        self, index: int, vma: ModelHostMapping | None = None
    ) -> tuple[int, int, Level] | None: ...

    def host_fault_run(self, start: int, end: int, step: int, points: int) -> bool: ...

    def pin(self, start: int, end: int, kind: str = "pin") -> ModelPin: ...


class MappedFile(Protocol):
    """What a mapping needs of its file: a reference, its inode, and ``vfs_fallocate`` (MADV_REMOVE)."""

    @property
    def inode(self) -> MappedInode: ...

    def get_ref(self) -> None: ...

    def put_ref(self) -> None: ...

    def vfs_fallocate(self, mode: int, offset: int, length: int, op: str = "fallocate") -> None: ...


class PinOwner(Protocol):
    """The inode a pin raises refcounts in."""

    def unpin(self, pin: ModelPin) -> None: ...


class FileMappings:
    """The mappings of one file (``address_space->i_mmap``) and ``unmap_mapping_pages`` over them."""

    def __init__(self) -> None:
        self.vmas: list[ModelHostMapping] = []

    def __iter__(self) -> Iterator[ModelHostMapping]:
        return iter(self.vmas)

    def __len__(self) -> int:
        return len(self.vmas)

    def add(self, vma: ModelHostMapping) -> None:
        self.vmas.append(vma)

    def remove(self, vma: ModelHostMapping) -> None:
        self.vmas.remove(vma)

    def unmap(self, start: int, end: int) -> int:
        """``unmap_mapping_pages``: drop host PTEs of file indices ``[start, end)`` in every mapping."""
        zapped = 0
        for vma in self.vmas:
            first, last = vma.file_range_to_pages(start, end)
            zapped += vma.zap(first, last)
        return zapped

    def unmap_above(self, start: int, end: int, level: Level) -> int:
        """Drop host mappings larger than ``level`` over ``[start, end)`` (before a folio split)."""
        zapped = 0
        for vma in self.vmas:
            first, last = vma.file_range_to_pages(start, end)
            zapped += vma.zap(first, last, above=level)
        return zapped


class AddressSpace:
    """The modelled process's VMAs, ordered by address; hands out addresses like mmap does.

    Every mapping gets a reservation, as the kernel client makes one: ``MAPPING_GUARD`` bytes of PROT_NONE
    private anonymous memory (two guard VMAs) on each side (:mod:`gmemlab.backend`)."""

    def __init__(self, numa_nodes: int = 1, refused_advices: frozenset[int] = frozenset(),
                 pkeys: bool = False) -> None:
        self.numa_nodes = numa_nodes
        self.refused_advices = refused_advices  # madvise advices this kernel was built without (EINVAL)
        self.pkeys = pkeys  # protection keys: PROT_EXEC alone is execute-only for data accesses
        self.vmas: list[ModelHostMapping] = []
        self._next = _MMAP_BASE
        self.invalidations = 0  # mmu_notifier invalidations so far (each host zap is one)

    def place(self, length: int) -> int:
        """Address for a mapping of ``length`` bytes in a new reservation (ENOMEM when it does not fit)."""
        align = Level.PG_1G.bytes if length >= Level.PG_1G.bytes else Level.PG_2M.bytes  # THP-friendly, like mmap
        address = (self._next + MAPPING_GUARD + align - 1) & ~(align - 1)
        end = address + -(-length // PAGE_SIZE) * PAGE_SIZE + MAPPING_GUARD
        if end > USER_ADDR_LIMIT:
            raise KvmError(errno.ENOMEM, "mmap", f"no room for {length:#x} bytes in the address space")
        self._next = end
        return address

    def add(self, vma: ModelHostMapping) -> None:
        self.vmas.append(vma)
        self.vmas.sort(key=lambda v: v.address)

    def remove(self, vma: ModelHostMapping) -> None:
        self.vmas.remove(vma)

    def find(self, addr: int) -> ModelHostMapping | None:
        for vma in self.vmas:
            if vma.address <= addr < vma.end:
                return vma
        return None

    def span(self, start: int, end: int) -> Iterator[tuple[ModelHostMapping | None, int, int]]:
        """``[start, end)`` (page aligned) as (VMA, first page, end page) pieces in address order; a hole is
        (None, start address, end address)."""
        pos = start
        for vma in self.vmas:
            if vma.end <= pos or vma.address >= end:
                continue
            if vma.address > pos:
                yield None, pos, vma.address
                pos = vma.address
            stop = min(end, vma.end)
            yield vma, (pos - vma.address) >> PAGE_SHIFT, (stop - vma.address) >> PAGE_SHIFT
            pos = stop
            if pos >= end:
                return
        if pos < end:
            yield None, pos, end


@dataclass(frozen=True)
class Strided:
    """4 KiB PTEs at every ``step``-th page counted from ``phase``, in the run of :attr:`ModelHostMapping.ptes`
    that holds this value: a scattered host access pattern kept as one range entry, not one per page."""

    step: int
    phase: int

    def maps(self, page: int) -> bool:
        return (page - self.phase) % self.step == 0

    def points(self, start: int, end: int) -> int:
        """How many mapped pages ``[start, end)`` holds."""
        first = start + (self.phase - start) % self.step
        return max(0, -(-(end - first) // self.step))


Pte = Level | Strided | None  # a host PTE run: the mapping level, a strided set of 4 KiB PTEs, or none


FAULT_AROUND_PAGES = 16  # fault_around_bytes: 64 KiB by default (mm/memory.c)
PTRS_PER_PTE = 512


class ModelHostMapping:
    """One VMA: an ``mmap`` of a guest_memfd (``file`` set), of anonymous shared memory (``file`` None,
    ``shared``), or private anonymous PROT_NONE memory (the guards around every mapping, and what ``munmap``
    leaves over a mapping; ``guard``).

    Per page it keeps the protection (``mprotect``), the mlock state and guard markers
    (``MADV_GUARD_INSTALL``), as runs. Calls address the process, not just this VMA: offsets are relative to
    this mapping, ranges may run into the guards (:mod:`gmemlab.model.madvise`, :mod:`gmemlab.model.mlock`),
    and leaving the reservation is refused as the kernel client refuses it
    (:func:`gmemlab.backend.check_reservation`).
    """

    def __init__(
        self, space: AddressSpace, length: int, prot: int, file: MappedFile | None = None, pgoff: int = 0,
        shared: bool = True, address: int | None = None, guard: bool = False,
    ) -> None:
        self.space = space
        self.length = length
        self.npages = (length + PAGE_SIZE - 1) >> PAGE_SHIFT
        self.file = file
        self.pgoff = pgoff
        self.shared = shared
        self.guard = guard
        self.address = space.place(length) if address is None else address
        self.prots: RangeMap[int] = RangeMap(max(self.npages, 1), prot)
        self.locked: RangeMap[int] = RangeMap(max(self.npages, 1), 0)
        self.markers: RangeMap[bool] = RangeMap(max(self.npages, 1), False)
        self.dontcopy: RangeMap[bool] = RangeMap(max(self.npages, 1), False)  # MADV_DONTFORK
        self.wipeonfork: RangeMap[bool] = RangeMap(max(self.npages, 1), False)  # MADV_WIPEONFORK
        # private anonymous pages whose PTE fork write-protected (copy_present_pte: the page is shared with the
        # child until a write fault copies it)
        self.cow: RangeMap[bool] = RangeMap(max(self.npages, 1), False)
        self.vm_flags: RangeMap[int] = RangeMap(max(self.npages, 1), 0)  # hint advices (madvise.VM_FLAG_ADVICES)
        self.ptes: RangeMap[Pte] = RangeMap(max(self.npages, 1), None)  # host PTEs installed, by level
        # the invalidation (AddressSpace.invalidations) that last covered each page: KVM's mmu_notifier zaps
        # the stage-2 leaves of memslots whose userspace_addr range it covers
        self.invalidated: RangeMap[int] = RangeMap(max(self.npages, 1), 0)
        # anonymous pages: private ones, or shmem's page cache (shared with children); a shmem page only
        # faulted for reading is clean (immutable bytes), one written or write-faulted dirty (a bytearray)
        self.anon: dict[int, bytes | bytearray] = {}
        # the VMAs that map these anonymous pages: this one, and for shmem every fork copy (the shmem inode's
        # i_mmap), which decides whether a page is mapped by more than one process (MADV_PAGEOUT skips it)
        self.sharers: set[ModelHostMapping] = {self}
        self.vma_policy = numa.SharedPolicy(max(self.npages, 1))  # the VMA's own policy (anon; gmem before U6.19)
        self.unmapped = False
        self.guards: tuple[ModelHostMapping, ...] = ()
        space.add(self)
        if address is None:  # a new reservation: PROT_NONE guard VMAs on both sides
            self.guards = (
                ModelHostMapping(space, MAPPING_GUARD, 0, shared=False, address=self.address - MAPPING_GUARD,
                                 guard=True),
                ModelHostMapping(space, MAPPING_GUARD, 0, shared=False, address=self.end, guard=True),
            )
        if file is not None:
            file.get_ref()
            file.inode.mappings.add(self)

    @property
    def prot(self) -> int:
        """The protection of the first page (the mapping's, until mprotect changes part of it)."""
        return self.prots.load(0)

    @prot.setter
    def prot(self, value: int) -> None:
        self.prots.store(0, self.prots.limit, value)

    @property
    def end(self) -> int:
        return self.address + (self.npages << PAGE_SHIFT)

    @property
    def mapped_length(self) -> int:
        return self.npages << PAGE_SHIFT

    @property
    def has_file(self) -> bool:
        """``vma->vm_file``: the gmem, or the shmem file behind MAP_SHARED|MAP_ANONYMOUS."""
        return self.file is not None or self.shared

    @property
    def is_anonymous(self) -> bool:
        """``vma_is_anonymous()``: private anonymous memory (no vm_ops)."""
        return not self.has_file

    def zero_page(self, page: int) -> bool:
        """Whether a present ``page`` maps the shared zero page: private anonymous memory only ever read (a read
        fault maps it with a special PTE, do_anonymous_page). Its PTE has no normal folio (vm_normal_folio() is
        NULL), which move_pages, mbind's queueing and GUP-fast each treat apart."""
        return self.is_anonymous and page not in self.anon

    def pte_writable(self, page: int) -> bool:
        """Whether ``page`` has a present, writable PTE, which GUP-fast takes with FOLL_WRITE without looking at
        the VMA (KVM's hva_to_pfn tries that first for a read fault on a writable memslot): PROT_WRITE, not the
        zero page (its PTE is read-only), not write-protected by fork."""
        return (self.held(page) is not None and bool(self.prots.load(page) & PROT_WRITE)
                and not self.zero_page(page) and not self.cow.load(page))

    def mapped_shared(self, page: int) -> bool:
        """``folio_mapcount(folio) != 1`` for the anonymous page at ``page``: another VMA (a forked process's copy
        of shared anonymous memory) has a PTE on the same page."""
        return any(vma is not self and vma.held(page) is not None for vma in self.sharers)

    # -- faults ----------------------------------------------------------------------------------
    def _fault(self, page: int, write: bool, gup: bool = False) -> None:
        """Make ``page`` accessible or raise: SIGSEGV (no VMA / prot / guard marker), SIGBUS (the file
        refused)."""
        offset = page << PAGE_SHIFT
        if page < 0 or page >= self.npages:
            raise HostSigsegv(offset, write, "address not mapped")
        prot = self.prots.load(page)
        # x86 page tables cannot express write-only or execute-only (without protection keys): PROT_WRITE and
        # PROT_EXEC imply readable for the CPU.
        if not prot & (PROT_READ | PROT_WRITE | PROT_EXEC) or (write and not prot & PROT_WRITE):
            raise HostSigsegv(offset, write, "access not permitted by the page's protection")
        if prot & (PROT_READ | PROT_WRITE) == 0 and self.space.pkeys:
            # with protection keys the kernel maps PROT_EXEC alone with the execute-only pkey: data reads fault,
            # GUP's too (check_vma_flags: arch_vma_access_permitted, GUP is a data access), so mlock's populate
            # fails (EFAULT, reported as ENOMEM)
            raise HostSigsegv(offset, write, "execute-only memory (its pkey denies data access, FOLL_FORCE too)")
        if self.markers.load(page):
            raise HostSigsegv(offset, write, "a guard marker (MADV_GUARD_INSTALL)")
        if write and self.is_anonymous and page not in self.anon:
            # a write fault on private anonymous memory allocates a page (a read fault maps the shared zero
            # page, which move_pages reports as -EFAULT)
            self.anon[page] = bytearray(PAGE_SIZE)
        if write:
            self.cow.store(page, page + 1, False)  # the write fault copies a page fork shared: writable again
        shmem = self.file is None and self.shared
        if shmem and write:
            self._dirty(page)  # a write through the PTE (or GUP's FOLL_WRITE touch) dirties the folio
        if self.held(page):
            return
        if shmem and not write:
            # shmem (MAP_SHARED|MAP_ANONYMOUS): a read fault puts a clean page in its page cache too
            # (shmem_fault, SGP_CACHE), and maps the cached pages around it
            self.anon.setdefault(page, bytes(PAGE_SIZE))
            self._fault_around(page)
        span = None
        if self.file is not None:
            try:
                span = self.file.inode.fault_user_mapping(self.pgoff + page, self)
            except FaultRefused as exc:
                raise HostSigbus(offset, write, exc.reason) from None
        if span is None or span[2] == Level.PG_4K:
            self.ptes.store(page, page + 1, Level.PG_4K)
        else:  # a PMD/PUD mapping of a whole HugeTLB folio (deferred policy, workloads 2.3)
            self.ptes.store(span[0] - self.pgoff, span[1] - self.pgoff, span[2])

    def _dirty(self, page: int) -> bytearray:
        """The anonymous page's writable buffer (a clean shmem page becomes dirty)."""
        buf = self.anon.get(page)
        if not isinstance(buf, bytearray):
            buf = self.anon[page] = bytearray(PAGE_SIZE if buf is None else buf)
        return buf

    def _vma_key(self, page: int) -> tuple[object, ...]:
        """What splits VMAs in the kernel (mprotect, mlock, MADV_DONTFORK, hint advices, mbind): pages with
        equal keys side by side are one VMA there."""
        return (self.prots.load(page), self.locked.load(page), self.dontcopy.load(page), self.wipeonfork.load(page),
                self.vm_flags.load(page), self.vma_policy.get(page))

    def _fault_around(self, page: int) -> None:
        """``do_fault_around()`` -> ``filemap_map_pages()`` (shmem's ``->map_pages``): a read fault also maps
        the pages already in the page cache among the ``FAULT_AROUND_PAGES`` from the fault's aligned block
        (or from the VMA's start), within its VMA and page table. guest_memfd has no ``->map_pages``."""
        key = self._vma_key(page)
        start = page
        while start > max(page - FAULT_AROUND_PAGES, 0) and self._vma_key(start - 1) == key:
            start -= 1
        end = page + 1
        while end < min(page + FAULT_AROUND_PAGES, self.npages) and self._vma_key(end) == key:
            end += 1
        pte_off = ((self.address >> PAGE_SHIFT) + page) % PTRS_PER_PTE
        first = page + max(pte_off & ~(FAULT_AROUND_PAGES - 1), pte_off - (page - start)) - pte_off
        last = min(first + FAULT_AROUND_PAGES, page + PTRS_PER_PTE - pte_off, end)
        for p in range(first, last):
            if p in self.anon and not self.held(p) and not self.markers.load(p):  # filemap_map_pages: pte_none
                self.ptes.store(p, p + 1, Level.PG_4K)

    def held(self, page: int) -> Level | None:
        """The level of the host PTE mapping ``page``, None when none does."""
        v = self.ptes.load(page)
        if isinstance(v, Strided):
            return Level.PG_4K if v.maps(page) else None
        return v

    def touch(self, first: int, last: int, step: int = 1, write: bool = True) -> tuple[dict[Level, int], int]:
        """The VMM or a device backend touching mapping pages ``first, first + step, ... < last``: host faults
        taken as the kernel would, in runs. One real fault (:meth:`_fault`, which may split or map huge)
        decides each folio block; the block's remaining 4 KiB faults, which decide the same (every index
        shared, 4 KiB folios), are done in one step by the file (``host_fault_run``) and one PTE store (a
        :class:`Strided` run for ``step > 1``). Returns the faults by level and how many pages the file
        refused (SIGBUS, private)."""
        faults = dict.fromkeys(LEVELS, 0)
        refused = 0
        step = max(step, 1)
        page = first
        while page < last:
            held = self.held(page)
            if held is not None:
                if held > Level.PG_4K:
                    nxt = held.align_down(self.pgoff + page) - self.pgoff + held.pages
                else:
                    nxt = self._held_4k_end(page, last, step)
                page = self._next_point(first, step, nxt)
                continue
            try:
                self._fault(page, write)
            except (HostSigbus, HostSigsegv):
                refused += 1
                page = self._next_point(first, step, page + 1)
                continue
            level = self.held(page) or Level.PG_4K
            faults[level] += 1
            if level > Level.PG_4K:
                page = self._next_point(first, step, level.align_down(self.pgoff + page) - self.pgoff + level.pages)
                continue
            page = self._batch_4k(first, page, last, step, faults)
        return faults, refused

    def _held_4k_end(self, page: int, last: int, step: int) -> int:
        """Past the touched points from ``page`` on that 4 KiB PTEs already map: the end of the PTE run when it
        maps every one of them (a plain 4K run, or a strided run whose points include ours), else the next
        page. A second pass over a range the host already mapped costs its runs, not its pages."""
        v = self.ptes.load(page)
        if v is Level.PG_4K or (isinstance(v, Strided) and step % v.step == 0):
            return next(self.ptes.runs(page, last))[1]
        return page + 1

    def _batch_4k(self, first: int, page: int, last: int, step: int, faults: dict[Level, int]) -> int:
        """After a 4 KiB fault at ``page``: the rest of its 1 GiB, else 2 MiB, block in one step if the file
        agrees every fault there decides 4 KiB; returns the next page to touch."""
        nxt = page + step
        for block in (Level.PG_1G, Level.PG_2M):
            end = min(last, block.align_down(self.pgoff + page) - self.pgoff + block.pages)
            if nxt >= end:
                return self._next_point(first, step, nxt)
            k = -(-(end - nxt) // step)
            span_end = nxt + (k - 1) * step + 1
            if self.ptes.any_match(nxt, span_end, bool):
                continue
            if self.file is None or self.file.inode.host_fault_run(self.pgoff + nxt, self.pgoff + span_end, step, k):
                self.ptes.store(nxt, span_end, Level.PG_4K if step == 1 else Strided(step, first % step))
                faults[Level.PG_4K] += k
                return self._next_point(first, step, end)
        return self._next_point(first, step, nxt)

    @staticmethod
    def _next_point(first: int, step: int, at_least: int) -> int:
        """The first touched page (``first + k * step``) at or after ``at_least``."""
        if at_least <= first:
            return first
        return first + -(-(at_least - first) // step) * step

    def mapped_bytes(self) -> dict[str, int]:
        """Bytes this mapping maps now, per PTE level (O(runs))."""
        out = {level.label: 0 for level in LEVELS}
        for s, e, v in self.ptes.runs():
            if isinstance(v, Strided):
                out[Level.PG_4K.label] += v.points(s, e) * PAGE_SIZE
            elif v is not None:
                out[v.label] += (e - s) * PAGE_SIZE
        return out

    def _read_page(self, page: int, in_page: int, length: int) -> bytes:
        if self.file is None:
            data = self.anon.get(page)
            return bytes(length) if data is None else bytes(data[in_page : in_page + length])
        return self.file.inode.pagecache.read(self.pgoff + page, in_page, length)

    def _write_page(self, page: int, in_page: int, data: bytes) -> None:
        if self.file is None:
            buf = self._dirty(page)
            buf[in_page : in_page + len(data)] = data
        else:
            self.file.inode.pagecache.write(self.pgoff + page, in_page, data)

    def _access(self, op: str, offset: int, length: int, write: bool,
                each: Callable[[ModelHostMapping, int, int, int, int], None]) -> None:
        """Touch ``[offset, offset+length)`` page by page in address order (any VMA of the reservation);
        ``each(vma, page, in_page, chunk, done)`` moves the bytes. Faults are reported at this mapping's
        page-aligned offset."""
        offset, length = check_reservation(op, offset, length, self.mapped_length)
        pos, end, done = self.address + offset, self.address + offset + length, 0
        while pos < end:
            page_addr = pos & ~(PAGE_SIZE - 1)
            chunk = min(page_addr + PAGE_SIZE, end) - pos
            vma = self.space.find(pos)
            try:
                if vma is None:
                    raise HostSigsegv(0, write, "address not mapped")
                vma._fault((page_addr - vma.address) >> PAGE_SHIFT, write)
            except HostSigsegv as exc:
                raise HostSigsegv(page_addr - self.address, write, exc.reason) from None
            except HostSigbus as exc:
                raise HostSigbus(page_addr - self.address, write, exc.reason) from None
            each(vma, (page_addr - vma.address) >> PAGE_SHIFT, pos - page_addr, chunk, done)
            pos += chunk
            done += chunk

    # -- HostMapping protocol ---------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        self._access("host read", offset, length, False,
                     lambda v, page, in_page, chunk, done: out.extend(v._read_page(page, in_page, chunk)))
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        data = as_bytes(data, "host write")
        self._access("host write", offset, len(data), True,
                     lambda v, page, in_page, chunk, done: v._write_page(page, in_page, data[done : done + chunk]))

    def fill(self, offset: int, length: int, byte: int) -> None:
        byte = c_value(byte, "unsigned char", "byte", "host fill")
        self._access("host fill", offset, length, True,
                     lambda v, page, in_page, chunk, done: v._write_page(page, in_page, bytes([byte]) * chunk))

    def madvise(self, offset: int, length: int, advice: int) -> None:
        advice = c_signed(advice, "int", "advice", "madvise")
        offset, length = check_reservation("madvise", offset, length, self.mapped_length)
        do_madvise(self.space, self.address + offset, length, advice)

    def mprotect(self, offset: int, length: int, prot: int) -> None:
        prot = c_signed(prot, "int", "prot", "mprotect")
        offset, length = check_reservation("mprotect", offset, length, self.mapped_length)
        do_mprotect(self.space, self.address + offset, length, prot)

    def mlock(self, offset: int, length: int, flags: int = 0) -> None:
        flags = c_value(flags, "int", "flags", "mlock2")
        offset, length = check_reservation("mlock2", offset, length, self.mapped_length)
        do_mlock(self.space, self.address + offset, length, flags)

    def munlock(self, offset: int, length: int) -> None:
        offset, length = check_reservation("munlock", offset, length, self.mapped_length)
        do_munlock(self.space, self.address + offset, length)

    # -- NUMA policy (spec 2.4, U6.19: set_policy/get_policy on the gmem VMA) --------------------------
    def mbind(self, offset: int, length: int, mode: int, nodemask: int, flags: int = 0) -> None:
        """``mbind(2)`` over the VMAs of the range (mm/mempolicy.c ``do_mbind``): a guest_memfd with policy vm_ops
        (U6.19) stores it in the inode (every mapping sees it and allocation follows it); any other VMA keeps
        it as its own policy, which allocation ignores. EFAULT when part of the range is not mapped."""
        op = "mbind"
        mode = c_value(mode, "unsigned long", "mode", op)
        nodemask = c_value(nodemask, "unsigned long", "nodemask", op)
        flags = c_value(flags, "unsigned int", "flags", op)
        offset, length = check_reservation(op, offset, length, self.mapped_length)
        mode &= 0xFFFFFFFF  # kernel_mbind(): "int lmode = mode" keeps the low 32 bits
        mode = mode - (1 << 32) if mode >> 31 else mode
        numa.sanitize_mpol_flags(mode)
        if flags & ~0x7:
            raise KvmError(errno.EINVAL, op, f"flags {flags:#x} are not MPOL_MF_*")
        if offset & (PAGE_SIZE - 1):
            raise KvmError(errno.EINVAL, op, f"start {offset:#x} is not page aligned")
        start = self.address + offset
        end = start + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        if end == start:
            return  # before mpol_new(): an empty range never looks at the node mask
        policy = numa.validate(mode, nodemask, self.space.numa_nodes)
        pieces = list(self.space.span(start, end))
        if any(vma is None for vma, _, _ in pieces):
            raise KvmError(errno.EFAULT, op, f"[{offset:#x}, +{length:#x}) is not all mapped")
        online = (1 << self.space.numa_nodes) - 1
        misplaced = None
        if flags & MPOL_MF_STRICT and mode & ~MPOL_MODE_FLAGS != MPOL_DEFAULT and nodemask & online != online:
            # queue_pages_range(): a present page on a node outside the caller's mask fails MPOL_MF_STRICT. A mask
            # of every online node cannot be violated, so the walk over present pages (bounded by what was
            # touched) happens only when the mask leaves a node out.
            misplaced = self._misplaced_page(pieces, nodemask, flags)
        if misplaced is not None and not flags & MPOL_MF_MOVE_ANY:
            # MPOL_MF_STRICT alone (strictly_unmovable()): the walk stops at the first misplaced folio with -EIO
            # and do_mbind() never reaches mbind_range(): no policy is set (found by the host fuzz run, seed 907)
            raise self._strict_eio(misplaced)
        for vma, first, last in pieces:
            assert vma is not None  # no gaps: checked above
            inode = vma._policy_inode()
            if inode is not None:
                inode.pagecache.shared_policy.set(vma.pgoff + first, vma.pgoff + last, policy)
            else:
                vma.vma_policy.set(first, last, policy)
        if misplaced is not None:
            # with MPOL_MF_MOVE* a folio that cannot migrate (guest_memfd: kvm_gmem_migrate_folio) counts as
            # failed: the policy is set and do_mbind() returns -EIO at the end
            raise self._strict_eio(misplaced)

    @staticmethod
    def _strict_eio(page: int) -> KvmError:
        return KvmError(errno.EIO, "mbind", f"MPOL_MF_STRICT: a page at offset {page << PAGE_SHIFT:#x} is on a "
                        "node outside the mask")

    def _misplaced_page(self, pieces: list[tuple[ModelHostMapping | None, int, int]], nodemask: int,
                        flags: int) -> int | None:
        """The first present page of ``pieces`` on a node outside ``nodemask`` that cannot move (queue_folio_required
        with MPOL_MF_INVERT; anonymous pages migrate under MPOL_MF_MOVE*), or None."""
        for vma, first, last in pieces:
            assert vma is not None
            for page in self._present_pages(vma, first, last):
                if vma.zero_page(page):
                    continue  # queue_folios_pte_range() skips it (host fuzz run, seed 917)
                node = vma.file.inode.pagecache.node_of(vma.pgoff + page) if vma.file else numa.LOCAL_NODE
                if not nodemask >> node & 1 and not (flags & MPOL_MF_MOVE_ANY and vma.file is None):
                    return page
        return None

    @staticmethod
    def _present_pages(vma: ModelHostMapping, first: int, last: int) -> Iterator[int]:
        for s, e, level in vma.ptes.runs(first, last):
            if level:
                yield from range(s, e)

    def get_mempolicy(self, offset: int) -> tuple[int, int]:
        """``get_mempolicy(MPOL_F_ADDR)`` at ``offset``: (mode, nodemask) of the VMA there (EFAULT: none)."""
        offset, _ = check_reservation("get_mempolicy", offset, 1, self.mapped_length)
        addr = self.address + offset
        vma = self.space.find(addr)
        if vma is None:
            raise KvmError(errno.EFAULT, "get_mempolicy", f"nothing mapped at offset {offset:#x}")
        page = (addr - vma.address) >> PAGE_SHIFT
        inode = vma._policy_inode()
        if inode is not None:
            return inode.pagecache.shared_policy.get(vma.pgoff + page)
        return vma.vma_policy.get(page)

    def _policy_inode(self) -> MappedInode | None:
        """The inode this mapping's policy lives in (guest_memfd with U6.19's policy vm_ops), else None
        (the VMA's own policy)."""
        if self.file is not None and self.file.inode.shared_policy_vm_ops:
            return self.file.inode
        return None

    def page_nodes(self, offset: int, npages: int) -> list[int]:
        """``move_pages(2)`` status query: each page's node, -ENOENT where no page is present, -EFAULT where
        nothing is mapped or the zero page is."""
        npages = c_value(npages, "unsigned long", "count", "move_pages")
        offset, _ = check_reservation("move_pages", offset, npages * PAGE_SIZE, self.mapped_length)
        out = []
        for i in range(npages):
            addr = (self.address + offset + i * PAGE_SIZE) & ~(PAGE_SIZE - 1)
            vma = self.space.find(addr)
            page = (addr - vma.address) >> PAGE_SHIFT if vma is not None else 0
            if vma is None:
                out.append(-errno.EFAULT)
            elif not vma.held(page):
                out.append(-errno.ENOENT)
            elif vma.zero_page(page):
                out.append(-errno.EFAULT)  # do_pages_stat_array: is_zero_folio
            elif vma.file is None:
                out.append(numa.LOCAL_NODE)
            else:
                out.append(vma.file.inode.pagecache.node_of(vma.pgoff + page))
        return out

    def pin(self, offset: int, length: int) -> ModelPin:
        """``pin_user_pages(FOLL_LONGTERM | FOLL_WRITE)``: fault each page in, then raise refcounts."""
        if self.file is None:
            raise UnsupportedByBackend("pins on anonymous memory are not modelled")
        offset, length = check_reservation("pin_user_pages", offset, length, self.mapped_length)
        first, last = offset >> PAGE_SHIFT, (offset + length + PAGE_SIZE - 1) >> PAGE_SHIFT
        if offset < 0 or last > self.npages or self.unmapped:
            # GUP finds no VMA of this file there (a guard or nothing): -EFAULT for the caller.
            raise KvmError(errno.EFAULT, "pin_user_pages(FOLL_LONGTERM)", f"[{offset:#x}, +{length:#x}) leaves "
                           "the mapping")
        for page in range(first, last):
            try:
                self._fault(page, write=True, gup=True)
            except (HostSigbus, HostSigsegv) as exc:
                # GUP turns VM_FAULT_SIGBUS into -EFAULT for the caller.
                raise KvmError(errno.EFAULT, "pin_user_pages(FOLL_LONGTERM)", str(exc)) from None
        return self.file.inode.pin(self.pgoff + first, self.pgoff + max(last, first + 1) if length else
                                   self.pgoff + first)

    def fork_into(self, space: AddressSpace) -> ModelHostMapping:
        """The child's copy of this VMA after ``fork()`` (``dup_mmap``): same address, file, offset, protection
        and guard markers, in the file's ``i_mmap`` so conversions and punches unmap it too; no PTEs (a shared
        file mapping's page tables are not copied, the child faults on first touch); anonymous shared pages are
        the same pages, private ones a copy; not mlocked (VM_LOCKED is not inherited). MADV_DONTFORK parts are
        not copied: the child can touch nothing there."""
        child = ModelHostMapping.__new__(ModelHostMapping)
        child.__dict__.update(self.__dict__)
        child.space = space
        child.ptes = RangeMap(max(self.npages, 1), None)
        child.vma_policy = numa.SharedPolicy(max(self.npages, 1))
        child.locked = RangeMap(max(self.npages, 1), 0)
        child.prots = _copy_runs(self.prots)
        for s, e, dont in self.dontcopy.runs():
            if dont:
                child.prots.store(s, e, 0)
        child.vm_flags = _copy_runs(self.vm_flags)
        child.markers = _copy_runs(self.markers)
        child.anon = self.anon if self.shared else {k: bytearray(v) for k, v in self.anon.items()}
        if not self.shared:
            # copy_present_pte() write-protects the parent's present anonymous pages it shares with the child
            # (not where MADV_DONTFORK or MADV_WIPEONFORK keeps the child from copying)
            for page in self.anon:
                if self.held(page) and not self.dontcopy.load(page) and not self.wipeonfork.load(page):
                    self.cow.store(page, page + 1, True)
        child.cow = RangeMap(max(self.npages, 1), False)  # no PTEs in the child
        child.wipeonfork = _copy_runs(self.wipeonfork)
        for s, e, wipe in self.wipeonfork.runs():
            if wipe:
                # dup_mmap() skips copy_page_range() for VM_WIPEONFORK: the child's part is empty, its pages
                # zero on first touch and without guard markers (host fuzz run, seed 929)
                child.markers.store(s, e, False)
                for page in [p for p in child.anon if s <= p < e]:
                    del child.anon[page]
        child.sharers = self.sharers if self.shared else set()
        child.sharers.add(child)
        space.add(child)
        if self.file is not None:
            self.file.get_ref()
            self.file.inode.mappings.add(child)
        return child

    def vmsplice(self, offset: int, length: int) -> ModelPin | AnonymousPipe:
        """``vmsplice(2)`` of ``[offset, +length)`` into a pipe: GUP (read, FOLL_GET) faults each page in and
        the pipe holds a page reference until it is closed (``unpin``). Not a DMA pin: a transient reference,
        which in-place conversion to private refuses with EAGAIN (realkernel-private.md finding 3). Anonymous
        pages are only faulted in: nothing in the model looks at their references."""
        offset, length = check_reservation("vmsplice", offset, length, self.mapped_length)
        first, last = offset >> PAGE_SHIFT, (offset + length + PAGE_SIZE - 1) >> PAGE_SHIFT
        # page by page through the address space, as GUP goes (a guard made readable is spliced too): the pages
        # before a failing one are faulted in (the kernel client splices until vmsplice fails; the pipe's
        # references go with it)
        for page in range(first, last):
            addr = self.address + (page << PAGE_SHIFT)
            vma = self.space.find(addr)
            if vma is None:
                raise KvmError(errno.EFAULT, "vmsplice", f"nothing mapped at page {page} of the mapping")
            vpage = (addr - vma.address) >> PAGE_SHIFT
            prot = vma.prots.load(vpage)
            zero_page = vma.zero_page(vpage)
            # with protection keys PROT_EXEC alone is execute-only: pte_access_permitted() checks the pkey, so
            # GUP-fast refuses the PTE and the slow path decides (found by the host fuzz run, seed 919)
            exec_only = prot & (PROT_READ | PROT_WRITE) == 0 and self.space.pkeys
            if prot and vma.held(vpage) and not zero_page and not exec_only:
                # GUP-fast takes a present, readable PTE (x86: any but PROT_NONE) without the VMA checks; not the
                # zero page's: do_anonymous_page() maps it pte_mkspecial(), which GUP-fast leaves to the slow path
                # (found by the host fuzz run after 6,807 sequences, seed 913)
                continue
            if not prot & PROT_READ:
                # the slow path's check_vma_flags(): a GUP read without FOLL_FORCE needs VM_READ, although the
                # CPU could read a PROT_WRITE page (x86 has no write-only PTEs)
                raise KvmError(errno.EFAULT, "vmsplice", f"page {page} of the mapping is not PROT_READ (GUP)")
            try:
                vma._fault(vpage, write=False, gup=True)
            except (HostSigbus, HostSigsegv) as exc:
                raise KvmError(errno.EFAULT, "vmsplice", str(exc)) from None
        first, last = max(first, 0), min(last, self.npages)
        if self.file is None or self.unmapped or first >= last:
            return AnonymousPipe()  # references on anonymous pages only: nothing in the model looks at them
        return self.file.inode.pin(self.pgoff + first, self.pgoff + last, kind="ref")

    def pte_present(self, offset: int) -> bool:
        """Whether a host PTE maps the page at ``offset`` (``/proc/self/pagemap`` bit 63): any page of the
        reservation (the guards too: a guard made accessible and touched has PTEs), looked up in the address
        space as pagemap reads the page tables; outside the reservation OutsideReservation, as the client."""
        offset, _ = check_reservation("pagemap", offset, 1, self.mapped_length)
        start = (self.address + offset) & ~(PAGE_SIZE - 1)
        for vma, first, _ in self.space.span(start, start + PAGE_SIZE):
            return vma is not None and not vma.unmapped and vma.held(first) is not None
        return False

    def munmap(self) -> None:
        """``munmap``; like the kernel client, PROT_NONE private memory takes the mapping's place in its
        reservation."""
        if self.unmapped or self.guard:
            return
        self.unmapped = True
        self.zap(0, self.npages)
        self.space.remove(self)
        self.sharers.discard(self)
        ModelHostMapping(self.space, self.mapped_length, 0, shared=False, address=self.address, guard=True)
        if self.file is not None:
            self.file.inode.mappings.remove(self)
            self.file.put_ref()

    # -- helpers for the inode ----------------------------------------------------------------------
    def zap(self, first: int, last: int, above: Level | None = None) -> int:
        """Remove host PTEs for mapping pages ``[first, last)`` (``unmap_mapping_pages``).

        Entries hold the level of the mapping (None: no PTE); a huge mapping overlapping the range goes
        whole. ``above`` keeps mappings of that level or smaller.
        """
        last = min(last, self.npages)
        if first >= last:
            return 0
        self.space.invalidations += 1
        self.invalidated.store(first, last, self.space.invalidations)
        self.cow.store(first, last, False)
        n = 0
        for s, e, v in list(self.ptes.runs(first, last)):
            if v is None or (above is not None and (Level.PG_4K if isinstance(v, Strided) else v) <= above):
                continue
            if isinstance(v, Strided):
                n += v.points(s, e)
                self.ptes.store(s, e, None)
                continue
            level = Level(v)
            if level > Level.PG_4K:
                lo = level.align_down(self.pgoff + s) - self.pgoff
                s, e = max(lo, 0), min(level.align_up(self.pgoff + e) - self.pgoff, self.npages)
            n += sum(x.points(a, b) if isinstance(x, Strided) else b - a for a, b, x in self.ptes.runs(s, e) if x)
            self.ptes.store(s, e, None)
        return n

    def file_range_to_pages(self, start: int, end: int) -> tuple[int, int]:
        """Mapping pages that show file indices ``[start, end)`` (possibly empty)."""
        return max(start - self.pgoff, 0), max(min(end - self.pgoff, self.npages), 0)

    def mapped_file_runs(self) -> list[tuple[int, int]]:
        """File index runs that have a host PTE in this mapping (a :class:`Strided` run from its first mapped
        page to its last)."""
        out = []
        for s, e, v in self.ptes.runs():
            if isinstance(v, Strided):
                if not v.points(s, e):
                    continue
                s = s + (v.phase - s) % v.step
                e = s + (v.points(s, e) - 1) * v.step + 1
            if v:
                out.append((self.pgoff + s, self.pgoff + e))
        return out


V = TypeVar("V")


def _copy_runs(rangemap: RangeMap[V]) -> RangeMap[V]:
    """A copy of a per-page run map, for a fork copy of the VMA."""
    out: RangeMap[V] = RangeMap(rangemap.limit, rangemap.load(0))
    for s, e, v in rangemap.runs():
        out.store(s, e, v)
    return out


class AnonymousPipe:
    """A pipe holding references on anonymous pages (vmsplice): nothing in the model depends on them."""

    def unpin(self) -> None:
        return None


class ModelPin:
    """Extra references on the folios of file indices ``[start, end)``: a long-term pin (``kind="pin"``) or
    plain page references (``kind="ref"``, e.g. a pipe after vmsplice); truncation detaches the folios."""

    def __init__(self, inode: PinOwner, start: int, end: int, kind: str = "pin") -> None:
        self.inode = inode
        self.kind = kind
        self.attached: list[tuple[int, int]] = [(start, end)]
        self.released = False

    def detach(self, start: int, end: int) -> list[tuple[int, int]]:
        """Drop ``[start, end)`` from the attached ranges (the folios left the page cache)."""
        dropped, kept = [], []
        for s, e in self.attached:
            lo, hi = max(s, start), min(e, end)
            if lo < hi:
                dropped.append((lo, hi))
                if s < lo:
                    kept.append((s, lo))
                if hi < e:
                    kept.append((hi, e))
            else:
                kept.append((s, e))
        self.attached = kept
        return dropped

    def unpin(self) -> None:
        if self.released:
            return
        self.released = True
        self.inode.unpin(self)
