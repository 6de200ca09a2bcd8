"""The one interface both worlds implement: the executable model and the real ``/dev/kvm``.

DESIGN.md principle 2. The shape follows the uAPI: system (``/dev/kvm``) -> VM -> guest_memfd ->
host mapping / vCPU access. Every call either returns or raises what the kernel would:

* :class:`gmemlab.errors.KvmError` (an ``OSError`` with the kernel's errno) for a failing syscall;
* :class:`gmemlab.errors.ConversionError` with ``error_offset`` for a refused conversion (rfc-v2);
* :class:`gmemlab.errors.HostSigbus` / :class:`gmemlab.errors.HostSigsegv` for a host touch the
  kernel kills with a signal (the real backend observes it without dying);
* :class:`gmemlab.errors.VcpuExit` when ``KVM_RUN`` stops before a guest access completes;
* :class:`gmemlab.errors.UnsupportedByBackend` when the backend lacks the feature entirely (a
  conformance case then skips and names it).

Objects expose ``fd`` (a real fd number on the kernel, a number from the model's own fd table) so
cases can pass "an fd that is not a guest_memfd" or "a closed fd" to binding calls on both backends.
"""

from __future__ import annotations

import mmap as _mmap
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .errors import OutsideReservation
from .uapi import ApiProfile, VmType, c_value

PROT_NONE = _mmap.PROT_READ & 0  # 0
PROT_READ = _mmap.PROT_READ
PROT_WRITE = _mmap.PROT_WRITE
PROT_EXEC = getattr(_mmap, "PROT_EXEC", 4)
MAP_SHARED = _mmap.MAP_SHARED
MAP_PRIVATE = _mmap.MAP_PRIVATE
MAP_SHARED_VALIDATE = MAP_SHARED | MAP_PRIVATE  # 0x03: MAP_SHARED that also validates the flags

MADV_DONTNEED = 4
MADV_REMOVE = 9

# Every host mapping sits in a reservation: MAPPING_GUARD bytes of PROT_NONE private anonymous memory on each
# side of it (the kernel client maps the file over the middle of a reserved range with MAP_FIXED). Calls may
# address the guards (past the end of a mapping, or before it) and get the kernel's real answer for them;
# ranges that leave the reservation are refused on both backends by check_reservation().
MAPPING_GUARD = 16 << 20


def check_reservation(op: str, offset: object, length: object, mapped_length: int) -> tuple[int, int]:
    """``(offset, length)`` of a call on a mapping of ``mapped_length`` bytes (page-rounded), with ``length``
    read as the ``size_t`` the syscall gets; raises :class:`~gmemlab.errors.OutsideReservation` when the range
    leaves ``[-MAPPING_GUARD, mapped_length + MAPPING_GUARD)``."""
    lo, hi = -MAPPING_GUARD, mapped_length + MAPPING_GUARD
    size = c_value(length, "size_t", "length", op)  # an int that fits size_t, or UnrepresentableArgument
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise OutsideReservation(op, offset, length, lo, hi)
    if not lo <= offset <= hi or offset + size > hi:
        raise OutsideReservation(op, offset, length, lo, hi)
    return offset, size


# The guest code :meth:`Vcpu.execute` runs: ``mov eax, imm32; jmp r13`` (x86-64). r13 holds the address of the
# backend's own report routine, outside the memory under test: the fetch of the stub is the access under test, and
# the report that follows (an emulated MMIO store on the kernel backend) is fetched by KVM's instruction emulator
# through a memslot it can read (realkernel.md #277: the emulator reads code through userspace_addr, never from a
# private guest_memfd page).
_STUB_HEAD, _STUB_TAIL = b"\xb8", bytes.fromhex("41 FF E5")
REPORT_STUB_SIZE = len(_STUB_HEAD) + 4 + len(_STUB_TAIL)


