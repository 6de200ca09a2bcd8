"""Make guest memory private or shared with whichever mechanism the kernel under test offers.

A VMM on 7.4 with in-place conversion converts with ``KVM_SET_MEMORY_ATTRIBUTES2`` on the guest_memfd (offsets
in the file); before, or with the parameter off, with the per-VM ``KVM_SET_MEMORY_ATTRIBUTES`` (guest physical
addresses). :func:`mechanism` reads which one a VM has from its capabilities (never from the kernel's version),
:func:`convert` uses it, and a kernel with neither is refused with the values it reported.
"""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedByBackend
from ..uapi import KVM_MEMORY_ATTRIBUTE_PRIVATE, Cap, cap_guest_memfd_memory_attributes

PRIVATE = KVM_MEMORY_ATTRIBUTE_PRIVATE
IN_PLACE, PER_VM = "in-place", "per-vm"


def mechanism(vm: Any) -> str | None:
    """``in-place`` (KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES has PRIVATE), ``per-vm`` (KVM_CAP_MEMORY_ATTRIBUTES
    has it) or None, as this VM answers."""
    if vm.check_extension(cap_guest_memfd_memory_attributes()) & PRIVATE:
        return IN_PLACE
    if vm.check_extension(Cap.MEMORY_ATTRIBUTES) & PRIVATE:
        return PER_VM
    return None


def convert(vm: Any, gmem: Any, gpa: int, offset: int, size: int, private: bool) -> str:
    """Convert ``size`` bytes, at ``offset`` in ``gmem`` and bound at guest physical ``gpa``, to private or shared;
    returns the mechanism used. Errors are the kernel's (KvmError / ConversionError)."""
    how = mechanism(vm)
    if how == IN_PLACE:
        gmem.set_memory_attributes2(offset, size, PRIVATE if private else 0)
    elif how == PER_VM:
        vm.set_memory_attributes(gpa, size, PRIVATE if private else 0)
    else:
        raise UnsupportedByBackend(
            f"no way to make memory private: KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES "
            f"({cap_guest_memfd_memory_attributes()}) = {vm.check_extension(cap_guest_memfd_memory_attributes())}, "
            f"KVM_CAP_MEMORY_ATTRIBUTES ({int(Cap.MEMORY_ATTRIBUTES)}) = {vm.check_extension(Cap.MEMORY_ATTRIBUTES)}")
    return how
