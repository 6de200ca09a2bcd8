"""A VM from ``KVM_CREATE_VM``: capabilities, guest_memfd creation, memslots, attributes, vCPUs.

Each method is one VM ioctl (``kvm_vm_ioctl`` in virt/kvm/kvm_main.c) and raises
:class:`~gmemlab.errors.KvmError` with the ioctl's name and the kernel's errno.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

from .. import uapi
from ..backend import HasFd
from ..errors import UnsupportedByBackend
from ..uapi import VmType
from . import libc
from .gmem import KernelGuestMemfd
from .resources import Resources
from .system_slot import SystemSlot
from .vcpu import KernelVcpu

U32 = 0xFFFFFFFF


def fd_number(guest_memfd: HasFd | int | None) -> int:
    """The ``guest_memfd`` field: an object's ``.fd``, a raw number, or None for "no fd" (-1 as u32)."""
    if guest_memfd is None:
        return U32
    if isinstance(guest_memfd, int):
        return guest_memfd & U32
    return guest_memfd.fd & U32


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
        return libc.ioctl(self.fd, uapi.KVM_CHECK_EXTENSION, int(cap), "KVM_CHECK_EXTENSION", f"cap {int(cap)}")

    def create_guest_memfd(self, size: int, flags: int = 0, reserved: tuple[int, ...] = ()) -> KernelGuestMemfd:
        """KVM_CREATE_GUEST_MEMFD with the full 64-byte struct (reserved[] is passed as given)."""
        arg = uapi.KvmCreateGuestMemfd(size=size & uapi.U64_MAX, flags=flags & uapi.U64_MAX)
        for i, v in enumerate(reserved[:6]):
            arg.reserved[i] = v & uapi.U64_MAX
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
        m = uapi.U64_MAX
        arg = uapi.KvmUserspaceMemoryRegion2(
            slot=slot & U32,
            flags=flags & U32,
            guest_phys_addr=guest_phys_addr & m,
            memory_size=memory_size & m,
            userspace_addr=userspace_addr & m,
            guest_memfd_offset=guest_memfd_offset & m,
            guest_memfd=fd_number(guest_memfd),
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
        m = uapi.U64_MAX
        arg = uapi.KvmUserspaceMemoryRegion(
            slot=slot & U32,
            flags=flags & U32,
            guest_phys_addr=guest_phys_addr & m,
            memory_size=memory_size & m,
            userspace_addr=userspace_addr & m,
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
        m = uapi.U64_MAX
        arg = uapi.KvmMemoryAttributes(address=address & m, size=size & m, attributes=attributes & m, flags=flags & m)
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

    def create_vcpu(self, vcpu_id: int = 0) -> KernelVcpu:
        """KVM_CREATE_VCPU, then set it up to run the native guest (the first one adds the system slot)."""
        from . import guest

        if len(self._vcpus) >= guest.MAX_VCPUS:
            raise UnsupportedByBackend(f"more than {guest.MAX_VCPUS} vCPUs per VM (kernel backend's system slot)")
        if self._system is None:
            self._system = SystemSlot(self.fd)
        fd = libc.ioctl(self.fd, uapi.KVM_CREATE_VCPU, vcpu_id, "KVM_CREATE_VCPU", f"id {vcpu_id}")
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