def report_stub(value: int) -> bytes:
    """Guest code that reports the 32-bit ``value`` when executed (see :meth:`Vcpu.execute`)."""
    if not 0 <= value < 1 << 32:
        raise ValueError(f"report value {value!r} does not fit in 32 bits")
    return _STUB_HEAD + value.to_bytes(4, "little") + _STUB_TAIL


def decode_report_stub(code: bytes) -> int | None:
    """The value :func:`report_stub` code reports, or None if ``code`` is not such a stub."""
    if len(code) != REPORT_STUB_SIZE or not code.startswith(_STUB_HEAD) or not code.endswith(_STUB_TAIL):
        return None
    return int.from_bytes(code[len(_STUB_HEAD) : len(_STUB_HEAD) + 4], "little")


@dataclass(frozen=True)
class FileStat:
    """The fields of ``fstat`` that guest_memfd defines (spec 2.3)."""

    st_size: int
    st_blksize: int
    st_blocks: int
    st_ino: int


@runtime_checkable
class HasFd(Protocol):
    fd: int


class HostMapping(Protocol):
    """A host userspace mapping (``mmap``) of a guest_memfd or of anonymous shared memory.

    Offsets are relative to the start of the mapping. An access that crosses pages is performed page by
    page in ascending order and stops at the first page the kernel refuses (SIGBUS/SIGSEGV), like a
    ``memset`` would; bytes before it have been written.
    """

    address: int
    length: int

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def fill(self, offset: int, length: int, byte: int) -> None: ...

    def madvise(self, offset: int, length: int, advice: int) -> None: ...

    def mprotect(self, offset: int, length: int, prot: int) -> None: ...

    def mlock(self, offset: int, length: int, flags: int = 0) -> None:
        """``mlock2(2)`` (flags 0 is ``mlock``)."""
        ...

    def munlock(self, offset: int, length: int) -> None: ...

    def mbind(self, offset: int, length: int, mode: int, nodemask: int, flags: int = 0) -> None:
        """``mbind(2)`` on the pages under ``[offset, offset+length)``."""
        ...

    def get_mempolicy(self, offset: int) -> tuple[int, int]:
        """``get_mempolicy(MPOL_F_ADDR)``: ``(mode, nodemask)`` at ``offset``."""
        ...

    def page_nodes(self, offset: int, npages: int) -> list[int]:
        """``move_pages(2)`` query: the node of each page, ``-ENOENT`` where none is mapped."""
        ...

    def pin(self, offset: int, length: int) -> LongTermPin:
        """Long-term GUP pin (``FOLL_LONGTERM``) of the pages under ``[offset, offset+length)``."""
        ...

    def vmsplice(self, offset: int, length: int) -> PageReferences:
        """``vmsplice(2)`` of the pages into a pipe: plain page references (not DMA pins) held until ``unpin``
        closes the pipe; a transient reference in-place conversion refuses (realkernel-private.md finding 3)."""
        ...

    def pte_present(self, offset: int) -> bool:
        """Whether a host PTE maps the page at ``offset`` now (``/proc/self/pagemap`` bit 63)."""
        ...

    def munmap(self) -> None: ...


class PageReferences(Protocol):
    """Plain page references (a pipe after vmsplice); ``unpin`` drops them (closes the pipe)."""

    def unpin(self) -> None: ...


class LongTermPin(Protocol):
    """A ``pin_user_pages(FOLL_LONGTERM)`` pin on host-mapped guest_memfd pages (e.g. VFIO)."""

    def unpin(self) -> None: ...


