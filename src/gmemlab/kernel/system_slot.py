"""The guest's own memory: one anonymous memslot at GPA 0 with code, page tables, mailboxes and bounces.

Created on the first ``create_vcpu`` of a VM with ``KVM_SET_USER_MEMORY_REGION`` (a plain slot backed by
``MAP_SHARED|MAP_ANONYMOUS`` memory, so the instruction emulator can fetch the guest code through
``userspace_addr``, realkernel.md findings 3). It uses slot id :data:`SYSTEM_SLOT`, which the backend
reports in ``reserved_slots()``. The mapping is freed when the VM and all its vCPUs are closed.
"""

from __future__ import annotations

import ctypes

from .. import uapi
from ..backend import PROT_READ, PROT_WRITE
from . import guest, libc

SYSTEM_SLOT = uapi.KVM_USER_MEM_SLOTS - 1  # 32763: far from the ids cases use


class SystemSlot:
    def __init__(self, vm_fd: int) -> None:
        self.host_addr = libc.mmap(
            guest.SYSTEM_SIZE, PROT_READ | PROT_WRITE, libc.MAP_SHARED | libc.MAP_ANONYMOUS, reason="guest system slot"
        )
        try:
            for gpa, data in guest.system_image():
                ctypes.memmove(self.host_addr + gpa, data, len(data))
            region = uapi.KvmUserspaceMemoryRegion(
                slot=SYSTEM_SLOT,
                flags=0,
                guest_phys_addr=guest.SYSTEM_GPA,
                memory_size=guest.SYSTEM_SIZE,
                userspace_addr=self.host_addr,
            )
            libc.ioctl(
                vm_fd,
                uapi.KVM_SET_USER_MEMORY_REGION,
                region,
                "KVM_SET_USER_MEMORY_REGION",
                f"guest system slot {SYSTEM_SLOT} at GPA 0 (must not overlap a case's slot)",
            )
        except BaseException:
            libc.munmap(self.host_addr, guest.SYSTEM_SIZE)
            raise
        self.users = 1  # the VM
        self.next_index = 0

    def host(self, gpa: int) -> int:
        """Host address of a GPA inside the system slot."""
        return self.host_addr + gpa - guest.SYSTEM_GPA

    def get(self) -> None:
        self.users += 1

    def put(self) -> None:
        self.users -= 1
        if self.users == 0 and self.host_addr:
            libc.munmap(self.host_addr, guest.SYSTEM_SIZE)
            self.host_addr = 0
