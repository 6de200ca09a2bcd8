"""A forked child of the VMM process (``fork()``), as guest_memfd and KVM see it (issue 14 item 4).

* guest_memfd: the child inherits every mapping (``dup_mmap``), so its copies are in the file's ``i_mmap``:
  a conversion to private or a punch unmaps them like the parent's, and the child's next touch of a private
  page gets SIGBUS (linux-7.md 1.4 ``forked_accesses``; realkernel-private.md ``3/fork/*``). It also inherits
  the fds, which hold references on the files and the VM until it exits.
* KVM: ``kvm_vm_ioctl`` refuses callers whose ``mm`` is not the VM creator's with EIO (realkernel.md #80).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Protocol

from ..backend import HostMapping
from ..errors import KvmError
from .host import AddressSpace, ModelHostMapping


class _Referenced(Protocol):
    def get_ref(self) -> None: ...

    def put_ref(self) -> None: ...


class ModelProcess:
    """The child: its own address space with copies of the parent's mappings, and references on the files and
    VMs behind the fds it inherited. :meth:`exit` unmaps everything and drops them."""

    _pids = iter(range(20000, 1 << 22))

    def __init__(self, parent_space: AddressSpace, inherited: Sequence[_Referenced]) -> None:
        self.pid = next(self._pids)
        self.space = AddressSpace(parent_space.numa_nodes, parent_space.refused_advices, parent_space.pkeys)
        self._copies = {id(vma): vma.fork_into(self.space) for vma in list(parent_space.vmas)}
        self._inherited = inherited
        for obj in inherited:
            obj.get_ref()
        self.exited = False

    def mapping(self, parent: HostMapping) -> ModelHostMapping:
        """The child's copy of ``parent`` (a mapping the parent had at fork time)."""
        copy = self._copies.get(id(parent))
        if copy is None or self.exited:
            raise KvmError(errno.EINVAL, "fork", "the mapping did not exist when the child was forked")
        return copy

    def _kvm_ioctl(self, op: str) -> None:
        if self.exited:
            raise KvmError(errno.ESRCH, op, "the child has exited")
        raise KvmError(errno.EIO, op, "kvm_vm_ioctl: the caller's mm is not the VM creator's (kvm->mm != current->mm)")

    def check_extension(self, vm: object, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on an inherited VM fd, issued by the child: EIO."""
        self._kvm_ioctl("KVM_CHECK_EXTENSION")
        return 0

    def create_guest_memfd(self, vm: object, size: int, flags: int = 0) -> object:
        """``KVM_CREATE_GUEST_MEMFD`` on an inherited VM fd, issued by the child: EIO (realkernel.md #80)."""
        self._kvm_ioctl("KVM_CREATE_GUEST_MEMFD")
        return None

    def exit(self) -> None:
        if self.exited:
            return
        self.exited = True
        for vma in list(self.space.vmas):
            vma.munmap()
        for obj in self._inherited:
            obj.put_ref()
