"""KVM: the system (``/dev/kvm``), VMs, memslots, memory attributes and vCPU guest accesses.

Implements :class:`gmemlab.backend.Backend` for the model. The memslot checks follow
``kvm_set_memory_region`` then ``kvm_gmem_bind`` (spec 2.6); guest accesses follow the x86 fault
routing of spec 2.7 (memory-fault exits, gmem-only slots, the HVA path) and ``kvm_gmem_get_pfn`` (2.8).
"""

from __future__ import annotations

import errno
from bisect import insort
from collections import Counter
from dataclasses import dataclass

from ..errors import KvmError, UnsupportedByBackend, VcpuExit
from ..rangemap import RangeMap
from ..uapi import (
    KVM_EXIT_MEMORY_FAULT,
    KVM_EXIT_MMIO,
    KVM_EXIT_UNKNOWN,
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    KVM_MEMORY_EXIT_FLAG_PRIVATE,
    LINUX_6_18,
    PAGE_SHIFT,
    PAGE_SIZE,
    U64_MAX,
    ApiProfile,
    VmType,
    as_loff,
    page_aligned,
)
from .args import as_bytes, sint, u32, u64
from .config import HostConfig
from .gmem import GmemError, GmemFile, GmemInode
from .gmem_huge import HugeGmem
from .host import USER_ADDR_LIMIT, AddressSpace, FaultRefused, ModelHostMapping
from .hugetlb import HugetlbPool
from .metrics import Metrics
from .mmu import GFN_LIMIT, Stage2
from .profiles import Behaviour, behaviour
from .tdp import kvm_tdp_map, touch_range
from .vendor import vendor_for

KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1


class FdTable:
    """File descriptors of the modelled process: the lowest free number, like the kernel hands out."""

    def __init__(self) -> None:
        self._free: list[int] = []
        self._next = 3
        self.files: dict[int, object] = {}

    def install(self, obj: object) -> int:
        fd = self._free.pop(0) if self._free else self._alloc()
        self.files[fd] = obj
        return fd

    def _alloc(self) -> int:
        fd = self._next
        self._next += 1
        return fd

    def remove(self, fd: int) -> None:
        del self.files[fd]
        insort(self._free, fd)

    def get(self, fd: int) -> object | None:
        return self.files.get(fd)


class ModelMemfd:
    """A regular memfd: an fd that is not a guest_memfd (for binding checks)."""

    def __init__(self, system: ModelBackend, size: int) -> None:
        self.system = system
        self.size = size
        self.fd = system.fdtable.install(self)

    def close(self) -> None:
        self.system.fdtable.remove(self.fd)


@dataclass(eq=False)
class Memslot:
    """``struct kvm_memory_slot`` with its guest_memfd binding (spec 2.1, 2.6)."""

    id: int
    as_id: int
    base_gfn: int
    npages: int
    flags: int
    userspace_addr: int
    vm: ModelVm
    gmem_file: GmemFile | None = None  # no reference held: the slot does not pin the file
    gmem_pgoff: int = 0
    gmem_only: bool = False
    has_gmem: bool = False  # created with KVM_MEM_GUEST_MEMFD (even after the file is released)
    gmem_tracks_shareability: bool = False  # RFC v2: private-ness comes from the gmem (spec 2.7)

    @property
    def end_gfn(self) -> int:
        return self.base_gfn + self.npages


