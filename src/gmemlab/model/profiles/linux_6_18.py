"""``linux-6.18``: merged Linux 6.18 (spec 1.4, 2.2, 2.4, 2.6), the root of the merged lineage.

MMAP and INIT_SHARED; the whole file is shared or private, fixed at creation; per-VM memory attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...uapi import Cap, GmemFlags618, VmType
from ..config import HostConfig
from .base import Behaviour, Change


@dataclass(frozen=True)
class Linux618(Behaviour):
    """Merged Linux 6.18: MMAP and INIT_SHARED, whole-file state fixed at creation."""

    CHANGES: ClassVar[tuple[Change, ...]] = (
        Change("GUEST_MEMFD_FLAG_MMAP (1<<0) and GUEST_MEMFD_FLAG_INIT_SHARED (1<<1); INIT_SHARED only for VMs "
               "without private memory (or system-wide)", "spec 1.3, 1.4",
               ("valid_create_flags", "supports_mmap", "initially_shared")),
        Change("shared/private is one whole-file state fixed at creation; no conversion", "spec 2.2",
               ("per_index_shareability",)),
        Change("KVM_CAP_GUEST_MEMFD = 1 unconditionally; KVM_CAP_GUEST_MEMFD_FLAGS (244) = the valid mask",
               "spec 1.4", ("_profile_cap",)),
    )

    def valid_create_flags(self, vm_type: VmType | None, flags: int, config: HostConfig) -> int:
        # kvm_gmem_get_supported_flags(): MMAP always; INIT_SHARED iff system-wide or
        # kvm_arch_supports_gmem_init_shared() == !kvm_arch_has_private_mem() on x86.
        valid = int(GmemFlags618.MMAP)
        if vm_type is None or not vm_type.has_private_mem:
            valid |= int(GmemFlags618.INIT_SHARED)
        return valid

    def supports_mmap(self, flags: int) -> bool:
        return bool(flags & GmemFlags618.MMAP)

    def initially_shared(self, flags: int) -> bool:
        return bool(flags & GmemFlags618.INIT_SHARED)

    def per_index_shareability(self, flags: int, config: HostConfig) -> bool:
        return False

    def _profile_cap(self, cap: int, vm_type: VmType | None, config: HostConfig) -> int:
        if cap == Cap.GUEST_MEMFD:
            return 1  # unconditional from 6.18 on
        if cap == Cap.GUEST_MEMFD_FLAGS:
            return self.valid_create_flags(vm_type, 0, config)
        return 0
