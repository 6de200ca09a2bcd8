"""Host userspace mappings (``mmap``) of a guest_memfd or of anonymous shared memory, each in a reservation.

Every mapping is placed in the middle of a *reservation*: :data:`~gmemlab.backend.MAPPING_GUARD` bytes of
``PROT_NONE`` private anonymous memory on each side (reserved first, then the file mapped over its middle with
``MAP_FIXED``). Calls may address the guards (a range that runs past the end of the mapping, or starts before
it) and the kernel answers for them for real; nothing outside the reservation is ever passed to the kernel
(:func:`gmemlab.backend.check_reservation`), so no call can reach the Python process's own memory. ``munmap``
puts ``PROT_NONE`` memory back over the mapping (the reservation stays ours until the backend is closed), so
calls through an unmapped mapping also get the kernel's real answer for that range.

Reads, writes and fills go through :mod:`gmemlab.kernel.hostaccess` (GUP, never a CPU touch). Where GUP stops
at a page (``EFAULT``), a forked child touches that page with the CPU to learn the signal the kernel sends:

* SIGBUS (``kvm_gmem_fault_user_mapping`` returns ``VM_FAULT_SIGBUS``: page at or past ``i_size``, or a
  gmem without ``GUEST_MEMFD_FLAG_INIT_SHARED``) -> :class:`~gmemlab.errors.HostSigbus`;
* SIGSEGV (no access by the page's protection, a guard region, a guard marker) ->
  :class:`~gmemlab.errors.HostSigsegv`.

The offset in either exception is the page-aligned mapping offset of the first page that faulted (as the
model reports it); bytes before that page were transferred. Like the kernel, the mapping covers whole
pages: ``length`` is rounded up to the page size.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import faulthandler
import fcntl
import os
import signal
from collections.abc import Callable
from typing import NoReturn

from ..backend import MAPPING_GUARD, PROT_NONE, check_reservation
from ..errors import HostSigbus, HostSigsegv, KvmError, UnrepresentableArgument, UnsupportedByBackend
from ..uapi import PAGE_SIZE, GmemFlags618, c_signed, c_value
from . import hostaccess, libc
from .resources import Resources

F_SETPIPE_SZ = 1031
GUARD_FLAGS = libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE
MAP_FIXED_NOREPLACE = 0x100000


def map_in_reservation(length: int, prot: int, flags: int, fd: int, offset: int, reason: str) -> tuple[int, int]:
    """``mmap(length, prot, flags, fd, offset)`` in the middle of a fresh reservation: ``(base, address)``.

    Errors are the real mmap's. ``flags`` may not place the mapping itself (MAP_FIXED*): gmemlab does."""
    if flags & (libc.MAP_FIXED | MAP_FIXED_NOREPLACE):
        raise UnsupportedByBackend("MAP_FIXED / MAP_FIXED_NOREPLACE: gmemlab places every mapping itself")
    pages = -(-length // PAGE_SIZE)
    total = pages * PAGE_SIZE + 2 * MAPPING_GUARD
    # The mapping starts on a 2 MiB boundary (1 GiB from 1 GiB up), where the model places it: where a fault
    # lands in its page table decides what the kernel maps around it (fault-around, huge pages).
    align = 1 << 30 if length >= 1 << 30 else 1 << 21
    try:
        raw = libc.mmap(total + align, PROT_NONE, GUARD_FLAGS, reason="reservation for a mapping")
    except KvmError as exc:
        # No room for the reservation: the plain mmap gives its own answer (an error, nearly always).
        if exc.errno != errno.ENOMEM:
            raise
        plain = libc.mmap(length, prot, flags, fd, offset, reason=reason)
        libc.munmap(plain, length)
        raise UnsupportedByBackend(f"no room for a {MAPPING_GUARD:#x}-byte guard on each side of {length:#x} "
                                   "bytes") from None
    base = ((raw + MAPPING_GUARD + align - 1) & ~(align - 1)) - MAPPING_GUARD
    if base > raw:
        libc.munmap(raw, base - raw)
    if raw + align > base:
        libc.munmap(base + total, raw + align - base)
    try:
        address = libc.mmap(length, prot, flags | libc.MAP_FIXED, fd, offset, addr=base + MAPPING_GUARD,
                            reason=reason)
    except BaseException:
        libc.munmap(base, total)
        raise
    return base, address


MADV_DOFORK, MADV_DONTFORK, MADV_WIPEONFORK, MADV_KEEPONFORK = 11, 10, 18, 19
# VmFlags (smaps) a forked child sees differently, and the advice pair that clears and restores each: a
# MADV_DONTFORK VMA is not copied, a MADV_WIPEONFORK one is copied empty (no pages, no guard markers)
FORK_FLAGS = {"dc": (MADV_DOFORK, MADV_DONTFORK), "wf": (MADV_KEEPONFORK, MADV_WIPEONFORK)}


def fork_flags(address: int, smaps: str = "/proc/self/smaps") -> list[str]:
    """The VmFlags of the VMA holding ``address`` that change what a forked child has there (``dc``
    MADV_DONTFORK, ``wf`` MADV_WIPEONFORK)."""
    inside = False
    with open(smaps) as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                lo, _, hi = head.partition("-")
                inside = int(lo, 16) <= address < int(hi, 16)
            elif inside and head == "VmFlags:":
                return [flag for flag in line.split()[1:] if flag in FORK_FLAGS]
    return []


def cpu_touch(address: int, write: bool, value: bytes) -> str:
    """Touch ``address`` with the CPU in a forked child of the calling process: the signal it dies of, or
    "ok". A write stores ``value`` (one byte). A MADV_DONTFORK or MADV_WIPEONFORK page is made plainly forkable
    for the fork and restored right after it in this process (else the child would not have it, or have it
    empty, without its guard markers, and not get what this process gets; host fuzz run, seed 929)."""
    page = address & ~(PAGE_SIZE - 1)
    flags = fork_flags(address)
    for flag in flags:
        libc.madvise(page, PAGE_SIZE, FORK_FLAGS[flag][0], f"forking a child to touch a page with VmFlag {flag}")
    pid = os.fork()
    if pid:
        for flag in flags:
            libc.madvise(page, PAGE_SIZE, FORK_FLAGS[flag][1], f"restoring VmFlag {flag} after the fork")
    if pid == 0:  # child: no Python-level handlers, die of the signal like a C program
        try:
            faulthandler.disable()
            signal.signal(signal.SIGBUS, signal.SIG_DFL)
            signal.signal(signal.SIGSEGV, signal.SIG_DFL)
            if write:
                ctypes.memmove(address, value, 1)
            else:
                ctypes.string_at(address, 1)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else "ok"


Toucher = Callable[[int, bool, bytes], str]


def vma_perms(address: int, pid: int | None = None) -> str | None:
    """The permissions (``rwxs``/``rw-p``...) of the VMA holding ``address`` in ``/proc/PID/maps``, or None."""
    with open(f"/proc/{'self' if pid is None else pid}/maps") as maps:
        for line in maps:
            span, perms = line.split(None, 2)[:2]
            lo, _, hi = span.partition("-")
            if int(lo, 16) <= address < int(hi, 16):
                return perms
    return None


def _cpu_signal(address: int, write: bool, pid: int | None = None, touch: Toucher = cpu_touch) -> str:
    """The signal a CPU access at ``address`` gets, where GUP just failed. Decided from the VMA's permissions
    when they refuse the access (the CPU checks them before any fault handler: SIGSEGV, nothing touched);
    otherwise a forked child makes the access (a store of 0: GUP's own store failed there, so the fault handler
    refuses it too, and a refused fault changes nothing)."""
    perms = vma_perms(address, pid)
    if perms is None or (write and perms[1] != "w") or perms[:3] == "---":
        return "SIGSEGV"
    return touch(address, write, b"\0")


def _no_cpu_read(address: int, length: int) -> bytes:
    raise UnsupportedByBackend("a CPU read in a process that cannot be asked for one")


class PipeRefs:
    """A pipe that holds page references after vmsplice; ``unpin`` (closing it) drops them."""

    def __init__(self, read_fd: int, write_fd: int, resources: Resources | None = None) -> None:
        self.fds = [read_fd, write_fd]
        self._resources = resources
        if resources is not None:
            resources.add(self)

    def unpin(self) -> None:
        while self.fds:
            os.close(self.fds.pop())
        if self._resources is not None:
            self._resources.discard(self)

    close = unpin


class KernelHostMapping:
    """A real ``mmap`` at :attr:`address` of :attr:`length` bytes inside the reservation at :attr:`base`.

    ``file_offset`` is the ``mmap`` offset into the gmem (0 for anonymous memory); ``gmem_size`` and
    ``gmem_flags`` (None for anonymous memory) only serve to explain a SIGBUS in its reason.
    """

    def __init__(
        self,
        address: int,
        length: int,
        prot: int,
        file_offset: int = 0,
        gmem_size: int | None = None,
        gmem_flags: int | None = None,
        on_unmap: Callable[[KernelHostMapping], None] | None = None,
        base: int | None = None,
        pid: int | None = None,
        resources: Resources | None = None,
        touch: Toucher = cpu_touch,
        cpu_read: Callable[[int, int], bytes] = ctypes.string_at,
    ) -> None:
        self._cpu_read = cpu_read  # a CPU read by the process owning this view, once proven safe
        self._resources = resources  # where pipes from vmsplice register, so close_all() closes them
        self.pid = pid  # None: this process; else a forked child of it that inherited the mapping
        self._touch = touch  # a CPU touch in the process that owns this view (for SIGBUS vs SIGSEGV)
        self.address = address
        self.length = length
        self.prot = prot
        self.file_offset = file_offset
        self.gmem_size = gmem_size
        self.gmem_flags = gmem_flags
        self.mapped = True
        self.base = address - MAPPING_GUARD if base is None else base
        self._on_unmap = on_unmap

    @property
    def mapped_length(self) -> int:
        """What the VMA really covers: ``length`` rounded up to whole pages."""
        return -(-self.length // PAGE_SIZE) * PAGE_SIZE

    def _in_this_process(self, op: str) -> None:
        if self.pid is not None:
            raise UnsupportedByBackend(f"{op} on a forked child's view of a mapping (it would act on this process)")

    def _range(self, op: str, offset: int, length: int) -> tuple[int, int]:
        return check_reservation(op, offset, length, self.mapped_length)

    def _sigbus_reason(self, offset: int) -> str:
        if self.gmem_size is None:
            return "anonymous memory refused the fault"
        pos = self.file_offset + offset
        if pos >= self.gmem_size:
            return f"fault beyond i_size (file offset {pos:#x} >= size {self.gmem_size:#x})"
        if not (self.gmem_flags or 0) & GmemFlags618.INIT_SHARED:
            return "guest_memfd without INIT_SHARED: host faults are refused (private memory)"
        return "guest_memfd refused the host fault"

    def _fail(self, fail_addr: int, write: bool) -> NoReturn:
        off = fail_addr - self.address
        off -= off % PAGE_SIZE
        what = _cpu_signal(self.address + off, write, self.pid, self._touch)
        if what == "SIGBUS":
            raise HostSigbus(off, write, self._sigbus_reason(off))
        if what == "SIGSEGV":
            if not 0 <= off < self.mapped_length:
                reason = "a guard region around the mapping (outside it)"
            elif not self.mapped:
                reason = "the mapping was unmapped (PROT_NONE reservation)"
            else:
                reason = "no access to this page (protection or guard marker)"
            raise HostSigsegv(off, write, reason)
        raise KvmError(errno.EFAULT, "process_vm_" + ("writev" if write else "readv"),
                       f"GUP failed at mapping offset {off:#x} but a CPU touch there succeeded ({what})")

    # -- HostMapping protocol --------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        offset, length = self._range("host read", offset, length)
        if length == 0:
            return b""
        data, fail = hostaccess.read(self.address + offset, length, self.pid)
        while fail is not None:
            # GUP reads only VM_READ pages; the CPU also reads exec-only and write-only ones (x86). Once a
            # forked child's CPU read of such a page succeeded, this process reads it with the CPU itself (as
            # the access it stands for would, faulting it into this process's page tables); then GUP goes on.
            page = fail - fail % PAGE_SIZE
            perms = vma_perms(page, self.pid)
            if perms is None or perms[0] == "r" or _cpu_signal(page, False, self.pid, self._touch) != "ok":
                self._fail(fail, False)
            end = min(page + PAGE_SIZE, self.address + offset + length)
            data += self._cpu_read(fail, end - fail)
            if end == self.address + offset + length:
                break
            more, fail = hostaccess.read(end, self.address + offset + length - end, self.pid)
            data += more
        return data

    def write(self, offset: int, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise UnrepresentableArgument("host write", "data", data, "bytes")
        offset, _ = self._range("host write", offset, len(data))
        if not data:
            return
        fail = hostaccess.write(self.address + offset, bytes(data), self.pid)
        if fail is not None:
            self._fail(fail, True)

    def fill(self, offset: int, length: int, byte: int) -> None:
        byte = c_value(byte, "unsigned char", "byte", "host fill")
        offset, length = self._range("host fill", offset, length)
        if length == 0:
            return
        fail = hostaccess.fill(self.address + offset, length, byte, self.pid)
        if fail is not None:
            self._fail(fail, True)

    def madvise(self, offset: int, length: int, advice: int) -> None:
        """``madvise(2)`` on ``[address+offset, +length)``; errors carry the kernel's errno."""
        self._in_this_process("madvise")
        advice = c_signed(advice, "int", "advice", "madvise")
        offset, length = self._range("madvise", offset, length)
        libc.madvise(self.address + offset, length, advice, f"offset {offset:#x} len {length:#x} advice {advice}")

    def mprotect(self, offset: int, length: int, prot: int) -> None:
        """``mprotect(2)`` on ``[address+offset, +length)``."""
        self._in_this_process("mprotect")
        prot = c_signed(prot, "int", "prot", "mprotect")
        offset, length = self._range("mprotect", offset, length)
        libc.mprotect(self.address + offset, length, prot)

    def mlock(self, offset: int, length: int, flags: int = 0) -> None:
        """``mlock2(2)`` on ``[address+offset, +length)`` (flags 0: mlock)."""
        self._in_this_process("mlock2")
        flags = c_value(flags, "int", "flags", "mlock2")
        offset, length = self._range("mlock2", offset, length)
        libc.mlock2(self.address + offset, length, flags)

    def munlock(self, offset: int, length: int) -> None:
        offset, length = self._range("munlock", offset, length)
        self._in_this_process("munlock")
        libc.munlock(self.address + offset, length)

    def mbind(self, offset: int, length: int, mode: int, nodemask: int, flags: int = 0) -> None:
        """``mbind(2)`` on ``[address+offset, +length)``."""
        self._in_this_process("mbind")
        mode = c_value(mode, "unsigned long", "mode", "mbind")
        nodemask = c_value(nodemask, "unsigned long", "nodemask", "mbind")
        flags = c_value(flags, "unsigned int", "flags", "mbind")
        offset, length = self._range("mbind", offset, length)
        libc.mbind(self.address + offset, length, mode, nodemask, flags)

    def get_mempolicy(self, offset: int) -> tuple[int, int]:
        """``get_mempolicy(MPOL_F_ADDR)`` at ``address+offset``: (mode, nodemask)."""
        self._in_this_process("get_mempolicy")
        offset, _ = self._range("get_mempolicy", offset, 1)
        return libc.get_mempolicy(self.address + offset)

    def page_nodes(self, offset: int, npages: int) -> list[int]:
        """``move_pages(2)`` status of each page: its node or a negative errno (-ENOENT: not present)."""
        self._in_this_process("move_pages")
        npages = c_value(npages, "unsigned long", "count", "move_pages")
        offset, _ = self._range("move_pages", offset, npages * PAGE_SIZE)
        return libc.move_pages_query([self.address + offset + i * PAGE_SIZE for i in range(npages)])

    def pin(self, offset: int, length: int) -> NoReturn:
        raise UnsupportedByBackend(
            "long-term GUP pin (FOLL_LONGTERM): no safe userspace mechanism on this host "
            "(no /sys/kernel/debug/gup_test)"
        )

    def vmsplice(self, offset: int, length: int) -> PipeRefs:
        """``vmsplice(2)`` of ``[offset, +length)`` into a new pipe: GUP (FOLL_GET) faults the pages in and the
        pipe holds a reference on each until :meth:`PipeRefs.unpin` closes it. EFAULT where a page cannot be
        faulted (private, past EOF)."""
        offset, length = self._range("vmsplice", offset, length)
        if self.pid is not None:
            raise UnsupportedByBackend("vmsplice from a forked child's mapping")
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        refs = PipeRefs(read_fd, write_fd, self._resources)
        try:
            # one pipe buffer per page touched (an unaligned range touches one more); never shrink the default
            # 16 (a smaller pipe would fill, and vmsplice would block: it is non-blocking here, EAGAIN instead)
            touched = (offset % PAGE_SIZE + length + PAGE_SIZE - 1) // PAGE_SIZE
            if touched > 16:
                with contextlib.suppress(OSError):
                    fcntl.fcntl(write_fd, F_SETPIPE_SZ, touched * PAGE_SIZE)
            done = 0
            while done < length:
                done += libc.vmsplice(write_fd, self.address + offset + done, length - done)
        except BaseException:
            refs.unpin()
            raise
        return refs

    def pte_present(self, offset: int) -> bool:
        """Whether a PTE maps the page at ``offset`` now (``/proc/PID/pagemap`` bit 63)."""
        offset, _ = self._range("pagemap", offset, 1)
        return hostaccess.pte_present(self.address + offset, self.pid)

    def inherited_by(self, pid: int, touch: Toucher,
                     cpu_read: Callable[[int, int], bytes] | None = None) -> KernelHostMapping:
        """The same mapping as a forked child ``pid`` sees it (accesses go through its page tables, ``touch``
        makes a CPU access there); unmapping it is the child's business (it exits)."""
        child = KernelHostMapping(self.address, self.length, self.prot, self.file_offset, self.gmem_size,
                                  self.gmem_flags, base=self.base, pid=pid, touch=touch,
                                  cpu_read=cpu_read or _no_cpu_read)
        child.munmap = lambda: None  # type: ignore[method-assign]
        child.close = lambda: None  # type: ignore[method-assign]
        return child

    def munmap(self) -> None:
        """``munmap``: PROT_NONE memory replaces the mapping; the reservation stays until :meth:`close`."""
        if not self.mapped:
            return
        libc.mmap(self.mapped_length, PROT_NONE, GUARD_FLAGS | libc.MAP_FIXED, addr=self.address,
                  reason="guard over an unmapped mapping")
        self.mapped = False

    def close(self) -> None:
        """Unmap and release the whole reservation (the backend does this for every mapping it made)."""
        if self.base:
            libc.munmap(self.base, self.mapped_length + 2 * MAPPING_GUARD)
            self.base = 0
            self.mapped = False
            if self._on_unmap is not None:
                self._on_unmap(self)

    def __repr__(self) -> str:
        kind = "anon" if self.gmem_size is None else f"gmem+{self.file_offset:#x}"
        return f"<KernelHostMapping {kind} {self.address:#x}+{self.length:#x} prot={self.prot}>"
