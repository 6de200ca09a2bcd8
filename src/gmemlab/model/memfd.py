"""A regular memfd (``memfd_create``, mm/memfd.c): an fd that is not a guest_memfd.

The model needs it only for the binding checks of ``KVM_SET_USER_MEMORY_REGION2`` (spec 2.6): a
memfd passed as ``guest_memfd`` is EINVAL.
"""

from __future__ import annotations

import errno

from ..errors import KvmError
from .fdtable import FdTable


class ModelMemfd:
    """A regular memfd: an fd that is not a guest_memfd (for binding checks)."""

    def __init__(self, fdtable: FdTable, size: int) -> None:
        self.fdtable = fdtable
        self.size = size
        self.fd = fdtable.install(self)

    def ioctl(self, number: int, arg: bytes | int = 0) -> int:
        """shmem has no ``unlocked_ioctl``: every number is ENOTTY (realkernel-private.md ``3/attrs2_memfd``)."""
        raise KvmError(errno.ENOTTY, "ioctl", f"{number & 0xFFFFFFFF:#x} on a memfd")

    def close(self) -> None:
        self.fdtable.remove(self.fd)