class ModelBackend:
    """The modelled ``/dev/kvm`` of one kernel lineage (``profile``) on one host (``config``)."""

    name = "model"

    def __init__(self, profile: str | ApiProfile = LINUX_6_18, config: HostConfig | None = None) -> None:
        profile_name = profile if isinstance(profile, str) else profile.name
        self.behaviour: Behaviour = behaviour(profile_name)
        self.profile: ApiProfile = self.behaviour.api
        self.config = config or HostConfig.upstream()
        from ..policy import policy  # late: the policy module imports model submodules

        self.policy = policy(self.config.gmem_policy)
        self.counters = Metrics()
        self.hugetlb_pool = HugetlbPool(self.config.hugetlb_pool_pages)
        self.fdtable = FdTable()
        self.address_space = AddressSpace(self.config.numa_nodes)
        self.vms: list[ModelVm] = []
        self.stats: Counter[str] = Counter()
        self.fd = self.fdtable.install(self)
        self.closed = False

    # -- Backend protocol ------------------------------------------------------------------------------
    def check_extension(self, cap: int) -> int:
        return self.behaviour.check_extension(u64(cap, "cap", "KVM_CHECK_EXTENSION"), None, self.config)

    def vm_types(self) -> list[VmType]:
        return list(self.config.vm_types)

    def create_vm(self, vm_type: int = 0) -> ModelVm:
        vm_type = u64(vm_type, "type", "KVM_CREATE_VM")
        if vm_type not in [int(t) for t in self.config.vm_types]:
            raise KvmError(errno.EINVAL, "KVM_CREATE_VM", f"VM type {vm_type} is not supported on this host")
        vm = ModelVm(self, VmType(vm_type))
        self.vms.append(vm)
        return vm

    def mmap_anonymous(self, length: int) -> ModelHostMapping:
        if length <= 0:
            raise KvmError(errno.EINVAL, "mmap", f"length {length} must be positive")
        return ModelHostMapping(self.address_space, length, 3)

    def memfd_create(self, size: int) -> ModelMemfd:
        return ModelMemfd(self, size)

    def nr_numa_nodes(self) -> int:
        return self.config.numa_nodes

    def guest_gpa_window(self) -> tuple[int, int]:
        return self.config.gpa_window or (0, 1 << self.config.max_gpa_bits)

    def reserved_slots(self) -> frozenset[int]:
        return frozenset()

    def close(self) -> None:
        self.closed = True

    # -- whole-system views -------------------------------------------------------------------------------
    def inodes(self) -> list[GmemInode]:
        seen: dict[int, GmemInode] = {}
        for obj in list(self.fdtable.files.values()):
            if isinstance(obj, GmemFile):
                seen[id(obj.inode)] = obj.inode
        for vma in self.address_space.vmas:
            if vma.file is not None:
                seen[id(vma.file.inode)] = vma.file.inode
        return list(seen.values())

    def metrics(self) -> dict[str, object]:
        """Counters for the simulator: splits/merges, stage-2 and host bytes per level, conversions,
        faults, zaps, TLB flushes, vmemmap, tracking structure sizes (see :mod:`gmemlab.model.metrics`)."""
        out = self.counters.as_dict()
        ranges = 0
        for inode in self.inodes():
            ranges += inode.shareability.nr_ranges()
            if inode.lpage is not None:
                ranges += inode.lpage.nr_ranges()
            if inode.huge is not None:
                hf = inode.huge.hf
                ranges += hf.shape.nr_runs() + (hf.sub2m.nr_runs() if hf.sub2m is not None else 0)
                ranges += inode.huge.prep.nr_ranges()
        per_page = 0
        mapped = {"4K": 0, "2M": 0, "1G": 0}
        for vm in self.vms:
            per_page += vm.attributes.count(0, GFN_LIMIT, bool)  # an xarray holds one entry per such gfn
            for level, n in vm.stage2.mapped_bytes().items():
                mapped[level] += n
        out["tracking"] = {"ranges": ranges, "per_page_entries": per_page}
        out["stage2_mapped_bytes"] = mapped
        out["hugetlb_pool"] = {
            size: {"total": total, "free": self.hugetlb_pool.free.get(size, 0)}
            for size, total in self.hugetlb_pool.total.items()
        }
        out["policy"] = self.policy.name
        return out

    def check_invariants(self) -> None:
        """Assert the model's invariants (see :func:`gmemlab.model.invariants.check`)."""
        from .invariants import check

        check(self)


