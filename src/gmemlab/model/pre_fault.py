"""``KVM_PRE_FAULT_MEMORY``: map a GPA range into stage 2 before the guest runs (spec 2.10, 6.11+).

After ``kvm_vcpu_pre_fault_memory`` (virt/kvm/kvm_main.c) and ``kvm_arch_vcpu_pre_fault_memory``
(arch/x86/kvm/mmu/mmu.c, 6.18): the arguments are checked (flags 0, page-aligned ``gpa`` and ``size``, a
non-empty range that does not wrap: EINVAL), then the range is faulted in as the vCPU's read faults would be,
private where ``kvm_mem_is_private`` says so, through the TDP MMU only (EOPNOTSUPP otherwise, and for SNP/TDX
VMs before their launch is finalized, which the model has no ioctl for). Each step goes through the x86 fault
path (:func:`gmemlab.model.page_fault.fault_in_range`): a GPA without memslot is emulated MMIO, which pre-fault
reports as ENOENT; a fault that would exit with ``KVM_EXIT_MEMORY_FAULT`` returns its errno (EFAULT for a
private GPA without guest_memfd, realkernel-private.md 4b/prefault_private_no_gmem). The kernel returns 0 and
the range left when some pages were mapped, the error only when none were; the range is written back either way.
"""

from __future__ import annotations

import errno

from ..errors import KvmError, VcpuExit
from ..uapi import KVM_EXIT_MMIO, PAGE_SHIFT, U64_MAX, VmType, page_aligned
from .kvm_host import Kvm
from .page_fault import fault_in_range

OP = "KVM_PRE_FAULT_MEMORY"


def _pre_fault_allowed(vm: Kvm) -> bool:
    """``kvm->arch.pre_fault_allowed``: set at creation except for SNP and TDX (set at launch finish)."""
    return vm.vm_type not in (VmType.SNP, VmType.TDX)


def _errno_of(exit_: VcpuExit) -> int:
    """What ``kvm_tdp_map_page`` returns for a fault that could not be fixed."""
    if exit_.exit_reason == KVM_EXIT_MMIO:
        return errno.ENOENT  # RET_PF_EMULATE: no memslot (or a write to a read-only one)
    return exit_.errno or errno.EFAULT


def kvm_vcpu_pre_fault_memory(vm: Kvm, gpa: int, size: int, flags: int) -> tuple[int, int]:
    """Pre-fault ``[gpa, gpa + size)``; returns the range left (``gpa``, ``size``) or raises :class:`KvmError`."""
    if flags:
        raise KvmError(errno.EINVAL, OP, f"flags {flags:#x} must be 0")
    if not page_aligned(gpa) or not page_aligned(size) or size == 0 or gpa + size > U64_MAX:
        raise KvmError(errno.EINVAL, OP, f"gpa {gpa:#x} / size {size:#x}: not page aligned, empty or wrapping")
    if not _pre_fault_allowed(vm):
        raise KvmError(errno.EOPNOTSUPP, OP, f"a {vm.vm_type.label} VM pre-faults only after its launch is finalized")
    if not vm.config.pre_fault:
        raise KvmError(errno.EOPNOTSUPP, OP, "only the TDP MMU can pre-fault (KVM_CAP_PRE_FAULT_MEMORY = 0)")
    start, end = gpa >> PAGE_SHIFT, (gpa + size) >> PAGE_SHIFT
    reached, stopped = fault_in_range(vm, start, end, write=False, prefault=True)
    vm.counters.add("pre_fault_pages", reached - start)
    if stopped is not None and reached == start:
        raise KvmError(_errno_of(stopped), OP, f"gpa {gpa:#x}: {stopped}")
    return reached << PAGE_SHIFT, (end - reached) << PAGE_SHIFT
