"""Host userspace: the address space, mappings (VMAs) of guest_memfd or anonymous memory, and pins.

A mapping of a guest_memfd installs a host PTE on first touch through the file's fault handler
(``kvm_gmem_fault_user_mapping`` in 6.18, ``kvm_gmem_fault_shared`` in RFC v2; spec 2.4), which may
refuse with SIGBUS. A mapping holds a reference on the file (spec 2.12). Long-term pins
(``pin_user_pages(FOLL_LONGTERM)``, e.g. VFIO) raise the refcount of the pinned folios, which makes
RFC v2 conversion to private fail with EAGAIN (spec 2.14 step 4).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Protocol

from ..backend import MADV_DONTNEED, MADV_REMOVE, PROT_READ, PROT_WRITE
from ..errors import FaultRefused, HostSigbus, HostSigsegv, KvmError, UnsupportedByBackend
from ..level import Level
from ..rangemap import RangeMap
from ..uapi import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, PAGE_SHIFT, PAGE_SIZE
from . import numa
from .args import as_bytes
from .pagecache import PageCache

MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_COLLAPSE = 14, 15, 25
USER_ADDR_LIMIT = (1 << 47) - PAGE_SIZE  # TASK_SIZE_MAX with 4-level paging
_MMAP_BASE = 0x7E00_0000_0000


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
    """The modelled process's mappings, ordered by address; hands out addresses like mmap does."""

    def __init__(self, numa_nodes: int = 1) -> None:
        self.numa_nodes = numa_nodes
        self.vmas: list[ModelHostMapping] = []
        self._next = _MMAP_BASE

    def place(self, length: int) -> int:
        align = Level.PG_1G.bytes if length >= Level.PG_1G.bytes else Level.PG_2M.bytes  # THP-friendly, like mmap
        addr = (self._next + align - 1) & ~(align - 1)
        self._next = addr + length + PAGE_SIZE  # a guard gap keeps mappings apart
        if self._next > USER_ADDR_LIMIT:
            raise KvmError(errno.ENOMEM, "mmap", f"no room for {length:#x} bytes in the address space")
        return addr

    def find(self, addr: int) -> ModelHostMapping | None:
        for vma in self.vmas:
            if vma.address <= addr < vma.address + vma.length:
                return vma
        return None