class ModelVm:
    """A VM (``KVM_CREATE_VM``): memslots, per-VM attributes, stage-2 page tables."""

    def __init__(self, system: ModelBackend, vm_type: VmType) -> None:
        self.system = system
        self.vm_type = vm_type
        self.fd = system.fdtable.install(self)
        self.fd_open = True
        self._refs = 1
        self.destroyed = False
        self.memslots: dict[tuple[int, int], Memslot] = {}
        self.attributes: RangeMap[int] = RangeMap(GFN_LIMIT, 0)  # kvm->mem_attr_array, per gfn
        self.stage2 = Stage2(system.counters)
        self.vendor = vendor_for(self, system.config)
        self.stats: Counter[str] = Counter()

    # -- references ------------------------------------------------------------------------------------
    def get_ref(self) -> None:
        self._refs += 1

    def put_ref(self) -> None:
        self._refs -= 1
        if self._refs == 0:
            self.destroyed = True  # kvm_destroy_vm
            self.system.vms.remove(self)

    def close(self) -> None:
        self._check_fd("close")
        self.fd_open = False
        self.system.fdtable.remove(self.fd)
        self.put_ref()

    def _check_fd(self, op: str) -> None:
        if not self.fd_open:
            raise KvmError(errno.EBADF, op, f"VM fd {self.fd} is closed")

    # -- capabilities ------------------------------------------------------------------------------------
    def check_extension(self, cap: int) -> int:
        self._check_fd("KVM_CHECK_EXTENSION")
        cap = u64(cap, "cap", "KVM_CHECK_EXTENSION")
        return self.system.behaviour.check_extension(cap, self.vm_type, self.system.config)

    # -- KVM_CREATE_GUEST_MEMFD (spec 2.2) -----------------------------------------------------------------
    def create_guest_memfd(self, size: int, flags: int = 0, reserved: tuple[int, ...] = ()) -> GmemFile:
        op = "KVM_CREATE_GUEST_MEMFD"
        self._check_fd(op)
        size = u64(size, "size", op)
        flags = u64(flags, "flags", op)
        for i, value in enumerate(reserved):
            u64(value, f"reserved[{i}]", op)
        behaviour = self.system.behaviour
        valid = int(behaviour.valid_create_flags(self.vm_type, flags, self.system.config))
        if flags & ~valid:
            raise KvmError(
                errno.EINVAL,
                op,
                f"flags {flags:#x} ({behaviour.describe_flags(flags & ~valid)}) not in the valid mask "
                f"{valid:#x} for a {self.vm_type.label} VM",
            )
        loff = as_loff(size)
        if loff <= 0 or not page_aligned(loff):
            raise KvmError(errno.EINVAL, op, f"size {size:#x} must be > 0 (as loff_t) and page aligned")
        config = self.system.config
        shared = behaviour.initial_shareability(flags, config)
        hpage = behaviour.hugetlb_page_size(flags)
        subpool = None
        if hpage:
            # Inode setup (spec 1.5 step 4): page-size log, size multiple, then the subpool reservation.
            pool = self.system.hugetlb_pool
            if hpage not in (1 << 21, 1 << 30):  # x86 hstates; an empty pool is ENOMEM below
                raise KvmError(errno.EINVAL, op, f"flags {flags:#x}: HugeTLB page-size log {hpage.bit_length() - 1} "
                               "names no hstate on this host (2 MiB = 21, 1 GiB = 30)")
            if loff % hpage:
                raise KvmError(errno.EINVAL, op, f"size {size:#x} is not a multiple of the huge page size {hpage:#x}")
            subpool = pool.reserve(hpage, loff // hpage, op)
        inode = GmemInode(behaviour, size, flags, shared, self.system.counters)
        if subpool is not None:
            policy = self.system.policy
            inode.lpage = policy.new_record(inode.npages, shared)
            inode.huge = HugeGmem(inode, hpage, subpool, policy, config.gmem_prepare, self.system.counters)
        self.system.stats["gmem_created"] += 1
        return GmemFile(self.system, self, inode)

    # -- memslots (spec 2.6) ---------------------------------------------------------------------------------
    def set_user_memory_region(
        self, slot: int, flags: int, guest_phys_addr: int, memory_size: int, userspace_addr: int = 0
    ) -> None:
        op = "KVM_SET_USER_MEMORY_REGION"
        self._check_fd(op)
        if flags & ~(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY):
            raise KvmError(errno.EINVAL, op, f"flags {flags:#x}: v1 accepts only LOG_DIRTY_PAGES|READONLY")
        self._set_memory_region(op, slot, flags, guest_phys_addr, memory_size, userspace_addr, None, 0)

    def set_user_memory_region2(
        self,
        slot: int,
        flags: int,
        guest_phys_addr: int,
        memory_size: int,
        userspace_addr: int = 0,
        guest_memfd: object = None,
        guest_memfd_offset: int = 0,
    ) -> None:
        op = "KVM_SET_USER_MEMORY_REGION2"
        self._check_fd(op)
        self._set_memory_region(
            op, slot, flags, guest_phys_addr, memory_size, userspace_addr, guest_memfd, guest_memfd_offset
        )

    def _readonly_allowed(self) -> bool:
        # kvm_arch_has_readonly_mem(): not for VMs with protected state (SEV-ES, SNP, TDX).
        return self.system.config.readonly_mem and self.vm_type not in (VmType.SEV_ES, VmType.SNP, VmType.TDX)

    def _set_memory_region(
        self,
        op: str,
        slot_arg: int,
        flags: int,
        gpa: int,
        size: int,
        uaddr: int,
        gmem_arg: object,
        gmem_offset: int,
    ) -> None:
        slot_arg = u32(slot_arg, "slot", op)
        flags = u32(flags, "flags", op)
        gpa = u64(gpa, "guest_phys_addr", op)
        size = u64(size, "memory_size", op)
        uaddr = u64(uaddr, "userspace_addr", op)
        gmem_offset = u64(gmem_offset, "guest_memfd_offset", op)
        slot_id, as_id = slot_arg & 0xFFFF, slot_arg >> 16
        config = self.system.config
        if slot_id >= config.nr_memslots:
            raise KvmError(errno.EINVAL, op, f"slot id {slot_id} >= KVM_USER_MEM_SLOTS ({config.nr_memslots})")
        # check_memory_region_flags()
        valid = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_GUEST_MEMFD
        if flags & KVM_MEM_GUEST_MEMFD:
            valid &= ~KVM_MEM_LOG_DIRTY_PAGES  # no dirty logging of private memory
        elif self._readonly_allowed():
            valid |= KVM_MEM_READONLY  # writes to read-only slots are MMIO, never for gmem
        if flags & ~valid:
            raise KvmError(errno.EINVAL, op, f"flags {flags:#x} not in the valid set {valid:#x}")
        # General sanity checks of __kvm_set_memory_region()
        if not page_aligned(size):
            raise KvmError(errno.EINVAL, op, f"memory_size {size:#x} is not page aligned")
        if not page_aligned(gpa):
            raise KvmError(errno.EINVAL, op, f"guest_phys_addr {gpa:#x} is not page aligned")
        if not page_aligned(uaddr) or uaddr + size > USER_ADDR_LIMIT:
            raise KvmError(errno.EINVAL, op, f"userspace_addr {uaddr:#x} + memory_size {size:#x} is unaligned or "
                           "not a user range (access_ok)")
        if flags & KVM_MEM_GUEST_MEMFD and (not page_aligned(gmem_offset) or gmem_offset + size > U64_MAX):
            raise KvmError(errno.EINVAL, op, f"guest_memfd_offset {gmem_offset:#x} unaligned or wraps")
        if as_id >= config.address_spaces:
            raise KvmError(errno.EINVAL, op, f"address space {as_id} >= {config.address_spaces}")
        if gpa + size > U64_MAX:
            raise KvmError(errno.EINVAL, op, "guest_phys_addr + memory_size wraps")
        if size >> PAGE_SHIFT > KVM_MEM_MAX_NR_PAGES:
            raise KvmError(errno.EINVAL, op, f"memory_size {size:#x} exceeds KVM_MEM_MAX_NR_PAGES")
        old = self.memslots.get((as_id, slot_id))
        if size == 0:
            if old is None:
                raise KvmError(errno.EINVAL, op, f"slot {slot_id} does not exist")
            self._delete_memslot(old)
            return
        base_gfn, npages = gpa >> PAGE_SHIFT, size >> PAGE_SHIFT
        if old is not None:
            if flags & KVM_MEM_GUEST_MEMFD:
                raise KvmError(errno.EINVAL, op, "guest_memfd memslots are immutable: delete and re-create")
            if uaddr != old.userspace_addr or npages != old.npages or (flags ^ old.flags) & KVM_MEM_READONLY:
                raise KvmError(errno.EINVAL, op, "only the GPA or LOG_DIRTY_PAGES of a memslot can change")
            if old.has_gmem:
                raise KvmError(errno.EINVAL, op, "guest_memfd memslots cannot be moved or change flags")
            if base_gfn == old.base_gfn and flags == old.flags:
                return
            if base_gfn != old.base_gfn:
                self._check_overlap(op, as_id, slot_id, base_gfn, npages)
            self.stage2.zap(old.base_gfn, old.end_gfn)
            old.base_gfn, old.flags = base_gfn, flags
            return
        self._check_overlap(op, as_id, slot_id, base_gfn, npages)
        slot = Memslot(slot_id, as_id, base_gfn, npages, flags, uaddr, self)
        if flags & KVM_MEM_GUEST_MEMFD:
            file = self._fget_gmem(op, gmem_arg)
            file.kvm_gmem_bind(slot, gmem_offset)
            slot.has_gmem = True
        # kvm_arch_prepare_memory_region(): the slot must fit below kvm_mmu_max_gfn()
        if base_gfn + npages - 1 > (1 << (config.max_gpa_bits - PAGE_SHIFT)) - 1:
            if slot.gmem_file is not None:
                slot.gmem_file.kvm_gmem_unbind(slot)
            raise KvmError(errno.EINVAL, op, f"GPA range ends above MAXPHYADDR (2^{config.max_gpa_bits})")
        self.memslots[(as_id, slot_id)] = slot
        self.stats["memslots_created"] += 1

    def _check_overlap(self, op: str, as_id: int, slot_id: int, base_gfn: int, npages: int) -> None:
        for (a, i), other in self.memslots.items():
            if a == as_id and i != slot_id and base_gfn < other.end_gfn and other.base_gfn < base_gfn + npages:
                raise KvmError(errno.EEXIST, op, f"GPA range overlaps slot {i}")

    def _fget_gmem(self, op: str, gmem_arg: object) -> GmemFile:
        fd = getattr(gmem_arg, "fd", gmem_arg)
        if not isinstance(fd, int):
            raise KvmError(errno.EBADF, op, f"guest_memfd {gmem_arg!r} is not an fd")
        obj = self.system.fdtable.get(fd & 0xFFFFFFFF)
        if obj is None:
            raise KvmError(errno.EBADF, op, f"guest_memfd {fd} is not an open fd")
        if not isinstance(obj, GmemFile):
            raise KvmError(errno.EINVAL, op, f"fd {fd} is not a guest_memfd")
        if obj.vm is not self:
            raise KvmError(errno.EINVAL, op, f"guest_memfd {fd} belongs to another VM")
        return obj

    def _delete_memslot(self, slot: Memslot) -> None:
        self.stage2.zap(slot.base_gfn, slot.end_gfn)  # kvm_arch_flush_shadow_memslot
        if slot.gmem_file is not None:
            slot.gmem_file.kvm_gmem_unbind(slot)
        del self.memslots[(slot.as_id, slot.id)]
        self.stats["memslots_deleted"] += 1

    def find_memslot(self, gfn: int, as_id: int = 0) -> Memslot | None:
        for (a, _), slot in self.memslots.items():
            if a == as_id and slot.base_gfn <= gfn < slot.end_gfn:
                return slot
        return None

    # -- memory attributes (spec 2.7) ---------------------------------------------------------------------------
    def set_memory_attributes(self, address: int, size: int, attributes: int, flags: int = 0) -> None:
        op = "KVM_SET_MEMORY_ATTRIBUTES"
        self._check_fd(op)
        if not self.system.config.memory_attributes:
            raise KvmError(errno.ENOTTY, op, "not compiled in (no CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES)")
        address, size, attributes, flags = (
            u64(v, n, op) for v, n in ((address, "address"), (size, "size"), (attributes, "attributes"),
                                        (flags, "flags"))
        )
        if flags:
            raise KvmError(errno.EINVAL, op, f"flags {flags:#x} must be 0")
        supported = self.check_extension(233)
        if attributes & ~supported:
            raise KvmError(errno.EINVAL, op, f"attributes {attributes:#x} not in {supported:#x} for this VM")
        if size == 0 or address + size > U64_MAX:
            raise KvmError(errno.EINVAL, op, "size is 0 or address + size wraps")
        if not page_aligned(address) or not page_aligned(size):
            raise KvmError(errno.EINVAL, op, f"address {address:#x} / size {size:#x} not page aligned")
        start, end = address >> PAGE_SHIFT, (address + size) >> PAGE_SHIFT
        if self.attributes.all_equal(start, end, attributes):
            return  # kvm_range_has_memory_attributes(): nothing to do
        self.stage2.zap(start, end)  # kvm_arch_pre_set_memory_attributes
        self.attributes.store(start, end, attributes)
        self.stats["set_attributes"] += 1

    def kvm_mem_is_private(self, gfn: int) -> bool:
        """Where private-ness comes from: gmem shareability for RFC v2 SUPPORT_SHARED slots, else the
        per-VM attribute array (spec 2.7)."""
        slot = self.find_memslot(gfn)
        if slot is not None and slot.gmem_tracks_shareability:
            file = slot.gmem_file
            if file is None:
                return False  # kvm_gmem_is_private() is false once the file is gone
            return file.inode.is_private(gfn - slot.base_gfn + slot.gmem_pgoff)
        return bool(self.attributes.load(gfn) & KVM_MEMORY_ATTRIBUTE_PRIVATE)

    # -- vCPUs ---------------------------------------------------------------------------------------------------
    def create_vcpu(self, vcpu_id: int = 0) -> ModelVcpu:
        self._check_fd("KVM_CREATE_VCPU")
        return ModelVcpu(self, vcpu_id)

    # -- kvm_gmem_populate (spec 2.9) ------------------------------------------------------------------------------
    def kvm_gmem_populate(self, gfn: int, src: bytes | None, npages: int) -> int:
        """Copy ``npages`` source pages into private gmem (SNP_LAUNCH_UPDATE / TDX_INIT_MEM_REGION).

        Returns the number of pages populated; raises the first error if none was. 6.19 rules: the
        gfn must be in a gmem slot (EINVAL), the file live (EFAULT), each folio not yet prepared
        (EEXIST; RFC v2 skips this for TDX), each gfn private (EINVAL).
        """
        op = "kvm_gmem_populate"
        if npages <= 0:
            raise KvmError(errno.EINVAL, op, f"npages {npages} must be positive")
        slot = self.find_memslot(gfn)
        if slot is None or not slot.has_gmem:
            raise KvmError(errno.EINVAL, op, f"gfn {gfn:#x} is not in a guest_memfd memslot")
        file = slot.gmem_file
        if file is None or file.released:
            raise KvmError(errno.EFAULT, op, "guest_memfd file is gone")
        npages = min(npages, slot.end_gfn - gfn)
        done = 0
        skip_eexist = self.vm_type == VmType.TDX and self.system.behaviour.api.has_conversion_ioctls
        for i in range(npages):
            g = gfn + i
            index = g - slot.base_gfn + slot.gmem_pgoff
            err: KvmError | None = None
            if file.is_uptodate(index) and not skip_eexist:
                err = KvmError(errno.EEXIST, op, f"folio at index {index:#x} is already prepared")
            elif not self.kvm_mem_is_private(g):
                err = KvmError(errno.EINVAL, op, f"gfn {g:#x} is not private")
            if err is not None:
                if done:
                    break
                raise err
            chunk = src[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] if src is not None else None
            file.inode.ensure_folio(index)  # HugeTLB: the whole huge folio (kvm_gmem_get_folio)
            file.inode.pagecache.populate(index, chunk)
            done += 1
        self.stats["pages_populated"] += done
        return done


class ModelVcpu:
    """A vCPU performing guest accesses; an access KVM cannot serve raises :class:`VcpuExit`."""

    def __init__(self, vm: ModelVm, vcpu_id: int) -> None:
        self.vm = vm
        self.id = vcpu_id
        self.closed = False
        vm.get_ref()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.vm.put_ref()

    def read(self, gpa: int, length: int, private: bool | None = None) -> bytes:
        gpa = u64(gpa, "gpa", "KVM_RUN")
        if sint(length, "length", "KVM_RUN") < 0:
            raise KvmError(errno.EINVAL, "KVM_RUN", f"negative read length {length}")
        out = bytearray()
        for page_gpa, in_page, chunk in _split(gpa, length):
            target = self._fault(page_gpa + in_page, False, private)
            out += target.read(in_page, chunk)
        return bytes(out)

    def write(self, gpa: int, data: bytes, private: bool | None = None) -> None:
        gpa = u64(gpa, "gpa", "KVM_RUN")
        data = as_bytes(data, "KVM_RUN")
        pos = 0
        for page_gpa, in_page, chunk in _split(gpa, len(data)):
            target = self._fault(page_gpa + in_page, True, private)
            target.write(in_page, data[pos : pos + chunk])
            pos += chunk

    # -- the x86 fault path (spec 2.7) --------------------------------------------------------------------
    def _fault(self, gpa: int, write: bool, private: bool | None) -> _PageTarget:
        vm = self.vm
        gfn = gpa >> PAGE_SHIFT
        slot = vm.find_memslot(gfn)
        is_private = self._fault_is_private(gfn, private)
        flags = KVM_MEMORY_EXIT_FLAG_PRIVATE if is_private else 0
        page_gpa = gfn << PAGE_SHIFT
        if slot is None and not is_private:
            raise VcpuExit(KVM_EXIT_MMIO, 0, gpa, 0, 0, write, "no memslot: emulated MMIO")
        if is_private != vm.kvm_mem_is_private(gfn):
            raise VcpuExit(KVM_EXIT_MEMORY_FAULT, errno.EFAULT, page_gpa, PAGE_SIZE, flags, write,
                           "fault type disagrees with the memory attribute")
        assert slot is not None or is_private
        if slot is not None and write and slot.flags & KVM_MEM_READONLY:
            raise VcpuExit(KVM_EXIT_MMIO, 0, gpa, 0, 0, write, "write to a read-only memslot")
        if is_private or (slot is not None and slot.gmem_only):
            if slot is None or not slot.has_gmem:
                raise VcpuExit(KVM_EXIT_MEMORY_FAULT, errno.EFAULT, page_gpa, PAGE_SIZE, flags, write,
                               "private access outside a guest_memfd memslot")
            if slot.gmem_file is None:
                raise VcpuExit(KVM_EXIT_MEMORY_FAULT, errno.EFAULT, page_gpa, PAGE_SIZE, flags, write,
                               "kvm_gmem_get_pfn: guest_memfd file released")
            file = slot.gmem_file
            spte = vm.stage2.lookup(gfn)
            if spte is None:
                try:
                    kvm_tdp_map(vm, slot, gfn, is_private)  # kvm_gmem_get_pfn, level selection, map
                except GmemError as exc:
                    raise VcpuExit(KVM_EXIT_MEMORY_FAULT, exc.errno, page_gpa, PAGE_SIZE, flags, write,
                                   f"kvm_gmem_get_pfn: {exc.reason}") from None
            return _GmemPage(file, gfn - slot.base_gfn + slot.gmem_pgoff)
        # Shared fault on a classic slot: the page comes from userspace_addr (GUP on the HVA).
        hva = slot.userspace_addr + ((gfn - slot.base_gfn) << PAGE_SHIFT)
        vma = vm.system.address_space.find(hva) if slot.userspace_addr else None
        if vma is None:
            raise VcpuExit(KVM_EXIT_UNKNOWN, errno.EFAULT, 0, 0, 0, write, f"no host mapping at hva {hva:#x}")
        page = (hva - vma.address) >> PAGE_SHIFT
        if vma.file is not None:
            try:
                vma.file.inode.fault_user_mapping(vma.pgoff + page, vma)
            except FaultRefused as exc:
                raise VcpuExit(KVM_EXIT_UNKNOWN, errno.EFAULT, 0, 0, 0, write, f"GUP failed: {exc.reason}") from None
        if vm.stage2.lookup(gfn) is None:
            vm.stage2.map(gfn, 1, False)
        return _HvaPage(vma, page)

    def touch(self, gpa: int, size: int, write: bool = True) -> None:
        """The guest touches every page of ``[gpa, gpa + size)`` the way it knows it (private pages with
        private accesses): faults are taken leaf by leaf, runs of 4 KiB faults in one step, so touching
        64 GiB costs per mapping decision, not per page. Exits raise :class:`VcpuExit` as for one access."""
        gpa = u64(gpa, "gpa", "KVM_RUN")
        size = u64(size, "size", "KVM_RUN")
        touch_range(self, gpa >> PAGE_SHIFT, (gpa + size + PAGE_SIZE - 1) >> PAGE_SHIFT, write)

    def _fault_is_private(self, gfn: int, private: bool | None) -> bool:
        vm_type = self.vm.vm_type
        if not vm_type.has_private_mem:
            if private:
                raise UnsupportedByBackend(f"a {vm_type.label} VM cannot make private accesses")
            return False
        if private is None:
            # SW_PROTECTED has no hardware bit: KVM takes the attribute. SNP/TDX guests access private
            # memory unless they say otherwise.
            return self.vm.kvm_mem_is_private(gfn) if vm_type == VmType.SW_PROTECTED else True
        return private


class _PageTarget:
    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def write(self, offset: int, data: bytes) -> None:
        raise NotImplementedError


class _GmemPage(_PageTarget):
    def __init__(self, file: GmemFile, index: int) -> None:
        self.cache = file.inode.pagecache
        self.index = index

    def read(self, offset: int, length: int) -> bytes:
        return self.cache.read(self.index, offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self.cache.write(self.index, offset, data)


class _HvaPage(_PageTarget):
    def __init__(self, vma: ModelHostMapping, page: int) -> None:
        self.vma = vma
        self.page = page

    def read(self, offset: int, length: int) -> bytes:
        return self.vma._read_page(self.page, offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self.vma._write_page(self.page, offset, data)


def _split(gpa: int, length: int) -> list[tuple[int, int, int]]:
    out = []
    pos, end = gpa, gpa + length
    while pos < end:
        page = pos & ~(PAGE_SIZE - 1)
        chunk = min(page + PAGE_SIZE, end) - pos
        out.append((page, pos - page, chunk))
        pos += chunk
    return out
