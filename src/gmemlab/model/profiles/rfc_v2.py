"""``rfc-v2``: the seed's RFC v2 (on 6.15 + Fuad Tabba's mmap v9; spec 1.5, 2.14), its own lineage.

SUPPORT_SHARED / INIT_PRIVATE / HUGETLB flags, a per-index shareability tree changed by the
KVM_GMEM_CONVERT_* ioctls, the FT9 userspace_addr check at bind time, HugeTLB backing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...uapi import (
    GUESTMEM_HUGETLB_FLAG_MASK,
    GUESTMEM_HUGETLB_FLAG_SHIFT,
    Cap,
    GmemFlagsRfc2,
    VmType,
)
from ..config import HostConfig
from .base import Behaviour, Change


@dataclass(frozen=True)
class RfcV2(Behaviour):
    """The seed's RFC v2 (on 6.15 + Fuad Tabba's mmap v9): SUPPORT_SHARED, INIT_PRIVATE, HUGETLB."""

    CHANGES: ClassVar[tuple[Change, ...]] = (
        Change("SUPPORT_SHARED (1<<0), INIT_PRIVATE (1<<1, only with SUPPORT_SHARED), HUGETLB (1<<2) and the "
               "page-size log in bits 58-63; files start shared unless INIT_PRIVATE", "spec 1.3, 1.5",
               ("valid_create_flags", "supports_mmap", "initially_shared", "initial_shareability",
                "hugetlb_page_size")),
        Change("per-index shareability (maple tree) changed by KVM_GMEM_CONVERT_SHARED/PRIVATE", "spec 2.14",
               ("per_index_shareability",)),
        Change("binding checks that userspace_addr maps this gmem at guest_memfd_offset (FT9)", "spec 2.6",
               ("checks_userspace_addr_at_bind",)),
        Change("KVM_CAP_GUEST_MEMFD follows has_private_mem (6.15 base); caps 240-242", "spec 1.4",
               ("_profile_cap",)),
    )
    def valid_create_flags(self, vm_type: VmType | None, flags: int, config: HostConfig) -> int:
        # Spec 1.5: SUPPORT_SHARED for every VM type (after patch 07); INIT_PRIVATE only together with
        # SUPPORT_SHARED; HUGETLB (and then bits 58-63) only with CONFIG_KVM_GMEM_HUGETLB.
        valid = int(GmemFlagsRfc2.SUPPORT_SHARED)
        if flags & GmemFlagsRfc2.SUPPORT_SHARED:
            valid |= int(GmemFlagsRfc2.INIT_PRIVATE)
        if config.hugetlb and flags & GmemFlagsRfc2.HUGETLB:
            valid |= int(GmemFlagsRfc2.HUGETLB) | (GUESTMEM_HUGETLB_FLAG_MASK << GUESTMEM_HUGETLB_FLAG_SHIFT)
        return valid

    def supports_mmap(self, flags: int) -> bool:
        return bool(flags & GmemFlagsRfc2.SUPPORT_SHARED)

    def initially_shared(self, flags: int) -> bool:
        return bool(flags & GmemFlagsRfc2.SUPPORT_SHARED) and not flags & GmemFlagsRfc2.INIT_PRIVATE

    def per_index_shareability(self, flags: int, config: HostConfig) -> bool:
        return bool(flags & GmemFlagsRfc2.SUPPORT_SHARED)

    def initial_shareability(self, flags: int, config: HostConfig) -> bool:
        # HostConfig.default_private: the merged default (private unless asked), bit 1 read as INIT_SHARED.
        if config.default_private:
            return bool(flags & GmemFlagsRfc2.SUPPORT_SHARED) and bool(flags & GmemFlagsRfc2.INIT_PRIVATE)
        return self.initially_shared(flags)

    def checks_userspace_addr_at_bind(self, flags: int) -> bool:
        return bool(flags & GmemFlagsRfc2.SUPPORT_SHARED)

    def hugetlb_page_size(self, flags: int) -> int:
        if not flags & GmemFlagsRfc2.HUGETLB:
            return 0
        log2 = (flags >> GUESTMEM_HUGETLB_FLAG_SHIFT) & GUESTMEM_HUGETLB_FLAG_MASK
        return 1 << (log2 or 21)  # 0 selects the default hstate, 2 MiB on x86

    def _profile_cap(self, cap: int, vm_type: VmType | None, config: HostConfig) -> int:
        if cap == Cap.GUEST_MEMFD:
            # U6.8-U6.17 rule the RFC is based on: !kvm || kvm_arch_has_private_mem(kvm)
            return 1 if vm_type is None or vm_type.has_private_mem else 0
        if cap in (Cap.GMEM_SHARED_MEM, Cap.GMEM_CONVERSION):
            return 1
        if cap == Cap.GMEM_HUGETLB:
            return 1 if config.hugetlb else 0
        return 0

