"""KVM proper: the system (``/dev/kvm``), VM ioctls and vCPUs, after ``virt/kvm/kvm_main.c`` (6.18).

Implements :class:`gmemlab.backend.Backend` for the model. The memslot ioctls run the kernel's steps in
order: the slot id, ``check_memory_region_flags``, the sanity checks (:mod:`gmemlab.model.memslot`),
then create (with ``kvm_gmem_bind``), move or delete (spec 2.6). Guest accesses go through the x86
fault path (:mod:`gmemlab.model.page_fault`, spec 2.7), populate is :mod:`gmemlab.model.populate`.
"""

from __future__ import annotations

import errno
import struct
from collections import Counter
from types import TracebackType

from ..backend import PROT_READ, PROT_WRITE, REPORT_STUB_SIZE, decode_report_stub
from ..errors import KvmError, UnsupportedByBackend, VcpuExit
from ..level import LEVELS, Level
from ..uapi import (
    KVM_CHECK_EXTENSION,
    KVM_CREATE_GUEST_MEMFD,
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_EXIT_MMIO,
    KVM_GET_API_VERSION,
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_SET_MEMORY_ATTRIBUTES,
    KVM_SET_USER_MEMORY_REGION,
    KVM_SET_USER_MEMORY_REGION2,
    LINUX_6_18,
    PAGE_SHIFT,
    PAGE_SIZE,
    U64_MAX,
    ApiProfile,
    Cap,
    VmType,
    as_loff,
    page_aligned,
)
from .args import as_bytes, sint, u32, u64
from .config import HostConfig
from .fdtable import FdTable
from .gmem import GmemFile, GmemInode, open_file
from .gmem_attributes import FaultInjection
from .gmem_huge import HugeGmem
from .host import AddressSpace, ModelHostMapping
from .hugetlb import HugetlbPool, HugetlbSubpool
from .invariants import check as check_model_invariants
from .kvm_host import Kvm
from .madvise import refused_advices
from .memfd import ModelMemfd
from .memslot import (
    MemoryRegion,
    Memslot,
    check_memory_region_flags,
    check_memory_region_sanity,
    check_move_or_flags_change,
    check_overlap,
)
from .metrics import Metrics
from .page_fault import kvm_mmu_page_fault, orphan_gmem_leaves, split_by_page, touch_range
from .policy import policy
from .populate import kvm_gmem_populate
from .pre_fault import kvm_vcpu_pre_fault_memory
from .process import ModelProcess
from .profiles import Behaviour, behaviour
from .stage2 import GFN_LIMIT
from .usercopy import UserArg, copy_from_user

# VM ioctls the model implements only through their typed methods.
_TYPED_VM_IOCTLS = frozenset({KVM_CHECK_EXTENSION, KVM_CREATE_GUEST_MEMFD, KVM_SET_USER_MEMORY_REGION,
                              KVM_SET_USER_MEMORY_REGION2, KVM_CREATE_VCPU})


