"""Thin ctypes bindings to the libc system-call wrappers the kernel backend drives.

Python's own wrappers hide what the conformance cases need to see: ``os.posix_fallocate`` falls back to
writing when ``fallocate(2)`` says EOPNOTSUPP (realkernel.md #109), the :mod:`mmap` module hides the
address and retries nothing we want retried, and ``fcntl.ioctl`` cannot pass a struct by pointer without
copying. Every wrapper here returns the raw result and raises :class:`~gmemlab.errors.KvmError` with the
kernel's errno (read with ``ctypes.get_errno`` right after the call) and the operation's name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

from ..errors import KvmError

_libc = ctypes.CDLL(None, use_errno=True)

c_void_p = ctypes.c_void_p
c_int = ctypes.c_int
c_long = ctypes.c_long
c_ulong = ctypes.c_ulong
c_size_t = ctypes.c_size_t
c_ssize_t = ctypes.c_ssize_t
c_int64 = ctypes.c_int64

MAP_FAILED = ctypes.c_void_p(-1).value

# mmap(2) flags not exported by the mmap module on every Python
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_SHARED_VALIDATE = 0x03
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000

MADV_DONTNEED = 4
MADV_REMOVE = 9
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23


def _fn(name: str, restype: Any, *argtypes: Any) -> Any:
    f = getattr(_libc, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_ioctl = _fn("ioctl", c_int, c_int, c_ulong, c_void_p)
_mmap = _fn("mmap", c_void_p, c_void_p, c_size_t, c_int, c_int, c_int, c_int64)
_munmap = _fn("munmap", c_int, c_void_p, c_size_t)
_madvise = _fn("madvise", c_int, c_void_p, c_size_t, c_int)
_mprotect = _fn("mprotect", c_int, c_void_p, c_size_t, c_int)
_mlock2 = _fn("mlock2", c_int, c_void_p, c_size_t, ctypes.c_uint)
_munlock = _fn("munlock", c_int, c_void_p, c_size_t)
_fallocate = _fn("fallocate", c_int, c_int, c_int, c_int64, c_int64)
_vmsplice = _fn("vmsplice", c_ssize_t, c_int, c_void_p, c_ulong, ctypes.c_uint)


# The iovec arrays are passed as addresses (``struct iovec[]`` built as flat u64 pairs by the caller).
_process_vm_readv = _fn("process_vm_readv", c_ssize_t, c_int, c_void_p, c_ulong, c_void_p, c_ulong, c_ulong)
_process_vm_writev = _fn("process_vm_writev", c_ssize_t, c_int, c_void_p, c_ulong, c_void_p, c_ulong, c_ulong)

# Raw ioctl entry point for hot paths (KVM_RUN): returns -1 and leaves errno for ctypes.get_errno().
raw_ioctl = _ioctl
get_errno = ctypes.get_errno


def check(ret: int, op: str, reason: str = "") -> int:
    """Raise ``KvmError(errno, op, reason)`` if a libc call returned -1."""
    if ret == -1:
        raise KvmError(ctypes.get_errno(), op, reason)
    return ret


def ioctl(
    fd: int, request: int, arg: int | ctypes.Structure | ctypes.Array[Any] | None, op: str, reason: str = ""
) -> int:
    """``ioctl(fd, request, arg)``; ``arg`` is an integer or a ctypes object passed by pointer."""
    if isinstance(arg, ctypes.Structure | ctypes.Array):
        ptr: Any = ctypes.addressof(arg)
    else:
        ptr = arg
    return check(_ioctl(fd, request, ptr), op, reason)


def ioctl_raw(fd: int, request: int, arg: bytes | int, op: str, reason: str = "") -> tuple[int, bytes]:
    """``ioctl(fd, request, arg)`` with ``arg`` the argument's bytes (passed by pointer; returns them as the
    kernel left them) or a raw address (e.g. an unmapped one, to see EFAULT)."""
    if isinstance(arg, int):
        return check(_ioctl(fd, request, arg), op, reason), b""
    buf = ctypes.create_string_buffer(bytes(arg), len(arg))
    ret = check(_ioctl(fd, request, ctypes.addressof(buf)), op, reason)
    return ret, buf.raw


SPLICE_F_NONBLOCK = 0x02


def vmsplice(fd: int, addr: int, length: int) -> int:
    """``vmsplice(fd, {addr, length}, 1, SPLICE_F_NONBLOCK)`` into a pipe: the pipe holds references on the
    pages. Never blocks: a full pipe is EAGAIN (the caller sizes the pipe for what it splices)."""
    iov = (ctypes.c_uint64 * 2)(addr, length)  # struct iovec {iov_base, iov_len}
    return check(_vmsplice(fd, ctypes.addressof(iov), 1, SPLICE_F_NONBLOCK), "vmsplice",
                 f"addr {addr:#x} len {length:#x}")


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0, addr: int = 0, reason: str = "") -> int:
    """``mmap(2)``; returns the address (the real one, unlike Python's mmap module)."""
    ptr = _mmap(addr or None, length, prot, flags, fd, offset)
    if ptr is None or ptr == MAP_FAILED:
        raise KvmError(ctypes.get_errno(), "mmap", reason)
    return int(ptr)


def munmap(addr: int, length: int) -> None:
    check(_munmap(addr, length), "munmap")


def madvise(addr: int, length: int, advice: int, reason: str = "") -> None:
    check(_madvise(addr, length, advice), "madvise", reason)


def mprotect(addr: int, length: int, prot: int) -> None:
    check(_mprotect(addr, length, prot), "mprotect")


def mlock2(addr: int, length: int, flags: int) -> None:
    check(_mlock2(addr, length, flags), "mlock2")


def munlock(addr: int, length: int) -> None:
    check(_munlock(addr, length), "munlock")


def fallocate(fd: int, mode: int, offset: int, length: int, reason: str = "") -> None:
    """``fallocate(2)`` with the raw errno (no glibc emulation, unlike ``posix_fallocate``)."""
    check(_fallocate(fd, mode, offset, length), "fallocate", reason)


def process_vm_readv(pid: int, local: int, nlocal: int, remote: int, nremote: int) -> int:
    """Returns bytes transferred, or ``-errno``."""
    n = _process_vm_readv(pid, local, nlocal, remote, nremote, 0)
    return n if n >= 0 else -ctypes.get_errno()


def process_vm_writev(pid: int, local: int, nlocal: int, remote: int, nremote: int) -> int:
    """Returns bytes transferred, or ``-errno``."""
    n = _process_vm_writev(pid, local, nlocal, remote, nremote, 0)
    return n if n >= 0 else -ctypes.get_errno()


# -- NUMA policy syscalls (no libc wrappers without libnuma): raw syscall(2) ------------------------------
_syscall = _fn("syscall", ctypes.c_long, ctypes.c_long, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
               ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_MAXNODE = 65  # the kernel reads maxnode - 1 bits: one 64-bit mask word


def mbind(addr: int, length: int, mode: int, nodemask: int, flags: int) -> None:
    from ..uapi import SYS_MBIND

    mask = (ctypes.c_ulong * 1)(nodemask)
    check(_syscall(SYS_MBIND, addr, length, mode, ctypes.addressof(mask), _MAXNODE, flags), "mbind",
          f"mode {mode} nodemask {nodemask:#x}")


def get_mempolicy(addr: int) -> tuple[int, int]:
    from ..uapi import MPOL_F_ADDR, SYS_GET_MEMPOLICY

    mode = ctypes.c_int(0)
    mask = (ctypes.c_ulong * 1)(0)
    check(_syscall(SYS_GET_MEMPOLICY, ctypes.addressof(mode), ctypes.addressof(mask), _MAXNODE, addr,
                   MPOL_F_ADDR, 0), "get_mempolicy")
    return mode.value, mask[0]


def move_pages_query(addrs: list[int]) -> list[int]:
    """``move_pages(0, n, pages, NULL, status, 0)``: where each page is, or a negative errno."""
    from ..uapi import SYS_MOVE_PAGES

    n = len(addrs)
    pages = (ctypes.c_void_p * n)(*addrs)
    status = (ctypes.c_int * n)()
    check(_syscall(SYS_MOVE_PAGES, 0, n, ctypes.addressof(pages), 0, ctypes.addressof(status), 0), "move_pages")
    return list(status)
