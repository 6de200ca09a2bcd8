"""guest_memfd: the inode (the memory) and the file (one VM's view), after ``virt/kvm/guest_memfd.c``.

* :class:`GmemInode` holds the size, flags, page cache, shareability, pins and host mappings
  (spec 2.1). Its methods are named for the kernel functions they model: ``kvm_gmem_allocate``,
  ``kvm_gmem_punch_hole``, ``fault_user_mapping``, ``kvm_gmem_get_pfn``, ``kvm_gmem_populate``,
  ``kvm_gmem_convert`` (RFC v2), ``kvm_gmem_invalidate_begin``.
* :class:`GmemFile` is the fd-facing object implementing :class:`gmemlab.backend.GuestMemfd`: generic
  file operations (2.3), fallocate (2.5), mmap (2.4), conversion ioctls (2.14), bindings (2.6) and
  release (2.12).

guest_memfd sits below KVM proper: it sees the VM that owns a file through :class:`GmemKvm` (references,
stage-2 zapping, the vendor's invalidation hook) and memslots through :class:`GmemSlot` (their geometry
and the binding fields it fills in), as ``guest_memfd.c`` sees ``struct kvm`` and ``struct
kvm_memory_slot``.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
from typing import Protocol, cast

from ..backend import MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE, FileStat, GuestMemfd
from ..errors import ConversionError, FaultRefused, FolioBusy, GmemError, KvmError, UnsupportedByBackend
from ..level import Level
from ..rangemap import RangeMap
from ..uapi import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    KVM_SET_MEMORY_ATTRIBUTES2,
    LOFF_MAX,
    PAGE_SHIFT,
    PAGE_SIZE,
    U64_MAX,
    VmType,
    page_aligned,
)
from .args import sint, u32, u64
from .config import HostConfig
from .fdtable import FdTable
from .gmem_attributes import Attributes2, FaultInjection, kvm_gmem_ioctl
from .gmem_huge import HugeGmem
from .host import AddressSpace, FileMappings, ModelHostMapping, ModelPin
from .locking import RwSem
from .metrics import Metrics, per_level
from .mlock import mm_populate
from .pagecache import INDEX_LIMIT, UPTODATE, PageCache
from .profiles import Behaviour
from .shareability import RangeShareability, Shareability, WholeFileShareability
from .stage2 import Stage2
from .usercopy import UserArg, copy_from_user, copy_to_user
from .vendor import NoVendor
from .vfs import MmapArgs, do_mmap, vfs_fallocate

ST_BLOCK_SIZE = 512  # st_blocks counts 512-byte units whatever the block size (stat(2))
GUEST_MEMFD_FLAG_MMAP = 1 << 0  # MMAP (6.18) / SUPPORT_SHARED (RFC v2): the flag that allows mmap
# open(2) flags as the file keeps them (x86-64 octal values)
O_RDWR, O_APPEND, O_NONBLOCK, FASYNC, O_DIRECT, O_LARGEFILE, O_NOATIME = 0o2, 0o2000, 0o4000, 0o20000, 0o40000, \
    0o100000, 0o1000000

_inode_numbers = itertools.count(45057)  # any distinct numbers do (realkernel #74)
# kvm_gmem_invalidate_begin's filter -> its counter in the metrics sink
_INVALIDATE_COUNTERS = {None: "gmem_invalidate_all", True: "gmem_invalidate_private", False: "gmem_invalidate_shared"}


def _is_bound(slot: GmemSlot | None) -> bool:
    return slot is not None


class GmemKvm(Protocol):
    """What guest_memfd needs of the VM that owns a file (``struct kvm`` as ``guest_memfd.c`` uses it)."""

    @property
    def vm_type(self) -> VmType: ...

    @property
    def stage2(self) -> Stage2: ...

    @property
    def vendor(self) -> NoVendor: ...

    def get_ref(self) -> None: ...

    def put_ref(self) -> None: ...


class GmemSlot(Protocol):
    """What guest_memfd reads and fills in of a memslot bound to it (``slot->gmem``)."""

    id: int
    base_gfn: int
    npages: int
    userspace_addr: int
    gmem_file: GmemFile | None
    gmem_pgoff: int
    gmem_only: bool
    gmem_tracks_shareability: bool


class GmemInode:
    """The memory of a guest_memfd: everything that outlives a file (spec 2.1)."""

    def __init__(
        self,
        behaviour: Behaviour,
        size: int,
        flags: int,
        shared: bool | None = None,
        metrics: Metrics | None = None,
        config: HostConfig | None = None,
        fault_injection: FaultInjection | None = None,
    ) -> None:
        self.behaviour = behaviour
        self.config = config if config is not None else HostConfig()
        self.hooks = behaviour.hooks
        self.invalidate_lock = RwSem("invalidate_lock")  # mapping->invalidate_lock (spec 2.13)
        self.fault_injection = fault_injection if fault_injection is not None else FaultInjection()
        self.ino = next(_inode_numbers)
        self.size = size
        self.npages = size >> PAGE_SHIFT
        self.flags = flags
        self.pagecache = PageCache(self.npages)
        if shared is None:
            shared = behaviour.initially_shared(flags)
        self.shareability: Shareability = (
            RangeShareability(self.npages, shared)
            if behaviour.per_index_shareability(flags, self.config)
            else WholeFileShareability(shared)
        )
        self.pins: RangeMap[int] = RangeMap(self.npages, 0)  # long-term (DMA) pins per index
        # Built at first use (properties below): most files never see a plain reference or an LRU batch.
        self._refs: RangeMap[int] | None = None
        self._lru_batched: RangeMap[bool] | None = None
        self.pin_objs: list[ModelPin] = []
        self.files: list[GmemFile] = []
        self.mappings = FileMappings()  # i_mmap: the host mappings of this inode
        # HugeTLB backing (RFC v2): set by KVM_CREATE_GUEST_MEMFD with GUEST_MEMFD_FLAG_HUGETLB.
        self.huge: HugeGmem | None = None
        self.metrics = metrics if metrics is not None else Metrics()

    @property
    def refs(self) -> RangeMap[int]:
        """Extra references per index other than DMA pins (get_page, a pipe after vmsplice)."""
        if self._refs is None:
            self._refs = RangeMap(self.npages, 0)
        return self._refs

    @property
    def lru_batched(self) -> RangeMap[bool]:
        """Indices whose folio a per-CPU LRU batch holds a reference on (``folio_add_lru``)."""
        if self._lru_batched is None:
            self._lru_batched = RangeMap(self.npages, False)
        return self._lru_batched

    @property
    def shared_policy_vm_ops(self) -> bool:
        """guest_memfd's vm_ops have set_policy/get_policy (U6.19): NUMA policy lives in the inode."""
        return self.behaviour.gmem_shared_policy

    # -- host faults (spec 2.4) ---------------------------------------------------------------------
    def fault_user_mapping(self, index: int, vma: ModelHostMapping | None = None) -> tuple[int, int, Level] | None:
        """``kvm_gmem_fault_user_mapping`` (6.18) / ``kvm_gmem_fault_shared`` (RFC v2).

        Refuses past EOF and on indices the host may not fault; otherwise allocates the folio, zeroes it
        if it is not uptodate (the host never sees stale memory) and lets the caller install the PTE.
        HugeTLB files return the ``(start, end, level)`` file range the host maps (workloads 3.2).
        """
        if index >= self.npages:
            raise FaultRefused(f"file index {index:#x} is at or beyond EOF ({self.npages:#x} pages)")
        if not self.shareability.convertible:
            return self._fault_user_mapping(index, vma)
        # Per-index state (RFC v2, in-place conversion): checked under invalidate_lock shared (linux-7.md 1.3).
        with self.invalidate_lock.read("kvm_gmem_fault_user_mapping"):
            return self._fault_user_mapping(index, vma)

    def _fault_user_mapping(self, index: int, vma: ModelHostMapping | None) -> tuple[int, int, Level] | None:
        if not self.shareability.is_shared(index):
            raise FaultRefused(f"file index {index:#x} is private (not host-faultable)")
        if self.huge is not None:
            return self.huge.host_fault(index, vma)
        if self.pagecache.make_uptodate(index):
            self.metrics.add("bytes_zeroed", PAGE_SIZE)
        self.metrics.add(per_level("host_faults", Level.PG_4K))
        self.metrics.add(per_level("host_map_bytes", Level.PG_4K), PAGE_SIZE)
        return None

    def host_fault_run(self, start: int, end: int, step: int, points: int) -> bool:
        """``points`` more host faults at every ``step``-th index of ``[start, end)``, each deciding what one
        :meth:`fault_user_mapping` would (a 4 KiB PTE): True when that holds -- every index shared, 4 KiB
        folios -- and they are done in one step (zeroing, counters); False, with nothing done, otherwise
        (a scattered pattern over not-yet-zeroed folios is faulted page by page)."""
        if end > self.npages or not self.shareability.all_shared(start, end):
            return False
        if self.huge is not None and self.huge.uniform_folio_level(start, end) != Level.PG_4K:
            return False
        pc = self.pagecache
        if step == 1:
            zeroed = pc.make_uptodate_range(start, end)
        elif pc.state.all_equal(start, end, UPTODATE):
            zeroed = 0
        else:
            return False
        self.metrics.add("bytes_zeroed", zeroed * PAGE_SIZE)
        self.metrics.add(per_level("host_faults", Level.PG_4K), points)
        self.metrics.add(per_level("host_map_bytes", Level.PG_4K), points * PAGE_SIZE)
        return True

    def unmap_host(self, start: int, end: int) -> int:
        """``unmap_mapping_pages``: drop host PTEs of file indices ``[start, end)`` in every mapping."""
        return self.mappings.unmap(start, end)

    def arch_invalidate(self, start: int, end: int) -> None:
        """``kvm_arch_gmem_invalidate`` for ``[start, end)`` in every VM bound to this inode."""
        for file in self.files:
            file.vm.vendor.gmem_invalidate(self, start, end, file.gfn_ranges)

    def folio_level(self, index: int) -> Level:
        """Stage-2 level of the folio holding ``index`` (4 KiB files: always 4 KiB)."""
        if self.huge is None:
            return Level.PG_4K
        return self.huge.hf.folio_level(index) or Level.PG_4K

    # -- invalidation (spec 2.11) ---------------------------------------------------------------------
    def kvm_gmem_invalidate_begin(self, start: int, end: int, private: bool | None = None) -> int:
        """Zap stage-2 leaves of every bound gfn in ``[start, end)`` in every VM using this inode.

        ``private`` filters by leaf type; KVM applies the filter only to VMs with mirrored (TDX)
        page tables, every other VM loses both kinds (``kvm_gfn_range_filter_to_root_types``).
        """
        zapped = 0
        self.metrics.add(_INVALIDATE_COUNTERS[private])
        for file in self.files:
            if file.bindings.first_match(start, end, _is_bound) is None:
                continue  # no memslot of this file's VM covers the range (O(1) for an unbound file)
            use_filter = private if file.vm.vm_type == VmType.TDX else None
            for s, e, slot in file.bindings.runs(start, end):
                if slot is None:
                    continue
                gfn = slot.base_gfn + (s - slot.gmem_pgoff)
                file.vm.vendor.before_zap(gfn, gfn + (e - s))
                zapped += file.vm.stage2.zap(gfn, gfn + (e - s), use_filter)
        return zapped

    def invalidate_filter(self) -> bool | None:
        """6.18 "Invalidate SHARED GPAs if gmem supports INIT_SHARED": which leaves punch/release zap."""
        if isinstance(self.shareability, WholeFileShareability):
            return not self.shareability.shared  # INIT_SHARED -> SHARED leaves, else PRIVATE
        return None  # RFC v2 punch hole zaps both

    # -- fallocate (spec 2.5) -------------------------------------------------------------------------
    def kvm_gmem_allocate(self, start: int, end: int) -> int:
        """Ensure a folio exists for every index; folios are neither zeroed nor made uptodate."""
        if self.huge is not None:
            return self.huge.allocate(start, end)
        return self.pagecache.allocate(start, end)

    def kvm_gmem_punch_hole(self, start: int, end: int) -> int:
        """Zap guest mappings, remove folios (unmapping them from host page tables), keep shareability."""
        end = min(end, self.npages)
        if start >= end:
            return 0
        with self.invalidate_lock.write("kvm_gmem_punch_hole"):
            self.kvm_gmem_invalidate_begin(start, end, self.invalidate_filter())
            self.unmap_host(start, end)
            if self.huge is not None:
                return self.huge.punch(start, end)
            for pin in self.pin_objs:
                for s, e in pin.detach(start, end):
                    self._refmap(pin.kind).update(s, e, lambda n: n - 1)
            if self._lru_batched is not None:
                self._lru_batched.store(start, end, False)  # the batch's reference leaves with the folio
            freed = self.pagecache.truncate(start, end)
            self.arch_hook(self.hooks.reclaim, freed)  # .free_folio
            return freed

    # -- pins -------------------------------------------------------------------------------------------
    def pin(self, start: int, end: int, kind: str = "pin") -> ModelPin:
        """Raise the refcount of the folios of ``[start, end)``: a long-term DMA pin (``pin``,
        ``folio_maybe_dma_pinned``) or a plain reference (``ref``, e.g. a pipe after vmsplice)."""
        pin = ModelPin(self, start, end, kind)
        self._refmap(kind).update(start, end, lambda n: n + 1)
        self.pin_objs.append(pin)
        return pin

    def _refmap(self, kind: str) -> RangeMap[int]:
        return self.pins if kind == "pin" else self.refs

    def unpin(self, pin: ModelPin) -> None:
        for s, e in pin.attached:
            self._refmap(pin.kind).update(s, e, lambda n: n - 1)
        pin.attached = []
        self.pin_objs.remove(pin)
        if self.huge is not None and pin.kind == "pin":
            self.huge.pin_released(pin)

    def lru_batch_add(self, start: int, end: int) -> None:
        """Model operation: a per-CPU LRU folio batch takes a reference on each folio of ``[start, end)``
        (``folio_add_lru``); :meth:`lru_add_drain` drops it. A transient reference a conversion can wait out."""
        for s, e, state in list(self.pagecache.state.runs(start, end)):
            if state:
                self.lru_batched.store(s, e, True)

    def lru_add_drain(self) -> None:
        """``lru_add_drain_all``: every batched folio goes to its LRU list and the batch's reference is dropped."""
        if self._lru_batched is not None:
            self._lru_batched.store(0, self.npages, False)
        self.metrics.add("lru_drains")

    def first_unsafe_folio(self, start: int, end: int) -> tuple[int, str] | None:
        """In-place conversion to private (linux-7.md 1.2 step 9): the first folio of ``[start, end)`` that is
        DMA-pinned, still mapped, or has references beyond the page cache's after one LRU drain.

        The host mappings were unmapped just before, under the exclusive invalidate_lock that every host
        fault needs shared, so "still mapped" cannot happen in the model (it is checked all the same)."""
        if self._lru_batched is not None and self._lru_batched.any_match(start, end, bool):
            self.lru_add_drain()  # one drain is tried
        found: list[tuple[int, str]] = []
        first, why = self._first_extra_reference(start, end)
        if first is not None:
            found.append((first, why))
        for vma in self.mappings:
            for s, e in vma.mapped_file_runs():
                if s < end and start < e:
                    found.append((max(s, start), "still mapped by the host"))
        return min(found) if found else None

    def first_elevated_refcount(self, start: int, end: int) -> int | None:
        """Index of the first folio in ``[start, end)`` with references beyond the page cache's.

        With huge folios the refcount is per folio: a pin anywhere in a folio that overlaps the range
        counts, and the folio's first index is reported (workloads 3.5).
        """
        if self.huge is not None:
            return self.huge.first_pinned_folio(start, end)
        if self._refs is None:  # no plain reference was ever taken: the pins decide alone
            return self.pins.first_match(start, end, bool)
        return self._first_extra_reference(start, end)[0]

    def _first_extra_reference(self, start: int, end: int) -> tuple[int | None, str]:
        """The first index of ``[start, end)`` holding a DMA pin or another extra reference, and which.
        One check over both counts (O(1) each while nothing in the file is pinned or referenced)."""
        pinned = self.pins.first_match(start, end, bool)
        ref = self._refs.first_match(start, end, bool) if self._refs is not None else None
        if ref is not None and (pinned is None or ref < pinned):
            return ref, "holding extra references (refcount != nr_pages + 1)"
        return pinned, "DMA-pinned (folio_maybe_dma_pinned)"

    # -- kvm_gmem_get_pfn (spec 2.8) -------------------------------------------------------------------
    def kvm_gmem_get_pfn(self, index: int) -> int:
        """Get (allocating if needed) and prepare the folio at ``index``; returns max_order (0).

        Preparation = folio uptodate: zero the folio and run the arch hook once (6.18). Host-written
        data in an already-uptodate folio is kept, which is how a VMM hands data to the guest.
        HugeTLB files (RFC v2) return the policy's mapping order and prepare per ``gmem_prepare``.
        """
        if self.huge is not None:
            return self.huge.get_pfn(index)
        if not self.shareability.convertible:
            self._get_pfn(index)
            return 0
        # Per-index state: the whole lookup under invalidate_lock shared, which serialises it against
        # conversion (linux-7.md 1.3; RFC v2 spec 2.13).
        with self.invalidate_lock.read("kvm_gmem_get_pfn"):
            self._get_pfn(index)
        return 0

    def _get_pfn(self, index: int) -> None:
        new = self.pagecache.make_uptodate(index)  # zeroed on first use
        hooks = self.hooks
        if hooks.prepare_private_only:
            if not self.shareability.is_shared(index):
                self.arch_hook(hooks.prepare)  # kvm_arch_gmem_make_private
        elif new or hooks.prepare_every_call:
            self.arch_hook(hooks.prepare)

    def arch_hook(self, name: str | None, n: int = 1) -> None:
        """Count ``n`` calls of the arch hook ``name`` (a counter of that name in the metrics sink)."""
        if name is not None and n:
            self.metrics.add(name, n)

    def ensure_folio(self, index: int) -> None:
        """``kvm_gmem_get_folio`` without preparing: HugeTLB files allocate the whole huge folio (the
        policy may split it); 4 KiB files leave it to the caller. KvmError(ENOMEM) if the subpool is short."""
        if self.huge is not None:
            b = self.huge.hf.block_of(index)
            self.huge.ensure_blocks(b, b + 1)

    def prepare_run(self, start: int, end: int) -> None:
        """What ``kvm_gmem_get_pfn`` does for each of a batch of 4 KiB faults over ``[start, end)``."""
        if self.huge is not None:
            self.huge.prepare_run(start, end)
            return
        new = self.pagecache.make_uptodate_range(start, end)
        hooks = self.hooks
        if hooks.prepare_private_only:
            self.arch_hook(hooks.prepare, sum(e - s for s, e, shared in self.shareability.runs(start, end)
                                              if not shared))
        else:
            self.arch_hook(hooks.prepare, end - start if hooks.prepare_every_call else new)

    def is_private(self, index: int) -> bool:
        """RFC v2 ``kvm_gmem_is_private``: SHAREABILITY_GUEST at the index."""
        return not self.shareability.is_shared(index)

    # -- conversion (RFC v2, spec 2.14) ----------------------------------------------------------------
    def kvm_gmem_convert(self, start: int, end: int, to_shared: bool, op: str) -> None:
        """Convert ``[start, end)`` (indices). Raises ConversionError(EAGAIN) on elevated refcounts.

        Work list = sub-ranges not yet in the target state. For each: invalidate bound VMs; to private,
        unmap host PTEs everywhere and require safe refcounts (these side effects stay on failure,
        spec 5.8); then store the target. Stage-2 leaves that disagree with the new state are zapped.
        Contents are preserved.
        """
        if not self.shareability.convertible:
            return  # stitched RFC tree: no tree for non-SUPPORT_SHARED files -> silent success (5.6)
        work = self.shareability.work_list(start, end, to_shared)
        if not work:
            self.metrics.add("conversions_ok")
            return
        for s, e in work:
            # to shared: private leaves go; to private: shared leaves go.
            self.kvm_gmem_invalidate_begin(s, e, private=to_shared)
        if not to_shared:
            self._convert_to_private_may_proceed(work, op)
        for s, e in work:
            self.shareability.store(s, e, to_shared)
        if self.huge is not None:
            try:
                self.huge.after_convert(work, to_shared)
            except FolioBusy as exc:
                self.metrics.add("conversion_eagain")
                raise ConversionError(errno.EAGAIN, op, str(exc), error_offset=exc.index << PAGE_SHIFT) from None
        if to_shared:
            for s, e in work:
                self.arch_invalidate(s, e)
        self.metrics.add("conversions_ok")

    def _convert_to_private_may_proceed(self, work: list[tuple[int, int]], op: str) -> None:
        """``kvm_gmem_convert_should_proceed`` to private: host PTEs go everywhere, then every folio needs a
        safe refcount (ConversionError(EAGAIN) naming the first pinned one; the unmapping stays)."""
        for s, e in work:
            self.unmap_host(s, e)
        for s, e in work:
            bad = self.first_elevated_refcount(s, e)
            if bad is not None:
                self.metrics.add("conversion_eagain")
                raise ConversionError(
                    errno.EAGAIN, op, f"folio at index {bad:#x} has an elevated refcount (pinned)",
                    error_offset=bad << PAGE_SHIFT,
                )

    # -- accounting -------------------------------------------------------------------------------------
    def release_memory(self) -> int:
        """Inode eviction: truncate every folio (called when the last file is gone)."""
        if self.huge is not None:
            freed = self.huge.release()
            for pin in list(self.pin_objs):
                pin.detach(0, self.npages)
            return freed
        for pin in list(self.pin_objs):
            pin.detach(0, self.npages)
        freed = self.pagecache.truncate(0, INDEX_LIMIT)  # truncate_inode_pages_final: past EOF too
        self.arch_hook(self.hooks.reclaim, freed)
        return freed