class ModelHostMapping:
    """One ``mmap`` of a guest_memfd (``file`` set) or of anonymous shared memory (``file`` None)."""

    def __init__(
        self, space: AddressSpace, length: int, prot: int, file: MappedFile | None = None, pgoff: int = 0
    ) -> None:
        self.space = space
        self.length = length
        self.npages = (length + PAGE_SIZE - 1) >> PAGE_SHIFT
        self.prot = prot
        self.file = file
        self.pgoff = pgoff
        self.address = space.place(length)
        self.ptes: RangeMap[Level | None] = RangeMap(self.npages, None)  # host PTEs installed, by level
        self.anon: dict[int, bytearray] = {}
        self.vma_policy = numa.SharedPolicy(self.npages)  # the VMA's own policy (anon; gmem before U6.19)
        self.unmapped = False
        space.vmas.append(self)
        if file is not None:
            file.get_ref()
            file.inode.mappings.add(self)

    # -- faults ----------------------------------------------------------------------------------
    def _fault(self, page: int, write: bool, gup: bool = False) -> None:
        """Make ``page`` accessible or raise: SIGSEGV (no VMA / prot), SIGBUS (the file refused)."""
        offset = page << PAGE_SHIFT
        if self.unmapped or page >= self.npages:
            raise HostSigsegv(offset, write, "address not mapped")
        # x86 page tables cannot express write-only: PROT_WRITE implies readable.
        if not self.prot & (PROT_READ | PROT_WRITE) or (write and not self.prot & PROT_WRITE):
            raise HostSigsegv(offset, write, "access not permitted by the mapping's protection")
        if self.ptes.load(page):
            return
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

    def _pages(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """Split ``[offset, offset+length)`` into (page, offset in page, chunk length) pieces."""
        for name, value in (("offset", offset), ("length", length)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise KvmError(errno.EINVAL, "host access", f"{name} must be an integer, got {value!r}")
        if offset < 0 or length < 0:
            raise HostSigsegv(offset, False, "negative offset or length")
        pos, end = offset, offset + length
        while pos < end:
            page, in_page = pos >> PAGE_SHIFT, pos & (PAGE_SIZE - 1)
            chunk = min(PAGE_SIZE - in_page, end - pos)
            yield page, in_page, chunk
            pos += chunk

    def _read_page(self, page: int, in_page: int, length: int) -> bytes:
        if self.file is None:
            data = self.anon.get(page)
            return bytes(length) if data is None else bytes(data[in_page : in_page + length])
        return self.file.inode.pagecache.read(self.pgoff + page, in_page, length)

    def _write_page(self, page: int, in_page: int, data: bytes) -> None:
        if self.file is None:
            buf = self.anon.setdefault(page, bytearray(PAGE_SIZE))
            buf[in_page : in_page + len(data)] = data
        else:
            self.file.inode.pagecache.write(self.pgoff + page, in_page, data)

    # -- HostMapping protocol ---------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        for page, in_page, chunk in self._pages(offset, length):
            self._fault(page, write=False)
            out += self._read_page(page, in_page, chunk)
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        data = as_bytes(data, "host write")
        pos = 0
        for page, in_page, chunk in self._pages(offset, len(data)):
            self._fault(page, write=True)
            self._write_page(page, in_page, data[pos : pos + chunk])
            pos += chunk

    def fill(self, offset: int, length: int, byte: int) -> None:
        if isinstance(byte, bool) or not isinstance(byte, int) or not 0 <= byte <= 255:
            raise KvmError(errno.EINVAL, "host fill", f"fill byte must be 0..255, got {byte!r}")
        for page, in_page, chunk in self._pages(offset, length):
            self._fault(page, write=True)
            self._write_page(page, in_page, bytes([byte]) * chunk)

    def madvise(self, offset: int, length: int, advice: int) -> None:
        if offset & (PAGE_SIZE - 1):
            raise KvmError(errno.EINVAL, "madvise", f"start {offset:#x} is not page aligned")
        first = offset >> PAGE_SHIFT
        last = min(self.npages, (offset + length + PAGE_SIZE - 1) >> PAGE_SHIFT)
        if advice in (MADV_HUGEPAGE, MADV_NOHUGEPAGE):
            return  # accepted on the VMA; guest_memfd folios stay order 0
        if advice == MADV_COLLAPSE:
            raise KvmError(errno.EINVAL, "madvise", "MADV_COLLAPSE: guest_memfd folios are never collapsed")
        if advice == MADV_DONTNEED:
            self.zap(first, last)
        elif advice == MADV_REMOVE:
            # madvise_remove() needs VM_SHARED|VM_MAYWRITE: a read-only mapping of the (always O_RDWR)
            # guest_memfd may punch it too, as the kernel showed.
            if self.file is None:
                self.zap(first, last)
                for page in [p for p in self.anon if first <= p < last]:
                    del self.anon[page]
            else:
                self.file.vfs_fallocate(
                    FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
                    (self.pgoff + first) << PAGE_SHIFT,
                    (last - first) << PAGE_SHIFT,
                    "madvise",
                )
        else:
            raise UnsupportedByBackend(f"madvise advice {advice} is not modelled")

    # -- NUMA policy (spec 2.4, U6.19: set_policy/get_policy on the gmem VMA) --------------------------
    def _policy_pages(self, offset: int, length: int, op: str) -> tuple[int, int]:
        if offset & (PAGE_SIZE - 1) or offset < 0:
            raise KvmError(errno.EINVAL, op, f"start {offset:#x} is not page aligned")
        first, last = offset >> PAGE_SHIFT, (offset + length + PAGE_SIZE - 1) >> PAGE_SHIFT
        if self.unmapped or last > self.npages or length <= 0:
            raise KvmError(errno.EFAULT, op, f"range [{offset:#x}, +{length:#x}) is not (all) mapped")
        return first, last

    def mbind(self, offset: int, length: int, mode: int, nodemask: int, flags: int = 0) -> None:
        """``mbind(2)``: a guest_memfd with policy vm_ops (U6.19) stores it in the inode (every mapping sees it
        and allocation follows it); otherwise it is this VMA's policy and allocation ignores it."""
        first, last = self._policy_pages(offset, length, "mbind")
        if flags & ~0x7:
            raise KvmError(errno.EINVAL, "mbind", f"flags {flags:#x} are not MPOL_MF_*")
        policy = numa.validate(mode, nodemask, self.space.numa_nodes)
        inode = self._policy_inode()
        if inode is not None:
            inode.pagecache.shared_policy.set(self.pgoff + first, self.pgoff + last, policy)
        else:
            self.vma_policy.set(first, last, policy)

    def get_mempolicy(self, offset: int) -> tuple[int, int]:
        """``get_mempolicy(MPOL_F_ADDR)`` at ``offset``: (mode, nodemask)."""
        first, _ = self._policy_pages(offset, 1, "get_mempolicy")
        inode = self._policy_inode()
        if inode is not None:
            return inode.pagecache.shared_policy.get(self.pgoff + first)
        return self.vma_policy.get(first)

    def _policy_inode(self) -> MappedInode | None:
        """The inode this mapping's policy lives in (guest_memfd with U6.19's policy vm_ops), else None
        (the VMA's own policy)."""
        if self.file is not None and self.file.inode.shared_policy_vm_ops:
            return self.file.inode
        return None

    def page_nodes(self, offset: int, npages: int) -> list[int]:
        """``move_pages(2)`` status query: each page's node, or -ENOENT where nothing is mapped."""
        first, _ = self._policy_pages(offset, max(npages, 1) << PAGE_SHIFT, "move_pages")
        out = []
        for page in range(first, first + npages):
            if not self.ptes.load(page):
                out.append(-errno.ENOENT)
            elif self.file is None:
                out.append(numa.LOCAL_NODE)
            else:
                out.append(self.file.inode.pagecache.node_of(self.pgoff + page))
        return out

    def pin(self, offset: int, length: int) -> ModelPin:
        """``pin_user_pages(FOLL_LONGTERM | FOLL_WRITE)``: fault each page in, then raise refcounts."""
        if self.file is None:
            raise UnsupportedByBackend("pins on anonymous memory are not modelled")
        pages = list(self._pages(offset, length))
        for page, _, _ in pages:
            try:
                self._fault(page, write=True, gup=True)
            except (HostSigbus, HostSigsegv) as exc:
                # GUP turns VM_FAULT_SIGBUS into -EFAULT for the caller.
                raise KvmError(errno.EFAULT, "pin_user_pages(FOLL_LONGTERM)", str(exc)) from None
        first = self.pgoff + pages[0][0] if pages else self.pgoff
        last = self.pgoff + pages[-1][0] + 1 if pages else first
        return self.file.inode.pin(first, last)

    def fork_into(self, space: AddressSpace) -> ModelHostMapping:
        """The child's copy of this VMA after ``fork()`` (``dup_mmap``): same address, file and offset, in the
        file's ``i_mmap`` so conversions and punches unmap it too; no PTEs (a shared file mapping's page
        tables are not copied, the child faults on first touch); anonymous shared pages are the same pages."""
        child = ModelHostMapping.__new__(ModelHostMapping)
        child.__dict__.update(self.__dict__)
        child.space = space
        child.ptes = RangeMap(self.npages, None)
        child.vma_policy = numa.SharedPolicy(self.npages)
        child.anon = self.anon  # MAP_SHARED|MAP_ANONYMOUS: one shmem object for both processes
        space.vmas.append(child)
        if self.file is not None:
            self.file.get_ref()
            self.file.inode.mappings.add(child)
        return child

    def vmsplice(self, offset: int, length: int) -> ModelPin:
        """``vmsplice(2)`` of ``[offset, +length)`` into a pipe: GUP (read, FOLL_GET) faults each page in and
        the pipe holds a page reference until it is closed (``unpin``). Not a DMA pin: a transient reference,
        which in-place conversion to private refuses with EAGAIN (realkernel-private.md finding 3)."""
        if self.file is None:
            raise UnsupportedByBackend("vmsplice of anonymous memory is not modelled")
        pages = list(self._pages(offset, length))
        for page, _, _ in pages:
            try:
                self._fault(page, write=False, gup=True)
            except (HostSigbus, HostSigsegv) as exc:
                raise KvmError(errno.EFAULT, "vmsplice", str(exc)) from None
        first = self.pgoff + pages[0][0] if pages else self.pgoff
        last = self.pgoff + pages[-1][0] + 1 if pages else first
        return self.file.inode.pin(first, last, kind="ref")

    def pte_present(self, offset: int) -> bool:
        """Whether a host PTE maps the page at ``offset`` (``/proc/self/pagemap`` bit 63)."""
        page = offset >> PAGE_SHIFT
        return not self.unmapped and 0 <= page < self.npages and bool(self.ptes.load(page))

    def munmap(self) -> None:
        if self.unmapped:
            return
        self.unmapped = True
        self.zap(0, self.npages)
        self.space.vmas.remove(self)
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
        n = 0
        for s, e, v in list(self.ptes.runs(first, last)):
            if not v or (above is not None and v <= above):
                continue
            level = Level(v)
            if level > Level.PG_4K:
                lo = level.align_down(self.pgoff + s) - self.pgoff
                s, e = max(lo, 0), min(level.align_up(self.pgoff + e) - self.pgoff, self.npages)
            n += self.ptes.count(s, e, bool)
            self.ptes.store(s, e, None)
        return n

    def file_range_to_pages(self, start: int, end: int) -> tuple[int, int]:
        """Mapping pages that show file indices ``[start, end)`` (possibly empty)."""
        return max(start - self.pgoff, 0), max(min(end - self.pgoff, self.npages), 0)

    def mapped_file_runs(self) -> list[tuple[int, int]]:
        """File index runs that have a host PTE in this mapping."""
        return [(self.pgoff + s, self.pgoff + e) for s, e, v in self.ptes.runs() if v]


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