class GuestMemfd(Protocol):
    """A guest_memfd file (``KVM_CREATE_GUEST_MEMFD``)."""

    fd: int
    size: int
    flags: int

    def fallocate(self, mode: int, offset: int, length: int) -> None: ...

    def mmap(
        self, length: int, offset: int = 0, prot: int = PROT_READ | PROT_WRITE, flags: int = MAP_SHARED
    ) -> HostMapping: ...

    def fstat(self) -> FileStat: ...

    # Generic file operations, all of which guest_memfd refuses (spec 2.3).
    def read(self, length: int) -> bytes: ...

    def write(self, data: bytes) -> int: ...

    def pread(self, length: int, offset: int) -> bytes: ...

    def pwrite(self, data: bytes, offset: int) -> int: ...

    def lseek(self, offset: int, whence: int) -> int: ...

    def ftruncate(self, length: int) -> None: ...

    # Generic file and process operations, as far as guest_memfd defines them (realkernel #99-#113).
    def fsync(self, datasync: bool = False) -> None:
        """``fsync(2)`` / ``fdatasync(2)``."""
        ...

    def fchmod(self, mode: int) -> None: ...

    def fchown(self, uid: int, gid: int) -> None: ...

    def fadvise(self, offset: int, length: int, advice: int) -> None:
        """``posix_fadvise(2)``."""
        ...

    def flock(self, operation: int) -> None: ...

    def fcntl(self, cmd: int, arg: int = 0) -> int:
        """``fcntl(2)`` with an integer argument (F_GETFD, F_SETFL, F_ADD_SEALS, ...)."""
        ...

    def dup(self) -> GuestMemfd:
        """``dup(2)``: another fd of the same open file."""
        ...

    def convert(self, offset: int, size: int, to_shared: bool, error_offset: int = 0) -> None:
        """RFC2 ``KVM_GMEM_CONVERT_SHARED`` / ``KVM_GMEM_CONVERT_PRIVATE`` (spec 2.14)."""
        ...

    def set_memory_attributes2(
        self,
        offset: int,
        size: int,
        attributes: int,
        flags: int = 0,
        error_offset: int = 0,
        reserved: tuple[int, ...] = (),
    ) -> int:
        """``KVM_SET_MEMORY_ATTRIBUTES2`` (in-place conversion, linux-7.md 1.2): returns the struct's
        ``error_offset`` after the call; errors raise :class:`gmemlab.errors.ConversionError` carrying it."""
        ...

    def ioctl(self, number: int, arg: bytes | int = 0) -> int:
        """``ioctl(fd, number, arg)``: ``arg`` is the argument's bytes or a raw address (e.g. an unmapped one)."""
        ...

    def close(self) -> None: ...


class Vcpu(Protocol):
    """A vCPU that performs guest accesses at guest physical addresses.

    ``private`` selects the access type for VMs with private memory: ``None`` lets the VM decide
    (attribute-driven for SW_PROTECTED, always shared for the default VM).
    """

    def read(self, gpa: int, length: int, private: bool | None = None) -> bytes: ...

    def write(self, gpa: int, data: bytes, private: bool | None = None) -> None: ...

    def execute(self, gpa: int, private: bool | None = None) -> int:
        """Jump to ``gpa`` and run the :func:`report_stub` code there; returns the value it reported.

        The instruction fetch is a guest access like a read (same fault routing, memory-fault exits, MMIO for a
        shared GPA without memslot); an exit before the report raises :class:`gmemlab.errors.VcpuExit`. Code that
        is not a report stub is :class:`gmemlab.errors.UnsupportedByBackend` on the model.
        """
        ...

    def pre_fault_memory(self, gpa: int, size: int, flags: int = 0) -> tuple[int, int]:
        """``KVM_PRE_FAULT_MEMORY`` (spec 2.10): map ``[gpa, gpa + size)`` into stage 2 as the vCPU's read faults
        would, without running it. Returns ``(gpa, size)`` as the kernel writes them back: the range not yet
        mapped (size 0 when done). Raises :class:`gmemlab.errors.KvmError` when no page could be mapped."""
        ...

    def close(self) -> None: ...


