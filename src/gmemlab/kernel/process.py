"""A forked child of this process (``fork()``), for what guest_memfd and KVM do with a VMM's children.

The child inherits every mapping and fd. Its memory is accessed from here with ``process_vm_readv`` /
``process_vm_writev`` on *its* pid, which fault in *its* page tables through the same handlers a CPU access
would (as :mod:`gmemlab.kernel.hostaccess` does for this process), so "the child faulted the page, the parent
converted it private, the child's next touch gets SIGBUS" (linux-7.md 1.4 ``forked_accesses``) is observed
without the child dying. ioctls the child must issue itself (KVM refuses VM ioctls from another mm with EIO,
realkernel.md #80) go over a pipe to a small loop the child runs. :meth:`KernelProcess.exit` ends the child
(it was started here; it is killed by its own pid) and reaps it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pickle
import signal
import struct
from typing import cast

from .. import uapi
from ..backend import HasFd, HostMapping
from ..errors import KvmError, UnsupportedByBackend
from . import libc
from .mapping import KernelHostMapping, cpu_touch
from .resources import Resources

_LEN = struct.Struct("<I")


def _send(fd: int, obj: object) -> None:
    data = pickle.dumps(obj)
    os.write(fd, _LEN.pack(len(data)) + data)


def _recv(fd: int) -> object:
    head = b""
    while len(head) < _LEN.size:
        chunk = os.read(fd, _LEN.size - len(head))
        if not chunk:
            raise EOFError
        head += chunk
    (n,) = _LEN.unpack(head)
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return pickle.loads(data)


def _serve(requests: int, replies: int) -> None:
    """The child's loop: ``(fd, number, arg)`` -> ``(ret, errno, arg bytes after)``; None ends it."""
    while True:
        try:
            req = _recv(requests)
        except EOFError:
            return
        if req is None:
            return
        if isinstance(req, tuple) and req[0] == "touch":  # a CPU access in a grandchild: which signal?
            _, address, write, value = req
            _send(replies, cpu_touch(address, write, value))
            continue
        if isinstance(req, tuple) and req[0] == "read":  # a CPU read here (a touch proved it safe)
            _send(replies, ctypes.string_at(req[1], req[2]))
            continue
        fd, number, arg = cast(tuple[int, int, bytes | int], req)
        if isinstance(arg, bytes):
            buf = ctypes.create_string_buffer(arg, len(arg))
            ret = libc.raw_ioctl(fd, number, ctypes.addressof(buf))
            out = buf.raw
        else:
            ret = libc.raw_ioctl(fd, number, arg)
            out = b""
        _send(replies, (ret, libc.get_errno() if ret == -1 else 0, out))


class KernelProcess:
    """A forked child that inherited this process's mappings and fds."""

    def __init__(self, resources: Resources) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: serve ioctls until told to stop, never return into the parent's code
            try:
                os.close(req_w)
                os.close(rep_r)
                _serve(req_r, rep_w)
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(rep_w)
        self.pid = pid
        self._req, self._rep = req_w, rep_r
        self._resources = resources
        self.exited = False
        resources.add(self)

    def mapping(self, parent: HostMapping) -> KernelHostMapping:
        """The child's view of a mapping the parent had when it forked."""
        if not isinstance(parent, KernelHostMapping):
            raise UnsupportedByBackend(f"{parent!r} is not a mapping of this backend")
        return parent.inherited_by(self.pid, self._touch, self._cpu_read)

    def _cpu_read(self, address: int, length: int) -> bytes:
        """``length`` bytes at ``address`` read by the child's CPU (faulting them into its page tables)."""
        if self.exited:
            raise KvmError(errno.ESRCH, "read", "the child has exited")
        _send(self._req, ("read", address, length))
        return cast(bytes, _recv(self._rep))

    def _touch(self, address: int, write: bool, value: bytes) -> str:
        """The signal a CPU access at ``address`` gets in the child (made by a grandchild of it)."""
        if self.exited:
            raise KvmError(errno.ESRCH, "touch", "the child has exited")
        _send(self._req, ("touch", address, write, value))
        return cast(str, _recv(self._rep))

    def _ioctl(self, fd: int, number: int, arg: bytes | int, op: str, reason: str) -> tuple[int, bytes]:
        if self.exited:
            raise KvmError(errno.ESRCH, op, "the child has exited")
        _send(self._req, (fd, number, arg))
        ret, err, out = cast(tuple[int, int, bytes], _recv(self._rep))
        if ret == -1:
            raise KvmError(err, op, reason)
        return ret, out

    def check_extension(self, vm: HasFd, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on an inherited VM fd, issued by the child."""
        return self._ioctl(vm.fd, uapi.KVM_CHECK_EXTENSION, int(cap), "KVM_CHECK_EXTENSION",
                           f"cap {int(cap)} from pid {self.pid}")[0]

    def create_guest_memfd(self, vm: HasFd, size: int, flags: int = 0) -> object:
        """``KVM_CREATE_GUEST_MEMFD`` on an inherited VM fd, issued by the child (the fd stays the child's)."""
        arg = uapi.KvmCreateGuestMemfd(size=size & uapi.U64_MAX, flags=flags & uapi.U64_MAX)
        return self._ioctl(vm.fd, uapi.KVM_CREATE_GUEST_MEMFD, bytes(arg), "KVM_CREATE_GUEST_MEMFD",
                           f"size {size:#x} flags {flags:#x} from pid {self.pid}")[0]

    def exit(self) -> None:
        """Stop the child and reap it (SIGKILL by its pid if it does not stop on request)."""
        if self.exited:
            return
        self.exited = True
        self._resources.discard(self)
        with contextlib.suppress(OSError):
            _send(self._req, None)
        for fd in (self._req, self._rep):
            os.close(fd)
        for _ in range(100):
            done, _status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                return
            os.sched_yield()
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)

    close = exit