def open_file(obj: object) -> object:
    """The open file behind an fd table entry (a dup()ed fd's entry is its :class:`GmemFd`)."""
    return obj.file if isinstance(obj, GmemFd) else obj


class GmemFd:
    """Another fd of an open guest_memfd file (``dup(2)``): its own number and FD_CLOEXEC, the same
    ``struct file`` (flags, bindings, references). Calls go to the file, checked against this fd."""

    def __init__(self, file: GmemFile) -> None:
        self.file = file
        self.fd = file.fdtable.install(self)
        self.fd_open = True
        self.cloexec = False
        file.get_ref()

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.file, name)
        if not callable(attr):
            return attr

        def call(*args: object, **kwargs: object) -> object:
            prev, self.file._via = self.file._via, self
            try:
                return attr(*args, **kwargs)
            finally:
                self.file._via = prev

        return call

    def close(self) -> None:
        if not self.fd_open:
            raise KvmError(errno.EBADF, "close", f"fd {self.fd} is closed")
        self.fd_open = False
        self.file.fdtable.remove(self.fd)
        self.file.put_ref()


class GmemFile:
    """A guest_memfd file: implements :class:`gmemlab.backend.GuestMemfd` for the model."""

    def __init__(
        self, vm: GmemKvm, inode: GmemInode, fdtable: FdTable, address_space: AddressSpace
    ) -> None:
        self.vm = vm
        self.fdtable = fdtable
        self.address_space = address_space
        self.inode = inode
        self.size = inode.size
        self.flags = inode.flags
        # index -> memslot, like gmem->bindings (an xarray); may extend past EOF (spec 5.2 quirk).
        self.bindings: RangeMap[GmemSlot | None] = RangeMap(1 << 64, None)
        self._refs = 1  # the fd
        self.fd_open = True
        self.cloexec = False  # created without O_CLOEXEC (get_unused_fd_flags(0), realkernel #75)
        self.f_flags = O_RDWR | O_LARGEFILE  # struct file's flags, shared by dup()ed fds
        self._via: GmemFd | None = None  # the dup()ed fd a call came through
        self.released = False
        self.fd = fdtable.install(self)
        inode.files.append(self)
        vm.get_ref()  # the file pins the VM (kvm_get_kvm in __kvm_gmem_create)

    def gfn_ranges(self, start: int, end: int) -> list[tuple[int, int]]:
        """The gfn ranges of this file's VM bound to file indices ``[start, end)``."""
        out = []
        for s, e, slot in self.bindings.runs(start, end):
            if slot is not None:
                gfn = slot.base_gfn + (s - slot.gmem_pgoff)
                out.append((gfn, gfn + (e - s)))
        return out

    # -- references and release (spec 2.12) --------------------------------------------------------------
    def get_ref(self) -> None:
        self._refs += 1

    def put_ref(self) -> None:
        self._refs -= 1
        if self._refs == 0:
            self.kvm_gmem_release()

    def close(self) -> None:
        self._check_fd("close")
        self.fd_open = False
        self.fdtable.remove(self.fd)
        self.put_ref()

    def kvm_gmem_release(self) -> None:
        """Last reference gone: unhook bound memslots, zap their leaves, drop the VM reference."""
        self.released = True
        inode = self.inode
        inode.kvm_gmem_invalidate_begin(0, inode.npages, inode.invalidate_filter())
        for s, e, slot in list(self.bindings.runs()):
            if slot is not None:
                gfn = slot.base_gfn + (s - slot.gmem_pgoff)
                self.vm.stage2.zap(gfn, gfn + (e - s))  # all leaves of the slot's gmem range
                slot.gmem_file = None
        self.bindings.store(0, self.bindings.limit, None)
        inode.files.remove(self)
        if not inode.files:
            freed = inode.release_memory()
            inode.metrics.add("pages_freed_at_release", freed)
        self.vm.put_ref()

    def _check_fd(self, op: str) -> None:
        handle = self._via or self
        if not handle.fd_open:
            raise KvmError(errno.EBADF, op, f"fd {handle.fd} is closed")

    # -- generic file and fd operations (realkernel #99-#113; fs/open.c, fs/fcntl.c, mm/fadvise.c) ---------
    def fsync(self, datasync: bool = False) -> None:
        op = "fdatasync" if datasync else "fsync"
        self._check_fd(op)
        raise KvmError(errno.EINVAL, op, "guest_memfd has no fsync method (vfs_fsync_range)")

    def fchmod(self, mode: int) -> None:
        u32(mode, "mode", "fchmod", "unsigned int")
        self._check_fd("fchmod")
        raise KvmError(errno.EINVAL, "fchmod", "kvm_gmem_setattr() refuses every attribute change")

    def fchown(self, uid: int, gid: int) -> None:
        u32(uid, "uid", "fchown", "int")
        u32(gid, "gid", "fchown", "int")
        self._check_fd("fchown")
        raise KvmError(errno.EINVAL, "fchown", "kvm_gmem_setattr() refuses every attribute change")

    def fadvise(self, offset: int, length: int, advice: int) -> None:
        """``generic_fadvise``: the pseudo filesystem's bdi is noop, so the six advices are accepted and
        ignored; a negative length or any other advice is EINVAL."""
        op = "fadvise64"
        offset = sint(offset, "offset", op)
        length = sint(length, "len", op)
        advice = sint(advice, "advice", op, "int")
        self._check_fd(op)
        if offset < 0 and self.inode.behaviour.fadvise_rejects_negative_offset:
            raise KvmError(errno.EINVAL, op, f"offset {offset} is negative")
        if length < 0 or advice not in range(6):
            raise KvmError(errno.EINVAL, op, f"len {length} / advice {advice}: POSIX_FADV_* 0..5 and len >= 0")

    def flock(self, operation: int) -> None:
        """``flock(2)``: LOCK_MAND requests are ignored (0); otherwise LOCK_SH, LOCK_EX or LOCK_UN (| LOCK_NB),
        checked before the fd; a guest_memfd is never opened twice, so its lock never conflicts."""
        operation = u32(operation, "operation", "flock", "int")
        if operation & 32:  # LOCK_MAND: removed, ignored with a warning
            return
        if operation & ~4 not in (1, 2, 8):
            raise KvmError(errno.EINVAL, "flock", f"operation {operation:#x} is not LOCK_SH/EX/UN (| LOCK_NB)")
        self._check_fd("flock")

    def fcntl(self, cmd: int, arg: int = 0) -> int:
        """``do_fcntl`` for the integer commands: FD_CLOEXEC per fd, f_flags per open file (F_SETFL keeps
        O_APPEND/O_NONBLOCK/O_NOATIME; FASYNC only through ->fasync, which guest_memfd lacks; O_DIRECT is EINVAL
        without FMODE_CAN_ODIRECT), no seals (not a
        memfd), no pipe size (EBADF), F_NOTIFY needs a directory (ENOTDIR), no lease (F_UNLCK), no owner."""
        op = "fcntl"
        cmd = sint(cmd, "cmd", op, "int") & 0xFFFFFFFF
        arg = sint(arg, "arg", op, "int")
        self._check_fd(op)
        handle = self._via or self
        if cmd in (0, 1030) or cmd in (5, 6, 7, 36, 37, 38):
            raise UnsupportedByBackend("fcntl F_DUPFD* and record locks (struct flock) through fcntl(): use dup()")
        if cmd == 1:  # F_GETFD
            return 1 if handle.cloexec else 0
        if cmd == 2:  # F_SETFD
            handle.cloexec = bool(arg & 1)
            return 0
        if cmd == 3:  # F_GETFL
            return self.f_flags
        if cmd == 4:  # F_SETFL
            flags = arg & 0xFFFFFFFF
            if flags & O_DIRECT:
                raise KvmError(errno.EINVAL, op, "O_DIRECT: guest_memfd cannot do direct I/O")
            # setfl(): SETFL_MASK has no FASYNC; only f_op->fasync sets it, and guest_memfd has none (found by
            # the lockstep fuzzer inside 6.18.2: F_GETFL after F_SETFL(FASYNC) shows no FASYNC)
            mask = O_APPEND | O_NONBLOCK | O_DIRECT | O_NOATIME
            self.f_flags = (flags & mask) | (self.f_flags & ~mask)
            return 0
        if cmd in (9, 11, 1025):  # F_GETOWN, F_GETSIG, F_GETLEASE
            return 2 if cmd == 1025 else 0  # no lease: F_UNLCK
        if cmd == 1026:  # F_NOTIFY (fcntl_dirnotify): an empty mask removes watches; others need a directory
            if arg & 0x7FFFFFFF == 0:
                return 0
            raise KvmError(errno.ENOTDIR, op, "F_NOTIFY needs a directory")
        if cmd in (1031, 1032):  # F_SETPIPE_SZ, F_GETPIPE_SZ
            raise KvmError(errno.EBADF, op, "not a pipe")
        if cmd in (1033, 1034):  # F_ADD_SEALS, F_GET_SEALS
            raise KvmError(errno.EINVAL, op, "guest_memfd is not a memfd: no seals")
        raise KvmError(errno.EINVAL, op, f"command {cmd} is not modelled / not known")

    def dup(self) -> GuestMemfd:
        self._check_fd("dup")
        return cast("GuestMemfd", GmemFd(self))  # a GmemFd answers every GuestMemfd call through the file

    # -- generic file operations (spec 2.3; realkernel #83-#113) ------------------------------------------
    def read(self, length: int) -> bytes:
        self._check_fd("read")
        raise KvmError(errno.EINVAL, "read", "guest_memfd has no read method")

    def write(self, data: bytes) -> int:
        self._check_fd("write")
        raise KvmError(errno.EINVAL, "write", "guest_memfd has no write method")

    def pread(self, length: int, offset: int) -> bytes:
        self._check_fd("pread64")
        raise KvmError(errno.ESPIPE, "pread64", "guest_memfd is not positionable (no FMODE_PREAD)")

    def pwrite(self, data: bytes, offset: int) -> int:
        self._check_fd("pwrite64")
        raise KvmError(errno.ESPIPE, "pwrite64", "guest_memfd is not positionable (no FMODE_PWRITE)")

    def lseek(self, offset: int, whence: int) -> int:
        self._check_fd("lseek")
        raise KvmError(errno.ESPIPE, "lseek", "guest_memfd has no llseek method")

    def ftruncate(self, length: int) -> None:
        self._check_fd("ftruncate")
        if length < 0:
            raise KvmError(errno.EINVAL, "ftruncate", f"negative length {length}")
        raise KvmError(errno.EINVAL, "ftruncate", "kvm_gmem_setattr() refuses every change; size is fixed")

    def fstat(self) -> FileStat:
        self._check_fd("fstat")
        huge = self.inode.huge
        if huge is not None:  # RFC v2: blksize = huge page size, i_blocks kept for HugeTLB (spec 2.3)
            return FileStat(st_size=self.inode.size, st_blksize=huge.hpage_size,
                            st_blocks=huge.hf.allocated_bytes() // ST_BLOCK_SIZE, st_ino=self.inode.ino)
        return FileStat(st_size=self.inode.size, st_blksize=PAGE_SIZE, st_blocks=0, st_ino=self.inode.ino)

    # -- fallocate (spec 2.5) ------------------------------------------------------------------------------
    def fallocate(self, mode: int, offset: int, length: int) -> None:
        self._check_fd("fallocate")
        self.vfs_fallocate(mode, offset, length)

    def vfs_fallocate(self, mode: int, offset: int, length: int, op: str = "fallocate") -> None:
        """``vfs_fallocate`` on the file itself: also reached without the fd, e.g. by MADV_REMOVE through a
        mapping that still holds the file. The generic checks first (:func:`gmemlab.model.vfs.vfs_fallocate`),
        then ``kvm_gmem_fallocate``."""
        mode, offset, length = vfs_fallocate(op, mode, offset, length)
        self.kvm_gmem_fallocate(op, mode, offset, length)

    def kvm_gmem_fallocate(self, op: str, mode: int, offset: int, length: int) -> None:
        """KEEP_SIZE required, PUNCH_HOLE the only operation, page-aligned ranges; allocation within i_size."""
        if not mode & FALLOC_FL_KEEP_SIZE:
            raise KvmError(errno.EOPNOTSUPP, op, "guest_memfd requires FALLOC_FL_KEEP_SIZE")
        if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE):
            raise KvmError(errno.EOPNOTSUPP, op, f"mode {mode:#x}: only KEEP_SIZE and PUNCH_HOLE are supported")
        if not page_aligned(offset) or not page_aligned(length):
            raise KvmError(errno.EINVAL, op, f"offset {offset:#x} and len {length:#x} must be page aligned")
        start, end = offset >> PAGE_SHIFT, (offset + length) >> PAGE_SHIFT
        if mode & FALLOC_FL_PUNCH_HOLE:
            self.inode.kvm_gmem_punch_hole(start, end)
        else:
            if offset + length > self.inode.size:
                raise KvmError(
                    errno.EINVAL, op, f"range end {offset + length:#x} is past EOF ({self.inode.size:#x})"
                )
            self.inode.kvm_gmem_allocate(start, end)

    # -- mmap (spec 2.4) -----------------------------------------------------------------------------------
    def mmap(
        self, length: int, offset: int = 0, prot: int = PROT_READ | PROT_WRITE, flags: int = MAP_SHARED
    ) -> ModelHostMapping:
        """The generic mmap checks (:func:`gmemlab.model.vfs.do_mmap`), then ``kvm_gmem_mmap``."""
        op = "mmap"
        self._check_fd(op)
        return self.kvm_gmem_mmap(op, do_mmap(op, length, offset, prot, flags))

    def kvm_gmem_mmap(self, op: str, a: MmapArgs) -> ModelHostMapping:
        """guest_memfd's ->mmap: the MMAP flag, MAP_SHARED only, HugeTLB alignment."""
        if not self.inode.behaviour.supports_mmap(self.inode.flags):
            name = self.inode.behaviour.api.flag_name(GUEST_MEMFD_FLAG_MMAP)
            raise KvmError(errno.ENODEV, op, f"guest_memfd was created without {name}")
        if a.sharing == MAP_PRIVATE:
            raise KvmError(errno.EINVAL, op, "guest_memfd needs MAP_SHARED (copy-on-write is refused)")
        huge = self.inode.huge
        if huge is not None and (a.length % huge.hpage_size or a.offset % huge.hpage_size):
            raise KvmError(errno.EINVAL, op, f"HugeTLB guest_memfd: length {a.length:#x} and offset {a.offset:#x} "
                           f"must be multiples of the huge page size {huge.hpage_size:#x} "
                           "(kvm_gmem_get_unmapped_area)")
        mapping = ModelHostMapping(self.address_space, a.length, a.prot, self, a.offset >> PAGE_SHIFT)
        if a.populate:
            # do_mmap() -> mm_populate(): read faults over the new VMA (shared), errors ignored: the faults
            # stop at the first refused page (past EOF, a private index)
            with contextlib.suppress(KvmError):
                mm_populate(self.address_space, mapping.address, mapping.address + mapping.mapped_length)
        return mapping

    # -- conversion ioctls (RFC v2, spec 2.14) -------------------------------------------------------------
    def convert(self, offset: int, size: int, to_shared: bool, error_offset: int = 0) -> None:
        op = "KVM_GMEM_CONVERT_SHARED" if to_shared else "KVM_GMEM_CONVERT_PRIVATE"
        self._check_fd(op)
        if not self.inode.behaviour.api.has_conversion_ioctls:
            raise KvmError(errno.ENOTTY, op, "guest_memfd has no ioctls in this kernel")
        offset = u64(offset, "offset", op)
        size = u64(size, "size", op)
        error_offset = u64(error_offset, "error_offset", op)
        if error_offset:
            raise KvmError(errno.EINVAL, op, f"error_offset must be 0 on input, got {error_offset:#x}")
        if size == 0:
            return
        i_size = self.inode.size
        if offset + size > U64_MAX or offset > i_size or offset + size > i_size:
            raise KvmError(errno.EINVAL, op, f"range [{offset:#x}, +{size:#x}) exceeds i_size {i_size:#x}")
        if not page_aligned(offset) or not page_aligned(size):
            raise KvmError(errno.EINVAL, op, f"offset {offset:#x} and size {size:#x} must be page aligned")
        self.inode.kvm_gmem_convert(offset >> PAGE_SHIFT, (offset + size) >> PAGE_SHIFT, to_shared, op)

    # -- in-place conversion (linux-7.4, linux-7.md 1) ------------------------------------------------------
    def set_memory_attributes2(
        self,
        offset: int,
        size: int,
        attributes: int,
        flags: int = 0,
        error_offset: int = 0,
        reserved: tuple[int, ...] = (),
    ) -> int:
        """``KVM_SET_MEMORY_ATTRIBUTES2`` with a valid struct; returns its ``error_offset`` after the call (the
        caller's value unless the kernel wrote it). Errors raise :class:`ConversionError` carrying it too."""
        op = "KVM_SET_MEMORY_ATTRIBUTES2"
        self._check_fd(op)
        rsv = tuple(u64(v, f"reserved[{i}]", op) for i, v in enumerate(reserved[:11]))
        arg = Attributes2(u64(offset, "offset", op), u64(size, "size", op), u64(attributes, "attributes", op),
                          u64(flags, "flags", op), u64(error_offset, "error_offset", op), (rsv + (0,) * 11)[:11])
        try:
            out = kvm_gmem_ioctl(self, KVM_SET_MEMORY_ATTRIBUTES2, lambda n: arg.to_bytes(), lambda b: True)
            return out.error_offset
        except ConversionError:
            raise
        except KvmError as exc:  # refused before the struct was read: the caller's copy is untouched
            raise ConversionError(exc.errno or 0, exc.op, exc.reason, error_offset=arg.error_offset) from None

    def ioctl(self, number: int, arg: UserArg = 0) -> int:
        """``ioctl(fd, number, arg)`` with the argument's bytes or a raw address in the modelled process."""
        self._check_fd("ioctl")
        number = u64(number, "number", "ioctl") & 0xFFFFFFFF
        space = self.address_space
        kvm_gmem_ioctl(self, number, lambda n: copy_from_user(space, arg, n), lambda b: copy_to_user(space, arg, b))
        return 0

    # -- bindings (spec 2.6) ---------------------------------------------------------------------------------
    def kvm_gmem_bind(self, slot: GmemSlot, offset: int) -> None:
        """Bind ``slot`` to ``[offset, offset + size)``; checks in the kernel's order."""
        op = "KVM_SET_USER_MEMORY_REGION2"
        behaviour = self.inode.behaviour
        size = slot.npages << PAGE_SHIFT
        loff = offset - (1 << 64) if offset >> 63 else offset
        # Up to 7.1 `offset + size > i_size` is computed in signed loff_t: a sum that wraps negative passes
        # (spec 5.2); 7.2 treats both as unsigned.
        total = loff + size
        if total > LOFF_MAX and behaviour.bind_offset_signed:
            total -= 1 << 64
        if loff < 0 or not page_aligned(loff) or total > self.inode.size:
            raise KvmError(
                errno.EINVAL,
                op,
                f"guest_memfd_offset {offset:#x} + size {size:#x} must be aligned and within i_size "
                f"{self.inode.size:#x}",
            )
        start = loff >> PAGE_SHIFT
        end = start + slot.npages
        if any(s is not None for _, _, s in self.bindings.runs(start, end)):
            raise KvmError(behaviour.bind_overlap_errno, op, f"file range [{loff:#x}, +{size:#x}) is already bound")
        if behaviour.checks_userspace_addr_at_bind(self.inode.flags) and slot.userspace_addr:
            self._check_bind_userspace_addr(slot.userspace_addr, start, op)
        slot.gmem_file = self
        slot.gmem_pgoff = start
        slot.gmem_only = behaviour.gmem_only(self.inode.flags, self.inode.config)
        slot.gmem_tracks_shareability = self.inode.shareability.convertible
        self.bindings.store(start, end, slot)

    def _check_bind_userspace_addr(self, uaddr: int, pgoff: int, op: str) -> None:
        vma = self.address_space.find(uaddr)
        if (
            vma is None
            or vma.file is None
            or vma.file.inode is not self.inode
            or vma.pgoff + ((uaddr - vma.address) >> PAGE_SHIFT) != pgoff
        ):
            raise KvmError(
                errno.EINVAL, op, "userspace_addr must map this guest_memfd at guest_memfd_offset (FT9 check)"
            )

    def kvm_gmem_unbind(self, slot: GmemSlot) -> None:
        if slot.gmem_file is self:
            self.bindings.store(slot.gmem_pgoff, slot.gmem_pgoff + slot.npages, None)
        slot.gmem_file = None

    # -- the guest side -----------------------------------------------------------------------------------
    def get_pfn(self, slot: GmemSlot, gfn: int) -> int:
        """``kvm_gmem_get_pfn`` through a memslot: EFAULT if released, EIO on a bad binding."""
        if self.released:
            raise GmemError(errno.EFAULT, "guest_memfd file was released")
        index = gfn - slot.base_gfn + slot.gmem_pgoff
        if self.bindings.load(index) is not slot:
            raise GmemError(errno.EIO, f"index {index:#x} is not bound to slot {slot.id}")
        return self.inode.kvm_gmem_get_pfn(index)

    def is_uptodate(self, index: int) -> bool:
        return self.inode.pagecache.folio_state(index) == UPTODATE
