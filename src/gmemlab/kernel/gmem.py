"""A guest_memfd file from ``KVM_CREATE_GUEST_MEMFD`` (virt/kvm/guest_memfd.c, ``kvm_gmem_fops``).

Every operation is the real system call on the fd, errors carry the kernel's errno:

* ``fallocate`` is ``fallocate(2)`` through libc (``kvm_gmem_fallocate``: KEEP_SIZE allocates,
  PUNCH_HOLE|KEEP_SIZE punches; other modes EOPNOTSUPP; unaligned EINVAL) - not ``posix_fallocate``, which
  glibc emulates by writing when the kernel says EOPNOTSUPP (realkernel.md #109);
* ``mmap`` is ``mmap(2)`` through libc (``kvm_gmem_mmap``: ENODEV without MMAP, EINVAL for MAP_PRIVATE, EPERM
  for PROT_EXEC on the noexec mount);
* ``read``/``write``/``pread``/``pwrite``/``lseek``/``ftruncate`` are the VFS calls the gmem file refuses
  (EINVAL, ESPIPE, EINVAL via ``kvm_gmem_setattr``; realkernel.md #83-#101);
* ``convert`` (RFC2 ``KVM_GMEM_CONVERT_*``) does not exist in Linux 6.18.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import Any, TypeVar

from .. import uapi
from ..backend import MAP_SHARED, PROT_READ, PROT_WRITE, FileStat
from ..errors import ConversionError, KvmError, UnsupportedByBackend
from ..uapi import c_signed, c_value
from . import libc
from .mapping import KernelHostMapping, map_in_reservation
from .resources import Resources

T = TypeVar("T")


def _os_call(op: str, fn: Callable[..., T], *args: Any, reason: str = "") -> T:
    try:
        return fn(*args)
    except OSError as exc:
        raise KvmError(exc.errno or 0, op, reason) from None


class KernelGuestMemfd:
    """An open guest_memfd fd of ``size`` bytes created with ``flags``."""

    def __init__(self, fd: int, size: int, flags: int, resources: Resources) -> None:
        self.fd = fd
        self.size = size
        self.flags = flags
        self.closed = False
        self._resources = resources
        resources.add(self)

    def fallocate(self, mode: int, offset: int, length: int) -> None:
        op = "fallocate"
        mode = c_signed(mode, "int", "mode", op)
        offset, length = c_signed(offset, "loff_t", "offset", op), c_signed(length, "loff_t", "len", op)
        libc.fallocate(self.fd, mode, offset, length, f"mode {mode:#x} offset {offset:#x} len {length:#x}")

    def mmap(
        self, length: int, offset: int = 0, prot: int = PROT_READ | PROT_WRITE, flags: int = MAP_SHARED
    ) -> KernelHostMapping:
        op = "mmap"
        length, offset = c_value(length, "size_t", "length", op), c_signed(offset, "off_t", "offset", op)
        prot, flags = c_signed(prot, "int", "prot", op), c_signed(flags, "int", "flags", op)
        base, addr = map_in_reservation(length, prot, flags, self.fd, offset,
                                        f"len {length:#x} offset {offset:#x} prot {prot:#x} flags {flags:#x}")
        m = KernelHostMapping(addr, length, prot, offset, self.size, self.flags, on_unmap=self._resources.discard,
                              base=base, resources=self._resources)
        self._resources.add(m)
        return m

    def fstat(self) -> FileStat:
        st = _os_call("fstat", os.fstat, self.fd)
        return FileStat(st.st_size, st.st_blksize, st.st_blocks, st.st_ino)

    def read(self, length: int) -> bytes:
        return _os_call("read", os.read, self.fd, length)

    def write(self, data: bytes) -> int:
        return _os_call("write", os.write, self.fd, data)

    def pread(self, length: int, offset: int) -> bytes:
        return _os_call("pread", os.pread, self.fd, length, offset)

    def pwrite(self, data: bytes, offset: int) -> int:
        return _os_call("pwrite", os.pwrite, self.fd, data, offset)

    def lseek(self, offset: int, whence: int) -> int:
        return _os_call("lseek", os.lseek, self.fd, offset, whence)

    def ftruncate(self, length: int) -> None:
        length = c_signed(length, "off_t", "length", "ftruncate")
        _os_call("ftruncate", os.ftruncate, self.fd, length, reason=f"length {length:#x}")

    def fsync(self, datasync: bool = False) -> None:
        op = "fdatasync" if datasync else "fsync"
        _os_call(op, os.fdatasync if datasync else os.fsync, self.fd)

    def fchmod(self, mode: int) -> None:
        mode = c_signed(mode, "int", "mode", "fchmod")
        _os_call("fchmod", os.fchmod, self.fd, mode)

    def fchown(self, uid: int, gid: int) -> None:
        uid, gid = c_signed(uid, "int", "uid", "fchown"), c_signed(gid, "int", "gid", "fchown")
        _os_call("fchown", os.fchown, self.fd, uid, gid)

    def fadvise(self, offset: int, length: int, advice: int) -> None:
        op = "fadvise64"
        offset, length = c_signed(offset, "loff_t", "offset", op), c_signed(length, "loff_t", "len", op)
        advice = c_signed(advice, "int", "advice", op)
        _os_call(op, os.posix_fadvise, self.fd, offset, length, advice)

    def flock(self, operation: int) -> None:
        operation = c_signed(operation, "int", "operation", "flock")
        _os_call("flock", fcntl.flock, self.fd, operation)

    def fcntl(self, cmd: int, arg: int = 0) -> int:
        cmd, arg = c_signed(cmd, "int", "cmd", "fcntl"), c_signed(arg, "int", "arg", "fcntl")
        if cmd in (fcntl.F_DUPFD, fcntl.F_DUPFD_CLOEXEC) or cmd in (5, 6, 7, 36, 37, 38):
            raise UnsupportedByBackend("fcntl F_DUPFD* and record locks (struct flock) through fcntl(): use dup()")
        return int(_os_call("fcntl", fcntl.fcntl, self.fd, cmd, arg))

    def dup(self) -> KernelGuestMemfd:
        """``dup(2)`` (F_DUPFD: the new fd has no FD_CLOEXEC, as C's dup gives)."""
        fd = _os_call("dup", fcntl.fcntl, self.fd, fcntl.F_DUPFD, 0)
        return KernelGuestMemfd(fd, self.size, self.flags, self._resources)

    def convert(self, offset: int, size: int, to_shared: bool, error_offset: int = 0) -> None:
        raise UnsupportedByBackend("KVM_CAP_GMEM_CONVERSION (rfc-v2 conversion ioctls)")

    def set_memory_attributes2(
        self,
        offset: int,
        size: int,
        attributes: int,
        flags: int = 0,
        error_offset: int = 0,
        reserved: tuple[int, ...] = (),
    ) -> int:
        """``KVM_SET_MEMORY_ATTRIBUTES2`` on this fd (in-place conversion, linux-7.md 1.2) with the 128-byte
        struct; returns its ``error_offset`` as the kernel left it. On error the
        :class:`~gmemlab.errors.ConversionError` carries that field too (untouched unless the kernel wrote it).
        Kernels without the series answer ENOTTY (no ioctl on a guest_memfd)."""
        op = "KVM_SET_MEMORY_ATTRIBUTES2"
        arg = uapi.KvmMemoryAttributes2(offset=c_value(offset, "__u64", "offset", op),
                                        size=c_value(size, "__u64", "size", op),
                                        attributes=c_value(attributes, "__u64", "attributes", op),
                                        flags=c_value(flags, "__u64", "flags", op),
                                        error_offset=c_value(error_offset, "__u64", "error_offset", op))
        for i, v in enumerate(reserved[:11]):
            arg.reserved[i] = c_value(v, "__u64", f"reserved[{i}]", op)
        try:
            libc.ioctl(self.fd, uapi.KVM_SET_MEMORY_ATTRIBUTES2, arg, op,
                       f"offset {offset:#x} size {size:#x} attributes {attributes:#x} flags {flags:#x}")
        except KvmError as exc:
            raise ConversionError(exc.errno or 0, op, exc.reason, error_offset=int(arg.error_offset)) from None
        return int(arg.error_offset)

    def ioctl(self, number: int, arg: bytes | int = 0) -> int:
        """``ioctl(fd, number, arg)``: the argument's bytes or a raw address."""
        return libc.ioctl_raw(self.fd, number & 0xFFFFFFFF, arg, "ioctl", f"{number & 0xFFFFFFFF:#x}")[0]

    def close(self) -> None:
        """``close(fd)``. Host mappings keep the file (and its bindings) alive until munmap (#290)."""
        if self.closed:
            return
        self.closed = True
        self._resources.discard(self)
        os.close(self.fd)

    def __repr__(self) -> str:
        return f"<KernelGuestMemfd fd={self.fd} size={self.size:#x} flags={self.flags:#x}>"