class ModelBackend:
    """The modelled ``/dev/kvm`` of one kernel lineage (``profile``) on one host (``config``)."""

    name = "model"

    def __init__(self, profile: str | ApiProfile = LINUX_6_18, config: HostConfig | None = None) -> None:
        profile_name = profile if isinstance(profile, str) else profile.name
        self.behaviour: Behaviour = behaviour(profile_name)
        self.profile: ApiProfile = self.behaviour.api
        self.config = config or HostConfig.upstream()
        self.policy = policy(self.config.gmem_policy)
        self.counters = Metrics()
        self.hugetlb_pool = HugetlbPool(self.config.hugetlb_pool_pages)
        self.fdtable = FdTable()
        self.address_space = AddressSpace(self.config.numa_nodes,
                                          refused_advices(self.config.ksm, self.config.thp), self.config.pkeys)
        self.vms: list[ModelVm] = []
        self.fd = self.fdtable.install(self)
        self.closed = False
        self.fault_injection = FaultInjection()  # model-only failure switches (e.g. maple-tree ENOMEM)

    # -- Backend protocol ------------------------------------------------------------------------------
    def check_extension(self, cap: int) -> int:
        return self.behaviour.check_extension(u64(cap, "cap", "KVM_CHECK_EXTENSION", "long"), None, self.config)

    def vm_types(self) -> list[VmType]:
        return list(self.config.vm_types)

    def create_vm(self, vm_type: int = 0) -> ModelVm:
        vm_type = u64(vm_type, "type", "KVM_CREATE_VM", "unsigned long")
        if vm_type not in [int(t) for t in self.config.vm_types]:
            raise KvmError(errno.EINVAL, "KVM_CREATE_VM", f"VM type {vm_type} is not supported on this host")
        vm = ModelVm(self, VmType(vm_type))
        self.vms.append(vm)
        return vm

    def mmap_anonymous(self, length: int) -> ModelHostMapping:
        if length <= 0:
            raise KvmError(errno.EINVAL, "mmap", f"length {length} must be positive")
        return ModelHostMapping(self.address_space, length, PROT_READ | PROT_WRITE)

    def memfd_create(self, size: int) -> ModelMemfd:
        return ModelMemfd(self.fdtable, size)

    def nr_numa_nodes(self) -> int:
        return self.config.numa_nodes

    def mm_features(self) -> dict[str, bool]:
        """The modelled kernel's CONFIG_KSM and CONFIG_TRANSPARENT_HUGEPAGE (HostConfig.ksm / .thp) and its
        protection keys (HostConfig.pkeys)."""
        return {"ksm": self.config.ksm, "transparent_hugepage": self.config.thp, "pkeys": self.config.pkeys}

    def guest_gpa_window(self) -> tuple[int, int]:
        return self.config.gpa_window or (0, 1 << self.config.max_gpa_bits)

    def reserved_slots(self) -> frozenset[int]:
        return frozenset()

    def module_params(self) -> dict[str, str]:
        """The modelled kernel's KVM module parameters, as /sys/module/kvm/parameters shows them: only
        ``kvm.gmem_in_place_conversion`` (profiles with the in-place series) is modelled."""
        if not self.profile.has_attributes2:
            return {}
        return {"kvm.gmem_in_place_conversion": "Y" if self.behaviour.in_place_conversion(self.config) else "N"}

    def inject_fault(self, site: str, times: int = 1) -> None:
        if not hasattr(self.fault_injection, site) or site.startswith("_") or site == "fail":
            raise UnsupportedByBackend(f"fault injection at {site!r} (known: mtree_preallocate)")
        setattr(self.fault_injection, site, getattr(self.fault_injection, site) + times)

    def fork(self) -> ModelProcess:
        """``fork()`` of the VMM process: see :class:`gmemlab.model.process.ModelProcess`."""
        inherited: list[GmemFile | ModelVm] = []
        for entry in self.fdtable.files.values():
            obj = open_file(entry)
            if isinstance(obj, GmemFile | ModelVm):
                inherited.append(obj)
        return ModelProcess(self.address_space, inherited)

    def ioctl(self, number: int, arg: UserArg = 0) -> int:
        """``ioctl(/dev/kvm, number, arg)``: numbers ``kvm_dev_ioctl`` does not know are EINVAL
        (``kvm_arch_dev_ioctl``; realkernel-private.md ``3/attrs2_devkvm``)."""
        number = u64(number, "number", "ioctl") & 0xFFFFFFFF
        if number in (KVM_CHECK_EXTENSION, KVM_CREATE_VM, KVM_GET_API_VERSION):
            raise UnsupportedByBackend(f"raw ioctl {number:#x} on /dev/kvm: use the typed method")
        raise KvmError(errno.EINVAL, "ioctl", f"{number:#x} is not a /dev/kvm ioctl (kvm_arch_dev_ioctl)")

    def close(self) -> None:
        """Release everything this backend created, like the kernel backend's ``close()``: vCPUs, pins,
        mappings, then every open fd newest first (files, memfds, VMs), then ``/dev/kvm`` itself. Memory
        goes back as the kernel frees it: the last reference to a guest_memfd evicts its inode (HugeTLB
        pages return to the pool), the last reference to a VM destroys it."""
        if self.closed:
            return
        self.closed = True
        for vm in list(self.vms):
            for vcpu in reversed(vm.vcpus):
                vcpu.close()
        for inode in self.inodes():
            for pin in reversed(list(inode.pin_objs)):
                pin.unpin()
        for vma in reversed(list(self.address_space.vmas)):
            vma.munmap()
        # the reservations (guards, and what munmap left) go too, as the kernel client releases them
        self.address_space.vmas[:] = [vma for vma in self.address_space.vmas if not vma.guard]
        for fd in sorted(self.fdtable.files, reverse=True):
            obj = self.fdtable.files[fd]
            if obj is not self:
                obj.close()
        self.fdtable.remove(self.fd)

    def __enter__(self) -> ModelBackend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def stats(self) -> Counter[str]:
        """The counters of :attr:`counters` (``pages_freed_at_release``, ``memslots_created``, ...)."""
        return self.counters.counters

    # -- whole-system views -------------------------------------------------------------------------------
    def inodes(self) -> list[GmemInode]:
        seen: dict[int, GmemInode] = {}
        for entry in list(self.fdtable.files.values()):
            obj = open_file(entry)
            if isinstance(obj, GmemFile):
                seen[id(obj.inode)] = obj.inode
        for vma in self.address_space.vmas:
            if isinstance(vma.file, GmemFile):
                seen[id(vma.file.inode)] = vma.file.inode
        return list(seen.values())

    def metrics(self) -> dict[str, object]:
        """Counters for the simulator: splits/merges, stage-2 and host bytes per level, conversions,
        faults, zaps, TLB flushes, vmemmap, tracking structure sizes (see :mod:`gmemlab.model.metrics`)."""
        out = self.counters.as_dict()
        ranges = 0
        for inode in self.inodes():
            ranges += inode.shareability.nr_ranges()
            if inode.huge is not None and inode.huge.record is not None:
                ranges += inode.huge.record.nr_ranges()
            if inode.huge is not None:
                hf = inode.huge.hf
                ranges += hf.shape.nr_runs() + (hf.sub2m.nr_runs() if hf.sub2m is not None else 0)
                ranges += inode.huge.prep.nr_ranges()
        per_page = 0
        mapped = {level.label: 0 for level in LEVELS}
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
        check_model_invariants(self.inodes(), self.vms)


