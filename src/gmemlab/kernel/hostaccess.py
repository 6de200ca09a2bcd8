"""Host accesses that can fault, observed without a signal: ``process_vm_readv``/``process_vm_writev``.

A direct load or store to a guest_memfd mapping beyond EOF, or to a gmem without INIT_SHARED, kills the
process with SIGBUS (realkernel.md #128-#140, #160-#161). Instead of touching the memory with the CPU, the
backend moves the bytes with ``process_vm_readv``/``process_vm_writev`` on **its own pid**. Those go
through GUP (``pin_user_pages_remote`` in ``mm/process_vm_access.c``), which runs the very same fault
handler (``kvm_gmem_fault_user_mapping``) as a CPU access; where the CPU would get ``VM_FAULT_SIGBUS``, GUP
returns ``-EFAULT`` and the syscall reports how many bytes it moved before that. GUP on a shared gmem
mapping is known to work here (#146).

To know exactly which page failed, the remote side is split into one iovec per page, so the transfer
stops at a page boundary and the count is ``(failing page) - start``. Pages are processed in ascending
order and the bytes of pages before the failing one are really transferred, like a ``memset`` that dies
on its first bad page. ``tests/kernel/test_hostaccess.py`` proves the equivalence against a forked child
that performs the direct CPU access.

What GUP cannot tell apart is *why* it failed: EFAULT also comes back for a store through a
``PROT_READ`` mapping (the CPU would raise SIGSEGV). The caller resolves that from the protection it
mapped with (:mod:`gmemlab.kernel.mapping`).
"""

from __future__ import annotations

import ctypes
import errno
import os

from ..uapi import PAGE_SIZE
from . import libc

IOV_MAX = 1024


def _iovecs(bases: list[int], lengths: list[int]) -> ctypes.Array[ctypes.c_uint64]:
    """A ``struct iovec[]`` as a flat array of (iov_base, iov_len) u64 pairs, built in one C-level call."""
    flat = [0] * (2 * len(bases))
    flat[0::2] = bases
    flat[1::2] = lengths
    return (ctypes.c_uint64 * len(flat))(*flat)


def _transfer(addr: int, length: int, local_base: int, local_pattern: bool, write: bool,
              pid: int | None = None) -> int:
    """Move bytes page by page; returns the number of bytes moved before the first failing page.

    ``local_base`` is the local buffer; with ``local_pattern`` every page reuses the same local page (for
    fills), otherwise the local buffer is contiguous.
    """
    # The process whose memory is accessed: ours by default (looked up each time: a forked child must use its
    # own address space), or a forked child of ours (kernel/process.py): GUP then faults in *its* page tables.
    pid = os.getpid() if pid is None else pid
    op = libc.process_vm_writev if write else libc.process_vm_readv
    end = addr + length
    # remote runs: the first up to the next page boundary, then whole pages, the last clipped to ``end``
    bases = [addr, *range((addr // PAGE_SIZE + 1) * PAGE_SIZE, end, PAGE_SIZE)]
    lengths = [b2 - b1 for b1, b2 in zip(bases, [*bases[1:], end], strict=True)]
    done = 0
    for i in range(0, len(bases), IOV_MAX):
        rb, rl = bases[i : i + IOV_MAX], lengths[i : i + IOV_MAX]
        if local_pattern:
            lb = [local_base + (b % PAGE_SIZE) for b in rb]
        else:
            lb = [local_base + (b - addr) for b in rb]
        remote, local = _iovecs(rb, rl), _iovecs(lb, rl)
        n = len(rb)
        want = rb[-1] + rl[-1] - rb[0]
        got = op(pid, ctypes.addressof(local), n, ctypes.addressof(remote), n)
        if got < 0:
            if -got == errno.EFAULT:
                return done
            raise OSError(-got, os.strerror(-got))
        done += got
        if got < want:
            return done
    return done


def read(addr: int, length: int, pid: int | None = None) -> tuple[bytes, int | None]:
    """Read ``length`` bytes at ``addr``: ``(bytes read, None)`` or ``(prefix, failing address)``."""
    buf = bytearray(length)
    view = (ctypes.c_char * length).from_buffer(buf)
    done = _transfer(addr, length, ctypes.addressof(view), False, write=False, pid=pid)
    del view
    return bytes(memoryview(buf)[:done]), (None if done == length else addr + done)


def write(addr: int, data: bytes, pid: int | None = None) -> int | None:
    """Write ``data`` at ``addr``; returns the failing address, or None."""
    buf = ctypes.c_char_p(bytes(data))  # keeps the bytes object alive; its buffer is read-only for us
    done = _transfer(addr, len(data), ctypes.cast(buf, ctypes.c_void_p).value or 0, False, write=True, pid=pid)
    return None if done == len(data) else addr + done


def fill(addr: int, length: int, byte: int, pid: int | None = None) -> int | None:
    """``memset(addr, byte, length)``; returns the failing address, or None."""
    page = ctypes.create_string_buffer(bytes([byte]) * PAGE_SIZE, PAGE_SIZE)
    done = _transfer(addr, length, ctypes.addressof(page), True, write=True, pid=pid)
    return None if done == length else addr + done


def pte_present(addr: int, pid: int | None = None) -> bool:
    """Whether a PTE maps the page at ``addr`` now: bit 63 of its ``/proc/PID/pagemap`` entry (readable without
    privileges; only the PFN is hidden from unprivileged readers)."""
    path = f"/proc/{'self' if pid is None else pid}/pagemap"
    with open(path, "rb") as f:
        f.seek((addr // PAGE_SIZE) * 8)
        entry = f.read(8)
    return len(entry) == 8 and bool(int.from_bytes(entry, "little") >> 63)
