"""A VM from ``KVM_CREATE_VM``: capabilities, guest_memfd creation, memslots, attributes, vCPUs.

Each method is one VM ioctl (``kvm_vm_ioctl`` in virt/kvm/kvm_main.c) and raises
:class:`~gmemlab.errors.KvmError` with the ioctl's name and the kernel's errno.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import NoReturn

from .. import uapi
from ..backend import HasFd
from ..errors import KvmError, UnsupportedByBackend
from ..uapi import VmType, c_value
from . import libc
from .gmem import KernelGuestMemfd
from .resources import Resources
from .system_slot import SYSTEM_SLOT, SystemSlot
from .vcpu import KernelVcpu, pre_fault_memory

U32 = 0xFFFFFFFF


def fd_number(guest_memfd: HasFd | int | None, op: str = "KVM_SET_USER_MEMORY_REGION2") -> int:
    """The ``guest_memfd`` field (``__u32``): an object's ``.fd``, a raw number, or None for "no fd" (-1)."""
    if guest_memfd is None:
        return U32
    return c_value(getattr(guest_memfd, "fd", guest_memfd), "__u32", "guest_memfd", op)


class KernelVcpuFd:
    """A vCPU fd without the backend's guest (past its mailboxes): KVM created it; guest accesses are refused."""

    def __init__(self, fd: int, vcpu_id: int, resources: Resources) -> None:
        self.fd = fd
        self.vcpu_id = vcpu_id
        self.closed = False
        self._resources = resources
        resources.add(self)

    def _refuse(self) -> NoReturn:
        from . import guest

        raise UnsupportedByBackend(f"guest accesses on more than {guest.MAX_VCPUS} vCPUs of a VM (the kernel "
                                   "backend's guest has that many mailboxes)")

    def read(self, gpa: int, length: int, private: bool | None = None) -> bytes:
        self._refuse()

    def write(self, gpa: int, data: bytes, private: bool | None = None) -> None:
        self._refuse()

    def execute(self, gpa: int, private: bool | None = None) -> int:
        self._refuse()

    def pre_fault_memory(self, gpa: int, size: int, flags: int = 0) -> tuple[int, int]:
        return pre_fault_memory(self.fd, gpa, size, flags)  # needs no guest

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._resources.discard(self)
            os.close(self.fd)