class Vm(Protocol):
    fd: int

    @property
    def vm_type(self) -> int:
        """The ``KVM_CREATE_VM`` type: a :class:`VmType`, or a plain number for a type gmemlab does not know."""
        ...

    def check_extension(self, cap: int) -> int: ...

    def create_guest_memfd(self, size: int, flags: int = 0, reserved: tuple[int, ...] = ()) -> GuestMemfd: ...

    def set_user_memory_region2(
        self,
        slot: int,
        flags: int,
        guest_phys_addr: int,
        memory_size: int,
        userspace_addr: int = 0,
        guest_memfd: HasFd | int | None = None,
        guest_memfd_offset: int = 0,
    ) -> None: ...

    def set_user_memory_region(
        self, slot: int, flags: int, guest_phys_addr: int, memory_size: int, userspace_addr: int = 0
    ) -> None: ...

    def set_memory_attributes(self, address: int, size: int, attributes: int, flags: int = 0) -> None: ...

    def create_vcpu(self, vcpu_id: int = 0) -> Vcpu: ...

    def ioctl(self, number: int, arg: bytes | int = 0) -> int:
        """``ioctl(vm_fd, number, arg)`` for numbers without a typed method (unknown ones are ENOTTY)."""
        ...

    def close(self) -> None: ...


class Process(Protocol):
    """A child of the VMM process made by ``fork()``: it inherits the mappings and fds; KVM refuses its VM
    ioctls with EIO (``kvm->mm != current->mm``, realkernel.md #80)."""

    pid: int

    def mapping(self, parent: HostMapping) -> HostMapping:
        """The child's copy of a mapping the parent had when it forked; accesses are made by the child."""
        ...

    def check_extension(self, vm: HasFd, cap: int) -> int: ...

    def create_guest_memfd(self, vm: HasFd, size: int, flags: int = 0) -> object: ...

    def exit(self) -> None: ...


class Backend(Protocol):
    """The system: ``/dev/kvm`` of the running kernel, or the model's simulated one."""

    name: str
    profile: ApiProfile
    fd: int

    def check_extension(self, cap: int) -> int: ...

    def vm_types(self) -> list[VmType]:
        """The VM types ``KVM_CREATE_VM`` accepts (``KVM_CAP_VM_TYPES``)."""
        ...

    def create_vm(self, vm_type: int = 0) -> Vm: ...

    def mmap_anonymous(self, length: int) -> HostMapping:
        """Anonymous ``MAP_SHARED`` memory, for non-guest_memfd memslots."""
        ...

    def memfd_create(self, size: int) -> HasFd:
        """A regular memfd (a file that is *not* a guest_memfd, for binding checks)."""
        ...

    def nr_numa_nodes(self) -> int:
        """Online NUMA nodes of the host."""
        ...

    def mm_features(self) -> dict[str, bool]:
        """Which mm features that change answers the kernel was built with: ``ksm`` (CONFIG_KSM: MADV_[UN]MERGEABLE)
        and ``transparent_hugepage`` (MADV_[NO]HUGEPAGE, MADV_COLLAPSE); see :mod:`gmemlab.hostfacts`."""
        ...

    def guest_gpa_window(self) -> tuple[int, int]:
        """``[lo, hi)``: GPAs where cases may place memslots that vCPUs can access."""
        ...

    def reserved_slots(self) -> frozenset[int]:
        """Memslot ids the backend uses itself (the kernel backend's guest code slot)."""
        ...

    def fork(self) -> Process:
        """``fork()`` a child of the VMM process (see :class:`Process`)."""
        ...

    def ioctl(self, number: int, arg: bytes | int = 0) -> int:
        """``ioctl(/dev/kvm, number, arg)`` for numbers without a typed method (unknown ones are EINVAL)."""
        ...

    def inject_fault(self, site: str, times: int = 1) -> None:
        """Make the next ``times`` passes through ``site`` fail (model only; e.g. ``mtree_preallocate``: the
        attribute tree's preallocation, ENOMEM). The kernel backend raises UnsupportedByBackend."""
        ...

    def close(self) -> None: ...
