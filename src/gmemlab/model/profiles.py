"""Behaviour that differs between merged Linux 6.18 and the seed's RFC v2 (DESIGN.md principle 5).

Everything profile-specific is answered here, so the rest of the model has no ``if profile == ...``:
valid creation flags per VM type (spec 1.4, 1.5), capabilities (1.4), whether a file can be mmapped
(2.4), its initial shareability (2.2), whether memslots bound to it are GMEM_ONLY (2.6), and where
``kvm_mem_is_private`` looks (2.7).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..uapi import (
    GUESTMEM_HUGETLB_FLAG_MASK,
    GUESTMEM_HUGETLB_FLAG_SHIFT,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    LINUX_6_18,
    PROFILES,
    RFC_V2,
    ApiProfile,
    Cap,
    GmemFlags618,
    GmemFlagsRfc2,
    VmType,
)
from .config import HostConfig


@dataclass(frozen=True)
class Behaviour:
    """The profile-dependent rules of one lineage; subclasses fill them in."""

    api: ApiProfile

    @property
    def name(self) -> str:
        return self.api.name

    # -- creation --------------------------------------------------------------------------
    def valid_create_flags(self, vm_type: VmType | None, flags: int, config: HostConfig) -> int:
        """The mask ``kvm_gmem_create`` accepts for this request (``None`` = system-wide query)."""
        raise NotImplementedError

    def supports_mmap(self, flags: int) -> bool:
        raise NotImplementedError

    def initially_shared(self, flags: int) -> bool:
        """The shareability every index starts with."""
        raise NotImplementedError

    def per_index_shareability(self, flags: int) -> bool:
        """True when shareability is a per-index range map that conversion can change (rfc-v2)."""
        raise NotImplementedError

    def initial_shareability(self, flags: int, config: HostConfig) -> bool:
        """The initial state on this host: :meth:`initially_shared` unless the config inverts the default."""
        return self.initially_shared(flags)

    def gmem_only(self, flags: int) -> bool:
        """Whether a memslot bound to such a file gets KVM_MEMSLOT_GMEM_ONLY (all faults from gmem)."""
        return self.supports_mmap(flags)

    def checks_userspace_addr_at_bind(self, flags: int) -> bool:
        """FT9/RFC2: userspace_addr must map this gmem at guest_memfd_offset (spec 2.6)."""
        return False

    def hugetlb_page_size(self, flags: int) -> int:
        """HugeTLB page size requested by the flags, 0 for none."""
        return 0

    @property
    def gmem_shared_policy(self) -> bool:
        """guest_memfd's ``set_policy``/``get_policy`` vm_ops (U6.19): ``mbind`` on a mapping sets the inode's
        shared policy and folios are allocated by it. Without them (6.18, the RFC on 6.15) the policy stays in
        the VMA and the page cache allocates on the local node (realkernel-private.md finding 15)."""
        return False

    # -- capabilities ------------------------------------------------------------------------
    def check_extension(self, cap: int, vm_type: VmType | None, config: HostConfig) -> int:
        """KVM_CHECK_EXTENSION on /dev/kvm (``vm_type is None``) or on a VM fd (spec 1.4)."""
        has_private = vm_type is None or vm_type.has_private_mem
        if cap in (Cap.USER_MEMORY, Cap.SYNC_MMU, Cap.IMMEDIATE_EXIT, Cap.USER_MEMORY2):
            return 1
        if cap == Cap.MEMORY_FAULT_INFO:
            return 1
        if cap == Cap.NR_MEMSLOTS:
            return config.nr_memslots
        if cap == Cap.READONLY_MEM:
            return 1 if config.readonly_mem else 0
        if cap == Cap.VM_TYPES:
            return sum(1 << t for t in config.vm_types)
        if cap == Cap.PRE_FAULT_MEMORY:
            return 1 if config.pre_fault else 0
        if cap in (Cap.X86_SMM, Cap.MULTI_ADDRESS_SPACE):
            # Without CONFIG_KVM_SMM there is one address space and the cap reads 0 (realkernel #229); with
            # it, /dev/kvm says 2 and a VM says kvm_arch_nr_memslot_as_ids (1 with private memory).
            if config.address_spaces < 2:
                return 0
            if cap == Cap.X86_SMM:
                return 1
            return 1 if vm_type is not None and vm_type.has_private_mem else config.address_spaces
        if cap == Cap.MEMORY_ATTRIBUTES:
            if not config.memory_attributes:
                return 0
            # /dev/kvm answers for the system; a VM answers for itself (spec 1.4).
            return KVM_MEMORY_ATTRIBUTE_PRIVATE if has_private else 0
        return self._profile_cap(cap, vm_type, config)

    def _profile_cap(self, cap: int, vm_type: VmType | None, config: HostConfig) -> int:
        return 0

    def describe_flags(self, flags: int) -> str:
        return self.api.describe_flags(flags)


@dataclass(frozen=True)
class Linux618(Behaviour):
    """Merged Linux 6.18: MMAP and INIT_SHARED, whole-file state fixed at creation."""

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

    def per_index_shareability(self, flags: int) -> bool:
        return False

    def _profile_cap(self, cap: int, vm_type: VmType | None, config: HostConfig) -> int:
        if cap == Cap.GUEST_MEMFD:
            return 1  # unconditional from 6.18 on
        if cap == Cap.GUEST_MEMFD_FLAGS:
            return self.valid_create_flags(vm_type, 0, config)
        return 0


@dataclass(frozen=True)
class RfcV2(Behaviour):
    """The seed's RFC v2 (on 6.15 + Fuad Tabba's mmap v9): SUPPORT_SHARED, INIT_PRIVATE, HUGETLB."""

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

    def per_index_shareability(self, flags: int) -> bool:
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


BEHAVIOURS: dict[str, Behaviour] = {
    LINUX_6_18.name: Linux618(LINUX_6_18),
    RFC_V2.name: RfcV2(RFC_V2),
}


def behaviour(name: str) -> Behaviour:
    try:
        return BEHAVIOURS[name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ValueError(f"unknown profile {name!r}; known profiles: {known}") from None
