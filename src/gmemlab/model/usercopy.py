"""``copy_from_user`` / ``copy_to_user`` against the modelled process, for ioctls given a raw argument.

The typed methods (``vm.set_memory_attributes(...)``) pass values, so their copies cannot fail. The raw
``ioctl(number, arg)`` entry points take either the argument's bytes (a valid pointer to them) or an integer
address in the modelled process; then the copy faults like the kernel's: EFAULT where nothing is mapped, the
page cannot be faulted (a private guest_memfd page), or, for the copy back, the mapping is read-only.
"""

from __future__ import annotations

from ..errors import HostSigbus, HostSigsegv
from .host import AddressSpace

UserArg = bytes | int


def copy_from_user(space: AddressSpace, arg: UserArg, size: int) -> bytes | None:
    """The ``size`` bytes the kernel reads for ``arg``, or None when the copy faults (EFAULT)."""
    if not isinstance(arg, int):
        data = bytes(arg)
        return data[:size].ljust(size, b"\0")
    vma = space.find(arg)
    if vma is None or arg + size > vma.address + vma.length:
        return None
    try:
        return vma.read(arg - vma.address, size)
    except (HostSigbus, HostSigsegv):
        return None


def copy_to_user(space: AddressSpace, arg: UserArg, data: bytes) -> bool:
    """Write ``data`` back to ``arg``; False when the copy faults. A bytes argument always succeeds."""
    if not isinstance(arg, int):
        return True
    vma = space.find(arg)
    if vma is None or arg + len(data) > vma.address + vma.length:
        return False
    try:
        vma.write(arg - vma.address, data)
    except (HostSigbus, HostSigsegv):
        return False
    return True