class KernelVm:
    def __init__(
        self, fd: int, vm_type: int, resources: Resources, run_size: int, cpuid: Callable[[], ctypes.Structure]
    ) -> None:
        self.fd = fd
        self.vm_type = VmType(vm_type) if vm_type in VmType._value2member_map_ else vm_type
        self.closed = False
        self._resources = resources
        self._run_size = run_size
        self._cpuid = cpuid
        self._system: SystemSlot | None = None
        self._vcpus: list[KernelVcpu] = []
        resources.add(self)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (per-VM answers, e.g. KVM_CAP_GUEST_MEMFD_FLAGS)."""
        cap = c_value(cap, "long", "cap", "KVM_CHECK_EXTENSION")
        return libc.ioctl(self.fd, uapi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION", f"cap {cap}")

    def create_guest_memfd(self, size: int, flags: int = 0, reserved: tuple[int, ...] = ()) -> KernelGuestMemfd:
        """KVM_CREATE_GUEST_MEMFD with the full 64-byte struct (reserved[] is passed as given)."""
        op = "KVM_CREATE_GUEST_MEMFD"
        arg = uapi.KvmCreateGuestMemfd(size=c_value(size, "__u64", "size", op),
                                       flags=c_value(flags, "__u64", "flags", op))
        for i, v in enumerate(reserved[:6]):
            arg.reserved[i] = c_value(v, "__u64", f"reserved[{i}]", op)
        fd = libc.ioctl(
            self.fd, uapi.KVM_CREATE_GUEST_MEMFD, arg, "KVM_CREATE_GUEST_MEMFD", f"size {size:#x} flags {flags:#x}"
        )
        return KernelGuestMemfd(fd, size, flags, self._resources)

    def set_user_memory_region2(
        self,
        slot: int,
        flags: int,
        guest_phys_addr: int,
        memory_size: int,
        userspace_addr: int = 0,
        guest_memfd: HasFd | int | None = None,
        guest_memfd_offset: int = 0,
    ) -> None:
        op = "KVM_SET_USER_MEMORY_REGION2"
        arg = uapi.KvmUserspaceMemoryRegion2(
            slot=c_value(slot, "__u32", "slot", op),
            flags=c_value(flags, "__u32", "flags", op),
            guest_phys_addr=c_value(guest_phys_addr, "__u64", "guest_phys_addr", op),
            memory_size=c_value(memory_size, "__u64", "memory_size", op),
            userspace_addr=c_value(userspace_addr, "__u64", "userspace_addr", op),
            guest_memfd_offset=c_value(guest_memfd_offset, "__u64", "guest_memfd_offset", op),
            guest_memfd=fd_number(guest_memfd, op),
        )
        libc.ioctl(
            self.fd,
            uapi.KVM_SET_USER_MEMORY_REGION2,
            arg,
            "KVM_SET_USER_MEMORY_REGION2",
            f"slot {slot} flags {flags:#x} gpa {guest_phys_addr:#x} size {memory_size:#x} "
            f"uaddr {userspace_addr:#x} gmem offset {guest_memfd_offset:#x}",
        )

    def set_user_memory_region(
        self, slot: int, flags: int, guest_phys_addr: int, memory_size: int, userspace_addr: int = 0
    ) -> None:
        op = "KVM_SET_USER_MEMORY_REGION"
        arg = uapi.KvmUserspaceMemoryRegion(
            slot=c_value(slot, "__u32", "slot", op),
            flags=c_value(flags, "__u32", "flags", op),
            guest_phys_addr=c_value(guest_phys_addr, "__u64", "guest_phys_addr", op),
            memory_size=c_value(memory_size, "__u64", "memory_size", op),
            userspace_addr=c_value(userspace_addr, "__u64", "userspace_addr", op),
        )
        libc.ioctl(
            self.fd,
            uapi.KVM_SET_USER_MEMORY_REGION,
            arg,
            "KVM_SET_USER_MEMORY_REGION",
            f"slot {slot} flags {flags:#x} gpa {guest_phys_addr:#x} size {memory_size:#x}",
        )

    def set_memory_attributes(self, address: int, size: int, attributes: int, flags: int = 0) -> None:
        """KVM_SET_MEMORY_ATTRIBUTES; this kernel answers ENOTTY (realkernel.md #261-#262)."""
        op = "KVM_SET_MEMORY_ATTRIBUTES"
        arg = uapi.KvmMemoryAttributes(address=c_value(address, "__u64", "address", op),
                                       size=c_value(size, "__u64", "size", op),
                                       attributes=c_value(attributes, "__u64", "attributes", op),
                                       flags=c_value(flags, "__u64", "flags", op))
        libc.ioctl(
            self.fd,
            uapi.KVM_SET_MEMORY_ATTRIBUTES,
            arg,
            "KVM_SET_MEMORY_ATTRIBUTES",
            f"address {address:#x} size {size:#x} attributes {attributes:#x}",
        )

    def ioctl(self, number: int, arg: bytes | int = 0) -> int:
        """``ioctl(vm_fd, number, arg)`` for numbers without a typed method: the argument's bytes or a raw address."""
        return libc.ioctl_raw(self.fd, number & U32, arg, "ioctl", f"{number & U32:#x} on the VM fd")[0]

    def create_vcpu(self, vcpu_id: int = 0) -> KernelVcpu | KernelVcpuFd:
        """KVM_CREATE_VCPU, then set it up to run the native guest (the first one adds the system slot).

        Every id reaches KVM, which checks it (KVM_MAX_VCPU_IDS, KVM_CAP_MAX_VCPUS, EEXIST); vCPUs past the
        guest's :data:`~.guest.MAX_VCPUS` mailboxes are created but cannot run guest accesses."""
        from . import guest

        op = "KVM_CREATE_VCPU"
        vcpu_id = c_value(vcpu_id, "unsigned long", "id", op)
        if len(self._vcpus) >= guest.MAX_VCPUS:
            fd = libc.ioctl(self.fd, uapi.KVM_CREATE_VCPU, vcpu_id, op, f"id {vcpu_id}")
            return KernelVcpuFd(fd, vcpu_id, self._resources)
        if self._system is None:
            try:
                self._system = SystemSlot(self.fd)
            except KvmError as exc:
                raise UnsupportedByBackend(f"the kernel backend's guest needs GPA [0, 2 MiB) of address space 0 "
                                           f"and slot {SYSTEM_SLOT} free: {exc}") from None
        fd = libc.ioctl(self.fd, uapi.KVM_CREATE_VCPU, vcpu_id, op, f"id {vcpu_id}")
        self._system.get()
        try:
            vcpu = KernelVcpu(
                fd, vcpu_id, len(self._vcpus), self._system, self._run_size, self._resources, self._cpuid()
            )
        except BaseException:
            self._system.put()
            os.close(fd)
            raise
        self._vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        """close(vm fd). vCPUs and guest_memfds stay usable; each holds a reference on struct kvm (#82, #298)."""
        if self.closed:
            return
        self.closed = True
        self._resources.discard(self)
        os.close(self.fd)
        if self._system is not None:
            self._system.put()

    def __repr__(self) -> str:
        return f"<KernelVm fd={self.fd} type={int(self.vm_type)}>"