class ModelVm(Kvm):
    """A VM fd (``KVM_CREATE_VM``) and its ioctls; the state they change is :class:`Kvm`."""

    def __init__(self, system: ModelBackend, vm_type: VmType) -> None:
        self.system = system
        self.fd = system.fdtable.install(self)
        self.fd_open = True
        self.vcpus: list[ModelVcpu] = []
        super().__init__(vm_type, system.config, system.behaviour, system.counters, system.address_space)

    def kvm_destroy_vm(self) -> None:
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
        cap = u64(cap, "cap", "KVM_CHECK_EXTENSION", "long")
        return self.system.behaviour.check_extension(cap, self.vm_type, self.system.config)

    # -- KVM_CREATE_GUEST_MEMFD (spec 2.2) -----------------------------------------------------------------
    def create_guest_memfd(self, size: int, flags: int = 0, reserved: tuple[int, ...] = ()) -> GmemFile:
        """``kvm_gmem_create``: flags for this VM type, size, then (HugeTLB) the inode's subpool."""
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
        shared = behaviour.initial_shareability(flags, self.system.config)
        hpage = behaviour.hugetlb_page_size(flags)
        subpool = self._hugetlb_subpool(op, flags, loff, hpage) if hpage else None
        inode = GmemInode(behaviour, size, flags, shared, self.system.counters, self.system.config,
                          self.system.fault_injection)
        if subpool is not None:
            inode.huge = HugeGmem(inode, hpage, subpool, self.system.policy, self.system.config.gmem_prepare,
                                  self.system.counters, shared)
        return GmemFile(self, inode, self.system.fdtable, self.system.address_space)

    def _hugetlb_subpool(self, op: str, flags: int, loff: int, hpage: int) -> HugetlbSubpool:
        """HugeTLB inode setup (spec 1.5 step 4): page-size log, size multiple, then the subpool reservation."""
        if hpage not in (Level.PG_2M.bytes, Level.PG_1G.bytes):  # x86 hstates; an empty pool is ENOMEM below
            raise KvmError(errno.EINVAL, op, f"flags {flags:#x}: HugeTLB page-size log {hpage.bit_length() - 1} "
                           "names no hstate on this host (2 MiB = 21, 1 GiB = 30)")
        if loff % hpage:
            raise KvmError(errno.EINVAL, op, f"size {loff:#x} is not a multiple of the huge page size {hpage:#x}")
        return self.system.hugetlb_pool.reserve(hpage, loff // hpage, op)

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

    def nr_address_spaces(self) -> int:
        """``kvm_arch_nr_memslot_as_ids``: x86 VMs with private memory have no SMM address space
        (realkernel-private.md 1/cap/swp_vm/MULTI_ADDRESS_SPACE = 1, 5/bind/as1_plain_swp EINVAL)."""
        return 1 if self.vm_type.has_private_mem else self.config.address_spaces

    def _readonly_allowed(self) -> bool:
        # kvm_arch_has_readonly_mem(): not for VMs with protected state (SEV-ES, SNP, TDX).
        return self.config.readonly_mem and self.vm_type not in (VmType.SEV_ES, VmType.SNP, VmType.TDX)

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
        """``kvm_vm_ioctl_set_memory_region`` -> ``__kvm_set_memory_region``: checks, then the change."""
        r = MemoryRegion.from_args(op, slot_arg, flags, gpa, size, uaddr, gmem_offset)
        config = self.config
        if r.slot_id >= config.nr_memslots:
            raise KvmError(errno.EINVAL, op, f"slot id {r.slot_id} >= KVM_USER_MEM_SLOTS ({config.nr_memslots})")
        check_memory_region_flags(op, r.flags, self._readonly_allowed())
        check_memory_region_sanity(op, r, self.nr_address_spaces())
        old = self.memslots.get(r.key)
        if r.size == 0:
            if old is None:
                raise KvmError(errno.EINVAL, op, f"slot {r.slot_id} does not exist")
            self._delete_memslot(old)
        elif old is not None:
            self._move_memslot(op, r, old)
        else:
            self._create_memslot(op, r, gmem_arg)

    def _create_memslot(self, op: str, r: MemoryRegion, gmem_arg: object) -> None:
        """``KVM_MR_CREATE``: overlap check, ``kvm_gmem_bind``, ``kvm_arch_prepare_memory_region``."""
        base_gfn, npages = r.base_gfn, r.npages
        check_overlap(self.memslots, op, r.as_id, r.slot_id, base_gfn, npages)
        slot = Memslot(r.slot_id, r.as_id, base_gfn, npages, r.flags, r.uaddr)
        if r.flags & KVM_MEM_GUEST_MEMFD:
            file = self._fget_gmem(op, gmem_arg)
            file.kvm_gmem_bind(slot, r.gmem_offset)
            slot.has_gmem = True
        try:
            self._check_max_gfn(op, base_gfn, npages)
        except KvmError:
            if slot.gmem_file is not None:
                slot.gmem_file.kvm_gmem_unbind(slot)
            raise
        self.memslots[r.key] = slot
        self.kvm_swap_active_memslots(r.as_id)

    def _check_max_gfn(self, op: str, base_gfn: int, npages: int) -> None:
        """``kvm_arch_prepare_memory_region`` for KVM_MR_CREATE and KVM_MR_MOVE: the slot must end at or below
        ``kvm_mmu_max_gfn()``."""
        max_gpa_bits = self.config.max_gpa_bits
        if base_gfn + npages - 1 > (1 << (max_gpa_bits - PAGE_SHIFT)) - 1:
            raise KvmError(errno.EINVAL, op, f"GPA range ends above MAXPHYADDR (2^{max_gpa_bits})")

    def _move_memslot(self, op: str, r: MemoryRegion, old: Memslot) -> None:
        """``KVM_MR_MOVE`` / ``KVM_MR_FLAGS_ONLY``: a new GPA or dirty logging; the old leaves go."""
        check_move_or_flags_change(op, r, old, self.behaviour.gmem_flag_toggle(self.config))
        base_gfn = r.base_gfn
        if base_gfn == old.base_gfn and r.flags == old.flags:
            return
        if base_gfn != old.base_gfn:
            check_overlap(self.memslots, op, r.as_id, r.slot_id, base_gfn, r.npages)
            self._check_max_gfn(op, base_gfn, r.npages)  # found by the lockstep fuzzer (seed 903)
            self.stage2.zap(old.base_gfn, old.end_gfn)  # KVM_MR_MOVE: kvm_arch_flush_shadow_memslot
        # KVM_MR_FLAGS_ONLY keeps the leaves (dirty logging only write-protects them, and the fast path restores W)
        self.kvm_swap_active_memslots(old.as_id)
        if old.has_gmem:
            # Before upstream 9935df5333aa (6.18.0-6.18.2): the new slot is a plain one; the old one is freed
            # without kvm_gmem_unbind, so its file range stays bound to it (rebinding the range is EINVAL) until
            # the file goes away. The kernel then writes into the freed slot (the use-after-free the fix closed).
            if base_gfn == old.base_gfn:
                orphan_gmem_leaves(self, old)
            slot = Memslot(old.id, old.as_id, base_gfn, old.npages, r.flags, old.userspace_addr)
            self.memslots[(old.as_id, old.id)] = slot
            return
        old.base_gfn, old.flags = base_gfn, r.flags

    def _fget_gmem(self, op: str, gmem_arg: object) -> GmemFile:
        fd = getattr(gmem_arg, "fd", gmem_arg)
        if gmem_arg is None:
            fd = -1  # "no fd": the field left at -1
        fd = u32(fd, "guest_memfd", op)
        obj = open_file(self.system.fdtable.get(fd))
        if obj is None:
            raise KvmError(errno.EBADF, op, f"guest_memfd {fd} is not an open fd")
        if not isinstance(obj, GmemFile):
            raise KvmError(errno.EINVAL, op, f"fd {fd} is not a guest_memfd")
        if obj.vm is not self:
            raise KvmError(errno.EINVAL, op, f"guest_memfd {fd} belongs to another VM")
        return obj

    def _delete_memslot(self, slot: Memslot) -> None:
        """``KVM_MR_DELETE``: zap the slot's leaves, unbind guest_memfd."""
        self.stage2.zap(slot.base_gfn, slot.end_gfn)  # kvm_arch_flush_shadow_memslot
        if slot.gmem_file is not None:
            slot.gmem_file.kvm_gmem_unbind(slot)
        del self.memslots[(slot.as_id, slot.id)]
        self.kvm_swap_active_memslots(slot.as_id)

    # -- memory attributes (spec 2.7) ---------------------------------------------------------------------------
    def set_memory_attributes(self, address: int, size: int, attributes: int, flags: int = 0) -> None:
        op = "KVM_SET_MEMORY_ATTRIBUTES"
        address, size, attributes, flags = (  # the struct is filled before the ioctl is made
            u64(v, n, op) for v, n in ((address, "address"), (size, "size"), (attributes, "attributes"),
                                        (flags, "flags"))
        )
        self._check_fd(op)
        self._check_vm_attributes(op)
        if flags:
            raise KvmError(errno.EINVAL, op, f"flags {flags:#x} must be 0")
        supported = self.check_extension(Cap.MEMORY_ATTRIBUTES)
        if attributes & ~supported:
            raise KvmError(errno.EINVAL, op, f"attributes {attributes:#x} not in {supported:#x} for this VM")
        if size == 0 or address + size > U64_MAX:
            raise KvmError(errno.EINVAL, op, "size is 0 or address + size wraps")
        if not page_aligned(address) or not page_aligned(size):
            raise KvmError(errno.EINVAL, op, f"address {address:#x} / size {size:#x} not page aligned")
        start, end = address >> PAGE_SHIFT, (address + size) >> PAGE_SHIFT
        if self.attributes.all_equal(start, end, attributes):
            return  # kvm_range_has_memory_attributes(): nothing to do
        # kvm_arch_pre_set_memory_attributes runs per memslot in the range (kvm_handle_gfn_range): GPAs without a
        # memslot are not zapped, so a cached MMIO SPTE there survives the change (see page_fault.py).
        spans = [(max(start, s.base_gfn), min(end, s.end_gfn)) for s in self.memslots.values()]
        self.stage2.zap_ranges([(lo, hi) for lo, hi in spans if lo < hi])
        self.attributes.store(start, end, attributes)

    def _check_vm_attributes(self, op: str) -> None:
        config = self.system.config
        if not self.system.behaviour.vm_memory_attributes(config):
            why = ("gmem_in_place_conversion is on: attributes live in guest_memfd"
                   if self.system.behaviour.in_place_conversion(config)
                   else "per-VM memory attributes are not compiled in")
            raise KvmError(errno.ENOTTY, op, why)

    # -- raw ioctls ----------------------------------------------------------------------------------------------
    def ioctl(self, number: int, arg: UserArg = 0) -> int:
        """``ioctl(vm_fd, number, arg)`` (``kvm_vm_ioctl``) for the numbers the cases need raw: unknown numbers
        are ENOTTY (``kvm_arch_vm_ioctl``), ``KVM_SET_MEMORY_ATTRIBUTES`` reads its 32-byte struct from ``arg``."""
        self._check_fd("ioctl")
        number = u64(number, "number", "ioctl") & 0xFFFFFFFF
        if number == KVM_SET_MEMORY_ATTRIBUTES:
            op = "KVM_SET_MEMORY_ATTRIBUTES"
            self._check_vm_attributes(op)
            raw = copy_from_user(self.address_space, arg, 32)
            if raw is None:
                raise KvmError(errno.EFAULT, op, "copy_from_user of the 32-byte struct faulted")
            address, size, attributes, flags = struct.unpack("<4Q", raw)
            self.set_memory_attributes(address, size, attributes, flags)
            return 0
        if number in _TYPED_VM_IOCTLS:
            raise UnsupportedByBackend(f"raw ioctl {number:#x} on the VM fd: use the typed method")
        raise KvmError(errno.ENOTTY, "ioctl", f"{number:#x} is not a VM ioctl (kvm_arch_vm_ioctl)")

    # -- vCPUs ---------------------------------------------------------------------------------------------------
    def create_vcpu(self, vcpu_id: int = 0) -> ModelVcpu:
        """``kvm_vm_ioctl_create_vcpu``: the id (an ``unsigned long``) below KVM_MAX_VCPU_IDS, room for one more
        vCPU (KVM_CAP_MAX_VCPUS), then, once the vCPU is built, no other vCPU with that id (EEXIST)."""
        op = "KVM_CREATE_VCPU"
        self._check_fd(op)
        vcpu_id = u64(vcpu_id, "id", op, "unsigned long")
        if vcpu_id >= self.config.max_vcpu_ids:
            raise KvmError(errno.EINVAL, op, f"id {vcpu_id:#x} >= KVM_MAX_VCPU_IDS ({self.config.max_vcpu_ids})")
        if len(self.vcpus) >= self.config.max_vcpus:
            raise KvmError(errno.EINVAL, op, f"the VM already has KVM_CAP_MAX_VCPUS ({self.config.max_vcpus}) vCPUs")
        if any(v.id == vcpu_id for v in self.vcpus):
            raise KvmError(errno.EEXIST, op, f"vCPU id {vcpu_id} exists")
        vcpu = ModelVcpu(self, vcpu_id)
        self.vcpus.append(vcpu)
        return vcpu

    # -- kvm_gmem_populate (spec 2.9) ------------------------------------------------------------------------------
    def kvm_gmem_populate(self, gfn: int, src: bytes | None, npages: int, src_addr: int | None = None) -> int:
        """See :func:`gmemlab.model.populate.kvm_gmem_populate`."""
        return kvm_gmem_populate(self, gfn, src, npages, src_addr)


class ModelVcpu:
    """A vCPU performing guest accesses; an access KVM cannot serve raises :class:`VcpuExit`."""

    def __init__(self, vm: ModelVm, vcpu_id: int) -> None:
        self.vm = vm
        self.id = vcpu_id
        self.closed = False
        self.fd = vm.system.fdtable.install(self)  # the vCPU fd (anon_inode:kvm-vcpu)
        vm.get_ref()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.vm.system.fdtable.remove(self.fd)
            self.vm.put_ref()

    def read(self, gpa: int, length: int, private: bool | None = None) -> bytes:
        gpa = u64(gpa, "gpa", "KVM_RUN")
        if sint(length, "length", "KVM_RUN", "size_t") < 0:
            raise KvmError(errno.EINVAL, "KVM_RUN", f"negative read length {length}")
        out = bytearray()
        for page_gpa, in_page, chunk in split_by_page(gpa, length):
            target = kvm_mmu_page_fault(self.vm, page_gpa + in_page, False, private)
            out += target.read(in_page, chunk)
        return bytes(out)

    def write(self, gpa: int, data: bytes, private: bool | None = None) -> None:
        gpa = u64(gpa, "gpa", "KVM_RUN")
        data = as_bytes(data, "KVM_RUN")
        pos = 0
        for page_gpa, in_page, chunk in split_by_page(gpa, len(data)):
            target = kvm_mmu_page_fault(self.vm, page_gpa + in_page, True, private)
            target.write(in_page, data[pos : pos + chunk])
            pos += chunk

    def execute(self, gpa: int, private: bool | None = None) -> int:
        """An instruction fetch at ``gpa``: the stub's bytes are read through the fault path (a fetch is a read
        for routing, realkernel-private.md 4b/memfault_exec, 4a/exec_private_guest_written) and decoded."""
        gpa = u64(gpa, "gpa", "KVM_RUN")
        code = bytearray()
        for page_gpa, in_page, chunk in split_by_page(gpa, REPORT_STUB_SIZE):
            try:
                target = kvm_mmu_page_fault(self.vm, page_gpa + in_page, False, private)
            except VcpuExit as exc:
                if exc.exit_reason != KVM_EXIT_MMIO:
                    raise
                # KVM emulates an instruction fetch from MMIO and fails; what the guest sees next depends on its
                # IDT (a triple fault under TDP, KVM_EXIT_INTERNAL_ERROR on the kvm_pvm host): not guest_memfd's.
                raise UnsupportedByBackend(f"instruction fetch from GPA {page_gpa:#x}, emulated MMIO") from None
            code += target.read(in_page, chunk)
        value = decode_report_stub(bytes(code))
        if value is None:
            raise UnsupportedByBackend(f"code at GPA {gpa:#x} ({bytes(code).hex()}) is not a report stub: the model "
                                       "runs only gmemlab.backend.report_stub code")
        return value

    def pre_fault_memory(self, gpa: int, size: int, flags: int = 0) -> tuple[int, int]:
        """See :func:`gmemlab.model.pre_fault.kvm_vcpu_pre_fault_memory`."""
        op = "KVM_PRE_FAULT_MEMORY"
        return kvm_vcpu_pre_fault_memory(self.vm, u64(gpa, "gpa", op), u64(size, "size", op), u64(flags, "flags", op))

    def touch(self, gpa: int, size: int, write: bool = True) -> None:
        """The guest touches every page of ``[gpa, gpa + size)`` the way it knows it (private pages with
        private accesses): faults are taken leaf by leaf, runs of 4 KiB faults in one step, so touching
        64 GiB costs per mapping decision, not per page. Exits raise :class:`VcpuExit` as for one access."""
        gpa = u64(gpa, "gpa", "KVM_RUN")
        size = u64(size, "size", "KVM_RUN")
        touch_range(self.vm, gpa >> PAGE_SHIFT, (gpa + size + PAGE_SIZE - 1) >> PAGE_SHIFT, write)
