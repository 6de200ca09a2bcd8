"""Host userspace mappings (``mmap``) of a guest_memfd or of anonymous shared memory.

Reads, writes and fills go through :mod:`gmemlab.kernel.hostaccess` (GUP, never a CPU touch), so the
faults the kernel answers with a signal become exceptions, as the model raises them:

* SIGBUS (``kvm_gmem_fault_user_mapping`` returns ``VM_FAULT_SIGBUS``: page at or past ``i_size``, or a
  gmem without ``GUEST_MEMFD_FLAG_INIT_SHARED``) -> :class:`~gmemlab.errors.HostSigbus`;
* SIGSEGV (store through a mapping without ``PROT_WRITE``, any access through ``PROT_NONE``, outside the
  mapping or after ``munmap``) -> :class:`~gmemlab.errors.HostSigsegv`.

The offset in either exception is the page-aligned mapping offset of the first page that faulted (as the
model reports it); bytes before that page were transferred. Like the kernel, the mapping covers whole
pages: ``length`` is rounded up to the page size for access checks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable
from typing import NoReturn

from ..backend import PROT_READ, PROT_WRITE
from ..errors import HostSigbus, HostSigsegv, KvmError, UnsupportedByBackend
from ..uapi import PAGE_SIZE, GmemFlags618
from . import hostaccess, libc
from .resources import Resources

F_SETPIPE_SZ = 1031


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
    """A real ``mmap`` at :attr:`address` of :attr:`length` bytes.

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
        pid: int | None = None,
        resources: Resources | None = None,
    ) -> None:
        self._resources = resources  # where pipes from vmsplice register, so close_all() closes them
        self.pid = pid  # None: this process; else a forked child of it that inherited the mapping
        self.address = address
        self.length = length
        self.prot = prot
        self.file_offset = file_offset
        self.gmem_size = gmem_size
        self.gmem_flags = gmem_flags
        self.mapped = True
        self._on_unmap = on_unmap

    # -- checks ----------------------------------------------------------------------------------
    @property
    def mapped_length(self) -> int:
        """What the VMA really covers: ``length`` rounded up to whole pages."""
        return -(-self.length // PAGE_SIZE) * PAGE_SIZE

    def _segv_before(self, offset: int, length: int, write: bool) -> None:
        """Raise HostSigsegv if the access faults with SIGSEGV at its very first page."""
        if offset < 0:
            raise HostSigsegv(offset, write, "negative offset")
        page = offset - offset % PAGE_SIZE
        if not self.mapped:
            raise HostSigsegv(page, write, "mapping was unmapped")
        if offset >= self.mapped_length:
            raise HostSigsegv(page, write, f"outside the mapping (length {self.length:#x})")
        if not self.prot & PROT_READ and not self.prot & PROT_WRITE:
            raise HostSigsegv(page, write, "PROT_NONE mapping")
        if write and not self.prot & PROT_WRITE:
            raise HostSigsegv(page, write, "write through a mapping without PROT_WRITE")

    def _sigbus_reason(self, offset: int) -> str:
        if self.gmem_size is None:
            return "anonymous memory refused the fault"
        pos = self.file_offset + offset
        if pos >= self.gmem_size:
            return f"fault beyond i_size (file offset {pos:#x} >= size {self.gmem_size:#x})"
        if not (self.gmem_flags or 0) & GmemFlags618.INIT_SHARED:
            return "guest_memfd without INIT_SHARED: host faults are refused (private memory)"
        return "guest_memfd refused the host fault"

    def _fail(self, offset: int, fail_addr: int, write: bool) -> None:
        off = fail_addr - self.address
        off -= off % PAGE_SIZE
        raise HostSigbus(off, write, self._sigbus_reason(off))

    def _clip(self, offset: int, length: int) -> int:
        """Length of the part of the access inside the mapping."""
        return max(0, min(length, self.mapped_length - offset))

    def _past_end(self, offset: int, length: int, write: bool) -> None:
        if offset + length > self.mapped_length:
            raise HostSigsegv(self.mapped_length, write, f"outside the mapping (length {self.length:#x})")

    # -- HostMapping protocol --------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        self._segv_before(offset, length, False)
        inside = self._clip(offset, length)
        data, fail = hostaccess.read(self.address + offset, inside, self.pid)
        if fail is not None:
            self._fail(offset, fail, False)
        self._past_end(offset, length, False)
        return data

    def write(self, offset: int, data: bytes) -> None:
        if not data:
            return
        self._segv_before(offset, len(data), True)
        inside = self._clip(offset, len(data))
        fail = hostaccess.write(self.address + offset, bytes(data[:inside]), self.pid)
        if fail is not None:
            self._fail(offset, fail, True)
        self._past_end(offset, len(data), True)

    def fill(self, offset: int, length: int, byte: int) -> None:
        if length <= 0:
            return
        self._segv_before(offset, length, True)
        inside = self._clip(offset, length)
        fail = hostaccess.fill(self.address + offset, inside, byte & 0xFF, self.pid)
        if fail is not None:
            self._fail(offset, fail, True)
        self._past_end(offset, length, True)

    def madvise(self, offset: int, length: int, advice: int) -> None:
        """``madvise(2)`` on ``[address+offset, +length)``; errors carry the kernel's errno."""
        if not self.mapped:
            raise KvmError(errno.ENOMEM, "madvise", "mapping was unmapped")
        libc.madvise(self.address + offset, length, advice, f"offset {offset:#x} len {length:#x} advice {advice}")

    def mbind(self, offset: int, length: int, mode: int, nodemask: int, flags: int = 0) -> None:
        """``mbind(2)`` on ``[address+offset, +length)``."""
        if not self.mapped:
            raise KvmError(errno.EFAULT, "mbind", "mapping was unmapped")
        libc.mbind(self.address + offset, length, mode, nodemask, flags)

    def get_mempolicy(self, offset: int) -> tuple[int, int]:
        """``get_mempolicy(MPOL_F_ADDR)`` at ``address+offset``: (mode, nodemask)."""
        if not self.mapped:
            raise KvmError(errno.EFAULT, "get_mempolicy", "mapping was unmapped")
        return libc.get_mempolicy(self.address + offset)

    def page_nodes(self, offset: int, npages: int) -> list[int]:
        """``move_pages(2)`` status of each page: its node or a negative errno (-ENOENT: not present)."""
        if not self.mapped:
            raise KvmError(errno.EFAULT, "move_pages", "mapping was unmapped")
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
        self._segv_before(offset, length, False)
        if self.pid is not None:
            raise UnsupportedByBackend("vmsplice from a forked child's mapping")
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        refs = PipeRefs(read_fd, write_fd, self._resources)
        try:
            with contextlib.suppress(OSError):  # a bigger pipe if allowed; the default holds 16 pages
                fcntl.fcntl(write_fd, F_SETPIPE_SZ, max(length, PAGE_SIZE))
            done = 0
            while done < length:
                done += libc.vmsplice(write_fd, self.address + offset + done, length - done)
        except BaseException:
            refs.unpin()
            raise
        return refs

    def pte_present(self, offset: int) -> bool:
        """Whether a PTE maps the page at ``offset`` now (``/proc/PID/pagemap`` bit 63)."""
        if not self.mapped:
            return False
        return hostaccess.pte_present(self.address + offset, self.pid)

    def inherited_by(self, pid: int) -> KernelHostMapping:
        """The same mapping as a forked child ``pid`` sees it (accesses go through its page tables); unmapping it
        is the child's business (it exits)."""
        child = KernelHostMapping(self.address, self.length, self.prot, self.file_offset, self.gmem_size,
                                  self.gmem_flags, pid=pid)
        child.munmap = lambda: None  # type: ignore[method-assign]
        return child

    def munmap(self) -> None:
        if not self.mapped:
            return
        libc.munmap(self.address, self.length)
        self.mapped = False
        if self._on_unmap is not None:
            self._on_unmap(self)

    close = munmap

    def __repr__(self) -> str:
        kind = "anon" if self.gmem_size is None else f"gmem+{self.file_offset:#x}"
        return f"<KernelHostMapping {kind} {self.address:#x}+{self.length:#x} prot={self.prot}>"
