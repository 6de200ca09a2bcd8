"""The system: ``/dev/kvm`` of the running kernel (``kvm_dev_ioctl`` in virt/kvm/kvm_main.c).

:func:`open_kernel_backend` is the entry point. It refuses with :class:`~gmemlab.errors.UnsupportedByBackend`
and a precise reason when ``/dev/kvm`` is missing, cannot be opened, speaks another API version, lacks
guest_memfd, or when a ctypes struct disagrees with the size encoded in its ioctl number.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re

from .. import uapi
from ..backend import PROT_READ, PROT_WRITE
from ..errors import KvmError, UnsupportedByBackend
from ..uapi import Cap, VmType, c_value
from . import abi, guest, libc
from .mapping import KernelHostMapping, map_in_reservation
from .process import KernelProcess
from .resources import Resources
from .system_slot import SYSTEM_SLOT
from .vm import KernelVm

KVM_DEVICE = "/dev/kvm"
KVM_API_VERSION = 12


class KernelMemfd:
    """A plain ``memfd_create`` file (shmem): a file that is not a guest_memfd, for binding checks (#235)."""

    def __init__(self, fd: int, size: int, resources: Resources) -> None:
        self.fd = fd
        self.size = size
        self.closed = False
        self._resources = resources
        resources.add(self)

    def ioctl(self, number: int, arg: bytes | int = 0) -> int:
        """``ioctl`` on a memfd (shmem has none: ENOTTY)."""
        return libc.ioctl_raw(self.fd, number & 0xFFFFFFFF, arg, "ioctl", f"{number & 0xFFFFFFFF:#x} on a memfd")[0]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._resources.discard(self)
            os.close(self.fd)


class KernelBackend:
    """The real ``/dev/kvm``. Use :func:`open_kernel_backend` (or ``KernelBackend.open()``) to build one;
    ``close()`` or ``with`` releases every VM, vCPU, guest_memfd, mapping and memfd it created."""

    name = "kernel"

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False
        # The profile is read from the running kernel (release, kvm.gmem_in_place_conversion), never assumed.
        from ..hostfacts import profile_for, read_module_params

        name, self.profile_reason = profile_for(os.uname().release, read_module_params())
        self.profile: uapi.ApiProfile = uapi.PROFILES[name]
        header = header_cap_number()
        if header is not None:
            uapi.KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES = header  # the installed <linux/kvm.h> knows the number
        self.resources = Resources()
        self._run_size = libc.ioctl(fd, abi.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
        self._cpuid: ctypes.Structure | None = None

    @classmethod
    def open(cls, path: str = KVM_DEVICE) -> KernelBackend:
        return open_kernel_backend(path)

    def __enter__(self) -> KernelBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Backend protocol ------------------------------------------------------------------------
    def check_extension(self, cap: int) -> int:
        cap = c_value(cap, "long", "cap", "KVM_CHECK_EXTENSION")
        return libc.ioctl(self.fd, uapi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION", f"cap {cap}")

    def vm_types(self) -> list[VmType]:
        """Bits of KVM_CAP_VM_TYPES that name a known type (here only DEFAULT, realkernel.md #12-#19)."""
        mask = self.check_extension(Cap.VM_TYPES)
        return [t for t in VmType if mask & (1 << t)] or [VmType.DEFAULT]

    def supported_cpuid(self) -> ctypes.Structure:
        """KVM_GET_SUPPORTED_CPUID, once: what every vCPU gets with KVM_SET_CPUID2 (as the selftests do)."""
        if self._cpuid is None:
            cpuid = abi.kvm_cpuid2(abi.CPUID_MAX_ENTRIES)
            libc.ioctl(self.fd, abi.KVM_GET_SUPPORTED_CPUID, cpuid, "KVM_GET_SUPPORTED_CPUID")
            self._cpuid = cpuid
        return self._cpuid

    def create_vm(self, vm_type: int = 0) -> KernelVm:
        vm_type = c_value(vm_type, "unsigned long", "type", "KVM_CREATE_VM")
        fd = libc.ioctl(self.fd, uapi.KVM_CREATE_VM, vm_type, "KVM_CREATE_VM", f"type {vm_type}")
        try:
            return KernelVm(fd, vm_type, self.resources, self._run_size, self.supported_cpuid)
        except BaseException:
            os.close(fd)
            raise

    def mmap_anonymous(self, length: int) -> KernelHostMapping:
        length = c_value(length, "size_t", "length", "mmap")
        base, addr = map_in_reservation(length, PROT_READ | PROT_WRITE, libc.MAP_SHARED | libc.MAP_ANONYMOUS, -1, 0,
                                        f"anonymous shared, len {length:#x}")
        m = KernelHostMapping(addr, length, PROT_READ | PROT_WRITE, on_unmap=self.resources.discard, base=base,
                              resources=self.resources)
        self.resources.add(m)
        return m

    def memfd_create(self, size: int) -> KernelMemfd:
        try:
            fd = os.memfd_create("gmemlab", os.MFD_CLOEXEC)
        except OSError as exc:
            raise KvmError(exc.errno or 0, "memfd_create") from None
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            os.close(fd)
            raise KvmError(exc.errno or 0, "ftruncate", f"memfd size {size:#x}") from None
        return KernelMemfd(fd, size, self.resources)

    def module_params(self) -> dict[str, str]:
        """Parameters of the loaded KVM modules (kvm.tdp_mmu, kvm_amd.npt, ...), from /sys/module."""
        from ..hostfacts import read_module_params

        return read_module_params()

    def mm_features(self) -> dict[str, bool]:
        """CONFIG_KSM and CONFIG_TRANSPARENT_HUGEPAGE of the running kernel (/sys/kernel/mm)."""
        from ..hostfacts import read_mm_features

        return read_mm_features()

    def nr_numa_nodes(self) -> int:
        """Online NUMA nodes (/sys/devices/system/node/online, e.g. "0" or "0-1")."""
        try:
            with open("/sys/devices/system/node/online") as f:
                text = f.read().strip()
        except OSError:
            return 1
        count = 0
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            count += int(hi or lo) - int(lo) + 1
        return count

    def guest_gpa_window(self) -> tuple[int, int]:
        """[2 MiB, 64 GiB - 2 MiB): above the guest's system slot, below its MMIO report page."""
        return guest.GPA_WINDOW

    def reserved_slots(self) -> frozenset[int]:
        return frozenset({SYSTEM_SLOT})

    def fork(self) -> KernelProcess:
        """``fork()`` a child of this process (see :mod:`gmemlab.kernel.process`)."""
        return KernelProcess(self.resources)

    def ioctl(self, number: int, arg: bytes | int = 0) -> int:
        """``ioctl(/dev/kvm, number, arg)`` for numbers without a typed method."""
        return libc.ioctl_raw(self.fd, number & 0xFFFFFFFF, arg, "ioctl", f"{number & 0xFFFFFFFF:#x} on /dev/kvm")[0]

    def inject_fault(self, site: str, times: int = 1) -> None:
        raise UnsupportedByBackend(f"fault injection at {site!r}: the model's switch; a kernel would need "
                                   "CONFIG_FAULT_INJECTION aimed at the maple-tree allocation")

    def close(self) -> None:
        """Close everything this backend created (newest first), then /dev/kvm."""
        if self.closed:
            return
        self.closed = True
        errors = self.resources.close_all()
        os.close(self.fd)
        if errors:
            raise errors[0]

    def __repr__(self) -> str:
        return f"<KernelBackend fd={self.fd} open={len(self.resources)}>"


KVM_HEADER = "/usr/include/linux/kvm.h"


def header_cap_number(path: str = KVM_HEADER) -> int | None:
    """``KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES`` as the installed uAPI header defines it, if it does (its number
    is unverified, linux-7.md 1.1: a header from the kernel under test is the best source)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    found = re.search(r"#define\s+KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES\s+(\d+)", text)
    return int(found.group(1)) if found else None


def open_kernel_backend(path: str = KVM_DEVICE) -> KernelBackend:
    """Open ``/dev/kvm`` and check it can run gmemlab; raises UnsupportedByBackend saying why not."""
    bad = abi.check_all_struct_sizes()
    if bad:
        raise UnsupportedByBackend(f"struct sizes disagree with their ioctl encodings: {bad}")
    if not os.path.exists(path):
        raise UnsupportedByBackend(f"{path} does not exist (no KVM on this machine)")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsupportedByBackend(
            f"cannot open {path}: {errno.errorcode.get(exc.errno or 0)} ({exc.strerror})"
        ) from None
    try:
        version = libc.ioctl(fd, uapi.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        if version != KVM_API_VERSION:
            raise UnsupportedByBackend(f"{path}: KVM_GET_API_VERSION = {version}, expected {KVM_API_VERSION}")
        for cap in (Cap.GUEST_MEMFD, Cap.USER_MEMORY2, Cap.IMMEDIATE_EXIT):
            if libc.ioctl(fd, uapi.KVM_CHECK_EXTENSION, int(cap), "KVM_CHECK_EXTENSION") <= 0:
                raise UnsupportedByBackend(f"{path}: KVM_CAP_{cap.name} = 0")
        return KernelBackend(fd)
    except KvmError as exc:
        os.close(fd)
        raise UnsupportedByBackend(f"{path}: {exc}") from None
    except BaseException:
        os.close(fd)
        raise
